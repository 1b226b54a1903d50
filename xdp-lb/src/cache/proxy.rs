//! The request path: bypass or cache lookup, coalesced misses, revalidation, stale serving,
//! invalidation by unsafe methods, and PURGE.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http::header::{
    HeaderValue, AGE, CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, VARY,
};
use http::{request, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use http_cache_semantics::BeforeRequest;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use super::body::ProxyBody;
use super::compress::{self, Coding, Variants};
use super::config::{CacheConfig, ConfigError};
use super::encode::{self, Encoder};
use super::entry::{self, Entry, Stored, VaryMarker};
use super::freshness::{self, millis, Rules};
use super::headers::{add_forwarding, normalize_age, strip_hop_by_hop};
use super::hot::HotTier;
use super::interim;
use super::key;
use super::range::{self, RangeAnswer};
use super::ready::{Head, Ready};
use super::request::target_host;
use super::stats::Stats;
use super::store::{Store, StoreError};
use super::upstream::{Lease, Pool};
use super::Causes;

pub type Resp = Response<ProxyBody>;

/// What [`Proxy::serve`] returns: an answer ready at once (a hot-tier hit) or the full path.
pub type Answer = Either<
    std::future::Ready<Result<Resp, Infallible>>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp, Infallible>> + Send>>,
>;

/// How often a request waiting on another instance's fetch looks for the result (backing off).
const WAIT_POLL_MIN: Duration = Duration::from_millis(10);
const WAIT_POLL_MAX: Duration = Duration::from_millis(100);
/// A Vary marker outlives its variants so they stay reachable.
const MARKER_MIN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why no upstream response could be used.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no upstream to try")]
    NoUpstream,
    #[error("upstream {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("request to upstream {0} failed")]
    Request(SocketAddr, #[source] hyper_util::client::legacy::Error),
    #[error("request target {0:?} cannot be sent upstream")]
    BadTarget(String, #[source] http::Error),
    #[error("upstream body failed partway")]
    Body(#[source] hyper::Error),
    #[error("upstream body stalled for {0:?}")]
    BodyTimeout(Duration),
}

impl FetchError {
    fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(..) | Self::BodyTimeout(_))
    }
}

/// Marks a response the proxy made up because the upstream failed, so a local leader can tell
/// the requests waiting on it (response extensions never reach the wire).
#[derive(Clone, Copy)]
struct UpstreamFailed;

/// What the local leader of a miss tells the requests that waited for it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Pending,
    /// The fetch ended with a response (stored when it could be).
    Done,
    /// The upstream failed; the status is what the leader answered.
    Failed(StatusCode),
    /// The leader went away (its client disconnected) before it had an answer.
    Abandoned,
}

pub struct Proxy {
    cfg: CacheConfig,
    /// `cfg.key`, parsed once.
    key: key::Template,
    rules: Rules,
    pool: Arc<Pool>,
    client: Client<HttpConnector, Full<Bytes>>,
    store: Store,
    pub stats: Arc<Stats>,
    upstream_timeout: Duration,
    seq: AtomicU64,
    /// Keys being fetched by a local leader; followers wait for the sender to drop.
    inflight: InflightMap,
    hot: Option<HotTier>,
}

/// A stored entry as read (shared with the hot tier, not copied: a hit only reads it).
struct Found(Arc<Stored>);

impl std::ops::Deref for Found {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        match &*self.0 {
            Stored::Entry(e) => e,
            Stored::Vary(_) => unreachable!("lookup returns entries only"),
        }
    }
}

type InflightMap = Arc<std::sync::Mutex<HashMap<String, tokio::sync::watch::Receiver<Outcome>>>>;

/// Held by the local leader of a miss; dropping it (also on cancellation) releases followers.
struct Inflight {
    map: InflightMap,
    key: String,
    outcome: Outcome,
    done: tokio::sync::watch::Sender<Outcome>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        // Leave the map before waking the followers, so the one that retries a failed fetch
        // becomes the next leader instead of finding this finished one.
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        let outcome = match self.outcome {
            Outcome::Pending => Outcome::Abandoned,
            o => o,
        };
        self.done.send_replace(outcome);
    }
}

/// Outcome of fetching one warm-up URL.
pub enum Warmed {
    Ready {
        redis_key: String,
        bytes: Vec<u8>,
        keep_for: Duration,
    },
    /// Already written (responses with `Vary`).
    Stored,
    NotStorable(StatusCode),
    TooLarge,
}

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("not an absolute http url")]
    NotAbsolute,
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("storing the response")]
    Entry(#[from] entry::EntryError),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RFC 9111 section 4.4: methods not known to be safe invalidate, including unknown ones.
fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) && m.as_str() != "PURGE"
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

