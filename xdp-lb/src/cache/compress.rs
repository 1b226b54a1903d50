//! Response compression, as nginx's `gzip on` (plus brotli): a stored 200 response of a
//! compressible type and enough length gets gzip and brotli variants made once, when it is
//! stored, and kept in the same entry; each client is served the best variant its
//! `Accept-Encoding` allows, or the identity body. Responses the upstream already encoded are
//! left alone.
use std::io::Write;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

/// Settings of `[cache.compression]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    pub enabled: bool,
    /// Media types (without parameters) that are compressed, like nginx's `gzip_types`.
    pub types: Vec<String>,
    /// Bodies shorter than this are sent as they are (nginx `gzip_min_length`).
    pub min_length: usize,
    /// 1 (fastest, nginx's default) to 9.
    pub gzip_level: u32,
    /// 0 to 11; 6 is ngx_brotli's default.
    pub brotli_level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // nginx compresses text/html always and what `gzip_types` adds; this is the list
            // most published nginx configurations add.
            types: [
                "text/html",
                "text/plain",
                "text/css",
                "text/xml",
                "text/javascript",
                "application/javascript",
                "application/json",
                "application/xml",
                "application/rss+xml",
                "application/atom+xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            min_length: 1000,
            gzip_level: 1,
            brotli_level: 6,
        }
    }
}

/// A content coding this tier produces.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Brotli,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        }
    }
}

/// The compressed variants of one stored body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Variants {
    pub gzip: Option<Bytes>,
    pub brotli: Option<Bytes>,
}

impl Variants {
    pub fn is_empty(&self) -> bool {
        self.gzip.is_none() && self.brotli.is_none()
    }

    pub fn get(&self, c: Coding) -> Option<&Bytes> {
        match c {
            Coding::Gzip => self.gzip.as_ref(),
            Coding::Brotli => self.brotli.as_ref(),
        }
    }
}

impl CompressionConfig {
    /// Makes the variants of a response about to be stored, or none when it does not qualify.
    pub fn variants(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Variants {
        if !self.qualifies(status, headers, body.len()) {
            return Variants::default();
        }
        // A variant that is not smaller than the body is not worth a header.
        let smaller = |v: Vec<u8>| (v.len() < body.len()).then(|| Bytes::from(v));
        Variants {
            gzip: gzip(body, self.gzip_level).and_then(smaller),
            brotli: Some(brotli(body, self.brotli_level)).and_then(smaller),
        }
    }

    /// Whether a response of `len` bytes is compressed at all (stored or on the fly).
    pub(super) fn qualifies(&self, status: StatusCode, headers: &HeaderMap, len: usize) -> bool {
        if !self.enabled || status != StatusCode::OK || len < self.min_length || len == 0 {
            return false;
        }
        let already = headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        // RFC 9111 section 5.2.2.6: no-transform forbids changing the content coding.
        let no_transform = headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
        let media = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        !already
            && !no_transform
            && media.is_some_and(|m| self.types.iter().any(|t| t.eq_ignore_ascii_case(&m)))
    }
}

fn gzip(body: &[u8], level: u32) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::new(level),
    );
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

fn brotli(body: &[u8], level: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 3);
    let params = brotli::enc::BrotliEncoderParams {
        quality: level as i32,
        ..Default::default()
    };
    let mut input = body;
    // Writing into a Vec cannot fail; an error would leave `out` partial, so drop it then.
    match brotli::BrotliCompress(&mut input, &mut out, &params) {
        Ok(_) => out,
        Err(_) => Vec::new(),
    }
}

/// The coding to send for a request's `Accept-Encoding` among the ones available, or `None`
/// for the identity body. Brotli wins a tie (it is smaller); `q=0` refuses a coding; `*`
/// stands for the codings not named.
pub fn choose(req: &HeaderMap, available: &Variants) -> Option<Coding> {
    let mut q_br = None;
    let mut q_gzip = None;
    let mut q_any = None;
    for item in req
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "br" => q_br = Some(q),
            "gzip" | "x-gzip" => q_gzip = Some(q),
            "*" => q_any = Some(q),
            _ => {}
        }
    }
    let q = |named: Option<f32>| named.or(q_any).unwrap_or(0.0);
    let mut best: Option<(Coding, f32)> = None;
    for (c, q) in [(Coding::Brotli, q(q_br)), (Coding::Gzip, q(q_gzip))] {
        if q > 0.0 && available.get(c).is_some() && best.is_none_or(|(_, b)| q > b) {
            best = Some((c, q));
        }
    }
    best.map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, v.parse().unwrap());
        h
    }

    fn both() -> Variants {
        Variants {
            gzip: Some(Bytes::from_static(b"g")),
            brotli: Some(Bytes::from_static(b"b")),
        }
    }

    #[test]
    fn picks_by_accept_encoding() {
        assert_eq!(choose(&HeaderMap::new(), &both()), None);
        assert_eq!(choose(&ae("gzip"), &both()), Some(Coding::Gzip));
        assert_eq!(
            choose(&ae("gzip, deflate, br"), &both()),
            Some(Coding::Brotli)
        );
        assert_eq!(choose(&ae("br;q=0, gzip"), &both()), Some(Coding::Gzip));
        assert_eq!(
            choose(&ae("br;q=0.5, gzip;q=0.8"), &both()),
            Some(Coding::Gzip)
        );
        assert_eq!(choose(&ae("*"), &both()), Some(Coding::Brotli));
        assert_eq!(choose(&ae("*;q=0"), &both()), None);
        assert_eq!(choose(&ae("identity"), &both()), None);
        let only_gzip = Variants {
            gzip: Some(Bytes::from_static(b"g")),
            brotli: None,
        };
        assert_eq!(choose(&ae("br"), &only_gzip), None);
        assert_eq!(choose(&ae("br, gzip"), &only_gzip), Some(Coding::Gzip));
    }

    #[test]
    fn compresses_only_what_qualifies() {
        let cfg = CompressionConfig::default();
        let body = "hello compressible world ".repeat(100);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "text/html; charset=utf-8".parse().unwrap());
        let v = cfg.variants(StatusCode::OK, &h, body.as_bytes());
        assert!(v.gzip.as_ref().unwrap().len() < body.len());
        assert!(v.brotli.as_ref().unwrap().len() < body.len());
        assert!(cfg
            .variants(StatusCode::OK, &h, &body.as_bytes()[..999])
            .is_empty());
        assert!(cfg
            .variants(StatusCode::NOT_FOUND, &h, body.as_bytes())
            .is_empty());
        let mut png = h.clone();
        png.insert(CONTENT_TYPE, "image/png".parse().unwrap());
        assert!(cfg
            .variants(StatusCode::OK, &png, body.as_bytes())
            .is_empty());
        let mut encoded = h.clone();
        encoded.insert(CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(cfg
            .variants(StatusCode::OK, &encoded, body.as_bytes())
            .is_empty());
        let mut nt = h.clone();
        nt.insert(CACHE_CONTROL, "max-age=60, No-Transform".parse().unwrap());
        assert!(cfg
            .variants(StatusCode::OK, &nt, body.as_bytes())
            .is_empty());
    }
}
