//! The steps that touch the cgroup filesystem and the member processes:
//! each checks its result and names the file it worked on.

use std::io::{ErrorKind, Write as _};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{kill_process, Pid, Signal};
use tracing::{debug, warn};

use super::layout::Version;
use super::plan::{self, Place};
use super::{devices, CgroupError, REMOVE_WITHIN};
use crate::sys::bpf;

/// Writes `value` to existing file `file` in one write(2): the kernel takes a
/// cgroup file's value whole or not at all.
fn write_once(file: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(file)?;
    let n = f.write(value.as_bytes())?;
    if n != value.len() {
        return Err(std::io::Error::from(ErrorKind::WriteZero));
    }
    Ok(())
}

/// Writes `value` to cgroup file `file`.
pub(super) fn write_value(file: &Path, value: &str) -> Result<(), CgroupError> {
    debug!(?file, value, "cgroup write");
    write_once(file, value).map_err(|source| CgroupError::Write {
        file: file.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

fn read(file: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(file).map_err(|source| CgroupError::Read {
        path: file.to_path_buf(),
        source,
    })
}

/// The processes in cgroup `dir` (`cgroup.procs`; none if it has no such file).
pub(super) fn members(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let file = dir.join("cgroup.procs");
    match std::fs::read_to_string(&file) {
        // Processes of other pid namespaces show as 0: never a kill target.
        Ok(t) => Ok(t
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p > 0)
            .collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read { path: file, source }),
    }
}

pub(super) fn add_process(dir: &Path, pid: i32) -> Result<(), CgroupError> {
    write_once(&dir.join("cgroup.procs"), &pid.to_string()).map_err(|source| {
        CgroupError::AddProcess {
            pid,
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// Fails with [`CgroupError::InUse`] if `dir` exists with processes in it.
pub(super) fn check_unused(dir: &Path) -> Result<(), CgroupError> {
    let count = members(dir)?.len();
    if count > 0 {
        return Err(CgroupError::InUse {
            path: dir.to_path_buf(),
            count,
        });
    }
    Ok(())
}

/// Turns on `needed` in `dir`'s `cgroup.subtree_control` (v2).
fn enable(dir: &Path, needed: &[&'static str]) -> Result<(), CgroupError> {
    if needed.is_empty() {
        return Ok(());
    }
    let available = read(&dir.join("cgroup.controllers"))?;
    let file = dir.join("cgroup.subtree_control");
    let enabled = read(&file)?;
    match plan::enable_line(&available, &enabled, needed) {
        Err(controller) => Err(CgroupError::Unavailable {
            controller,
            reason: format!("{dir:?} does not offer it"),
        }),
        Ok(None) => Ok(()),
        Ok(Some(line)) => {
            debug!(?file, line, "enable controllers");
            write_once(&file, &line).map_err(|source| CgroupError::EnableControllers {
                file,
                line,
                source,
            })
        }
    }
}

/// Makes the directories from the hierarchy's top down to `p.parent`: v1
/// cpuset ones get their parent's cpus and mems, v2 ones the `needed`
/// controllers for their children.
pub(super) fn ensure_chain(p: &Place, needed: &[&'static str]) -> Result<(), CgroupError> {
    let cpuset_v1 = p.version == Version::V1 && p.has("cpuset");
    let v2 = p.version == Version::V2;
    let mut cur = p.top.clone();
    if v2 {
        enable(&cur, needed)?;
    }
    let rel = p.parent.strip_prefix(&p.top).unwrap_or(Path::new(""));
    for c in rel.components() {
        let next = cur.join(c);
        match std::fs::create_dir(&next) {
            Ok(()) => debug!(dir = ?next, "created parent cgroup"),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::MakeDir { path: next, source }),
        }
        if cpuset_v1 {
            for w in plan::cpuset_fill(&cur, &next, None)? {
                write_value(&w.file, &w.value)?;
            }
        }
        if v2 {
            enable(&next, needed)?;
        }
        cur = next;
    }
    Ok(())
}

/// Creates cgroup `dir`; an empty leftover is removed and made afresh (so no
/// stale limit or device program survives), a busy one is an error.
pub(super) fn make_fresh(dir: &Path) -> Result<(), CgroupError> {
    let mk = || {
        std::fs::create_dir(dir).map_err(|source| CgroupError::MakeDir {
            path: dir.to_path_buf(),
            source,
        })
    };
    match mk() {
        Err(CgroupError::MakeDir { source, .. }) if source.kind() == ErrorKind::AlreadyExists => {
            check_unused(dir)?;
            debug!(?dir, "replacing an empty leftover cgroup");
            remove_dir(dir, Instant::now() + REMOVE_WITHIN)?;
            mk()
        }
        other => other,
    }
}

/// SIGKILLs every process listed in `dir`.
pub(super) fn kill_members(dir: &Path) -> Result<(), CgroupError> {
    let mut result = Ok(());
    for pid in members(dir)? {
        let Some(p) = Pid::from_raw(pid) else {
            continue;
        };
        match kill_process(p, Signal::KILL) {
            Ok(()) | Err(Errno::SRCH) => {}
            Err(source) => {
                if result.is_ok() {
                    result = Err(CgroupError::Kill {
                        pid,
                        path: dir.to_path_buf(),
                        source,
                    });
                }
            }
        }
    }
    result
}

/// Freezes `dir` (so nothing forks), SIGKILLs its members and thaws it so
/// they can die: v1 freezer.state, or v2 cgroup.freeze on kernels without
/// cgroup.kill.
pub(super) fn freeze_and_kill(dir: &Path, version: Version) -> Result<(), CgroupError> {
    let (file, freeze, thaw, state, frozen) = match version {
        Version::V1 => (
            "freezer.state",
            "FROZEN",
            "THAWED",
            "freezer.state",
            "FROZEN",
        ),
        Version::V2 => ("cgroup.freeze", "1", "0", "cgroup.events", "frozen 1"),
    };
    write_value(&dir.join(file), freeze)?;
    let until = Instant::now() + Duration::from_secs(1);
    while !read(&dir.join(state))?.contains(frozen) {
        if Instant::now() > until {
            warn!(?dir, "cgroup did not freeze within 1 s; killing anyway");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = kill_members(dir);
    write_value(&dir.join(file), thaw)?;
    killed
}

/// Removes cgroup `dir`, retrying on EBUSY (tasks still dying, re-killed
/// each round) until `deadline`. A missing directory is fine.
pub(super) fn remove_dir(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                let _ = kill_members(dir);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Removes berth's own parent directory once no container's cgroup is in it;
/// another container's (ENOTEMPTY, EBUSY) or a concurrent removal is fine.
pub(super) fn remove_parent_if_empty(p: &Place) {
    if !p.owned_parent {
        return;
    }
    if let Err(e) = std::fs::remove_dir(&p.parent) {
        let benign = e.kind() == ErrorKind::NotFound
            || matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EBUSY));
        if !benign {
            warn!(dir = ?p.parent, error = %e, "remove berth's parent cgroup");
        }
    }
}

/// Loads the device program and attaches it to cgroup v2 directory `dir`.
pub(super) fn attach_device_filter(dir: &Path) -> Result<(), CgroupError> {
    let prog = devices::program(&devices::ALLOWED);
    // The program calls no helper, so the kernel accepts any license.
    let license = c"Apache-2.0";
    let load = |log| {
        bpf::prog_load(
            bpf::PROG_TYPE_CGROUP_DEVICE,
            &prog,
            license,
            "berth_devices",
            log,
        )
    };
    let fd = match load(None) {
        Ok(fd) => fd,
        Err(_) => {
            // Again with the verifier's report, for the error.
            let mut buf = vec![0u8; 64 << 10];
            match load(Some(&mut buf)) {
                Ok(fd) => fd,
                Err(source) => {
                    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
                    let text = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
                    let log = if text.is_empty() {
                        String::new()
                    } else {
                        format!("; verifier log: {text}")
                    };
                    return Err(CgroupError::LoadDeviceProgram { log, source });
                }
            }
        }
    };
    let attach_err = |source| CgroupError::AttachDeviceProgram {
        path: dir.to_path_buf(),
        source,
    };
    let cg = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(attach_err)?;
    bpf::prog_attach(
        cg.as_fd(),
        fd.as_fd(),
        bpf::ATTACH_CGROUP_DEVICE,
        bpf::F_ALLOW_MULTI,
    )
    .map_err(attach_err)?;
    debug!(?dir, "device program attached");
    Ok(())
}

/// The freezer files of cgroup `dir`: what to write to freeze and thaw, and
/// where the settled state shows. `None` if `dir` has no freezer.
fn freezer(
    dir: &Path,
) -> Option<(
    std::path::PathBuf,
    std::path::PathBuf,
    &'static str,
    &'static str,
    &'static str,
)> {
    if dir.join("freezer.state").exists() {
        let f = dir.join("freezer.state");
        return Some((f.clone(), f, "FROZEN", "THAWED", "FROZEN"));
    }
    if dir.join("cgroup.freeze").exists() {
        return Some((
            dir.join("cgroup.freeze"),
            dir.join("cgroup.events"),
            "1",
            "0",
            "frozen 1",
        ));
    }
    None
}

/// Freezes (or thaws) cgroup `dir` and waits, up to `limit`, until the kernel
/// reports it settled. `Ok(false)` if `dir` has no freezer.
pub(super) fn set_frozen(dir: &Path, frozen: bool, limit: Duration) -> Result<bool, CgroupError> {
    let Some((file, state, freeze, thaw, settled)) = freezer(dir) else {
        return Ok(false);
    };
    write_value(&file, if frozen { freeze } else { thaw })?;
    let until = Instant::now() + limit;
    while read(&state)?.contains(settled) != frozen {
        if Instant::now() > until {
            return Err(CgroupError::Freeze {
                path: dir.to_path_buf(),
                frozen,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(true)
}

/// Whether cgroup `dir` is frozen; `None` if it has no freezer.
pub(super) fn frozen(dir: &Path) -> Option<bool> {
    let (_, state, _, _, settled) = freezer(dir)?;
    read(&state).ok().map(|s| s.contains(settled))
}