fn plain(status: StatusCode, msg: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(ProxyBody::full(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

/// Built at compile time: a name given as `&str` is parsed and validated on every insert or
/// lookup, and every answer (hits included) sets and reads this one.
const X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

fn with_x_cache(mut r: Resp, label: &'static str) -> Resp {
    r.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(label));
    r
}

fn error_response(e: &FetchError) -> Resp {
    let mut r = if e.is_timeout() {
        plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
    } else {
        plain(StatusCode::BAD_GATEWAY, "upstream failed\n")
    };
    log::info!("cache: answering {}: {}", r.status().as_u16(), Causes(e));
    r.extensions_mut().insert(UpstreamFailed);
    r
}

/// Passes an upstream response through, streaming its body.
fn relay(resp: Response<Incoming>, lease: Lease, head: bool) -> Resp {
    let (mut p, body) = resp.into_parts();
    strip_hop_by_hop(&mut p.headers);
    p.version = http::Version::HTTP_11;
    let body = if head {
        ProxyBody::empty()
    } else {
        ProxyBody::stream(Bytes::new(), body, Some(lease))
    };
    Response::from_parts(p, body)
}

/// Adds `accept-encoding` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary_accept_encoding(headers: &mut http::HeaderMap) {
    let listed = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case("accept-encoding")
        });
    if !listed {
        headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// A compressed variant is not byte-identical to the stored body, so a strong validator
/// becomes weak (as nginx does), keeping `If-None-Match` working while `If-Range` and strong
/// comparisons no longer match across codings.
fn weaken_etag(headers: &mut http::HeaderMap) {
    let Some(tag) = headers.get(ETAG).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if !tag.starts_with("W/") {
        if let Ok(v) = HeaderValue::from_str(&format!("W/{tag}")) {
            headers.insert(ETAG, v);
        }
    }
}

/// The request as sent upstream: hop-by-hop headers removed, forwarding headers added.
fn upstream_parts(parts: &request::Parts, client: IpAddr) -> request::Parts {
    let mut up = parts.clone();
    strip_hop_by_hop(&mut up.headers);
    add_forwarding(&mut up.headers, client);
    up
}

fn as_get(parts: &request::Parts) -> request::Parts {
    let mut p = parts.clone();
    p.method = Method::GET;
    p
}

/// RFC 9111 section 3.2: headers of a 304 replace the stored ones, except the framing ones
/// that describe the stored body.
fn merge_304(stored: &http::HeaderMap, new: &http::HeaderMap) -> http::HeaderMap {
    let mut merged = stored.clone();
    // The stored Age is obsolete once the upstream confirmed the response again.
    merged.remove(AGE);
    let mut new = new.clone();
    strip_hop_by_hop(&mut new);
    for name in new.keys() {
        if name == CONTENT_LENGTH || name == http::header::CONTENT_RANGE {
            continue;
        }
        merged.remove(name);
        for v in new.get_all(name) {
            merged.append(name.clone(), v.clone());
        }
    }
    merged
}

/// The headers of every answer made from `entry` but for `Age` and `X-Cache`: the stored ones,
/// and with compressed variants `Vary: Accept-Encoding` (the answer depends on it, whichever
/// body is sent) and, for a `coded` one (coding, length), its encoding, length and weak ETag.
fn entry_head(entry: &Entry, coded: Option<(Coding, usize)>) -> http::HeaderMap {
    let mut headers = entry.headers.clone();
    if !entry.variants.is_empty() {
        add_vary_accept_encoding(&mut headers);
    }
    if let Some((coding, len)) = coded {
        headers.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static(coding.token()),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        weaken_etag(&mut headers);
    }
    headers
}

/// A request whose answer from a fresh entry is the entry's prepared head (see `ready`): no
/// condition to evaluate (a 304) and no range (a 206 or 416).
fn plain_request(req: &request::Parts) -> bool {
    // One pass over the request's names (a few, bounded by hyper's header limit) costs less
    // than three hash lookups.
    !req.headers.keys().any(|name| {
        name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE || name == http::header::RANGE
    })
}

fn client_conditional(req: &request::Parts) -> bool {
    req.headers.contains_key(IF_NONE_MATCH) || req.headers.contains_key(IF_MODIFIED_SINCE)
}

fn authorized(req: &request::Parts) -> bool {
    req.headers.contains_key(http::header::AUTHORIZATION)
}

fn weak_eq(a: &HeaderValue, b: &HeaderValue) -> bool {
    let bare = |v: &HeaderValue| {
        v.as_bytes()
            .strip_prefix(b"W/")
            .unwrap_or(v.as_bytes())
            .to_vec()
    };
    bare(a) == bare(b)
}

/// `If-None-Match` / `If-Modified-Since` of the client against a stored response.
fn client_not_modified(entry: &Entry, req: &request::Parts) -> bool {
    if !entry.status.is_success() {
        return false;
    }
    if let Some(inm) = req.headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = entry.headers.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let bare = etag.trim().trim_start_matches("W/");
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == bare);
    }
    let date =
        |v: Option<&HeaderValue>| v.and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    // RFC 9110 section 13.1.3: not modified when Last-Modified is not after the given date.
    match (
        date(req.headers.get(IF_MODIFIED_SINCE)),
        date(entry.headers.get(LAST_MODIFIED)),
    ) {
        (Some(ims), Some(lm)) => lm <= ims,
        _ => false,
    }
}

