//! A recording [`Sys`] for tests: each call is logged as a typed [`Call`], and
//! chosen calls fail. `spawn` runs the child closure inline, in this process.
//!
//! The pty is a real socketpair: the "master" end reads back the bytes given
//! to [`FakeSys::pty_output`], then EOF; what the relay writes to the master
//! can be read back with [`FakeSys::pty_input`]. `poll`, `read` and `write`
//! are real calls on the descriptors they're given.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::event::PollFd;
use rustix::io::Errno;
use rustix::thread::CapabilitySet;

use super::{CArgs, Namespace, Sys, TermMode};
use crate::seccomp::BpfProgram;
use crate::spec::ExitStatus;

/// One recorded call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    HoldSignals,
    ReleaseSignals,
    Spawn {
        flags: CloneFlags,
    },
    /// A spawn straight into a cgroup2 directory (`Sys::spawn_into`).
    SpawnInto {
        flags: CloneFlags,
        cgroup: PathBuf,
    },
    Wait {
        pid: Pid,
    },
    Kill {
        pid: Pid,
    },
    WriteIdMaps {
        pid: Pid,
        uid_map: String,
        gid_map: String,
    },
    IdmappedTree {
        path: PathBuf,
        pid: Pid,
    },
    ReleaseChild,
    OpenProc {
        pid: Pid,
    },
    OpenNamespace {
        ns: Namespace,
    },
    AwaitParent,
    BecomeRoot,
    SetUser {
        uid: u32,
        gid: u32,
    },
    ForgetChildren,
    DieWithParent,
    /// The file written to: a v1 `tasks` or a cgroup2 `cgroup.procs`.
    JoinCgroup {
        file: PathBuf,
    },
    Setns {
        ns: Namespace,
    },
    Unshare {
        flags: CloneFlags,
    },
    AttachTree {
        target: PathBuf,
    },
    NoNewPrivs,
    CloexecFrom {
        first: RawFd,
    },
    LoadSeccomp {
        len: usize,
    },
    Socketpair,
    RecvFd {
        sock: RawFd,
    },
    IsTerminal {
        fd: RawFd,
    },
    MakeRaw {
        fd: RawFd,
    },
    RestoreMode {
        fd: RawFd,
    },
    CopyWinsize {
        from: RawFd,
        to: RawFd,
    },
    SetNonblocking {
        fd: RawFd,
    },
    WatchWinch,
    UnwatchWinch,
    Poll {
        fds: Vec<RawFd>,
    },
    Read {
        fd: RawFd,
    },
    Write {
        fd: RawFd,
        len: usize,
    },
    ResetSignals,
    Redirect {
        fd: RawFd,
        target: RawFd,
    },
    Mount {
        src: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount {
        target: PathBuf,
        flags: MntFlags,
    },
    EnsureDir {
        path: PathBuf,
        mode: u32,
    },
    CreateFile {
        path: PathBuf,
    },
    Mknod {
        path: PathBuf,
        mode: u32,
        major: u32,
        minor: u32,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    Chdir {
        path: PathBuf,
    },
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
    Sethostname {
        name: String,
    },
    LoopbackUp,
    AttachBridge {
        pid: Pid,
        link: crate::net::BridgeLink,
    },
    DetachBridge {
        host_veth: String,
    },
    DropCaps {
        keep: CapabilitySet,
    },
    OpenPtyMaster,
    UnlockPty {
        master: RawFd,
    },
    OpenPtySlave {
        master: RawFd,
    },
    SendFd {
        sock: RawFd,
        fd: RawFd,
    },
    Setsid,
    SetControllingTty {
        fd: RawFd,
    },
    Exec {
        path: PathBuf,
        argv: Vec<OsString>,
        envp: Vec<OsString>,
    },
}

impl Call {
    /// Whether this is one of the relay's data calls (poll, read, write),
    /// whose number depends on timing; tests of call order skip them.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            Call::Poll { .. } | Call::Read { .. } | Call::Write { .. }
        )
    }
}

