//! Cache tier, in-process hot tier: it answers repeated hits without Redis, and invalidations
//! from other instances (PURGE, unsafe methods, prefix purges) reach it through Redis pub/sub.
use std::net::SocketAddr;
use std::time::Duration;

use xdp_lb::cache::CacheConfig;
use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RedisServer, Reply, Upstream,
};

fn hot_config(up: SocketAddr, redis: &RedisServer) -> CacheConfig {
    let mut cfg = test_config(&[up], vec![redis.url()]);
    // Far longer than the test: only invalidation messages can clear it.
    cfg.hot_ttl_ms = 600_000;
    cfg
}

/// Polls (bounded: 100 tries, 20 ms apart) until `path` on `addr` answers with `want`.
async fn eventually(c: &HttpClient, addr: SocketAddr, path: &str, want: &str) -> bool {
    for _ in 0..100 {
        if c.get(addr, path).await.x_cache() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_tier_serves_hits_and_sees_remote_invalidations() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, n| {
        if s.method == "PUT" {
            Reply::ok("stored")
        } else {
            Reply::ok(&format!("v{n}")).header("cache-control", "max-age=600")
        }
    })
    .await;
    let a = ProxyInstance::start(hot_config(up.addr, &redis)).await;
    let b = ProxyInstance::start(hot_config(up.addr, &redis)).await;
    let c = HttpClient::default();
    // Let both subscriptions come up (bounded): until then the hot tier stays off.
    assert!(eventually(&c, a.addr, "/h", "HIT").await);
    for _ in 0..5 {
        assert_eq!(c.get(b.addr, "/h").await.x_cache(), "HIT");
    }
    assert!(
        b.stats.snapshot().hot_hits > 0,
        "repeated hits come from memory"
    );

    assert_eq!(
        c.send(a.addr, "PURGE", "/h", &[], b"")
            .await
            .status
            .as_u16(),
        200
    );
    assert!(
        eventually(&c, b.addr, "/h", "MISS").await,
        "b saw a's purge"
    );
    assert_eq!(c.get(b.addr, "/h").await.text(), "v1");

    assert_eq!(c.get(a.addr, "/h").await.x_cache(), "HIT");
    c.send(b.addr, "PUT", "/h", &[], b"new").await;
    assert!(
        eventually(&c, a.addr, "/h", "MISS").await,
        "a saw b's invalidation by PUT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_tier_keeps_serving_during_a_redis_outage() {
    let mut redis = RedisServer::start();
    let up =
        Upstream::start(|_, n| Reply::ok(&format!("v{n}")).header("cache-control", "max-age=600"))
            .await;
    let a = ProxyInstance::start(hot_config(up.addr, &redis)).await;
    let c = HttpClient::default();
    assert!(eventually(&c, a.addr, "/k", "HIT").await);
    for _ in 0..3 {
        c.get(a.addr, "/k").await;
    }
    assert!(a.stats.snapshot().hot_hits > 0);
    assert_eq!(up.hits("/k"), 1);

    redis.kill();
    // Wait (bounded) until the instance noticed: its invalidation subscription is gone.
    let mut noticed = false;
    for _ in 0..200 {
        if a.stats.snapshot().hot_subscription_losses > 0 {
            noticed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(noticed, "the subscription loss was seen");
    for i in 0..20 {
        let r = c.get(a.addr, "/k").await;
        assert_eq!(
            (r.status.as_u16(), r.x_cache(), r.text().as_str()),
            (200, "HIT", "v0"),
            "request {i} during the outage"
        );
    }
    assert_eq!(
        up.hits("/k"),
        1,
        "the origin saw no extra load for the hot key"
    );
    // Keys the hot tier does not hold go to the origin, uncached.
    let r = c.get(a.addr, "/cold").await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "MISS"));

    // Back (empty): invalidations sent meanwhile could have been missed, so the hot tier
    // starts over once it listens again, and the key is fetched once more.
    redis.restart();
    assert!(
        eventually(&c, a.addr, "/k", "MISS").await,
        "hot tier emptied on resubscription"
    );
    assert!(eventually(&c, a.addr, "/k", "HIT").await);
    // At least once more; more if Redis was still reconnecting when the first refetch ran.
    assert!(up.hits("/k") >= 2);
}
