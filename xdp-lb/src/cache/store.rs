//! Redis access for the cache: single node or cluster, every operation bounded by a timeout so a
//! slow or absent Redis degrades to "no cache" instead of failing requests.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue};
use tokio::sync::Mutex;

use super::config::{ConfigError, RedisConfig};
use super::get_batch::GetBatch;
use super::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is being skipped after a recent failure")]
    Unavailable,
}

impl StoreError {
    /// Failures that say Redis cannot be reached (as opposed to a bad command or value).
    fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::Unavailable => true,
            StoreError::Config(_) => false,
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_timeout()
            }
        }
    }
}

/// How long Redis is left alone after it failed to answer.
const SKIP_AFTER_FAILURE: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Deletes the lock only when it still holds our token, so an expired lock taken over by another
/// instance is not released by us.
const UNLOCK_SCRIPT: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// While the cluster is unreachable, reconnect attempts are spaced by this much.
const CLUSTER_RETRY: Duration = Duration::from_millis(500);

enum Conn {
    Single(ConnectionManager),
    Cluster {
        client: Box<ClusterClient>,
        conn: Mutex<(Option<ClusterConnection>, Option<Instant>)>,
    },
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Conn>,
    timeout: Duration,
    prefix: Arc<str>,
    /// `prefix` and `e:`: what every entry key starts with.
    entry_prefix: Arc<str>,
    stats: Arc<Stats>,
    /// Until this time (ms since the epoch) Redis is not asked at all: after a connection
    /// failure or timeout, requests skip it instead of each waiting out the timeout.
    skip_until_ms: Arc<AtomicU64>,
    /// Whether the last attempt found Redis unreachable, so an outage is logged once when it
    /// starts and once when it ends rather than on every request.
    down: Arc<AtomicBool>,
    /// The configured nodes, for log lines.
    nodes: Arc<str>,
    /// GETs on a single node go out pipelined, one batch per scheduling round.
    gets: Arc<GetBatch>,
    /// Whether outages are logged as warnings; only a serving proxy does (the one-shot verbs
    /// report the error themselves).
    announce: Arc<AtomicBool>,
}

impl Store {
    /// Connects lazily: a Redis that is down at start-up is not an error (see [`Store::ping`]).
    pub fn new(cfg: &RedisConfig, stats: Arc<Stats>) -> Result<Self, StoreError> {
        cfg.validate()?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let conn = if cfg.cluster {
            let client = ClusterClient::builder(cfg.nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()?;
            Conn::Cluster {
                client: Box::new(client),
                conn: Mutex::new((None, None)),
            }
        } else {
            let client = redis::Client::open(cfg.nodes[0].as_str())?;
            let mcfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            Conn::Single(ConnectionManager::new_lazy_with_config(client, mcfg)?)
        };
        Ok(Self {
            conn: Arc::new(conn),
            timeout,
            prefix: cfg.key_prefix.as_str().into(),
            entry_prefix: format!("{}e:", cfg.key_prefix).into(),
            stats,
            skip_until_ms: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicBool::new(false)),
            nodes: cfg.nodes.join(", ").into(),
            gets: Arc::default(),
            announce: Arc::new(AtomicBool::new(false)),
        })
    }

