//! Cache tier, failures around it: Redis killed and restarted, bad client input, garbage
//! upstreams, upstream failover and retries. None of it may poison the cache.
use std::time::Duration;

use xdp_lb_tests::cache_support::{
    raw_exchange, test_config, GarbageUpstream, HttpClient, ProxyInstance, RedisServer, Reply,
    Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    let mut redis = RedisServer::start();
    let up =
        Upstream::start(|_, n| Reply::ok(&format!("v{n}")).header("cache-control", "max-age=60"))
            .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    c.get(proxy.addr, "/k").await;
    assert_eq!(c.get(proxy.addr, "/k").await.x_cache(), "HIT");

    redis.kill();
    for i in 0..20 {
        let r = c.get(proxy.addr, "/k").await;
        assert_eq!(r.status.as_u16(), 200, "request {i} with redis down");
        assert_eq!(r.x_cache(), "MISS");
    }
    assert_eq!(up.hits("/k"), 21);
    assert!(
        proxy.stats.snapshot().errors > 0,
        "redis failures are counted"
    );

    redis.restart();
    // Reconnection is automatic; allow it a bounded number of requests.
    let mut resumed = false;
    for _ in 0..50 {
        if c.get(proxy.addr, "/k").await.x_cache() == "HIT" {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "hits resume once redis is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_from_the_start() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let up = Upstream::start(|_, _| Reply::ok("ok").header("cache-control", "max-age=60")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![url])).await;
    let c = HttpClient::default();
    for _ in 0..5 {
        let r = c.get(proxy.addr, "/d").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_requests_are_refused() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| Reply::ok("ok").header("cache-control", "max-age=60")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let addr = proxy.addr;
    let bad = tokio::task::spawn_blocking(move || raw_exchange(addr, b"THIS IS NOT HTTP\r\n\r\n"))
        .await
        .unwrap();
    assert!(bad.starts_with("HTTP/1.1 400"), "got {bad:?}");
    let huge = format!(
        "GET /big HTTP/1.1\r\nHost: cache.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let big = tokio::task::spawn_blocking(move || raw_exchange(addr, huge.as_bytes()))
        .await
        .unwrap();
    assert!(big.starts_with("HTTP/1.1 431"), "got {big:?}");
    assert_eq!(up.total(), 0, "nothing reached the upstream");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_upstream_gives_502_and_is_not_cached() {
    let redis = RedisServer::start();
    let garbage = GarbageUpstream::start().await;
    let proxy = ProxyInstance::start(test_config(&[garbage.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    for _ in 0..2 {
        let r = c.get(proxy.addr, "/g").await;
        assert_eq!(r.status.as_u16(), 502);
        assert_ne!(r.x_cache(), "HIT");
    }
    assert_eq!(redis.cli(&["KEYS", "xlc:e:*"]).trim(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_fail_over_and_dead_upstreams_are_skipped() {
    let redis = RedisServer::start();
    let dead = {
        // A port with nothing listening: connections are refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let up = Upstream::start(|_, _| Reply::ok("alive")).await;
    let mut cfg = test_config(&[dead, up.addr], vec![redis.url()]);
    cfg.max_fails = 1;
    cfg.fail_timeout_ms = 60_000;
    let proxy = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    for _ in 0..6 {
        let r = c.get(proxy.addr, "/x").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "alive"));
    }
    // The dead upstream was tried at most once, then skipped for fail_timeout.
    assert_eq!(proxy.stats.snapshot().upstream_requests, 7);
    // A POST is not retried: with only the dead upstream it fails.
    let mut cfg = test_config(&[dead], vec![redis.url()]);
    cfg.max_fails = 1;
    let only_dead = ProxyInstance::start(cfg).await;
    assert_eq!(
        c.send(only_dead.addr, "POST", "/x", &[], b"1")
            .await
            .status
            .as_u16(),
        502
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_spreads_requests() {
    let redis = RedisServer::start();
    let a = Upstream::start(|_, _| Reply::ok("a")).await;
    let b = Upstream::start(|_, _| Reply::ok("b")).await;
    let mut cfg = test_config(&[a.addr, b.addr], vec![redis.url()]);
    cfg.upstreams[0].weight = 3;
    let proxy = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    for _ in 0..40 {
        c.get(proxy.addr, "/rr").await;
    }
    assert_eq!((a.total(), b.total()), (30, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_stream_through_uncached() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| {
        Reply::ok(&"z".repeat(10_000)).header("cache-control", "max-age=60")
    })
    .await;
    let mut cfg = test_config(&[up.addr], vec![redis.url()]);
    cfg.max_body_bytes = 4_096;
    let proxy = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    for _ in 0..2 {
        let r = c.get(proxy.addr, "/large").await;
        assert_eq!(
            (r.status.as_u16(), r.x_cache(), r.body.len()),
            (200, "MISS", 10_000)
        );
    }
    assert_eq!(up.hits("/large"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_is_bypassed_within_the_timeout_and_recovers() {
    let redis = RedisServer::start();
    let up =
        Upstream::start(|_, n| Reply::ok(&format!("v{n}")).header("cache-control", "max-age=60"))
            .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    c.get(proxy.addr, "/z").await;
    assert_eq!(c.get(proxy.addr, "/z").await.x_cache(), "HIT");

    redis.pause();
    for i in 0..5 {
        let r = c.get(proxy.addr, "/z").await;
        assert_eq!(
            (r.status.as_u16(), r.x_cache()),
            (200, "MISS"),
            "request {i} with redis frozen"
        );
    }
    assert!(
        proxy.stats.snapshot().errors >= 5,
        "every timed-out lookup is counted"
    );
    redis.resume();
    let mut resumed = false;
    for _ in 0..50 {
        if c.get(proxy.addr, "/z").await.x_cache() == "HIT" {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "hits resume once redis answers again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_progress_finish() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| Reply::ok("finished").delay(Duration::from_millis(500))).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let addr = proxy.addr;
    let c = HttpClient::default();
    let inflight = tokio::spawn(async move { c.get(addr, "/slow").await });
    for _ in 0..200 {
        if up.total() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.total(), 1, "the request reached the upstream");
    drop(proxy);
    let r = inflight.await.expect("client task");
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "finished"));
    let mut closed = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the listener is closed after shutdown");
}
