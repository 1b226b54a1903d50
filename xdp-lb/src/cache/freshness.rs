//! Store and reuse decisions: RFC 9111 through `http-cache-semantics`, plus what it leaves out
//! (operator per-status lifetimes, RFC 5861 stale-while-revalidate / stale-if-error windows,
//! the Set-Cookie and Authorization opt-ins).
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use http::{request, HeaderMap, HeaderValue, Method, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

use super::config::{CacheConfig, ConfigError};
use super::entry::Entry;
use super::stats::BypassReason;

#[derive(Clone, Debug)]
pub struct Rules {
    pub status_ttl: BTreeMap<u16, Duration>,
    pub cache_set_cookie: bool,
    pub cache_authorized: bool,
    pub stale_if_error_s: u64,
    pub stale_while_revalidate_s: u64,
    pub revalidate_keep: Duration,
}

impl Rules {
    pub fn new(cfg: &CacheConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            status_ttl: cfg.status_ttls()?,
            cache_set_cookie: cfg.cache_set_cookie,
            cache_authorized: cfg.cache_authorized,
            stale_if_error_s: cfg.stale_if_error_s,
            stale_while_revalidate_s: cfg.stale_while_revalidate_s,
            revalidate_keep: Duration::from_secs(cfg.revalidate_keep_s),
        })
    }
}

/// Cache-Control directives, lowercased names, unquoted values.
pub struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    pub fn parse(headers: &HeaderMap) -> Self {
        // The typed name: a `&str` name is parsed again on every lookup, and every request
        // (hot hits twice) parses its Cache-Control.
        Self::parse_field(headers, http::header::CACHE_CONTROL)
    }

    pub fn parse_field(headers: &HeaderMap, field: impl http::header::AsHeaderName) -> Self {
        let mut out = Vec::new();
        for v in headers
            .get_all(field)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for part in v.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let (k, val) = match part.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"').to_string())),
                    None => (part, None),
                };
                out.push((k.to_ascii_lowercase(), val));
            }
        }
        Self(out)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    pub fn seconds(&self, name: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref()?.parse().ok())
    }
}

/// Why a request does not use the cache at all, if it does not.
pub fn bypass_request(req: &request::Parts, rules: &Rules) -> Option<BypassReason> {
    bypass_with(req, rules, &Directives::parse(&req.headers))
}

/// [`bypass_request`] with the request's `Cache-Control` already parsed (a hot hit parses it
/// once for this and [`is_fresh_with`]).
pub fn bypass_with(req: &request::Parts, rules: &Rules, cc: &Directives) -> Option<BypassReason> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Some(BypassReason::Method);
    }
    if req.headers.contains_key(http::header::AUTHORIZATION) && !rules.cache_authorized {
        return Some(BypassReason::Authorization);
    }
    cc.has("no-store").then_some(BypassReason::NoStore)
}

/// The policy object, built from views of the messages that apply the operator's opt-ins.
pub fn policy(
    req: &request::Parts,
    status: StatusCode,
    res: &HeaderMap,
    rules: &Rules,
    now: SystemTime,
) -> CachePolicy {
    // Authorization stays in the view: with `cache_authorized` the RFC 9111 section 3.5 rule
    // applies (stored only when the response says public, s-maxage or must-revalidate).
    let mut req_view = req.clone();
    req_view.method = Method::GET;
    let mut res_view = http::Response::new(());
    *res_view.status_mut() = status;
    *res_view.headers_mut() = res.clone();
    if rules.cache_set_cookie {
        res_view.headers_mut().remove(http::header::SET_COOKIE);
    }
    // Directive names are case-insensitive; the policy only knows lowercase ones.
    let lowered: Vec<HeaderValue> = res_view
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let parts: Vec<String> = v
                .split(',')
                .map(|p| match p.split_once('=') {
                    Some((k, val)) => format!("{}={val}", k.trim().to_ascii_lowercase()),
                    None => p.trim().to_ascii_lowercase(),
                })
                .collect();
            HeaderValue::from_str(&parts.join(", ")).ok()
        })
        .collect();
    if !lowered.is_empty() {
        res_view.headers_mut().remove(http::header::CACHE_CONTROL);
        for v in lowered {
            res_view
                .headers_mut()
                .append(http::header::CACHE_CONTROL, v);
        }
    }
    CachePolicy::new_options(&req_view, &res_view, now, CacheOptions::default())
}

