//! Detached containers (`berth start`): a small monitor process per container
//! (berth re-executing itself; no daemon outlives its container) mounts the
//! rootfs, runs the container confined as `berth run` does, keeps its output
//! in a log, records its init and cgroup in the run state, reaps it, writes its
//! exit status and unmounts. `stop`, `kill`, `wait`, `freeze` act on what the
//! monitor recorded; a monitor that died is cleaned up after by the next
//! command, as a crashed `berth run` is.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_runtime::{ExitStatus, Started, Stdio};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::run::{confined_run, RunRequest};
use super::Berth;
use crate::error::{BerthError, Result};
use crate::logs::{self, LogWriter, Stream};
use crate::store::{proc_starttime, Detached};
use console::Console;

pub mod bench;
pub mod console;
mod control;
pub(crate) use control::Frozen;
pub use control::{exec, last_exit, stop, wait, ExecRequest, RunInfo, Stopped};

/// The hidden subcommand the monitor runs as: `berth __monitor ROOT NAME JSON`.
pub const MONITOR_COMMAND: &str = "__monitor";

/// What `berth start` asks of the monitor; crosses the exec as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// The command; empty: the container's init (`/sbin/init` if present, else `/bin/sh`).
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// `berth config` keys for this start only.
    pub overrides: Vec<(String, String)>,
    /// Give it a pty its monitor holds, for `berth attach`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
}

/// How a detached container last ended, kept next to its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Seconds since the epoch.
    pub finished: u64,
}

impl Exit {
    fn of(status: ExitStatus) -> Exit {
        let (code, signal) = match status {
            ExitStatus::Exited(c) => (Some(c), None),
            ExitStatus::Signaled(s) => (None, Some(s)),
        };
        Exit {
            code,
            signal,
            finished: now_secs(),
        }
    }

    /// The code a shell would report: the exit code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("ended"),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a container's log, exit status and monitor log live: they outlive
/// its monitor, until the container is destroyed.
pub fn log_dir(root: &Path, name: &str) -> PathBuf {
    root.join("logs").join(name)
}

/// The container's output log.
pub fn log_file(root: &Path, name: &str) -> PathBuf {
    log_dir(root, name).join("container.log")
}

fn exit_file(root: &Path, name: &str) -> PathBuf {
    log_dir(root, name).join("exit.toml")
}

fn request_file(root: &Path, name: &str) -> PathBuf {
    log_dir(root, name).join("start.json")
}

/// The request of the last `berth start` of `name`, for `berth restart`.
pub fn last_request(root: &Path, name: &str) -> Result<StartRequest> {
    let path = request_file(root, name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BerthError::Invalid(format!(
                "container {name:?} was never started detached; use `berth start`"
            )))
        }
        Err(e) => return Err(BerthError::io("read", &path)(e)),
    };
    serde_json::from_str(&text).map_err(|e| BerthError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

/// `berth start`: hands `name` to a new monitor (`monitor_exe`, the berth
/// binary) and returns the host pid of its init once its command runs. A
/// failure before that is this call's error; nothing is left running.
pub fn start(root: &Path, name: &str, req: &StartRequest, monitor_exe: &Path) -> Result<u32> {
    {
        let b = Berth::open(root, false)?;
        b.store().container(name)?;
        b.refuse_if_active(name, "stop it first (`berth stop`)")?;
    }
    let dir = log_dir(root, name);
    berth_bdev::fsutil::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(exit_file(root, name));
    let monitor_log = dir.join("monitor.log");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&monitor_log)
        .map_err(BerthError::io("open", &monitor_log))?;
    let json = serde_json::to_string(req).map_err(|e| BerthError::Invalid(e.to_string()))?;
    // For `restart`; losing it to a crash only means restart asks for a start.
    berth_bdev::fsutil::replace_file(&request_file(root, name), json.as_bytes())?;
    let monitor = spawn_monitor(root, name, &json, stderr, monitor_exe)?;
    let mut report = String::new();
    std::fs::File::from(monitor.stdout)
        .read_to_string(&mut report)
        .map_err(BerthError::io("read the monitor's report", &monitor_log))?;
    match report.trim().split_once(' ') {
        Some(("started", pid)) => pid
            .parse()
            .map_err(|_| BerthError::Invalid(format!("the monitor reported {report:?}"))),
        Some(("error", why)) => Err(BerthError::Invalid(format!("cannot start {name}: {why}"))),
        _ => Err(BerthError::Invalid(format!(
            "the monitor of {name} (pid {}) ended without starting it; see {}",
            monitor.pid,
            monitor_log.display()
        ))),
    }
}

