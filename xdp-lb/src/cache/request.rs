//! Requests the proxy refuses before they reach an upstream or the cache (RFC 9112 section 3.2).
//!
//! hyper's parser already answers 400 to broken framing (differing or non-numeric
//! `Content-Length`, a `Transfer-Encoding` that does not end in `chunked`, obsolete line folding,
//! invalid header names and values); it also drops the `Content-Length` of a request that carries
//! `Transfer-Encoding` and closes the connection after it. What it leaves to us is the target
//! host: a cache keys on it, so any ambiguity there lets one client store a response under
//! another host's key.
use std::borrow::Cow;

use http::header::HOST;
use http::request::Parts;
use http::uri::Authority;
use http::Version;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("an HTTP/1.1 request needs a Host header")]
    NoHost,
    #[error("more than one Host header")]
    SeveralHosts,
    #[error("Host is not a valid host[:port]")]
    BadHost,
    #[error("Host disagrees with the absolute-form request target")]
    HostMismatch,
    #[error("request target is not http")]
    NotHttp,
}

/// The host a request is for, normalised as in the cache key (see [`normalize_host`]); `None`
/// for an HTTP/1.0 request that names none. Borrowed from the request when it is already in
/// normal form, as it mostly is: every request, hot hits included, asks.
pub fn target_host(req: &Parts) -> Result<Option<Cow<'_, str>>, Refusal> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(Refusal::SeveralHosts),
        (Some(v), None) => Some(
            v.to_str()
                .ok()
                .and_then(normalize_host)
                .ok_or(Refusal::BadHost)?,
        ),
        (None, None) => None,
    };
    // Absolute form (`GET http://host/path`): RFC 9112 section 3.2.2 says the target wins, but
    // a Host that says otherwise is either a confused client or an attempt to make the cache
    // and the upstream disagree on the host, so it is refused.
    let target = match req.uri.authority() {
        Some(a) => {
            if req.uri.scheme_str() != Some("http") {
                return Err(Refusal::NotHttp);
            }
            Some(normalize_host(a.as_str()).ok_or(Refusal::BadHost)?)
        }
        None => None,
    };
    let old_version = req.version == Version::HTTP_10 || req.version == Version::HTTP_09;
    match (header, target) {
        (Some(h), Some(t)) if h != t => Err(Refusal::HostMismatch),
        (Some(h), _) => Ok(Some(h)),
        // RFC 9112 section 3.2: HTTP/1.1 requires Host even with an absolute-form target.
        (None, _) if !old_version => Err(Refusal::NoHost),
        (None, t) => Ok(t),
    }
}

/// The bytes of a host name already in normal form: lowercase letters, digits, `.` and `-`.
static NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = matches!(b as u8, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-');
        b += 1;
    }
    t
};

/// Lowercase `host[:port]` with the default port 80 dropped, so `Example.org:80` and
/// `example.org` share cache entries. `None` for anything that is not a plain host and
/// optional port (user info, paths, empty hosts, ports out of range).
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    // The common cases, a lowercase name or IPv4 address with or without a port, need no URI
    // parsing (this runs on every request, hits included): one table lookup per byte up to
    // the first that is not a lowercase name's, which must be the port's `:`.
    let name_end = raw
        .bytes()
        .position(|b| !NAME_BYTE[usize::from(b)])
        .unwrap_or(raw.len());
    if name_end == raw.len() && !raw.is_empty() {
        return Some(Cow::Borrowed(raw));
    }
    if raw.as_bytes().get(name_end) == Some(&b':') {
        let (host, port) = (&raw[..name_end], &raw[name_end + 1..]);
        if !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return match port.parse::<u16>().ok()? {
                80 => Some(Cow::Borrowed(host)),
                // Already in the form `format!` would give (no leading zero): used as is,
                // since formatting the port costs more than the rest of a hot hit's key.
                _ if !port.starts_with('0') || port == "0" => Some(Cow::Borrowed(raw)),
                p => Some(Cow::Owned(format!("{host}:{p}"))),
            };
        }
    }
    if raw.is_empty() || raw.contains(['@', '/', '?', '#']) {
        return None;
    }
    let a: Authority = raw.parse().ok()?;
    if a.host().is_empty() {
        return None;
    }
    // `Authority` accepts an empty or non-numeric port text; the port must be a u16 if present.
    let host_port = a.as_str();
    let has_port = host_port.len() > a.host().len();
    let port = if has_port { Some(a.port_u16()?) } else { None };
    let host = a.host().to_ascii_lowercase();
    Some(Cow::Owned(match port {
        None | Some(80) => host,
        Some(p) => format!("{host}:{p}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn normalises_case_and_default_port() {
        assert_eq!(
            normalize_host("Example.ORG").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            normalize_host("example.org:80").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            normalize_host("example.org:8080").as_deref(),
            Some("example.org:8080")
        );
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(
            normalize_host("127.0.0.1:0800").as_deref(),
            Some("127.0.0.1:800")
        );
        assert_eq!(normalize_host("h:0080").as_deref(), Some("h"));
        assert_eq!(normalize_host("h:0").as_deref(), Some("h:0"));
        assert_eq!(normalize_host("H:8080").as_deref(), Some("h:8080"));
        assert_eq!(normalize_host("a.b-c").as_deref(), Some("a.b-c"));
        for bad in [
            "", "a@b", "a/b", "a b", "h:99999", "h:x", ":80", "h:", "h:8:8", "h:8a",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn host_rules() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            target_host(&parts(v11, "/", &["A.test"])),
            Ok(Some("a.test".into()))
        );
        assert_eq!(target_host(&parts(v11, "/", &[])), Err(Refusal::NoHost));
        assert_eq!(target_host(&parts(Version::HTTP_10, "/", &[])), Ok(None));
        assert_eq!(
            target_host(&parts(v11, "http://a/", &[])),
            Err(Refusal::NoHost)
        );
        assert_eq!(
            target_host(&parts(v11, "/", &["a", "b"])),
            Err(Refusal::SeveralHosts)
        );
        assert_eq!(
            target_host(&parts(v11, "/", &["a", "a"])),
            Err(Refusal::SeveralHosts)
        );
        assert_eq!(
            target_host(&parts(v11, "http://b.test/x", &["a.test"])),
            Err(Refusal::HostMismatch)
        );
        assert_eq!(
            target_host(&parts(v11, "http://A.test:80/x", &["a.test"])),
            Ok(Some("a.test".into()))
        );
        assert_eq!(
            target_host(&parts(v11, "https://a.test/x", &["a.test"])),
            Err(Refusal::NotHttp)
        );
    }
}