type Matcher = Box<dyn Fn(&Call) -> bool>;

/// The fake pid [`FakeSys::spawn`] hands out.
pub const FAKE_PID: i32 = 4242;

/// Records calls; fails the nth call and/or calls matching a predicate.
#[derive(Default)]
pub struct FakeSys {
    calls: RefCell<Vec<Call>>,
    fail_nth: Cell<Option<(usize, Errno)>>,
    fail_matching: RefCell<Vec<(Matcher, Errno)>>,
    exit: Cell<Option<ExitStatus>>,
    terminal: Cell<bool>,
    pty_output: RefCell<Vec<u8>>,
    /// (master, slave) once `open_pty_master` ran.
    pty: RefCell<Option<(OwnedFd, OwnedFd)>>,
    sent: Cell<bool>,
    winches: Cell<u64>,
    /// Namespaces [`Sys::open_namespace`] calls the caller's own.
    shared: RefCell<Vec<Namespace>>,
}

impl FakeSys {
    /// A fake on which every call succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`th call (0-based, counting every call) fail with `errno`.
    pub fn fail_nth(self, n: usize, errno: Errno) -> Self {
        self.fail_nth.set(Some((n, errno)));
        self
    }

    /// Makes every call for which `pred` holds fail with `errno`.
    pub fn fail_when(self, pred: impl Fn(&Call) -> bool + 'static, errno: Errno) -> Self {
        self.fail_matching
            .borrow_mut()
            .push((Box::new(pred), errno));
        self
    }

    /// What [`Sys::wait`] reports; `Exited(0)` by default.
    pub fn exit_with(self, status: ExitStatus) -> Self {
        self.exit.set(Some(status));
        self
    }

    /// Makes [`Sys::is_terminal`] say yes.
    pub fn terminal(self) -> Self {
        self.terminal.set(true);
        self
    }

    /// What the container "writes" to its pty before closing it.
    pub fn pty_output(self, bytes: &[u8]) -> Self {
        *self.pty_output.borrow_mut() = bytes.to_vec();
        self
    }

    /// Makes [`Sys::open_namespace`] find these namespaces shared with the
    /// caller (`None`); the others get a descriptor.
    pub fn sharing(self, namespaces: &[Namespace]) -> Self {
        self.shared.borrow_mut().extend_from_slice(namespaces);
        self
    }

    /// Pretends `n` SIGWINCHs have arrived.
    pub fn add_winches(&self, n: u64) {
        self.winches.set(self.winches.get() + n);
    }

    /// What was written to the pty master so far (drains it).
    pub fn pty_input(&self) -> Vec<u8> {
        let mut got = Vec::new();
        if let Some((_, slave)) = self.pty.borrow().as_ref() {
            let mut buf = [0u8; 4096];
            while let Ok((n @ 1.., _)) =
                rustix::net::recv(slave, &mut buf, rustix::net::RecvFlags::DONTWAIT)
            {
                got.extend_from_slice(&buf[..n]);
            }
        }
        got
    }

