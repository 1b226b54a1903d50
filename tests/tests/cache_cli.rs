//! Cache tier verbs as an operator runs them (the real `xdp-lb` binary, stdout and stderr not
//! terminals, as under cron or CI): what they print, their exit codes, and the `/metrics`
//! of `cache serve` run alone.
use std::collections::BTreeMap;

use xdp_lb_tests::cache_support::{
    free_port, run_xdp_lb, test_config, CacheProcess, HttpClient, ProxyInstance, RedisServer,
    Reply, TempDir, Upstream,
};

async fn xdp_lb(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_xdp_lb(&args)
    })
    .await
    .expect("xdp-lb ran")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_validates_redis_settings_and_fails_for_keys_not_cached() {
    let dir = TempDir::new("purge");
    let empty = dir.0.join("empty.toml");
    std::fs::write(&empty, "[cache]\n[cache.redis]\nnodes = []\n").unwrap();
    let (ok, _, err) = xdp_lb(strings(&[
        "cache",
        "purge",
        "--config",
        empty.to_str().unwrap(),
        "http://cache.test/a",
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("no redis node configured"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let (ok, _, err) = xdp_lb(strings(&[
        "cache",
        "purge",
        "--redis",
        "127.0.0.1:6379",
        "k",
    ]))
    .await;
    assert!(!ok);
    assert_eq!(
        err.matches("\"127.0.0.1:6379\" is not a valid redis url")
            .count(),
        1,
        "{err}"
    );

    let redis = RedisServer::start();
    let up = Upstream::start(|_, _| Reply::ok("x").header("cache-control", "max-age=600")).await;
    let proxy = ProxyInstance::start(test_config(&[up.addr], vec![redis.url()])).await;
    HttpClient::default().get(proxy.addr, "/a").await;
    let purge = |key: &str| strings(&["cache", "purge", "--redis", &redis.url(), key]);
    let (ok, out, err) = xdp_lb(purge("http://cache.test/a")).await;
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "purged");
    let (ok, _, err) = xdp_lb(purge("http://cache.test/a")).await;
    assert!(!ok, "a key that is not cached is an error");
    assert!(err.contains("was not cached"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_prints_failures_without_a_terminal_and_checks_redis_first() {
    let up = Upstream::start(|s, _| match s.path.as_str() {
        // Answers after the upstream timeout of the file below: a failed URL.
        "/slow" => Reply::ok("late").delay(std::time::Duration::from_secs(3)),
        _ => Reply::ok("fine").header("cache-control", "max-age=600"),
    })
    .await;
    let dir = TempDir::new("warm-cli");
    let list = dir.0.join("urls.txt");
    std::fs::write(&list, "http://cache.test/ok\nhttp://cache.test/slow\n").unwrap();
    let cfg = dir.0.join("cache.toml");
    std::fs::write(&cfg, "[cache]\nupstream_timeout_ms = 300\n").unwrap();
    let warm = |redis: &str| {
        strings(&[
            "cache",
            "warm",
            "--config",
            cfg.to_str().unwrap(),
            "--upstream",
            &up.addr.to_string(),
            "--redis",
            redis,
            list.to_str().unwrap(),
        ])
    };

    let nobody = format!("redis://127.0.0.1:{}", free_port());
    let (ok, _, err) = xdp_lb(warm(&nobody)).await;
    assert!(!ok);
    assert!(
        err.contains("redis does not answer; nothing was fetched"),
        "{err}"
    );
    assert_eq!(up.total(), 0, "nothing fetched without redis");

    let redis = RedisServer::start();
    let (ok, out, err) = xdp_lb(warm(&redis.url())).await;
    assert!(!ok, "a failed URL makes the run fail");
    assert!(
        out.contains("warmed: stored 1, not cacheable 0, failed 1"),
        "{out}"
    );
    assert!(err.contains("failed: http://cache.test/slow"), "{err}");
    assert!(!err.contains("http://cache.test/ok"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_warns_once_when_redis_is_down_and_logs_its_return() {
    let up =
        Upstream::start(|_, n| Reply::ok(&format!("v{n}")).header("cache-control", "max-age=600"))
            .await;
    let redis_port = free_port();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut serve = CacheProcess::spawn(&[
        "cache",
        "serve",
        "--listen",
        &listen,
        "--upstream",
        &up.addr.to_string(),
        "--redis",
        &format!("redis://127.0.0.1:{redis_port}"),
        "--metrics-listen",
        "off",
    ]);
    let warning = serve.wait_for_line("serving uncached until it answers");
    assert!(warning.contains("WARN"), "{warning}");
    serve.wait_for_line("listening on");
    let addr = listen.parse().unwrap();
    let c = HttpClient::default();
    for i in 0..3 {
        let r = c.get(addr, "/r").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, format!("v{i}")));
    }
    assert_eq!(
        serve.count_lines("cannot be reached"),
        1,
        "the outage is logged once, not per request"
    );

    let _redis = RedisServer::start_on(redis_port, &[]);
    serve.wait_for_line("answers again");
    // Caching resumes: one more fetch stores the answer, the next is a hit.
    let mut hit = false;
    for _ in 0..20 {
        if c.get(addr, "/r").await.x_cache() == "HIT" {
            hit = true;
            break;
        }
    }
    assert!(hit, "hits once redis is back");
}

/// Every sample line of a Prometheus exposition, by name and labels as written.
fn exposition(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_alone_exports_metrics_that_count_its_requests() {
    let up =
        Upstream::start(|_, n| Reply::ok(&format!("v{n}")).header("cache-control", "max-age=600"))
            .await;
    let redis = RedisServer::start();
    let dir = TempDir::new("serve-metrics");
    let cfg = dir.0.join("cache.toml");
    // A loaded test machine must not turn slow Redis answers into extra misses.
    std::fs::write(&cfg, "[cache]\n[cache.redis]\ntimeout_ms = 2000\n").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut serve = CacheProcess::spawn(&[
        "cache",
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--listen",
        &listen,
        "--upstream",
        &up.addr.to_string(),
        "--redis",
        &redis.url(),
        "--metrics-listen",
        &metrics,
    ]);
    serve.wait_for_line(&format!("serving http://{metrics}/metrics"));
    serve.wait_for_line("listening on");
    let addr = listen.parse().unwrap();
    let metrics = metrics.parse().unwrap();
    let c = HttpClient::default();

    // Misses, then hits of the same paths; the counters must equal what the client saw.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let paths = ["/a", "/b", "/c"];
    for p in paths {
        let r = c.get(addr, p).await;
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.x_cache(), "MISS", "{p}: first request");
        *seen.entry("miss".into()).or_default() += 1;
    }
    for p in paths {
        // The store completes after the first answer; bounded, nothing is timed.
        let mut hit = false;
        for _ in 0..20 {
            let r = c.get(addr, p).await;
            *seen.entry(r.x_cache().to_ascii_lowercase()).or_default() += 1;
            if r.x_cache() == "HIT" {
                hit = true;
                break;
            }
        }
        assert!(hit, "{p} never became a hit: {seen:?}");
    }
    let hits = seen.get("hit").copied().unwrap_or(0);
    assert_eq!(hits, 3, "{seen:?}");

    let scrape = c.get(metrics, "/metrics").await;
    assert_eq!(scrape.status.as_u16(), 200, "{}", scrape.text());
    assert!(
        scrape
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        scrape.headers
    );
    let text = scrape.text();
    let values = exposition(&text);
    for (result, n) in &seen {
        let series = format!("xdp_lb_cache_requests_total{{result=\"{result}\"}}");
        assert_eq!(values.get(&series), Some(&(*n as f64)), "{series}\n{text}");
    }
    let requests: f64 = values
        .iter()
        .filter(|(k, _)| k.starts_with("xdp_lb_cache_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    let sent: u64 = seen.values().sum();
    assert_eq!(requests, sent as f64, "every request counted once\n{text}");
    assert_eq!(
        values.get("xdp_lb_cache_upstream_requests_total"),
        Some(&(up.total() as f64)),
        "{text}"
    );
    assert_eq!(values.get("xdp_lb_cache_redis_up"), Some(&1.0), "{text}");
    assert!(
        !text.contains("xdp_lb_backend") && !text.contains("xdp_lb_alert"),
        "the tier alone exports only cache figures\n{text}"
    );

    xdp_lb_tests::promtool::check_metrics(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_metrics_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let (ok, _, err) = xdp_lb(strings(&[
        "cache",
        "serve",
        "--listen",
        &listen,
        "--upstream",
        "127.0.0.1:9",
        "--metrics-listen",
        &metrics,
    ]))
    .await;
    assert!(!ok, "started with its /metrics port taken");
    assert!(
        err.contains(&format!("cannot listen for /metrics on {metrics}"))
            && err.contains("--metrics-listen"),
        "{err}"
    );
}
