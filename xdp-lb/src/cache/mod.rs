//! L7 cache tier: an HTTP/1.1 reverse proxy in front of an upstream pool, with an RFC 9111
//! shared cache kept in Redis so every instance serves what any instance fetched.
pub mod body;
pub mod compress;
pub mod config;
pub mod encode;
pub mod entry;
pub mod freshness;
mod get_batch;
pub mod headers;
pub mod hot;
pub mod interim;
pub mod key;
pub mod proxy;
pub mod range;
pub mod ready;
pub mod request;
pub mod server;
pub mod stats;
pub mod store;
pub mod upstream;
pub mod warm;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

pub use config::CacheConfig;
pub use server::{ServeError, Server};

/// Displays an error and its causes as `outer: inner: root`, for log lines (anyhow's `{:#}` does
/// the same at the binary's edge). A cause whose text the message so far already contains is
/// left out: some library errors repeat their source in their own text.
pub struct Causes<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut next = self.0.source();
        while let Some(e) = next {
            let text = e.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            next = e.source();
        }
        f.write_str(&shown)
    }
}

/// Runs the cache tier until `shutdown` completes (the entry point for `[cache]` of `xdp-lb run`).
pub async fn serve(cfg: CacheConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    Server::bind(cfg).await?.run(shutdown).await
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// TOML file with the cache settings (a `[cache]` table, or the settings at top level).
    /// Without it, the defaults apply (see the README).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Redis URL (repeatable; with --redis-cluster these are seed nodes). Overrides the file.
    /// [default: redis://127.0.0.1:6379]
    #[arg(long = "redis")]
    pub redis: Vec<String>,
    /// Treat the Redis nodes as a Redis Cluster.
    #[arg(long)]
    pub redis_cluster: bool,
}

const SERVE_EXAMPLES: &str = "\
Examples:
  # Two upstreams weighted 2:1, Redis on this host, listening on 127.0.0.1:8080
  xdp-lb cache serve --upstream 10.0.0.2:8080@2 --upstream 10.0.0.3:8080

  # Every setting from a file, listening on all addresses
  xdp-lb cache serve --config /etc/xdp-lb/cache.toml --listen 0.0.0.0:8080

  # A Redis Cluster, given by two of its nodes
  xdp-lb cache serve --upstream 10.0.0.2:8080 --redis-cluster \\
      --redis redis://10.0.1.1:6379 --redis redis://10.0.1.2:6379

  # Its counters for Prometheus (default address; `--metrics-listen off` disables)
  curl -s http://127.0.0.1:9718/metrics

When Redis cannot be reached the proxy still serves, uncached, and says so in its log.";

const WARM_EXAMPLES: &str = "\
Examples:
  # urls.txt: one absolute URL per line, e.g. http://example.org/index.html
  xdp-lb cache warm --config /etc/xdp-lb/cache.toml urls.txt
  xdp-lb cache warm --upstream 10.0.0.2:8080 --redis redis://10.0.1.1:6379 urls.txt

Prints the URLs that failed and a summary; exits 1 when any URL could not be stored
or when Redis does not answer (then nothing is fetched).";

const PURGE_EXAMPLES: &str = "\
Examples:
  xdp-lb cache purge http://example.org/a?b=1
  xdp-lb cache purge --prefix http://example.org/images/
  xdp-lb cache purge --config /etc/xdp-lb/cache.toml http://example.org/

Keys use the normalised host (lowercase, no :80), as rendered by the key template
(default {scheme}://{host}{path}{query}). Exits 1 when KEY was not cached.";

/// Where `cache serve` serves `/metrics` unless told otherwise: loopback, one port above
/// the daemon's (127.0.0.1:9717).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9718";

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Run the caching reverse proxy.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve {
        #[command(flatten)]
        source: SourceArgs,
        /// Address to listen on. Overrides the file. [default: 127.0.0.1:8080]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Upstream as ADDR:PORT[@WEIGHT], weight 1 by default (repeatable). Overrides the file.
        #[arg(short, long = "upstream")]
        upstreams: Vec<String>,
        /// Prometheus endpoint with the tier's counters, ADDR:PORT or `off`. The default
        /// port is not the daemon's 9717, so both can run on one machine.
        #[arg(long, default_value = DEFAULT_METRICS_LISTEN)]
        metrics_listen: String,
    },
    /// Fetch the URLs listed in FILE (one per line) from the upstreams and store them.
    #[command(after_help = WARM_EXAMPLES)]
    Warm {
        #[command(flatten)]
        source: SourceArgs,
        /// Upstream as ADDR:PORT[@WEIGHT], weight 1 by default (repeatable). Overrides the file.
        #[arg(short, long = "upstream")]
        upstreams: Vec<String>,
        /// File with one absolute http:// URL per line (blank lines and # comments skipped).
        file: PathBuf,
    },
    /// Remove one cache key (e.g. http://example.org/a?b) or every key under a prefix, for all instances.
    #[command(after_help = PURGE_EXAMPLES)]
    Purge {
        #[command(flatten)]
        source: SourceArgs,
        /// The cache key, as rendered by the key template.
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        /// Remove every key starting with this (on a cluster: on every master).
        #[arg(long)]
        prefix: Option<String>,
    },
}

