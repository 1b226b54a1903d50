//! The `health_check` tables of the configuration file: a service default
//! (`[service.health_check]`) and a per-backend override (`[service.backend.health_check]`),
//! merged key by key and validated into a [`HealthCheck`] that the probes run as is.
//!
//! Pure data and validation: no tokio, clap or aya types, so the configuration layer
//! can embed [`HealthCheckConfig`] in its own serde structs and call [`resolve`] once per
//! backend. Values that need parsing (durations, addresses, status ranges) are kept as
//! strings in the raw table and parsed here, so every error names the service, the
//! backend and the key, and says what to write instead.
use std::{
    fmt,
    net::{AddrParseError, IpAddr, SocketAddr},
    time::Duration,
};

use serde::Deserialize;

/// Check interval when `interval` is not set.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Probe timeout when `timeout` is not set (clamped below `interval`, see [`resolve`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest accepted interval: a check rarer than daily tells nothing about a backend's
/// health, and a bound keeps schedule arithmetic far from overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// Consecutive successes that bring a down backend up (HAProxy's default).
pub const DEFAULT_RISE: u32 = 2;
/// Consecutive failures that take an up backend down (HAProxy's default).
pub const DEFAULT_FALL: u32 = 3;
/// HTTP statuses that count as healthy when `expect_status` is not set (HAProxy's
/// `http-check expect` default: 2xx and 3xx).
pub const DEFAULT_EXPECT_STATUS: StatusRange = StatusRange { lo: 200, hi: 399 };

/// One `health_check` table as written in the file. Every key is optional: a backend's
/// table overrides the service's key by key, and [`resolve`] fills in the defaults.
///
/// ```toml
/// [service.health_check]
/// type = "http"            # tcp (default) | http | udp | none
/// interval = "2s"          # humantime duration, default 2s
/// timeout = "1s"           # default 1s, must be shorter than interval
/// rise = 2                 # consecutive successes to go up, default 2
/// fall = 3                 # consecutive failures to go down, default 3
/// port = 8081              # check port, default the backend's port
/// addr = "10.0.0.5"        # check address, default the backend's address
/// source = "10.0.0.1"      # local address the probe binds, default chosen by the kernel
/// path = "/healthz"        # http: request path, default "/"
/// host = "www.example"     # http: Host header, default the check address and port
/// expect_status = "200-399"  # http: a code (200 or "200") or a range, default 200-399
/// expect_body = "ok"       # http: substring the body must contain (first 64 KiB)
/// send = "ping"            # udp: payload to send (required for udp)
/// expect = "pong"          # udp: substring the reply must contain, default any reply
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub port: Option<u16>,
    pub addr: Option<String>,
    pub source: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<RawStatus>,
    pub expect_body: Option<String>,
    pub send: Option<String>,
    pub expect: Option<String>,
}

/// `expect_status` as written: `200`, `"200"` or `"200-399"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

impl fmt::Display for RawStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "{code}"),
            Self::Text(text) => write!(f, "{text:?}"),
        }
    }
}

/// The kind of check, as named by the `type` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// No checks: the backend counts as up (an operator can still take it down).
    None,
    Tcp,
    Http,
    Udp,
}

impl CheckKind {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(Self::None),
            "tcp" => Some(Self::Tcp),
            "http" => Some(Self::Http),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }

    /// Parses `"200"` or `"200-399"`; codes must lie in 100..=599 with lo <= hi.
    fn parse(raw: &RawStatus) -> Option<Self> {
        let valid = |code: u16| (100..=599).contains(&code);
        let range = match raw {
            RawStatus::Code(code) => {
                let code = u16::try_from(*code).ok()?;
                Self { lo: code, hi: code }
            }
            RawStatus::Text(text) => match text.split_once('-') {
                Some((lo, hi)) => Self {
                    lo: lo.trim().parse().ok()?,
                    hi: hi.trim().parse().ok()?,
                },
                None => {
                    let code = text.trim().parse().ok()?;
                    Self { lo: code, hi: code }
                }
            },
        };
        (valid(range.lo) && valid(range.hi) && range.lo <= range.hi).then_some(range)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// What a probe does, with the settings that only its kind uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    None,
    Tcp,
    Http(HttpProbe),
    Udp(UdpProbe),
}