/// The monitor: `monitor_exe __monitor ROOT NAME JSON`.
fn spawn_monitor(
    root: &Path,
    name: &str,
    json: &str,
    stderr: std::fs::File,
    monitor_exe: &Path,
) -> Result<berth_bdev::cmd::Detached> {
    let args: [&OsStr; 4] = [
        OsStr::new(MONITOR_COMMAND),
        root.as_os_str(),
        OsStr::new(name),
        OsStr::new(json),
    ];
    Ok(
        berth_bdev::cmd::spawn_detached(monitor_exe.as_os_str(), &args, stderr)
            .map_err(berth_bdev::BdevError::from)?,
    )
}

/// `berth start --all-auto`: starts every stopped container whose config says
/// `autostart`, by `start.order` (then name), waiting `start.delay` after each.
/// Returns each container with its init pid or why it did not start.
pub fn start_all_auto(root: &Path, monitor_exe: &Path) -> Result<Vec<(String, Result<u32>)>> {
    let mut auto: Vec<_> = {
        let b = Berth::open(root, false)?;
        let containers = b.store().containers()?;
        containers
            .into_iter()
            .filter(|c| c.run.autostart && !b.is_running(&c.name))
            .map(|c| (c.run.start_order.unwrap_or(0), c.name, c.run.start_delay))
            .collect()
    };
    auto.sort();
    let mut out = Vec::new();
    for (_, name, delay) in auto {
        let started = start(root, &name, &StartRequest::default(), monitor_exe);
        let ok = started.is_ok();
        out.push((name, started));
        if let (true, Some(d)) = (ok, delay) {
            std::thread::sleep(Duration::from_secs(d));
        }
    }
    Ok(out)
}

/// The monitor's readiness report on its stdout, sent once: `started PID` or
/// `error MESSAGE`. Afterwards stdout is /dev/null, so `berth start` sees EOF.
struct Report {
    sent: bool,
}

impl Report {
    fn send(&mut self, line: &str) {
        if std::mem::replace(&mut self.sent, true) {
            return;
        }
        let mut out = std::io::stdout();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            warn!(error = %e, "could not report to berth start");
        }
        match std::fs::File::open("/dev/null") {
            Ok(null) => {
                if let Err(e) = nix::unistd::dup2_stdout(&null) {
                    warn!(error = %e, "could not close the report pipe");
                }
            }
            Err(e) => warn!(error = %e, "open /dev/null"),
        }
    }
}

/// The monitor (`berth __monitor`): runs container `name` until it ends.
pub fn monitor(root: &Path, name: &str, json: &str) -> Result<Exit> {
    // Its own session: the terminal `berth start` ran in can go away.
    let _ = rustix::process::setsid();
    let mut report = Report { sent: false };
    let result = serde_json::from_str::<StartRequest>(json)
        .map_err(|e| BerthError::Invalid(format!("bad start request: {e}")))
        .and_then(|req| monitor_run(root, name, &req, &mut report));
    match &result {
        Ok(exit) => {
            report.send("error the container ended before its command ran");
            info!(name, %exit, "container ended");
        }
        Err(e) => report.send(&format!("error {}", one_line(&e.to_string()))),
    }
    result
}

fn one_line(s: &str) -> String {
    s.replace('\n', "; ")
}

