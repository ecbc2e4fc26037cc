//! The syscall seam: every mount, namespace, pivot, hostname, mknod and exec
//! call the runtime makes goes through [`Sys`], so planning and fallback logic
//! can be tested with [`FakeSys`] without root. [`LinuxSys`] is the real one.
//!
//! With [`crate::RunSpec::tty`] the child also opens a pty in its own devpts
//! and sends the master over a socket; the parent relays it to the host.
//!
//! Child-side methods run between clone and exec in a copy of a possibly
//! multi-threaded process, so [`LinuxSys`] keeps them to plain syscalls: no
//! locks, no logging, and no allocation for paths shorter than 256 bytes
//! (rustix and nix build those C strings on the stack).

use std::ffi::{CStr, CString, NulError, OsStr};
use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::raw::c_char;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::event::PollFd;
use rustix::io::Errno;
use rustix::thread::CapabilitySet;

use crate::seccomp::BpfProgram;
use crate::spec::ExitStatus;

pub(crate) mod bpf;
mod fake;
mod idmap;
mod linux;
pub(crate) mod seccomp;
mod signals;

pub use fake::{Call, FakeSys, FAKE_PID};
pub use linux::LinuxSys;

/// A namespace type, as `/proc/PID/ns` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    User,
    Mnt,
    Uts,
    Ipc,
    Net,
    Pid,
    Cgroup,
}

