//! The console of a detached container started with `-t`: its monitor holds
//! the pty master, copies everything the container writes into its log, and
//! serves one `berth attach` at a time over a unix seqpacket socket
//! (`ROOT/run/NAME.tty`, root only). The client leaves with a key sequence
//! (Ctrl-P Ctrl-Q by default) and the container runs on.
//!
//! Messages, one per packet, start with their kind: from the client `i`
//! (input bytes) and `w` (window rows and columns, u16 little-endian); from
//! the monitor `o` (output bytes) and `e` (why it refused, then it closes).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use berth_runtime::sys::{LinuxSys, Sys, TermMode};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    accept_with, bind, connect, listen, recv, send, socket_with, AddressFamily, RecvFlags,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use rustix::termios::{tcgetwinsize, tcsetwinsize, Winsize};
use tracing::{debug, warn};

use crate::error::{BerthError, Result};

/// Docker's and LXC's default: Ctrl-P Ctrl-Q.
pub const DEFAULT_DETACH_KEYS: [u8; 2] = [0x10, 0x11];
const PACKET: usize = 32 * 1024;
/// How often loops look at their stop flag or for a SIGWINCH.
const TICK_MS: i64 = 100;

/// The console socket of container `name`.
pub fn socket_path(root: &Path, name: &str) -> PathBuf {
    root.join("run").join(format!("{name}.tty"))
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> BerthError + 'a {
    move |e| BerthError::io(what, path)(std::io::Error::from(e))
}

fn unix_addr(path: &Path) -> Result<SocketAddrUnix> {
    SocketAddrUnix::new(path).map_err(|_| {
        BerthError::Invalid(format!(
            "the console socket path {} is too long for a unix socket; use a shorter --root",
            path.display()
        ))
    })
}

/// A unix seqpacket socket for the console at `path`.
fn seqpacket(path: &Path) -> Result<OwnedFd> {
    socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io_err("create a socket for", path))
}

fn wait_readable(fds: &mut [PollFd<'_>]) -> std::result::Result<(), Errno> {
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: TICK_MS * 1_000_000,
    };
    match poll(fds, Some(&tick)) {
        Ok(_) | Err(Errno::INTR) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The monitor's end: the listening socket, removed on drop.
#[derive(Debug)]
pub(crate) struct Console {
    listener: OwnedFd,
    path: PathBuf,
}

impl Console {
    /// Listens at [`socket_path`] (a stale socket from a dead monitor is replaced).
    pub(crate) fn bind(root: &Path, name: &str) -> Result<Console> {
        let path = socket_path(root, name);
        let addr = unix_addr(&path)?;
        let _ = std::fs::remove_file(&path);
        let fd = seqpacket(&path)?;
        bind(&fd, &addr).map_err(io_err("bind the console socket", &path))?;
        let console = Console { listener: fd, path };
        rustix::fs::chmod(&console.path, rustix::fs::Mode::from_raw_mode(0o600))
            .map_err(io_err("chmod", &console.path))?;
        listen(&console.listener, 4).map_err(io_err("listen on", &console.path))?;
        Ok(console)
    }

    /// Relays between the pty `master` and an attached client until the
    /// container's side of the pty closes or `stop` is set, copying all
    /// output to `log` (a pipe a log pump reads).
    pub(crate) fn serve(&self, master: OwnedFd, log: OwnedFd, stop: &AtomicBool) {
        if let Err(e) = LinuxSys.set_nonblocking(master.as_fd()) {
            warn!(error = %e, "console: non-blocking pty master");
        }
        let mut client: Option<OwnedFd> = None;
        let mut buf = vec![0u8; PACKET];
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let mut fds = vec![
                PollFd::new(&master, PollFlags::IN),
                PollFd::new(&self.listener, PollFlags::IN),
            ];
            if let Some(c) = &client {
                fds.push(PollFd::new(c, PollFlags::IN));
            }
            if let Err(e) = wait_readable(&mut fds) {
                warn!(error = %e, "console: poll");
                return;
            }
            let ready: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
            drop(fds);
            let m = ready[0];
            if m.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                match rustix::io::read(&master, &mut buf[1..]) {
                    // EIO: no process holds the container's side any more.
                    Ok(0) | Err(Errno::IO) => return,
                    Ok(n) => {
                        write_all(&log, &buf[1..=n]);
                        buf[0] = b'o';
                        if let Some(c) = &client {
                            if send(c, &buf[..=n], SendFlags::NOSIGNAL).is_err() {
                                client = None;
                            }
                        }
                    }
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    Err(e) => {
                        warn!(error = %e, "console: read the pty");
                        return;
                    }
                }
            } else if stopping {
                // The container ended and its output is drained.
                return;
            }
            if ready[1].contains(PollFlags::IN) {
                if let Ok(new) = accept_with(&self.listener, SocketFlags::CLOEXEC) {
                    match &client {
                        Some(_) => {
                            let why = b"eanother berth attach is connected";
                            let _ = send(&new, why, SendFlags::NOSIGNAL);
                        }
                        None => client = Some(new),
                    }
                }
            }
            let c_ready = ready.get(2).copied().unwrap_or(PollFlags::empty());
            if c_ready.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                let gone = match client
                    .as_ref()
                    .map(|c| recv(c, &mut buf, RecvFlags::empty()))
                {
                    Some(Ok((0, _))) | Some(Err(_)) | None => true,
                    Some(Ok((n, _))) => {
                        from_client(&master, &buf[..n]);
                        false
                    }
                };
                if gone {
                    debug!("console: client detached");
                    client = None;
                }
            }
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn from_client(master: &OwnedFd, packet: &[u8]) {
    match packet.split_first() {
        Some((b'i', input)) => write_all(master, input),
        Some((b'w', &[r0, r1, c0, c1])) => {
            let size = Winsize {
                ws_row: u16::from_le_bytes([r0, r1]),
                ws_col: u16::from_le_bytes([c0, c1]),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            if let Err(e) = tcsetwinsize(master, size) {
                debug!(error = %e, "console: set the window size");
            }
        }
        _ => debug!("console: unknown message"),
    }
}

/// Writes all of `data` to `fd`, waiting while it is full; gives up on an error.
fn write_all(fd: &OwnedFd, mut data: &[u8]) {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::OUT)];
                let _ = wait_readable(&mut fds);
            }
            Err(e) => {
                debug!(error = %e, "console: write");
                return;
            }
        }
    }
}