/// How a response is stored, when it may be.
#[derive(Debug, PartialEq)]
pub struct StoreDecision {
    pub fresh_for: Duration,
    pub stale_if_error_s: u32,
    pub stale_while_revalidate_s: u32,
    /// Redis expiry: freshness, then grace, then time kept for revalidation.
    pub keep_for: Duration,
}

pub fn store_decision(
    policy: &CachePolicy,
    status: StatusCode,
    res: &HeaderMap,
    rules: &Rules,
    now: SystemTime,
    req_authorized: bool,
) -> Option<StoreDecision> {
    // RFC 9213: CDN-Cache-Control, when present, replaces Cache-Control for this cache.
    let cc = valid_cdn_cache_control(res).unwrap_or_else(|| Directives::parse(res));
    let code = status.as_u16();
    // RFC 9111 section 5.2.2.3: must-understand overrides no-store for understood statuses.
    let no_store = cc.has("no-store") && !(cc.has("must-understand") && UNDERSTOOD.contains(&code));
    if no_store || cc.has("private") || !(200..600).contains(&code) || code == 206 || code == 304 {
        return None;
    }
    if res.contains_key(http::header::SET_COOKIE) && !rules.cache_set_cookie {
        return None;
    }
    if res
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim() == "*"))
    {
        return None;
    }
    // RFC 9111 section 3.5.
    if req_authorized && !(cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate")) {
        return None;
    }
    let lifetime = cc.seconds("s-maxage").or_else(|| cc.seconds("max-age"));
    let has_expires = res.contains_key(http::header::EXPIRES);
    let operator_ttl = rules.status_ttl.get(&code).copied();
    let storable = lifetime.is_some()
        || has_expires
        || operator_ttl.is_some()
        || cc.has("public")
        || STATUS_CACHEABLE_BY_DEFAULT.contains(&code);
    if !storable {
        return None;
    }
    let age = current_age(res, now);
    let fresh_for = if cc.has("no-cache") {
        Duration::ZERO
    } else if let Some(l) = lifetime {
        Duration::from_secs(l).saturating_sub(age)
    } else if has_expires {
        // RFC 9111 section 5.3: an invalid Expires means already expired.
        expires_lifetime(res, now).map_or(Duration::ZERO, |l| l.saturating_sub(age))
    } else if let Some(ttl) = operator_ttl {
        ttl
    } else {
        // Heuristic freshness (Last-Modified based), only where RFC 9111 section 4.2.2 allows it.
        policy.time_to_live(now)
    };
    let forbids_stale = cc.has("must-revalidate")
        || cc.has("proxy-revalidate")
        || cc.has("s-maxage")
        || cc.has("no-cache");
    let (sie, swr) = if forbids_stale {
        (0, 0)
    } else {
        (
            cc.seconds("stale-if-error")
                .unwrap_or(0)
                .max(rules.stale_if_error_s),
            cc.seconds("stale-while-revalidate")
                .unwrap_or(0)
                .max(rules.stale_while_revalidate_s),
        )
    };
    let has_validators =
        res.contains_key(http::header::ETAG) || res.contains_key(http::header::LAST_MODIFIED);
    if fresh_for.is_zero() && sie == 0 && swr == 0 && !has_validators {
        return None;
    }
    let keep = if has_validators {
        rules.revalidate_keep
    } else {
        Duration::ZERO
    };
    Some(StoreDecision {
        fresh_for,
        stale_if_error_s: sie.min(u64::from(u32::MAX)) as u32,
        stale_while_revalidate_s: swr.min(u64::from(u32::MAX)) as u32,
        keep_for: (fresh_for + Duration::from_secs(sie.max(swr)) + keep)
            .max(Duration::from_secs(1)),
    })
}

