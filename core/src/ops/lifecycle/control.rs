//! Acting on a running detached container: stop, kill, wait, freeze, exec,
//! and what `berth info` says about its runs.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_bdev::process::Process;
use berth_runtime::ExitStatus;
use nix::sys::signal::Signal;
use serde::Serialize;
use tracing::{info, warn};

use super::{exit_file, last_request, log_file, now_secs, Exit};
use crate::error::{BerthError, Result};
use crate::ops::Berth;
use crate::store::Detached;

/// What `berth stop` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The signal that asked init to stop.
    pub asked_with: i32,
    /// It did not stop in time and was killed.
    pub killed: bool,
    pub exit: Option<Exit>,
}

impl Berth {
    /// The detached container `name` while it runs: its monitor and init.
    fn detached(&self, name: &str) -> Result<(Process, Detached)> {
        self.store().container(name)?;
        let not_running = || BerthError::Invalid(format!("container {name:?} is not running"));
        let s = self.store().run_state(name)?.ok_or_else(not_running)?;
        let d = s.detached.clone().ok_or_else(|| {
            BerthError::Invalid(format!(
                "container {name:?} is still starting, or runs in the foreground (`berth run`) rather than detached"
            ))
        })?;
        let monitor = match (s.pid.and_then(|p| i32::try_from(p).ok()), s.starttime) {
            (Some(pid), Some(starttime)) => Process { pid, starttime },
            _ => return Err(not_running()),
        };
        if !monitor.alive() {
            return Err(not_running());
        }
        Ok((monitor, d))
    }

    /// `berth kill NAME SIGNAL`: sends `signal` to the container's init.
    pub fn kill(&self, name: &str, signal: Signal) -> Result<()> {
        let (_, d) = self.detached(name)?;
        let init = d
            .init_process()
            .ok_or_else(|| BerthError::Invalid(format!("container {name:?} has no init yet")))?;
        send(&init, signal)
    }

    /// `berth freeze` / `berth unfreeze`.
    pub fn set_frozen(&self, name: &str, frozen: bool) -> Result<()> {
        let (_, d) = self.detached(name)?;
        berth_runtime::cgroup::set_frozen(&d.cgroup, frozen)
            .map_err(|source| BerthError::Runtime(berth_runtime::RuntimeError::Cgroup { source }))
    }

    /// The cgroup and mounted rootfs of `name` if it runs detached.
    pub(crate) fn running_detached(&self, name: &str) -> Result<Option<Running>> {
        Ok(match self.store().run_state(name)? {
            Some(s) if s.process_alive() => s.detached.map(|d| Running {
                name: name.to_owned(),
                cgroup: d.cgroup,
                rootfs: s.mountpoint,
            }),
            _ => None,
        })
    }

    /// Whether the detached container `name` runs (its monitor is alive).
    pub fn is_running(&self, name: &str) -> bool {
        self.detached(name).is_ok()
    }

    /// Whether the detached container `name` is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        match self.detached(name) {
            Ok((_, d)) => berth_runtime::cgroup::is_frozen(&d.cgroup),
            Err(_) => false,
        }
    }
}

/// What `berth exec` runs in a detached container.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub argv: Vec<OsString>,
    /// Added to the default environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// uid and gid inside the container (default root).
    pub user: Option<(u32, u32)>,
    pub tty: bool,
}

/// `berth exec`: runs `req` inside the running detached container `name`, in
/// all its namespaces and its cgroup, with its capabilities, seccomp filter
/// and no_new_privs. Returns the command's exit status.
pub fn exec(root: &Path, name: &str, req: &ExecRequest) -> Result<ExitStatus> {
    let spec = {
        let b = Berth::open(root, false)?;
        let (_, d) = b.detached(name)?;
        if berth_runtime::cgroup::is_frozen(&d.cgroup) {
            return Err(BerthError::Busy {
                name: name.to_owned(),
                state: "frozen",
                hint: "`berth unfreeze` it first",
            });
        }
        let init = d
            .init_process()
            .ok_or_else(|| BerthError::Invalid(format!("container {name:?} has no init yet")))?;
        // The confinement its init got: the config, with this start's overrides.
        let mut cfg = b.store().container(name)?.run;
        for (k, v) in last_request(root, name)
            .map(|r| r.overrides)
            .unwrap_or_default()
        {
            cfg.set(&k, &v)?;
        }
        let mut spec = berth_runtime::EnterSpec::new(init.pid, req.argv.clone());
        spec.env.extend(req.env.iter().cloned());
        if let Some(cwd) = &req.cwd {
            spec.cwd = cwd.clone();
        }
        spec.user = req.user;
        spec.tty = req.tty;
        spec.security = cfg.security()?;
        spec.security.seccomp_cache = Some(crate::confine::seccomp_cache(root));
        spec.cgroup = d.cgroup;
        spec
    };
    Ok(berth_runtime::enter(&spec, &berth_runtime::LinuxSys)?)
}

/// What `berth info` shows about a container's detached runs.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// "running", "frozen" or "stopped".
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cgroup: Vec<PathBuf>,
    /// The output log, once it has run detached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<Exit>,
}