impl Proxy {
    pub fn new(cfg: CacheConfig, stats: Arc<Stats>) -> Result<Arc<Self>, ProxyError> {
        cfg.validate()?;
        let rules = Rules::new(&cfg)?;
        let pool = Pool::new(&cfg);
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn);
        let store = Store::new(&cfg.redis, Arc::clone(&stats))?;
        let hot = (cfg.hot_ttl_ms > 0)
            .then(|| HotTier::new(Duration::from_millis(cfg.hot_ttl_ms), cfg.hot_max_bytes));
        Ok(Arc::new(Self {
            key: key::Template::parse(&cfg.key),
            upstream_timeout: Duration::from_millis(cfg.upstream_timeout_ms),
            cfg,
            rules,
            pool,
            client,
            store,
            stats,
            seq: AtomicU64::new(0),
            inflight: Arc::default(),
            hot,
        }))
    }

    fn token(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}-{n}", std::process::id(), millis(SystemTime::now()))
    }

    /// Answers one request. A fresh hit in the hot tier is answered right here, without the
    /// request machinery's future (it needs no I/O); everything else runs in a boxed future.
    pub fn serve(self: &Arc<Self>, req: Request<Incoming>, client: IpAddr) -> Answer {
        let (parts, body) = req.into_parts();
        if let Some(resp) = self.hot_hit(&parts, &body) {
            // A hot hit is a HIT: counted without looking its label up again.
            self.count(Some(b"HIT"), &resp);
            return Either::Left(std::future::ready(Ok(resp)));
        }
        let req = Request::from_parts(parts, body);
        let this = Arc::clone(self);
        Either::Right(Box::pin(async move {
            let resp = this.route(req, client).await;
            Ok(this.account(resp))
        }))
    }

    /// The hot-tier hit path: the same checks and answer as `route` and `cached` for a GET or
    /// HEAD without a body whose entry is fresh in the hot tier; `None` sends the request the
    /// full way.
    fn hot_hit(&self, parts: &request::Parts, body: &Incoming) -> Option<Resp> {
        let hot = self.hot.as_ref()?;
        if !matches!(parts.method, Method::GET | Method::HEAD)
            || !hyper::body::Body::is_end_stream(body)
        {
            return None;
        }
        let host = target_host(parts).ok()??;
        let cc = freshness::Directives::parse(&parts.headers);
        if freshness::bypass_with(parts, &self.rules, &cc).is_some() {
            return None;
        }
        let primary = self
            .key
            .render_after(self.store.entry_prefix(), parts, Some(&*host));
        let mut stored = hot.get(&primary)?;
        if let Stored::Vary(m) = &*stored {
            stored = hot.get(&Self::variant_key(&primary, m, &parts.headers))?;
        }
        let Stored::Entry(e) = &*stored else {
            return None;
        };
        let now = SystemTime::now();
        let age = e.age(now);
        if !freshness::is_fresh_with(e, parts, now, &cc, age) {
            return None;
        }
        let resp = if plain_request(parts) {
            Self::ready_answer(e, parts, age)
        } else {
            self.serve_entry(e, parts, "HIT", now)
        };
        Stats::bump(&self.stats.hot_hits);
        Some(resp)
    }

    /// What `serve_entry` answers to a plain request (see [`plain_request`]) with `HIT`, from
    /// the entry's head prepared for the chosen coding.
    fn ready_answer(entry: &Entry, req: &request::Parts, age: Duration) -> Resp {
        let coding = if entry.variants.is_empty() {
            None
        } else {
            compress::choose(&req.headers, &entry.variants)
        };
        let head = entry.ready.head(coding, || {
            let body = coding
                .and_then(|c| entry.variants.get(c))
                .unwrap_or(&entry.body)
                .clone();
            let mut headers = entry_head(entry, coding.map(|c| (c, body.len())));
            headers.insert(X_CACHE, HeaderValue::from_static("HIT"));
            Head::new(entry.status, headers, body)
        });
        let body = if req.method == Method::HEAD {
            ProxyBody::empty()
        } else {
            ProxyBody::full(head.body.clone())
        };
        let mut r = Response::new(body);
        *r.status_mut() = head.status;
        *r.headers_mut() = head.headers(age.as_secs());
        r
    }

    /// Counts a response by its X-Cache label and status.
    fn account(&self, resp: Resp) -> Resp {
        self.count(resp.headers().get(X_CACHE).map(|v| v.as_bytes()), &resp);
        resp
    }

    fn count(&self, label: Option<&[u8]>, resp: &Resp) {
        let counter = match label {
            Some(b"HIT") => Some(&self.stats.hits),
            Some(b"MISS") => Some(&self.stats.misses),
            Some(b"STALE") => Some(&self.stats.stale),
            Some(b"UPDATING") => Some(&self.stats.updating),
            Some(b"EXPIRED") => Some(&self.stats.expired),
            _ => None,
        };
        self.stats.response(resp.status());
        if let Some(c) = counter {
            Stats::bump(c);
        }
        if matches!(label, Some(b"HIT" | b"STALE" | b"UPDATING")) {
            let n = hyper::body::Body::size_hint(resp.body())
                .exact()
                .unwrap_or(0);
            self.stats.bytes_from_cache.fetch_add(n, Ordering::Relaxed);
        }
    }

    async fn route(self: &Arc<Self>, req: Request<Incoming>, client: IpAddr) -> Resp {
        let client = client.to_canonical();
        let (parts, body) = req.into_parts();
        // Checked before the body is read, so a refused request costs no buffering either.
        let host = match target_host(&parts) {
            Ok(h) => h,
            Err(why) => {
                Stats::bump(&self.stats.refused);
                log::debug!("cache: refusing a request from {client}: {why}");
                return plain(StatusCode::BAD_REQUEST, format!("bad request: {why}\n"));
            }
        };
        let body = match Limited::new(body, self.cfg.max_request_body_bytes)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
            }
            Err(_) => return plain(StatusCode::BAD_REQUEST, "bad request body\n"),
        };
        if parts.method.as_str() == "PURGE" {
            return self.purge(&parts, client).await;
        }
        if let Some(reason) = freshness::bypass_request(&parts, &self.rules) {
            self.stats.bypassed(reason);
            return self.bypass(&parts, client, body).await;
        }
        let key = self.key.render(&parts, host.as_deref());
        self.cached(key, parts, client).await
    }

    async fn bypass(&self, parts: &request::Parts, client: IpAddr, body: Bytes) -> Resp {
        match self.forward(&upstream_parts(parts, client), body).await {
            Err(e) => error_response(&e),
            Ok((resp, lease)) => {
                let ok = resp.status().is_success() || resp.status().is_redirection();
                if is_unsafe(&parts.method) && ok {
                    self.invalidate(parts, resp.headers()).await;
                }
                let head = parts.method == Method::HEAD;
                let r = self.encode_on_the_fly(&parts.headers, relay(resp, lease, head), head);
                with_x_cache(r, "BYPASS")
            }
        }
    }

    /// RFC 9111 section 4.4: the target URI, and Location / Content-Location on the same host.
    async fn invalidate(&self, parts: &request::Parts, res: &http::HeaderMap) {
        let mut targets = vec![as_get(parts)];
        for h in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let Some(uri) = res
                .get(&h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<http::Uri>().ok())
            else {
                continue;
            };
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok());
            let same_host = uri.authority().is_none_or(|a| Some(a.as_str()) == host);
            if same_host && uri.path().starts_with('/') {
                let mut p = as_get(parts);
                p.uri = uri
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .parse()
                    .unwrap_or_default();
                targets.push(p);
            }
        }
        for p in targets {
            let k = self.store.entry_key(&self.key.render(&p, None));
            let _ = self.store.del(&k).await;
        }
    }

    async fn purge(&self, parts: &request::Parts, client: IpAddr) -> Resp {
        if !self.cfg.purge_allow.contains(&client) {
            return plain(StatusCode::FORBIDDEN, "purge not allowed\n");
        }
        let k = self.store.entry_key(&self.key.render(&as_get(parts), None));
        match self.store.del(&k).await {
            Ok(true) => plain(StatusCode::OK, "purged\n"),
            Ok(false) => plain(StatusCode::NOT_FOUND, "not cached\n"),
            Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "cache store unavailable\n"),
        }
    }

    async fn forward(
        &self,
        parts: &request::Parts,
        body: Bytes,
    ) -> Result<(Response<Incoming>, Lease), FetchError> {
        let tries = if is_idempotent(&parts.method) {
            (self.cfg.max_tries as usize).min(self.pool.len())
        } else {
            1
        };
        let mut tried = Vec::with_capacity(tries);
        let mut last = FetchError::NoUpstream;
        for _ in 0..tries {
            let Some(lease) = self.pool.pick(&tried) else {
                break;
            };
            tried.push(lease.index);
            let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let mut req = Request::builder()
                .method(parts.method.clone())
                .uri(format!("http://{}{pq}", lease.addr()))
                .body(Full::new(body.clone()))
                .map_err(|e| FetchError::BadTarget(pq.to_string(), e))?;
            *req.headers_mut() = parts.headers.clone();
            // 1xx heads (103 Early Hints) go to the client being served, never into the cache;
            // a fetch no client waits on (a background refresh) has no sink.
            if let Some(sink) = interim::current_sink() {
                hyper::ext::on_informational(&mut req, move |res| {
                    sink.push(res.status(), res.headers())
                });
            }
            // The body was read in full and is sent as one piece: its length is the only
            // framing the upstream sees, whatever the client's framing headers said.
            req.headers_mut().remove(CONTENT_LENGTH);
            Stats::bump(&self.stats.upstream_requests);
            match tokio::time::timeout(self.upstream_timeout, self.client.request(req)).await {
                Ok(Ok(resp)) => {
                    self.pool.report_success(lease.index);
                    return Ok((resp, lease));
                }
                Ok(Err(e)) => {
                    self.pool.report_failure(lease.index);
                    last = FetchError::Request(lease.addr(), e);
                    log::debug!("cache: {}", Causes(&last));
                }
                Err(_) => {
                    self.pool.report_failure(lease.index);
                    last = FetchError::Timeout(lease.addr(), self.upstream_timeout);
                    log::debug!("cache: {}", Causes(&last));
                }
            }
        }
        Err(last)
    }

    fn variant_key(primary: &str, marker: &VaryMarker, req: &http::HeaderMap) -> String {
        let mut h = Sha256::new();
        for name in marker
            .vary
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            h.update(name.as_bytes());
            h.update(b":");
            for v in req.get_all(name) {
                h.update(v.as_bytes());
                h.update(b",");
            }
            h.update(b"\n");
        }
        let hex: String = h
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{primary}#v{}:{hex}", marker.generation)
    }

    /// Reads and decodes one stored value, through the hot tier when it is on.
    async fn get_stored(&self, redis_key: &str) -> Result<Option<Arc<Stored>>, StoreError> {
        if let Some(v) = self.hot.as_ref().and_then(|h| h.get(redis_key)) {
            Stats::bump(&self.stats.hot_hits);
            return Ok(Some(v));
        }
        let epoch = self.hot.as_ref().map(HotTier::epoch);
        let Some(raw) = self.store.get(redis_key).await? else {
            return Ok(None);
        };
        match entry::decode(raw) {
            Ok(v) => {
                let v = Arc::new(v);
                if let (Some(h), Some(epoch)) = (&self.hot, epoch) {
                    h.insert(redis_key.to_string(), Arc::clone(&v), epoch);
                }
                Ok(Some(v))
            }
            Err(e) => {
                log::warn!("cache: entry {redis_key}: {e}");
                Ok(None)
            }
        }
    }

    async fn lookup(&self, key: &str, req: &request::Parts) -> Result<Option<Found>, StoreError> {
        let primary = self.store.entry_key(key);
        let Some(stored) = self.get_stored(&primary).await? else {
            return Ok(None);
        };
        let stored = match &*stored {
            Stored::Entry(_) => return Ok(Some(Found(stored))),
            Stored::Vary(m) => {
                let variant = Self::variant_key(&primary, m, &req.headers);
                match self.get_stored(&variant).await? {
                    Some(v) => v,
                    None => return Ok(None),
                }
            }
        };
        match &*stored {
            Stored::Entry(_) => Ok(Some(Found(stored))),
            Stored::Vary(_) => Ok(None),
        }
    }

    /// Applies invalidations from other instances to the hot tier, for as long as it runs.
    pub fn hot_follower(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let hot = self.hot.clone()?;
        let timeout = Duration::from_millis(self.cfg.redis.timeout_ms);
        Some(hot.follow(
            self.cfg.redis.nodes.clone(),
            self.store.channel(),
            timeout,
            Arc::clone(&self.stats),
        ))
    }

    /// Fetches one URL for warm-up and prepares its entry. Responses with `Vary` are stored
    /// right away (they need their marker); the others are returned for a pipelined write.
    pub async fn warm_fetch(&self, uri: &http::Uri) -> Result<Warmed, WarmError> {
        let host = uri
            .authority()
            .ok_or(WarmError::NotAbsolute)?
            .as_str()
            .to_string();
        let mut parts = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, host)
            .body(())
            .map_err(|_| WarmError::NotAbsolute)?
            .into_parts()
            .0;
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| WarmError::NotAbsolute)?;
        let now = SystemTime::now();
        let (mut resp, _lease) = self.forward(&parts, Bytes::new()).await?;
        normalize_age(resp.headers_mut());
        let status = resp.status();
        let policy = freshness::policy(&parts, status, resp.headers(), &self.rules, now);
        let Some(decision) = freshness::store_decision(
            &policy,
            status,
            resp.headers(),
            &self.rules,
            now,
            authorized(&parts),
        ) else {
            return Ok(Warmed::NotStorable(status));
        };
        let (mut p, body) = resp.into_parts();
        strip_hop_by_hop(&mut p.headers);
        let limited = Limited::new(body, self.cfg.max_body_bytes);
        let body = match tokio::time::timeout(self.upstream_timeout, limited.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            // `Limited` fails with its own error past the limit, or with the body's.
            Ok(Err(e)) => match e.downcast::<hyper::Error>() {
                Ok(e) => return Err(FetchError::Body(*e).into()),
                Err(_) => return Ok(Warmed::TooLarge),
            },
            Err(_) => return Err(FetchError::BodyTimeout(self.upstream_timeout).into()),
        };
        p.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let variants = self.compress(status, &p.headers, &body);
        let entry = Entry {
            stored_at_ms: millis(now),
            fresh_until_ms: millis(now + decision.fresh_for),
            stale_if_error_s: decision.stale_if_error_s,
            stale_while_revalidate_s: decision.stale_while_revalidate_s,
            status,
            headers: p.headers,
            body,
            policy_json: Entry::encode_policy(&policy)?,
            variants,
            ready: Ready::default(),
        };
        let key = self.key.render(&parts, None);
        if entry.headers.contains_key(VARY) {
            self.store_entry(&key, &parts, &entry, decision.keep_for)
                .await;
            return Ok(Warmed::Stored);
        }
        let bytes = entry.encode()?;
        Ok(Warmed::Ready {
            redis_key: self.store.entry_key(&key),
            bytes,
            keep_for: decision.keep_for,
        })
    }

    /// The compressed variants of a body about to be stored, counted in the stats.
    fn compress(&self, status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Variants {
        let v = self.cfg.compression.variants(status, headers, body);
        for out in [&v.gzip, &v.brotli].into_iter().flatten() {
            self.stats.compressed(body.len(), out.len());
        }
        v
    }

    /// Compresses a response that is not stored when it qualifies and the client accepts a
    /// coding (a HEAD gets the headers the GET would).
    fn encode_on_the_fly(&self, req: &http::HeaderMap, mut r: Resp, head: bool) -> Resp {
        let Some(choice) = encode::decide(&self.cfg.compression, r.status(), req, r.headers())
        else {
            return r;
        };
        add_vary_accept_encoding(r.headers_mut());
        let Some(coding) = choice else { return r };
        encode::rewrite_headers(r.headers_mut(), coding);
        weaken_etag(r.headers_mut());
        if head {
            return r;
        }
        let (p, body) = r.into_parts();
        Response::from_parts(p, body.encoded(Encoder::new(coding, &self.cfg.compression)))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn store_entry(
        &self,
        key: &str,
        req: &request::Parts,
        entry: &Entry,
        keep_for: Duration,
    ) {
        let Ok(bytes) = entry.encode() else { return };
        let primary = self.store.entry_key(key);
        let vary: Vec<String> = entry
            .headers
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        if vary.is_empty() {
            let _ = self.store.set(&primary, &bytes, keep_for).await;
            return;
        }
        let vary = vary.join(",");
        let existing = match self.store.get(&primary).await {
            Ok(Some(raw)) => entry::decode(raw).ok(),
            Ok(None) => None,
            Err(_) => return,
        };
        let marker = match existing {
            Some(Stored::Vary(m)) if m.vary == vary => m,
            _ => VaryMarker {
                generation: self.seq.fetch_add(1, Ordering::Relaxed) ^ millis(SystemTime::now()),
                vary,
            },
        };
        if self
            .store
            .set(&primary, &marker.encode(), keep_for.max(MARKER_MIN_TTL))
            .await
            .is_ok()
        {
            let _ = self
                .store
                .set(
                    &Self::variant_key(&primary, &marker, &req.headers),
                    &bytes,
                    keep_for,
                )
                .await;
        }
    }

    fn serve_entry(
        &self,
        entry: &Entry,
        req: &request::Parts,
        label: &'static str,
        now: SystemTime,
    ) -> Resp {
        // Ranges are answered from the identity body only.
        let coded = if entry.variants.is_empty() {
            None
        } else {
            compress::choose(&req.headers, &entry.variants)
                .filter(|_| !req.headers.contains_key(http::header::RANGE))
                .and_then(|c| Some((c, entry.variants.get(c)?.clone())))
        };
        let mut headers = entry_head(entry, coded.as_ref().map(|(c, d)| (*c, d.len())));
        // Formatted by `http` into the value itself: no `String` per answer.
        headers.insert(AGE, HeaderValue::from(entry.age(now).as_secs()));
        let (status, body) = if client_not_modified(entry, req) {
            headers.remove(CONTENT_LENGTH);
            (StatusCode::NOT_MODIFIED, ProxyBody::empty())
        } else if req.method == Method::HEAD {
            (entry.status, ProxyBody::empty())
        } else if let Some((_, data)) = coded {
            (entry.status, ProxyBody::full(data))
        } else if entry.status == StatusCode::OK {
            let len = entry.body.len() as u64;
            match range::answer(&req.headers, len) {
                RangeAnswer::Full => (entry.status, ProxyBody::full(entry.body.clone())),
                RangeAnswer::Partial(first, last) => {
                    let content_range = format!("bytes {first}-{last}/{len}");
                    if let Ok(v) = HeaderValue::from_str(&content_range) {
                        headers.insert(http::header::CONTENT_RANGE, v);
                    }
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
                    let body = entry.body.slice(first as usize..=last as usize);
                    (StatusCode::PARTIAL_CONTENT, ProxyBody::full(body))
                }
                RangeAnswer::Unsatisfiable => {
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        headers.insert(http::header::CONTENT_RANGE, v);
                    }
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
                    (StatusCode::RANGE_NOT_SATISFIABLE, ProxyBody::empty())
                }
            }
        } else {
            (entry.status, ProxyBody::full(entry.body.clone()))
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        with_x_cache(r, label)
    }

    async fn cached(self: &Arc<Self>, key: String, parts: request::Parts, client: IpAddr) -> Resp {
        let now = SystemTime::now();
        let lookup = self.lookup(&key, &parts).await;
        let store_ok = lookup.is_ok();
        let only_if_cached = freshness::Directives::parse(&parts.headers).has("only-if-cached");
        match lookup.ok().flatten() {
            Some(e) if freshness::is_fresh_for(&e, &parts, now) => {
                self.serve_entry(&e, &parts, "HIT", now)
            }
            // RFC 9111 section 5.2.1.7: no stored response to use, and the upstream is off limits.
            _ if only_if_cached => {
                with_x_cache(plain(StatusCode::GATEWAY_TIMEOUT, "not cached\n"), "MISS")
            }
            Some(found) => {
                // Stale: the rare path, where an owned copy is simpler than sharing.
                let e: Entry = (*found).clone();
                let client_wants_fresh = !freshness::is_fresh_for(
                    &Entry {
                        fresh_until_ms: u64::MAX,
                        ..e.clone()
                    },
                    &parts,
                    now,
                );
                if !client_wants_fresh
                    && freshness::within_grace(&e, e.stale_while_revalidate_s, now)
                {
                    let token = self.token();
                    let rkey = self.store.refresh_key(&key);
                    let lock_ttl = Duration::from_millis(self.cfg.lock_ttl_ms);
                    if let Ok(true) = self.store.try_lock(&rkey, &token, lock_ttl).await {
                        let this = Arc::clone(self);
                        let (p, u, stale) = (parts.clone(), client, e.clone());
                        tokio::spawn(async move {
                            // The lock says no refresh runs now, not that none ran since this
                            // request read the stale copy: one that finished in between has
                            // stored a newer copy, and a second fetch would only repeat it.
                            let newer = matches!(
                                this.lookup(&key, &p).await,
                                Ok(Some(f)) if f.stored_at_ms != stale.stored_at_ms
                            );
                            if newer {
                                log::debug!("cache: {key}: refreshed meanwhile, not again");
                            } else {
                                let _ = this.fetch(&key, &p, u, Some(stale), "EXPIRED", true).await;
                            }
                            let _ = this.store.unlock(&rkey, &token).await;
                        });
                    }
                    return self.serve_entry(&e, &parts, "UPDATING", now);
                }
                self.fetch(&key, &parts, client, Some(e), "EXPIRED", store_ok)
                    .await
            }
            None if store_ok => self.coalesced_miss(&key, &parts, client).await,
            None => self.fetch(&key, &parts, client, None, "MISS", false).await,
        }
    }

    /// Joins the local fetch of `key` as a follower, or becomes its leader.
    fn join_inflight(&self, key: &str) -> Result<Inflight, tokio::sync::watch::Receiver<Outcome>> {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            return Err(rx.clone());
        }
        let (done, rx) = tokio::sync::watch::channel(Outcome::Pending);
        map.insert(key.to_string(), rx);
        Ok(Inflight {
            map: Arc::clone(&self.inflight),
            key: key.to_string(),
            outcome: Outcome::Pending,
            done,
        })
    }

    /// A miss on this instance: requests for one key queue behind one local leader, so only
    /// the leader talks to the cross-instance Redis lock and the upstream. When the leader's
    /// fetch fails, one follower retries it; the others wait for that retry and, if it fails
    /// too, get its error instead of all going to the upstream at once.
    async fn coalesced_miss(&self, key: &str, parts: &request::Parts, client: IpAddr) -> Resp {
        let mut failures_seen = 0;
        loop {
            let mut rx = match self.join_inflight(key) {
                Ok(mut leader) => {
                    let r = self.miss_with_lock(key, parts, client).await;
                    // The statuses stale-if-error treats as failures count as failed fetches
                    // here too: waiters must not all take them to the origin again.
                    let failed = r.extensions().get::<UpstreamFailed>().is_some()
                        || matches!(r.status().as_u16(), 500 | 502 | 503 | 504);
                    leader.outcome = if failed {
                        Outcome::Failed(r.status())
                    } else {
                        Outcome::Done
                    };
                    return r;
                }
                Err(rx) => rx,
            };
            Stats::bump(&self.stats.coalesced_waits);
            let wait = Duration::from_millis(self.cfg.lock_wait_ms) + self.upstream_timeout;
            let outcome =
                match tokio::time::timeout(wait, rx.wait_for(|o| *o != Outcome::Pending)).await {
                    Ok(Ok(o)) => *o,
                    // The sender always publishes before it goes; a closed channel is a leader
                    // that vanished without its guard running, treated like one that gave up.
                    Ok(Err(_)) => Outcome::Abandoned,
                    // Waited as long as a fetch may take: fetch without the others.
                    Err(_) => Outcome::Pending,
                };
            match outcome {
                Outcome::Abandoned => continue,
                Outcome::Failed(_) if failures_seen == 0 => {
                    failures_seen += 1;
                    continue;
                }
                Outcome::Failed(status) => {
                    let mut r = plain(status, "upstream failed\n");
                    r.extensions_mut().insert(UpstreamFailed);
                    return r;
                }
                Outcome::Done | Outcome::Pending => {
                    let now = SystemTime::now();
                    return match self.lookup(key, parts).await {
                        Ok(Some(e)) if freshness::is_fresh_for(&e, parts, now) => {
                            self.serve_entry(&e, parts, "HIT", now)
                        }
                        other => {
                            self.fetch(key, parts, client, None, "MISS", other.is_ok())
                                .await
                        }
                    };
                }
            }
        }
    }

    /// A miss with the cross-instance lock: one fetch for all instances, the others wait.
    async fn miss_with_lock(&self, key: &str, parts: &request::Parts, client: IpAddr) -> Resp {
        let token = self.token();
        let lkey = self.store.lock_key(key);
        let ttl = Duration::from_millis(self.cfg.lock_ttl_ms);
        match self.store.try_lock(&lkey, &token, ttl).await {
            Ok(true) => {
                let r = self.fetch(key, parts, client, None, "MISS", true).await;
                let _ = self.store.unlock(&lkey, &token).await;
                r
            }
            Ok(false) => match self.wait_for(key, &lkey, parts).await {
                Some(r) => r,
                None => self.fetch(key, parts, client, None, "MISS", true).await,
            },
            Err(_) => self.fetch(key, parts, client, None, "MISS", false).await,
        }
    }

    /// Waits (bounded) for the instance holding the lock to store the response.
    async fn wait_for(&self, key: &str, lkey: &str, parts: &request::Parts) -> Option<Resp> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.lock_wait_ms);
        let mut poll = WAIT_POLL_MIN;
        while Instant::now() < deadline {
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(WAIT_POLL_MAX);
            let locked = self.store.exists(lkey).await.ok()?;
            let now = SystemTime::now();
            if let Some(e) = self.lookup(key, parts).await.ok()? {
                if freshness::is_fresh_for(&e, parts, now) {
                    return Some(self.serve_entry(&e, parts, "HIT", now));
                }
            }
            if !locked {
                return None;
            }
        }
        None
    }

    /// RFC 9111 section 4.3.4: whether a 304 answering our revalidation refers to `stored`.
    /// Without a validator in the 304, it does when the conditions were ours alone.
    fn selects(&self, stored: &Entry, req: &request::Parts, resp: &Response<Incoming>) -> bool {
        let client_conditional = client_conditional(req);
        match (resp.headers().get(ETAG), stored.headers.get(ETAG)) {
            (Some(new), Some(old)) => weak_eq(new, old),
            (Some(_), None) => false,
            (None, _) => match (
                resp.headers().get(LAST_MODIFIED),
                stored.headers.get(LAST_MODIFIED),
            ) {
                (Some(new), Some(old)) => new == old,
                _ => !client_conditional,
            },
        }
    }

    fn serve_stale(
        &self,
        stale: Option<&Entry>,
        req: &request::Parts,
        now: SystemTime,
    ) -> Option<Resp> {
        let e = stale?;
        freshness::within_grace(e, e.stale_if_error_s, now)
            .then(|| self.serve_entry(e, req, "STALE", now))
    }

    /// Goes upstream (as GET, so a HEAD miss fills the cache too), revalidating `stale` when
    /// given, stores what may be stored and answers the client.
    async fn fetch(
        &self,
        key: &str,
        parts: &request::Parts,
        client: IpAddr,
        stale: Option<Entry>,
        label: &'static str,
        store_ok: bool,
    ) -> Resp {
        let now = SystemTime::now();
        let head = parts.method == Method::HEAD;
        let get = as_get(parts);
        // Built only here: hits never pay for the copy and the header rewriting.
        let up = upstream_parts(parts, client);
        let mut send = as_get(&up);
        let stale_policy = stale.as_ref().and_then(|e| e.policy().ok());
        if let Some(policy) = &stale_policy {
            if let BeforeRequest::Stale {
                request,
                matches: true,
            } = policy.before_request(&get, now)
            {
                for h in [IF_NONE_MATCH, IF_MODIFIED_SINCE] {
                    if let Some(v) = request.headers.get(&h) {
                        send.headers.insert(h, v.clone());
                    }
                }
            }
        }
        let mut sent = self.forward(&send, Bytes::new()).await;
        // A 304 that does not confirm our copy cannot go to a client that asked for no
        // condition: ask again, unconditionally.
        if let (Ok((resp, _)), Some(e)) = (&sent, &stale) {
            if resp.status() == StatusCode::NOT_MODIFIED
                && !client_conditional(parts)
                && !self.selects(e, parts, resp)
            {
                sent = self.forward(&as_get(&up), Bytes::new()).await;
            }
        }
        let (mut resp, lease) = match sent {
            Ok(r) => r,
            Err(err) => {
                return self
                    .serve_stale(stale.as_ref(), parts, now)
                    .unwrap_or_else(|| error_response(&err))
            }
        };
        normalize_age(resp.headers_mut());
        let status = resp.status();
        if let Some(e) = &stale {
            if matches!(status.as_u16(), 500 | 502 | 503 | 504) {
                if let Some(r) = self.serve_stale(Some(e), parts, now) {
                    return r;
                }
            }
            let revalidated = (status == StatusCode::NOT_MODIFIED && self.selects(e, parts, &resp))
                .then(|| {
                    let headers = merge_304(&e.headers, resp.headers());
                    let policy = freshness::policy(&get, e.status, &headers, &self.rules, now);
                    (policy, headers)
                });
            if let Some((policy, headers)) = revalidated {
                let mut updated = Entry {
                    headers,
                    policy_json: Entry::encode_policy(&policy).unwrap_or_default(),
                    ..e.clone()
                };
                if let Some(d) = freshness::store_decision(
                    &policy,
                    e.status,
                    &updated.headers,
                    &self.rules,
                    now,
                    authorized(parts),
                ) {
                    updated.stored_at_ms = millis(now);
                    updated.fresh_until_ms = millis(now + d.fresh_for);
                    updated.stale_if_error_s = d.stale_if_error_s;
                    updated.stale_while_revalidate_s = d.stale_while_revalidate_s;
                    if store_ok {
                        self.store_entry(key, &get, &updated, d.keep_for).await;
                    }
                }
                return self.serve_entry(&updated, parts, label, now);
            }
        }
        let policy = freshness::policy(&get, status, resp.headers(), &self.rules, now);
        let decision = match status {
            StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT => None,
            _ if !store_ok => None,
            _ => freshness::store_decision(
                &policy,
                status,
                resp.headers(),
                &self.rules,
                now,
                authorized(parts),
            ),
        };
        let declared_len = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let Some(decision) =
            decision.filter(|_| declared_len.is_none_or(|n| n <= self.cfg.max_body_bytes))
        else {
            let r = self.encode_on_the_fly(&parts.headers, relay(resp, lease, head), head);
            return with_x_cache(r, label);
        };
        let (mut p, mut body) = resp.into_parts();
        strip_hop_by_hop(&mut p.headers);
        let mut buf = BytesMut::new();
        loop {
            match tokio::time::timeout(self.upstream_timeout, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                        if buf.len() > self.cfg.max_body_bytes {
                            // Too large to store: the rest streams through.
                            p.version = http::Version::HTTP_11;
                            let body = if head {
                                ProxyBody::empty()
                            } else {
                                ProxyBody::stream(buf.freeze(), body, Some(lease))
                            };
                            let r = Response::from_parts(p, body);
                            let r = self.encode_on_the_fly(&parts.headers, r, head);
                            return with_x_cache(r, label);
                        }
                    }
                }
                Ok(None) => break,
                // stale-if-error covers a body that breaks off too: nothing was sent yet.
                Ok(Some(Err(e))) => {
                    return self
                        .serve_stale(stale.as_ref(), parts, now)
                        .unwrap_or_else(|| error_response(&FetchError::Body(e)))
                }
                Err(_) => {
                    return self
                        .serve_stale(stale.as_ref(), parts, now)
                        .unwrap_or_else(|| {
                            error_response(&FetchError::BodyTimeout(self.upstream_timeout))
                        })
                }
            }
        }
        let body = buf.freeze();
        p.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let Ok(policy_json) = Entry::encode_policy(&policy) else {
            let mut r = Response::from_parts(p, ProxyBody::full(body));
            *r.version_mut() = http::Version::HTTP_11;
            return with_x_cache(r, label);
        };
        let variants = self.compress(status, &p.headers, &body);
        let entry = Entry {
            stored_at_ms: millis(now),
            fresh_until_ms: millis(now + decision.fresh_for),
            stale_if_error_s: decision.stale_if_error_s,
            stale_while_revalidate_s: decision.stale_while_revalidate_s,
            status,
            headers: p.headers,
            body,
            policy_json,
            variants,
            ready: Ready::default(),
        };
        self.store_entry(key, &get, &entry, decision.keep_for).await;
        self.serve_entry(&entry, parts, label, now)
    }
}
