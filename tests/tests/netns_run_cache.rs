//! `xdp-lb run` with a `[cache]` section: the balancer and the HTTP cache tier in one
//! process, the cache backed by a real Redis, all in the balancer's namespace.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use xdp_lb_tests::{
    cache_support::{free_port, RedisServer},
    client, lbconfig, require_root, scenario,
    topology::{HTTP_PORT, IFACE},
    Forwarding,
};

/// One `GET /` with `Connection: close`: the response head and body.
fn get(addr: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to the cache tier");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read the response");
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    (head.to_string(), body.trim_end().to_string())
}

fn x_cache(head: &str) -> &str {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("x-cache: ")
                .or_else(|| l.strip_prefix("X-Cache: "))
        })
        .unwrap_or_else(|| panic!("no X-Cache header in {head:?}"))
}

#[test]
fn run_serves_its_cache_section_beside_the_balancer() {
    require_root();
    let topo = scenario::xdp_topology(1, Forwarding::Nat);
    let redis = topo
        .lb
        .run(RedisServer::start)
        .expect("entering the lb namespace");
    let listen = SocketAddr::from(([127, 0, 0, 1], topo.lb.run(free_port).unwrap()));
    let upstream = SocketAddr::new(topo.backend(1).v4().into(), HTTP_PORT);
    let svc = scenario::service(&topo, false, HTTP_PORT, "tcp", &[1]);
    let toml = format!(
        "{}\n[cache]\nlisten = \"{listen}\"\nupstreams = [{{ addr = \"{upstream}\" }}]\nstatus_ttl = {{ \"200\" = 60 }}\n\n[cache.redis]\nnodes = [\"{}\"]\n",
        lbconfig::render(&[IFACE], &[svc]),
        redis.url()
    );
    let file = lbconfig::ConfigFile::new(&toml).expect("writing the config file");
    let lb = topo
        .start_lb(&[
            "run".into(),
            "--config".into(),
            file.path().display().to_string(),
        ])
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"));

    // The cache tier: a miss fetched from the backend, then a hit from Redis.
    let (first, second) = topo.lb.run(|| (get(listen), get(listen))).unwrap();
    let report = format!("first: {first:?}\nsecond: {second:?}\n{}", lb.output());
    assert!(first.0.starts_with("HTTP/1.1 200"), "{report}");
    assert_eq!(x_cache(&first.0), "MISS", "{report}");
    assert_eq!(x_cache(&second.0), "HIT", "{report}");
    assert_eq!(first.1, second.1, "{report}");
    assert!(first.1.contains("backend-1"), "{report}");
    let stored = topo.lb.run(|| redis.dbsize()).unwrap();
    assert!(stored > 0, "nothing stored in Redis: {report}");

    // The balancer keeps serving the VIP at the same time.
    let vip = topo.vip(false, HTTP_PORT);
    let body = topo.client.run(|| client::http_get(vip)).unwrap();
    assert!(
        body.as_ref().is_ok_and(|b| b.contains("backend-1")),
        "{body:?}\n{}",
        lb.output()
    );
}
