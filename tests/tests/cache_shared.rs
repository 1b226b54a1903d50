//! Cache tier, behaviour across instances sharing one Redis: request coalescing and purge.
use std::time::Duration;

use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RedisServer, Reply, Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_for_a_cold_key_reach_the_upstream_once() {
    let redis = RedisServer::start();
    // Slow enough that every client arrives while the first fetch is in flight.
    let up = Upstream::start(|_, n| {
        Reply::ok(&format!("cold-{n}"))
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(300))
    })
    .await;
    // Coalescing holds while Redis answers within its timeout; give it room on a loaded machine.
    let mut cfg = test_config(&[up.addr], vec![redis.url()]);
    cfg.redis.timeout_ms = 2_000;
    let a = ProxyInstance::start(cfg.clone()).await;
    let b = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (c, addr) = (c.clone(), if i % 2 == 0 { a.addr } else { b.addr });
        tasks.push(tokio::spawn(async move { c.get(addr, "/cold").await }));
    }
    let mut misses = 0;
    for t in tasks {
        let r = t.await.expect("client task");
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "cold-0"));
        assert!(
            matches!(r.x_cache(), "MISS" | "HIT"),
            "unexpected X-Cache {}",
            r.x_cache()
        );
        misses += usize::from(r.x_cache() == "MISS");
    }
    assert_eq!(up.hits("/cold"), 1, "exactly one upstream request");
    assert_eq!(misses, 1);
    let (sa, sb) = (a.stats.snapshot(), b.stats.snapshot());
    assert_eq!(sa.hits + sa.misses, 100);
    assert_eq!(sb.hits + sb.misses, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_on_one_instance_is_seen_by_the_other() {
    let redis = RedisServer::start();
    let up =
        Upstream::start(|_, n| Reply::ok(&format!("v{n}")).header("cache-control", "max-age=60"))
            .await;
    let a = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let mut cfg_b = test_config(&[up.addr], vec![redis.url()]);
    cfg_b.purge_allow = vec!["198.18.0.1".parse().unwrap()];
    let b = ProxyInstance::start(cfg_b).await;
    let c = HttpClient::default();

    assert_eq!(c.get(a.addr, "/p").await.x_cache(), "MISS");
    assert_eq!(
        c.get(b.addr, "/p").await.x_cache(),
        "HIT",
        "b serves what a fetched"
    );

    let r = c.send(b.addr, "PURGE", "/p", &[], b"").await;
    assert_eq!(
        r.status.as_u16(),
        403,
        "127.0.0.1 is not in b's purge_allow"
    );
    assert_eq!(c.get(b.addr, "/p").await.x_cache(), "HIT");

    let r = c.send(a.addr, "PURGE", "/p", &[], b"").await;
    assert_eq!(r.status.as_u16(), 200);
    let r = c.get(b.addr, "/p").await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("MISS", "v1"));
    assert_eq!(
        c.send(a.addr, "PURGE", "/nothing", &[], b"")
            .await
            .status
            .as_u16(),
        404
    );
    assert_eq!(up.hits("/p"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_command_removes_a_key_and_a_prefix() {
    let redis = RedisServer::start();
    let up =
        Upstream::start(|_, n| Reply::ok(&format!("v{n}")).header("cache-control", "max-age=60"))
            .await;
    let a = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    for p in ["/one", "/dir/a", "/dir/b", "/other"] {
        c.get(a.addr, p).await;
    }
    let url = redis.url();
    let purge = move |args: &[&str]| {
        let mut argv = vec![
            "xdp-lb".to_string(),
            "cache".into(),
            "purge".into(),
            "--redis".into(),
            url.clone(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        // The command builds its own runtime, so it runs on a plain thread.
        std::thread::spawn(move || {
            let cli = <xdp_lb::cli::Cli as clap::Parser>::try_parse_from(argv)
                .expect("purge arguments parse");
            xdp_lb::cli::dispatch(cli)
        })
        .join()
        .expect("purge thread")
    };
    purge(&["http://cache.test/one"]).expect("purge one key");
    purge(&["--prefix", "http://cache.test/dir/"]).expect("purge a prefix");
    for (p, want) in [
        ("/one", "MISS"),
        ("/dir/a", "MISS"),
        ("/dir/b", "MISS"),
        ("/other", "HIT"),
    ] {
        assert_eq!(c.get(a.addr, p).await.x_cache(), want, "{p}");
    }
}
