//! The one way berth mounts: the new mount API (`fsopen`/`fsconfig`/`fsmount`/
//! `move_mount`). Unlike mount(2), whose option string is cut at one page, each
//! option is its own `fsconfig` call, so a 100-layer overlay `lowerdir+` chain fits.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::CWD;
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, mount_remount,
    move_mount, open_tree, unmount as umount2, FsMountFlags, FsOpenFlags, MountAttrFlags,
    MountFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use tracing::{debug, warn};

use crate::error::BdevError;
use crate::revert::Revert;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{fstype} filesystem is not available (is the module loaded?)")]
    Filesystem { fstype: String, source: Errno },

    #[error("set {fstype} mount option {key}={value:?}{}", log_suffix(.log))]
    Option {
        fstype: String,
        key: String,
        value: String,
        source: Errno,
        log: String,
    },

    #[error("mount {fstype} from {source_dev:?} on {target:?}{}", log_suffix(.log))]
    Create {
        fstype: String,
        source_dev: String,
        target: PathBuf,
        source: Errno,
        log: String,
    },

    #[error("bind mount {src:?} on {dst:?}")]
    Bind {
        src: PathBuf,
        dst: PathBuf,
        source: Errno,
    },

    #[error("unmount {target:?}")]
    Unmount { target: PathBuf, source: Errno },
}

fn log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (kernel says: {log})")
    }
}

/// One `fsconfig` call.
#[derive(Debug, Clone, Copy)]
pub enum FsOpt<'a> {
    Flag(&'a str),
    Str(&'a str, &'a OsStr),
}

impl<'a> FsOpt<'a> {
    pub fn s(key: &'a str, value: &'a (impl AsRef<OsStr> + ?Sized)) -> Self {
        FsOpt::Str(key, value.as_ref())
    }
}

/// Reads the messages the kernel left on a filesystem context (why a mount failed).
fn context_log(fd: &OwnedFd) -> String {
    let mut msgs = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        msgs.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        if msgs.len() > 16 {
            break;
        }
    }
    msgs.join("; ")
}

/// Mounts a new `fstype` filesystem on `target`.
///
/// `source` is the device or a label such as `"none"`; `opts` are applied in order.
pub fn mount_fs(
    fstype: &str,
    source: &OsStr,
    target: &Path,
    opts: &[FsOpt<'_>],
    read_only: bool,
) -> Result<(), MountError> {
    debug!(fstype, source = ?source, target = %target.display(), nopts = opts.len(), "mount");
    let fs =
        fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|source| MountError::Filesystem {
            fstype: fstype.to_owned(),
            source,
        })?;
    let opt_err = |key: &str, value: &OsStr, source: Errno, fs: &OwnedFd| MountError::Option {
        fstype: fstype.to_owned(),
        key: key.to_owned(),
        value: value.to_string_lossy().into_owned(),
        source,
        log: context_log(fs),
    };
    if !source.is_empty() {
        fsconfig_set_string(fs.as_fd(), "source", source)
            .map_err(|e| opt_err("source", source, e, &fs))?;
    }
    for opt in opts {
        match *opt {
            FsOpt::Flag(key) => fsconfig_set_flag(fs.as_fd(), key)
                .map_err(|e| opt_err(key, OsStr::new(""), e, &fs))?,
            FsOpt::Str(key, value) => fsconfig_set_string(fs.as_fd(), key, value)
                .map_err(|e| opt_err(key, value, e, &fs))?,
        }
    }
    if read_only {
        fsconfig_set_flag(fs.as_fd(), "ro").map_err(|e| opt_err("ro", OsStr::new(""), e, &fs))?;
    }
    let create_err = |e: Errno, fs: &OwnedFd| MountError::Create {
        fstype: fstype.to_owned(),
        source_dev: source.to_string_lossy().into_owned(),
        target: target.to_path_buf(),
        source: e,
        log: context_log(fs),
    };
    fsconfig_create(fs.as_fd()).map_err(|e| create_err(e, &fs))?;
    let attrs = if read_only {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| create_err(e, &fs))?;
    move_mount(
        mnt.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| create_err(e, &fs))
}

