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

/// A request to send: method, path, headers.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Hot-tier hits are answered from a head prepared once per entry (`cache::ready`) when the
/// request is plain, and the general way otherwise: either way the answer must be the one a
/// Redis hit gets. A second instance without a hot tier, on the same Redis, gives the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_hits_answer_as_redis_hits_do() {
    let redis = RedisServer::start();
    let text = "compressible text ".repeat(100);
    let up = Upstream::start(move |s, _| match s.path.as_str() {
        "/text" => Reply::ok(&text)
            .header("cache-control", "max-age=600")
            .header("content-type", "text/plain")
            .header("etag", "\"t1\""),
        "/gone" => Reply::ok("not here")
            .status(404)
            .header("cache-control", "max-age=600"),
        "/vary" => Reply::ok(&format!(
            "for {}",
            s.headers
                .get("x-lang")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        ))
        .header("cache-control", "max-age=600")
        .header("vary", "x-lang"),
        _ => Reply::ok("plain body")
            .header("cache-control", "max-age=600")
            .header("age", "5")
            .header("etag", "\"p1\"")
            .header("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT")
            .header("x-multi", "a")
            .header("x-multi", "b"),
    })
    .await;
    let hot = ProxyInstance::start(hot_config(up.addr, &redis)).await;
    let cold = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let cases: &[Case] = &[
        ("GET", "/plain", &[]),
        ("HEAD", "/plain", &[]),
        ("GET", "/plain", &[("if-none-match", "\"p1\"")]),
        (
            "GET",
            "/plain",
            &[("if-modified-since", "Mon, 02 Nov 2026 11:00:00 GMT")],
        ),
        ("GET", "/plain", &[("range", "bytes=2-4")]),
        ("GET", "/plain", &[("range", "bytes=900-")]),
        ("GET", "/text", &[]),
        ("HEAD", "/text", &[("accept-encoding", "gzip")]),
        ("GET", "/text", &[("accept-encoding", "gzip")]),
        ("GET", "/text", &[("accept-encoding", "gzip, br")]),
        ("GET", "/text", &[("accept-encoding", "br;q=0, *")]),
        (
            "GET",
            "/text",
            &[("accept-encoding", "br"), ("range", "bytes=0-9")],
        ),
        (
            "GET",
            "/text",
            &[("accept-encoding", "gzip"), ("if-none-match", "W/\"t1\"")],
        ),
        ("GET", "/gone", &[]),
        ("GET", "/vary", &[("x-lang", "fr")]),
        ("GET", "/vary", &[("x-lang", "de")]),
    ];
    for (method, path, headers) in cases {
        let case = format!("{method} {path} {headers:?}");
        // Bounded: the hot tier takes entries only once its subscription is up.
        let before = hot.stats.snapshot().hot_hits;
        let mut from_hot = None;
        for _ in 0..100 {
            let r = c.send(hot.addr, method, path, headers, b"").await;
            if hot.stats.snapshot().hot_hits > before && r.x_cache() == "HIT" {
                from_hot = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut from_hot = from_hot.unwrap_or_else(|| panic!("{case}: no hot-tier hit"));
        let mut from_redis = c.send(cold.addr, method, path, headers, b"").await;
        assert_eq!(from_redis.x_cache(), "HIT", "{case}: reference from Redis");
        let age = |g: &mut xdp_lb_tests::cache_support::Got| -> u64 {
            let a = g.headers.remove("age").expect("an Age header");
            assert!(g.headers.get("age").is_none(), "one Age header");
            a.to_str().unwrap().parse().unwrap()
        };
        let (hot_age, redis_age) = (age(&mut from_hot), age(&mut from_redis));
        // Two clocks read at different moments: a second boundary may fall between them.
        assert!(
            hot_age.abs_diff(redis_age) <= 1,
            "{case}: Age {hot_age} vs {redis_age}"
        );
        if *path == "/plain" {
            assert!(hot_age >= 5, "{case}: the upstream's Age counts");
        }
        assert_eq!(from_hot.status, from_redis.status, "{case}");
        assert_eq!(from_hot.headers, from_redis.headers, "{case}");
        assert_eq!(from_hot.body, from_redis.body, "{case}");
    }
    // Each answer made from a prepared head writes its own Age: it grows with time.
    let first = c.get(hot.addr, "/plain").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = c.get(hot.addr, "/plain").await;
    let secs =
        |g: &xdp_lb_tests::cache_support::Got| -> u64 { g.header("age").unwrap().parse().unwrap() };
    assert!(secs(&later) > secs(&first), "Age grows on hot hits");
    assert_eq!(
        up.hits("/plain"),
        1,
        "every answer above came from the cache"
    );
}
