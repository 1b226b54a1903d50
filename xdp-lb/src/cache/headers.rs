//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 section 7.6.1)
//! and the forwarding headers upstreams expect from a reverse proxy.
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, including the ones a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("upgrade");
}

/// Adds `X-Forwarded-For` (appended to any existing chain), `X-Real-IP` and `X-Forwarded-Proto`.
/// `Host` is left as the client sent it.
pub fn add_forwarding(headers: &mut HeaderMap, client: IpAddr) {
    let ip = client.to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.clone(),
    };
    headers.remove("x-forwarded-for");
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert("x-real-ip", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}

/// RFC 9111 section 5.1: only the first `Age` value counts; an invalid one is dropped.
pub fn normalize_age(headers: &mut HeaderMap) {
    let first = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<u64>().ok());
    headers.remove(http::header::AGE);
    if let Some(age) = first {
        headers.insert(http::header::AGE, HeaderValue::from(age));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn keeps_the_first_age_only() {
        let mut h = HeaderMap::new();
        h.append("age", HeaderValue::from_static("7200, 0"));
        h.append("age", HeaderValue::from_static("0"));
        normalize_age(&mut h);
        assert_eq!(h.get_all("age").iter().collect::<Vec<_>>(), ["7200"]);
        h.insert("age", HeaderValue::from_static("soon"));
        normalize_age(&mut h);
        assert!(!h.contains_key("age"));
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.18.0.1"));
        add_forwarding(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "198.18.0.1, 127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
