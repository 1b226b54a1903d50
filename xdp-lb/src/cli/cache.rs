//! `xdp-lb cache ...`: dispatch, and the glue that gives `cache serve` run alone its own
//! `/metrics` (the monitor's exporter over the tier's counters), so the cache module
//! itself knows nothing of the monitor.
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;

use crate::cache::{CacheArgs, CacheCommand, Server};
use crate::monitor::{metrics, server, CacheSample};

pub fn run(args: CacheArgs) -> anyhow::Result<()> {
    match args.command {
        CacheCommand::Serve {
            source,
            listen,
            upstreams,
            metrics_listen,
        } => {
            let cfg = crate::cache::serve_config(&source, listen, &upstreams)?;
            serve(cfg, parse_listen(&metrics_listen)?)
        }
        CacheCommand::Warm {
            source,
            upstreams,
            file,
        } => crate::cache::warm_command(&source, &upstreams, &file),
        CacheCommand::Purge {
            source,
            key,
            prefix,
        } => crate::cache::purge_command(&source, key, prefix),
    }
}

/// `ADDR:PORT`, or `off` for no endpoint.
fn parse_listen(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse().map(Some).with_context(|| {
        format!("--metrics-listen {s:?}: expected ADDR:PORT such as 127.0.0.1:9718, or \"off\"")
    })
}

fn serve(cfg: crate::cache::CacheConfig, metrics_at: Option<SocketAddr>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        // Both ports are bound before either serves, so a port in use fails the start.
        let tier = Server::bind(cfg).await?;
        let exporter = match metrics_at {
            Some(addr) => Some(bind_metrics(addr).await?),
            None => None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let exporter = exporter.map(|(listener, exposure)| {
            let stats = tier.stats();
            let source: server::MetricsSource =
                Arc::new(move || metrics::render_cache(CacheSample::from(stats.snapshot())));
            tokio::spawn(server::serve_metrics(listener, source, exposure, async {
                let _ = stopped.await;
            }))
        });
        tier.run(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
        let _ = stop.send(());
        if let Some(task) = exporter {
            task.await.context("the /metrics task")??;
        }
        anyhow::Ok(())
    })
}

async fn bind_metrics(
    addr: SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, server::Exposure)> {
    // As the daemon does: an address the operator wrote is honoured, with a warning.
    let exposure = if addr.ip().is_loopback() {
        server::Exposure::LoopbackOnly
    } else {
        log::warn!("--metrics-listen {addr} is not loopback: the cache figures are readable from the network");
        server::Exposure::AllowRemote
    };
    let listener = server::bind_metrics(addr, exposure)
        .await
        .context("starting /metrics (choose a free --metrics-listen ADDR:PORT, or off)")?;
    Ok((listener, exposure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        assert_eq!(parse_listen("off").unwrap(), None);
        assert_eq!(
            parse_listen(crate::cache::DEFAULT_METRICS_LISTEN).unwrap(),
            Some("127.0.0.1:9718".parse().unwrap())
        );
        assert_ne!(
            crate::cache::DEFAULT_METRICS_LISTEN,
            crate::config::DEFAULT_METRICS_LISTEN,
            "the tier alone and the daemon can run on one machine"
        );
        let err = format!("{:#}", parse_listen("9718").unwrap_err());
        assert!(err.contains("expected ADDR:PORT"), "{err}");
    }
}
