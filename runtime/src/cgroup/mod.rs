//! Per-container cgroups on cgroup v1, hybrid and pure v2 hosts.
//!
//! [`Cgroup::create`] makes `PARENT/NAME` (PARENT defaults to the caller's
//! cgroup + `/berth`) in every hierarchy berth uses: each v1 hierarchy carrying
//! cpu, cpuset, memory, pids, blkio, devices or freezer, and the cgroup2 one.
//! Mounts come from `/proc/self/mountinfo`, the caller's cgroups from
//! `/proc/self/cgroup`. A limit goes to its v1 controller if one is mounted,
//! else to v2, whose controllers are switched on in the ancestors'
//! `cgroup.subtree_control`. The device policy is `devices.allow` on v1 and a
//! BPF device program on v2.
//!
//! A process berth clones enters it through an [`Entry`] (`join`): born in
//! the cgroup2 directory, joining each v1 hierarchy by itself, without the
//! RCU grace period a pid written to `cgroup.procs` costs.
//!
//! [`Cgroup::kill_and_remove`] kills with v2's `cgroup.kill`, else freezes (v1
//! freezer or v2 `cgroup.freeze`) and SIGKILLs every member, then removes the
//! directories, retrying while the kernel still counts dying tasks.
//!
//! Planning (which directories, which files get which values) is pure over a
//! layout parsed from mountinfo text below any filesystem root,
//! so it is unit-tested on fake trees; the steps that write are in `ops`, and
//! the raw bpf(2) calls in `crate::sys::bpf`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use tracing::{debug, warn};

mod devices;
mod join;
mod layout;
mod ops;
mod parse;
mod plan;

pub(crate) use join::Entry;
use layout::{Layout, Version};
pub use parse::{parse_cpus, parse_size};
use plan::Place;

/// How often create makes the parent chain again after another berth
/// removed the parent under it.
const PARENT_RACE_TRIES: u32 = 20;

/// How long removal waits for dying tasks to leave a cgroup.
const REMOVE_WITHIN: Duration = Duration::from_secs(2);

/// Resource limits; `None` leaves the kernel's default (unlimited).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Memory in bytes; `u64::MAX` is unlimited.
    pub memory: Option<u64>,
    /// Memory + swap in bytes (Docker's `--memory-swap`), at least `memory`;
    /// `u64::MAX` is unlimited swap. Needs `memory` and swap accounting.
    /// `None` leaves swap as the kernel has it (unlike Docker, which then
    /// allows as much swap as memory).
    pub memory_swap: Option<u64>,
    /// Most tasks (processes and threads) at once.
    pub pids: Option<u64>,
    /// CPU time as a number of CPUs (0.5 = half of one), per 100 ms period.
    pub cpus: Option<f64>,
    /// CPUs the tasks may run on, a kernel cpu list like `0-2,4`.
    pub cpuset: Option<String>,
    /// Relative block io weight: 10–1000 on v1, 1–10000 on v2.
    pub io_weight: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupConfig {
    /// The container's name: the last path component, without `/`.
    pub name: String,
    /// The parent cgroup, absolute inside every hierarchy (e.g. `/berth`);
    /// `None` is the caller's cgroup + `/berth`, per hierarchy.
    pub parent: Option<PathBuf>,
    pub limits: Limits,
    /// Allow only null, zero, full, random, urandom, tty, console, ptmx and
    /// the pts slaves; deny every other device, block devices included.
    pub restrict_devices: bool,
}

