//! The unionfs-fuse daemon behind a mount: found by its command line, reaped by pid.
//!
//! `unionfs` daemonizes and has no pid file option, so right after it returns the
//! daemon is looked up in /proc: a process named `unionfs` whose last argument is
//! our mount point. Its start time is kept beside the pid, so a recycled pid is
//! never mistaken for it (and never killed).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_bdev::{BdevError, Result};
use rustix::process::{kill_process, Pid, Signal};
use tracing::{debug, warn};

/// How long a daemon gets to exit on its own after the unmount, and after each signal.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// One unionfs process, identified by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Daemon {
    pub pid: i32,
    start: u64,
}

/// What /proc/PID/stat says about a process: its state letter and start time.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name is parenthesised and may hold spaces or parentheses itself.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), starttime field 22.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

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
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let named_unionfs = c.split(|b| *b == 0).next().is_some_and(|a0| {
                Path::new(OsStr::from_bytes(a0)).file_name() == Some(OsStr::new("unionfs"))
            });
            named_unionfs
                && branches(&c)
                    .iter()
                    .any(|(b, rw)| b == dir && (*rw || !writable_only))
                && matches!(stat_of(*pid), Some((s, _)) if !matches!(s, 'Z' | 'X'))
        })
}

fn stat_of(pid: i32) -> Option<(char, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

/// The live unionfs daemons serving `at`, oldest first.
pub fn find(at: &Path) -> Vec<Daemon> {
    let at_canon = std::fs::canonicalize(at).ok();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Daemon> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| is_unionfs_for(&c, at, at_canon.as_deref()))
        })
        .filter_map(|pid| {
            let (state, start) = stat_of(pid)?;
            (!matches!(state, 'Z' | 'X')).then_some(Daemon { pid, start })
        })
        .collect();
    found.sort_by_key(|d| d.start);
    found
}

impl Daemon {
    /// Whether this very process (not a successor with its pid) still runs. A
    /// zombie has exited; whoever adopted it reaps it.
    pub fn alive(&self) -> bool {
        matches!(stat_of(self.pid), Some((state, start)) if start == self.start && !matches!(state, 'Z' | 'X'))
    }

    fn wait_exit(&self, limit: Duration) -> bool {
        let t = Instant::now();
        while self.alive() {
            if t.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// After the unmount: waits for the daemon to exit, then asks it to (SIGTERM),
    /// then makes it (SIGKILL), by pid only.
    pub fn reap(&self, at: &Path) -> Result<()> {
        if self.wait_exit(EXIT_WAIT) {
            debug!(pid = self.pid, "unionfs exited");
            return Ok(());
        }
        for sig in [Signal::TERM, Signal::KILL] {
            warn!(pid = self.pid, at = %at.display(), ?sig, "unionfs outlived its unmount; signalling it");
            if let Some(pid) = Pid::from_raw(self.pid) {
                if self.alive() {
                    let _ = kill_process(pid, sig);
                }
            }
            if self.wait_exit(EXIT_WAIT) {
                return Ok(());
            }
        }
        Err(BdevError::Io {
            op: "stop the unionfs daemon of",
            path: PathBuf::from(at),
            source: std::io::Error::other(format!("pid {} survived SIGKILL", self.pid)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_parsed_past_odd_names() {
        let line = "4242 (union fs) (x)) S 1 4242 4242 0 -1 4194368 96 0 0 0 0 0 0 0 20 0 3 0 987654 1000 10 \
                    18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        let zombie = "77 (unionfs) Z 1 77 77 0 -1 4227140 0 0 0 0 0 0 0 0 20 0 1 0 5550 0 0";
        assert_eq!(parse_stat(zombie), Some(('Z', 5550)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

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
