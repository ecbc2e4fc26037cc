//! Helper daemons (unionfs-fuse, qemu-storage-daemon, zfs-fuse) are identified by
//! pid *and* start time, so a recycled pid is never mistaken for them, and stopped
//! by pid, never by name.

use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{kill_process, pidfd_open, Pid, PidfdFlags, Signal};
use tracing::warn;

/// The fields of /proc/PID/stat that berth needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// R, S, D, Z (zombie), X (dead) …
    pub state: char,
    /// Clock ticks after boot at which the process started.
    pub starttime: u64,
}

impl ProcStat {
    /// A zombie has exited; only its parent has not reaped it yet.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses /proc/PID/stat text (pure, for tests).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name is parenthesised and may hold spaces or parentheses itself.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name come stat(5) fields 3 (state) onwards; starttime is field 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        starttime: fields.get(22 - 3)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The NUL-separated command line of `pid`.
pub fn cmdline(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// Every pid in /proc.
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `f` every 10 ms until it holds or `limit` has passed.
pub fn wait_until(limit: Duration, f: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    // Short naps first: most waits end within milliseconds.
    let mut nap = Duration::from_millis(1);
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(10));
    }
    f()
}

/// How `Process::stop` ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It had exited already, or exited on SIGTERM.
    Terminated,
    /// It ignored SIGTERM for the whole grace period.
    Killed,
}

/// Test-only crash points: with `BERTH_CRASH_AT=OP:STEP` in the environment,
/// a debug build kills itself (SIGKILL, no cleanup) when it reaches that step,
/// so tests can interrupt an operation exactly there. Release builds ignore it.
pub fn crash_point(op: &str, step: &str) {
    if cfg!(debug_assertions) {
        if let Ok(at) = std::env::var("BERTH_CRASH_AT") {
            if at.split_once(':') == Some((op, step)) {
                let _ = kill_process(rustix::process::getpid(), Signal::KILL);
            }
        }
    }
}

/// `PID-STARTTIME` of this process: names what it owns in shared
/// directories, so that cleanup after a crash never takes a live one's.
pub fn own_tag() -> String {
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let start = Process::of(pid).map_or(0, |p| p.starttime);
    format!("{pid}-{start}")
}

/// Whether the process an [`own_tag`] names still runs.
pub fn tag_alive(tag: &str) -> bool {
    let Some((pid, start)) = tag.split_once('-') else {
        return false;
    };
    match (pid.parse::<i32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(starttime)) => Process { pid, starttime }.alive(),
        _ => false,
    }
}

/// One running process, pinned by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub starttime: u64,
}

impl Process {
    /// The process now running as `pid`, if it has not exited.
    pub fn of(pid: i32) -> Option<Process> {
        let s = stat(pid)?;
        (!s.exited()).then_some(Process {
            pid,
            starttime: s.starttime,
        })
    }

    /// Whether this very process (not a successor with its pid) still runs.
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.starttime == self.starttime && !s.exited())
    }

    /// Waits up to `limit` for it to exit; true once it has. Woken by a
    /// pidfd the moment it exits (no polling latency), falling back to polling.
    pub fn wait_exit(&self, limit: Duration) -> bool {
        let pidfd = Pid::from_raw(self.pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
        // Checked after opening: the pidfd is then this very process, not a
        // later one that reused its pid.
        if !self.alive() {
            return true;
        }
        if let Some(fd) = pidfd {
            let deadline = Instant::now() + limit;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let timeout = Timespec {
                    tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                match poll(&mut fds, Some(&timeout)) {
                    Ok(0) => return !self.alive(),
                    Ok(_) => return true,
                    Err(Errno::INTR) => {}
                    Err(_) => break,
                }
            }
        }
        wait_until(limit, || !self.alive())
    }

    /// SIGTERM, `grace` to exit, then SIGKILL. Fails only if it survives SIGKILL.
    pub fn stop(&self, grace: Duration) -> std::io::Result<Stopped> {
        let Some(pid) = Pid::from_raw(self.pid) else {
            return Ok(Stopped::Terminated);
        };
        if self.alive() {
            let _ = kill_process(pid, Signal::TERM);
        }
        if self.wait_exit(grace) {
            return Ok(Stopped::Terminated);
        }
        warn!(pid = self.pid, "process ignored SIGTERM; killing it");
        if self.alive() {
            let _ = kill_process(pid, Signal::KILL);
        }
        if self.wait_exit(Duration::from_secs(3)) {
            return Ok(Stopped::Killed);
        }
        Err(std::io::Error::other(format!(
            "pid {} survived SIGKILL",
            self.pid
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_parsed_past_odd_names() {
        let t = "42 (we ird) S) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(
            parse_stat(t),
            Some(ProcStat {
                state: 'S',
                starttime: 12345
            })
        );
        let z = parse_stat(&t.replace(") S 1", ") Z 1")).unwrap();
        assert!(z.exited());
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = Process::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let impostor = Process {
            starttime: me.starttime + 1,
            ..me
        };
        assert!(!impostor.alive());
    }
}
