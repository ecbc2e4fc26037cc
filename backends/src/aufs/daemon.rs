//! The unionfs-fuse daemon behind a mount: found by its command line, reaped by pid.
//!
//! `unionfs` daemonizes and has no pid file option, so right after it returns the
//! daemon is looked up in /proc: a process named `unionfs` whose last argument is
//! our mount point. Its start time is kept beside the pid, so a recycled pid is
//! never mistaken for it (and never killed).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_bdev::process::{self, Process};
use berth_bdev::{BdevError, Result};
use tracing::{debug, warn};

/// How long a daemon gets to exit on its own after the unmount, and after each signal.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// One unionfs process, identified by pid and start time.
pub type Daemon = Process;

/// Whether a NUL-separated command line is a unionfs whose mount point (its last
/// argument) is `at`, spelled exactly so or resolving to the same directory.
pub fn is_unionfs_for(cmdline: &[u8], at: &Path, at_canon: Option<&Path>) -> bool {
    let args: Vec<&[u8]> = cmdline
        .strip_suffix(b"\0")
        .unwrap_or(cmdline)
        .split(|b| *b == 0)
        .collect();
    let (Some(argv0), Some(last)) = (args.first(), args.last()) else {
        return false;
    };
    if args.len() < 3
        || Path::new(OsStr::from_bytes(argv0)).file_name() != Some(OsStr::new("unionfs"))
    {
        return false;
    }
    let last = Path::new(OsStr::from_bytes(last));
    last == at || (at_canon.is_some() && std::fs::canonicalize(last).ok().as_deref() == at_canon)
}

/// The branches a unionfs command line names (the argument before the mount
/// point, `DIR[=RW|=RO]:…`), each with whether it is writable.
pub fn branches(cmdline: &[u8]) -> Vec<(PathBuf, bool)> {
    let args: Vec<&[u8]> = cmdline
        .strip_suffix(b"\0")
        .unwrap_or(cmdline)
        .split(|b| *b == 0)
        .collect();
    let Some(list) = args.len().checked_sub(2).and_then(|i| args.get(i)) else {
        return Vec::new();
    };
    list.split(|b| *b == b':')
        .filter(|b| !b.is_empty())
        .map(|b| {
            let (dir, rw) = match b.strip_suffix(b"=RW") {
                Some(d) => (d, true),
                None => (b.strip_suffix(b"=RO").unwrap_or(b), false),
            };
            (PathBuf::from(OsStr::from_bytes(dir)), rw)
        })
        .collect()
}

/// A live unionfs daemon using `dir` as a branch (only as its writable one, if
/// asked), as its pid.
pub fn using(dir: &Path, writable_only: bool) -> Option<i32> {
    process::pids().into_iter().find(|pid| {
        let Some(c) = process::cmdline(*pid) else {
            return false;
        };
        let named_unionfs = c.split(|b| *b == 0).next().is_some_and(|a0| {
            Path::new(OsStr::from_bytes(a0)).file_name() == Some(OsStr::new("unionfs"))
        });
        named_unionfs
            && branches(&c)
                .iter()
                .any(|(b, rw)| b == dir && (*rw || !writable_only))
            && Process::of(*pid).is_some()
            && still_serving(*pid, &c)
    })
}

/// Whether daemon `pid` still has its mount. One whose mount is gone (unmounted
/// by the cleanup after a crash) is on its way out: it is reaped here, so that
/// it no longer holds its branches.
fn still_serving(pid: i32, cmdline: &[u8]) -> bool {
    let args: Vec<&[u8]> = cmdline
        .strip_suffix(b"\0")
        .unwrap_or(cmdline)
        .split(|b| *b == 0)
        .collect();
    let Some(at) = args.last().map(|a| Path::new(OsStr::from_bytes(a))) else {
        return true;
    };
    if berth_bdev::mount::is_mountpoint(at) {
        return true;
    }
    match Process::of(pid) {
        Some(d) => reap(&d, at).is_err(),
        None => false,
    }
}

/// The live unionfs daemons serving `at`, oldest first.
pub fn find(at: &Path) -> Vec<Daemon> {
    let at_canon = std::fs::canonicalize(at).ok();
    let mut found: Vec<Daemon> = process::pids()
        .into_iter()
        .filter(|pid| {
            process::cmdline(*pid).is_some_and(|c| is_unionfs_for(&c, at, at_canon.as_deref()))
        })
        .filter_map(Process::of)
        .collect();
    found.sort_by_key(|d| d.starttime);
    found
}

/// After the unmount: waits for the daemon to exit on its own, then stops it
/// (SIGTERM, then SIGKILL), by pid only.
pub fn reap(d: &Daemon, at: &Path) -> Result<()> {
    if d.wait_exit(EXIT_WAIT) {
        debug!(pid = d.pid, "unionfs exited");
        return Ok(());
    }
    warn!(pid = d.pid, at = %at.display(), "unionfs outlived its unmount; stopping it");
    d.stop(EXIT_WAIT).map(drop).map_err(|source| BdevError::Io {
        op: "stop the unionfs daemon of",
        path: PathBuf::from(at),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdlines_match_only_our_mount_point() {
        let at = Path::new("/var/tmp/t/mnt-1");
        let ours = b"unionfs\0-o\0cow,allow_other\0/p/c/upper=RW:/p/c/lower=RO\0/var/tmp/t/mnt-1\0";
        assert!(is_unionfs_for(ours, at, None));
        let full_path = b"/usr/bin/unionfs\0-o\0cow\0/u=RW:/l=RO\0/var/tmp/t/mnt-1\0";
        assert!(is_unionfs_for(full_path, at, None));
        let other_mnt = b"unionfs\0-o\0cow\0/u=RW:/l=RO\0/var/tmp/t/mnt-10\0";
        assert!(!is_unionfs_for(other_mnt, at, None));
        let other_prog = b"sleep\0-o\0x\0/var/tmp/t/mnt-1\0";
        assert!(!is_unionfs_for(other_prog, at, None));
        assert!(!is_unionfs_for(b"", at, None));
        assert!(!is_unionfs_for(b"unionfs\0/var/tmp/t/mnt-1\0", at, None));
    }

    #[test]
    fn branch_arguments_are_split_with_their_modes() {
        let c = b"unionfs\0-o\0cow\0/p/c/upper=RW:/p/o/upper=RO:/p/o/lower\0/mnt\0";
        assert_eq!(
            branches(c),
            vec![
                (PathBuf::from("/p/c/upper"), true),
                (PathBuf::from("/p/o/upper"), false),
                (PathBuf::from("/p/o/lower"), false),
            ]
        );
        assert!(branches(b"unionfs\0").is_empty());
    }
}