impl Probe {
    pub fn kind(&self) -> CheckKind {
        match self {
            Self::None => CheckKind::None,
            Self::Tcp => CheckKind::Tcp,
            Self::Http(_) => CheckKind::Http,
            Self::Udp(_) => CheckKind::Udp,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// Request path (and query), starting with `/`; parsed here so a probe cannot fail
    /// to build its request.
    pub path: http::uri::PathAndQuery,
    /// Host header; `None` sends the check address and port.
    pub host: Option<http::HeaderValue>,
    pub expect_status: StatusRange,
    /// Substring the body must contain; `None` does not read the body.
    pub expect_body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpProbe {
    pub send: Vec<u8>,
    /// Bytes the reply must contain; `None` accepts any reply.
    pub expect: Option<Vec<u8>>,
}

/// A validated check for one backend: every default filled in, every value parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    /// Where probes go: the backend's address and port unless `addr`/`port` say otherwise.
    pub target: SocketAddr,
    /// Local address probes bind before connecting.
    pub source: Option<IpAddr>,
    pub interval: Duration,
    /// Always shorter than `interval`, so a probe ends before its next one is due
    /// (a slow probe never pushes the target's schedule).
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl HealthCheck {
    pub fn kind(&self) -> CheckKind {
        self.probe.kind()
    }
}

/// A `health_check` table that cannot be used, with the service and backend it belongs to.
#[derive(Debug, thiserror::Error)]
#[error("service {service:?}, backend {backend}: health_check: {kind}")]
pub struct HealthConfigError {
    pub service: String,
    pub backend: SocketAddr,
    /// Boxed: the kinds carry parse errors and values, and errors travel in `Result`s.
    pub kind: Box<HealthConfigErrorKind>,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthConfigErrorKind {
    #[error("type = {value:?} is unknown; use \"tcp\", \"http\", \"udp\" or \"none\"")]
    UnknownType { value: String },
    #[error("{key} = {value:?} is not a duration; write e.g. \"2s\" or \"500ms\"")]
    BadDuration {
        key: &'static str,
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("{key} = {value:?} must be longer than zero")]
    ZeroDuration { key: &'static str, value: String },
    #[error("interval = {value:?} is longer than 1 day; check at least daily")]
    IntervalTooLong { value: String },
    #[error("timeout {timeout} must be shorter than interval {interval}; lower timeout or raise interval")]
    TimeoutNotBelowInterval { timeout: String, interval: String },
    #[error("{key} = 0; give at least 1 (the number of consecutive checks that change the state)")]
    ZeroCount { key: &'static str },
    #[error("port = 0; give a port in 1..=65535, or leave port out to check the backend's port")]
    ZeroPort,
    #[error("{key} = {value:?} is not an IP address (write it without a port)")]
    BadAddress {
        key: &'static str,
        value: String,
        #[source]
        source: AddrParseError,
    },
    #[error("source {source_addr} and check address {check} are of different address families; use a source of the check address's family")]
    FamilyMismatch { source_addr: IpAddr, check: IpAddr },
    #[error("path = {value:?} must start with \"/\" and be a valid URI path (percent-encode spaces and the like)")]
    BadPath { value: String },
    #[error(
        "host = {value:?} is not a valid Host header value; use a host name, optionally with :port"
    )]
    BadHost { value: String },
    #[error("expect_status = {value} is not a status code or range; write 200, \"200\" or \"200-399\" with codes in 100..=599")]
    BadStatus { value: RawStatus },
    #[error("{key} does not apply to type = \"{kind}\"; remove it, or set type = \"{needs}\"")]
    KeyNotForType {
        key: &'static str,
        kind: CheckKind,
        needs: CheckKind,
    },
    #[error("type = \"udp\" needs send = \"...\", the payload the backend answers")]
    UdpNeedsSend,
}

/// Merges the service's default table and the backend's override (the override wins key
/// by key) and validates the result for the backend `backend` of service `service`.
///
/// No tables at all gives the default check: tcp connect to the backend every 2 s,
/// timeout 1 s, rise 2, fall 3. Whether a service without a `health_check` table is
/// checked at all is the caller's choice (pass `type = "none"` to turn checks off).
///
/// A key that the resolved type does not use (e.g. `path` with `tcp`) is an error, so a
/// forgotten `type = "http"` is reported rather than silently ignored; the one
/// exception is a backend override that sets `type` itself: the service's keys for
/// another type are then ignored for that backend.
pub fn resolve(
    service: &str,
    backend: SocketAddr,
    default: Option<&HealthCheckConfig>,
    backend_override: Option<&HealthCheckConfig>,
) -> Result<HealthCheck, HealthConfigError> {
    resolve_inner(backend, default, backend_override).map_err(|kind| HealthConfigError {
        service: service.to_owned(),
        backend,
        kind: Box::new(kind),
    })
}

fn resolve_inner(
    backend: SocketAddr,
    default: Option<&HealthCheckConfig>,
    backend_override: Option<&HealthCheckConfig>,
) -> Result<HealthCheck, HealthConfigErrorKind> {
    let empty = HealthCheckConfig::default();
    let service_table = default.unwrap_or(&empty);
    let backend_table = backend_override.unwrap_or(&empty);
    let merged = merge(service_table, backend_table);

    let kind = match merged.kind.as_deref() {
        None => CheckKind::Tcp,
        Some(value) => {
            CheckKind::parse(value).ok_or_else(|| HealthConfigErrorKind::UnknownType {
                value: value.to_owned(),
            })?
        }
    };
    check_keys_fit(backend_table, kind)?;
    if backend_table.kind.is_none() {
        check_keys_fit(service_table, kind)?;
    }

    let interval = parse_duration("interval", merged.interval.as_deref())?;
    if let (Some(long), Some(value)) = (interval, &merged.interval) {
        if long > MAX_INTERVAL {
            return Err(HealthConfigErrorKind::IntervalTooLong {
                value: value.clone(),
            });
        }
    }
    let timeout = parse_duration("timeout", merged.timeout.as_deref())?;
    let (interval, timeout) = match (interval, timeout) {
        (interval, Some(timeout)) => {
            let interval = interval.unwrap_or(DEFAULT_INTERVAL);
            if timeout >= interval {
                return Err(HealthConfigErrorKind::TimeoutNotBelowInterval {
                    timeout: humantime::format_duration(timeout).to_string(),
                    interval: humantime::format_duration(interval).to_string(),
                });
            }
            (interval, timeout)
        }
        // Only the interval given: the default timeout must not make a short interval
        // invalid, so it shrinks to half the interval.
        (Some(interval), None) => (interval, DEFAULT_TIMEOUT.min(interval / 2)),
        (None, None) => (DEFAULT_INTERVAL, DEFAULT_TIMEOUT),
    };

    let rise = merged.rise.unwrap_or(DEFAULT_RISE);
    if rise == 0 {
        return Err(HealthConfigErrorKind::ZeroCount { key: "rise" });
    }
    let fall = merged.fall.unwrap_or(DEFAULT_FALL);
    if fall == 0 {
        return Err(HealthConfigErrorKind::ZeroCount { key: "fall" });
    }

    let port = match merged.port {
        Some(0) => return Err(HealthConfigErrorKind::ZeroPort),
        Some(port) => port,
        None => backend.port(),
    };
    let addr = match merged.addr.as_deref() {
        Some(value) => parse_ip("addr", value)?,
        None => backend.ip(),
    };
    let source = merged
        .source
        .as_deref()
        .map(|value| parse_ip("source", value))
        .transpose()?;
    if let Some(source_addr) = source {
        if source_addr.is_ipv4() != addr.is_ipv4() {
            return Err(HealthConfigErrorKind::FamilyMismatch {
                source_addr,
                check: addr,
            });
        }
    }

    let probe = match kind {
        CheckKind::None => Probe::None,
        CheckKind::Tcp => Probe::Tcp,
        CheckKind::Http => Probe::Http(http_probe(&merged)?),
        CheckKind::Udp => Probe::Udp(UdpProbe {
            send: merged
                .send
                .clone()
                .ok_or(HealthConfigErrorKind::UdpNeedsSend)?
                .into_bytes(),
            expect: merged.expect.clone().map(String::into_bytes),
        }),
    };

    Ok(HealthCheck {
        probe,
        target: SocketAddr::new(addr, port),
        source,
        interval,
        timeout,
        rise,
        fall,
    })
}

fn http_probe(merged: &HealthCheckConfig) -> Result<HttpProbe, HealthConfigErrorKind> {
    let path = match merged.path.as_deref() {
        None => http::uri::PathAndQuery::from_static("/"),
        Some(value) => value
            .parse::<http::uri::PathAndQuery>()
            .ok()
            .filter(|_| value.starts_with('/'))
            .ok_or_else(|| HealthConfigErrorKind::BadPath {
                value: value.to_owned(),
            })?,
    };
    let host = match merged.host.as_deref() {
        None => None,
        Some(value) => Some(
            http::HeaderValue::from_str(value)
                .ok()
                .filter(|_| !value.is_empty())
                .ok_or_else(|| HealthConfigErrorKind::BadHost {
                    value: value.to_owned(),
                })?,
        ),
    };
    let expect_status = match &merged.expect_status {
        None => DEFAULT_EXPECT_STATUS,
        Some(raw) => StatusRange::parse(raw)
            .ok_or_else(|| HealthConfigErrorKind::BadStatus { value: raw.clone() })?,
    };
    Ok(HttpProbe {
        path,
        host,
        expect_status,
        expect_body: merged.expect_body.clone(),
    })
}

/// Key by key, the override's value if it has one, else the default's.
fn merge(default: &HealthCheckConfig, over: &HealthCheckConfig) -> HealthCheckConfig {
    fn pick<T: Clone>(over: &Option<T>, default: &Option<T>) -> Option<T> {
        over.clone().or_else(|| default.clone())
    }
    HealthCheckConfig {
        kind: pick(&over.kind, &default.kind),
        interval: pick(&over.interval, &default.interval),
        timeout: pick(&over.timeout, &default.timeout),
        rise: pick(&over.rise, &default.rise),
        fall: pick(&over.fall, &default.fall),
        port: pick(&over.port, &default.port),
        addr: pick(&over.addr, &default.addr),
        source: pick(&over.source, &default.source),
        path: pick(&over.path, &default.path),
        host: pick(&over.host, &default.host),
        expect_status: pick(&over.expect_status, &default.expect_status),
        expect_body: pick(&over.expect_body, &default.expect_body),
        send: pick(&over.send, &default.send),
        expect: pick(&over.expect, &default.expect),
    }
}

/// Rejects keys of `table` that a check of `kind` would ignore.
fn check_keys_fit(table: &HealthCheckConfig, kind: CheckKind) -> Result<(), HealthConfigErrorKind> {
    let typed: [(&'static str, bool, CheckKind); 6] = [
        ("path", table.path.is_some(), CheckKind::Http),
        ("host", table.host.is_some(), CheckKind::Http),
        (
            "expect_status",
            table.expect_status.is_some(),
            CheckKind::Http,
        ),
        ("expect_body", table.expect_body.is_some(), CheckKind::Http),
        ("send", table.send.is_some(), CheckKind::Udp),
        ("expect", table.expect.is_some(), CheckKind::Udp),
    ];
    match typed
        .into_iter()
        .find(|&(_, set, needs)| set && needs != kind)
    {
        Some((key, _, needs)) => Err(HealthConfigErrorKind::KeyNotForType { key, kind, needs }),
        None => Ok(()),
    }
}

fn parse_duration(
    key: &'static str,
    value: Option<&str>,
) -> Result<Option<Duration>, HealthConfigErrorKind> {
    let Some(value) = value else { return Ok(None) };
    let duration =
        humantime::parse_duration(value).map_err(|source| HealthConfigErrorKind::BadDuration {
            key,
            value: value.to_owned(),
            source,
        })?;
    if duration.is_zero() {
        return Err(HealthConfigErrorKind::ZeroDuration {
            key,
            value: value.to_owned(),
        });
    }
    Ok(Some(duration))
}

fn parse_ip(key: &'static str, value: &str) -> Result<IpAddr, HealthConfigErrorKind> {
    value
        .parse()
        .map_err(|source| HealthConfigErrorKind::BadAddress {
            key,
            value: value.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKEND: &str = "10.0.0.2:8080";

    fn table(toml_text: &str) -> HealthCheckConfig {
        toml::from_str(toml_text).expect("test table parses")
    }

    fn backend() -> SocketAddr {
        BACKEND.parse().unwrap()
    }

    fn resolve_tables(default: &str, over: &str) -> Result<HealthCheck, HealthConfigError> {
        resolve("web", backend(), Some(&table(default)), Some(&table(over)))
    }

    fn error_of(default: &str, over: &str) -> (HealthConfigErrorKind, String) {
        let err = resolve_tables(default, over).expect_err("table must be rejected");
        let text = err.to_string();
        assert!(
            text.starts_with("service \"web\", backend 10.0.0.2:8080: health_check: "),
            "error names service and backend: {text}"
        );
        (*err.kind, text)
    }

    #[test]
    fn no_table_gives_tcp_to_the_backend_with_haproxy_counts() {
        let check = resolve("web", backend(), None, None).unwrap();
        assert_eq!(
            check,
            HealthCheck {
                probe: Probe::Tcp,
                target: backend(),
                source: None,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 3,
            }
        );
    }

    #[test]
    fn http_defaults() {
        let check = resolve_tables("type = \"http\"", "").unwrap();
        assert_eq!(
            check.probe,
            Probe::Http(HttpProbe {
                path: http::uri::PathAndQuery::from_static("/"),
                host: None,
                expect_status: StatusRange { lo: 200, hi: 399 },
                expect_body: None,
            })
        );
    }

    #[test]
    fn backend_override_wins_key_by_key() {
        let check = resolve_tables(
            r#"
            type = "http"
            interval = "10s"
            timeout = "3s"
            rise = 5
            path = "/healthz"
            host = "www.example"
            expect_status = "200-299"
            expect_body = "ok"
            "#,
            r#"
            port = 9000
            addr = "10.0.0.9"
            source = "10.0.0.1"
            fall = 1
            expect_status = 204
            "#,
        )
        .unwrap();
        assert_eq!(check.target, "10.0.0.9:9000".parse().unwrap());
        assert_eq!(check.source, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(check.interval, Duration::from_secs(10));
        assert_eq!(check.timeout, Duration::from_secs(3));
        assert_eq!((check.rise, check.fall), (5, 1));
        assert_eq!(
            check.probe,
            Probe::Http(HttpProbe {
                path: http::uri::PathAndQuery::from_static("/healthz"),
                host: Some(http::HeaderValue::from_static("www.example")),
                expect_status: StatusRange { lo: 204, hi: 204 },
                expect_body: Some("ok".into()),
            })
        );
    }

    #[test]
    fn backend_override_can_change_the_type_and_drop_the_services_http_keys() {
        let check = resolve_tables(
            "type = \"http\"\npath = \"/healthz\"",
            "type = \"udp\"\nsend = \"ping\"\nexpect = \"pong\"",
        )
        .unwrap();
        assert_eq!(
            check.probe,
            Probe::Udp(UdpProbe {
                send: b"ping".to_vec(),
                expect: Some(b"pong".to_vec()),
            })
        );
        let none = resolve_tables("type = \"http\"\npath = \"/x\"", "type = \"none\"").unwrap();
        assert_eq!(none.probe, Probe::None);
    }

    #[test]
    fn interval_alone_shrinks_the_default_timeout_below_it() {
        let check = resolve_tables("interval = \"500ms\"", "").unwrap();
        assert_eq!(check.interval, Duration::from_millis(500));
        assert_eq!(check.timeout, Duration::from_millis(250));
        let long = resolve_tables("interval = \"30s\"", "").unwrap();
        assert_eq!(long.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn status_ranges_parse() {
        let parse = |raw: RawStatus| StatusRange::parse(&raw);
        assert_eq!(
            parse(RawStatus::Text("200-399".into())),
            Some(StatusRange { lo: 200, hi: 399 })
        );
        assert_eq!(
            parse(RawStatus::Text(" 204 ".into())),
            Some(StatusRange { lo: 204, hi: 204 })
        );
        assert_eq!(
            parse(RawStatus::Code(503)),
            Some(StatusRange { lo: 503, hi: 503 })
        );
        for bad in ["399-200", "99", "600", "2xx", "200-", "-", ""] {
            assert_eq!(parse(RawStatus::Text(bad.into())), None, "{bad:?}");
        }
        assert_eq!(parse(RawStatus::Code(-1)), None);
        assert_eq!(parse(RawStatus::Code(70_000)), None);
    }

    #[test]
    fn unknown_keys_are_rejected_by_the_parser() {
        let err = toml::from_str::<HealthCheckConfig>("intervall = \"2s\"").unwrap_err();
        assert!(err.to_string().contains("intervall"), "{err}");
    }

    #[test]
    fn each_validation_error_names_the_key_and_the_fix() {
        use HealthConfigErrorKind as K;
        /// (service table, backend table, expected kind, text the message contains)
        type Case = (&'static str, &'static str, fn(&K) -> bool, &'static str);
        let cases: &[Case] = &[
            (
                "type = \"icmp\"",
                "",
                |k| matches!(k, K::UnknownType { .. }),
                "type = \"icmp\" is unknown",
            ),
            (
                "interval = \"2 parsecs\"",
                "",
                |k| {
                    matches!(
                        k,
                        K::BadDuration {
                            key: "interval",
                            ..
                        }
                    )
                },
                "interval = \"2 parsecs\" is not a duration",
            ),
            (
                "",
                "timeout = \"soon\"",
                |k| matches!(k, K::BadDuration { key: "timeout", .. }),
                "timeout = \"soon\"",
            ),
            (
                "interval = \"0s\"",
                "",
                |k| {
                    matches!(
                        k,
                        K::ZeroDuration {
                            key: "interval",
                            ..
                        }
                    )
                },
                "longer than zero",
            ),
            (
                "interval = \"2days\"",
                "",
                |k| matches!(k, K::IntervalTooLong { .. }),
                "interval = \"2days\" is longer than 1 day",
            ),
            (
                "timeout = \"2s\"",
                "",
                |k| matches!(k, K::TimeoutNotBelowInterval { .. }),
                "timeout 2s must be shorter than interval 2s",
            ),
            (
                "interval = \"1s\"",
                "timeout = \"1500ms\"",
                |k| matches!(k, K::TimeoutNotBelowInterval { .. }),
                "timeout 1s 500ms must be shorter than interval 1s",
            ),
            (
                "rise = 0",
                "",
                |k| matches!(k, K::ZeroCount { key: "rise" }),
                "rise = 0",
            ),
            (
                "",
                "fall = 0",
                |k| matches!(k, K::ZeroCount { key: "fall" }),
                "fall = 0",
            ),
            ("", "port = 0", |k| matches!(k, K::ZeroPort), "port = 0"),
            (
                "addr = \"10.0.0.1:80\"",
                "",
                |k| matches!(k, K::BadAddress { key: "addr", .. }),
                "addr = \"10.0.0.1:80\" is not an IP address",
            ),
            (
                "",
                "source = \"eth0\"",
                |k| matches!(k, K::BadAddress { key: "source", .. }),
                "source = \"eth0\"",
            ),
            (
                "source = \"::1\"",
                "",
                |k| matches!(k, K::FamilyMismatch { .. }),
                "different address families",
            ),
            (
                "type = \"http\"\npath = \"healthz\"",
                "",
                |k| matches!(k, K::BadPath { .. }),
                "path = \"healthz\" must start with \"/\"",
            ),
            (
                "type = \"http\"\npath = \"/a b\"",
                "",
                |k| matches!(k, K::BadPath { .. }),
                "path = \"/a b\"",
            ),
            (
                "type = \"http\"\nhost = \"a\\nb\"",
                "",
                |k| matches!(k, K::BadHost { .. }),
                "host = ",
            ),
            (
                "type = \"http\"\nexpect_status = \"2xx\"",
                "",
                |k| matches!(k, K::BadStatus { .. }),
                "expect_status = \"2xx\"",
            ),
            (
                "type = \"http\"",
                "expect_status = 700",
                |k| matches!(k, K::BadStatus { .. }),
                "expect_status = 700",
            ),
            (
                "path = \"/healthz\"",
                "",
                |k| {
                    matches!(
                        k,
                        K::KeyNotForType {
                            key: "path",
                            kind: CheckKind::Tcp,
                            needs: CheckKind::Http
                        }
                    )
                },
                "path does not apply to type = \"tcp\"; remove it, or set type = \"http\"",
            ),
            (
                "type = \"http\"",
                "send = \"x\"",
                |k| matches!(k, K::KeyNotForType { key: "send", .. }),
                "send does not apply to type = \"http\"",
            ),
            (
                "type = \"udp\"",
                "",
                |k| matches!(k, K::UdpNeedsSend),
                "needs send",
            ),
        ];
        for (default, over, is_kind, needle) in cases {
            let (kind, text) = error_of(default, over);
            assert!(
                is_kind(&kind),
                "{default:?} + {over:?}: wrong error {kind:?}"
            );
            assert!(
                text.contains(needle),
                "{default:?} + {over:?}: {text:?} lacks {needle:?}"
            );
        }
    }
}
