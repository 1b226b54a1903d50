//! Coalesces the Redis GETs that requests issue within one scheduling round into one pipelined
//! command, so a busy proxy makes one write and one read on its Redis connection per round
//! instead of one of each per cache hit. The connection's own pipelining does not do this:
//! tokio runs a task woken by the running one next (its LIFO slot), so the connection's
//! writer task ran, and wrote one GET, after every request that sent it one.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::oneshot;

/// A GET's answer: the value, if the key exists.
pub type Reply = Result<Option<Vec<u8>>, redis::RedisError>;

/// The GETs waiting for the next flush.
#[derive(Default)]
pub struct GetBatch {
    queue: Mutex<Vec<(String, oneshot::Sender<Reply>)>>,
}

impl GetBatch {
    /// Queues a GET for `key`; the first GET of a round also starts the flush that sends it
    /// with every GET queued until the runtime has nothing else to run. The receiver fails
    /// when the flush gave up on Redis (its timeout).
    pub fn get(
        self: &Arc<Self>,
        key: String,
        conn: &ConnectionManager,
        timeout: Duration,
    ) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push((key, tx));
            q.len() == 1
        };
        if first {
            // A task of its own, so a request that goes away (its client closed) cannot take
            // the others' GETs with it.
            tokio::spawn(Arc::clone(self).flush(conn.clone(), timeout));
        }
        rx
    }

    async fn flush(self: Arc<Self>, mut conn: ConnectionManager, timeout: Duration) {
        // Deferred until the worker has run every task that is ready: the requests woken in
        // this round queue their GETs meanwhile.
        tokio::task::yield_now().await;
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, _) in &batch {
            pipe.cmd("GET").arg(key);
        }
        // Each GET gets its own answer: an error reply for one key (a key of another type,
        // written by something else sharing the Redis) fails that GET alone, not the round's.
        pipe.ignore_errors();
        // On a timeout the senders are dropped, and every waiting GET reports it.
        let Ok(res) =
            tokio::time::timeout(timeout, pipe.query_async::<Vec<Reply>>(&mut conn)).await
        else {
            return;
        };
        match res {
            Ok(values) if values.len() == batch.len() => {
                for ((_, tx), v) in batch.into_iter().zip(values) {
                    let _ = tx.send(v);
                }
            }
            Ok(values) => {
                let e = redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "pipelined GETs answered with the wrong count",
                    format!("{} values for {} keys", values.len(), batch.len()),
                ));
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}
