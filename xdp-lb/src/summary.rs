//! The one-screen summary of a configuration that `run` logs at start and `check`
//! prints: what will be programmed, so an operator can eyeball it before traffic flows.
use std::fmt::Write;

use crate::config::{Algorithm, BackendState, Config};

/// Renders `cfg` as aligned text: global settings, then each service with its
/// backends and the share of new flows each active backend is expected to get.
pub fn render(cfg: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "interfaces: {} (attach {}, xdp mode {}), flow table {}, max services {}, max table size {}",
        cfg.interfaces.join(", "),
        cfg.attach,
        cfg.xdp_mode,
        cfg.flow_table_size,
        cfg.max_services,
        cfg.max_table_size
    );
    let _ = writeln!(
        out,
        "{} service{}:",
        cfg.services.len(),
        if cfg.services.len() == 1 { "" } else { "s" }
    );

    let name_w = cfg
        .services
        .iter()
        .map(|s| s.name.len())
        .chain(["SERVICE".len()])
        .max()
        .unwrap_or(0);
    let endpoints: Vec<String> = cfg.services.iter().map(|s| s.endpoint()).collect();
    let ep_w = endpoints
        .iter()
        .map(String::len)
        .chain(["ENDPOINT".len()])
        .max()
        .unwrap_or(0);
    let backend_w = cfg
        .services
        .iter()
        .flat_map(|s| &s.backends)
        .map(|b| b.socket_addr().to_string().len())
        .chain(["BACKEND".len()])
        .max()
        .unwrap_or(0);

    let alg_w = cfg
        .services
        .iter()
        .map(|s| s.algorithm.as_str().len())
        .chain(["ALGORITHM".len()])
        .max()
        .unwrap_or(0);
    for (svc, endpoint) in cfg.services.iter().zip(&endpoints) {
        let _ = writeln!(
            out,
            "\n  {:<name_w$}  {:<ep_w$}  {:<alg_w$}  {:<10}  TABLE",
            "SERVICE", "ENDPOINT", "ALGORITHM", "FORWARDING"
        );
        let _ = writeln!(
            out,
            "  {:<name_w$}  {:<ep_w$}  {:<alg_w$}  {:<10}  {}",
            svc.name, endpoint, svc.algorithm, svc.forwarding, svc.table_size
        );
        // round-robin ignores weights: every active backend gets the same share.
        let weight_of = |b: &crate::config::BackendConfig| {
            if svc.algorithm == Algorithm::RoundRobin {
                1
            } else {
                u64::from(b.weight)
            }
        };
        // Shares as they are with every backend healthy: backups only count when
        // the service has nothing else.
        let has_primary = svc
            .backends
            .iter()
            .any(|b| b.state == BackendState::Active && !b.backup);
        let in_table = |b: &crate::config::BackendConfig| {
            b.state == BackendState::Active && (b.backup != has_primary)
        };
        let active_weight: u64 = svc
            .backends
            .iter()
            .filter(|b| in_table(b))
            .map(weight_of)
            .sum();
        let _ = writeln!(
            out,
            "      health: {}{}, on all down: {}",
            health_summary(svc),
            svc.slow_start.map_or(String::new(), |d| format!(
                ", slow start {}",
                humantime::format_duration(d)
            )),
            svc.on_all_down
        );
        let _ = writeln!(
            out,
            "      {:<backend_w$}  {:>6}  {:>6}  STATE",
            "BACKEND", "WEIGHT", "SHARE"
        );
        for b in &svc.backends {
            let share = if in_table(b) && active_weight > 0 {
                format!("{:.1}%", 100.0 * weight_of(b) as f64 / active_weight as f64)
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                out,
                "      {:<backend_w$}  {:>6}  {:>6}  {}{}{}",
                b.socket_addr().to_string(),
                b.weight,
                share,
                b.state,
                if b.backup { " (backup)" } else { "" },
                match svc.health_check(b) {
                    Ok(Some(c)) if b.health_check.is_some() =>
                        format!(" [check {} {}]", c.kind(), c.target),
                    _ => String::new(),
                }
            );
        }
        if active_weight == 0 {
            let _ = writeln!(
                out,
                "      (no active backend: new connections to this service are dropped)"
            );
        }
    }
    out
}