/// Why a cgroup operation failed: the step, the file or directory, the cause.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("read {path:?}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cgroup {path:?} did not {} in time", if *.frozen { "freeze" } else { "thaw" })]
    Freeze { path: PathBuf, frozen: bool },

    #[error("the container's cgroup has no freezer (no v1 freezer hierarchy, no cgroup.freeze)")]
    NoFreezer,

    #[error("no cgroup hierarchy that shows this process's cgroup is mounted")]
    NoHierarchy,

    #[error("cgroup {cgroup:?} is outside what the cgroup mount at {mount:?} shows")]
    NotVisible { cgroup: PathBuf, mount: PathBuf },

    #[error("invalid container name {name:?} for a cgroup: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("invalid parent cgroup {parent:?}: it must be absolute, without . or ..")]
    InvalidParent { parent: PathBuf },

    #[error("invalid {what} {value:?}: {reason}")]
    InvalidLimit {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("the {controller} controller is not available: {reason}")]
    Unavailable {
        controller: &'static str,
        reason: String,
    },

    #[error("a memory+swap limit needs swap accounting, which is off here ({file:?} is missing)")]
    SwapAccountingOff { file: PathBuf },

    #[error(
        "no io weight file in {dir:?}: neither {files} exists (the bfq io scheduler provides one)"
    )]
    NoWeightFile { dir: PathBuf, files: &'static str },

    #[error("create cgroup {path:?}")]
    MakeDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cgroup {path:?} is in use: {count} processes are in it")]
    InUse { path: PathBuf, count: usize },

    #[error("write {value:?} to {file:?}")]
    Write {
        file: PathBuf,
        value: String,
        source: std::io::Error,
    },

    #[error("enable controllers {line:?} in {file:?} (a cgroup with processes cannot enable them for children: give a parent cgroup without processes)")]
    EnableControllers {
        file: PathBuf,
        line: String,
        source: std::io::Error,
    },

    #[error("open {path:?} to join the cgroup")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("add process {pid} to cgroup {path:?}")]
    AddProcess {
        pid: i32,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("kill process {pid} of cgroup {path:?}")]
    Kill {
        pid: i32,
        path: PathBuf,
        source: Errno,
    },

    #[error("remove cgroup {path:?}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("load the device filter program{log}")]
    LoadDeviceProgram { log: String, source: Errno },

    #[error("attach the device filter program to {path:?}")]
    AttachDeviceProgram { path: PathBuf, source: Errno },
}

impl CgroupError {
    /// The file or directory worked on was removed meanwhile: ENOENT, or
    /// ENODEV from an open file of a cgroup being removed.
    fn is_vanished(&self) -> bool {
        let source = match self {
            CgroupError::Read { source, .. }
            | CgroupError::Write { source, .. }
            | CgroupError::MakeDir { source, .. }
            | CgroupError::EnableControllers { source, .. } => source,
            _ => return false,
        };
        matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ENODEV))
    }
}

