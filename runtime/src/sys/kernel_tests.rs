//! Real kernel: the child-side calls that tie a container's first process to
//! the berth that cloned it, so that a berth killed at any moment leaves no
//! container nobody watches.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};

use super::{LinuxSys, Sys};
use crate::spec::ExitStatus;

#[test]
fn die_with_parent_refuses_a_parent_that_is_gone() {
    let me = nix::unistd::getpid();
    let ask = |parent: Pid| {
        let mut child = || match LinuxSys.die_with_parent(parent) {
            Ok(()) => 0,
            Err(Errno::SRCH) => 3,
            Err(_) => 4,
        };
        let pid = LinuxSys
            .spawn(CloneFlags::empty(), &mut child)
            .expect("fork");
        LinuxSys.wait(pid).expect("wait")
    };
    assert_eq!(ask(me), ExitStatus::Exited(0), "its own parent");
    // Another pid as "the parent": what a child whose parent died (and
    // which a reaper adopted) sees.
    let other = Pid::from_raw(me.as_raw() + 1);
    assert_eq!(ask(other), ExitStatus::Exited(3), "a parent that is gone");
}

/// What the awaiting child said: `b'0'` released, `b'C'` cancelled (EOF),
/// `b'E'` another error. Its pid comes first, from the parent.
const RELEASED: u8 = b'0';
const CANCELLED: u8 = b'C';

/// Forks a parent that forks a child awaiting its word, then either gives
/// the word (`release`) or dies without it; returns what the child said,
/// `None` if it said nothing in 10 s (it was still waiting: then killed).
///
/// The parent is a process of its own, so its death is a real one, and only
/// it and the child ever hold the release pipe: a copy in a process another
/// test forks meanwhile would hold the EOF back. Between the forks, plain
/// syscalls only, as in the runtime's own child (this process has threads).
fn await_in_orphan(release: bool) -> Option<u8> {
    let (said, tell) = pipe_with(PipeFlags::CLOEXEC).expect("report pipe");
    let mut parent = || {
        let Ok((rd, go)) = pipe_with(PipeFlags::CLOEXEC) else {
            return 1;
        };
        let mut child = || {
            let verdict = match LinuxSys.await_parent(rd.as_fd(), go.as_fd()) {
                Ok(()) => RELEASED,
                Err(Errno::CANCELED) => CANCELLED,
                Err(_) => b'E',
            };
            let _ = rustix::io::write(&tell, &[verdict]);
            0
        };
        let Ok(pid) = LinuxSys.spawn(CloneFlags::empty(), &mut child) else {
            return 2;
        };
        let _ = rustix::io::write(&tell, &pid.as_raw().to_ne_bytes());
        if release {
            let _ = LinuxSys.release_child(go.as_fd());
        }
        0
    };
    let parent = LinuxSys
        .spawn(CloneFlags::empty(), &mut parent)
        .expect("fork the parent");
    drop(tell);
    assert_eq!(
        LinuxSys.wait(parent).expect("wait for the parent"),
        ExitStatus::Exited(0),
        "the parent failed"
    );
    let mut pid = [0u8; 4];
    assert_eq!(read_within(&said, &mut pid), 4, "the child's pid");
    let mut verdict = [0u8; 1];
    if read_within(&said, &mut verdict) == 1 {
        return Some(verdict[0]);
    }
    let _ = nix::sys::signal::kill(
        Pid::from_raw(i32::from_ne_bytes(pid)),
        nix::sys::signal::Signal::SIGKILL,
    );
    None
}

/// Reads into `buf` for up to 10 s; how many bytes came.
fn read_within(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got < buf.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(10),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => panic!("poll {}: {e}", fd.as_raw_fd()),
        }
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

#[test]
fn a_child_awaiting_its_parent_goes_on_when_released() {
    assert_eq!(await_in_orphan(true), Some(RELEASED));
}

/// A parent killed before the child asked to die with it: the child holds
/// a copy of the pipe's write end from the fork, yet must see the EOF.
#[test]
fn a_child_awaiting_a_parent_that_died_ends() {
    assert_eq!(
        await_in_orphan(false),
        Some(CANCELLED),
        "the child went on waiting for a parent that was gone"
    );
}
