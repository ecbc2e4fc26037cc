//! Detached containers: `berth start|stop|restart|kill|wait|logs|freeze|unfreeze`,
//! and the hidden monitor subcommand `berth start` runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use berth_core::logs::{read_logs, LogQuery};
use berth_core::ops::lifecycle::console::{self, AttachEnd};
use berth_core::ops::lifecycle::{self, ExecRequest, StartRequest};
use berth_core::Berth;
use clap::Args;
use nix::sys::signal::Signal;

use crate::cmd_run::{parse_env, ConfineArgs};
use crate::output::say;
use crate::Cli;

#[derive(Args, Debug)]
pub struct StartArgs {
    /// The container (not with --all-auto).
    #[arg(required_unless_present = "all_auto", conflicts_with = "all_auto")]
    pub name: Option<String>,
    /// Start every container whose config says `autostart true`, by
    /// `start.order`, waiting `start.delay` seconds after each (for a boot unit).
    #[arg(long)]
    pub all_auto: bool,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables, KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Give it a pseudo-terminal, held by its monitor, to `berth attach` to.
    #[arg(short, long)]
    pub tty: bool,
    #[command(flatten)]
    pub confine: ConfineArgs,
    /// The command; default: the container's `init.cmd`, else /sbin/init, else /bin/sh.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    pub name: String,
    /// Give the command a pseudo-terminal (the default when stdin is a terminal).
    #[arg(short, long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never give the command a pseudo-terminal.
    #[arg(long)]
    pub no_tty: bool,
    /// Extra environment variables, KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Run as UID[:GID] inside the container (default root).
    #[arg(short, long, value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// `UID[:GID]`; the gid defaults to the uid.
fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(format!("{s:?}: expected UID[:GID], numbers")),
    }
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    pub name: String,
    /// The keys that detach, leaving the container running (Docker's form).
    #[arg(long, value_name = "KEYS", default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    pub name: String,
    /// Seconds to wait for init to stop before killing it.
    #[arg(short = 't', long = "timeout", default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    pub name: String,
    /// Signal name or number (KILL, SIGTERM, 15…).
    #[arg(default_value = "KILL", value_parser = parse_signal)]
    pub signal: Signal,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub name: String,
    /// Keep printing new output until the container stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Prefix each line with its time (RFC 3339, UTC).
    #[arg(short = 't', long)]
    pub timestamps: bool,
}

/// The monitor's arguments (`berth __monitor ROOT NAME JSON`); not for users.
#[derive(Args, Debug)]
pub struct MonitorArgs {
    pub state_root: PathBuf,
    pub name: String,
    pub request: String,
}

/// A signal by name (`KILL`, `SIGKILL`) or number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| format!("{s:?} is not a signal (e.g. TERM, KILL, HUP, 9)"))
}

fn berth_exe() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?)
}

pub fn start(cli: &Cli, a: &StartArgs) -> anyhow::Result<ExitCode> {
    let Some(name) = &a.name else {
        let mut failed = false;
        for (name, started) in lifecycle::start_all_auto(&cli.root, &berth_exe()?)? {
            match started {
                Ok(pid) => say(format!("started {name} (init pid {pid})"))?,
                Err(e) => {
                    failed = true;
                    crate::output::warning(format!("{name}: {e}"));
                }
            }
        }
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    };
    let req = StartRequest {
        command: a.command.clone(),
        env: parse_env(&a.env)?,
        cwd: a.cwd.clone(),
        overrides: a.confine.overrides(),
        tty: a.tty,
    };
    let pid = lifecycle::start(&cli.root, name, &req, &berth_exe()?)?;
    say(format!("started {name} (init pid {pid})"))?;
    Ok(ExitCode::SUCCESS)
}

pub fn exec(cli: &Cli, a: &ExecArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let req = ExecRequest {
        argv: a.command.clone(),
        env: parse_env(&a.env)?
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        cwd: a.cwd.clone(),
        user: a.user,
        tty: a.tty || (!a.no_tty && std::io::stdin().is_terminal()),
    };
    let status = lifecycle::exec(&cli.root, &a.name, &req)?;
    Ok(ExitCode::from(u8::try_from(status.code()).unwrap_or(255)))
}

