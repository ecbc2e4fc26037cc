//! What to run and how: [`RunSpec`], its defaults and its validation.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::thread::CapabilitySet;

use crate::cgroup::{CgroupConfig, Limits};
use crate::error::{Result, RuntimeError};
use crate::rootfs::DEFAULT_CAPS;
use crate::seccomp::SeccompChoice;

/// The `PATH` a container gets unless the spec's environment sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The longest hostname the kernel accepts (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

/// Whether the container gets its own network namespace, and what is in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetMode {
    /// Share the host's network namespace.
    Host,
    /// A new network namespace holding only `lo`, brought up.
    #[default]
    None,
    /// A new network namespace with `lo` and `eth0`, the inner end of a veth
    /// pair on a host bridge.
    Bridge(crate::net::BridgeLink),
}

impl NetMode {
    /// Whether the container gets a network namespace of its own.
    pub fn private(&self) -> bool {
        !matches!(self, NetMode::Host)
    }
}

/// Descriptors to put on the container's fd 0, 1 and 2; `None` inherits ours.
/// [`crate::run`] only borrows them: close a pipe's write end after it returns.
/// With [`RunSpec::tty`] the container's 0, 1 and 2 are its pty instead:
/// `stdin` and `stdout` (default: ours) are then the host ends of the relay,
/// and `stderr` is unused (the pty carries both output streams).
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Everything [`crate::run`] needs to start a command in a mounted rootfs.
#[derive(Debug)]
pub struct RunSpec {
    /// The mounted root filesystem (absolute path).
    pub rootfs: PathBuf,
    /// The container's hostname, usually its name.
    pub hostname: String,
    /// The command; `argv[0]` is looked up in the container's `PATH` unless it has a `/`.
    pub argv: Vec<OsString>,
    /// The command's whole environment; a later entry overrides an earlier
    /// one with the same name.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory inside the container (absolute).
    pub cwd: PathBuf,
    pub net: NetMode,
    pub stdio: Stdio,
    /// What confines the container; [`Security::default`] is berth's safe
    /// default, [`Security::privileged`] the one explicit way out.
    pub security: Security,
    /// The container's own cgroup (limits, device policy); `None` leaves it
    /// in the caller's cgroup.
    pub cgroup: Option<CgroupConfig>,
    /// Run in a new user namespace with these mappings (unprivileged container).
    pub userns: Option<UserNs>,
    /// Give the command a pty from the container's own devpts as its stdio,
    /// its controlling terminal in a new session, relayed to the host's
    /// stdin/stdout (raw mode and window size if stdin is a terminal).
    pub tty: bool,
    /// With `tty`: hand the pty master to the caller ([`crate::Started::pty`])
    /// instead of relaying it to `stdio` (a detached container's console).
    pub keep_pty: bool,
}

impl RunSpec {
    /// A spec with the default environment, cwd `/`, a private network,
    /// Docker's default capability set and no pty.
    pub fn new(
        rootfs: impl Into<PathBuf>,
        hostname: impl Into<String>,
        argv: Vec<OsString>,
    ) -> Self {
        RunSpec {
            rootfs: rootfs.into(),
            hostname: hostname.into(),
            argv,
            env: default_env(std::env::var_os("TERM")),
            cwd: PathBuf::from("/"),
            net: NetMode::default(),
            stdio: Stdio::default(),
            security: Security::default(),
            cgroup: None,
            userns: None,
            tty: false,
            keep_pty: false,
        }
    }

    /// Gives the container its own cgroup named after its hostname, with the
    /// default limits and the device policy that `security` implies.
    pub fn with_cgroup(mut self, parent: Option<PathBuf>, limits: Limits) -> Self {
        self.cgroup = Some(CgroupConfig {
            name: self.hostname.clone(),
            parent,
            limits,
            restrict_devices: self.security.restrict_devices,
        });
        self
    }

    /// The value of `PATH` in the container's environment, or [`DEFAULT_PATH`].
    pub fn path_var(&self) -> &OsStr {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(OsStr::new(DEFAULT_PATH), |(_, v)| v.as_os_str())
    }

    /// Rejects what the kernel would refuse later with a less helpful error.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason: &str| {
            Err(RuntimeError::InvalidSpec {
                field,
                reason: reason.to_owned(),
            })
        };
        if !self.rootfs.is_absolute() {
            return invalid("rootfs", "must be an absolute path");
        }
        if !self.cwd.is_absolute() {
            return invalid("cwd", "must be an absolute path");
        }
        if self.hostname.is_empty() || self.hostname.len() > HOST_NAME_MAX {
            return invalid("hostname", "must be 1 to 64 bytes long");
        }
        match self.argv.first() {
            None => return invalid("argv", "no command given"),
            Some(a) if a.is_empty() => return invalid("argv", "empty command name"),
            Some(_) => {}
        }
        for (k, _) in &self.env {
            if k.is_empty() || k.as_bytes().contains(&b'=') {
                return invalid("env", "variable names must be non-empty and contain no '='");
            }
        }
        if let Some(ns) = &self.userns {
            let ok = |m: &[IdRange]| !m.is_empty() && m.iter().all(|r| r.count > 0);
            if !ok(&ns.uid_map) || !ok(&ns.gid_map) {
                return invalid(
                    "userns",
                    "uid and gid maps need at least one range of 1 or more ids",
                );
            }
        }
        let has_nul = |s: &OsStr| s.as_bytes().contains(&0);
        if has_nul(self.rootfs.as_os_str())
            || has_nul(self.cwd.as_os_str())
            || self.hostname.contains('\0')
            || self.argv.iter().any(|a| has_nul(a))
            || self.env.iter().any(|(k, v)| has_nul(k) || has_nul(v))
        {
            return invalid("spec", "strings must not contain NUL bytes");
        }
        Ok(())
    }
}

