//! L7 cache tier: an HTTP/1.1 reverse proxy in front of an upstream pool, with an RFC 9111
//! shared cache kept in Redis so every instance serves what any instance fetched.
pub mod body;
pub mod config;
pub mod entry;
pub mod freshness;
pub mod headers;
pub mod hot;
pub mod key;
pub mod proxy;
pub mod range;
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
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Redis URL (repeatable; with --redis-cluster these are seed nodes). Overrides the file.
    #[arg(long = "redis")]
    pub redis: Vec<String>,
    /// Treat the Redis nodes as a Redis Cluster.
    #[arg(long)]
    pub redis_cluster: bool,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Run the caching reverse proxy.
    Serve {
        #[command(flatten)]
        source: SourceArgs,
        /// Address to listen on, e.g. 127.0.0.1:8080. Overrides the file.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Upstream as ADDR:PORT[@WEIGHT] (repeatable). Overrides the file.
        #[arg(short, long = "upstream")]
        upstreams: Vec<String>,
    },
    /// Fetch the URLs listed in FILE (one per line) from the upstreams and store them.
    Warm {
        #[command(flatten)]
        source: SourceArgs,
        /// Upstream as ADDR:PORT[@WEIGHT] (repeatable). Overrides the file.
        #[arg(short, long = "upstream")]
        upstreams: Vec<String>,
        /// File with one absolute http:// URL per line.
        file: PathBuf,
    },
    /// Remove one cache key (e.g. http://example.org/a?b) or every key under a prefix, for all instances.
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
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
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
            w.parse().with_context(|| format!("bad weight in {s:?}"))?,
        ),
        None => (s, 1),
    };
    Ok(config::UpstreamConfig {
        addr: addr
            .parse()
            .with_context(|| format!("bad upstream address {addr:?}"))?,
        weight,
    })
}

pub fn run(args: CacheArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    match args.command {
        CacheCommand::Serve {
            source,
            listen,
            upstreams,
        } => {
            let mut cfg = load(&source)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if !upstreams.is_empty() {
                cfg.upstreams = upstreams
                    .iter()
                    .map(|u| parse_upstream(u))
                    .collect::<anyhow::Result<_>>()?;
            }
            cfg.validate().context("invalid cache configuration")?;
            rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("installing the SIGTERM handler")?;
                serve(cfg, async move {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                })
                .await?;
                anyhow::Ok(())
            })?;
        }
        CacheCommand::Warm {
            source,
            upstreams,
            file,
        } => {
            let mut cfg = load(&source)?;
            if !upstreams.is_empty() {
                cfg.upstreams = upstreams
                    .iter()
                    .map(|u| parse_upstream(u))
                    .collect::<anyhow::Result<_>>()?;
            }
            cfg.validate().context("invalid cache configuration")?;
            let urls = warm::read_urls(&file)?;
            let report = rt.block_on(warm::warm(cfg, urls, true))?;
            println!(
                "warmed: stored {}, not cacheable {}, failed {}",
                report.stored, report.not_storable, report.failed
            );
            if report.failed > 0 {
                anyhow::bail!("{} URLs could not be stored", report.failed);
            }
        }
        CacheCommand::Purge {
            source,
            key,
            prefix,
        } => {
            let cfg = load(&source)?;
            rt.block_on(async {
                // The lazy connection manager needs the runtime at construction.
                let store = store::Store::new(&cfg.redis, Arc::new(stats::Stats::default()))?;
                match (key, prefix) {
                    (_, Some(p)) => {
                        let n = store.purge_prefix(&p).await?;
                        println!("purged {n} entries");
                    }
                    (Some(k), None) => {
                        let found = store.del(&store.entry_key(&k)).await?;
                        println!("{}", if found { "purged" } else { "not cached" });
                    }
                    (None, None) => unreachable!("clap requires a key or --prefix"),
                }
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}
