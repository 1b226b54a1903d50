//! Cache tier on a Redis Cluster of three masters on loopback ports.
use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RedisCluster, Reply, Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_spread_over_the_masters_and_hit() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster start");
    let up = Upstream::start(|s, _| {
        Reply::ok(&format!("body of {}", s.path)).header("cache-control", "max-age=60")
    })
    .await;
    let mut cfg = test_config(&[up.addr], cluster.urls());
    cfg.redis.cluster = true;
    cfg.redis.timeout_ms = 1_000;
    let a = ProxyInstance::start(cfg.clone()).await;
    let b = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    let paths: Vec<String> = (0..30).map(|i| format!("/item/{i}")).collect();
    for p in &paths {
        let r = c.get(a.addr, p).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "MISS"), "{p}");
    }
    for p in &paths {
        let r = c.get(b.addr, p).await;
        assert_eq!(
            (r.x_cache(), r.text()),
            ("HIT", format!("body of {p}")),
            "{p}"
        );
    }
    assert_eq!(up.total(), 30);
    for node in &cluster.nodes {
        assert!(
            node.dbsize() > 0,
            "node on port {} holds no entry",
            node.port
        );
    }
    // Purge goes to the node owning the key, and every instance sees it.
    assert_eq!(
        c.send(a.addr, "PURGE", "/item/7", &[], b"")
            .await
            .status
            .as_u16(),
        200
    );
    assert_eq!(c.get(b.addr, "/item/7").await.x_cache(), "MISS");

    // A prefix purge visits every master.
    let mut argv = vec![
        "xdp-lb",
        "cache",
        "purge",
        "--redis-cluster",
        "--prefix",
        "http://cache.test/item/1",
    ];
    let urls = cluster.urls();
    for u in &urls {
        argv.push("--redis");
        argv.push(u);
    }
    let argv: Vec<String> = argv.into_iter().map(String::from).collect();
    std::thread::spawn(move || {
        let cli =
            <xdp_lb::cli::Cli as clap::Parser>::try_parse_from(argv).expect("arguments parse");
        xdp_lb::cli::dispatch(cli)
    })
    .join()
    .expect("purge thread")
    .expect("prefix purge on the cluster");
    // /item/1 and /item/10../item/19 are gone, the rest still hit.
    for i in [1, 10, 15, 19] {
        assert_eq!(
            c.get(b.addr, &format!("/item/{i}")).await.x_cache(),
            "MISS",
            "/item/{i}"
        );
    }
    for i in [0, 2, 9, 20, 29] {
        assert_eq!(
            c.get(b.addr, &format!("/item/{i}")).await.x_cache(),
            "HIT",
            "/item/{i}"
        );
    }
}