    /// Every call so far, failed ones included, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Records `call` and decides whether it fails.
    fn record(&self, call: Call) -> Result<(), Errno> {
        let n = self.calls.borrow().len();
        let failure = match self.fail_nth.get() {
            Some((at, errno)) if at == n => Some(errno),
            _ => self
                .fail_matching
                .borrow()
                .iter()
                .find(|(pred, _)| pred(&call))
                .map(|(_, errno)| *errno),
        };
        self.calls.borrow_mut().push(call);
        failure.map_or(Ok(()), Err)
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

/// The path `fd` was opened at, as the kernel tells it.
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn os(s: &CStr) -> OsString {
    OsStr::from_bytes(s.to_bytes()).to_owned()
}

impl Sys for FakeSys {
    fn hold_signals(&self) -> Result<(), Errno> {
        self.record(Call::HoldSignals)
    }

    fn release_signals(&self) {
        let _ = self.record(Call::ReleaseSignals);
    }

    fn spawn(&self, flags: CloneFlags, child: &mut dyn FnMut() -> i32) -> Result<Pid, Errno> {
        self.record(Call::Spawn { flags })?;
        child();
        Ok(Pid::from_raw(FAKE_PID))
    }

    fn spawn_into(
        &self,
        flags: CloneFlags,
        cgroup: BorrowedFd<'_>,
        child: &mut dyn FnMut() -> i32,
    ) -> Result<Pid, Errno> {
        let cgroup = fd_path(cgroup);
        self.record(Call::SpawnInto { flags, cgroup })?;
        child();
        Ok(Pid::from_raw(FAKE_PID))
    }

    fn wait(&self, pid: Pid) -> Result<ExitStatus, Errno> {
        self.record(Call::Wait { pid })?;
        Ok(self.exit.get().unwrap_or(ExitStatus::Exited(0)))
    }

    fn kill(&self, pid: Pid) {
        let _ = self.record(Call::Kill { pid });
    }

    fn write_id_maps(&self, pid: Pid, uid_map: &str, gid_map: &str) -> Result<(), Errno> {
        self.record(Call::WriteIdMaps {
            pid,
            uid_map: uid_map.to_owned(),
            gid_map: gid_map.to_owned(),
        })
    }

    fn attach_bridge(&self, pid: Pid, link: &crate::net::BridgeLink) -> Result<(), Errno> {
        self.record(Call::AttachBridge {
            pid,
            link: link.clone(),
        })
    }

    fn detach_bridge(&self, host_veth: &str) -> Result<(), Errno> {
        self.record(Call::DetachBridge {
            host_veth: host_veth.to_owned(),
        })
    }

    fn idmapped_tree(&self, path: &Path, pid: Pid) -> Result<OwnedFd, Errno> {
        self.record(Call::IdmappedTree {
            path: path.to_path_buf(),
            pid,
        })?;
        // Any descriptor will do: the fake child never attaches it.
        let (a, _b) = super::LinuxSys.socketpair()?;
        Ok(a)
    }

    fn release_child(&self, _fd: BorrowedFd<'_>) -> Result<(), Errno> {
        self.record(Call::ReleaseChild)
    }

    fn open_proc(&self, pid: Pid) -> Result<OwnedFd, Errno> {
        self.record(Call::OpenProc { pid })?;
        // Any descriptor will do: the fake only passes it back.
        let (a, _b) = super::LinuxSys.socketpair()?;
        Ok(a)
    }

    fn open_namespace(
        &self,
        _proc: BorrowedFd<'_>,
        ns: Namespace,
    ) -> Result<Option<OwnedFd>, Errno> {
        self.record(Call::OpenNamespace { ns })?;
        if self.shared.borrow().contains(&ns) {
            return Ok(None);
        }
        let (a, _b) = super::LinuxSys.socketpair()?;
        Ok(Some(a))
    }

    fn await_parent(&self, _fd: BorrowedFd<'_>, _parent_end: BorrowedFd<'_>) -> Result<(), Errno> {
        self.record(Call::AwaitParent)
    }

    fn become_root(&self) -> Result<(), Errno> {
        self.record(Call::BecomeRoot)
    }

    fn set_user(&self, uid: u32, gid: u32) -> Result<(), Errno> {
        self.record(Call::SetUser { uid, gid })
    }

    fn forget_children(&self) {
        let _ = self.record(Call::ForgetChildren);
    }

    fn die_with_parent(&self, _parent: Pid) -> Result<(), Errno> {
        self.record(Call::DieWithParent)
    }

    fn join_cgroup(&self, file: BorrowedFd<'_>) -> Result<(), Errno> {
        let file = fd_path(file);
        self.record(Call::JoinCgroup { file })
    }

    fn setns(&self, _fd: BorrowedFd<'_>, ns: Namespace) -> Result<(), Errno> {
        self.record(Call::Setns { ns })
    }

    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        self.record(Call::Unshare { flags })
    }

    fn attach_tree(&self, _sock: BorrowedFd<'_>, target: &Path) -> Result<(), Errno> {
        self.record(Call::AttachTree {
            target: target.to_path_buf(),
        })
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        self.record(Call::NoNewPrivs)
    }

    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno> {
        self.record(Call::CloexecFrom { first })
    }

    fn load_seccomp(&self, prog: &BpfProgram) -> Result<(), Errno> {
        self.record(Call::LoadSeccomp { len: prog.len() })
    }

    fn socketpair(&self) -> Result<(OwnedFd, OwnedFd), Errno> {
        self.record(Call::Socketpair)?;
        super::LinuxSys.socketpair()
    }

    fn recv_fd(&self, sock: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Errno> {
        self.record(Call::RecvFd {
            sock: sock.as_raw_fd(),
        })?;
        if !self.sent.get() {
            return Ok(None);
        }
        match self.pty.borrow().as_ref() {
            Some((master, _)) => master.try_clone().map(Some).map_err(io_errno),
            None => Ok(None),
        }
    }

    fn is_terminal(&self, fd: BorrowedFd<'_>) -> bool {
        let ok = self.record(Call::IsTerminal { fd: fd.as_raw_fd() }).is_ok();
        ok && self.terminal.get()
    }

    fn make_raw(&self, fd: BorrowedFd<'_>) -> Result<TermMode, Errno> {
        self.record(Call::MakeRaw { fd: fd.as_raw_fd() })?;
        Ok(TermMode(None))
    }

    fn restore_mode(&self, fd: BorrowedFd<'_>, _mode: &TermMode) -> Result<(), Errno> {
        self.record(Call::RestoreMode { fd: fd.as_raw_fd() })
    }

    fn copy_winsize(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
        self.record(Call::CopyWinsize {
            from: from.as_raw_fd(),
            to: to.as_raw_fd(),
        })
    }

    fn set_nonblocking(&self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        self.record(Call::SetNonblocking { fd: fd.as_raw_fd() })?;
        super::LinuxSys.set_nonblocking(fd)
    }

    fn watch_winch(&self) -> Result<(), Errno> {
        self.record(Call::WatchWinch)
    }

    fn unwatch_winch(&self) {
        let _ = self.record(Call::UnwatchWinch);
    }

    fn winch_count(&self) -> u64 {
        self.winches.get()
    }

    fn poll(&self, fds: &mut [PollFd<'_>], timeout_ms: i32) -> Result<usize, Errno> {
        self.record(Call::Poll {
            fds: fds.iter().map(|p| p.as_fd().as_raw_fd()).collect(),
        })?;
        super::LinuxSys.poll(fds, timeout_ms)
    }

    fn read(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
        self.record(Call::Read { fd: fd.as_raw_fd() })?;
        rustix::io::read(fd, buf)
    }

    fn write(&self, fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
        self.record(Call::Write {
            fd: fd.as_raw_fd(),
            len: buf.len(),
        })?;
        rustix::io::write(fd, buf)
    }

    fn reset_signals(&self) -> Result<(), Errno> {
        self.record(Call::ResetSignals)
    }

    fn redirect(&self, fd: BorrowedFd<'_>, target: RawFd) -> Result<(), Errno> {
        self.record(Call::Redirect {
            fd: fd.as_raw_fd(),
            target,
        })
    }

    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.record(Call::Mount {
            src: src.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        })
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        self.record(Call::Umount {
            target: target.to_path_buf(),
            flags,
        })
    }

    fn ensure_dir(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        self.record(Call::EnsureDir {
            path: path.to_path_buf(),
            mode,
        })
    }

    fn create_file(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::CreateFile {
            path: path.to_path_buf(),
        })
    }

    fn mknod_char(&self, path: &Path, mode: u32, major: u32, minor: u32) -> Result<(), Errno> {
        self.record(Call::Mknod {
            path: path.to_path_buf(),
            mode,
            major,
            minor,
        })
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno> {
        self.record(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        })
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::Chdir {
            path: path.to_path_buf(),
        })
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        self.record(Call::PivotRoot {
            new_root: new_root.to_path_buf(),
            put_old: put_old.to_path_buf(),
        })
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        self.record(Call::Sethostname {
            name: name.to_owned(),
        })
    }

