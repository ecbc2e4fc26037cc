//! The ordered setup the container process runs before exec: make mounts
//! private, bind the rootfs onto itself, mount /proc, /sys and /dev in it,
//! pivot into it, then hostname, network, cwd, capabilities and the pty (if
//! asked for). Pure: it only
//! builds the list; [`crate::step::Step::run`] carries each step out.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use nix::mount::MsFlags;
use rustix::thread::CapabilitySet;

use crate::cgroup::Entry;
use crate::devices::dev_steps;
use crate::pty::PtyChild;
use crate::seccomp::BpfProgram;
use crate::spec::RunSpec;
use crate::step::Step;

/// Docker's default capability set less `CAP_MKNOD` (device nodes are the
/// host's disks) and `CAP_NET_RAW` (raw and packet sockets), as Podman does;
/// everything else is dropped.
pub const DEFAULT_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
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

/// /proc paths that could change the host if written: mounted read-only
/// (the OCI runtime spec's defaults).
const READ_ONLY_PATHS: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Paths that leak host state or kernel memory: hidden.
const MASKED_PATHS: [&str; 11] = [
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// What the child's steps borrow besides the spec.
pub(crate) struct ChildContext<'a> {
    /// The container's cgroup, which the child joins first.
    pub cgroup: &'a Entry,
    /// With [`RunSpec::tty`]: the pty steps come last and `spec.stdio` is
    /// not redirected (the pty replaces it).
    pub pty: Option<&'a PtyChild>,
    /// The pipe the parent releases the child with: read end, write end.
    pub sync: (BorrowedFd<'a>, BorrowedFd<'a>),
    /// Where the idmapped rootfs arrives (user namespace with idmapping).
    pub tree_sock: Option<BorrowedFd<'a>>,
    pub seccomp: Option<&'a BpfProgram>,
}

/// Every step from clone to just before exec, in order.
pub(crate) fn setup_steps<'a>(spec: &'a RunSpec, ctx: &ChildContext<'a>) -> Vec<Step<'a>> {
    let root = spec.rootfs.as_path();
    let pty = ctx.pty;
    let mut steps: Vec<Step<'a>> = ctx.cgroup.steps().collect();
    steps.push(Step::ResetSignals);
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
    steps.push(Step::AwaitParent {
        fd: ctx.sync.0,
        parent_end: ctx.sync.1,
    });
    if spec.userns.is_some() {
        steps.push(Step::BecomeRoot);
    }
    if spec.cgroup.is_some() {
        // Now that we are in it.
        steps.push(Step::UnshareCgroup);
    }
    if pty.is_none() {
        // With a pty, its steps start the session and give it the pty.
        steps.push(Step::Setsid);
    }
    // Nothing we mount may propagate back to the host.
    steps.push(Step::Mount {
        what: "private propagation",
        src: None,
        target: PathBuf::from("/"),
        fstype: None,
        flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        data: None,
    });
    // pivot_root needs the new root to be a mount point.
    steps.push(match ctx.tree_sock {
        Some(sock) => Step::AttachRootfs {
            sock,
            target: root.to_path_buf(),
        },
        None => Step::Mount {
            what: "rootfs bind",
            src: Some(root.to_path_buf()),
            target: root.to_path_buf(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        },
    });
    steps.extend([
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
    if spec.security.mask_proc {
        for path in READ_ONLY_PATHS {
            steps.push(Step::ReadOnly {
                path: root.join(path),
            });
        }
        for path in MASKED_PATHS {
            steps.push(Step::Mask {
                path: root.join(path),
            });
        }
    }
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
    if spec.net.private() {
        steps.push(Step::LoopbackUp);
    }
    steps.push(Step::Chdir {
        path: spec.cwd.clone(),
    });
    if let Some(keep) = spec.security.caps {
        steps.push(Step::DropCaps { keep });
    }
    if let Some(pty) = pty {
        // After the pivot, so /dev/ptmx is the container's own pts/ptmx.
        steps.extend(pty.steps());
    }
    // Even privileged: a host descriptor is a way out of the rootfs.
    steps.push(Step::CloseInherited);
    if spec.security.no_new_privs {
        steps.push(Step::NoNewPrivs);
    }
    if let Some(prog) = ctx.seccomp {
        // Last: every step above makes calls the filter may deny.
        steps.push(Step::Seccomp { prog });
    }
    steps
}