    /// One PING under the timeout, ignoring the skip window (start-up checks and the probe
    /// that notices Redis coming back).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let res = self.run::<String>(redis::cmd("PING").clone()).await;
        self.note(&res, true);
        res.map(drop)
    }

    /// Logs the start and end of Redis outages from now on (for a serving proxy).
    pub fn announce_outages(&self) {
        self.announce.store(true, Ordering::Relaxed);
    }

    /// Whether the last attempt found Redis unreachable.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Pings Redis while it is down, so its return is noticed (and logged) without waiting
    /// for traffic; runs until aborted.
    pub async fn watch(self) {
        loop {
            tokio::time::sleep(SKIP_AFTER_FAILURE).await;
            if self.is_down() {
                // Not counted as errors: the outage was counted when requests met it.
                let res = self.run::<String>(redis::cmd("PING").clone()).await;
                self.note(&res, false);
            }
        }
    }

    pub fn entry_key(&self, key: &str) -> String {
        // Built by hand rather than with `format!`: every Redis hit makes one.
        let mut k = String::with_capacity(self.entry_prefix.len() + key.len());
        k.push_str(&self.entry_prefix);
        k.push_str(key);
        k
    }

    /// What [`Store::entry_key`] puts before the cache key (for `key::Template::render_after`).
    pub fn entry_prefix(&self) -> &str {
        &self.entry_prefix
    }

    pub fn lock_key(&self, key: &str) -> String {
        format!("{}l:{key}", self.prefix)
    }

    pub fn refresh_key(&self, key: &str) -> String {
        format!("{}r:{key}", self.prefix)
    }

    async fn cluster_conn(&self) -> Result<ClusterConnection, StoreError> {
        let Conn::Cluster { client, conn } = &*self.conn else {
            unreachable!("single-node store")
        };
        let mut guard = conn.lock().await;
        if let Some(c) = &guard.0 {
            return Ok(c.clone());
        }
        if guard.1.is_some_and(|t| t.elapsed() < CLUSTER_RETRY) {
            return Err(StoreError::Timeout(self.timeout));
        }
        guard.1 = Some(Instant::now());
        let c = tokio::time::timeout(self.timeout * 4, client.get_async_connection())
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        guard.0 = Some(c.clone());
        Ok(c)
    }

    /// Runs one command under the timeout, without the skip window or bookkeeping.
    async fn run<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreError> {
        let started = Instant::now();
        let fut = async {
            match &*self.conn {
                Conn::Single(m) => cmd.query_async::<T>(&mut m.clone()).await,
                Conn::Cluster { .. } => {
                    let mut c = self.cluster_conn().await?;
                    return Ok(cmd.query_async::<T>(&mut c).await?);
                }
            }
            .map_err(StoreError::from)
        };
        let res = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?;
        self.stats.redis_latency(started.elapsed());
        res
    }

    /// Counts a failure, opens the skip window when Redis is unreachable, and logs the start
    /// and the end of an outage once each.
    fn note<T>(&self, res: &Result<T, StoreError>, count: bool) {
        self.stats
            .redis_reached(res.as_ref().map_or_else(|e| !e.is_unreachable(), |_| true));
        match res {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) && self.announce.load(Ordering::Relaxed)
                {
                    log::info!(
                        "cache: redis ({}) answers again; caching resumed",
                        self.nodes
                    );
                }
            }
            Err(e) => {
                if count {
                    Stats::bump(&self.stats.errors);
                }
                if !e.is_unreachable() {
                    log::debug!("cache store: {}", super::Causes(e));
                    return;
                }
                self.skip_until_ms.store(
                    now_ms() + SKIP_AFTER_FAILURE.as_millis() as u64,
                    Ordering::Relaxed,
                );
                if !self.down.swap(true, Ordering::Relaxed) && self.announce.load(Ordering::Relaxed)
                {
                    log::warn!(
                        "cache: redis ({}) cannot be reached: {}; serving uncached until it answers",
                        self.nodes,
                        super::Causes(e)
                    );
                } else {
                    log::debug!("cache store: {}", super::Causes(e));
                }
            }
        }
    }

    /// Whether Redis is being left alone after a failure; counts the skipped call as an error.
    fn skipping(&self) -> bool {
        let skip = now_ms() < self.skip_until_ms.load(Ordering::Relaxed);
        if skip {
            Stats::bump(&self.stats.errors);
        }
        skip
    }

    /// Runs one command under the timeout; skipped while Redis is known to be unreachable.
    async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreError> {
        if self.skipping() {
            return Err(StoreError::Unavailable);
        }
        let res = self.run(cmd).await;
        self.note(&res, true);
        res
    }

    /// One value. On a single node the GET joins the round's pipelined batch (see
    /// `get_batch`); a cluster spreads keys over nodes, so there each GET goes alone.
    pub async fn get(&self, redis_key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Conn::Single(m) = &*self.conn else {
            return self.query(redis::cmd("GET").arg(redis_key).clone()).await;
        };
        if self.skipping() {
            return Err(StoreError::Unavailable);
        }
        let started = Instant::now();
        let rx = self.gets.get(redis_key.to_string(), m, self.timeout);
        let res = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => reply.map_err(StoreError::from),
            // The batch gave up (its own timeout) or this one ran out first.
            Ok(Err(_)) | Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        self.stats.redis_latency(started.elapsed());
        self.note(&res, true);
        res
    }

    /// Writes an entry and tells every instance's hot tier.
    pub async fn set(
        &self,
        redis_key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ms = ttl.as_millis().max(1) as u64;
        self.query::<()>(
            redis::cmd("SET")
                .arg(redis_key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .clone(),
        )
        .await?;
        self.publish(redis_key).await
    }

    /// Deletes an entry and tells every instance's hot tier.
    pub async fn del(&self, redis_key: &str) -> Result<bool, StoreError> {
        let n: u64 = self.query(redis::cmd("DEL").arg(redis_key).clone()).await?;
        self.publish(redis_key).await?;
        Ok(n > 0)
    }

    /// Channel on which changed entry keys are announced to the hot tiers.
    pub fn channel(&self) -> String {
        format!("{}inval", self.prefix)
    }

    pub async fn publish(&self, message: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .query(
                redis::cmd("PUBLISH")
                    .arg(self.channel())
                    .arg(message)
                    .clone(),
            )
            .await?;
        Ok(())
    }

    pub async fn exists(&self, redis_key: &str) -> Result<bool, StoreError> {
        let n: u64 = self
            .query(redis::cmd("EXISTS").arg(redis_key).clone())
            .await?;
        Ok(n > 0)
    }

    /// `SET NX PX`: true when this caller now holds the lock.
    pub async fn try_lock(
        &self,
        redis_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ms = ttl.as_millis().max(1) as u64;
        let r: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(redis_key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .clone(),
            )
            .await?;
        Ok(r.is_some())
    }

    pub async fn unlock(&self, redis_key: &str, token: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .query(
                redis::cmd("EVAL")
                    .arg(UNLOCK_SCRIPT)
                    .arg(1)
                    .arg(redis_key)
                    .arg(token)
                    .clone(),
            )
            .await?;
        Ok(())
    }

    /// Writes many entries in one pipelined round trip (single node; a cluster gets them one
    /// by one since a pipeline would span slots), announcing each to the hot tiers.
    pub async fn set_many(&self, items: &[(String, Vec<u8>, Duration)]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let Conn::Single(m) = &*self.conn else {
            for (k, v, ttl) in items {
                self.set(k, v, *ttl).await?;
            }
            return Ok(());
        };
        let mut pipe = redis::pipe();
        for (k, v, ttl) in items {
            let ms = ttl.as_millis().max(1) as u64;
            pipe.cmd("SET").arg(k).arg(v).arg("PX").arg(ms).ignore();
            pipe.cmd("PUBLISH").arg(self.channel()).arg(k).ignore();
        }
        // A batch is bigger than one command: allow it proportionally more time.
        let limit = self.timeout * (1 + items.len() as u32 / 16);
        let res = match tokio::time::timeout(limit, pipe.query_async::<()>(&mut m.clone())).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(limit)),
        };
        self.note(&res, true);
        res
    }

    /// Deletes every entry whose cache key starts with `prefix`, on every master of a cluster,
    /// and tells the hot tiers to drop everything.
    pub async fn purge_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let pattern = format!("{}*", glob_escape(&self.entry_key(prefix)));
        let deleted = match &*self.conn {
            Conn::Single(m) => scan_delete(&mut m.clone(), &pattern, self.timeout, false).await?,
            Conn::Cluster { .. } => {
                let nodes: String = self
                    .query(redis::cmd("CLUSTER").arg("NODES").clone())
                    .await?;
                let mut deleted = 0;
                for addr in cluster_masters(&nodes) {
                    // SCAN walks one node's keyspace, so each master is visited directly.
                    let client = redis::Client::open(format!("redis://{addr}"))?;
                    let mut con = tokio::time::timeout(
                        self.timeout * 4,
                        client.get_multiplexed_async_connection(),
                    )
                    .await
                    .map_err(|_| StoreError::Timeout(self.timeout))??;
                    deleted += scan_delete(&mut con, &pattern, self.timeout, true).await?;
                }
                deleted
            }
        };
        self.publish(super::hot::ALL).await?;
        Ok(deleted)
    }
}

