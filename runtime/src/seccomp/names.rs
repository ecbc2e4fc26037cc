//! The names a Docker profile uses (actions, comparison operators,
//! capabilities, architectures, kernel versions) and what they mean here.

use libseccomp::ScmpArch;
use rustix::thread::CapabilitySet;

use super::SeccompError;

/// What a rule (or the default) does; `SCMP_ACT_NOTIFY` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Allow,
    Errno(u16),
    KillThread,
    KillProcess,
    Trap,
    Trace(u16),
    Log,
}

/// The errno `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` use without `errnoRet`
/// (as runc does).
const EPERM: u32 = 1;
/// The largest value the kernel's errno convention allows.
const MAX_ERRNO: u32 = 4095;

/// Parses `SCMP_ACT_*`; `ret` is the `errnoRet` that goes with it.
pub(crate) fn action(name: &str, ret: Option<u32>) -> Result<Action, SeccompError> {
    let value = ret.unwrap_or(EPERM);
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(
            u16::try_from(value)
                .ok()
                .filter(|v| u32::from(*v) <= MAX_ERRNO)
                .ok_or(SeccompError::ErrnoRange { value })?,
        ),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_TRACE" => {
            Action::Trace(u16::try_from(value).map_err(|_| SeccompError::ErrnoRange { value })?)
        }
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_NOTIFY" => return Err(SeccompError::Notify),
        _ => {
            return Err(SeccompError::UnknownAction {
                name: name.to_owned(),
            })
        }
    })
}

/// A comparison on one syscall argument. For `MaskedEq`, `value` is the mask
/// and `value_two` the datum, as in Docker's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    MaskedEq,
}

pub(crate) fn op(name: &str) -> Result<Op, SeccompError> {
    Ok(match name {
        "SCMP_CMP_NE" => Op::Ne,
        "SCMP_CMP_LT" => Op::Lt,
        "SCMP_CMP_LE" => Op::Le,
        "SCMP_CMP_EQ" => Op::Eq,
        "SCMP_CMP_GE" => Op::Ge,
        "SCMP_CMP_GT" => Op::Gt,
        "SCMP_CMP_MASKED_EQ" => Op::MaskedEq,
        _ => {
            return Err(SeccompError::UnknownOperator {
                name: name.to_owned(),
            })
        }
    })
}

const CAPS: &[(&str, CapabilitySet)] = &[
    ("CHOWN", CapabilitySet::CHOWN),
    ("DAC_OVERRIDE", CapabilitySet::DAC_OVERRIDE),
    ("DAC_READ_SEARCH", CapabilitySet::DAC_READ_SEARCH),
    ("FOWNER", CapabilitySet::FOWNER),
    ("FSETID", CapabilitySet::FSETID),
    ("KILL", CapabilitySet::KILL),
    ("SETGID", CapabilitySet::SETGID),
    ("SETUID", CapabilitySet::SETUID),
    ("SETPCAP", CapabilitySet::SETPCAP),
    ("LINUX_IMMUTABLE", CapabilitySet::LINUX_IMMUTABLE),
    ("NET_BIND_SERVICE", CapabilitySet::NET_BIND_SERVICE),
    ("NET_BROADCAST", CapabilitySet::NET_BROADCAST),
    ("NET_ADMIN", CapabilitySet::NET_ADMIN),
    ("NET_RAW", CapabilitySet::NET_RAW),
    ("IPC_LOCK", CapabilitySet::IPC_LOCK),
    ("IPC_OWNER", CapabilitySet::IPC_OWNER),
    ("SYS_MODULE", CapabilitySet::SYS_MODULE),
    ("SYS_RAWIO", CapabilitySet::SYS_RAWIO),
    ("SYS_CHROOT", CapabilitySet::SYS_CHROOT),
    ("SYS_PTRACE", CapabilitySet::SYS_PTRACE),
    ("SYS_PACCT", CapabilitySet::SYS_PACCT),
    ("SYS_ADMIN", CapabilitySet::SYS_ADMIN),
    ("SYS_BOOT", CapabilitySet::SYS_BOOT),
    ("SYS_NICE", CapabilitySet::SYS_NICE),
    ("SYS_RESOURCE", CapabilitySet::SYS_RESOURCE),
    ("SYS_TIME", CapabilitySet::SYS_TIME),
    ("SYS_TTY_CONFIG", CapabilitySet::SYS_TTY_CONFIG),
    ("MKNOD", CapabilitySet::MKNOD),
    ("LEASE", CapabilitySet::LEASE),
    ("AUDIT_WRITE", CapabilitySet::AUDIT_WRITE),
    ("AUDIT_CONTROL", CapabilitySet::AUDIT_CONTROL),
    ("SETFCAP", CapabilitySet::SETFCAP),
    ("MAC_OVERRIDE", CapabilitySet::MAC_OVERRIDE),
    ("MAC_ADMIN", CapabilitySet::MAC_ADMIN),
    ("SYSLOG", CapabilitySet::SYSLOG),
    ("WAKE_ALARM", CapabilitySet::WAKE_ALARM),
    ("BLOCK_SUSPEND", CapabilitySet::BLOCK_SUSPEND),
    ("AUDIT_READ", CapabilitySet::AUDIT_READ),
    ("PERFMON", CapabilitySet::PERFMON),
    ("BPF", CapabilitySet::BPF),
    ("CHECKPOINT_RESTORE", CapabilitySet::CHECKPOINT_RESTORE),
];

