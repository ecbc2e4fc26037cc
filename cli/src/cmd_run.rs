//! `berth run NAME -- CMD…`: mount, run in new namespaces, unmount.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_cli::Berth;
use berth_runtime::{LinuxSys, NetMode, RunSpec};
use clap::{Args, ValueEnum};
use tracing::warn;

use crate::Cli;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Net {
    /// A private network namespace with only loopback.
    None,
    /// Share the host's network.
    Host,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    pub name: String,
    /// Network: none (private, loopback only) or host.
    #[arg(long, value_enum, default_value_t = Net::None)]
    pub net: Net,
    /// Working directory inside the container.
    #[arg(long, default_value = "/")]
    pub cwd: PathBuf,
    /// Extra environment variables, KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Keep every capability (by default those outside Docker's default set are dropped).
    #[arg(long)]
    pub privileged: bool,
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

pub fn run(cli: &Cli, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut env = Vec::new();
    for kv in &a.env {
        let Some((k, v)) = kv.split_once('=') else {
            anyhow::bail!("--env {kv:?}: expected KEY=VALUE");
        };
        env.push((OsString::from(k), OsString::from(v)));
    }
    // Hold the store lock only while mounting and unmounting, not while it runs.
    let mounted = Berth::open(&cli.root, true)?.start_run(&a.name)?;
    if mounted.read_only {
        warn!(name = %a.name, "clones depend on this container: its rootfs is mounted read-only");
    }
    let mut spec = RunSpec::new(&mounted.rootfs, a.name.clone(), a.command.clone());
    spec.net = match a.net {
        Net::None => NetMode::None,
        Net::Host => NetMode::Host,
    };
    spec.cwd = a.cwd.clone();
    spec.env.extend(env);
    spec.drop_caps = !a.privileged;
    spec.tty = a.tty || (!a.no_tty && std::io::stdin().is_terminal());
    let status = berth_runtime::run(&spec, &LinuxSys);
    let finished = Berth::open(&cli.root, true).and_then(|b| b.finish_run(mounted));
    let status = status?;
    finished?;
    Ok(ExitCode::from(u8::try_from(status.code()).unwrap_or(255)))
}
