//! seccomp profiles in Docker's JSON format, compiled to BPF.
//!
//! A profile is read and checked ([`SeccompProfile`]), reduced to the rules
//! that apply to one container (its capabilities, the native architecture,
//! the running kernel), compiled with libseccomp into a [`BpfProgram`] in the
//! parent, and loaded by the container process between clone and exec with
//! [`set_no_new_privs`] and [`BpfProgram::load`], which allocate nothing.
//!
//! # The default profile
//!
//! `default.json`, in Docker's format. Unlike Docker's allowlist it allows
//! everything and denies (EPERM) what reaches outside the container. A
//! denylist is only sound if every ABI is filtered, so the filter covers
//! x86_64, x86 (`int 0x80`) and x32 (aarch64: and arm); any other
//! architecture kills the process. Groups:
//!
//! - always: the kernel keyring (`keyctl`, `add_key`, `request_key`; not
//!   namespaced); obsolete calls (`uselib`, `_sysctl`, `vm86`…); io_uring,
//!   whose operations seccomp cannot see; `lsm_set_self_attr` (own LSM label).
//! - unless CAP_SYS_ADMIN: the mount API old and new, `pivot_root`, `setns`,
//!   `unshare`, `clone` with any `CLONE_NEW*` flag, swap, quotas,
//!   `fanotify_init`, `lookup_dcookie`. `clone3` returns ENOSYS: its flags
//!   are in memory a filter cannot read, and libc then falls back to `clone`.
//! - unless the matching cap: modules (SYS_MODULE), `reboot` and kexec
//!   (SYS_BOOT), setting the clock (SYS_TIME), `process_vm_*`, `kcmp` and
//!   `userfaultfd` (SYS_PTRACE), `acct` (SYS_PACCT), `iopl`/`ioperm`
//!   (SYS_RAWIO), `syslog` (SYSLOG), `bpf` (SYS_ADMIN or BPF),
//!   `perf_event_open` (SYS_ADMIN or PERFMON), file handles
//!   (DAC_READ_SEARCH); `ptrace` on kernels before 4.8, where it could
//!   bypass seccomp, unless SYS_PTRACE.
//! - by argument: `ioctl` TIOCSTI and TIOCLINUX (terminal input injection);
//!   `socket(AF_VSOCK)` (the hypervisor host; on x86, libseccomp cannot see
//!   `socketcall`'s arguments and denies `socketcall(SYS_SOCKET)` whole);
//!   `personality` except 0, PER_LINUX32 (0x8), UNAME26 (0x20000), both, and
//!   the 0xffffffff query. libseccomp cannot OR, so that last one is 32
//!   MASKED_EQ rules, one per bit p of the 32-bit persona: "bit p set and bit
//!   p+1 (mod 32) clear" (for p = 3 and 17: bits p-1 and p+1). Every other
//!   value has such a pair; none of the allowed ones does.
//!
//! Syscall names libseccomp does not know (newer than it) are skipped, as
//! Docker does; with a denylist such calls stay allowed.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustix::io::Errno;
use rustix::thread::CapabilitySet;

mod compile;
mod names;
mod plan;
mod profile;

pub use compile::{BpfProgram, SockFilter};
pub use names::caps as parse_caps;
pub use profile::SeccompProfile;