    fn loopback_up(&self) -> Result<(), Errno> {
        self.record(Call::LoopbackUp)
    }

    fn drop_caps(&self, keep: CapabilitySet) -> Result<(), Errno> {
        self.record(Call::DropCaps { keep })
    }

    fn open_pty_master(&self) -> Result<OwnedFd, Errno> {
        self.record(Call::OpenPtyMaster)?;
        let (master, slave) = super::LinuxSys.socketpair()?;
        let out = self.pty_output.borrow();
        let mut rest: &[u8] = &out;
        while !rest.is_empty() {
            let n = rustix::io::write(&slave, rest)?;
            rest = &rest[n..];
        }
        // The container side is done writing: the master reads EOF next.
        rustix::net::shutdown(&slave, rustix::net::Shutdown::Write)?;
        let mine = master.try_clone().map_err(io_errno)?;
        *self.pty.borrow_mut() = Some((master, slave));
        Ok(mine)
    }

    fn unlock_pty(&self, master: BorrowedFd<'_>) -> Result<(), Errno> {
        self.record(Call::UnlockPty {
            master: master.as_raw_fd(),
        })
    }

    fn open_pty_slave(&self, master: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
        self.record(Call::OpenPtySlave {
            master: master.as_raw_fd(),
        })?;
        match self.pty.borrow().as_ref() {
            Some((_, slave)) => slave.try_clone().map_err(io_errno),
            None => Err(Errno::BADF),
        }
    }

