//! `xdp-lb top`: a live terminal dashboard drawn from a monitor [`View`]. Drawing is a pure
//! function of the view ([`draw`]), so it is tested on ratatui's `TestBackend`; the loop
//! ([`run_dashboard`]) only fetches a view (over the admin socket, in the daemon's case),
//! draws it and waits for `q`.
use std::fmt::Display;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;

use crate::monitor::{BackendState, Health, View};

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("cannot set up the terminal for the dashboard")]
    Init(#[source] std::io::Error),
    #[error("cannot draw the dashboard")]
    Draw(#[source] std::io::Error),
    #[error("cannot read the keyboard")]
    Input(#[source] std::io::Error),
}

/// Draws the whole dashboard for `view` into the frame.
pub fn draw(frame: &mut Frame, view: &View) {
    draw_with_status(frame, view, None);
}

fn draw_with_status(frame: &mut Frame, view: &View, status: Option<&str>) {
    let alert_rows = view.alerts.len().clamp(1, 6) as u16 + 2;
    let [header, sparks, table, alerts] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(5),
        Constraint::Min(4),
        Constraint::Length(alert_rows),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(view, status)), header);
    draw_sparklines(frame, view, sparks);
    draw_table(frame, view, table);
    draw_alerts(frame, view, alerts);
}

fn header_lines(view: &View, status: Option<&str>) -> Vec<Line<'static>> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut first = vec![Span::styled("xdp-lb top", bold), Span::raw("  (q quits)")];
    if let Some(s) = status {
        first.push(Span::styled(
            format!("  {s}"),
            Style::default().fg(Color::Red),
        ));
    }
    let Some(f) = &view.latest else {
        return vec![
            Line::from(first),
            Line::from("waiting for figures: rates need two samples"),
        ];
    };
    let mut second = Vec::new();
    if let Some(d) = &f.dataplane {
        second.push(format!(
            "{} pkt/s  {}  flows {} of {} ({:.0}%)",
            si(d.packets_per_s),
            bits(d.bits_per_s),
            d.flows,
            d.flow_table_capacity,
            d.flow_table_percent
        ));
    }
    if let Some(r) = &f.resources {
        second.push(format!(
            "cpu {:.0}%  mem {:.0}%  load {:.2}",
            r.cpu_percent, r.memory_percent, r.load1
        ));
    }
    if let Some(c) = &f.cache {
        let hit = c
            .hit_percent
            .map_or_else(|| "-".to_string(), |h| format!("{h:.1}%"));
        let redis = match c.redis_reachable {
            Some(true) => "redis up",
            Some(false) => "redis DOWN",
            None => "redis ?",
        };
        second.push(format!(
            "cache hit {hit}  {} req/s  {redis}",
            si(c.requests_per_s)
        ));
    }
    vec![Line::from(first), Line::from(second.join("   |   "))]
}

fn draw_sparklines(frame: &mut Frame, view: &View, area: Rect) {
    let [cpu, mem, pps] = Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(area);
    let last = |v: &[f64]| v.last().copied().unwrap_or(0.0);
    let s = &view.series;
    spark(
        frame,
        cpu,
        &format!("CPU {:.0}%", last(&s.cpu_percent)),
        &s.cpu_percent,
        Some(100),
    );
    spark(
        frame,
        mem,
        &format!("memory {:.0}%", last(&s.memory_percent)),
        &s.memory_percent,
        Some(100),
    );
    spark(
        frame,
        pps,
        &format!("packets/s {}", si(last(&s.packets_per_s))),
        &s.packets_per_s,
        None,
    );
}

fn spark(frame: &mut Frame, area: Rect, title: &str, data: &[f64], max: Option<u64>) {
    // Only the newest values that fit: a sparkline draws from its first value.
    let width = area.width.saturating_sub(2) as usize;
    let tail = &data[data.len().saturating_sub(width)..];
    let values: Vec<u64> = tail.iter().map(|v| v.max(0.0).round() as u64).collect();
    let mut w = Sparkline::default()
        .block(Block::bordered().title(title.to_string()))
        .style(Style::default().fg(Color::Cyan))
        .data(&values);
    if let Some(m) = max {
        w = w.max(m);
    }
    frame.render_widget(w, area);
}

