//! The ordered setup the container process runs before exec: make mounts
//! private, bind the rootfs onto itself, mount /proc, /sys and /dev in it,
//! pivot into it, then hostname, network, cwd, capabilities and the pty (if
//! asked for). Pure: it only
//! builds the list; [`crate::step::Step::run`] carries each step out.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::mount::MsFlags;
use rustix::thread::CapabilitySet;

use crate::devices::dev_steps;
use crate::pty::PtyChild;
use crate::spec::{NetMode, RunSpec};
use crate::step::Step;

/// Docker's default capability set; everything else is dropped.
pub const DEFAULT_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::AUDIT_WRITE);

const NO_SUID_DEV_EXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Every step from clone to just before exec, in order. With `pty` (for
/// [`RunSpec::tty`]) the pty steps come last and `spec.stdio` is not
/// redirected: the pty replaces it.
pub(crate) fn setup_steps<'a>(spec: &'a RunSpec, pty: Option<&'a PtyChild>) -> Vec<Step<'a>> {
    let root = spec.rootfs.as_path();
    let mut steps = vec![Step::ResetSignals];
    let stdio = [&spec.stdio.stdin, &spec.stdio.stdout, &spec.stdio.stderr];
    let redirected = if pty.is_some() { 0 } else { stdio.len() };
    for (target, fd) in (0..).zip(stdio).take(redirected) {
        if let Some(fd) = fd {
            steps.push(Step::Redirect {
                fd: fd.as_fd(),
                target,
            });
        }
    }
    steps.extend([
        // Nothing we mount may propagate back to the host.
        Step::Mount {
            what: "private propagation",
            src: None,
            target: PathBuf::from("/"),
            fstype: None,
            flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            data: None,
        },
        // pivot_root needs the new root to be a mount point.
        Step::Mount {
            what: "rootfs bind",
            src: Some(root.to_path_buf()),
            target: root.to_path_buf(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        },
        Step::EnsureDir {
            path: root.join("proc"),
            mode: 0o555,
        },
        Step::Mount {
            what: "proc",
            src: Some(PathBuf::from("proc")),
            target: root.join("proc"),
            fstype: Some("proc"),
            flags: NO_SUID_DEV_EXEC,
            data: None,
        },
        Step::EnsureDir {
            path: root.join("sys"),
            mode: 0o555,
        },
        Step::Sysfs {
            target: root.join("sys"),
        },
    ]);
    steps.extend(dev_steps(&root.join("dev")));
    steps.extend([
        Step::Chdir {
            path: root.to_path_buf(),
        },
        Step::PivotRoot {
            new_root: root.to_path_buf(),
        },
        Step::DetachOldRoot,
        Step::Sethostname {
            name: &spec.hostname,
        },
    ]);
    if spec.net == NetMode::None {
        steps.push(Step::LoopbackUp);
    }
    steps.push(Step::Chdir {
        path: spec.cwd.clone(),
    });
    if spec.drop_caps {
        steps.push(Step::DropCaps { keep: DEFAULT_CAPS });
    }
    if let Some(pty) = pty {
        // After the pivot, so /dev/ptmx is the container's own pts/ptmx.
        steps.extend(pty.steps());
    }
    steps
}
