//! Compact binary form of what is stored in Redis: a cached response, or the marker that
//! sends lookups of a `Vary` resource to its variant keys.
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::CachePolicy;

use super::compress::Variants;
use super::ready::Ready;

/// Version 2 adds the compressed variants; version 1 values (no variants) are still read.
const ENTRY_MAGIC: &[u8; 4] = b"XLE2";
const ENTRY_MAGIC_V1: &[u8; 4] = b"XLE1";
const VARY_MAGIC: &[u8; 4] = b"XLV1";

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("stored value is truncated or malformed")]
    Malformed,
    #[error("stored policy does not decode")]
    Policy(#[from] serde_json::Error),
}

/// A stored response. Times are milliseconds since the Unix epoch.
#[derive(Clone, Debug)]
pub struct Entry {
    pub stored_at_ms: u64,
    /// End of freshness as decided at store time (RFC 9111 or the operator's per-status TTL).
    pub fresh_until_ms: u64,
    /// Grace after `fresh_until_ms` for serving stale on upstream errors.
    pub stale_if_error_s: u32,
    /// Grace after `fresh_until_ms` for serving stale while one refresh runs.
    pub stale_while_revalidate_s: u32,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The serialized `CachePolicy`, decoded only for revalidation (conditional request
    /// headers, 304 merging) so hits do not pay for it.
    pub policy_json: Bytes,
    /// gzip / brotli forms of `body`, made when it was stored (see `compress`).
    pub variants: Variants,
    /// Fresh-hit answer heads made from this entry while the hot tier holds it; not stored.
    pub ready: Ready,
}

/// Marker at the primary key of a resource whose responses carry `Vary`.
#[derive(Clone, Debug, PartialEq)]
pub struct VaryMarker {
    /// Changes whenever the set of varying headers changes, orphaning older variants.
    pub generation: u64,
    pub vary: String,
}

#[derive(Debug)]
pub enum Stored {
    Entry(Box<Entry>),
    Vary(VaryMarker),
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn get_bytes(input: &mut Bytes) -> Result<Bytes, EntryError> {
    if input.remaining() < 4 {
        return Err(EntryError::Malformed);
    }
    let n = input.get_u32() as usize;
    if input.remaining() < n {
        return Err(EntryError::Malformed);
    }
    Ok(input.split_to(n))
}

impl Entry {
    pub fn encode_policy(policy: &CachePolicy) -> Result<Bytes, EntryError> {
        Ok(serde_json::to_vec(policy)?.into())
    }

    pub fn policy(&self) -> Result<CachePolicy, EntryError> {
        Ok(serde_json::from_slice(&self.policy_json)?)
    }

    /// Current age (RFC 9111 section 4.2.3): the upstream's `Age` plus the time spent here.
    pub fn age(&self, now: SystemTime) -> Duration {
        let upstream = self
            .headers
            .get(http::header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        Duration::from_secs(upstream)
            + Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms))
    }

    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let policy = &self.policy_json;
        let variants_len = self.variants.gzip.as_ref().map_or(0, Bytes::len)
            + self.variants.brotli.as_ref().map_or(0, Bytes::len);
        let mut out = BytesMut::with_capacity(
            72 + policy.len() + self.body.len() + variants_len + 32 * self.headers.len(),
        );
        out.put_slice(ENTRY_MAGIC);
        out.put_u64(self.stored_at_ms);
        out.put_u64(self.fresh_until_ms);
        out.put_u32(self.stale_if_error_s);
        out.put_u32(self.stale_while_revalidate_s);
        out.put_u16(self.status.as_u16());
        out.put_u32(self.headers.len() as u32);
        for (name, value) in &self.headers {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        put_bytes(&mut out, policy);
        put_bytes(&mut out, &self.body);
        // An empty field means no such variant (a compressed variant is never empty).
        for v in [&self.variants.gzip, &self.variants.brotli] {
            put_bytes(&mut out, v.as_deref().unwrap_or_default());
        }
        Ok(out.to_vec())
    }
}

impl VaryMarker {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_slice(VARY_MAGIC);
        out.put_u64(self.generation);
        put_bytes(&mut out, self.vary.as_bytes());
        out.to_vec()
    }
}

