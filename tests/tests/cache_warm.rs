//! Cache tier warm-up: a URL list fetched from the upstreams and stored with pipelined writes.
use xdp_lb::cache::warm::{self, WarmReport};
use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RedisServer, Reply, TempDir, Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_stores_the_listed_urls_for_every_instance() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, _| match s.path.as_str() {
        "/private" => Reply::ok("p").header("cache-control", "private, max-age=600"),
        "/vary" => Reply::ok("v")
            .header("cache-control", "max-age=600")
            .header("vary", "accept-encoding"),
        p => Reply::ok(&format!("body {p}")).header("cache-control", "max-age=600"),
    })
    .await;
    let dir = TempDir::new("warm");
    let list = dir.0.join("urls.txt");
    let mut text = String::from("# warm-up list\n\n");
    for i in 0..150 {
        text.push_str(&format!("http://cache.test/obj/{i}\n"));
    }
    text.push_str("http://cache.test/private\nhttp://cache.test/vary\n");
    std::fs::write(&list, text).unwrap();

    let cfg = test_config(&[up.addr], vec![redis.url()]);
    let urls = warm::read_urls(&list).expect("url list parses");
    assert_eq!(urls.len(), 152);
    let report = warm::warm(cfg.clone(), urls, false)
        .await
        .expect("warm-up runs");
    assert_eq!(
        report,
        WarmReport {
            stored: 151,
            not_storable: 1,
            failed: 0
        }
    );
    assert_eq!(up.total(), 152);

    let proxy = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    for i in [0, 77, 149] {
        let r = c.get(proxy.addr, &format!("/obj/{i}")).await;
        assert_eq!((r.x_cache(), r.text()), ("HIT", format!("body /obj/{i}")));
    }
    assert_eq!(c.get(proxy.addr, "/vary").await.x_cache(), "HIT");
    assert_eq!(c.get(proxy.addr, "/private").await.x_cache(), "MISS");
    assert_eq!(up.total(), 153, "only the private URL went upstream again");

    std::fs::write(&list, "http://cache.test/ok\nnot a url\n").unwrap();
    assert!(warm::read_urls(&list).is_err(), "a bad line is reported");
}