fn monitor_run(root: &Path, name: &str, req: &StartRequest, report: &mut Report) -> Result<Exit> {
    let mounted = Berth::open(root, true)?.start_run(name)?;
    let started_at = now_secs();
    let mark = |detached: Detached| -> Result<()> {
        let b = Berth::open_locked(root)?;
        let mut s = b
            .store()
            .run_state(name)?
            .ok_or_else(|| BerthError::Invalid(format!("the run state of {name} vanished")))?;
        s.detached = Some(detached);
        b.store().save_run_state(name, &s)
    };
    let ran = (|| -> Result<ExitStatus> {
        let run_req = RunRequest {
            argv: command_of(
                &mounted.rootfs,
                &req.command,
                &mounted.container.run.init_cmd,
            ),
            env: req
                .env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            cwd: req.cwd.clone(),
            tty: req.tty,
            keep_pty: req.tty,
            overrides: req.overrides.clone(),
        };
        let writer = Arc::new(Mutex::new(LogWriter::open(
            log_file(root, name),
            logs::LogLimits::default(),
        )?));
        let pump = |fd: OwnedFd, stream: Stream| {
            let w = writer.clone();
            std::thread::spawn(move || logs::pump(fd, stream, w))
        };
        let (out_r, out_w) = pipe()?;
        let mut pumps = vec![pump(out_r, Stream::Stdout)];
        // With a pty, its one output stream reaches the log through the console.
        let (stdio, mut console_log) = match req.tty {
            true => (Stdio::default(), Some(out_w)),
            false => {
                let (err_r, err_w) = pipe()?;
                pumps.push(pump(err_r, Stream::Stderr));
                let stdio = Stdio {
                    stdin: None,
                    stdout: Some(out_w),
                    stderr: Some(err_w),
                };
                (stdio, None)
            }
        };
        let console = match req.tty {
            true => Some(Arc::new(Console::bind(root, name)?)),
            false => None,
        };
        let console_done = Arc::new(AtomicBool::new(false));
        let mut console_thread = None;
        let mut on_start = |s: Started| {
            if let (Some(c), Some(master), Some(log)) = (console.clone(), s.pty, console_log.take())
            {
                let done = console_done.clone();
                console_thread = Some(std::thread::spawn(move || c.serve(master, log, &done)));
            }
            let pid = u32::try_from(s.pid).unwrap_or(0);
            let recorded = mark(Detached {
                init: Some(pid),
                init_starttime: proc_starttime(pid),
                cgroup: s.cgroup.clone(),
                started: started_at,
            });
            match recorded {
                Ok(()) => report.send(&format!("started {pid}")),
                // Unrecorded, nothing could stop it: end it and say why.
                Err(e) => {
                    report.send(&format!(
                        "error could not record its init: {}",
                        one_line(&e.to_string())
                    ));
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(s.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        };
        let status = confined_run(root, &mounted, &run_req, stdio, &mut on_start);
        // The console drains what the container wrote last, then ends.
        console_done.store(true, Ordering::Relaxed);
        if let Some(t) = console_thread {
            if t.join().is_err() {
                warn!(name, "the console panicked");
            }
        }
        drop(console);
        drop(console_log);
        // The pipes' write ends went with the container and the console: the
        // pumps see EOF.
        for p in pumps {
            match p.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(name, error = %e, "writing the container's log failed"),
                Err(_) => warn!(name, "the log pump panicked"),
            }
        }
        status
    })();
    // Recorded before the cleanup, whose failure must not lose it; read back
    // by `wait` right after, so a reboot may lose it.
    let exit = ran.map(Exit::of).and_then(|exit| {
        let text = toml::to_string(&exit).map_err(|e| BerthError::Invalid(e.to_string()))?;
        berth_bdev::fsutil::replace_file(&exit_file(root, name), text.as_bytes())?;
        Ok(exit)
    });
    let finished = Berth::open_locked(root).and_then(|b| b.finish_run(mounted));
    let exit = exit?;
    finished?;
    Ok(exit)
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| BerthError::io("create a pipe", "")(e.into()))
}

/// The command a start runs: the one asked for, else the configured init, else
/// `/sbin/init` if the rootfs has one, else `/bin/sh`.
fn command_of(rootfs: &Path, asked: &[String], configured: &[String]) -> Vec<OsString> {
    let chosen: Vec<String> = if !asked.is_empty() {
        asked.to_vec()
    } else if !configured.is_empty() {
        configured.to_vec()
    } else if rootfs.join("sbin/init").exists() {
        vec!["/sbin/init".to_owned()]
    } else {
        vec!["/bin/sh".to_owned()]
    };
    chosen.into_iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_falls_back_to_init_then_sh() {
        let t = tempfile::tempdir().unwrap();
        let cmd = |asked: &[&str], conf: &[&str]| {
            let a: Vec<String> = asked.iter().map(|s| s.to_string()).collect();
            let c: Vec<String> = conf.iter().map(|s| s.to_string()).collect();
            command_of(t.path(), &a, &c)
        };
        assert_eq!(cmd(&[], &[]), vec![OsString::from("/bin/sh")]);
        std::fs::create_dir_all(t.path().join("sbin")).unwrap();
        std::fs::write(t.path().join("sbin/init"), "").unwrap();
        assert_eq!(cmd(&[], &[]), vec![OsString::from("/sbin/init")]);
        assert_eq!(
            cmd(&[], &["/x", "-y"]),
            vec![OsString::from("/x"), "-y".into()]
        );
        assert_eq!(cmd(&["/a"], &["/x"]), vec![OsString::from("/a")]);
    }

    #[test]
    fn exits_read_as_a_shell_would() {
        let e = Exit::of(ExitStatus::Signaled(9));
        assert_eq!(e.shell_code(), 137);
        assert_eq!(e.to_string(), "killed by signal 9");
        let e = Exit::of(ExitStatus::Exited(3));
        assert_eq!(e.shell_code(), 3);
        let back: Exit = toml::from_str(&toml::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn start_requests_cross_the_exec_intact() {
        let r = StartRequest {
            command: vec!["/bin/sh".into(), "-c".into(), "echo 'a b'".into()],
            env: vec![("K".into(), "v=w".into())],
            cwd: Some("/tmp".into()),
            overrides: vec![
                ("memory".into(), "64M".into()),
                ("net".into(), "bridge".into()),
            ],
            tty: true,
        };
        let back: StartRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