/// Status codes whose semantics this cache knows (for must-understand).
const UNDERSTOOD: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// `Expires - Date` (RFC 9111 section 4.2.1), with the receipt time standing in for a missing
/// `Date`; None when `Expires` is not one valid HTTP date (obsolete formats accepted).
fn expires_lifetime(res: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut all = res.get_all(http::header::EXPIRES).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return None;
    };
    let expires = httpdate::parse_http_date(v.to_str().ok()?).ok()?;
    let date = res
        .get(http::header::DATE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
        .unwrap_or(now);
    Some(expires.duration_since(date).unwrap_or_default())
}

/// CDN-Cache-Control is a Structured Field dictionary (RFC 9213); an invalid one is ignored
/// as a whole, and so is an absent or empty one.
fn valid_cdn_cache_control(res: &HeaderMap) -> Option<Directives> {
    let raw: Vec<&str> = res
        .get_all("cdn-cache-control")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    let is_key = |k: &str| {
        let mut c = k.chars();
        c.next().is_some_and(|f| f.is_ascii_lowercase() || f == '*')
            && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || "_-.*".contains(x))
    };
    for member in raw.iter().flat_map(|v| v.split(',')).map(str::trim) {
        let (key, value) = match member.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (member, None),
        };
        if !is_key(key) {
            return None;
        }
        let numeric = matches!(
            key,
            "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
        );
        if let Some(v) = value {
            let integer = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
            if numeric && !integer {
                return None;
            }
        }
    }
    let d = Directives::parse_field(res, "cdn-cache-control");
    (!d.0.is_empty()).then_some(d)
}

