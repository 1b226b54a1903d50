//! Cache tier, behaviour at the edges of a fetch: interim 1xx responses, a body that breaks
//! off with a stale copy at hand, and a coalesced fetch that fails.
use std::time::Duration;

use xdp_lb_tests::cache_support::{
    test_config, HttpClient, ProxyInstance, RawUpstream, RedisServer, Reply, Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_103_is_never_cached_and_the_final_200_is() {
    let redis = RedisServer::start();
    let up = RawUpstream::start(|_| {
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\n\
          Connection: close\r\n\r\nfinal"
            .to_vec()
    })
    .await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    let c = HttpClient::default();
    let r = c.get(proxy.addr, "/hints").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "MISS", "final")
    );
    let r = c.get(proxy.addr, "/hints").await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache(), r.text().as_str()),
        (200, "HIT", "final")
    );
    assert_eq!(r.header("link"), None, "nothing of the 103 was stored");
    assert_eq!(up.requests(), 1);
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
