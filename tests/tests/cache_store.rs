//! The cache tier's Redis access against a real `redis-server`: GETs issued by many requests at
//! once travel together.
use std::sync::Arc;

use xdp_lb::cache::config::RedisConfig;
use xdp_lb::cache::stats::Stats;
use xdp_lb::cache::store::{Store, StoreError};
use xdp_lb::cache::Causes;
use xdp_lb_tests::cache_support::RedisServer;

/// Redis's count of socket reads it processed (`INFO stats`), which includes the reads that
/// redis-cli's own connection makes.
fn reads_processed(redis: &RedisServer) -> u64 {
    let info = redis.cli(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_reads_processed in INFO stats: {info}"))
}

/// A store on `redis`, connected (the connection is made lazily), so that the GETs a
/// test batches go out on an open connection; and its stats.
async fn store_on(redis: &RedisServer) -> (Store, Arc<Stats>) {
    let cfg = RedisConfig {
        nodes: vec![redis.url()],
        ..RedisConfig::default()
    };
    let stats = Arc::new(Stats::default());
    let store = Store::new(&cfg, Arc::clone(&stats)).expect("store");
    assert_eq!(store.get("absent").await.expect("redis answers"), None);
    (store, stats)
}

/// GETs of `k0`..`k{n-1}`, each from a task of its own, all queued in one round: spawned
/// from a task on the one worker, so none of them runs before all are queued (spawned
/// from the test's own thread, the worker could start the first GETs while the rest were
/// still being spawned: a split batch under load, not the proxy's behaviour).
async fn gets_in_one_round(
    store: &Store,
    n: usize,
) -> Vec<(usize, Result<Option<Vec<u8>>, StoreError>)> {
    let spawner = store.clone();
    let tasks: Vec<_> = tokio::spawn(async move {
        (0..n)
            .map(|i| {
                let store = spawner.clone();
                tokio::spawn(async move { (i, store.get(&format!("k{i}")).await) })
            })
            .collect()
    })
    .await
    .expect("spawner task");
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    answers
}

// One worker: the requests' tasks wake each other on one thread, as in a busy proxy, where
// each GET used to go out in a write of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn concurrent_gets_share_one_pipelined_request() {
    let redis = RedisServer::start();
    for i in (0..32).step_by(2) {
        redis.cli(&["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    let (store, stats) = store_on(&redis).await;

    // What asking costs (redis-cli's connection's own reads), measured rather than assumed.
    let idle = reads_processed(&redis);
    let before = reads_processed(&redis);
    let asking = before - idle;
    for (i, got) in gets_in_one_round(&store, 32).await {
        let want = (i % 2 == 0).then(|| format!("v{i}").into_bytes());
        assert_eq!(got.expect("redis answers"), want, "GET k{i}");
    }
    let reads = reads_processed(&redis) - before - asking;
    assert_eq!(
        reads, 1,
        "32 concurrent GETs took {reads} reads in Redis, expected one pipelined request"
    );
    assert_eq!(stats.snapshot().errors, 0);
}

// A key holding another type (something else writing to the same Redis) answers its GET with an
// error reply; the other GETs of its round are answered as usual, not failed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_error_reply_fails_only_its_own_get_of_the_round() {
    let redis = RedisServer::start();
    for i in (0..16).step_by(2) {
        redis.cli(&["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    redis.cli(&["RPUSH", "k5", "a list"]);
    let (store, _) = store_on(&redis).await;
    for (i, got) in gets_in_one_round(&store, 16).await {
        if i == 5 {
            let e = got.expect_err("GET of a list answers an error");
            let chain = Causes(&e).to_string();
            assert!(chain.contains("WRONGTYPE"), "k5: {chain}");
        } else {
            let want = (i % 2 == 0).then(|| format!("v{i}").into_bytes());
            assert_eq!(got.expect("redis answers the other keys"), want, "GET k{i}");
        }
    }
    // Not taken for Redis being unreachable: the next GET goes to Redis.
    assert_eq!(
        store.get("k0").await.expect("redis answers"),
        Some(b"v0".to_vec())
    );
}
