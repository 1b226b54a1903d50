//! Cache tier, compression: gzip and brotli variants made once per stored response, chosen
//! per client by Accept-Encoding, identity for the others and for ranges, upstream
//! encodings passed through untouched, and responses that are not stored compressed as they
//! stream through.
use std::io::{Read, Write};

use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RedisServer, Reply, Upstream,
};

fn page() -> String {
    (0..200)
        .map(|i| format!("<p>line {i} of a page that compresses well</p>\n"))
        .collect()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .expect("valid brotli");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fetch_serves_gzip_brotli_and_identity_clients() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| {
        Reply::ok(&page())
            .header("cache-control", "max-age=600")
            .header("content-type", "text/html; charset=utf-8")
            .header("etag", "\"v1\"")
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let identity = page().into_bytes();

    let r = c.get(proxy.addr, "/p").await;
    assert_eq!((r.x_cache(), r.header("content-encoding")), ("MISS", None));
    assert_eq!(r.body, identity);
    assert!(r.header("vary").unwrap().contains("accept-encoding"));

    let r = c
        .get_with(proxy.addr, "/p", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(
        (r.x_cache(), r.header("content-encoding")),
        ("HIT", Some("gzip"))
    );
    assert!(r.body.len() < identity.len() / 2, "{} bytes", r.body.len());
    assert_eq!(gunzip(&r.body), identity);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(
        r.header("etag"),
        Some("W/\"v1\""),
        "weak for a transformed body"
    );

    for ae in ["gzip, deflate, br", "br", "br;q=1, gzip;q=0.5", "*"] {
        let r = c
            .get_with(proxy.addr, "/p", &[("accept-encoding", ae)])
            .await;
        assert_eq!(r.header("content-encoding"), Some("br"), "{ae}");
        assert_eq!(unbrotli(&r.body), identity, "{ae}");
    }
    let r = c
        .get_with(proxy.addr, "/p", &[("accept-encoding", "br;q=0, gzip")])
        .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    for ae in ["identity", "gzip;q=0, br;q=0", "compress"] {
        let r = c
            .get_with(proxy.addr, "/p", &[("accept-encoding", ae)])
            .await;
        assert_eq!(r.header("content-encoding"), None, "{ae}");
        assert_eq!(r.body, identity, "{ae}");
    }
    // HEAD describes what GET would send to the same client.
    let head = c
        .send(
            proxy.addr,
            "HEAD",
            "/p",
            &[("accept-encoding", "gzip")],
            b"",
        )
        .await;
    let get = c
        .get_with(proxy.addr, "/p", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    // A conditional request with the weak tag of the compressed variant still matches.
    let r = c
        .get_with(
            proxy.addr,
            "/p",
            &[("accept-encoding", "gzip"), ("if-none-match", "W/\"v1\"")],
        )
        .await;
    assert_eq!(r.status.as_u16(), 304);

    assert_eq!(up.hits("/p"), 1, "one upstream fetch served every client");
    let s = proxy.stats.snapshot();
    assert_eq!(s.compressions, 2, "each variant made once");
    assert!(s.compressed_out < s.compressed_in);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_small_bodies_other_types_and_encoded_upstreams_are_left_alone() {
    let redis = RedisServer::start();
    let pre = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(page().as_bytes()).unwrap();
        enc.finish().unwrap()
    };
    let pre2 = pre.clone();
    let up = Upstream::start(move |s, _| {
        let html = |body: &str| {
            Reply::ok(body)
                .header("cache-control", "max-age=600")
                .header("content-type", "text/html")
        };
        match s.path.as_str() {
            "/small" => html("short page"),
            "/png" => Reply::ok(&page())
                .header("cache-control", "max-age=600")
                .header("content-type", "image/png"),
            "/no-transform" => html(&page()).header("cache-control", "no-transform"),
            "/encoded" => {
                let mut r = html("");
                r.body = pre2.clone();
                r.header("content-encoding", "gzip")
            }
            _ => html(&page()),
        }
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let gz = [("accept-encoding", "gzip, br")];

    for path in ["/small", "/png", "/no-transform"] {
        for _ in 0..2 {
            let r = c.get_with(proxy.addr, path, &gz).await;
            assert_eq!(r.header("content-encoding"), None, "{path}");
        }
    }
    // Already gzip from the upstream: passed through byte for byte, to every client.
    for headers in [&gz[..], &[]] {
        let r = c.get_with(proxy.addr, "/encoded", headers).await;
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.body, pre);
    }
    // Ranges come from the identity body.
    c.get(proxy.addr, "/ranged").await;
    let r = c
        .get_with(
            proxy.addr,
            "/ranged",
            &[("accept-encoding", "gzip"), ("range", "bytes=0-9")],
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.header("content-encoding")),
        (206, None)
    );
    assert_eq!(&r.body[..], &page().as_bytes()[..10]);
    assert_eq!(
        proxy.stats.snapshot().compressions,
        2,
        "only /ranged was compressed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_not_stored_are_compressed_on_the_way_out() {
    let redis = RedisServer::start();
    let pre = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(page().as_bytes()).unwrap();
        enc.finish().unwrap()
    };
    let pre2 = pre.clone();
    let up = Upstream::start(move |s, _| {
        let html = Reply::ok(&page()).header("content-type", "text/html");
        match s.path.as_str() {
            // Uncacheable, with a strong validator.
            "/private" => html
                .header("cache-control", "no-store")
                .header("etag", "\"p1\""),
            // Cacheable but above max_body_bytes: streams through.
            "/large" => html.header("cache-control", "max-age=600"),
            "/encoded" => {
                let mut r = html.header("cache-control", "no-store");
                r.body = pre2.clone();
                r.header("content-encoding", "gzip")
            }
            _ => html.header("cache-control", "no-store"),
        }
    })
    .await;
    let mut cfg = test_config(&[up.addr], vec![redis.url()]);
    cfg.max_body_bytes = 2_000;
    let proxy = ProxyInstance::start(cfg).await;
    let c = HttpClient::default();
    let identity = page().into_bytes();
    assert!(identity.len() > 2_000);

    for path in ["/private", "/large"] {
        let r = c
            .get_with(proxy.addr, path, &[("accept-encoding", "gzip")])
            .await;
        assert_eq!(
            (r.x_cache(), r.header("content-encoding")),
            ("MISS", Some("gzip")),
            "{path}"
        );
        assert!(
            r.body.len() < identity.len() / 2,
            "{path}: {} bytes",
            r.body.len()
        );
        assert_eq!(gunzip(&r.body), identity, "{path}");
        assert!(r.header("vary").unwrap().contains("accept-encoding"));
        let r = c
            .get_with(proxy.addr, path, &[("accept-encoding", "gzip, br")])
            .await;
        assert_eq!(r.header("content-encoding"), Some("br"), "{path}");
        assert_eq!(unbrotli(&r.body), identity, "{path}");
        let r = c.get(proxy.addr, path).await;
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert_eq!(r.body, identity, "{path}");
        assert!(r.header("vary").unwrap().contains("accept-encoding"));
    }
    let r = c
        .get_with(proxy.addr, "/private", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(
        r.header("etag"),
        Some("W/\"p1\""),
        "weak for a transformed body"
    );

    // Bypassed (an unsafe method) and compressed.
    let r = c
        .send(
            proxy.addr,
            "POST",
            "/form",
            &[("accept-encoding", "br")],
            b"a=1",
        )
        .await;
    assert_eq!(
        (r.x_cache(), r.header("content-encoding")),
        ("BYPASS", Some("br"))
    );
    assert_eq!(unbrotli(&r.body), identity);

    // HEAD describes what GET would send, without a body.
    let r = c
        .send(
            proxy.addr,
            "HEAD",
            "/private",
            &[("accept-encoding", "gzip")],
            b"",
        )
        .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.body.is_empty());

    // Already encoded by the upstream: passed through byte for byte.
    let r = c
        .get_with(proxy.addr, "/encoded", &[("accept-encoding", "gzip, br")])
        .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, pre);

    assert_eq!(proxy.stats.snapshot().compressions, 0, "nothing was stored");
}
