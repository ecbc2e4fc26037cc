//! Runs inside a berth container for the escape and limit tests
//! (tests/tests/escape.rs and limits.rs) and reports what the kernel let it do.
//!
//! - `berth-probe all [--host-pid PID]`: every escape probe, one line each:
//!   `PROBE <name> denied <why>`, `PROBE <name> ALLOWED <what>` or
//!   `PROBE <name> skipped <why>`, plus `INFO <key> <value>` lines and a last
//!   line `DONE <count>`. Exits 0 whatever the verdicts.
//! - `berth-probe fork-loop N`: forks up to N children that wait until told to
//!   exit; prints `FORK-LOOP forked=<n> asked=<N> error=<errno|none>`.
//! - `berth-probe alloc MIB`: touches MIB MiB, 1 MiB at a time, printing
//!   `ALLOC <n> MiB` to stderr (which the test gets even after an OOM kill),
//!   then `ALLOC done <MIB> MiB`.
//! - `berth-probe tiocsti`: pushes "x" into the input of the terminal on fd 0.
//!
//! Nothing here changes the host even where a probe is allowed: host files are
//! opened for writing but never written, calls that would act get bad magic or
//! arguments the kernel rejects only after its permission checks, and what
//! does succeed inside the container is undone at once.
// Its report on stdout is its output.
#![allow(clippy::print_stdout)]

// A crate root resolves `mod` next to itself, where Cargo would take the file
// for another binary.
#[path = "berth-probe/escape.rs"]
mod escape;
#[path = "berth-probe/gated.rs"]
mod gated;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

use nix::errno::Errno;

/// What one probe found.
pub enum Verdict {
    Denied(String),
    Allowed(String),
    Skipped(String),
}

impl Verdict {
    fn encode(&self) -> String {
        match self {
            Verdict::Denied(w) => format!("denied {w}"),
            Verdict::Allowed(w) => format!("ALLOWED {w}"),
            Verdict::Skipped(w) => format!("skipped {w}"),
        }
    }

    fn decode(s: &str) -> Verdict {
        let (word, why) = s.split_once(' ').unwrap_or((s, ""));
        match word {
            "denied" => Verdict::Denied(why.to_owned()),
            "ALLOWED" => Verdict::Allowed(why.to_owned()),
            _ => Verdict::Skipped(format!("child said {s:?}")),
        }
    }
}

pub fn say(name: &str, v: &Verdict) {
    println!("PROBE {name} {}", v.encode());
}

/// The name of an io::Error's errno (`EPERM`), or its text.
pub fn os(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| e.to_string(), |n| format!("{:?}", Errno::from_raw(n)))
}

/// A raw call's result: its return value, or errno when it returned -1.
pub fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// For a call that only a missing capability or the seccomp filter stops
/// before the kernel looks at its (deliberately bad) arguments: EPERM and
/// EACCES (a permission check) and ENOSYS (the filter's answer for clone3)
/// are denials; any other answer means the call got past them.
pub fn gate(r: Result<libc::c_long, Errno>) -> Verdict {
    match r {
        Err(e @ (Errno::EPERM | Errno::EACCES | Errno::ENOSYS)) => {
            Verdict::Denied(format!("{e:?}"))
        }
        Err(e) => Verdict::Allowed(format!("reached the kernel ({e:?})")),
        Ok(v) => Verdict::Allowed(format!("returned {v}")),
    }
}

/// [`gate`] for a call that returns a descriptor, which is closed.
pub fn gate_fd(r: Result<libc::c_long, Errno>) -> Verdict {
    if let Ok(fd) = r {
        if let Ok(fd) = i32::try_from(fd) {
            // SAFETY: the call just returned this descriptor to us and nothing
            // else owns it; the OwnedFd closes it once.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    gate(r)
}

/// Runs `f` in a forked child (for probes that change the process: unshare,
/// chroot) and returns the child's verdict.
pub fn in_child(f: impl FnOnce() -> Verdict) -> Verdict {
    let (rd, wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return Verdict::Skipped(format!("pipe {e:?}")),
    };
    let _ = std::io::stdout().flush();
    // SAFETY: the probe is single-threaded, so the child may allocate and use
    // std; it leaves through _exit, never returning into the caller's frames.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Verdict::Skipped(format!("fork {e:?}")),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            let v = f();
            let _ = std::fs::File::from(wr).write_all(v.encode().as_bytes());
            // SAFETY: _exit ends the child without running the parent's atexit
            // handlers or flushing buffers it shares with the parent.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(wr);
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(rd), &mut s);
            let status = nix::sys::wait::waitpid(child, None);
            if s.is_empty() {
                Verdict::Skipped(format!("child ended without a verdict: {status:?}"))
            } else {
                Verdict::decode(&s)
            }
        }
    }
}

/// `fork-loop N`: fork children that block on a pipe until we close it.
fn fork_loop(n: usize) -> ExitCode {
    let (rd, wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth-probe: pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = std::io::stdout().flush();
    let mut children = Vec::new();
    let mut error = "none".to_owned();
    while children.len() < n {
        // SAFETY: single-threaded; the child only calls close, read and _exit,
        // all async-signal-safe.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                let mut b = [0u8; 1];
                // SAFETY: plain syscalls on descriptors this process owns;
                // read blocks until the parent closes the write end.
                unsafe {
                    libc::close(wr.as_raw_fd());
                    libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1);
                    libc::_exit(0)
                }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => children.push(child),
            Err(e) => {
                error = format!("{e:?}");
                break;
            }
        }
    }
    println!(
        "FORK-LOOP forked={} asked={n} error={error}",
        children.len()
    );
    drop(wr);
    for c in children {
        let _ = nix::sys::wait::waitpid(c, None);
    }
    ExitCode::SUCCESS
}

/// `alloc MIB`: keeps every MiB it touches.
fn alloc(mib: usize) -> ExitCode {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for i in 1..=mib {
        // Non-zero bytes, so every page is really written.
        kept.push(vec![0x5a; 1 << 20]);
        eprintln!("ALLOC {i} MiB");
    }
    eprintln!("ALLOC done {} MiB", kept.len());
    println!("ALLOC done {} MiB", kept.len());
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: berth-probe all [--host-pid PID] | fork-loop N | alloc MIB | tiocsti");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let number = |s: &str| s.parse::<usize>().ok();
    match args.as_slice() {
        ["all"] => escape::all(None),
        ["all", "--host-pid", pid] => match pid.parse() {
            Ok(pid) => escape::all(Some(pid)),
            Err(_) => usage(),
        },
        ["fork-loop", n] => number(n).map_or_else(usage, fork_loop),
        ["alloc", n] => number(n).map_or_else(usage, alloc),
        ["tiocsti"] => {
            say("tiocsti", &escape::tiocsti());
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
