//! Configuration of the cache tier: the `[cache]` section of `xdp-lb run` and the file of `xdp-lb cache serve`.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

pub use super::compress::CompressionConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no upstream configured")]
    NoUpstreams,
    #[error("upstream {0} has weight 0")]
    ZeroWeight(SocketAddr),
    #[error("no redis node configured (redis.nodes is empty)")]
    NoRedisNodes,
    #[error("redis node {0:?} is not a valid redis url (e.g. redis://127.0.0.1:6379)")]
    BadRedisUrl(String, #[source] redis::RedisError),
    #[error("status_ttl key {0:?} is not an http status code (100-599)")]
    BadStatus(String),
    #[error("key template is empty")]
    EmptyKey,
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("max_header_bytes must be at least 8192 (hyper's minimum buffer)")]
    HeaderLimitTooSmall,
    #[error("compression.{0} = {1} is out of range ({2})")]
    BadLevel(&'static str, u32, &'static str),
}

/// Backend choice among healthy upstreams (the cache's counterpart of the balancer's
/// `algorithm`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Smooth weighted round-robin (plain round-robin when all weights are equal).
    #[default]
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConn,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub addr: SocketAddr,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port` URLs; with `cluster = true` these are the seed nodes.
    pub nodes: Vec<String>,
    pub cluster: bool,
    /// Bound on every Redis operation; past it the request is served as if Redis were absent.
    pub timeout_ms: u64,
    /// Namespace of every key this tier writes.
    pub key_prefix: String,
}

impl RedisConfig {
    /// What the Redis side needs on its own (`cache purge` uses nothing else).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::NoRedisNodes);
        }
        for url in &self.nodes {
            redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|e| ConfigError::BadRedisUrl(url.clone(), e))?;
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::Zero("redis.timeout_ms"));
        }
        Ok(())
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            timeout_ms: 250,
            key_prefix: "xlc:".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub listen: SocketAddr,
    pub upstreams: Vec<UpstreamConfig>,
    /// Named like the balancer's `algorithm`; `balance`, its former name, is still read.
    #[serde(alias = "balance")]
    pub algorithm: Algorithm,
    /// Failures within `fail_timeout_ms` that take an upstream out for `fail_timeout_ms` (nginx semantics).
    pub max_fails: u32,
    pub fail_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Time allowed for the upstream's response headers.
    pub upstream_timeout_ms: u64,
    /// Upstreams tried for one idempotent request (first try included).
    pub max_tries: u32,
    pub redis: RedisConfig,
    /// Cache key template; placeholders: {method} {scheme} {host} {path} {query} ({query} includes its `?`).
    pub key: String,
    /// Bodies larger than this stream through without being stored.
    pub max_body_bytes: usize,
    /// Request bodies are buffered (so idempotent requests can be retried) up to this size.
    pub max_request_body_bytes: usize,
    pub max_header_bytes: usize,
    /// Lifetime in seconds by status code for responses without freshness information
    /// (like nginx `proxy_cache_valid`); empty by default.
    pub status_ttl: BTreeMap<String, u64>,
    /// Grace after expiry during which a stale copy is served when the upstream fails
    /// (added to any `stale-if-error` of the response).
    pub stale_if_error_s: u64,
    /// Grace after expiry during which a stale copy is served while one background refresh runs.
    pub stale_while_revalidate_s: u64,
    /// How long an entry with validators is kept past its grace, for 304 revalidation.
    pub revalidate_keep_s: u64,
    /// Expiry of the coalescing lock (the longest one upstream fetch may hold it).
    pub lock_ttl_ms: u64,
    /// How long a request waits for another instance's fetch before going upstream itself.
    pub lock_wait_ms: u64,
    /// Store responses carrying Set-Cookie (RFC 9111 allows it; off by default because the
    /// cookie would be replayed to every client).
    pub cache_set_cookie: bool,
    /// Look up and store requests carrying Authorization, under RFC 9111 section 3.5 (only
    /// responses marked public, s-maxage or must-revalidate are stored). Off: such requests
    /// bypass the cache.
    pub cache_authorized: bool,
    /// Client addresses allowed to send PURGE.
    pub purge_allow: Vec<IpAddr>,
    /// Period of the statistics log line; 0 disables it.
    pub stats_log_s: u64,
    /// Lifetime of the in-process hot tier in front of Redis; 0 (the default) disables it.
    /// Invalidations reach it through Redis pub/sub, so a purge on another instance is seen
    /// here once the message arrives (normally within milliseconds, at worst after this TTL).
    pub hot_ttl_ms: u64,
    /// Memory bound of the hot tier (bodies, headers and keys).
    pub hot_max_bytes: u64,
    /// gzip and brotli for compressible stored responses (`[cache.compression]`).
    pub compression: CompressionConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            upstreams: Vec::new(),
            algorithm: Algorithm::default(),
            max_fails: 1,
            fail_timeout_ms: 10_000,
            connect_timeout_ms: 1_000,
            upstream_timeout_ms: 30_000,
            max_tries: 2,
            redis: RedisConfig::default(),
            key: "{scheme}://{host}{path}{query}".into(),
            max_body_bytes: 1 << 20,
            max_request_body_bytes: 8 << 20,
            max_header_bytes: 16 * 1024,
            status_ttl: BTreeMap::new(),
            stale_if_error_s: 0,
            stale_while_revalidate_s: 0,
            revalidate_keep_s: 3600,
            lock_ttl_ms: 10_000,
            lock_wait_ms: 5_000,
            cache_set_cookie: false,
            cache_authorized: false,
            purge_allow: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            stats_log_s: 60,
            hot_ttl_ms: 0,
            hot_max_bytes: 64 << 20,
            compression: CompressionConfig::default(),
        }
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.upstreams.is_empty() {
            return Err(ConfigError::NoUpstreams);
        }
        if let Some(u) = self.upstreams.iter().find(|u| u.weight == 0) {
            return Err(ConfigError::ZeroWeight(u.addr));
        }
        self.redis.validate()?;
        if self.key.is_empty() {
            return Err(ConfigError::EmptyKey);
        }
        self.status_ttls()?;
        for (name, v) in [
            ("fail_timeout_ms", self.fail_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("upstream_timeout_ms", self.upstream_timeout_ms),
            ("max_tries", u64::from(self.max_tries)),
            ("max_fails", u64::from(self.max_fails)),
            ("lock_ttl_ms", self.lock_ttl_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::HeaderLimitTooSmall);
        }
        let c = &self.compression;
        if !(1..=9).contains(&c.gzip_level) {
            return Err(ConfigError::BadLevel("gzip_level", c.gzip_level, "1-9"));
        }
        if c.brotli_level > 11 {
            return Err(ConfigError::BadLevel(
                "brotli_level",
                c.brotli_level,
                "0-11",
            ));
        }
        Ok(())
    }

    /// `status_ttl` with parsed keys.
    pub fn status_ttls(&self) -> Result<BTreeMap<u16, Duration>, ConfigError> {
        self.status_ttl
            .iter()
            .map(|(k, v)| match k.parse::<u16>() {
                Ok(code) if (100..600).contains(&code) => Ok((code, Duration::from_secs(*v))),
                _ => Err(ConfigError::BadStatus(k.clone())),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let cfg: CacheConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:8081"
            upstreams = [{ addr = "127.0.0.1:9000", weight = 2 }, { addr = "127.0.0.1:9001" }]
            algorithm = "least-conn"
            [redis]
            nodes = ["redis://127.0.0.1:7000"]
            [status_ttl]
            200 = 600
            404 = 60
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.algorithm, Algorithm::LeastConn);
        assert_eq!(cfg.upstreams[1].weight, 1);
        assert_eq!(cfg.status_ttls().unwrap()[&404], Duration::from_secs(60));
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(toml::from_str::<CacheConfig>("bogus = 1").is_err());
        let mut cfg = CacheConfig::default();
        assert!(matches!(cfg.validate(), Err(ConfigError::NoUpstreams)));
        cfg.upstreams.push(UpstreamConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
        });
        cfg.status_ttl.insert("abc".into(), 1);
        assert!(matches!(cfg.validate(), Err(ConfigError::BadStatus(_))));
        cfg.status_ttl.clear();
        cfg.redis.nodes = vec![];
        assert!(matches!(cfg.validate(), Err(ConfigError::NoRedisNodes)));
        cfg.redis.nodes = vec!["127.0.0.1:6379".into()];
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("\"127.0.0.1:6379\""), "{e}");
    }

    #[test]
    fn reads_the_former_name_of_algorithm() {
        let cfg: CacheConfig = toml::from_str(r#"balance = "least-conn""#).unwrap();
        assert_eq!(cfg.algorithm, Algorithm::LeastConn);
    }
}