/// Why a profile could not be read, checked or compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("read seccomp profile {path:?}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("parse seccomp profile {path:?} at line {line}, column {column}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        source: serde_json::Error,
    },

    #[error("unknown seccomp action {name:?}")]
    UnknownAction { name: String },

    #[error("SCMP_ACT_NOTIFY needs a seccomp agent, which berth does not have")]
    Notify,

    #[error("unknown seccomp comparison operator {name:?}")]
    UnknownOperator { name: String },

    #[error("unknown capability {name:?}")]
    UnknownCapability { name: String },

    #[error("unknown seccomp architecture {name:?}")]
    UnknownArch { name: String },

    #[error("a seccomp profile has either architectures or archMap, not both")]
    ArchListConflict,

    #[error("syscall entry {entry} has no name")]
    Unnamed { entry: usize },

    #[error("argument index {index} of {syscall} is out of range (0 to 5)")]
    ArgIndex { syscall: String, index: u32 },

    #[error("errnoRet {value} is out of range")]
    ErrnoRange { value: u32 },

    #[error("parse kernel version {value:?}")]
    KernelVersion { value: String },

    #[error("create the seccomp filter")]
    InitFilter {
        source: libseccomp::error::SeccompError,
    },

    #[error("add architecture {arch} to the seccomp filter")]
    AddArch {
        arch: String,
        source: libseccomp::error::SeccompError,
    },

    #[error("add the seccomp rule for {syscall}")]
    AddRule {
        syscall: String,
        source: libseccomp::error::SeccompError,
    },

    #[error("export the seccomp filter as BPF")]
    ExportBpf {
        source: libseccomp::error::SeccompError,
    },

    #[error("read back the exported BPF")]
    ReadBpf { source: std::io::Error },

    #[error("exported BPF of {bytes} bytes is not 1 to 4096 instructions")]
    ProgramSize { bytes: usize },
}

/// Which filter a container gets: `berth run --seccomp default|unconfined|PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompChoice {
    /// [`SeccompProfile::default_profile`].
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A profile in Docker's JSON format.
    File(PathBuf),
}

impl FromStr for SeccompChoice {
    type Err = Infallible;

    /// "default", "unconfined", or else a path.
    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(match s {
            "default" => SeccompChoice::Default,
            "unconfined" => SeccompChoice::Unconfined,
            path => SeccompChoice::File(PathBuf::from(path)),
        })
    }
}

impl SeccompChoice {
    /// The filter for a container that keeps `caps`; `None` when unconfined.
    /// Call it in the parent.
    pub fn program(&self, caps: CapabilitySet) -> Result<Option<BpfProgram>, SeccompError> {
        self.program_cached(caps, None)
    }

    /// [`SeccompChoice::program`], reusing a program compiled before for the
    /// same rules from `cache` (a directory), and keeping new ones there:
    /// libseccomp takes over a millisecond per filter, each start and exec.
    pub fn program_cached(
        &self,
        caps: CapabilitySet,
        cache: Option<&Path>,
    ) -> Result<Option<BpfProgram>, SeccompError> {
        let profile = match self {
            SeccompChoice::Unconfined => return Ok(None),
            SeccompChoice::Default => SeccompProfile::default_profile()?,
            SeccompChoice::File(path) => SeccompProfile::from_file(path)?,
        };
        let plan = profile.plan(caps, &plan::Host::current()?);
        match cache {
            Some(dir) => compile::compile_cached(&plan, dir).map(Some),
            None => compile::compile(&plan).map(Some),
        }
    }
}

