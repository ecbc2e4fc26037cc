//! The real [`Sys`]: thin wrappers over rustix/nix, plus the few raw calls
//! (clone, execve, the loopback ioctl) those crates don't cover.

use std::ffi::CStr;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::event::{PollFd, Timespec};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{self as rproc, WaitOptions};
use rustix::pty::OpenptFlags;
use rustix::termios::{self as rterm, OptionalActions};
use rustix::thread::{self as rthread, CapabilitySet, CapabilitySets};

use super::signals::{self, errno};
use super::{CArgs, Namespace, Sys, TermMode};
use crate::seccomp::BpfProgram;
use crate::spec::ExitStatus;

/// The kernel-backed [`Sys`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

impl Sys for LinuxSys {
    fn hold_signals(&self) -> Result<(), Errno> {
        signals::hold()
    }

    fn release_signals(&self) {
        signals::release();
    }

    fn spawn(&self, flags: CloneFlags, child: &mut dyn FnMut() -> i32) -> Result<Pid, Errno> {
        let ns = libc::c_ulong::try_from(flags.bits()).map_err(|_| Errno::INVAL)?;
        let sigchld = libc::c_ulong::try_from(libc::SIGCHLD).map_err(|_| Errno::INVAL)?;
        let flags = ns | sigchld;
        // SAFETY: clone(2) without CLONE_VM and with a NULL stack behaves like
        // fork(2): the child gets a copy-on-write copy of the address space and
        // resumes on its own copy of this stack, so no memory is shared. The
        // remaining arguments (parent_tid, child_tid, tls) are unused without
        // the matching CLONE_* flags, so zero is valid on every architecture.
        let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
        forked(ret, child)
    }

