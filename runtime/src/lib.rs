//! berth-runtime: a thin container runtime. [`run`] starts a command inside
//! an already-mounted root filesystem, in new mount, pid, uts, ipc and
//! (unless [`NetMode::Host`]) network namespaces, with its own /proc, a
//! read-only /sys and a minimal /dev, and returns its exit status. [`enter`]
//! runs a further command in a running container (`berth exec`).
//!
//! All syscalls go through [`sys::Sys`]; [`sys::LinuxSys`] is the real one and
//! [`sys::FakeSys`] records calls for tests.

pub mod cgroup;
mod devices;
mod enter;
pub mod error;
mod exec;
pub mod net;
mod pty;
mod report;
mod rootfs;
pub mod seccomp;
mod spawn;
pub mod spec;
mod step;
pub mod sys;

pub use cgroup::{CgroupConfig, Limits};
pub use devices::DEVICES;
pub use enter::{enter, EnterError, EnterSpec};
pub use error::RuntimeError;
pub use net::BridgeLink;
pub use rootfs::DEFAULT_CAPS;
pub use seccomp::SeccompChoice;
pub use spawn::{run, run_observed, Started};
pub use spec::{
    default_env, ExitStatus, IdRange, NetMode, RunSpec, Security, Stdio, UserNs, DEFAULT_PATH,
};
pub use sys::{Call, FakeSys, LinuxSys, Namespace, Sys, TermMode};
