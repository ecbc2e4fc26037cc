//! Idmapped mounts for user-namespaced containers: the parent clones the
//! rootfs's mount tree and idmaps it with the child's user namespace; the
//! child receives the tree over a socket and attaches it over its rootfs.
//! Nothing on disk changes: the mapping lives in the mount.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::unistd::Pid;
use rustix::fs::{self as rfs, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// `MOUNT_ATTR_IDMAP` from linux/mount.h.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` from linux/mount.h (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Parent side: a detached, recursive copy of the tree at `path` whose
/// owners are seen through the user namespace of `pid`.
pub(super) fn idmapped_tree(path: &Path, pid: Pid) -> Result<OwnedFd, Errno> {
    let ns_path = format!("/proc/{}/ns/user", pid.as_raw());
    let userns = rfs::open(ns_path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let tree = rustix::mount::open_tree(
        CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).map_err(|_| Errno::BADF)?,
    };
    let flags = libc::AT_EMPTY_PATH | libc::AT_RECURSIVE;
    // SAFETY: mount_setattr(2) reads `size_of::<MountAttr>()` bytes from
    // `attr`, a live #[repr(C)] struct laid out as the kernel's
    // `struct mount_attr` (version 0), and the NUL-terminated empty path;
    // `tree` and `userns` are open descriptors for the whole call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(Errno::from_raw_os_error(nix::errno::Errno::last_raw()));
    }
    Ok(tree)
}

/// Child side: attaches the detached tree `tree` at `target`.
pub(super) fn attach(tree: BorrowedFd<'_>, target: &Path) -> Result<(), Errno> {
    rustix::mount::move_mount(
        tree,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}
