//! Cache tier, behaviour at the edges of a fetch: interim 1xx responses, a body that breaks
//! off with a stale copy at hand, and a coalesced fetch that fails.
use std::time::Duration;

use xdp_lb_tests::cache_support::{
    raw_exchange_to_close, test_config, HttpClient, ProxyInstance, RawUpstream, RedisServer, Reply,
    Upstream,
};

/// The upstream's answer to its n-th request: a 103 with a hint naming n, then a cacheable 200.
fn hints_then_final(n: u64) -> Vec<u8> {
    format!(
        "HTTP/1.1 103 Early Hints\r\nLink: </{n}.css>; rel=preload\r\n\r\n\
         HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\n\
         Connection: close\r\n\r\nbody{n}"
    )
    .into_bytes()
}

/// Where each needle starts in `hay`, searching on from the previous one: None when any is
/// missing or out of order.
fn in_order(hay: &str, needles: &[&str]) -> Option<Vec<usize>> {
    let mut from = 0;
    let mut at = Vec::new();
    for n in needles {
        let i = from + hay[from..].find(n)?;
        at.push(i);
        from = i + n.len();
    }
    Some(at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_103_reaches_the_client_and_only_the_final_200_is_cached() {
    let redis = RedisServer::start();
    let up = RawUpstream::start(hints_then_final).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let addr = proxy.addr;
    let req = b"GET /hints HTTP/1.1\r\nHost: cache.test\r\nConnection: close\r\n\r\n";
    let got = tokio::task::spawn_blocking(move || raw_exchange_to_close(addr, req))
        .await
        .unwrap();
    assert!(
        in_order(
            &got,
            &[
                "HTTP/1.1 103 Early Hints\r\nlink: </0.css>; rel=preload\r\n\r\n",
                "HTTP/1.1 200 OK\r\n",
                "x-cache: MISS",
                "body0"
            ]
        )
        .is_some_and(|at| at[0] == 0),
        "the client gets the 103 first, then the final response:\n{got}"
    );
    let c = HttpClient::default();
    let r = c.get(proxy.addr, "/hints").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "HIT", "body0")
    );
    assert_eq!(r.header("link"), None, "nothing of the 103 was stored");
    // A hit goes nowhere upstream, so it has no 1xx to pass on.
    let req = b"GET /hints HTTP/1.1\r\nHost: cache.test\r\nConnection: close\r\n\r\n";
    let got = tokio::task::spawn_blocking(move || raw_exchange_to_close(addr, req))
        .await
        .unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200 OK") && !got.contains("103"),
        "{got}"
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_103_is_not_sent_to_an_http_1_0_client() {
    let redis = RedisServer::start();
    let up = RawUpstream::start(hints_then_final).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let addr = proxy.addr;
    let req = b"GET /old HTTP/1.0\r\nHost: cache.test\r\n\r\n";
    let got = tokio::task::spawn_blocking(move || raw_exchange_to_close(addr, req))
        .await
        .unwrap();
    assert!(
        !got.contains("103") && got.contains(" 200 OK\r\n") && got.ends_with("body0"),
        "RFC 9110 section 15.2: no 1xx to an HTTP/1.0 client:\n{got}"
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_heads_of_pipelined_requests_stay_with_their_own_responses() {
    let redis = RedisServer::start();
    let up = RawUpstream::start(hints_then_final).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let addr = proxy.addr;
    // Two requests in one write: the second waits in hyper's buffer until the first is
    // answered, and its 103 must not come before the first response's last byte.
    let req = b"GET /p1 HTTP/1.1\r\nHost: cache.test\r\n\r\n\
        GET /p2 HTTP/1.1\r\nHost: cache.test\r\nConnection: close\r\n\r\n";
    let got = tokio::task::spawn_blocking(move || raw_exchange_to_close(addr, req))
        .await
        .unwrap();
    let at = in_order(
        &got,
        &[
            "HTTP/1.1 103 Early Hints\r\nlink: </0.css>",
            "HTTP/1.1 200 OK\r\n",
            "body0",
            "HTTP/1.1 103 Early Hints\r\nlink: </1.css>",
            "HTTP/1.1 200 OK\r\n",
            "body1",
        ],
    );
    assert!(
        at.is_some_and(|at| at[0] == 0 && got.ends_with("body1")),
        "each 103 sits between the previous response and its own:\n{got}"
    );
    assert_eq!(up.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_breaking_off_midway_serves_the_stale_copy() {
    let redis = RedisServer::start();
    let up = RawUpstream::start(|n| {
        if n == 0 {
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-if-error=60\r\n\
              Content-Length: 4\r\nConnection: close\r\n\r\ngood"
                .to_vec()
        } else {
            // Promises 100 bytes, sends 9, closes.
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\
              Content-Length: 100\r\nConnection: close\r\n\r\ntruncated"
                .to_vec()
        }
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    assert_eq!(c.get(proxy.addr, "/cut").await.text(), "good");
    // Past max-age=1, inside stale-if-error=60.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let r = c.get(proxy.addr, "/cut").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "STALE", "good")
    );
    assert_eq!(up.requests(), 2, "the refresh was tried");
    // Without a stale copy the broken body is an error, and nothing is stored.
    let r = c.get(proxy.addr, "/other").await;
    assert_eq!(r.status.as_u16(), 502);
    assert_eq!(
        redis
            .cli(&["EXISTS", "xlc:e:http://cache.test/other"])
            .trim(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_coalesced_fetch_is_retried_by_one_waiter_only() {
    let redis = RedisServer::start();
    // The first two fetches fail slowly (long enough for every request below to be waiting),
    // later ones succeed.
    let up = Upstream::start(|_, n| {
        if n < 2 {
            Reply::ok("down")
                .status(503)
                .delay(Duration::from_millis(1_500))
        } else {
            Reply::ok("up").header("cache-control", "max-age=600")
        }
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, addr) = (c.clone(), proxy.addr);
            tokio::spawn(async move { c.get(addr, "/co").await.status.as_u16() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    assert_eq!(
        up.hits("/co"),
        2,
        "the leader's fetch and one retry, not one per waiting request"
    );
    assert!(proxy.stats.snapshot().coalesced_waits >= 19);
    let r = c.get(proxy.addr, "/co").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "up"));
}