/// A container's cgroup: one directory per hierarchy, created by
/// [`Cgroup::create`]. Dropping it leaves the directories; remove them with
/// [`Cgroup::kill_and_remove`] (or [`kill_and_remove_stale`] after a crash).
#[derive(Debug)]
pub struct Cgroup {
    places: Vec<Place>,
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it is . or ..")
    } else if name.contains('/') || name.contains('\0') {
        Some("it contains / or NUL")
    } else if name.contains('\n') {
        Some("it contains a newline")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl Cgroup {
    /// Creates the container's cgroup in every hierarchy and applies limits
    /// and device policy. An empty leftover of the same name (from a crash) is
    /// replaced; one with processes in it is an [`CgroupError::InUse`] error.
    /// On failure, whatever was created is removed again.
    pub fn create(cfg: &CgroupConfig) -> Result<Cgroup, CgroupError> {
        Cgroup::create_in(&Layout::host()?, cfg)
    }

    fn create_in(layout: &Layout, cfg: &CgroupConfig) -> Result<Cgroup, CgroupError> {
        check_name(&cfg.name)?;
        let places = plan::places(layout, cfg.parent.as_deref(), &cfg.name)?;
        plan::validate(&places, &cfg.limits)?;
        let needed = plan::needed_v2(&places, &cfg.limits);
        // A leftover in use anywhere: refuse before touching any hierarchy.
        for p in &places {
            ops::check_unused(&p.dir)?;
        }
        let mut made = Cgroup { places: Vec::new() };
        let mut build = || -> Result<(), CgroupError> {
            for p in &places {
                // A berth that removes its empty parent at that moment takes
                // the parent from under us (and another may make it again
                // before we look): make the chain again. Once our directory
                // is in it, the parent stays.
                let mut tries = 0;
                loop {
                    let made_it =
                        ops::ensure_chain(p, &needed).and_then(|()| ops::make_fresh(&p.dir));
                    match made_it {
                        Err(e) if tries < PARENT_RACE_TRIES && e.is_vanished() => {
                            debug!(dir = ?p.parent, error = %e, "parent cgroup removed meanwhile; again");
                            tries += 1;
                        }
                        other => break other?,
                    }
                }
                made.places.push(p.clone());
            }
            let plan = plan::plan(&places, &cfg.limits, cfg.restrict_devices)?;
            for w in &plan.writes {
                ops::write_value(&w.file, &w.value)?;
            }
            if let Some(dir) = &plan.bpf {
                ops::attach_device_filter(dir)?;
            }
            Ok(())
        };
        match build() {
            Ok(()) => Ok(made),
            Err(e) => {
                made.undo();
                Err(e)
            }
        }
    }

    /// Removes the directories of a half-made cgroup (no process joined yet).
    fn undo(&self) {
        for p in self.places.iter().rev() {
            if let Err(e) = std::fs::remove_dir(&p.dir) {
                warn!(dir = ?p.dir, error = %e, "undo: remove cgroup");
            }
            ops::remove_parent_if_empty(p);
        }
    }

    /// Moves process `pid` (all its threads) into the cgroup, in every
    /// hierarchy, through `cgroup.procs`: for a process berth did not clone,
    /// and it may wait for an RCU grace period (see [`Entry`]).
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for p in &self.places {
            ops::add_process(&p.dir, pid)?;
        }
        Ok(())
    }

    /// The cgroup, opened for a process about to be cloned into it.
    pub(crate) fn entry(&self) -> Result<Entry, CgroupError> {
        Entry::open(&self.paths())
    }

    /// The cgroup's directories, one per hierarchy.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.places.iter().map(|p| p.dir.clone()).collect()
    }

    /// Kills every process in the cgroup and removes its directories, trying
    /// every step in every hierarchy; returns the first failure.
    pub fn kill_and_remove(self) -> Result<(), CgroupError> {
        let killed = self.kill_all();
        if let Err(e) = &killed {
            warn!(error = %e, "kill the cgroup's processes");
        }
        // `remove` warns of its own failures.
        let removed = self.remove();
        killed.and(removed)
    }

    /// Removes the directories, deepest hierarchy last; the first failure.
    fn remove(&self) -> Result<(), CgroupError> {
        let mut first = None;
        let deadline = Instant::now() + REMOVE_WITHIN;
        for p in self.places.iter().rev() {
            if let Err(e) = ops::remove_dir(&p.dir, deadline) {
                warn!(error = %e, "remove cgroup");
                first.get_or_insert(e);
            }
            ops::remove_parent_if_empty(p);
        }
        first.map_or(Ok(()), Err)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        // A directory already gone (removed by crash cleanup) holds nobody.
        let live: Vec<&Place> = self.places.iter().filter(|p| p.dir.is_dir()).collect();
        let v2 = live.iter().find(|p| p.version == Version::V2);
        let freezer = live
            .iter()
            .find(|p| p.version == Version::V1 && p.controllers.iter().any(|c| c == "freezer"));
        let first = match (v2, freezer) {
            (Some(p), _) if p.dir.join("cgroup.kill").exists() => {
                ops::write_value(&p.dir.join("cgroup.kill"), "1")
            }
            (_, Some(p)) => ops::freeze_and_kill(&p.dir, Version::V1),
            (Some(p), None) => ops::freeze_and_kill(&p.dir, Version::V2),
            (None, None) => Ok(()),
        };
        // Whatever was not caught above (a process added to one hierarchy only).
        let mut rest = Ok(());
        for p in &live {
            if let Err(e) = ops::kill_members(&p.dir) {
                rest = rest.and(Err(e));
            }
        }
        first.and(rest)
    }
}

/// How long a freeze or thaw may take to settle: a task in an uninterruptible
/// sleep (I/O) holds it up.
const FREEZE_WITHIN: Duration = Duration::from_secs(10);

/// Freezes (or thaws) a running container's cgroup, given its directories
/// (`Cgroup::paths`, as recorded), and waits until it has settled. One freezer
/// does it: the v1 freezer where there is one (on a hybrid host its frozen
/// tasks would keep a v2 freeze from ever settling), else v2's `cgroup.freeze`.
pub fn set_frozen(dirs: &[PathBuf], frozen: bool) -> Result<(), CgroupError> {
    let dir = freezer_of(dirs).ok_or(CgroupError::NoFreezer)?;
    ops::set_frozen(dir, frozen, FREEZE_WITHIN)?;
    Ok(())
}

/// Whether the container whose cgroup directories are `dirs` is frozen.
pub fn is_frozen(dirs: &[PathBuf]) -> bool {
    freezer_of(dirs).is_some_and(|d| ops::frozen(d) == Some(true))
}

fn freezer_of(dirs: &[PathBuf]) -> Option<&PathBuf> {
    dirs.iter()
        .find(|d| d.join("freezer.state").exists())
        .or_else(|| dirs.iter().find(|d| d.join("cgroup.freeze").exists()))
}

