//! A recording [`Sys`] for tests: each call is logged as a typed [`Call`], and
//! chosen calls fail. `spawn` runs the child closure inline, in this process.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::io::Errno;
use rustix::thread::CapabilitySet;

use super::{CArgs, Sys};
use crate::spec::ExitStatus;

/// One recorded call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    HoldSignals,
    ReleaseSignals,
    Spawn {
        flags: CloneFlags,
    },
    Wait {
        pid: Pid,
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
    DropCaps {
        keep: CapabilitySet,
    },
    Exec {
        path: PathBuf,
        argv: Vec<OsString>,
        envp: Vec<OsString>,
    },
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

    fn wait(&self, pid: Pid) -> Result<ExitStatus, Errno> {
        self.record(Call::Wait { pid })?;
        Ok(self.exit.get().unwrap_or(ExitStatus::Exited(0)))
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