/// How a `berth attach` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachEnd {
    /// The client typed the detach keys; the container runs on.
    Detached,
    /// The container's console closed: it ended.
    Ended,
}

/// Parses Docker's `--detach-keys` form: `ctrl-p,ctrl-q`, `a,ctrl-@` …
pub fn parse_detach_keys(s: &str) -> Result<Vec<u8>> {
    let bad = || {
        BerthError::Invalid(format!(
            "detach keys {s:?}: expected a comma-separated list like ctrl-p,ctrl-q"
        ))
    };
    s.split(',')
        .map(|k| match k.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let b = c.as_bytes()[0].to_ascii_uppercase();
                (b'@'..=b'_')
                    .contains(&b)
                    .then_some(b & 0x1f)
                    .ok_or_else(bad)
            }
            Some(_) => Err(bad()),
            None if k.len() == 1 => Ok(k.as_bytes()[0]),
            None => Err(bad()),
        })
        .collect()
}

/// Puts a terminal in raw mode and back.
struct RawTerminal<'a>(BorrowedFd<'a>, TermMode);

impl Drop for RawTerminal<'_> {
    fn drop(&mut self) {
        let _ = LinuxSys.restore_mode(self.0, &self.1);
    }
}

/// `berth attach`: relays `input` to the console of `name` and its output to
/// `output` until the detach keys (`keys`) or the container's end.
pub fn attach(
    root: &Path,
    name: &str,
    keys: &[u8],
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
) -> Result<AttachEnd> {
    let path = socket_path(root, name);
    let addr = unix_addr(&path)?;
    let sock = seqpacket(&path)?;
    match connect(&sock, &addr) {
        Ok(()) => {}
        Err(Errno::NOENT | Errno::CONNREFUSED) => {
            return Err(BerthError::Invalid(format!(
                "container {name:?} has no console: it is not running, or was started \
                 without -t (`berth logs -f {name}` shows its output, \
                 `berth exec -t {name} -- /bin/sh` gives a shell)"
            )))
        }
        Err(e) => return Err(io_err("connect to", &path)(e)),
    }
    let sys = LinuxSys;
    let _raw = match sys.is_terminal(input) {
        true => Some(RawTerminal(
            input,
            sys.make_raw(input)
                .map_err(io_err("put the terminal in raw mode", &path))?,
        )),
        false => None,
    };
    let term = [input, output].into_iter().find(|fd| sys.is_terminal(*fd));
    let winch = Arc::new(AtomicBool::new(true));
    let hook = signal_hook::flag::register(signal_hook::consts::SIGWINCH, winch.clone())
        .map_err(BerthError::io("watch SIGWINCH for", &path))?;
    let ended = relay(&sock, keys, input, output, term, &winch);
    signal_hook::low_level::unregister(hook);
    ended
}