/// RFC 9110 section 15.1: statuses a cache may store without explicit freshness.
const STATUS_CACHEABLE_BY_DEFAULT: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// RFC 9111 section 4.2.3, without the request/response delay: the larger of `Age` and the
/// time since `Date`.
fn current_age(res: &HeaderMap, now: SystemTime) -> Duration {
    let age = res
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    let apparent = res
        .get(http::header::DATE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    age.max(apparent)
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Whether a stored entry answers this request without contacting the upstream, honouring the
/// request's own `no-cache`, `max-age` and `min-fresh`.
pub fn is_fresh_for(entry: &Entry, req: &request::Parts, now: SystemTime) -> bool {
    millis(now) < entry.fresh_until_ms
        && is_fresh_with(
            entry,
            req,
            now,
            &Directives::parse(&req.headers),
            entry.age(now),
        )
}

/// [`is_fresh_for`] with the request's `Cache-Control` parsed and the entry's current age
/// computed by the caller, which needs both again (a hot hit writes the age into its answer).
pub fn is_fresh_with(
    entry: &Entry,
    req: &request::Parts,
    now: SystemTime,
    cc: &Directives,
    age: Duration,
) -> bool {
    let now_ms = millis(now);
    if now_ms >= entry.fresh_until_ms {
        return false;
    }
    let pragma_no_cache = !req.headers.contains_key(http::header::CACHE_CONTROL)
        && req
            .headers
            .get(http::header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("no-cache"));
    if cc.has("no-cache") || pragma_no_cache {
        return false;
    }
    let age = age.as_secs();
    if cc.seconds("max-age").is_some_and(|max| age > max) {
        return false;
    }
    let left = (entry.fresh_until_ms - now_ms) / 1000;
    cc.seconds("min-fresh").is_none_or(|min| left >= min)
}

/// Whether a stale entry may still be served, for the given grace window.
pub fn within_grace(entry: &Entry, grace_s: u32, now: SystemTime) -> bool {
    grace_s > 0 && millis(now) < entry.fresh_until_ms + u64::from(grace_s) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            status_ttl: BTreeMap::from([(404, Duration::from_secs(60))]),
            cache_set_cookie: false,
            cache_authorized: false,
            stale_if_error_s: 0,
            stale_while_revalidate_s: 0,
            revalidate_keep: Duration::from_secs(100),
        }
    }

    fn decide(status: u16, headers: &[(&str, &str)]) -> Option<StoreDecision> {
        let req = http::Request::get("/x")
            .header("host", "h")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut res = HeaderMap::new();
        for (k, v) in headers {
            res.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let status = StatusCode::from_u16(status).unwrap();
        let now = SystemTime::now();
        let p = policy(&req, status, &res, &rules(), now);
        store_decision(&p, status, &res, &rules(), now, false)
    }

    #[test]
    fn explicit_and_operator_lifetimes() {
        assert_eq!(
            decide(200, &[("cache-control", "max-age=30")])
                .unwrap()
                .fresh_for,
            Duration::from_secs(30)
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=30, s-maxage=5")])
                .unwrap()
                .fresh_for,
            Duration::from_secs(5)
        );
        assert_eq!(decide(404, &[]).unwrap().fresh_for, Duration::from_secs(60));
        assert_eq!(
            decide(200, &[]),
            None,
            "no freshness information and no operator ttl"
        );
        assert_eq!(decide(302, &[]), None);
    }

    #[test]
    fn authorized_requests_follow_rfc_when_enabled() {
        let req = http::Request::get("/x")
            .header("authorization", "Bearer t")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let r = Rules {
            cache_authorized: true,
            ..rules()
        };
        let now = SystemTime::now();
        let decide = |cc: &str| {
            let mut res = HeaderMap::new();
            res.insert("cache-control", cc.parse().unwrap());
            let p = policy(&req, StatusCode::OK, &res, &r, now);
            store_decision(&p, StatusCode::OK, &res, &r, now, true)
        };
        assert_eq!(
            bypass_request(&req, &rules()),
            Some(BypassReason::Authorization)
        );
        assert_eq!(bypass_request(&req, &r), None);
        assert_eq!(decide("max-age=60"), None);
        assert!(decide("public, max-age=60").is_some());
        assert!(decide("s-maxage=60").is_some());
    }

    #[test]
    fn cdn_cache_control_overrides_cache_control() {
        let d = decide(
            200,
            &[
                ("cdn-cache-control", "max-age=30"),
                ("cache-control", "no-store"),
            ],
        )
        .unwrap();
        assert_eq!(d.fresh_for, Duration::from_secs(30));
        assert_eq!(
            decide(
                200,
                &[
                    ("cdn-cache-control", "no-store"),
                    ("cache-control", "max-age=30")
                ]
            ),
            None
        );
        assert_eq!(
            decide(
                200,
                &[
                    ("cdn-cache-control", "private"),
                    ("cache-control", "max-age=30")
                ]
            ),
            None
        );
    }

    #[test]
    fn invalid_expires_and_uppercase_directives() {
        assert_eq!(
            decide(200, &[("expires", "Thu, 18  Aug  2050 02:01:18 GMT")]),
            None
        );
        assert!(decide(200, &[("expires", "Thu, 18 Aug 2050 02:01:18 GMT")]).is_some());
        assert_eq!(
            decide(200, &[("cache-control", "max-age=60, NO-CACHE")]),
            None
        );
        assert_eq!(
            decide(
                200,
                &[
                    ("vary", "a"),
                    ("vary", "*"),
                    ("cache-control", "max-age=60")
                ]
            ),
            None
        );
    }

    #[test]
    fn refusals_and_stale_windows() {
        assert_eq!(
            decide(200, &[("cache-control", "no-store, max-age=30")]),
            None
        );
        assert_eq!(
            decide(200, &[("cache-control", "private, max-age=30")]),
            None
        );
        assert_eq!(
            decide(
                200,
                &[("cache-control", "max-age=30"), ("set-cookie", "a=b")]
            ),
            None
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=30"), ("vary", "*")]),
            None
        );
        let d = decide(
            200,
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=9, stale-if-error=20",
            )],
        )
        .unwrap();
        assert_eq!((d.stale_while_revalidate_s, d.stale_if_error_s), (9, 20));
        assert_eq!(d.keep_for, Duration::from_secs(21));
        let d = decide(
            200,
            &[(
                "cache-control",
                "max-age=1, stale-if-error=20, must-revalidate",
            )],
        )
        .unwrap();
        assert_eq!(d.stale_if_error_s, 0);
        let d = decide(200, &[("cache-control", "no-cache"), ("etag", "\"a\"")]).unwrap();
        assert_eq!(
            (d.fresh_for, d.keep_for),
            (Duration::ZERO, Duration::from_secs(100))
        );
    }
}
