//! Cache tier, stale serving: stale-if-error on 503 and timeouts, stale-while-revalidate with
//! exactly one background refresh, and the directives that forbid stale copies.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RedisServer, Reply, Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_copy_is_served_when_upstream_fails_or_times_out() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| {
        Reply::ok("good").header("cache-control", "max-age=1, stale-if-error=60")
    })
    .await;
    let mut cfg = test_config(&[up.addr], vec![redis.url()]);
    cfg.upstream_timeout_ms = 300;
    let proxy = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    c.get(proxy.addr, "/s").await;
    tokio::time::sleep(Duration::from_millis(1_600)).await;

    up.set_handler(|_, _| Reply::ok("broken").status(503));
    let r = c.get(proxy.addr, "/s").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "STALE", "good")
    );

    up.set_handler(|_, _| {
        Reply::ok("late")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_secs(2))
    });
    let r = c.get(proxy.addr, "/s").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "STALE", "good")
    );

    // Without a stale copy the same failures reach the client.
    let r = c.get(proxy.addr, "/fresh-path").await;
    assert_eq!(r.status.as_u16(), 504);
    up.set_handler(|_, _| Reply::ok("broken").status(503));
    assert_eq!(c.get(proxy.addr, "/other").await.status.as_u16(), 503);
    assert_eq!(proxy.stats.snapshot().stale, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_forbids_stale_on_error() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| {
        Reply::ok("good").header(
            "cache-control",
            "max-age=1, stale-if-error=60, must-revalidate",
        )
    })
    .await;
    let mut cfg = test_config(&[up.addr], vec![redis.url()]);
    cfg.stale_if_error_s = 60;
    let proxy = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    c.get(proxy.addr, "/m").await;
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    up.set_handler(|_, _| Reply::ok("broken").status(503));
    let r = c.get(proxy.addr, "/m").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "broken"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_runs_exactly_one_background_refresh() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, n| {
        Reply::ok(&format!("v{n}")).header("cache-control", "max-age=1, stale-while-revalidate=60")
    })
    .await;
    let a = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let b = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    assert_eq!(c.get(a.addr, "/w").await.text(), "v0");
    tokio::time::sleep(Duration::from_millis(1_600)).await;

    // The refresh is slow, so every request below finds the entry stale.
    let release = Arc::new(AtomicBool::new(false));
    let r2 = Arc::clone(&release);
    up.set_handler(move |_, n| {
        let delay = if r2.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            Duration::from_millis(800)
        };
        Reply::ok(&format!("v{n}"))
            .header("cache-control", "max-age=60")
            .delay(delay)
    });
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (c, addr) = (c.clone(), if i % 2 == 0 { a.addr } else { b.addr });
        tasks.push(tokio::spawn(async move { c.get(addr, "/w").await }));
    }
    for t in tasks {
        let r = t.await.expect("client task");
        assert_eq!(
            (r.status.as_u16(), r.x_cache(), r.text().as_str()),
            (200, "UPDATING", "v0")
        );
    }
    // Wait (bounded) for the single refresh to land.
    let mut refreshed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = c.get(b.addr, "/w").await;
        if r.x_cache() == "HIT" {
            refreshed = Some(r);
            break;
        }
    }
    release.store(true, Ordering::SeqCst);
    let r = refreshed.expect("the background refresh stored a fresh copy within 5 s");
    assert_eq!(r.text(), "v1");
    assert_eq!(
        up.hits("/w"),
        2,
        "one original fetch and exactly one background refresh"
    );
}
