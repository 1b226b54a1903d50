//! Cache tier, requests it must refuse (RFC 9112 sections 3.2 and 6): ambiguous hosts and
//! broken framing get 400 and reach neither an upstream nor the cache. Each case is sent as raw
//! bytes, since a well-behaved client library would not send them.
use std::net::SocketAddr;

use xdp_lb_tests::cache_support::{
    raw_exchange, test_config, ProxyInstance, RedisServer, Reply, Upstream,
};

struct Case {
    what: &'static str,
    request: &'static [u8],
    status: u16,
}

const fn case(what: &'static str, request: &'static [u8], status: u16) -> Case {
    Case {
        what,
        request,
        status,
    }
}

/// Every one of these would be cacheable (or forwarded) if it were accepted.
const REFUSED: &[Case] = &[
    // Host (RFC 9112 section 3.2): the cache key is built from it.
    case("no Host in HTTP/1.1", b"GET /a HTTP/1.1\r\n\r\n", 400),
    case(
        "no Host in HTTP/1.1 with an absolute-form target",
        b"GET http://a.test/a HTTP/1.1\r\n\r\n",
        400,
    ),
    case(
        "two Host headers",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        400,
    ),
    case(
        "two equal Host headers",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
        400,
    ),
    case(
        "Host as a list",
        b"GET /a HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n",
        400,
    ),
    case(
        "Host with user info",
        b"GET /a HTTP/1.1\r\nHost: evil@a.test\r\n\r\n",
        400,
    ),
    case("empty Host", b"GET /a HTTP/1.1\r\nHost: \r\n\r\n", 400),
    case(
        "Host with a port out of range",
        b"GET /a HTTP/1.1\r\nHost: a.test:99999\r\n\r\n",
        400,
    ),
    case(
        "absolute-form target disagreeing with Host",
        b"GET http://b.test/a HTTP/1.1\r\nHost: a.test\r\n\r\n",
        400,
    ),
    case(
        "absolute-form target that is not http",
        b"GET https://a.test/a HTTP/1.1\r\nHost: a.test\r\n\r\n",
        400,
    ),
    // Framing (RFC 9112 section 6): refused by hyper's parser, checked here so an upgrade
    // that relaxes it is noticed.
    case(
        "two differing Content-Length headers",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    case(
        "Content-Length as a list",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2, 2\r\n\r\nab",
        400,
    ),
    case(
        "signed Content-Length",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: +2\r\n\r\nab",
        400,
    ),
    case(
        "negative Content-Length",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n",
        400,
    ),
    case(
        "Transfer-Encoding not ending in chunked",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    case(
        "Transfer-Encoding in HTTP/1.0",
        b"POST /a HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    case(
        "chunk size that is not hex",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    // Header syntax (RFC 9112 section 5).
    case(
        "obsolete line folding",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nX-A: one\r\n two\r\n\r\n",
        400,
    ),
    case(
        "space before the colon",
        b"GET /a HTTP/1.1\r\nHost : a.test\r\n\r\n",
        400,
    ),
    case(
        "space in a header name",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nX Bad: 1\r\n\r\n",
        400,
    ),
    case(
        "header line without a colon",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nNoColon\r\n\r\n",
        400,
    ),
    case(
        "control character in a header value",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nX-A: a\x01b\r\n\r\n",
        400,
    ),
    case(
        "NUL in a header value",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nX-A: a\x00b\r\n\r\n",
        400,
    ),
];

async fn exchange(addr: SocketAddr, request: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || raw_exchange(addr, request))
        .await
        .expect("raw exchange")
}

fn status_of(head: &str) -> Option<u16> {
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_ambiguous_requests_are_refused() {
    let redis = RedisServer::start();
    let up =
        Upstream::start(|_, _| Reply::ok("cacheable").header("cache-control", "max-age=600")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let mut wrong = Vec::new();
    for c in REFUSED {
        let head = exchange(proxy.addr, c.request).await;
        if status_of(&head) != Some(c.status) {
            wrong.push(format!(
                "{}: expected {}, got {:?}",
                c.what,
                c.status,
                head.lines().next()
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_eq!(up.total(), 0, "no refused request reached the upstream");
    assert_eq!(redis.dbsize(), 0, "nothing was stored or locked");
    let s = proxy.stats.snapshot();
    assert_eq!((s.misses, s.bypass, s.hits), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_and_host_case_share_one_normalised_key() {
    let redis = RedisServer::start();
    let up =
        Upstream::start(|_, _| Reply::ok("cacheable").header("cache-control", "max-age=600")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let first = exchange(
        proxy.addr,
        b"GET http://A.Test:80/a HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&first), Some(200), "{first}");
    assert!(first.contains("x-cache: MISS"), "{first}");
    for request in [
        &b"GET /a HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"[..],
        b"GET /a HTTP/1.1\r\nHost: A.TEST:80\r\nConnection: close\r\n\r\n",
        b"GET http://a.test/a HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    ] {
        let head = exchange(proxy.addr, request).await;
        assert!(
            head.contains("x-cache: HIT"),
            "{:?} -> {head}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(up.hits("/a"), 1);
    assert_eq!(
        redis.cli(&["KEYS", "xlc:e:*"]).trim(),
        "xlc:e:http://a.test/a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_one_length_whatever_the_client_framing() {
    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| Reply::ok("ok")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    // RFC 9112 section 6.1: with both, Transfer-Encoding wins (and the connection closes);
    // the upstream must see the body's real length, never the client's Content-Length.
    let head = exchange(
        proxy.addr,
        b"POST /te HTTP/1.1\r\nHost: a.test\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), Some(200), "{head}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let lengths: Vec<_> = seen[0].headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["3"]);
    assert!(!seen[0].headers.contains_key("transfer-encoding"));
}
