//! Every `--help` states its defaults: walks clap's command tree, asks each command
//! for its help as a user would, and checks every option that has a default shows it.
use clap::{error::ErrorKind, CommandFactory as _, Parser as _};

use super::Cli;
use xdp_lb_common::DEFAULT_FLOW_TABLE_SIZE;

/// Every command's path from the root, the root included (`[]`).
fn paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut p = prefix.clone();
        p.push(sub.get_name().to_string());
        paths(sub, p, out);
    }
}

fn command_at<'a>(root: &'a clap::Command, path: &[String]) -> &'a clap::Command {
    path.iter().fold(root, |c, name| {
        c.find_subcommand(name).expect("path from the tree")
    })
}

/// What `xdp-lb PATH --help` prints.
fn help(path: &[String]) -> String {
    let argv = std::iter::once("xdp-lb".to_string())
        .chain(path.iter().cloned())
        .chain(["--help".to_string()]);
    let e = Cli::try_parse_from(argv).expect_err("--help stops parsing");
    assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{path:?}: {e}");
    e.to_string()
}

/// Whitespace collapsed: clap breaks long lines.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The entry of option `flag` in a help text: its header line and the description
/// lines up to the next option's header.
fn entry(text: &str, flag: &str) -> Option<String> {
    let header = |l: &str| l.trim_start().starts_with('-');
    let names_flag = |l: &str| l.trim_start().split([',', ' ', '=']).any(|w| w == flag);
    let mut lines = text.lines().skip_while(|l| !(header(l) && names_flag(l)));
    let first = lines.next()?;
    let rest: Vec<&str> = lines.take_while(|l| !header(l)).collect();
    Some(flat(&format!("{first}\n{}", rest.join("\n"))))
}

fn arg_help(arg: &clap::Arg) -> String {
    arg.get_long_help()
        .or(arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[test]
fn every_option_with_a_default_shows_it_in_help() {
    let mut root = Cli::command();
    root.build();
    let mut all = Vec::new();
    paths(&root, Vec::new(), &mut all);
    assert!(all.len() > 20, "the tree walk found only {all:?}");
    let mut checked = 0;
    for path in &all {
        let cmd = command_at(&root, path);
        let text = flat(&help(path));
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = arg.get_id();
            let own = arg_help(arg);
            // A default written in prose ("Default: 5") instead of clap's form.
            assert!(
                !own.contains("Default:") && !own.contains("default:")
                    || own.contains("[default: "),
                "xdp-lb {} --{id}: write the default as [default: ...]: {own:?}",
                path.join(" ")
            );
            let defaults = arg.get_default_values();
            if defaults.is_empty() || !arg.get_action().takes_values() {
                continue;
            }
            assert!(
                !arg.is_hide_default_value_set(),
                "xdp-lb {} --{id} hides its default",
                path.join(" ")
            );
            let shown = defaults
                .iter()
                .map(|v| v.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ");
            let want = format!("[default: {shown}]");
            assert!(
                text.contains(&want),
                "xdp-lb {} --help does not show {want} for --{id}:\n{text}",
                path.join(" ")
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} defaults seen: the walk is broken"
    );
}

/// Options whose default comes from the file or the code rather than from clap: their
/// help says it in clap's form.
#[test]
fn options_defaulted_outside_clap_state_their_default() {
    let flow = format!("[default: {DEFAULT_FLOW_TABLE_SIZE}, or `flow_table_size` in the file]");
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["run"],
            "--xdp-mode",
            "[default: auto, or `xdp_mode` in the file]",
        ),
        (
            &["check"],
            "--xdp-mode",
            "[default: auto, or `xdp_mode` in the file]",
        ),
        (
            &["run"],
            "--attach",
            "[default: auto, or `attach` in the file]",
        ),
        (&["run"], "--flow-table-size", &flow),
        (&["check"], "--flow-table-size", &flow),
        (&["run"], "--table-size", "[default: 65537]"),
        (&["service", "add"], "--table-size", "[default: 65537]"),
        (&["run"], "--metrics-listen", "[default: 127.0.0.1:9717"),
        (&["backend", "add"], "--state", "[default: active]"),
        (&["cache", "serve"], "--listen", "[default: 127.0.0.1:8080]"),
        (
            &["cache", "serve"],
            "--redis",
            "[default: redis://127.0.0.1:6379]",
        ),
        (
            &["cache", "warm"],
            "--redis",
            "[default: redis://127.0.0.1:6379]",
        ),
    ];
    for (path, flag, want) in cases {
        let path: Vec<String> = path.iter().map(ToString::to_string).collect();
        let text = help(&path);
        let entry = entry(&text, flag)
            .unwrap_or_else(|| panic!("xdp-lb {} --help has no {flag}:\n{text}", path.join(" ")));
        assert!(
            entry.contains(want),
            "xdp-lb {} --help, {flag}: want {want}, got {entry:?}",
            path.join(" ")
        );
    }
}
