//! `berth config show|set NAME`: a container's limits and security settings.

use std::process::ExitCode;

use berth_core::confine::{RunConfig, DEFAULT_PIDS, KEYS};
use berth_core::Berth;
use clap::Subcommand;

use crate::output::say;
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the settings (unset keys take their defaults).
    Show { name: String },
    /// Set keys, KEY=VALUE (an empty VALUE unsets). Keys: memory, memory_swap,
    /// pids, cpus, cpuset, io_weight, cgroup_parent, seccomp, privileged, userns.
    Set {
        name: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
}

pub fn run(cli: &Cli, cmd: &ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Show { name } => {
            let c = Berth::open(&cli.root, false)?.store().container(name)?;
            if cli.format == crate::Format::Json {
                say(serde_json::to_string_pretty(&c.run)?)?;
            } else {
                for line in describe(&c.run) {
                    say(line)?;
                }
            }
        }
        ConfigCmd::Set { name, settings } => {
            let mut pairs = Vec::new();
            for kv in settings {
                let Some((k, v)) = kv.split_once('=') else {
                    anyhow::bail!("{kv:?}: expected KEY=VALUE (keys: {})", KEYS.join(", "));
                };
                pairs.push((k.to_owned(), v.to_owned()));
            }
            Berth::open(&cli.root, true)?.set_config(name, &pairs)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The lines `berth info` and `config show` print: limits, security, user
/// namespace, network, start settings.
pub fn describe(r: &RunConfig) -> Vec<String> {
    let entries = r.entries();
    let keys = |want: &[&str]| -> Vec<String> {
        entries
            .iter()
            .filter(|(k, _)| want.contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    };
    let mut limits = keys(&[
        "memory",
        "memory_swap",
        "pids",
        "cpus",
        "cpuset",
        "io_weight",
    ]);
    if r.pids.is_none() {
        limits.push(format!("pids={DEFAULT_PIDS} (default)"));
    }
    let security = if r.privileged {
        "privileged (no confinement)".to_owned()
    } else {
        let caps = match r.cap_add.is_empty() {
            true => String::new(),
            false => format!(", default capabilities + {}", r.cap_add.join(",")),
        };
        format!(
            "confined (seccomp {}, /proc masked, devices restricted, no_new_privs{caps})",
            r.seccomp.as_deref().unwrap_or("default")
        )
    };
    let userns = match (r.userns, r.shifted) {
        (false, None) => "off (container root is host root)".to_owned(),
        (false, Some(s)) => format!(
            "off (owners still shifted to {}, undone at next run)",
            s.uid
        ),
        (true, None) => "on (idmapped mount: owners on disk unchanged)".to_owned(),
        (true, Some(s)) => format!(
            "on, owners shifted on disk to {}:{} (filesystem cannot be idmapped)",
            s.uid, s.gid
        ),
    };
    let mut out = vec![
        format!("limits:     {}", limits.join(" ")),
        format!("security:   {security}"),
        format!("userns:     {userns}"),
    ];
    let net = match (&r.net, r.ipv4) {
        (None, None) => "none (loopback only)".to_owned(),
        (n, ip) => {
            let mode = n.clone().unwrap_or_default().to_string();
            match ip {
                Some(ip) => format!("{mode}, address {ip}"),
                None => mode,
            }
        }
    };
    out.push(format!("network:    {net}"));
    let start = keys(&["init.cmd", "autostart", "start.order", "start.delay"]);
    if !start.is_empty() {
        out.push(format!("start:      {}", start.join(" ")));
    }
    if let Some(p) = &r.cgroup_parent {
        out.push(format!("cgroup:     {}/<name>", p.display()));
    }
    out
}
