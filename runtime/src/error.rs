//! The runtime's one error enum. Each variant names the step that failed and
//! the path it failed on; the cause is the `source`, never repeated in the text.

use std::ffi::OsString;
use std::path::PathBuf;

use rustix::io::Errno;

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Why [`crate::run`] failed: the step, the path it worked on and the errno.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid run spec: {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },

    #[error("create the status pipe")]
    Pipe { source: Errno },

    #[error("set up signal handling")]
    Signals { source: Errno },

    #[error("create the container process in new namespaces")]
    Clone { source: Errno },

    #[error("wait for the container process")]
    Wait { source: Errno },

    #[error("read the container's setup status: {reason}")]
    Protocol { reason: String },

    #[error("redirect the container's fd {fd}")]
    Stdio { fd: i32, source: Errno },

    #[error("mount {what} on {target:?}")]
    Mount {
        what: &'static str,
        target: PathBuf,
        source: Errno,
    },

    #[error("unmount {what} at {target:?}")]
    Umount {
        what: &'static str,
        target: PathBuf,
        source: Errno,
    },

    #[error("create directory {path:?}")]
    MakeDir { path: PathBuf, source: Errno },

    #[error("create device node {path:?}")]
    Device { path: PathBuf, source: Errno },

    #[error("create symlink {link:?} -> {target:?}")]
    Symlink {
        link: PathBuf,
        target: PathBuf,
        source: Errno,
    },

    #[error("change directory to {path:?}")]
    Chdir { path: PathBuf, source: Errno },

    #[error("pivot_root into {new_root:?}")]
    PivotRoot { new_root: PathBuf, source: Errno },

    #[error("set hostname {hostname:?}")]
    Sethostname { hostname: String, source: Errno },

    #[error("bring up the loopback interface")]
    Loopback { source: Errno },

    #[error("drop capabilities")]
    Capabilities { source: Errno },

    /// A step of setting up the container's pseudo-terminal, on either side.
    #[error("pty: {step}")]
    Pty { step: &'static str, source: Errno },

    /// Copying between the host's stdio and the container's pty failed.
    #[error("relay the container's terminal: {step}")]
    Relay { step: &'static str, source: Errno },

    #[error("wait for berth to set up the container's cgroup and user namespace")]
    Sync { source: Errno },

    #[error("user namespace: {step}")]
    UserNs { step: &'static str, source: Errno },

    #[error("put the container on bridge {bridge:?} (veth {veth})")]
    Bridge {
        bridge: String,
        veth: String,
        source: Errno,
    },

    #[error("join cgroup {dir:?}")]
    JoinCgroup { dir: PathBuf, source: Errno },

    #[error("create the container's cgroup namespace")]
    CgroupNs { source: Errno },

    #[error("start a new session")]
    Session { source: Errno },

    #[error("mark inherited descriptors close-on-exec")]
    CloseFds { source: Errno },

    #[error("set no_new_privs")]
    NoNewPrivs { source: Errno },

    #[error("load the seccomp filter")]
    SeccompLoad { source: Errno },

    #[error("seccomp profile")]
    Seccomp {
        #[from]
        source: crate::seccomp::SeccompError,
    },

    #[error("container cgroup")]
    Cgroup {
        #[from]
        source: crate::cgroup::CgroupError,
    },

    #[error("enter the running container")]
    Enter {
        #[from]
        source: crate::enter::EnterError,
    },

    #[error("exec {}", .cmd.to_string_lossy())]
    Exec { cmd: OsString, source: Errno },
}
