//! Small in-process tier in front of Redis: decoded values kept for a short TTL and dropped on
//! invalidation messages from Redis pub/sub. While that subscription is down (Redis outage)
//! the tier keeps answering with what it holds, each value at most its TTL old, but takes no
//! new values; when the subscription comes back it starts empty, since invalidations sent
//! meanwhile were missed.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use moka::sync::Cache;

use super::entry::Stored;
use super::stats::Stats;

/// Message that drops everything (prefix purges).
pub const ALL: &str = "*";
/// Pause between subscription attempts while Redis is unreachable.
const RESUBSCRIBE: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct HotTier {
    cache: Cache<String, Arc<Stored>>,
    subscribed: Arc<AtomicBool>,
    /// Bumped on every invalidation, so a value read from Redis before an invalidation
    /// arrived is not inserted after it.
    epoch: Arc<AtomicU64>,
}

impl HotTier {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .time_to_live(ttl)
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Arc<Stored>| {
                let size = k.len()
                    + match &**v {
                        Stored::Entry(e) => {
                            // The stored header map, and the answer heads hits may prepare
                            // beside it (`ready`: one per coding, a few headers more each).
                            let heads = 1
                                + usize::from(e.variants.gzip.is_some())
                                + usize::from(e.variants.brotli.is_some());
                            e.body.len()
                                + e.variants.gzip.as_ref().map_or(0, |v| v.len())
                                + e.variants.brotli.as_ref().map_or(0, |v| v.len())
                                + e.policy_json.len()
                                + 64 * e.headers.len()
                                + 64 * (e.headers.len() + 4) * heads
                        }
                        Stored::Vary(m) => m.vary.len(),
                    };
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .build();
        Self {
            cache,
            subscribed: Arc::new(AtomicBool::new(false)),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn get(&self, redis_key: &str) -> Option<Arc<Stored>> {
        self.cache.get(redis_key)
    }

    /// Inserts a value read from Redis when `epoch` was current, unless an invalidation came since.
    pub fn insert(&self, redis_key: String, value: Arc<Stored>, epoch: u64) {
        if self.subscribed.load(Ordering::SeqCst) && self.epoch() == epoch {
            self.cache.insert(redis_key, value);
        }
    }

    pub fn invalidate(&self, message: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if message == ALL {
            self.cache.invalidate_all();
        } else {
            self.cache.invalidate(message);
        }
    }

    fn set_subscribed(&self, on: bool) {
        if on {
            // Whatever was purged while we were not listening is unknown: start over.
            self.epoch.fetch_add(1, Ordering::SeqCst);
            self.cache.invalidate_all();
        }
        self.subscribed.store(on, Ordering::SeqCst);
    }

    /// Keeps a subscription to `channel` on one of `nodes` (in a Redis Cluster, PUBLISH reaches
    /// every node) and applies its messages, until the task is aborted.
    pub async fn follow(
        self,
        nodes: Vec<String>,
        channel: String,
        timeout: Duration,
        stats: Arc<Stats>,
    ) {
        let mut next = 0usize;
        loop {
            let url = &nodes[next % nodes.len()];
            next += 1;
            let sub = async {
                let client = redis::Client::open(url.as_str())?;
                let mut pubsub = tokio::time::timeout(timeout * 4, client.get_async_pubsub())
                    .await
                    .map_err(|_| {
                        redis::RedisError::from((redis::ErrorKind::Io, "pubsub connect timed out"))
                    })??;
                pubsub.subscribe(&channel).await?;
                redis::RedisResult::Ok(pubsub)
            }
            .await;
            match sub {
                Ok(pubsub) => {
                    self.set_subscribed(true);
                    log::debug!("cache: hot tier following invalidations on {url}");
                    let mut stream = pubsub.into_on_message();
                    while let Some(msg) = stream.next().await {
                        if let Ok(key) = msg.get_payload::<String>() {
                            self.invalidate(&key);
                        }
                    }
                    log::warn!(
                        "cache: invalidation subscription lost; the hot tier serves what it \
                         holds (at most hot_ttl_ms old) and takes nothing new until it is back"
                    );
                    Stats::bump(&stats.hot_subscription_losses);
                    self.set_subscribed(false);
                }
                Err(e) => log::debug!("cache: hot tier subscription to {url}: {e}"),
            }
            tokio::time::sleep(RESUBSCRIBE).await;
        }
    }
}
