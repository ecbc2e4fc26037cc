//! One setup step in the container process, how it runs against [`Sys`]
//! (fallbacks included) and which [`RuntimeError`] its failure becomes.

use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rustix::io::Errno;
use rustix::thread::CapabilitySet;

use crate::error::RuntimeError;
use crate::pty::{PtyChild, PtyOp};
use crate::seccomp::BpfProgram;
use crate::sys::Sys;

/// Flags for the read-only bind of the host's /sys when sysfs can't be mounted.
const NO_SUID_DEV_EXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const SYS_RO: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Flags of a read-only remount of a /proc path: ours are nosuid, nodev,
/// noexec, and a remount must repeat them (in a user namespace they are locked).
const PROC_RO: MsFlags = MsFlags::MS_BIND
    .union(MsFlags::MS_REMOUNT)
    .union(MsFlags::MS_RDONLY)
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// Joins one hierarchy of the container's cgroup by writing "0" (the
    /// writer) to `file`, opened by the parent ([`crate::cgroup::Entry`]).
    JoinCgroup {
        dir: &'a Path,
        file: BorrowedFd<'a>,
        /// cgroup2's, which clone3 may have placed the child in already.
        v2: bool,
    },
    ResetSignals,
    /// Waits for the parent's word, given once it has written the child's id
    /// maps and attached its network; the pipe's EOF (the parent failed or
    /// died) ends the child. `parent_end`, the child's inherited copy of the
    /// write end, is closed first: while it is open, there is no EOF.
    AwaitParent {
        fd: BorrowedFd<'a>,
        parent_end: BorrowedFd<'a>,
    },
    /// uid/gid 0 of the new user namespace, no supplementary groups.
    BecomeRoot,
    /// A cgroup namespace rooted at the container's own cgroup.
    UnshareCgroup,
    /// A new session without a controlling terminal (no TIOCSTI into ours).
    Setsid,
    /// Attaches the idmapped copy of the rootfs the parent sends on `sock`.
    AttachRootfs {
        sock: BorrowedFd<'a>,
        target: PathBuf,
    },
    /// Binds `path` onto itself read-only; a missing path is skipped.
    ReadOnly {
        path: PathBuf,
    },
    /// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a
    /// directory; a missing path is skipped.
    Mask {
        path: PathBuf,
    },
    NoNewPrivs,
    /// Everything above stdio is closed at exec.
    CloseInherited,
    Seccomp {
        prog: &'a BpfProgram,
    },
    Redirect {
        fd: BorrowedFd<'a>,
        target: RawFd,
    },
    Mount {
        what: &'static str,
        src: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<&'static str>,
        flags: MsFlags,
        data: Option<&'static str>,
    },
    /// sysfs read-only, or a read-only bind of the host's /sys if that fails.
    Sysfs {
        target: PathBuf,
    },
    EnsureDir {
        path: PathBuf,
        mode: u32,
    },
    /// mknod, or a bind of the host's node if we may not mknod.
    Device {
        path: PathBuf,
        host: PathBuf,
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
    /// `pivot_root(".", ".")`: the cwd must be the new root.
    PivotRoot {
        new_root: PathBuf,
    },
    /// Lazily unmounts the old root, stacked on "." by the pivot.
    DetachOldRoot,
    Sethostname {
        name: &'a str,
    },
    LoopbackUp,
    DropCaps {
        keep: CapabilitySet,
    },
    /// One step of setting up the container's pty.
    Pty {
        op: PtyOp,
        pty: &'a PtyChild,
    },
}

