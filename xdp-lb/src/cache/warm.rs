//! `xdp-lb cache warm FILE`: fetches a list of URLs through the upstream pool and stores the
//! cacheable answers with pipelined Redis writes, showing a progress bar.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use super::config::CacheConfig;
use super::proxy::{Proxy, ProxyError, Warmed};
use super::stats::Stats;
use super::store::StoreError;
use super::Causes;

/// URLs fetched at once.
const CONCURRENCY: usize = 16;
/// Entries per pipelined write.
const BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WarmFileError {
    #[error("cannot read the url list {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0}, line {1}: {2:?} is not an absolute http url (e.g. http://example.org/a)")]
    BadUrl(PathBuf, usize, String),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// Checked before anything is fetched, so a warm-up without Redis fails at once instead of
    /// loading the upstreams for nothing.
    #[error("redis does not answer; nothing was fetched")]
    RedisDown(#[source] StoreError),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WarmReport {
    pub stored: usize,
    pub not_storable: usize,
    pub failed: usize,
}

/// Reads one URL per line; blank lines and `#` comments are skipped.
pub fn read_urls(path: &Path) -> Result<Vec<http::Uri>, WarmFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| WarmFileError::Read(path.to_path_buf(), e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| match l.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => Ok(u),
            _ => Err(WarmFileError::BadUrl(path.to_path_buf(), n, l.to_string())),
        })
        .collect()
}

/// Fetches and stores `urls`. With `show_progress` and a terminal on stderr a progress bar is
/// drawn; the URLs that failed are printed to stderr either way (cron and CI logs need them).
pub async fn warm(
    cfg: CacheConfig,
    urls: Vec<http::Uri>,
    show_progress: bool,
) -> Result<WarmReport, WarmFileError> {
    let proxy = Proxy::new(cfg, Arc::new(Stats::default()))?;
    proxy
        .store()
        .ping()
        .await
        .map_err(WarmFileError::RedisDown)?;
    let show_progress = show_progress && std::io::stderr().is_terminal();
    let bar = if show_progress {
        ProgressBar::new(urls.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = WarmReport::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut pending = urls.into_iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < CONCURRENCY {
            let Some(uri) = pending.next() else { break };
            let p = Arc::clone(&proxy);
            running.spawn(async move {
                let r = p.warm_fetch(&uri).await;
                (uri, r)
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let Ok((uri, result)) = done else {
            report.failed += 1;
            continue;
        };
        match result {
            Ok(Warmed::Ready {
                redis_key,
                bytes,
                keep_for,
            }) => batch.push((redis_key, bytes, keep_for)),
            Ok(Warmed::Stored) => report.stored += 1,
            Ok(Warmed::NotStorable(_) | Warmed::TooLarge) => report.not_storable += 1,
            Err(e) => {
                report.failed += 1;
                let line = format!("failed: {uri}: {}", Causes(&e));
                if show_progress {
                    bar.println(line);
                } else {
                    eprintln!("{line}");
                }
            }
        }
        if batch.len() >= BATCH {
            flush(&proxy, &mut batch, &mut report).await;
        }
        bar.inc(1);
    }
    flush(&proxy, &mut batch, &mut report).await;
    bar.finish_with_message(format!(
        "stored {}, not cacheable {}, failed {}",
        report.stored, report.not_storable, report.failed
    ));
    Ok(report)
}

async fn flush(
    proxy: &Proxy,
    batch: &mut Vec<(String, Vec<u8>, std::time::Duration)>,
    report: &mut WarmReport,
) {
    match proxy.store().set_many(batch).await {
        Ok(()) => report.stored += batch.len(),
        Err(e) => {
            eprintln!(
                "failed: writing {} entries to redis: {}",
                batch.len(),
                Causes(&e)
            );
            report.failed += batch.len();
        }
    }
    batch.clear();
}