/// Crash cleanup, for a container whose berth is gone: removes `PARENT/NAME`
/// in every hierarchy, first killing whatever is still in it. Only that
/// container's processes join it, and one that outlived its berth (say, one
/// caught between its clone and asking to die with its parent) would
/// otherwise keep its cgroup, and run, for good. `Ok(true)` if there was
/// something to remove, `Ok(false)` if not.
pub fn kill_and_remove_stale(parent: Option<&Path>, name: &str) -> Result<bool, CgroupError> {
    kill_and_remove_stale_in(&Layout::host()?, parent, name)
}

fn kill_and_remove_stale_in(
    layout: &Layout,
    parent: Option<&Path>,
    name: &str,
) -> Result<bool, CgroupError> {
    check_name(name)?;
    let mut places = plan::places(layout, parent, name)?;
    places.retain(|p| p.dir.is_dir());
    if places.is_empty() {
        return Ok(false);
    }
    let stale = Cgroup { places };
    let left: usize = stale
        .places
        .iter()
        .map(|p| ops::members(&p.dir).map_or(0, |m| m.len()))
        .sum();
    if left > 0 {
        warn!(
            name,
            processes = left,
            "killing what is left in the cgroup of a container whose berth is gone"
        );
        stale.kill_and_remove()?;
    } else {
        stale.remove()?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use layout::tests::{HYBRID_CGROUP, HYBRID_MOUNTINFO};

    #[test]
    fn names_are_one_path_component() {
        for bad in ["", ".", "..", "a/b", "a\0b", "a\nb"] {
            let e = check_name(bad).unwrap_err();
            assert!(matches!(e, CgroupError::InvalidName { .. }), "{bad:?}");
        }
        assert!(check_name("web-1.x").is_ok());
    }

    fn fake_hybrid() -> (tempfile::TempDir, Layout) {
        let tmp = tempfile::tempdir().unwrap();
        let unified = tmp.path().join("sys/fs/cgroup/unified");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "").unwrap();
        let l = Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP, tmp.path()).unwrap();
        for h in &l.hierarchies {
            std::fs::create_dir_all(&h.mount).unwrap();
        }
        (tmp, l)
    }

    /// Killing what is left is checked on the real kernel (the cgroup
    /// checks): a fake tree's pids would be real processes.
    #[test]
    fn crash_cleanup_removes_empty_leftovers_in_every_hierarchy() {
        let (tmp, l) = fake_hybrid();
        assert!(
            !kill_and_remove_stale_in(&l, None, "c1").unwrap(),
            "nothing there"
        );
        let pids = tmp.path().join("sys/fs/cgroup/pids/berth/c1");
        let mem = tmp
            .path()
            .join("sys/fs/cgroup/memory/process_api/5863/berth/c1");
        std::fs::create_dir_all(&pids).unwrap();
        std::fs::create_dir_all(&mem).unwrap();
        assert!(kill_and_remove_stale_in(&l, None, "c1").unwrap());
        assert!(!pids.exists() && !mem.exists());
        assert!(
            !kill_and_remove_stale_in(&l, None, "c1").unwrap(),
            "gone already"
        );
    }

    #[test]
    fn bad_configs_fail_before_anything_is_made() {
        let (tmp, l) = fake_hybrid();
        let cfg = CgroupConfig {
            name: "c1".into(),
            limits: Limits {
                pids: Some(0),
                ..Limits::default()
            },
            ..CgroupConfig::default()
        };
        let e = Cgroup::create_in(&l, &cfg).unwrap_err();
        assert!(matches!(e, CgroupError::InvalidLimit { .. }), "{e}");
        assert!(!tmp.path().join("sys/fs/cgroup/pids/berth").exists());
        let cfg = CgroupConfig {
            name: "a/b".into(),
            ..CgroupConfig::default()
        };
        assert!(matches!(
            Cgroup::create_in(&l, &cfg),
            Err(CgroupError::InvalidName { .. })
        ));
    }

    #[test]
    fn a_failed_create_removes_what_it_made() {
        // The fake tree has no kernel files: the first limit write fails.
        let (tmp, l) = fake_hybrid();
        let cfg = CgroupConfig {
            name: "c1".into(),
            limits: Limits {
                pids: Some(5),
                ..Limits::default()
            },
            ..CgroupConfig::default()
        };
        let e = Cgroup::create_in(&l, &cfg).unwrap_err();
        assert!(
            matches!(e, CgroupError::Read { .. } | CgroupError::Write { .. }),
            "{e}"
        );
        assert!(
            !tmp.path().join("sys/fs/cgroup/cpu/berth").exists(),
            "berth's own parent goes once empty"
        );
        for p in plan::places(&l, None, "c1").unwrap() {
            assert!(!p.dir.exists(), "{:?} was removed", p.dir);
        }
    }
}