impl Step<'_> {
    pub(crate) fn run(&self, sys: &dyn Sys) -> Result<(), Errno> {
        match self {
            Step::JoinCgroup { file, .. } => sys.join_cgroup(*file),
            Step::ResetSignals => sys.reset_signals(),
            Step::AwaitParent { fd, parent_end } => sys.await_parent(*fd, *parent_end),
            Step::BecomeRoot => sys.become_root(),
            Step::UnshareCgroup => sys.unshare(CloneFlags::CLONE_NEWCGROUP),
            Step::Setsid => sys.setsid(),
            Step::AttachRootfs { sock, target } => sys.attach_tree(*sock, target),
            Step::ReadOnly { path } => {
                let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
                match sys.mount(Some(path), path, None, bind, None) {
                    Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(e),
                    Ok(()) => sys.mount(None, path, None, PROC_RO, None),
                }
            }
            Step::Mask { path } => {
                let null = Path::new("/dev/null");
                match sys.mount(Some(null), path, None, MsFlags::MS_BIND, None) {
                    Err(Errno::NOENT) => Ok(()),
                    Err(Errno::NOTDIR) => {
                        let flags = MsFlags::MS_RDONLY | NO_SUID_DEV_EXEC;
                        let tmpfs = Path::new("tmpfs");
                        sys.mount(Some(tmpfs), path, Some("tmpfs"), flags, Some("size=0"))
                    }
                    other => other,
                }
            }
            Step::NoNewPrivs => sys.set_no_new_privs(),
            Step::CloseInherited => sys.cloexec_from(3),
            Step::Seccomp { prog } => sys.load_seccomp(prog),
            Step::Redirect { fd, target } => sys.redirect(*fd, *target),
            Step::Mount {
                src,
                target,
                fstype,
                flags,
                data,
                ..
            } => sys.mount(src.as_deref(), target, *fstype, *flags, *data),
            Step::Sysfs { target } => {
                let sysfs = Path::new("sysfs");
                if sys
                    .mount(Some(sysfs), target, Some("sysfs"), SYS_RO, None)
                    .is_ok()
                {
                    return Ok(());
                }
                let host = Path::new("/sys");
                let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
                sys.mount(Some(host), target, None, bind, None)?;
                // A bind ignores MS_RDONLY; only a remount makes it read-only.
                let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | SYS_RO;
                sys.mount(None, target, None, ro, None)
            }
            Step::EnsureDir { path, mode } => sys.ensure_dir(path, *mode),
            Step::Device {
                path,
                host,
                major,
                minor,
            } => match sys.mknod_char(path, 0o666, *major, *minor) {
                Err(Errno::PERM | Errno::ACCESS) => {
                    sys.create_file(path)?;
                    sys.mount(Some(host), path, None, MsFlags::MS_BIND, None)
                }
                other => other,
            },
            Step::Symlink { target, link } => sys.symlink(target, link),
            Step::Chdir { path } => sys.chdir(path),
            Step::PivotRoot { .. } => sys.pivot_root(Path::new("."), Path::new(".")),
            Step::DetachOldRoot => sys.umount(Path::new("."), MntFlags::MNT_DETACH),
            Step::Sethostname { name } => sys.sethostname(name),
            Step::LoopbackUp => sys.loopback_up(),
            Step::DropCaps { keep } => sys.drop_caps(*keep),
            Step::Pty { op, pty } => op.run(pty, sys),
        }
    }

    /// Whether the step is left out in a child that clone3 created inside
    /// its cgroup2 directory.
    pub(crate) fn done_by_clone(&self, born_in_cgroup: bool) -> bool {
        born_in_cgroup && matches!(self, Step::JoinCgroup { v2: true, .. })
    }

    /// The error this step's failure with `source` is reported as.
    pub(crate) fn error(&self, source: Errno) -> RuntimeError {
        match self {
            Step::JoinCgroup { dir, .. } => RuntimeError::JoinCgroup {
                dir: dir.to_path_buf(),
                source,
            },
            Step::ResetSignals => RuntimeError::Signals { source },
            Step::AwaitParent { .. } => RuntimeError::Sync { source },
            Step::BecomeRoot => RuntimeError::UserNs {
                step: "become root in the user namespace",
                source,
            },
            Step::UnshareCgroup => RuntimeError::CgroupNs { source },
            Step::Setsid => RuntimeError::Session { source },
            Step::AttachRootfs { target, .. } => RuntimeError::Mount {
                what: "idmapped rootfs",
                target: target.clone(),
                source,
            },
            Step::ReadOnly { path } => RuntimeError::Mount {
                what: "read-only /proc path",
                target: path.clone(),
                source,
            },
            Step::Mask { path } => RuntimeError::Mount {
                what: "mask",
                target: path.clone(),
                source,
            },
            Step::NoNewPrivs => RuntimeError::NoNewPrivs { source },
            Step::CloseInherited => RuntimeError::CloseFds { source },
            Step::Seccomp { .. } => RuntimeError::SeccompLoad { source },
            Step::Redirect { target, .. } => RuntimeError::Stdio {
                fd: *target,
                source,
            },
            Step::Mount { what, target, .. } => RuntimeError::Mount {
                what,
                target: target.clone(),
                source,
            },
            Step::Sysfs { target } => RuntimeError::Mount {
                what: "sysfs",
                target: target.clone(),
                source,
            },
            Step::EnsureDir { path, .. } => RuntimeError::MakeDir {
                path: path.clone(),
                source,
            },
            Step::Device { path, .. } => RuntimeError::Device {
                path: path.clone(),
                source,
            },
            Step::Symlink { target, link } => RuntimeError::Symlink {
                link: link.clone(),
                target: target.clone(),
                source,
            },
            Step::Chdir { path } => RuntimeError::Chdir {
                path: path.clone(),
                source,
            },
            Step::PivotRoot { new_root } => RuntimeError::PivotRoot {
                new_root: new_root.clone(),
                source,
            },
            Step::DetachOldRoot => RuntimeError::Umount {
                what: "old root",
                target: PathBuf::from("/"),
                source,
            },
            Step::Sethostname { name } => RuntimeError::Sethostname {
                hostname: (*name).to_owned(),
                source,
            },
            Step::LoopbackUp => RuntimeError::Loopback { source },
            Step::DropCaps { .. } => RuntimeError::Capabilities { source },
            Step::Pty { op, .. } => op.error(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, FakeSys};

    #[test]
    fn sysfs_falls_back_to_read_only_bind() {
        let fake = FakeSys::new().fail_nth(0, Errno::PERM);
        let step = Step::Sysfs {
            target: "/r/sys".into(),
        };
        step.run(&fake).unwrap();
        let calls = fake.calls();
        assert_eq!(calls.len(), 3);
        assert!(matches!(&calls[1], Call::Mount { src: Some(s), flags, .. }
            if s == Path::new("/sys") && *flags == MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(matches!(&calls[2], Call::Mount { src: None, flags, .. }
            if flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_BIND)));
    }

    #[test]
    fn sysfs_failing_twice_is_a_mount_error() {
        let fake = FakeSys::new().fail_when(|c| matches!(c, Call::Mount { .. }), Errno::PERM);
        let step = Step::Sysfs {
            target: "/r/sys".into(),
        };
        let err = step.error(step.run(&fake).unwrap_err());
        assert!(
            matches!(err, RuntimeError::Mount { what: "sysfs", ref target, source: Errno::PERM }
            if target == Path::new("/r/sys"))
        );
        assert_eq!(fake.calls().len(), 2);
    }

    #[test]
    fn device_falls_back_to_bind_only_on_permission_errors() {
        let step = Step::Device {
            path: "/r/dev/null".into(),
            host: "/dev/null".into(),
            major: 1,
            minor: 3,
        };
        let fake = FakeSys::new().fail_nth(0, Errno::PERM);
        step.run(&fake).unwrap();
        assert_eq!(
            fake.calls()[1..],
            [
                Call::CreateFile {
                    path: "/r/dev/null".into()
                },
                Call::Mount {
                    src: Some("/dev/null".into()),
                    target: "/r/dev/null".into(),
                    fstype: None,
                    flags: MsFlags::MS_BIND,
                    data: None,
                },
            ]
        );

        let fake = FakeSys::new().fail_nth(0, Errno::NOSPC);
        let err = step.error(step.run(&fake).unwrap_err());
        assert!(matches!(
            err,
            RuntimeError::Device {
                source: Errno::NOSPC,
                ..
            }
        ));
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn messages_name_the_step_and_path_in_lowercase() {
        let step = Step::Mount {
            what: "proc",
            src: None,
            target: "/r/proc".into(),
            fstype: Some("proc"),
            flags: MsFlags::empty(),
            data: None,
        };
        assert_eq!(
            step.error(Errno::PERM).to_string(),
            "mount proc on \"/r/proc\""
        );
        let pivot = Step::PivotRoot {
            new_root: "/r".into(),
        };
        assert_eq!(
            pivot.error(Errno::INVAL).to_string(),
            "pivot_root into \"/r\""
        );
    }
}