pub fn decode(raw: Vec<u8>) -> Result<Stored, EntryError> {
    let mut b = Bytes::from(raw);
    if b.remaining() < 4 {
        return Err(EntryError::Malformed);
    }
    let magic = b.split_to(4);
    if &magic[..] == VARY_MAGIC {
        if b.remaining() < 8 {
            return Err(EntryError::Malformed);
        }
        let generation = b.get_u64();
        let vary =
            String::from_utf8(get_bytes(&mut b)?.to_vec()).map_err(|_| EntryError::Malformed)?;
        return Ok(Stored::Vary(VaryMarker { generation, vary }));
    }
    let v1 = &magic[..] == ENTRY_MAGIC_V1;
    if (&magic[..] != ENTRY_MAGIC && !v1) || b.remaining() < 30 {
        return Err(EntryError::Malformed);
    }
    let stored_at_ms = b.get_u64();
    let fresh_until_ms = b.get_u64();
    let stale_if_error_s = b.get_u32();
    let stale_while_revalidate_s = b.get_u32();
    let status = StatusCode::from_u16(b.get_u16()).map_err(|_| EntryError::Malformed)?;
    let n = b.get_u32();
    let mut headers = HeaderMap::new();
    for _ in 0..n {
        let name =
            HeaderName::from_bytes(&get_bytes(&mut b)?).map_err(|_| EntryError::Malformed)?;
        let value = HeaderValue::from_maybe_shared(get_bytes(&mut b)?)
            .map_err(|_| EntryError::Malformed)?;
        headers.append(name, value);
    }
    let policy_json = get_bytes(&mut b)?;
    let body = get_bytes(&mut b)?;
    let mut variants = Variants::default();
    if !v1 {
        let non_empty = |v: Bytes| (!v.is_empty()).then_some(v);
        variants.gzip = non_empty(get_bytes(&mut b)?);
        variants.brotli = non_empty(get_bytes(&mut b)?);
    }
    Ok(Stored::Entry(Box::new(Entry {
        stored_at_ms,
        fresh_until_ms,
        stale_if_error_s,
        stale_while_revalidate_s,
        status,
        headers,
        body,
        policy_json,
        variants,
        ready: Ready::default(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_and_marker_round_trip() {
        let req = http::Request::get("/x").body(()).unwrap();
        let res = http::Response::builder()
            .header("cache-control", "max-age=60")
            .body(())
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let e = Entry {
            stored_at_ms: 1,
            fresh_until_ms: 2,
            stale_if_error_s: 3,
            stale_while_revalidate_s: 4,
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"body"),
            policy_json: Entry::encode_policy(&CachePolicy::new(&req, &res)).unwrap(),
            variants: Variants {
                gzip: None,
                brotli: Some(Bytes::from_static(b"br")),
            },
            ready: Ready::default(),
        };
        let Stored::Entry(d) = decode(e.encode().unwrap()).unwrap() else {
            panic!("not an entry")
        };
        assert_eq!(
            (
                d.stored_at_ms,
                d.fresh_until_ms,
                d.stale_if_error_s,
                d.stale_while_revalidate_s
            ),
            (1, 2, 3, 4)
        );
        assert_eq!(d.status, StatusCode::NOT_FOUND);
        assert_eq!(d.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&d.body[..], b"body");
        assert!(d.policy().unwrap().is_storable());
        assert_eq!(d.variants, e.variants);
        // A version 1 value (no variants) still decodes.
        let mut v1 = e.encode().unwrap();
        v1[..4].copy_from_slice(ENTRY_MAGIC_V1);
        v1.truncate(v1.len() - 4 - 4 - 2);
        let Stored::Entry(d) = decode(v1).unwrap() else {
            panic!("not an entry")
        };
        assert!(d.variants.is_empty());
        assert_eq!(&d.body[..], b"body");
        let m = VaryMarker {
            generation: 7,
            vary: "accept-encoding".into(),
        };
        assert!(matches!(decode(m.encode()).unwrap(), Stored::Vary(v) if v == m));
        assert!(decode(b"XLE1abc".to_vec()).is_err());
    }
}
