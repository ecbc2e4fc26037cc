//! How a new process enters a container's cgroup without a migration's cost.
//!
//! Writing a pid to `cgroup.procs` write-locks the kernel's global
//! threadgroup rwsem, which waits for an RCU grace period: 5–8 ms here, the
//! larger part of a container start. Two ways in skip that lock:
//! - cgroup2: clone3(2) with `CLONE_INTO_CGROUP` creates the process inside
//!   its cgroup (Linux 5.7);
//! - cgroup v1: a single-threaded process that writes "0" (itself) to a
//!   hierarchy's `tasks` moves one thread, for which the kernel takes no
//!   threadgroup lock. A freshly cloned process is single-threaded.
//!
//! The files are opened here, by the parent, as host root: the child may be
//! in a new user namespace and has no path lookups to spare. Where clone3
//! cannot place it (an older kernel, or a seccomp filter around berth that
//! refuses clone3), the child writes "0" to cgroup2's `cgroup.procs` too.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use tracing::debug;

use super::CgroupError;
use crate::step::Step;
use crate::sys::Sys;

/// One hierarchy's directory of a cgroup, opened for a process to join it.
#[derive(Debug)]
struct JoinFile {
    dir: PathBuf,
    /// v1's `tasks` or cgroup2's `cgroup.procs`, write-only.
    file: OwnedFd,
    v2: bool,
}

/// A cgroup's directories, opened for a process about to be cloned into it.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The cgroup2 directory, for `CLONE_INTO_CGROUP`.
    v2_dir: Option<OwnedFd>,
    files: Vec<JoinFile>,
}

impl Entry {
    /// Opens `dirs` (one per hierarchy, as [`super::Cgroup::paths`] gives
    /// them); a directory with a `tasks` file is v1's, any other cgroup2's.
    /// No directories: an entry that joins nothing.
    pub(crate) fn open(dirs: &[PathBuf]) -> Result<Entry, CgroupError> {
        let mut entry = Entry::default();
        for dir in dirs {
            let tasks = dir.join("tasks");
            let v2 = !tasks.exists();
            let file = if v2 { dir.join("cgroup.procs") } else { tasks };
            entry.files.push(JoinFile {
                dir: dir.clone(),
                file: open(&file, OFlags::WRONLY)?,
                v2,
            });
            if v2 {
                entry.v2_dir = Some(open(dir, OFlags::PATH | OFlags::DIRECTORY)?);
            }
        }
        Ok(entry)
    }

    /// Clones `child` into the cgroup2 directory if there is one and the
    /// kernel can, else plainly; `child` is told whether it was, to skip
    /// that join.
    pub(crate) fn spawn(
        &self,
        sys: &dyn Sys,
        flags: CloneFlags,
        child: &mut dyn FnMut(bool) -> i32,
    ) -> Result<Pid, Errno> {
        if let Some(dir) = &self.v2_dir {
            match sys.spawn_into(flags, dir.as_fd(), &mut || child(true)) {
                // No clone3, no CLONE_INTO_CGROUP, or a filter that refuses
                // it: nothing was created, so clone plainly.
                Err(e @ (Errno::NOSYS | Errno::INVAL | Errno::TOOBIG | Errno::PERM)) => {
                    debug!(error = %e, "clone3 into the cgroup failed; the child joins by a write")
                }
                other => return other,
            }
        }
        sys.spawn(flags, &mut || child(false))
    }

    /// The child's steps that join each hierarchy, first thing after clone.
    pub(crate) fn steps(&self) -> impl Iterator<Item = Step<'_>> {
        self.files.iter().map(|j| Step::JoinCgroup {
            dir: &j.dir,
            file: j.file.as_fd(),
            v2: j.v2,
        })
    }
}

fn open(path: &Path, flags: OFlags) -> Result<OwnedFd, CgroupError> {
    rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty()).map_err(|e| CgroupError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })
}