/// `host:port` of the masters that are not failed, from `CLUSTER NODES` output.
fn cluster_masters(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_id, addr, flags) = (f.next()?, f.next()?, f.next()?);
            let is_master = flags.split(',').any(|x| x == "master")
                && !flags.split(',').any(|x| x == "fail" || x == "noaddr");
            let addr = addr.split(['@', ',']).next()?;
            is_master.then(|| addr.to_string())
        })
        .collect()
}

/// SCAN + UNLINK over one node. In a cluster, keys of one node span many slots, so they are
/// unlinked one per command (pipelined) to avoid CROSSSLOT errors.
async fn scan_delete<C: redis::aio::ConnectionLike + Send>(
    con: &mut C,
    pattern: &str,
    timeout: Duration,
    per_key: bool,
) -> Result<u64, StoreError> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let scan = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone();
        let (next, keys): (u64, Vec<String>) = tokio::time::timeout(timeout, scan.query_async(con))
            .await
            .map_err(|_| StoreError::Timeout(timeout))??;
        if !keys.is_empty() {
            let n: Vec<u64> = if per_key {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("UNLINK").arg(k);
                }
                tokio::time::timeout(timeout * 4, pipe.query_async(con))
                    .await
                    .map_err(|_| StoreError::Timeout(timeout))??
            } else {
                let unlink = redis::cmd("UNLINK").arg(&keys).clone();
                let n: u64 = tokio::time::timeout(timeout, unlink.query_async(con))
                    .await
                    .map_err(|_| StoreError::Timeout(timeout))??;
                vec![n]
            };
            deleted += n.iter().sum::<u64>();
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_live_masters() {
        let out = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                   b2 127.0.0.1:7001@17001,host master - 0 0 2 connected 5461-10922\n\
                   c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n\
                   d4 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected\n";
        assert_eq!(
            cluster_masters(out),
            vec!["127.0.0.1:7000", "127.0.0.1:7001"]
        );
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