fn load(source: &SourceArgs) -> anyhow::Result<CacheConfig> {
    let mut cfg = match &source.config {
        Some(path) => from_file(path)?,
        None => CacheConfig::default(),
    };
    if !source.redis.is_empty() {
        cfg.redis.nodes = source.redis.clone();
    }
    if source.redis_cluster {
        cfg.redis.cluster = true;
    }
    Ok(cfg)
}

fn from_file(path: &Path) -> anyhow::Result<CacheConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut value: toml::Table =
        toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    let table = match value.remove("cache") {
        Some(toml::Value::Table(t)) => t,
        _ => value,
    };
    table
        .try_into()
        .with_context(|| format!("invalid cache settings in {}", path.display()))
}

fn parse_upstream(s: &str) -> anyhow::Result<config::UpstreamConfig> {
    let (addr, weight) = match s.split_once('@') {
        Some((a, w)) => (
            a,
            w.parse()
                .with_context(|| format!("bad weight {w:?} in upstream {s:?}"))?,
        ),
        None => (s, 1),
    };
    Ok(config::UpstreamConfig {
        addr: addr
            .parse()
            .with_context(|| format!("bad upstream address {addr:?} (expected ADDR:PORT)"))?,
        weight,
    })
}

fn with_upstreams(cfg: &mut CacheConfig, upstreams: &[String]) -> anyhow::Result<()> {
    if !upstreams.is_empty() {
        cfg.upstreams = upstreams
            .iter()
            .map(|u| parse_upstream(u))
            .collect::<anyhow::Result<_>>()?;
    }
    Ok(())
}

/// The settings `cache serve` runs with: the file, then the flags over it, validated.
pub fn serve_config(
    source: &SourceArgs,
    listen: Option<SocketAddr>,
    upstreams: &[String],
) -> anyhow::Result<CacheConfig> {
    let mut cfg = load(source)?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    with_upstreams(&mut cfg, upstreams)?;
    cfg.validate().context("invalid cache configuration")?;
    Ok(cfg)
}

/// `xdp-lb cache warm`.
pub fn warm_command(source: &SourceArgs, upstreams: &[String], file: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    let mut cfg = load(source)?;
    with_upstreams(&mut cfg, upstreams)?;
    cfg.validate().context("invalid cache configuration")?;
    let urls = warm::read_urls(file)?;
    let report = rt
        .block_on(warm::warm(cfg, urls, true))
        .map_err(|e| anyhow::anyhow!("{}", Causes(&e)))?;
    println!(
        "warmed: stored {}, not cacheable {}, failed {}",
        report.stored, report.not_storable, report.failed
    );
    if report.failed > 0 {
        anyhow::bail!("{} URLs could not be stored", report.failed);
    }
    Ok(())
}

/// `xdp-lb cache purge`: one key, or every key under `prefix`.
pub fn purge_command(
    source: &SourceArgs,
    key: Option<String>,
    prefix: Option<String>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    let cfg = load(source)?;
    // Purging needs Redis only: no upstreams required, but the Redis part must hold.
    cfg.redis
        .validate()
        .context("invalid cache configuration")?;
    // The redis crate's errors repeat their cause in their text; print it once.
    let once = |e: store::StoreError| anyhow::anyhow!("{}", Causes(&e));
    rt.block_on(async {
        // The lazy connection manager needs the runtime at construction.
        let store =
            store::Store::new(&cfg.redis, Arc::new(stats::Stats::default())).map_err(once)?;
        match (key, prefix) {
            (_, Some(p)) => {
                let n = store.purge_prefix(&p).await.map_err(once)?;
                println!("purged {n} entries");
            }
            (Some(k), None) => {
                if !store.del(&store.entry_key(&k)).await.map_err(once)? {
                    // Non-zero, so a script notices a key that was mistyped or never
                    // cached (hosts are lowercase and without :80 in keys).
                    anyhow::bail!("{k:?} was not cached; nothing purged");
                }
                println!("purged");
            }
            (None, None) => unreachable!("clap requires a key or --prefix"),
        }
        anyhow::Ok(())
    })
}
