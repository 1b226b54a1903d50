//! Cache tier, basic RFC 9111 behaviour against a real Redis and a real upstream over loopback.
use std::collections::BTreeMap;
use std::time::Duration;

use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RedisServer, Reply, Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_then_expiry() {
    let redis = RedisServer::start();
    let up =
        Upstream::start(|_, n| Reply::ok(&format!("v{n}")).header("cache-control", "max-age=1"))
            .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();

    let r = c.get(proxy.addr, "/a").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "MISS", "v0")
    );
    let r = c.get(proxy.addr, "/a").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "HIT", "v0")
    );
    assert!(r.header("age").is_some(), "hits carry Age");
    assert_eq!(up.hits("/a"), 1);

    tokio::time::sleep(Duration::from_millis(1_600)).await;
    // No validators and no grace: Redis itself evicted the entry at the end of its freshness.
    let r = c.get(proxy.addr, "/a").await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("MISS", "v1"));
    assert_eq!(up.hits("/a"), 2);
    let r = c.get(proxy.addr, "/a").await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("HIT", "v1"));
    let s = proxy.stats.snapshot();
    assert_eq!((s.hits, s.misses, s.expired), (2, 2, 0));
    assert_eq!(
        redis.cli(&["KEYS", "xlc:e:*"]).trim(),
        "xlc:e:http://cache.test/a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_status_ttl_only_when_configured() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, _| match s.path.as_str() {
        "/missing" => Reply::ok("nope").status(404),
        "/moved" => Reply::ok("").status(302).header("location", "/a"),
        _ => Reply::ok("plain"),
    })
    .await;
    let mut cfg = test_config(&[up.addr], vec![redis.url()]);
    cfg.status_ttl = BTreeMap::from([("404".into(), 60), ("302".into(), 60)]);
    let proxy = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    for path in ["/missing", "/moved", "/plain"] {
        c.get(proxy.addr, path).await;
    }
    let r = c.get(proxy.addr, "/missing").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (404, "HIT", "nope")
    );
    let r = c.get(proxy.addr, "/moved").await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (302, "HIT"));
    // No freshness information and no operator TTL for 200: never stored.
    let r = c.get(proxy.addr, "/plain").await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(
        (up.hits("/missing"), up.hits("/moved"), up.hits("/plain")),
        (1, 1, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_private_set_cookie_and_authorization_are_not_cached() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, _| match s.path.as_str() {
        "/no-store" => Reply::ok("x").header("cache-control", "no-store, max-age=60"),
        "/private" => Reply::ok("x").header("cache-control", "private, max-age=60"),
        "/cookie" => Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "s=1"),
        _ => Reply::ok("x").header("cache-control", "max-age=60"),
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    for path in ["/no-store", "/private", "/cookie"] {
        for _ in 0..2 {
            let r = c.get(proxy.addr, path).await;
            assert_eq!((r.status.as_u16(), r.x_cache()), (200, "MISS"), "{path}");
        }
        assert_eq!(
            up.hits(path),
            2,
            "{path} must reach the upstream every time"
        );
    }
    for _ in 0..2 {
        let r = c
            .get_with(proxy.addr, "/auth", &[("authorization", "Bearer t")])
            .await;
        assert_eq!(r.x_cache(), "BYPASS");
    }
    assert_eq!(up.hits("/auth"), 2);
    // The authorized responses did not fill the cache for anonymous clients.
    assert_eq!(c.get(proxy.addr, "/auth").await.x_cache(), "MISS");
    assert_eq!(redis.cli(&["KEYS", "xlc:e:*cookie*"]).trim(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_variant_per_header_value() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, _| {
        let lang = s
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Reply::ok(&format!("lang={lang}"))
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(c.get_with(proxy.addr, "/v", &en).await.x_cache(), "MISS");
    assert_eq!(c.get_with(proxy.addr, "/v", &fr).await.x_cache(), "MISS");
    let r = c.get_with(proxy.addr, "/v", &en).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("HIT", "lang=en"));
    let r = c.get_with(proxy.addr, "/v", &fr).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("HIT", "lang=fr"));
    let r = c.get(proxy.addr, "/v").await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("MISS", "lang=none"));
    assert_eq!(up.hits("/v"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_from_the_get_entry_and_fills_it() {
    let redis = RedisServer::start();
    let up =
        Upstream::start(|_, _| Reply::ok("hello body").header("cache-control", "max-age=60")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let r = c.send(proxy.addr, "HEAD", "/h", &[], b"").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.body.len()),
        (200, "MISS", 0)
    );
    assert_eq!(r.header("content-length"), Some("10"));
    let r = c.get(proxy.addr, "/h").await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("HIT", "hello body"));
    let r = c.send(proxy.addr, "HEAD", "/h", &[], b"").await;
    assert_eq!(
        (r.x_cache(), r.body.len(), r.header("content-length")),
        ("HIT", 0, Some("10"))
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].method, "GET",
        "a HEAD miss is fetched as GET so it can be stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_304_updates_the_entry() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, n| {
        if s.headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"e1\"")
        {
            Reply::ok("")
                .status(304)
                .header("etag", "\"e1\"")
                .header("cache-control", "max-age=60")
                .header("x-rev", &n.to_string())
        } else {
            Reply::ok("body-1")
                .header("etag", "\"e1\"")
                .header("cache-control", "max-age=1")
                .header("x-rev", "0")
        }
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    assert_eq!(c.get(proxy.addr, "/r").await.x_cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let r = c.get(proxy.addr, "/r").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "EXPIRED", "body-1")
    );
    assert_eq!(
        r.header("x-rev"),
        Some("1"),
        "headers of the 304 replace the stored ones"
    );
    // The 304 carried max-age=60: the updated entry is fresh again.
    let r = c.get(proxy.addr, "/r").await;
    assert_eq!(
        (r.x_cache(), r.text().as_str(), r.header("x-rev")),
        ("HIT", "body-1", Some("1"))
    );
    assert_eq!(up.hits("/r"), 2);
    let r = c
        .get_with(proxy.addr, "/r", &[("if-none-match", "\"e1\"")])
        .await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (304, "HIT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_hop_by_hop_removal() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| Reply::ok("x").header("x-up", "1")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    c.get_with(
        proxy.addr,
        "/f",
        &[
            ("host", "app.test"),
            ("x-forwarded-for", "198.18.0.9"),
            ("connection", "x-drop"),
            ("x-drop", "1"),
            ("te", "trailers"),
        ],
    )
    .await;
    let seen = &up.requests()[0];
    let h = |n: &str| {
        seen.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(h("host").as_deref(), Some("app.test"));
    assert_eq!(
        h("x-forwarded-for").as_deref(),
        Some("198.18.0.9, 127.0.0.1")
    );
    assert_eq!(h("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-drop"), None);
    assert_eq!(h("te"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_method_invalidates_the_target() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, n| {
        if s.method == "POST" {
            Reply::ok("posted")
        } else {
            Reply::ok(&format!("v{n}")).header("cache-control", "max-age=60")
        }
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    c.get(proxy.addr, "/item").await;
    assert_eq!(c.get(proxy.addr, "/item").await.x_cache(), "HIT");
    let r = c.send(proxy.addr, "POST", "/item", &[], b"data").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "BYPASS", "posted")
    );
    let r = c.get(proxy.addr, "/item").await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("MISS", "v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_never_goes_upstream() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| Reply::ok("x").header("cache-control", "max-age=60")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let oic = [("cache-control", "only-if-cached")];
    assert_eq!(
        c.get_with(proxy.addr, "/o", &oic).await.status.as_u16(),
        504
    );
    assert_eq!(up.total(), 0);
    c.get(proxy.addr, "/o").await;
    let r = c.get_with(proxy.addr, "/o", &oic).await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"));
    assert_eq!(up.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_are_answered_from_the_cache() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| {
        Reply::ok("doc")
            .header("cache-control", "max-age=60")
            .header("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT")
            .header("etag", "W/\"d1\"")
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    c.get(proxy.addr, "/doc").await;
    let later = [("if-modified-since", "Tue, 03 Nov 2026 10:00:00 GMT")];
    let r = c.get_with(proxy.addr, "/doc", &later).await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.body.len()),
        (304, "HIT", 0)
    );
    let earlier = [("if-modified-since", "Sun, 01 Nov 2026 10:00:00 GMT")];
    let r = c.get_with(proxy.addr, "/doc", &earlier).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "doc"));
    let r = c
        .get_with(proxy.addr, "/doc", &[("if-none-match", "\"d1\"")])
        .await;
    assert_eq!(r.status.as_u16(), 304, "weak comparison for If-None-Match");
    let r = c
        .get_with(proxy.addr, "/doc", &[("if-none-match", "\"other\"")])
        .await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(up.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_for_another_validator_is_not_passed_to_an_unconditional_client() {
    let redis = RedisServer::start();
    let up = Upstream::start(|s, n| {
        if s.headers.contains_key("if-none-match") {
            Reply::ok("").status(304).header("etag", "\"b\"")
        } else {
            let tag = if n == 0 { "\"a\"" } else { "\"b\"" };
            Reply::ok(&format!("body{n}"))
                .header("etag", tag)
                .header("cache-control", "max-age=1")
        }
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    assert_eq!(c.get(proxy.addr, "/e").await.text(), "body0");
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let r = c.get(proxy.addr, "/e").await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "EXPIRED"));
    assert_eq!(r.header("etag"), Some("\"b\""));
    assert_eq!(
        up.hits("/e"),
        3,
        "first fetch, conditional refresh, unconditional refetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_ranges_are_served_from_a_stored_complete_response() {
    let redis = RedisServer::start();
    let up =
        Upstream::start(|_, _| Reply::ok("0123456789").header("cache-control", "max-age=60")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    assert_eq!(c.get(proxy.addr, "/bytes").await.x_cache(), "MISS");
    let r = c
        .get_with(proxy.addr, "/bytes", &[("range", "bytes=2-4")])
        .await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (206, "HIT", "234")
    );
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    let r = c
        .get_with(proxy.addr, "/bytes", &[("range", "bytes=-3")])
        .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (206, "789"));
    let r = c
        .get_with(proxy.addr, "/bytes", &[("range", "bytes=50-")])
        .await;
    assert_eq!(
        (r.status.as_u16(), r.header("content-range")),
        (416, Some("bytes */10"))
    );
    assert_eq!(up.total(), 1);
}