impl Namespace {
    /// Its file in `/proc/PID/ns`.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::User => "user",
            Namespace::Mnt => "mnt",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Pid => "pid",
            Namespace::Cgroup => "cgroup",
        }
    }

    /// Its `CLONE_NEW*` flag, which setns(2) checks the descriptor against.
    pub fn clone_flag(self) -> CloneFlags {
        match self {
            Namespace::User => CloneFlags::CLONE_NEWUSER,
            Namespace::Mnt => CloneFlags::CLONE_NEWNS,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Net => CloneFlags::CLONE_NEWNET,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
            Namespace::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The calls the runtime makes, parent side and container side.
pub trait Sys {
    // Parent side.

    /// Ignores SIGINT/SIGQUIT and forwards SIGTERM/SIGHUP to spawned children
    /// until the matching [`Sys::release_signals`]. Calls may nest.
    fn hold_signals(&self) -> Result<(), Errno>;
    /// Undoes one [`Sys::hold_signals`]; the last one restores the dispositions.
    fn release_signals(&self);
    /// Runs `child` in a new process created with `flags` (namespaces) and
    /// returns its pid. The child process exits with `child`'s return value.
    fn spawn(&self, flags: CloneFlags, child: &mut dyn FnMut() -> i32) -> Result<Pid, Errno>;
    /// [`Sys::spawn`], with the new process created inside the cgroup2
    /// directory `cgroup` (clone3's `CLONE_INTO_CGROUP`). Fails before any
    /// process exists where the kernel (or a seccomp filter) refuses that.
    fn spawn_into(
        &self,
        flags: CloneFlags,
        cgroup: BorrowedFd<'_>,
        child: &mut dyn FnMut() -> i32,
    ) -> Result<Pid, Errno>;
    /// Waits for `pid` to terminate and reaps it.
    fn wait(&self, pid: Pid) -> Result<ExitStatus, Errno>;
    /// SIGKILLs `pid` (best effort: it may be gone already).
    fn kill(&self, pid: Pid);
    /// Writes `/proc/PID/uid_map` and `gid_map` of a child in a new user namespace.
    fn write_id_maps(&self, pid: Pid, uid_map: &str, gid_map: &str) -> Result<(), Errno>;
    /// A detached copy of the mount tree at `path`, idmapped with the user
    /// namespace of `pid` (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)`).
    fn idmapped_tree(&self, path: &Path, pid: Pid) -> Result<OwnedFd, Errno>;
    /// Puts the child on a host bridge: [`crate::net::attach`].
    fn attach_bridge(&self, pid: Pid, link: &crate::net::BridgeLink) -> Result<(), Errno>;
    /// Removes a container's host veth (gone already is fine).
    fn detach_bridge(&self, host_veth: &str) -> Result<(), Errno>;
    /// Lets a child blocked in [`Sys::await_parent`] go on.
    fn release_child(&self, fd: BorrowedFd<'_>) -> Result<(), Errno>;

    // Parent side, entering a running container.

    /// Opens `/proc/PID` (`O_PATH`). Namespaces opened through it belong to
    /// that very process: once it is gone they fail, even if its pid is reused.
    fn open_proc(&self, pid: Pid) -> Result<OwnedFd, Errno>;
    /// Opens namespace `ns` of the process whose `/proc` directory is `proc`
    /// (CLOEXEC); `None` if it is the calling thread's own.
    fn open_namespace(&self, proc: BorrowedFd<'_>, ns: Namespace)
        -> Result<Option<OwnedFd>, Errno>;

    // Parent side, pty relay (only with `RunSpec::tty`).

    /// A connected pair of CLOEXEC unix stream sockets.
    fn socketpair(&self) -> Result<(OwnedFd, OwnedFd), Errno>;
    /// Receives one descriptor sent by [`Sys::send_fd`] (CLOEXEC); `None`
    /// if the peer closed its end without sending one.
    fn recv_fd(&self, sock: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Errno>;
    fn is_terminal(&self, fd: BorrowedFd<'_>) -> bool;
    /// Puts terminal `fd` in raw mode; returns the mode to restore.
    fn make_raw(&self, fd: BorrowedFd<'_>) -> Result<TermMode, Errno>;
    /// Puts back a mode [`Sys::make_raw`] saved.
    fn restore_mode(&self, fd: BorrowedFd<'_>, mode: &TermMode) -> Result<(), Errno>;
    /// Copies terminal `from`'s window size onto terminal `to`.
    fn copy_winsize(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno>;
    fn set_nonblocking(&self, fd: BorrowedFd<'_>) -> Result<(), Errno>;
    /// Counts SIGWINCH (see [`Sys::winch_count`]) until the matching
    /// [`Sys::unwatch_winch`]. Calls may nest.
    fn watch_winch(&self) -> Result<(), Errno>;
    fn unwatch_winch(&self);
    /// SIGWINCHs seen while watched; a change means "copy the size again".
    /// An atomic load, not a syscall: fakes don't record it.
    fn winch_count(&self) -> u64;
    /// poll(2) with a timeout in milliseconds (negative: none).
    fn poll(&self, fds: &mut [PollFd<'_>], timeout_ms: i32) -> Result<usize, Errno>;
    fn read(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno>;
    fn write(&self, fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno>;

    // Child side.

    /// Restores default signal dispositions and an empty mask, and asks for
    /// SIGKILL if the parent dies.
    fn reset_signals(&self) -> Result<(), Errno>;
    /// Closes `parent_end`, this copy's inherited write end of the pipe,
    /// then blocks until the parent's [`Sys::release_child`] on it;
    /// `ECANCELED` if the parent closed its end instead (it failed to set
    /// the child up, or died).
    fn await_parent(&self, fd: BorrowedFd<'_>, parent_end: BorrowedFd<'_>) -> Result<(), Errno>;
    /// In a new user namespace: drops supplementary groups and becomes its
    /// uid and gid 0.
    fn become_root(&self) -> Result<(), Errno>;
    /// Drops supplementary groups, then sets the real, effective and saved
    /// gid, then uid. Leaving uid 0 clears the effective and permitted
    /// capabilities, as setresuid(2) does.
    fn set_user(&self, uid: u32, gid: u32) -> Result<(), Errno>;
    /// In a child that does not exec but spawns and waits (a relay): held
    /// signals are forwarded only to the children it spawns itself, not to
    /// those its parent had. Atomics only: fakes record it.
    fn forget_children(&self);
    /// Asks for SIGKILL if the parent, `parent`, dies; signal dispositions
    /// stay. `ESRCH` if it died already: the signal would never come.
    fn die_with_parent(&self, parent: Pid) -> Result<(), Errno>;
    /// Moves the calling process into a cgroup: writes "0", which means the
    /// writer, to `file`, its `tasks` (v1) or `cgroup.procs` (cgroup2).
    fn join_cgroup(&self, file: BorrowedFd<'_>) -> Result<(), Errno>;
    /// Joins the namespace `fd` refers to, which must be of type `ns`.
    fn setns(&self, fd: BorrowedFd<'_>, ns: Namespace) -> Result<(), Errno>;
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno>;
    /// Receives a detached mount tree on `sock` and attaches it at `target`.
    fn attach_tree(&self, sock: BorrowedFd<'_>, target: &Path) -> Result<(), Errno>;
    fn set_no_new_privs(&self) -> Result<(), Errno>;
    /// Marks every descriptor from `first` on close-on-exec, so nothing berth
    /// inherited (an open host directory, say) reaches the container.
    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno>;
    /// Installs a seccomp filter on this (single-threaded) process.
    fn load_seccomp(&self, prog: &BpfProgram) -> Result<(), Errno>;
    /// Puts `fd` on descriptor `target` (0, 1 or 2), inheritable across exec.
    fn redirect(&self, fd: BorrowedFd<'_>, target: RawFd) -> Result<(), Errno>;
    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    /// Creates directory `path` with exactly `mode` unless a directory is
    /// already there; anything else there (a symlink too) is `ENOTDIR`.
    fn ensure_dir(&self, path: &Path, mode: u32) -> Result<(), Errno>;
    /// Creates an empty regular file (a bind-mount target) unless one exists.
    fn create_file(&self, path: &Path) -> Result<(), Errno>;
    /// Creates character device `path` with exactly permission bits `mode`.
    fn mknod_char(&self, path: &Path, mode: u32, major: u32, minor: u32) -> Result<(), Errno>;
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno>;
    fn chdir(&self, path: &Path) -> Result<(), Errno>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno>;
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    /// Sets IFF_UP on `lo` in the current network namespace.
    fn loopback_up(&self) -> Result<(), Errno>;
    /// Drops every capability outside `keep` from all sets, bounding included.
    fn drop_caps(&self, keep: CapabilitySet) -> Result<(), Errno>;
    /// Opens `/dev/ptmx` (in the container: `pts/ptmx` of its own devpts)
    /// read-write, CLOEXEC, without making it the controlling terminal.
    fn open_pty_master(&self) -> Result<OwnedFd, Errno>;
    fn unlock_pty(&self, master: BorrowedFd<'_>) -> Result<(), Errno>;
    /// Opens `master`'s slave (`/dev/pts/N` of the master's own devpts,
    /// without a path lookup), read-write, CLOEXEC, not as controlling tty.
    fn open_pty_slave(&self, master: BorrowedFd<'_>) -> Result<OwnedFd, Errno>;
    /// Sends `fd` over unix socket `sock` (SCM_RIGHTS, one byte of data).
    fn send_fd(&self, sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno>;
    /// Starts a new session with this process as its leader.
    fn setsid(&self) -> Result<(), Errno>;
    /// Makes terminal `fd` the session's controlling terminal (TIOCSCTTY).
    fn set_controlling_tty(&self, fd: BorrowedFd<'_>) -> Result<(), Errno>;
    /// Replaces the process image. [`LinuxSys`] returns only on failure;
    /// `Ok` means "replaced" and comes only from fakes.
    fn execve(&self, path: &CStr, argv: &CArgs, envp: &CArgs) -> Result<(), Errno>;
}

/// A terminal mode saved by [`Sys::make_raw`]; fakes save none.
#[derive(Debug, Clone)]
pub struct TermMode(Option<rustix::termios::Termios>);

/// A NULL-terminated `char *[]` built before clone, so exec allocates nothing.
pub struct CArgs {
    strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CArgs {
    /// Converts each item; fails on an interior NUL byte.
    pub fn new<I, S>(items: I) -> Result<Self, NulError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let strings = items
            .into_iter()
            .map(|s| CString::new(s.as_ref().as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        // The pointers stay valid when `CArgs` moves: they point into each
        // CString's own heap buffer, which never moves.
        let ptrs = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(CArgs { strings, ptrs })
    }

    /// The `char *const[]` to hand to execve; valid while `self` lives.
    pub fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }

    /// The strings, without the terminating NULL.
    pub fn iter(&self) -> impl Iterator<Item = &CStr> {
        self.strings.iter().map(CString::as_c_str)
    }
}

impl fmt::Debug for CArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.strings.iter()).finish()
    }
}

/// Signals held (`Sys::hold_signals`) until dropped.
pub(crate) struct HeldSignals<'a>(pub(crate) &'a dyn Sys);

impl Drop for HeldSignals<'_> {
    fn drop(&mut self) {
        self.0.release_signals();
    }
}

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargs_are_null_terminated_and_survive_moves() {
        let a = CArgs::new(["sh", "-c", "true"]).unwrap();
        let moved = a;
        assert_eq!(moved.ptrs.len(), 4);
        assert!(moved.ptrs[3].is_null());
        let got: Vec<_> = moved.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(got, ["sh", "-c", "true"]);
        assert_eq!(moved.ptrs[0], moved.strings[0].as_ptr());
    }

    #[test]
    fn cargs_reject_nul() {
        assert!(CArgs::new(["a\0b"]).is_err());
    }
}