/// Maps Docker's "CAP_SYS_ADMIN" (case-insensitive, prefix optional) to a
/// capability.
pub(crate) fn cap(name: &str) -> Result<CapabilitySet, SeccompError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPS.iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, c)| *c)
        .ok_or_else(|| SeccompError::UnknownCapability {
            name: name.to_owned(),
        })
}

/// The union of `names` (Docker's spellings: "NET_RAW", "cap_net_raw").
pub fn caps(names: &[String]) -> Result<CapabilitySet, SeccompError> {
    names
        .iter()
        .try_fold(CapabilitySet::empty(), |set, n| Ok(set | cap(n)?))
}

/// Parses `SCMP_ARCH_*`.
pub(crate) fn arch(name: &str) -> Result<ScmpArch, SeccompError> {
    match name.parse::<ScmpArch>() {
        Ok(ScmpArch::Native) | Err(_) => Err(SeccompError::UnknownArch {
            name: name.to_owned(),
        }),
        Ok(a) => Ok(a),
    }
}

/// A `major.minor` kernel version.
pub(crate) type KernelVersion = (u32, u32);

/// Parses "4.8", "6.18.44-fc-v1045" and the like; the patch level and any
/// suffix are ignored.
pub(crate) fn kernel_version(text: &str) -> Result<KernelVersion, SeccompError> {
    let bad = || SeccompError::KernelVersion {
        value: text.to_owned(),
    };
    let mut parts = text.trim().splitn(3, '.');
    let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let minor = parts.next().ok_or_else(bad)?;
    let digits = minor
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(minor.len());
    let minor = minor[..digits].parse().map_err(|_| bad())?;
    Ok((major, minor))
}

/// The architecture this build runs on: its libseccomp token, the ABIs a
/// process can also enter the kernel through, and the names Docker profiles
/// use for it in `includes.arches` (Go's GOARCH first).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NativeArch {
    pub(crate) token: ScmpArch,
    pub(crate) compat: &'static [ScmpArch],
    pub(crate) names: &'static [&'static str],
}

#[cfg(target_arch = "x86_64")]
pub(crate) const NATIVE: NativeArch = NativeArch {
    token: ScmpArch::X8664,
    compat: &[ScmpArch::X86, ScmpArch::X32],
    names: &["amd64", "x86_64", "SCMP_ARCH_X86_64"],
};

#[cfg(target_arch = "aarch64")]
pub(crate) const NATIVE: NativeArch = NativeArch {
    token: ScmpArch::Aarch64,
    compat: &[ScmpArch::Arm],
    names: &["arm64", "aarch64", "SCMP_ARCH_AARCH64"],
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) const NATIVE: NativeArch = NativeArch {
    token: ScmpArch::Native,
    compat: &[],
    names: &[std::env::consts::ARCH],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_take_their_errno() {
        assert_eq!(action("SCMP_ACT_ERRNO", None).unwrap(), Action::Errno(1));
        assert_eq!(
            action("SCMP_ACT_ERRNO", Some(38)).unwrap(),
            Action::Errno(38)
        );
        assert_eq!(action("SCMP_ACT_TRACE", Some(7)).unwrap(), Action::Trace(7));
        assert_eq!(action("SCMP_ACT_KILL", None).unwrap(), Action::KillThread);
        assert!(matches!(
            action("SCMP_ACT_ERRNO", Some(5000)),
            Err(SeccompError::ErrnoRange { value: 5000 })
        ));
        assert!(matches!(
            action("SCMP_ACT_NOTIFY", None),
            Err(SeccompError::Notify)
        ));
        assert!(
            matches!(action("SCMP_ACT_NOPE", None), Err(SeccompError::UnknownAction { name }) if name == "SCMP_ACT_NOPE")
        );
    }

    #[test]
    fn ops_parse() {
        assert_eq!(op("SCMP_CMP_MASKED_EQ").unwrap(), Op::MaskedEq);
        assert!(
            matches!(op("SCMP_CMP_XOR"), Err(SeccompError::UnknownOperator { name }) if name == "SCMP_CMP_XOR")
        );
    }

    #[test]
    fn caps_take_docker_names() {
        assert_eq!(cap("CAP_SYS_ADMIN").unwrap(), CapabilitySet::SYS_ADMIN);
        assert_eq!(cap("net_raw").unwrap(), CapabilitySet::NET_RAW);
        assert_eq!(
            caps(&["CAP_BPF".into(), "CAP_PERFMON".into()]).unwrap(),
            CapabilitySet::BPF | CapabilitySet::PERFMON
        );
        assert!(
            matches!(cap("CAP_FLY"), Err(SeccompError::UnknownCapability { name }) if name == "CAP_FLY")
        );
        assert_eq!(CAPS.len(), 41);
    }

    #[test]
    fn arches_parse() {
        assert_eq!(arch("SCMP_ARCH_X32").unwrap(), ScmpArch::X32);
        assert!(matches!(
            arch("SCMP_ARCH_NATIVE"),
            Err(SeccompError::UnknownArch { .. })
        ));
        assert!(matches!(
            arch("amd64"),
            Err(SeccompError::UnknownArch { .. })
        ));
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("4.8").unwrap(), (4, 8));
        assert_eq!(kernel_version("6.18.44-fc-v1045").unwrap(), (6, 18));
        assert_eq!(kernel_version("5.10-rc1").unwrap(), (5, 10));
        assert!(matches!(
            kernel_version("six"),
            Err(SeccompError::KernelVersion { .. })
        ));
        assert!(kernel_version("4").is_err());
    }
}