fn draw_table(frame: &mut Frame, view: &View, area: Rect) {
    let header = Row::new([
        "service / backend",
        "state",
        "health",
        "weight",
        "pkt/s",
        "bits/s",
        "flows",
        "share",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let mut rows = Vec::new();
    if let Some(d) = view.latest.as_ref().and_then(|f| f.dataplane.as_ref()) {
        for s in &d.services {
            let ok = s.usable_backends > 0;
            rows.push(
                Row::new([
                    Cell::from(s.name.clone()),
                    Cell::from(format!("{}/{} usable", s.usable_backends, s.backends.len()))
                        .style(Style::default().fg(if ok { Color::Green } else { Color::Red })),
                    Cell::from(""),
                    Cell::from(""),
                    Cell::from(si(s.packets_per_s)),
                    Cell::from(bits(s.bits_per_s)),
                    Cell::from(s.flows.to_string()),
                    Cell::from(""),
                ])
                .style(Style::default().add_modifier(Modifier::BOLD)),
            );
            for b in &s.backends {
                let state_color = match b.state {
                    BackendState::Active => Color::Green,
                    BackendState::Draining => Color::Yellow,
                    BackendState::Down => Color::Red,
                };
                let (health, health_color) = match b.health {
                    Some(Health::Up) => ("up", Color::Green),
                    Some(Health::Down) => ("down", Color::Red),
                    None => ("-", Color::Reset),
                };
                rows.push(Row::new([
                    Cell::from(format!("  {}", b.addr)),
                    Cell::from(b.state.as_str()).style(Style::default().fg(state_color)),
                    Cell::from(health).style(Style::default().fg(health_color)),
                    Cell::from(b.weight.to_string()),
                    Cell::from(si(b.packets_per_s)),
                    Cell::from(bits(b.bits_per_s)),
                    Cell::from(b.flows.to_string()),
                    Cell::from(format!("{:.1}%", b.share_percent)),
                ]));
            }
        }
    }
    let widths = [
        Constraint::Min(24),
        Constraint::Length(12),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(7),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title("services")),
        area,
    );
}

fn draw_alerts(frame: &mut Frame, view: &View, area: Rect) {
    let lines: Vec<Line> = if view.alerts.is_empty() {
        vec![Line::styled("none", Style::default().fg(Color::Green))]
    } else {
        view.alerts
            .iter()
            .map(|a| {
                let target = if a.target.is_empty() {
                    String::new()
                } else {
                    format!(" {}", a.target)
                };
                Line::styled(
                    format!("{}{}: {}", a.kind, target, a.message),
                    Style::default().fg(Color::Red),
                )
            })
            .collect()
    };
    let title = format!("alerts firing: {}", view.alerts.len());
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

/// 1234567 -> "1.23M": short, fixed-width-ish numbers for columns.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn bits(v: f64) -> String {
    format!("{}b/s", si(v))
}

/// Restores the terminal however the loop ends (return, error, panic unwinding).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the dashboard in this terminal until `q`, `Esc` or `Ctrl-C`: fetches a view every
/// `refresh` and draws it. A failed fetch (the daemon restarting) keeps the last view on
/// screen with the error in the header, instead of quitting.
pub fn run_dashboard<E: Display>(
    mut fetch: impl FnMut() -> Result<View, E>,
    refresh: Duration,
) -> Result<(), TuiError> {
    let mut terminal = ratatui::try_init().map_err(TuiError::Init)?;
    let _restore = Restore;
    let mut view = View::default();
    loop {
        let status = match fetch() {
            Ok(v) => {
                view = v;
                None
            }
            Err(e) => Some(format!("fetch failed: {e}")),
        };
        terminal
            .draw(|f| draw_with_status(f, &view, status.as_deref()))
            .map_err(TuiError::Draw)?;
        let next = Instant::now() + refresh;
        // Wait for the next refresh, answering keys (and redrawing on resize) meanwhile.
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || !event::poll(left).map_err(TuiError::Input)? {
                break;
            }
            match event::read().map_err(TuiError::Input)? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal
                        .draw(|f| draw_with_status(f, &view, status.as_deref()))
                        .map_err(TuiError::Draw)?;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::tests::sample;
    use crate::monitor::{Alert, AlertKind, Monitor, MonitorConfig};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(view: &View, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, view)).unwrap();
        let buf = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    fn view_with_traffic() -> View {
        let mut m = Monitor::new(MonitorConfig::default()).unwrap();
        let t0 = Instant::now();
        let mut a = sample((0, 0), (0, 0), 30.0);
        m.record(t0, a.clone()).unwrap();
        a = sample((4000, 5_000_000), (1000, 1_000_000), 35.0);
        let d = a.dataplane.as_mut().unwrap();
        d.services[0].backends[1].state = BackendState::Draining;
        d.services[0].backends[1].health = Some(Health::Down);
        m.record(t0 + Duration::from_secs(1), a).unwrap();
        let mut view = m.view();
        view.alerts.push(Alert {
            kind: AlertKind::BackendDown,
            target: "web/10.0.0.3:80".into(),
            message: "failing its health checks".into(),
            value: 1.0,
            threshold: 1.0,
            since_s: 0.0,
            fired_s: Some(1.0),
        });
        view
    }

    #[test]
    fn dashboard_draws_backend_rows_states_rates_and_alerts() {
        let lines = screen(&view_with_traffic(), 120, 30);
        let all = lines.join("\n");
        let row = lines
            .iter()
            .find(|l| l.contains("10.0.0.2:80"))
            .unwrap_or_else(|| panic!("no backend row:\n{all}"));
        assert!(row.contains("active"), "{row}");
        assert!(row.contains("up"), "{row}");
        assert!(row.contains("4.0k"), "4000 packets in 1 s: {row}");
        assert!(row.contains("40.00Mb/s"), "5 MB in 1 s: {row}");
        assert!(row.contains("80.0%"), "share 4000 of 5000: {row}");
        let other = lines.iter().find(|l| l.contains("10.0.0.3:80")).unwrap();
        assert!(
            other.contains("draining") && other.contains("down"),
            "{other}"
        );
        assert!(other.contains("20.0%"), "{other}");
        let service = lines.iter().find(|l| l.contains("web ")).unwrap();
        assert!(
            service.contains("1/2 usable") && service.contains("5.0k"),
            "{service}"
        );
        assert!(all.contains("CPU 35%"), "{all}");
        assert!(all.contains("memory 25%"), "{all}");
        assert!(all.contains("packets/s 5.0k"), "{all}");
        assert!(all.contains("alerts firing: 1"), "{all}");
        assert!(
            all.contains("backend_down web/10.0.0.3:80: failing its health checks"),
            "{all}"
        );
    }

    #[test]
    fn dashboard_before_the_first_rates_says_so() {
        let all = screen(&View::default(), 80, 20).join("\n");
        assert!(all.contains("waiting for figures"), "{all}");
        assert!(all.contains("alerts firing: 0"), "{all}");
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(2_340_000.0), "2.34M");
        assert_eq!(bits(3e9), "3.00Gb/s");
    }
}