impl Berth {
    pub fn run_info(&self, name: &str) -> Result<RunInfo> {
        let root = self.store().root();
        let log = log_file(root, name);
        let mut info = RunInfo {
            state: "stopped",
            pid: None,
            uptime_secs: None,
            cgroup: Vec::new(),
            log: log.exists().then_some(log),
            last_exit: last_exit(root, name)?,
        };
        if let Ok((_, d)) = self.detached(name) {
            info.state = if berth_runtime::cgroup::is_frozen(&d.cgroup) {
                "frozen"
            } else {
                "running"
            };
            info.pid = d.init;
            info.uptime_secs = Some(now_secs().saturating_sub(d.started));
            info.cgroup = d.cgroup;
            info.last_exit = None;
        }
        Ok(info)
    }
}

/// A detached container that runs, as a clone of it needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    name: String,
    cgroup: Vec<PathBuf>,
    rootfs: PathBuf,
}

/// A running container held frozen, with its filesystem synced, until dropped.
pub(crate) struct Frozen {
    running: Running,
    since: Instant,
}

impl Frozen {
    pub(crate) fn new(r: &Running) -> Result<Frozen> {
        let since = Instant::now();
        berth_runtime::cgroup::set_frozen(&r.cgroup, true).map_err(|source| {
            BerthError::Runtime(berth_runtime::RuntimeError::Cgroup { source })
        })?;
        let frozen = Frozen {
            running: r.clone(),
            since,
        };
        // What it wrote must be on disk before a snapshot of the volume.
        let dir = std::fs::File::open(&r.rootfs).map_err(BerthError::io("open", &r.rootfs))?;
        rustix::fs::syncfs(&dir).map_err(|e| BerthError::io("sync", &r.rootfs)(e.into()))?;
        Ok(frozen)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let r = &self.running;
        match berth_runtime::cgroup::set_frozen(&r.cgroup, false) {
            Ok(()) => info!(
                name = %r.name,
                frozen_ms = self.since.elapsed().as_secs_f64() * 1e3,
                "thawed after the clone"
            ),
            Err(e) => warn!(name = %r.name, error = %e, "could not thaw; `berth unfreeze` it"),
        }
    }
}

fn send(p: &Process, signal: Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), signal)
        .map_err(|e| BerthError::io("signal", format!("/proc/{}", p.pid))(e.into()))
}

/// The signal that asks init to stop: SIGPWR for systemd or sysvinit (as LXC
/// sends), SIGTERM otherwise.
fn halt_signal(init: &Process) -> Signal {
    let exe = std::fs::read_link(format!("/proc/{}/exe", init.pid)).unwrap_or_default();
    match exe.file_name().and_then(OsStr::to_str) {
        Some("systemd" | "init") => Signal::SIGPWR,
        _ => Signal::SIGTERM,
    }
}

/// `berth stop NAME [-t SECS]`: asks init to stop, kills it after `timeout`,
/// and waits for the monitor to clean up. Opens the store itself: the monitor
/// needs it while this waits.
pub fn stop(root: &Path, name: &str, timeout: Duration) -> Result<Stopped> {
    let (monitor, d) = match Berth::open(root, false)?.detached(name) {
        Ok(found) => found,
        Err(e) => {
            // Whatever a monitor that died left (its init, cgroup, veth,
            // mounts) goes now, with the store's cleanup.
            drop(Berth::open(root, true));
            return Err(e);
        }
    };
    // A frozen container handles no signal.
    if berth_runtime::cgroup::is_frozen(&d.cgroup) {
        berth_runtime::cgroup::set_frozen(&d.cgroup, false).map_err(|source| {
            BerthError::Runtime(berth_runtime::RuntimeError::Cgroup { source })
        })?;
    }
    let mut stopped = Stopped {
        asked_with: Signal::SIGTERM as i32,
        killed: false,
        exit: None,
    };
    if let Some(init) = d.init_process() {
        let sig = halt_signal(&init);
        stopped.asked_with = sig as i32;
        send(&init, sig)?;
        if !monitor.wait_exit(timeout) {
            info!(name, "init did not stop in time; killing it");
            stopped.killed = true;
            if let Some(init) = d.init_process() {
                send(&init, Signal::SIGKILL)?;
            }
        }
    }
    if !monitor.wait_exit(Duration::from_secs(30)) {
        return Err(BerthError::Busy {
            name: name.to_owned(),
            state: "stopping",
            hint: "its monitor is still cleaning up; try again",
        });
    }
    stopped.exit = last_exit(root, name)?;
    Ok(stopped)
}

/// `berth wait NAME`: blocks until the detached container ends; its exit.
pub fn wait(root: &Path, name: &str) -> Result<Option<Exit>> {
    let monitor = match Berth::open(root, false)?.detached(name) {
        Ok((m, _)) => Some(m),
        Err(BerthError::Invalid(_)) => None,
        Err(e) => return Err(e),
    };
    if let Some(m) = monitor {
        while !m.wait_exit(Duration::from_secs(3600)) {}
    }
    last_exit(root, name)
}

/// How the container last ended, if a monitor recorded it.
pub fn last_exit(root: &Path, name: &str) -> Result<Option<Exit>> {
    let path = exit_file(root, name);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| BerthError::Corrupt {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BerthError::io("read", &path)(e)),
    }
}
