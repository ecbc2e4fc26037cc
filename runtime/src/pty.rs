//! The container's pseudo-terminal ([`crate::RunSpec::tty`]).
//!
//! Child side, after /dev/pts is mounted and the root pivoted: open
//! `/dev/ptmx` (the container's own devpts instance), unlock it, open its
//! slave, send the master to berth over a CLOEXEC socketpair made before
//! clone, then `setsid`, make the slave the controlling terminal and put it
//! on fd 0, 1 and 2. Each of those is one [`PtyOp`] step.
//!
//! Parent side: a [`Session`] takes the master, puts a host terminal in raw
//! mode (restored on drop), copies its window size on start and on SIGWINCH,
//! and relays host input to the master and the master to host output until
//! the container side of the pty is closed.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use tracing::{debug, warn};

use crate::error::{Result, RuntimeError};
use crate::spec::Stdio;
use crate::step::Step;
use crate::sys::{Sys, TermMode};

/// What a pipe's EOF on the host becomes: the pty's end-of-file character
/// (VEOF), so a shell reading commands from a pipe sees its input end.
const EOF_CHAR: u8 = 0x04;
/// How often the relay looks for a SIGWINCH that interrupted another thread.
const TICK_MS: i32 = 100;
const BUF_LEN: usize = 16 * 1024;

/// One child-side pty step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PtyOp {
    OpenMaster,
    Unlock,
    OpenSlave,
    SendMaster,
    NewSession,
    ControllingTty,
    /// Puts the slave on this descriptor (0, 1 or 2).
    Stdio(RawFd),
}

const OPS: [PtyOp; 9] = [
    PtyOp::OpenMaster,
    PtyOp::Unlock,
    PtyOp::OpenSlave,
    PtyOp::SendMaster,
    PtyOp::NewSession,
    PtyOp::ControllingTty,
    PtyOp::Stdio(0),
    PtyOp::Stdio(1),
    PtyOp::Stdio(2),
];

/// The descriptors the child's pty steps pass along: the socket the master
/// goes out on, then the master and slave once opened. Only the child fills
/// them (its copy of this memory); the parent closes `sock` after clone.
#[derive(Debug)]
pub(crate) struct PtyChild {
    sock: RefCell<Option<OwnedFd>>,
    master: RefCell<Option<OwnedFd>>,
    slave: RefCell<Option<OwnedFd>>,
}

impl PtyChild {
    /// `sock` is the child's end of the socketpair.
    pub(crate) fn new(sock: OwnedFd) -> Self {
        PtyChild {
            sock: RefCell::new(Some(sock)),
            master: RefCell::new(None),
            slave: RefCell::new(None),
        }
    }

    /// Parent side, after clone: drop our copy of the child's end, so the
    /// child's exit without sending is EOF on ours.
    pub(crate) fn close_parent_copy(&self) {
        drop(self.sock.borrow_mut().take());
    }

    /// The child's pty steps, in order.
    pub(crate) fn steps(&self) -> Vec<Step<'_>> {
        OPS.iter()
            .map(|op| Step::Pty { op: *op, pty: self })
            .collect()
    }
}

