//! Cache tier counters, as a metrics exporter reads them: every counter matches the traffic
//! that was sent.
use xdp_lb::cache::stats::BypassReason;
use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RedisServer, Reply, Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_the_traffic() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, _| match s.path.as_str() {
        "/missing" => Reply::ok("no").status(404),
        "/broken" => Reply::ok("down").status(503),
        _ => Reply::ok("ok").header("cache-control", "max-age=600"),
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let before = proxy.stats.snapshot();

    c.get(proxy.addr, "/a").await; // miss
    c.get(proxy.addr, "/a").await; // hit
    c.get(proxy.addr, "/a").await; // hit
    c.get(proxy.addr, "/missing").await; // miss, 4xx
    c.get(proxy.addr, "/broken").await; // miss, 5xx
    c.send(proxy.addr, "POST", "/a", &[], b"x").await; // bypass: method
    c.get_with(proxy.addr, "/a", &[("authorization", "Bearer t")])
        .await; // bypass: authorization
    c.get_with(proxy.addr, "/a", &[("cache-control", "no-store")])
        .await; // bypass: no-store
    c.get_with(proxy.addr, "/a", &[("host", "a@b")]).await; // refused

    let s = proxy.stats.snapshot();
    assert_eq!(before.hits + before.misses, 0);
    assert_eq!((s.hits, s.misses, s.refused), (2, 3, 1));
    assert_eq!(s.bypassed(BypassReason::Method), 1);
    assert_eq!(s.bypassed(BypassReason::Authorization), 1);
    assert_eq!(s.bypassed(BypassReason::NoStore), 1);
    // 200s: three for /a, the POST and two bypassed GETs; 4xx: /missing and the refusal.
    assert_eq!(s.status_class, [0, 6, 0, 2, 1]);
    assert_eq!(s.upstream_requests, 6);
    assert!(s.redis_calls > 0 && s.redis_latency_us > 0);
    assert_eq!(s.errors, 0);
    assert_eq!(s.redis_reachable, Some(true));
}