/// How a container is confined. `Default` is safe: a reduced capability set
/// (Docker's, less `CAP_MKNOD` and `CAP_NET_RAW`), masked and read-only /proc
/// paths, the device allow-list, `no_new_privs` and berth's seccomp profile.
#[derive(Debug, Clone)]
pub struct Security {
    /// Capabilities to keep; `None` keeps every one.
    pub caps: Option<CapabilitySet>,
    /// Mount /proc/sys and friends read-only and mask /proc/kcore and friends.
    pub mask_proc: bool,
    /// Allow only the basic character devices (device cgroup or BPF program).
    pub restrict_devices: bool,
    pub no_new_privs: bool,
    pub seccomp: SeccompChoice,
    /// Where compiled seccomp programs are kept for reuse (none: compile each time).
    pub seccomp_cache: Option<PathBuf>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            caps: Some(DEFAULT_CAPS),
            mask_proc: true,
            restrict_devices: true,
            no_new_privs: true,
            seccomp: SeccompChoice::Default,
            seccomp_cache: None,
        }
    }
}

impl Security {
    /// `--privileged`: every capability, no masking, no device policy, no
    /// seccomp, `no_new_privs` off. Namespaces and the cgroup's limits stay.
    pub fn privileged() -> Self {
        Security {
            caps: None,
            mask_proc: false,
            restrict_devices: false,
            no_new_privs: false,
            seccomp: SeccompChoice::Unconfined,
            seccomp_cache: None,
        }
    }
}

/// One contiguous id mapping: ids `inside..inside+count` in the container are
/// `outside..outside+count` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// A user namespace for the container. `idmap_rootfs` shifts the rootfs's
/// owners with an idmapped mount (nothing on disk changes); without it the
/// volume must already be owned by the mapped ids (a chown shift).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNs {
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
    pub idmap_rootfs: bool,
}

impl UserNs {
    /// Container root (and the next `count - 1` ids) mapped to host ids from
    /// `uid`/`gid` on.
    pub fn root_at(uid: u32, gid: u32, count: u32) -> Self {
        let one = |outside| {
            vec![IdRange {
                inside: 0,
                outside,
                count,
            }]
        };
        UserNs {
            uid_map: one(uid),
            gid_map: one(gid),
            idmap_rootfs: true,
        }
    }

    /// The text written to `/proc/PID/uid_map` or `gid_map`.
    pub fn map_text(ranges: &[IdRange]) -> String {
        ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
            .collect()
    }
}

/// The default container environment; `term` is the host's `TERM`, if set.
pub fn default_env(term: Option<OsString>) -> Vec<(OsString, OsString)> {
    let mut env = vec![(OsString::from("PATH"), OsString::from(DEFAULT_PATH))];
    if let Some(term) = term {
        env.push(("TERM".into(), term));
    }
    env.push(("HOME".into(), "/root".into()));
    env.push(("container".into(), "berth".into()));
    env
}

/// How the container's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The code a shell would report: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    /// Exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec::new("/r", "c1", vec!["sh".into()])
    }

    #[test]
    fn default_env_order_and_term() {
        let env = default_env(Some("xterm".into()));
        let keys: Vec<_> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(keys, ["PATH", "TERM", "HOME", "container"]);
        assert_eq!(env[3].1, "berth");
        assert_eq!(default_env(None).len(), 3);
    }

    #[test]
    fn path_var_prefers_last_path_in_env() {
        let mut s = spec();
        assert_eq!(s.path_var(), DEFAULT_PATH);
        s.env.push(("PATH".into(), "/opt/bin".into()));
        assert_eq!(s.path_var(), "/opt/bin");
        s.env.clear();
        assert_eq!(s.path_var(), DEFAULT_PATH);
    }

    #[test]
    fn validate_rejects_bad_fields() {
        assert!(spec().validate().is_ok());
        let field = |s: RunSpec| match s.validate() {
            Err(RuntimeError::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        };
        let mut s = spec();
        s.rootfs = "rel".into();
        assert_eq!(field(s), "rootfs");
        let mut s = spec();
        s.cwd = "tmp".into();
        assert_eq!(field(s), "cwd");
        let mut s = spec();
        s.hostname = "x".repeat(65);
        assert_eq!(field(s), "hostname");
        let mut s = spec();
        s.argv.clear();
        assert_eq!(field(s), "argv");
        let mut s = spec();
        s.env.push(("A=B".into(), "c".into()));
        assert_eq!(field(s), "env");
        let mut s = spec();
        s.argv.push("a\0b".into());
        assert_eq!(field(s), "spec");
    }

    #[test]
    fn exit_code_like_a_shell() {
        assert_eq!(ExitStatus::Exited(7).code(), 7);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert!(ExitStatus::Exited(0).success());
        assert!(!ExitStatus::Signaled(15).success());
    }
}
