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

/// The lines `berth info` and `config show` print: limits, security, user namespace.
pub fn describe(r: &RunConfig) -> Vec<String> {
    let mut limits: Vec<String> = r
        .entries()
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "seccomp" | "privileged" | "userns" | "cgroup_parent"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if r.pids.is_none() {
        limits.push(format!("pids={DEFAULT_PIDS} (default)"));
    }
    let security = if r.privileged {
        "privileged (no confinement)".to_owned()
    } else {
        format!(
            "confined (seccomp {}, /proc masked, devices restricted, no_new_privs)",
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
    if let Some(p) = &r.cgroup_parent {
        out.push(format!("cgroup:     {}/<name>", p.display()));
    }
    out
}