/// Runs `f` on the descriptor in `slot`; `EBADF` if an earlier step didn't fill it.
fn with(
    slot: &RefCell<Option<OwnedFd>>,
    f: impl FnOnce(BorrowedFd<'_>) -> Result<(), Errno>,
) -> Result<(), Errno> {
    match slot.borrow().as_ref() {
        Some(fd) => f(fd.as_fd()),
        None => Err(Errno::BADF),
    }
}

impl PtyOp {
    /// Child side: one syscall (two for `SendMaster`, which also closes the
    /// child's copy of the master), no allocation.
    pub(crate) fn run(self, pty: &PtyChild, sys: &dyn Sys) -> Result<(), Errno> {
        match self {
            PtyOp::OpenMaster => {
                let master = sys.open_pty_master()?;
                *pty.master.borrow_mut() = Some(master);
                Ok(())
            }
            PtyOp::Unlock => with(&pty.master, |m| sys.unlock_pty(m)),
            PtyOp::OpenSlave => {
                let mut slave = None;
                with(&pty.master, |m| {
                    slave = Some(sys.open_pty_slave(m)?);
                    Ok(())
                })?;
                *pty.slave.borrow_mut() = slave;
                Ok(())
            }
            PtyOp::SendMaster => {
                with(&pty.master, |m| with(&pty.sock, |s| sys.send_fd(s, m)))?;
                // Only berth may hold the master: its EOF is the container's end.
                drop(pty.master.borrow_mut().take());
                Ok(())
            }
            PtyOp::NewSession => sys.setsid(),
            PtyOp::ControllingTty => with(&pty.slave, |s| sys.set_controlling_tty(s)),
            PtyOp::Stdio(target) => with(&pty.slave, |s| sys.redirect(s, target)),
        }
    }

    pub(crate) fn error(self, source: Errno) -> RuntimeError {
        let step = match self {
            PtyOp::Stdio(fd) => return RuntimeError::Stdio { fd, source },
            PtyOp::OpenMaster => "open /dev/ptmx in the container",
            PtyOp::Unlock => "unlock the pty",
            PtyOp::OpenSlave => "open the pty slave",
            PtyOp::SendMaster => "send the pty master to berth",
            PtyOp::NewSession => "start a new session",
            PtyOp::ControllingTty => "make the pty the controlling terminal",
        };
        RuntimeError::Pty { step, source }
    }
}

fn pty_err(step: &'static str) -> impl FnOnce(Errno) -> RuntimeError {
    move |source| RuntimeError::Pty { step, source }
}

fn relay_err(step: &'static str) -> impl FnOnce(Errno) -> RuntimeError {
    move |source| RuntimeError::Relay { step, source }
}

/// Parent side: receives the master on `sock`. `Ok(None)` if the child
/// closed its end without sending one (it failed and reports why).
pub(crate) fn receive_master(sys: &dyn Sys, sock: &OwnedFd) -> Result<Option<OwnedFd>> {
    sys.recv_fd(sock.as_fd())
        .map_err(pty_err("receive the pty master"))
}

/// Berth's side of the container's pty. Dropping it restores the host
/// terminal and closes the master (which hangs the container's side up).
pub(crate) struct Session<'a> {
    sys: &'a dyn Sys,
    master: OwnedFd,
    input: BorrowedFd<'a>,
    output: BorrowedFd<'a>,
    /// The host terminal the window size comes from, if any.
    term: Option<BorrowedFd<'a>>,
    /// The host terminal put in raw mode and its mode before.
    raw: Option<(BorrowedFd<'a>, TermMode)>,
    watching: bool,
    /// [`Sys::winch_count`] when the size was last copied.
    seen: Cell<u64>,
}

impl<'a> Session<'a> {
    /// Sets up the host side: a non-blocking master; raw mode if `input` is
    /// a terminal; the window size of `input` (or else `output`) if either
    /// is a terminal, copied now and after each SIGWINCH.
    pub(crate) fn start(
        sys: &'a dyn Sys,
        master: OwnedFd,
        input: BorrowedFd<'a>,
        output: BorrowedFd<'a>,
    ) -> Result<Self> {
        let mut s = Session {
            sys,
            master,
            input,
            output,
            term: None,
            raw: None,
            watching: false,
            seen: Cell::new(0),
        };
        sys.set_nonblocking(s.master.as_fd())
            .map_err(pty_err("make the pty master non-blocking"))?;
        if sys.is_terminal(input) {
            let saved = sys
                .make_raw(input)
                .map_err(pty_err("put the terminal in raw mode"))?;
            s.raw = Some((input, saved));
            s.term = Some(input);
        } else if sys.is_terminal(output) {
            s.term = Some(output);
        }
        if s.term.is_some() {
            sys.watch_winch()
                .map_err(|source| RuntimeError::Signals { source })?;
            s.watching = true;
            s.seen.set(sys.winch_count());
            s.resize();
        }
        Ok(s)
    }

    /// Copies the host terminal's window size onto the pty; a failure only
    /// leaves the old size, so it is logged, not returned.
    fn resize(&self) {
        if let Some(term) = self.term {
            if let Err(error) = self.sys.copy_winsize(term, self.master.as_fd()) {
                debug!(%error, "copy the window size");
            }
        }
    }

    /// Relays until the container side of the pty is closed (every process
    /// holding the slave has exited or closed it).
    pub(crate) fn relay(&self) -> Result<()> {
        let sys = self.sys;
        let master = self.master.as_fd();
        let timeout = if self.watching { TICK_MS } else { -1 };
        let mut input_open = true;
        // Host input not yet taken by the master; no more is read meanwhile.
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; BUF_LEN];
        loop {
            if self.watching && sys.winch_count() != self.seen.get() {
                self.seen.set(sys.winch_count());
                self.resize();
            }
            let want_input = input_open && pending.is_empty();
            let mut master_events = PollFlags::IN;
            if !pending.is_empty() {
                master_events |= PollFlags::OUT;
            }
            let mut fds = Vec::with_capacity(2);
            fds.push(PollFd::from_borrowed_fd(master, master_events));
            if want_input {
                fds.push(PollFd::from_borrowed_fd(self.input, PollFlags::IN));
            }
            match sys.poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(relay_err("poll")(e)),
            }
            let m = fds[0].revents();
            let i = fds.get(1).map_or(PollFlags::empty(), PollFd::revents);
            drop(fds);

            if m.contains(PollFlags::NVAL) {
                return Err(relay_err("poll the pty master")(Errno::BADF));
            }
            if m.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                match sys.read(master, &mut buf) {
                    // EIO: no process holds the slave any more.
                    Ok(0) | Err(Errno::IO) => return Ok(()),
                    Ok(n) => self
                        .write_all(self.output, &buf[..n])
                        .map_err(relay_err("write to stdout"))?,
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    Err(e) => return Err(relay_err("read the pty master")(e)),
                }
            }
            if m.contains(PollFlags::OUT) && !pending.is_empty() {
                match sys.write(master, &pending) {
                    Ok(n) => drop(pending.drain(..n)),
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    Err(e) => return Err(relay_err("write to the pty master")(e)),
                }
            }
            if i.contains(PollFlags::NVAL) {
                input_open = false;
            } else if i.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                match sys.read(self.input, &mut buf) {
                    Ok(0) | Err(Errno::IO) => {
                        input_open = false;
                        if self.raw.is_none() {
                            pending.push(EOF_CHAR);
                        }
                    }
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    Err(e) => return Err(relay_err("read stdin")(e)),
                }
            }
        }
    }

    /// Writes all of `buf`, waiting on `fd` if it is non-blocking and full.
    fn write_all(&self, fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
        while !buf.is_empty() {
            match self.sys.write(fd, buf) {
                Ok(0) => return Err(Errno::PIPE),
                Ok(n) => buf = &buf[n..],
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
                    match self.sys.poll(&mut fds, -1) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some((fd, mode)) = self.raw.take() {
            if let Err(error) = self.sys.restore_mode(fd, &mode) {
                warn!(%error, "restore the terminal mode");
            }
        }
        if self.watching {
            self.sys.unwatch_winch();
        }
    }
}

/// Receives the pty master and sets up the host side between it and
/// `stdio`'s descriptors (else `stdin`/`stdout`); `None` if the child failed
/// before sending it.
pub(crate) fn start_session<'a>(
    sys: &'a dyn Sys,
    sock: &OwnedFd,
    stdio: &'a Stdio,
    stdin: BorrowedFd<'a>,
    stdout: BorrowedFd<'a>,
) -> Result<Option<Session<'a>>> {
    let Some(master) = receive_master(sys, sock)? else {
        return Ok(None);
    };
    let input = stdio.stdin.as_ref().map_or(stdin, AsFd::as_fd);
    let output = stdio.stdout.as_ref().map_or(stdout, AsFd::as_fd);
    Session::start(sys, master, input, output).map(Some)
}

