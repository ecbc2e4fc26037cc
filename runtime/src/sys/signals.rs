//! Parent-side signal handling while a container runs: SIGINT and SIGQUIT are
//! ignored (the container, in the terminal's foreground group, gets them) and
//! SIGTERM/SIGHUP are forwarded to the running containers. Dispositions are
//! process-wide, so holds are counted and the first/last one installs/restores.
//! SIGWINCH is counted, likewise, while a pty relay watches it.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno as NixErrno;
use nix::sys::signal::{
    sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::unistd::Pid;
use rustix::io::Errno;

/// Containers a forwarded signal goes to; more than this run at once are not
/// forwarded to (they still get the terminal's signals).
const SLOTS: usize = 32;
static CHILDREN: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];

const IGNORED: [Signal; 2] = [Signal::SIGINT, Signal::SIGQUIT];
const FORWARDED: [Signal; 2] = [Signal::SIGTERM, Signal::SIGHUP];

struct Held {
    count: usize,
    saved: Vec<(Signal, SigAction)>,
}

static HELD: Mutex<Held> = Mutex::new(Held {
    count: 0,
    saved: Vec::new(),
});

/// SIGWINCHs seen since the first watch; relays compare it with their last look.
static WINCHES: AtomicU64 = AtomicU64::new(0);

struct Watched {
    count: usize,
    saved: Option<SigAction>,
}

static WATCHED: Mutex<Watched> = Mutex::new(Watched {
    count: 0,
    saved: None,
});

pub(crate) fn errno(e: NixErrno) -> Errno {
    Errno::from_raw_os_error(e as i32)
}

extern "C" fn forward(sig: libc::c_int) {
    // Only async-signal-safe work here: atomics and kill(2). errno is saved
    // because the interrupted code may be about to read it.
    let saved = NixErrno::last_raw();
    for slot in &CHILDREN {
        let pid = slot.load(Ordering::Relaxed);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe and takes plain integers;
            // pid > 0 so it never targets a process group.
            unsafe { libc::kill(pid, sig) };
        }
    }
    NixErrno::set_raw(saved);
}

extern "C" fn count_winch(_: libc::c_int) {
    // An atomic add is async-signal-safe and leaves errno alone.
    WINCHES.fetch_add(1, Ordering::Relaxed);
}

/// Installs `action` for `sig`, returning the previous one.
fn install(sig: Signal, action: &SigAction) -> Result<SigAction, Errno> {
    // SAFETY: the handlers installed here are SIG_IGN, SIG_DFL, a previously
    // installed action being restored, `forward`, which only touches
    // atomics, errno and kill(2), or `count_winch`, which only adds to an
    // atomic: all async-signal-safe.
    unsafe { sigaction(sig, action) }.map_err(errno)
}

pub(crate) fn hold() -> Result<(), Errno> {
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    if held.count == 0 {
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        // SA_RESTART so the waiting parent's read/waitpid carry on.
        let fwd = SigAction::new(
            SigHandler::Handler(forward),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut saved = Vec::with_capacity(4);
        let plan = IGNORED
            .iter()
            .map(|s| (*s, &ignore))
            .chain(FORWARDED.iter().map(|s| (*s, &fwd)));
        for (sig, action) in plan {
            match install(sig, action) {
                Ok(old) => saved.push((sig, old)),
                Err(e) => {
                    restore(&saved);
                    return Err(e);
                }
            }
        }
        held.saved = saved;
    }
    held.count += 1;
    Ok(())
}

pub(crate) fn release() {
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    held.count = held.count.saturating_sub(1);
    if held.count == 0 {
        let saved = std::mem::take(&mut held.saved);
        restore(&saved);
    }
}

fn restore(saved: &[(Signal, SigAction)]) {
    for (sig, old) in saved.iter().rev() {
        if let Err(e) = install(*sig, old) {
            tracing::warn!(signal = ?sig, error = %e, "restore signal disposition");
        }
    }
}

pub(crate) fn watch_winch() -> Result<(), Errno> {
    let mut w = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
    if w.count == 0 {
        // SA_RESTART so other threads' blocking calls carry on; the relay's
        // poll(2) is interrupted regardless.
        let count = SigAction::new(
            SigHandler::Handler(count_winch),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        w.saved = Some(install(Signal::SIGWINCH, &count)?);
    }
    w.count += 1;
    Ok(())
}

pub(crate) fn unwatch_winch() {
    let mut w = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
    w.count = w.count.saturating_sub(1);
    if w.count == 0 {
        if let Some(old) = w.saved.take() {
            restore(&[(Signal::SIGWINCH, old)]);
        }
    }
}

pub(crate) fn winch_count() -> u64 {
    WINCHES.load(Ordering::Relaxed)
}

pub(crate) fn track(pid: Pid) {
    for slot in &CHILDREN {
        if slot
            .compare_exchange(0, pid.as_raw(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

pub(crate) fn untrack(pid: Pid) {
    for slot in &CHILDREN {
        let _ = slot.compare_exchange(pid.as_raw(), 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// In a forked child that stays (a relay): forgets the children of the
/// process it is a copy of, so signals go only to the ones it spawns itself.
pub(crate) fn untrack_all() {
    for slot in &CHILDREN {
        slot.store(0, Ordering::Relaxed);
    }
}

/// Child side, before exec: default dispositions for everything the parent
/// (or Rust's runtime, which ignores SIGPIPE) changed, and an empty mask.
pub(crate) fn reset_in_child() -> Result<(), Errno> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in IGNORED
        .iter()
        .chain(FORWARDED.iter())
        .chain([Signal::SIGPIPE, Signal::SIGWINCH].iter())
    {
        install(*sig, &default)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_and_untrack_use_free_slots() {
        let a = Pid::from_raw(999_991);
        let b = Pid::from_raw(999_992);
        track(a);
        track(b);
        let live = |p: Pid| {
            CHILDREN
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) == p.as_raw())
                .count()
        };
        assert_eq!((live(a), live(b)), (1, 1));
        untrack(a);
        assert_eq!((live(a), live(b)), (0, 1));
        untrack(b);
        assert_eq!(live(b), 0);
    }
}
