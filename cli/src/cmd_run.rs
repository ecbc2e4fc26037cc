//! `berth run NAME -- CMD…`: mount, run confined in new namespaces, unmount.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_core::confine::RunConfig;
use berth_core::net::NetChoice;
use berth_core::ops::run::{run as run_container, RunRequest};
use clap::Args;

use crate::Cli;

/// The confinement flags `berth run` and `berth start` share: each overrides
/// the container's config key of the same name for this run.
#[derive(Args, Debug, Default)]
pub struct ConfineArgs {
    /// Network: none (private, loopback only; the default), host, or bridge[=NAME]
    /// (a veth pair on bridge NAME, default berth0, with an address of its subnet).
    #[arg(long, value_name = "MODE", value_parser = clap::value_parser!(NetChoice))]
    pub net: Option<NetChoice>,
    /// Turn off the confinement: every capability, writable /proc, all
    /// devices, no seccomp. The container can then take over the host.
    #[arg(long)]
    pub privileged: bool,
    /// Add a capability to the default set (e.g. NET_RAW for busybox ping); repeatable.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Memory limit (e.g. 512M, 2G); the container is OOM-killed past it.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Memory plus swap limit (Docker's --memory-swap).
    #[arg(long, value_name = "SIZE")]
    pub memory_swap: Option<String>,
    /// Most processes and threads at once (default 4096).
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// CPU time, in CPUs (e.g. 0.5).
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// CPUs it may run on (e.g. 0-1,3).
    #[arg(long, value_name = "LIST")]
    pub cpuset: Option<String>,
    /// Block I/O weight (cgroup v2: 1-10000, v1: 10-1000).
    #[arg(long, value_name = "N")]
    pub io_weight: Option<u16>,
    /// Parent cgroup of the container's own (default: the caller's + /berth).
    #[arg(long, value_name = "PATH")]
    pub cgroup_parent: Option<PathBuf>,
    /// seccomp profile: default, unconfined, or a profile in Docker's JSON format.
    #[arg(long, value_name = "PROFILE")]
    pub seccomp: Option<String>,
    /// Map container root to an unprivileged host id (from /etc/subuid).
    #[arg(long)]
    pub userns: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    pub name: String,
    /// Working directory inside the container (default: its image's
    /// WorkingDir, else /).
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables, KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[command(flatten)]
    pub confine: ConfineArgs,
    /// Give the command a pseudo-terminal of the container's own (the default when stdin is a terminal).
    #[arg(short, long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never give the command a pseudo-terminal: it gets berth's stdin, stdout and stderr.
    #[arg(long)]
    pub no_tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

impl ConfineArgs {
    /// The flags that override the container's config, as config keys.
    pub fn overrides(&self) -> Vec<(String, String)> {
        let flags = RunConfig {
            memory: self.memory.clone(),
            memory_swap: self.memory_swap.clone(),
            pids: self.pids,
            cpus: self.cpus.clone(),
            cpuset: self.cpuset.clone(),
            io_weight: self.io_weight,
            cgroup_parent: self.cgroup_parent.clone(),
            seccomp: self.seccomp.clone(),
            privileged: self.privileged,
            cap_add: self.cap_add.clone(),
            userns: self.userns,
            net: self.net.clone(),
            shifted: None,
            ..RunConfig::default()
        };
        flags
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }
}

pub fn run(cli: &Cli, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let env = parse_env(&a.env)?
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    let req = RunRequest {
        argv: a.command.clone(),
        env,
        cwd: a.cwd.clone(),
        tty: a.tty || (!a.no_tty && std::io::stdin().is_terminal()),
        keep_pty: false,
        overrides: a.confine.overrides(),
    };
    let status = run_container(&cli.root, &a.name, req)?;
    Ok(ExitCode::from(u8::try_from(status.code()).unwrap_or(255)))
}

/// `--env KEY=VALUE` flags.
pub fn parse_env(flags: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    flags
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => anyhow::bail!("--env {kv:?}: expected KEY=VALUE"),
        })
        .collect()
}