    fn send_fd(&self, sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        self.record(Call::SendFd {
            sock: sock.as_raw_fd(),
            fd: fd.as_raw_fd(),
        })?;
        self.sent.set(true);
        Ok(())
    }

    fn setsid(&self) -> Result<(), Errno> {
        self.record(Call::Setsid)
    }

    fn set_controlling_tty(&self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        self.record(Call::SetControllingTty { fd: fd.as_raw_fd() })
    }

    fn execve(&self, path: &CStr, argv: &CArgs, envp: &CArgs) -> Result<(), Errno> {
        self.record(Call::Exec {
            path: PathBuf::from(os(path)),
            argv: argv.iter().map(os).collect(),
            envp: envp.iter().map(os).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_fails_nth_and_matching() {
        let fake = FakeSys::new()
            .fail_nth(1, Errno::PERM)
            .fail_when(|c| matches!(c, Call::LoopbackUp), Errno::NODEV);
        assert!(fake.chdir(Path::new("/a")).is_ok());
        assert_eq!(fake.chdir(Path::new("/b")), Err(Errno::PERM));
        assert_eq!(fake.loopback_up(), Err(Errno::NODEV));
        assert!(fake.sethostname("h").is_ok());
        assert_eq!(fake.calls().len(), 4);
        assert_eq!(fake.calls()[1], Call::Chdir { path: "/b".into() });
    }

    #[test]
    fn spawn_runs_child_inline_and_wait_reports_status() {
        let fake = FakeSys::new().exit_with(ExitStatus::Signaled(9));
        let mut ran = false;
        let pid = fake
            .spawn(CloneFlags::CLONE_NEWPID, &mut || {
                ran = true;
                0
            })
            .unwrap();
        assert!(ran);
        assert_eq!(fake.wait(pid), Ok(ExitStatus::Signaled(9)));
    }
}