/// Bind-mounts `src` (recursively) on `dst`, read-only if asked.
pub fn bind(src: &Path, dst: &Path, read_only: bool) -> Result<(), MountError> {
    debug!(src = %src.display(), dst = %dst.display(), read_only, "bind mount");
    let err = |source| MountError::Bind {
        src: src.to_path_buf(),
        dst: dst.to_path_buf(),
        source,
    };
    let tree = open_tree(
        CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(err)?;
    move_mount(
        tree.as_fd(),
        "",
        CWD,
        dst,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(err)?;
    if read_only {
        // A bind mount inherits the source's flags; read-only needs a remount.
        if let Err(e) = mount_remount(dst, MountFlags::BIND | MountFlags::RDONLY, "") {
            let _ = unmount_detach(dst);
            return Err(err(e));
        }
    }
    Ok(())
}

/// Unmounts `target`, retrying briefly while it is busy (a process may just be
/// exiting); a target that is not mounted is not an error.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    let mut delay = Duration::from_millis(10);
    loop {
        match umount2(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => {
                debug!(target = %target.display(), "unmounted");
                return Ok(());
            }
            Err(Errno::INVAL) if !is_mountpoint(target) => return Ok(()),
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::BUSY) if delay < Duration::from_secs(2) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(source) => {
                return Err(MountError::Unmount {
                    target: target.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Last resort for cleanup paths: detach the mount lazily.
pub fn unmount_detach(target: &Path) -> Result<(), MountError> {
    match umount2(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::INVAL) if !is_mountpoint(target) => Ok(()),
        Err(source) => Err(MountError::Unmount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text (pure, for tests).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountInfo {
                mount_point: PathBuf::from(unescape_octal(fields.get(4)?)),
                fstype: (*fields.get(sep + 1)?).to_owned(),
                source: unescape_octal(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// The current mount table of this process's mount namespace.
pub fn mounts() -> Vec<MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Whether something is mounted exactly at `path`.
pub fn is_mountpoint(path: &Path) -> bool {
    let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts().iter().any(|m| m.mount_point == p)
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let d = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(&d))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// A mounted volume. Dropping it unmounts and then runs the backend's teardown
/// steps (stop a FUSE daemon, remove an export) in reverse order, best effort.
/// `release` is the checked path; `persist` leaves everything in place.
#[must_use = "dropping a MountGuard unmounts the volume"]
pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
    teardown: Revert,
}

impl std::fmt::Debug for MountGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountGuard")
            .field("target", &self.target)
            .field("mounted", &self.mounted)
            .field("teardown", &self.teardown)
            .finish()
    }
}

impl MountGuard {
    /// Guards a mount that now exists at `target`.
    pub fn mounted(target: &Path) -> Self {
        MountGuard {
            target: target.to_path_buf(),
            mounted: true,
            teardown: Revert::new(),
        }
    }

    /// Guards only teardown steps (a step failed before anything was mounted at
    /// `target`, or the backend mounts through its own tool).
    pub fn unmounted(target: &Path) -> Self {
        MountGuard {
            target: target.to_path_buf(),
            mounted: false,
            teardown: Revert::new(),
        }
    }

    /// Marks `target` as mounted from now on.
    pub fn set_mounted(&mut self) {
        self.mounted = true;
    }

    /// Adds a step that runs after the unmount (steps run last-added first).
    pub fn on_release(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce() -> Result<(), BdevError> + Send + 'static,
    ) {
        self.teardown.add(what, f);
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts and tears down, reporting the first failure (all steps still run).
    pub fn release(mut self) -> Result<(), BdevError> {
        self.release_inner()
    }

    /// Leaves the mount and its helpers in place (e.g. `berth mount`).
    pub fn persist(mut self) -> PathBuf {
        self.mounted = false;
        std::mem::take(&mut self.teardown).commit();
        std::mem::take(&mut self.target)
    }

    fn release_inner(&mut self) -> Result<(), BdevError> {
        let mut first: Option<BdevError> = None;
        if self.mounted {
            self.mounted = false;
            if let Err(e) = unmount(&self.target) {
                warn!(target = %self.target.display(), error = %e, "unmount failed; detaching lazily");
                let _ = unmount_detach(&self.target);
                first = Some(e.into());
            }
        }
        if let Err((step, reason)) = std::mem::take(&mut self.teardown).run_now() {
            first.get_or_insert(BdevError::Teardown { step, reason });
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = self.release_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_parsed_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 36 0:5 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!(m[1].fstype, "proc");
    }
}