pub fn stop(cli: &Cli, a: &StopArgs) -> anyhow::Result<ExitCode> {
    let s = lifecycle::stop(&cli.root, &a.name, Duration::from_secs(a.timeout))?;
    let how = if s.killed {
        format!(" (killed after {} s)", a.timeout)
    } else {
        String::new()
    };
    match s.exit {
        Some(e) => say(format!("stopped {}{how}: {e}", a.name))?,
        None => say(format!("stopped {}{how}", a.name))?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restart(cli: &Cli, a: &StopArgs) -> anyhow::Result<ExitCode> {
    let req = lifecycle::last_request(&cli.root, &a.name)?;
    if Berth::open(&cli.root, false)?.is_running(&a.name) {
        lifecycle::stop(&cli.root, &a.name, Duration::from_secs(a.timeout))?;
    }
    let pid = lifecycle::start(&cli.root, &a.name, &req, &berth_exe()?)?;
    say(format!("restarted {} (init pid {pid})", a.name))?;
    Ok(ExitCode::SUCCESS)
}

pub fn kill(cli: &Cli, a: &KillArgs) -> anyhow::Result<ExitCode> {
    Berth::open(&cli.root, false)?.kill(&a.name, a.signal)?;
    Ok(ExitCode::SUCCESS)
}

pub fn attach(cli: &Cli, a: &AttachArgs) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsFd;
    let keys = console::parse_detach_keys(&a.detach_keys)?;
    Berth::open(&cli.root, false)?.store().container(&a.name)?;
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    match console::attach(&cli.root, &a.name, &keys, stdin.as_fd(), stdout.as_fd())? {
        AttachEnd::Detached => {
            eprintln!("\r\nberth: detached from {} (it keeps running)\r", a.name);
            Ok(ExitCode::SUCCESS)
        }
        AttachEnd::Ended => wait(cli, &a.name),
    }
}

pub fn wait(cli: &Cli, name: &str) -> anyhow::Result<ExitCode> {
    match lifecycle::wait(&cli.root, name)? {
        Some(e) => {
            say(e.to_string())?;
            Ok(ExitCode::from(u8::try_from(e.shell_code()).unwrap_or(255)))
        }
        None => anyhow::bail!("container {name:?} has not run detached yet (`berth start`)"),
    }
}

pub fn logs(cli: &Cli, a: &LogsArgs) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, false)?;
    b.store().container(&a.name)?;
    let path = lifecycle::log_file(&cli.root, &a.name);
    if !path.exists() {
        anyhow::bail!(
            "container {:?} has no log yet; its output is kept once it runs detached (`berth start`)",
            a.name
        );
    }
    let q = LogQuery {
        tail: a.tail,
        timestamps: a.timestamps,
        follow: a.follow,
    };
    let running = || b.is_running(&a.name);
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    read_logs(&path, &q, &running, &mut out, &mut err)?;
    Ok(ExitCode::SUCCESS)
}

pub fn freeze(cli: &Cli, name: &str, frozen: bool) -> anyhow::Result<ExitCode> {
    Berth::open(&cli.root, false)?.set_frozen(name, frozen)?;
    say(format!(
        "{} {name}",
        if frozen { "froze" } else { "thawed" }
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The monitor: exits with the container's exit code.
pub fn monitor(a: &MonitorArgs) -> anyhow::Result<ExitCode> {
    let exit = lifecycle::monitor(&a.state_root, &a.name, &a.request)?;
    Ok(ExitCode::from(
        u8::try_from(exit.shell_code()).unwrap_or(255),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("KILL"), Ok(Signal::SIGKILL));
        assert_eq!(parse_signal("sigterm"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("1"), Ok(Signal::SIGHUP));
        assert!(parse_signal("NOPE").unwrap_err().contains("not a signal"));
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn users_parse_with_an_optional_gid() {
        assert_eq!(parse_user("1000"), Ok((1000, 1000)));
        assert_eq!(parse_user("1000:50"), Ok((1000, 50)));
        assert!(parse_user("bob").is_err());
    }
}