    fn spawn_into(
        &self,
        flags: CloneFlags,
        cgroup: BorrowedFd<'_>,
        child: &mut dyn FnMut() -> i32,
    ) -> Result<Pid, Errno> {
        let args = CloneArgs {
            flags: u64::try_from(flags.bits()).map_err(|_| Errno::INVAL)? | CLONE_INTO_CGROUP,
            exit_signal: u64::try_from(libc::SIGCHLD).map_err(|_| Errno::INVAL)?,
            cgroup: u64::try_from(cgroup.as_raw_fd()).map_err(|_| Errno::BADF)?,
            ..CloneArgs::default()
        };
        // SAFETY: as clone(2) in `spawn`: no CLONE_VM and no stack, so the
        // child runs on its own copy of this stack; the kernel only reads
        // `args`, which lives across the call, and `size_of` is its size.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                std::ptr::from_ref(&args),
                std::mem::size_of::<CloneArgs>(),
            )
        };
        forked(ret, child)
    }

    fn wait(&self, pid: Pid) -> Result<ExitStatus, Errno> {
        let rpid = rproc::Pid::from_raw(pid.as_raw()).ok_or(Errno::CHILD)?;
        let status = loop {
            match rproc::waitpid(Some(rpid), WaitOptions::empty()) {
                Ok(Some((_, status))) => break status,
                Ok(None) => continue,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    signals::untrack(pid);
                    return Err(e);
                }
            }
        };
        signals::untrack(pid);
        if let Some(sig) = status.terminating_signal() {
            Ok(ExitStatus::Signaled(sig))
        } else {
            Ok(ExitStatus::Exited(status.exit_status().unwrap_or(0)))
        }
    }

    fn kill(&self, pid: Pid) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }

    fn write_id_maps(&self, pid: Pid, uid_map: &str, gid_map: &str) -> Result<(), Errno> {
        for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
            let path = format!("/proc/{}/{file}", pid.as_raw());
            // The kernel takes a map in one write only.
            std::fs::write(&path, map)
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        }
        Ok(())
    }

    fn attach_bridge(&self, pid: Pid, link: &crate::net::BridgeLink) -> Result<(), Errno> {
        crate::net::attach(pid.as_raw(), link)
    }

    fn detach_bridge(&self, host_veth: &str) -> Result<(), Errno> {
        crate::net::delete_link(host_veth)
    }

    fn idmapped_tree(&self, path: &Path, pid: Pid) -> Result<OwnedFd, Errno> {
        super::idmap::idmapped_tree(path, pid)
    }

    fn release_child(&self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        loop {
            match rustix::io::write(fd, b"g") {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn open_proc(&self, pid: Pid) -> Result<OwnedFd, Errno> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rfs::open(format!("/proc/{}", pid.as_raw()), flags, Mode::empty())
    }

    fn open_namespace(
        &self,
        proc: BorrowedFd<'_>,
        ns: Namespace,
    ) -> Result<Option<OwnedFd>, Errno> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        let fd = rfs::openat(proc, format!("ns/{}", ns.name()), flags, Mode::empty())?;
        let theirs = rfs::fstat(&fd)?;
        // thread-self: namespaces are per thread.
        let ours = rfs::statat(
            CWD,
            format!("/proc/thread-self/ns/{}", ns.name()),
            AtFlags::empty(),
        )?;
        let same = (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino);
        Ok((!same).then_some(fd))
    }

    fn socketpair(&self) -> Result<(OwnedFd, OwnedFd), Errno> {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
    }

    fn recv_fd(&self, sock: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Errno> {
        let mut byte = [0u8; 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        loop {
            let mut iov = [IoSliceMut::new(&mut byte)];
            match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        let mut got = None;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                for fd in fds {
                    // Keep the first; any extra is dropped (closed).
                    got.get_or_insert(fd);
                }
            }
        }
        Ok(got)
    }

    fn is_terminal(&self, fd: BorrowedFd<'_>) -> bool {
        rterm::isatty(fd)
    }

    fn make_raw(&self, fd: BorrowedFd<'_>) -> Result<TermMode, Errno> {
        let saved = rterm::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rterm::tcsetattr(fd, OptionalActions::Flush, &raw)?;
        Ok(TermMode(Some(saved)))
    }

    fn restore_mode(&self, fd: BorrowedFd<'_>, mode: &TermMode) -> Result<(), Errno> {
        match &mode.0 {
            // Drain: what we wrote in raw mode is shown as such.
            Some(t) => rterm::tcsetattr(fd, OptionalActions::Drain, t),
            None => Ok(()),
        }
    }

    fn copy_winsize(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
        rterm::tcsetwinsize(to, rterm::tcgetwinsize(from)?)
    }

    fn set_nonblocking(&self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        let flags = rustix::fs::fcntl_getfl(fd)?;
        rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)
    }

    fn watch_winch(&self) -> Result<(), Errno> {
        signals::watch_winch()
    }

    fn unwatch_winch(&self) {
        signals::unwatch_winch();
    }

    fn winch_count(&self) -> u64 {
        signals::winch_count()
    }

    fn poll(&self, fds: &mut [PollFd<'_>], timeout_ms: i32) -> Result<usize, Errno> {
        let timeout = (timeout_ms >= 0).then(|| Timespec {
            tv_sec: i64::from(timeout_ms / 1000),
            tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
        });
        rustix::event::poll(fds, timeout.as_ref())
    }

    fn read(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
        rustix::io::read(fd, buf)
    }

    fn write(&self, fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
        rustix::io::write(fd, buf)
    }

    fn reset_signals(&self) -> Result<(), Errno> {
        signals::reset_in_child()?;
        rproc::set_parent_process_death_signal(Some(rproc::Signal::KILL))
    }

    fn await_parent(&self, fd: BorrowedFd<'_>, parent_end: BorrowedFd<'_>) -> Result<(), Errno> {
        // SAFETY: this runs in the child, a copy of the parent: the descriptor
        // is this copy's, and the `OwnedFd` it was borrowed from is never
        // dropped here (the child execs or `_exit`s), so nothing closes it twice.
        if unsafe { libc::close(parent_end.as_raw_fd()) } != 0 {
            return Err(last_errno());
        }
        let mut byte = [0u8; 1];
        loop {
            match rustix::io::read(fd, &mut byte) {
                Ok(0) => return Err(Errno::CANCELED),
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn become_root(&self) -> Result<(), Errno> {
        // Raw per-thread calls: libc's setxid would signal the parent's
        // threads, which don't exist in this copy of the process.
        rthread::set_thread_groups(&[])?;
        let root_gid = rustix::process::Gid::ROOT;
        rthread::set_thread_res_gid(root_gid, root_gid, root_gid)?;
        let root = rustix::process::Uid::ROOT;
        rthread::set_thread_res_uid(root, root, root)
    }

    fn set_user(&self, uid: u32, gid: u32) -> Result<(), Errno> {
        // -1 means "unchanged" to the kernel, never an id.
        if uid == u32::MAX || gid == u32::MAX {
            return Err(Errno::INVAL);
        }
        // Per-thread calls, as in `become_root`.
        rthread::set_thread_groups(&[])?;
        let gid = rustix::process::Gid::from_raw(gid);
        rthread::set_thread_res_gid(gid, gid, gid)?;
        let uid = rustix::process::Uid::from_raw(uid);
        rthread::set_thread_res_uid(uid, uid, uid)
    }

    fn forget_children(&self) {
        signals::untrack_all();
    }

    fn die_with_parent(&self, parent: Pid) -> Result<(), Errno> {
        rproc::set_parent_process_death_signal(Some(rproc::Signal::KILL))?;
        // A parent gone before the request leaves us to a reaper.
        match rproc::getppid() {
            Some(p) if p.as_raw_nonzero().get() == parent.as_raw() => Ok(()),
            _ => Err(Errno::SRCH),
        }
    }

    fn join_cgroup(&self, file: BorrowedFd<'_>) -> Result<(), Errno> {
        loop {
            match rustix::io::write(file, b"0") {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn setns(&self, fd: BorrowedFd<'_>, ns: Namespace) -> Result<(), Errno> {
        nix::sched::setns(fd, ns.clone_flag()).map_err(errno)
    }

    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        nix::sched::unshare(flags).map_err(errno)
    }

    fn attach_tree(&self, sock: BorrowedFd<'_>, target: &Path) -> Result<(), Errno> {
        let tree = self.recv_fd(sock)?.ok_or(Errno::CANCELED)?;
        super::idmap::attach(tree.as_fd(), target)
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        super::seccomp::set_no_new_privs()
    }

    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno> {
        let first = libc::c_uint::try_from(first).map_err(|_| Errno::BADF)?;
        // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC takes two integers
        // and a flag and only sets descriptor flags; it touches no memory.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        match last_errno() {
            // Before Linux 5.11: one descriptor at a time, up to a sane bound.
            Errno::NOSYS | Errno::INVAL => {
                for fd in first..4096 {
                    // SAFETY: fcntl(F_SETFD) on a number that may not be an
                    // open descriptor only fails with EBADF; no memory is used.
                    unsafe { libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC) };
                }
                Ok(())
            }
            e => Err(e),
        }
    }

    fn load_seccomp(&self, prog: &BpfProgram) -> Result<(), Errno> {
        super::seccomp::load_filter(prog)
    }

    fn redirect(&self, fd: BorrowedFd<'_>, target: RawFd) -> Result<(), Errno> {
        if fd.as_raw_fd() == target {
            // dup2 onto itself is a no-op that would leave CLOEXEC set.
            return rustix::io::fcntl_setfd(fd, FdFlags::empty());
        }
        let res = match target {
            0 => nix::unistd::dup2_stdin(fd),
            1 => nix::unistd::dup2_stdout(fd),
            2 => nix::unistd::dup2_stderr(fd),
            _ => return Err(Errno::BADF),
        };
        res.map_err(errno)
    }

    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(src, target, fstype, flags, data).map_err(errno)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags).map_err(errno)
    }

    fn ensure_dir(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        match rfs::mkdirat(CWD, path, Mode::from_raw_mode(mode)) {
            // The umask may have cut bits from `mode`.
            Ok(()) => rfs::chmodat(CWD, path, Mode::from_raw_mode(mode), AtFlags::empty()),
            Err(Errno::EXIST) => {
                let st = rfs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    Ok(())
                } else {
                    Err(Errno::NOTDIR)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn create_file(&self, path: &Path) -> Result<(), Errno> {
        let flags = OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        rfs::openat(CWD, path, flags, Mode::from_raw_mode(0o644)).map(drop)
    }

    fn mknod_char(&self, path: &Path, mode: u32, major: u32, minor: u32) -> Result<(), Errno> {
        let dev = rfs::makedev(major, minor);
        rfs::mknodat(
            CWD,
            path,
            FileType::CharacterDevice,
            Mode::from_raw_mode(mode),
            dev,
        )?;
        rfs::chmodat(CWD, path, Mode::from_raw_mode(mode), AtFlags::empty())
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno> {
        rfs::symlinkat(target, CWD, link)
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        rproc::chdir(path)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        rproc::pivot_root(new_root, put_old)
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        rustix::system::sethostname(name.as_bytes())
    }

    fn loopback_up(&self) -> Result<(), Errno> {
        loopback_up()
    }

    fn drop_caps(&self, keep: CapabilitySet) -> Result<(), Errno> {
        for cap in CapabilitySet::all().difference(keep).iter() {
            match rthread::remove_capability_from_bounding_set(cap) {
                // A capability this kernel doesn't know is nothing to drop.
                Ok(()) | Err(Errno::INVAL) => {}
                Err(e) => return Err(e),
            }
        }
        let now = rthread::capabilities(None)?;
        rthread::set_capabilities(
            None,
            CapabilitySets {
                effective: now.effective & keep,
                permitted: now.permitted & keep,
                inheritable: now.inheritable & keep,
            },
        )?;
        rthread::clear_ambient_capability_set()
    }

    fn open_pty_master(&self) -> Result<OwnedFd, Errno> {
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
    }

    fn unlock_pty(&self, master: BorrowedFd<'_>) -> Result<(), Errno> {
        rustix::pty::unlockpt(master)
    }

    fn open_pty_slave(&self, master: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
        // TIOCGPTPEER: the slave of this very master, no /dev/pts/N lookup.
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        rustix::pty::ioctl_tiocgptpeer(master, flags)
    }

    fn send_fd(&self, sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        // All on the stack: this runs in the child before exec.
        let fds = [fd];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(Errno::NOBUFS);
        }
        let iov = [IoSlice::new(b"m")];
        loop {
            match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn setsid(&self) -> Result<(), Errno> {
        rproc::setsid().map(drop)
    }

    fn set_controlling_tty(&self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        rproc::ioctl_tiocsctty(fd)
    }

    fn execve(&self, path: &CStr, argv: &CArgs, envp: &CArgs) -> Result<(), Errno> {
        // SAFETY: `path` is NUL-terminated; `argv` and `envp` are
        // NULL-terminated arrays of pointers into NUL-terminated strings that
        // `CArgs` owns and keeps alive for this call. execve returns only on
        // failure, leaving everything untouched.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        Err(last_errno())
    }
}

/// SIOCGIFFLAGS/SIOCSIFFLAGS on a throwaway socket: the one way to bring an
/// interface up without netlink.
fn loopback_up() -> Result<(), Errno> {
    use std::os::fd::{FromRawFd, OwnedFd};

    // SAFETY: socket(2) takes plain integers and returns a new descriptor or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_errno());
    }
    // SAFETY: `raw` is a freshly created descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data (a name array and a union of integers and
    // addresses), for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name in `req` and writes
    // `ifru_flags`; `req` is a live, exclusively borrowed ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just filled `ifru_flags`, the union's active field
    // for this request; it is a plain integer.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags from the live `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), a 64-bit flag only clone3 takes.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Both sides of a fork-like clone that returned `ret`: the child runs
/// `child` and exits with its value; the parent gets the child's pid.
fn forked(ret: libc::c_long, child: &mut dyn FnMut() -> i32) -> Result<Pid, Errno> {
    match ret {
        -1 => Err(last_errno()),
        0 => {
            // Never unwind into the copy of the caller's frames: their
            // destructors belong to the parent.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(127);
            // SAFETY: _exit(2) ends the child without running atexit
            // handlers or destructors that belong to the parent's state.
            unsafe { libc::_exit(code) }
        }
        pid => {
            let pid = Pid::from_raw(i32::try_from(pid).map_err(|_| Errno::RANGE)?);
            signals::track(pid);
            Ok(pid)
        }
    }
}

fn last_errno() -> Errno {
    Errno::from_raw_os_error(nix::errno::Errno::last_raw())
}