/// Once the child's exec went through (`execed`): relays its pty until the
/// other side closes, or fails if a child asked for one (`tty`) sent none.
/// `who` names the child in that error.
pub(crate) fn relay_if_started(
    execed: bool,
    session: &Result<Option<Session<'_>>>,
    tty: bool,
    who: &str,
) -> Result<()> {
    match (execed, session) {
        (true, Ok(Some(s))) => s.relay(),
        (true, Ok(None)) if tty => Err(RuntimeError::Protocol {
            reason: format!("{who} sent no pty master"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::sys::{Call, FakeSys, LinuxSys};

    fn pipe() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe().unwrap()
    }

    fn read_all(fd: &OwnedFd) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = rustix::io::read(fd, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// A real pty from the host's /dev/ptmx: (master, slave).
    fn host_pty() -> Option<(OwnedFd, OwnedFd)> {
        let sys = LinuxSys;
        let master = sys.open_pty_master().ok()?;
        sys.unlock_pty(master.as_fd()).ok()?;
        let slave = sys.open_pty_slave(master.as_fd()).ok()?;
        Some((master, slave))
    }

    #[test]
    fn relay_carries_input_in_and_output_out_of_a_real_pty() {
        let Some((master, slave)) = host_pty() else {
            eprintln!("SKIP: no usable /dev/ptmx");
            return;
        };
        let (in_r, in_w) = pipe();
        let (out_r, out_w) = pipe();
        rustix::io::write(&in_w, b"hi\n").unwrap();
        drop(in_w);
        // The "container": reads a line from the slave, answers, hangs up.
        let child = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let n = rustix::io::read(&slave, &mut buf).unwrap();
            let mut answer = b"got:".to_vec();
            answer.extend_from_slice(&buf[..n]);
            rustix::io::write(&slave, &answer).unwrap();
        });
        let session = Session::start(&LinuxSys, master, in_r.as_fd(), out_w.as_fd()).unwrap();
        session.relay().unwrap();
        child.join().unwrap();
        drop(session);
        drop(out_w);
        // Echoed by the pty's line discipline, then the answer (ONLCR: \r\n).
        let out = read_all(&out_r);
        assert!(out.contains("got:hi\r\n"), "{out:?}");
        assert!(out.starts_with("hi\r\n"), "{out:?}");
    }

    #[test]
    fn pipe_eof_becomes_the_ptys_eof_char() {
        let Some((master, slave)) = host_pty() else {
            eprintln!("SKIP: no usable /dev/ptmx");
            return;
        };
        let (in_r, in_w) = pipe();
        let (_out_r, out_w) = pipe();
        rustix::io::write(&in_w, b"abc").unwrap();
        drop(in_w);
        // Canonical mode: ^D hands over "abc" without a newline, and a
        // second read would see EOF.
        let child = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let n = rustix::io::read(&slave, &mut buf).unwrap();
            buf[..n].to_vec()
        });
        let session = Session::start(&LinuxSys, master, in_r.as_fd(), out_w.as_fd()).unwrap();
        session.relay().unwrap();
        assert_eq!(child.join().unwrap(), b"abc");
    }

    #[test]
    fn sigwinch_copies_the_size_again() {
        let (in_r, _in_w) = pipe();
        let (_out_r, out_w) = pipe();
        let fake = FakeSys::new().terminal().pty_output(b"");
        let master = fake.open_pty_master().unwrap();
        let session = Session::start(&fake, master, in_r.as_fd(), out_w.as_fd()).unwrap();
        fake.add_winches(1);
        session.relay().unwrap();
        drop(session);
        let resizes = fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::CopyWinsize { .. }))
            .count();
        assert_eq!(resizes, 2);
        let calls = fake.calls();
        assert_eq!(
            calls[calls.len() - 2..],
            [
                Call::RestoreMode {
                    fd: in_r.as_fd().as_raw_fd()
                },
                Call::UnwatchWinch
            ]
        );
    }

    #[test]
    fn the_master_travels_over_the_socketpair() {
        let sys = LinuxSys;
        let (a, b) = sys.socketpair().unwrap();
        let (r, w) = pipe();
        sys.send_fd(b.as_fd(), w.as_fd()).unwrap();
        drop(w);
        let got = sys.recv_fd(a.as_fd()).unwrap().unwrap();
        let flags = rustix::io::fcntl_getfd(&got).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        rustix::io::write(&got, b"ok").unwrap();
        drop(got);
        assert_eq!(read_all(&r), "ok");
        // A peer that closes without sending is `None`.
        drop(b);
        assert!(sys.recv_fd(a.as_fd()).unwrap().is_none());
    }
}