/// Sets no_new_privs on the calling thread: execve can no longer grant
/// privileges, and the thread may load a filter without CAP_SYS_ADMIN.
/// Child side: allocates nothing.
pub fn set_no_new_privs() -> Result<(), Errno> {
    crate::sys::seccomp::set_no_new_privs()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::names::{Action, Op};
    use super::plan::{Host, Plan};
    use super::*;

    fn default_plan(caps: CapabilitySet) -> Plan {
        let host = Host {
            kernel: (6, 1),
            ..Host::current().unwrap()
        };
        SeccompProfile::default_profile().unwrap().plan(caps, &host)
    }

    /// Whether `plan` denies `name` called with `arg` in argument `index`;
    /// only the MASKED_EQ conditions the default profile uses.
    fn denies(plan: &Plan, name: &str, index: u32, arg: u64) -> bool {
        plan.rules.iter().filter(|r| r.name == name).any(|r| {
            r.args.iter().all(|c| {
                assert_eq!(c.op, Op::MaskedEq);
                c.index != index || arg & c.value == c.value_two
            })
        })
    }

    #[test]
    fn choice_parses() {
        assert_eq!("default".parse(), Ok(SeccompChoice::Default));
        assert_eq!("unconfined".parse(), Ok(SeccompChoice::Unconfined));
        assert_eq!(
            "./p.json".parse(),
            Ok(SeccompChoice::File(PathBuf::from("./p.json")))
        );
        assert_eq!(SeccompChoice::default(), SeccompChoice::Default);
    }

    #[test]
    fn choice_programs() {
        assert!(SeccompChoice::Unconfined
            .program(CapabilitySet::empty())
            .unwrap()
            .is_none());
        let prog = SeccompChoice::Default.program(crate::DEFAULT_CAPS).unwrap();
        assert!(prog.is_some_and(|p| !p.is_empty()));
        let err = SeccompChoice::File("/nonexistent.json".into())
            .program(CapabilitySet::empty())
            .unwrap_err();
        assert!(
            matches!(err, SeccompError::Read { path, .. } if path == Path::new("/nonexistent.json"))
        );
    }

    #[test]
    fn personality_allows_exactly_the_safe_personas() {
        let plan = default_plan(crate::DEFAULT_CAPS);
        let allowed = |v: u64| {
            let low = v & 0xffff_ffff; // the kernel takes an unsigned int
            low & !0x2_0008 == 0 || low == 0xffff_ffff
        };
        let mut samples: Vec<u64> = vec![0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff, 0x40_0000];
        for bit in 0..64 {
            samples.push(1 << bit);
            samples.push(0xffff_ffff ^ (1 << bit));
            samples.push(0x2_0008 | (1 << bit));
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x);
            samples.push(x & 0x2_00ff);
        }
        for v in samples {
            assert_eq!(denies(&plan, "personality", 0, v), !allowed(v), "{v:#x}");
        }
    }

    #[test]
    fn clone_namespace_flags_need_sys_admin() {
        let plan = default_plan(crate::DEFAULT_CAPS);
        let sigchld = 17;
        assert!(!denies(&plan, "clone", 0, sigchld | 0x0001_0f00)); // a thread
        for flag in [0x2_0000, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000]
            .into_iter()
            .chain([0x2000_0000, 0x4000_0000])
        {
            assert!(denies(&plan, "clone", 0, sigchld | flag), "{flag:#x}");
        }
        let admin = default_plan(crate::DEFAULT_CAPS | CapabilitySet::SYS_ADMIN);
        assert!(!admin.rules.iter().any(|r| r.name == "clone"));
        for name in ["mount", "unshare", "setns", "clone3", "fsopen"] {
            assert!(!admin.rules.iter().any(|r| r.name == name), "{name}");
        }
        assert!(admin.rules.iter().any(|r| r.name == "keyctl"));
    }

    #[test]
    fn default_profile_denials() {
        let plan = default_plan(crate::DEFAULT_CAPS);
        let action = |name: &str| plan.rules.iter().find(|r| r.name == name).map(|r| r.action);
        for name in [
            "keyctl",
            "mount",
            "umount2",
            "unshare",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "kexec_load",
            "init_module",
            "clock_settime",
            "process_vm_readv",
            "open_by_handle_at",
            "io_uring_setup",
        ] {
            assert_eq!(action(name), Some(Action::Errno(1)), "{name}");
        }
        assert_eq!(action("clone3"), Some(Action::Errno(38)));
        assert_eq!(action("ptrace"), None, "allowed from 4.8 on");
        assert!(denies(&plan, "ioctl", 1, 0x5412));
        assert!(denies(&plan, "ioctl", 1, 0x541c));
        assert!(!denies(&plan, "ioctl", 1, 0x5401));
        assert!(denies(&plan, "socket", 0, 40));
        assert!(!denies(&plan, "socket", 0, 1));
        let ptrace = default_plan(crate::DEFAULT_CAPS | CapabilitySet::SYS_PTRACE);
        assert!(!ptrace.rules.iter().any(|r| r.name == "process_vm_readv"));
    }
}