fn relay(
    sock: &OwnedFd,
    keys: &[u8],
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    term: Option<BorrowedFd<'_>>,
    winch: &AtomicBool,
) -> Result<AttachEnd> {
    let lost = |e: Errno| BerthError::Invalid(format!("the console connection failed: {e}"));
    let mut input_open = true;
    let mut detach = DetachKeys { keys, matched: 0 };
    let mut buf = vec![0u8; PACKET];
    loop {
        if let Some(t) = term.filter(|_| winch.swap(false, Ordering::Relaxed)) {
            if let Ok(size) = tcgetwinsize(t) {
                let [r0, r1] = size.ws_row.to_le_bytes();
                let [c0, c1] = size.ws_col.to_le_bytes();
                send(sock, &[b'w', r0, r1, c0, c1], SendFlags::NOSIGNAL).map_err(lost)?;
            }
        }
        let mut fds = vec![PollFd::new(sock, PollFlags::IN)];
        if input_open {
            fds.push(PollFd::from_borrowed_fd(input, PollFlags::IN));
        }
        wait_readable(&mut fds).map_err(lost)?;
        let ready: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
        drop(fds);
        if ready[0].intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            let (n, _) = recv(sock, &mut buf, RecvFlags::empty()).map_err(lost)?;
            match buf[..n].split_first() {
                None => return Ok(AttachEnd::Ended),
                Some((b'o', out)) => {
                    let mut out = out;
                    while !out.is_empty() {
                        match rustix::io::write(output, out) {
                            Ok(w) => out = &out[w..],
                            Err(Errno::INTR) => {}
                            Err(e) => return Err(lost(e)),
                        }
                    }
                }
                Some((b'e', why)) => {
                    return Err(BerthError::Invalid(
                        String::from_utf8_lossy(why).into_owned(),
                    ))
                }
                Some(_) => {}
            }
        }
        let i = ready.get(1).copied().unwrap_or(PollFlags::empty());
        if i.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            let n = match rustix::io::read(input, &mut buf[1..]) {
                Ok(n) => n,
                Err(Errno::INTR | Errno::AGAIN) => continue,
                Err(e) => return Err(lost(e)),
            };
            if n == 0 {
                input_open = false;
                continue;
            }
            let mut packet = vec![b'i'];
            if detach.feed(&buf[1..=n], &mut packet) {
                send(sock, &packet, SendFlags::NOSIGNAL).map_err(lost)?;
                return Ok(AttachEnd::Detached);
            }
            if packet.len() > 1 {
                send(sock, &packet, SendFlags::NOSIGNAL).map_err(lost)?;
            }
        }
    }
}

/// Spots the detach sequence in typed input, holding back a partial match.
struct DetachKeys<'a> {
    keys: &'a [u8],
    /// How much of the sequence was just typed (held back, not sent).
    matched: usize,
}

impl DetachKeys<'_> {
    /// Appends to `out` what goes on to the container; true once the whole
    /// sequence was typed (what followed it is dropped).
    fn feed(&mut self, typed: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in typed {
            if self.keys.get(self.matched) != Some(&b) {
                // Not the sequence after all: what was held back goes too.
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
            }
            if self.keys.get(self.matched) == Some(&b) {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return true;
                }
            } else {
                out.push(b);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_read_as_docker_writes_them() {
        assert_eq!(
            parse_detach_keys("ctrl-p,ctrl-q").unwrap(),
            DEFAULT_DETACH_KEYS
        );
        assert_eq!(parse_detach_keys("a,ctrl-@").unwrap(), [b'a', 0]);
        assert!(parse_detach_keys("ctrl-pq").is_err());
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("").is_err());
    }

    #[test]
    fn the_detach_sequence_is_held_back_until_it_is_whole_or_broken() {
        let mut d = DetachKeys {
            keys: &DEFAULT_DETACH_KEYS,
            matched: 0,
        };
        let mut out = Vec::new();
        assert!(!d.feed(b"ab\x10", &mut out));
        assert_eq!(out, b"ab");
        // ^P ^P: the first goes on, the second may still start the sequence.
        assert!(!d.feed(b"\x10", &mut out));
        assert_eq!(out, b"ab\x10");
        assert!(!d.feed(b"x", &mut out));
        assert_eq!(out, b"ab\x10\x10x");
        out.clear();
        assert!(d.feed(b"y\x10\x11z", &mut out));
        assert_eq!(out, b"y");
    }
}