/// "tcp every 2s (rise 2, fall 3)" from the first backend's resolved check, or
/// "not checked".
fn health_summary(svc: &crate::config::ServiceConfig) -> String {
    match svc.backends.first().map(|b| svc.health_check(b)) {
        Some(Ok(Some(c))) => format!(
            "{} every {} (timeout {}, rise {}, fall {})",
            c.kind(),
            humantime::format_duration(c.interval),
            humantime::format_duration(c.timeout),
            c.rise,
            c.fall
        ),
        _ => "not checked".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn names_the_scheduler_and_round_robin_ignores_weights() {
        let text = |algorithm: &str| {
            render(
                &parse_str(&format!(
                    r#"
interfaces = ["veth0"]
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
algorithm = "{algorithm}"
[[service.backend]]
addr = "198.18.1.2"
port = 8080
weight = 3
[[service.backend]]
addr = "198.18.1.3"
port = 8080
"#
                ))
                .unwrap(),
            )
        };
        let rr = text("round-robin");
        let line = |t: &str, pat: &str| t.lines().find(|l| l.contains(pat)).unwrap().to_string();
        assert!(line(&rr, "web").contains("round-robin"), "{rr}");
        assert!(line(&rr, "198.18.1.2:8080").contains("50.0%"), "{rr}");
        let wrr = text("weighted-round-robin");
        let header = line(&wrr, "ALGORITHM");
        let row = line(&wrr, "198.18.100.1:80/tcp");
        // The column is as wide as the longest name, so FORWARDING stays aligned.
        assert_eq!(header.find("FORWARDING"), row.find("nat"), "{wrr}");
        assert!(line(&wrr, "198.18.1.2:8080").contains("75.0%"), "{wrr}");
        assert!(line(&text("least-conn"), "web").contains("least-conn"));
    }

    #[test]
    fn shows_services_backends_and_shares() {
        let cfg = parse_str(
            r#"
interfaces = ["veth0"]
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
[[service.backend]]
addr = "198.18.1.2"
port = 8080
weight = 3
[[service.backend]]
addr = "198.18.1.3"
port = 8080
[[service.backend]]
addr = "198.18.1.4"
port = 8080
state = "draining"

[[service]]
vip = "2001:db8::10"
port = 53
proto = "udp"
forwarding = "dsr"
algorithm = "src-hash"
table_size = 1009
[[service.backend]]
addr = "2001:db8::2"
state = "down"
"#,
        )
        .unwrap();
        let text = render(&cfg);
        println!("{text}");
        assert!(
            text.contains("interfaces: veth0 (attach auto, xdp mode auto)"),
            "{text}"
        );
        assert!(text.contains("2 services:"), "{text}");
        let web = text.lines().find(|l| l.contains("web")).unwrap();
        for field in ["198.18.100.1:80/tcp", "maglev", "nat", "65537"] {
            assert!(web.contains(field), "{web}");
        }
        let line = |addr: &str| text.lines().find(|l| l.contains(addr)).unwrap().to_string();
        assert!(line("198.18.1.2:8080").contains("75.0%"), "{text}");
        assert!(line("198.18.1.3:8080").contains("25.0%"), "{text}");
        let draining = line("198.18.1.4:8080");
        assert!(
            draining.contains("draining") && draining.contains(" - "),
            "{draining}"
        );
        let dns = line("[2001:db8::10]:53/udp");
        assert!(dns.contains("src-hash") && dns.contains("dsr") && dns.contains("1009"));
        assert!(line("[2001:db8::2]:53").contains("down"), "{text}");
        assert!(text.contains("no active backend"), "{text}");
        assert!(
            text.contains("health: tcp every 2s (timeout 1s, rise 2, fall 3), on all down: drop"),
            "{text}"
        );
        assert!(text.contains("health: not checked"), "{text}");
    }

    #[test]
    fn shows_backups_checks_and_slow_start() {
        let cfg = parse_str(
            r#"
interfaces = ["veth0"]
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
slow_start = "30s"
on_all_down = "fail-open"
[service.health_check]
type = "http"
interval = "500ms"
[[service.backend]]
addr = "198.18.1.2"
port = 8080
[[service.backend]]
addr = "198.18.1.3"
port = 8080
backup = true
[service.backend.health_check]
port = 9000
"#,
        )
        .unwrap();
        let text = render(&cfg);
        assert!(
            text.contains("health: http every 500ms (timeout 250ms, rise 2, fall 3), slow start 30s, on all down: fail-open"),
            "{text}"
        );
        let line = |addr: &str| text.lines().find(|l| l.contains(addr)).unwrap().to_string();
        assert!(line("198.18.1.2:8080").contains("100.0%"), "{text}");
        let backup = line("198.18.1.3:8080");
        assert!(
            backup.contains(" - ")
                && backup.contains("(backup)")
                && backup.contains("[check http 198.18.1.3:9000]"),
            "{backup}"
        );
    }
}
