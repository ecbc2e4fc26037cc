//! Which rules of a profile apply to one container: Docker's
//! `includes`/`excludes` evaluated against the container's capabilities, the
//! native architecture and the running kernel. Pure, so it is tested without
//! libseccomp.

use libseccomp::ScmpArch;
use rustix::thread::CapabilitySet;
use tracing::debug;

use super::names::{self, Action, KernelVersion, NativeArch, NATIVE};
use super::profile::{Cond, Entry, SeccompProfile, When};
use super::SeccompError;

/// What the profile is evaluated against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Host {
    pub(crate) arch: NativeArch,
    pub(crate) kernel: KernelVersion,
}

impl Host {
    /// This machine: the build's architecture and uname's kernel release.
    pub(crate) fn current() -> Result<Host, SeccompError> {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        Ok(Host {
            arch: NATIVE,
            kernel: names::kernel_version(&release)?,
        })
    }
}

/// A profile reduced to what libseccomp needs for one container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub(crate) default: Action,
    /// Every ABI the filter covers, native first.
    pub(crate) arches: Vec<ScmpArch>,
    pub(crate) rules: Vec<Rule>,
}

/// One libseccomp rule: its conditions are ANDed and name distinct arguments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) action: Action,
    pub(crate) args: Vec<Cond>,
}

impl SeccompProfile {
    /// The rules that apply to a container keeping `caps` on `host`.
    pub(crate) fn plan(&self, caps: CapabilitySet, host: &Host) -> Plan {
        let mut rules = Vec::new();
        for entry in self.entries.iter().filter(|e| applies(e, caps, host)) {
            if entry.action == self.default {
                // libseccomp refuses these; they change nothing anyway.
                debug!(names = ?entry.names, "seccomp rule repeats the default action, skipped");
                continue;
            }
            for name in &entry.names {
                for args in split_args(&entry.args) {
                    rules.push(Rule {
                        name: name.clone(),
                        action: entry.action,
                        args,
                    });
                }
            }
        }
        Plan {
            default: self.default,
            arches: self.arches(host),
            rules,
        }
    }

    /// Docker's rule: `architectures` as listed, or the native entry of
    /// `archMap` with its sub-architectures. With neither, berth covers the
    /// native ABI and its compat ABIs (x86 and x32 on x86_64) rather than
    /// libseccomp's native only, so 32-bit programs keep working.
    fn arches(&self, host: &Host) -> Vec<ScmpArch> {
        let listed: Vec<ScmpArch> = if self.architectures.is_empty() {
            self.arch_map
                .iter()
                .filter(|(a, _)| *a == host.arch.token)
                .flat_map(|(a, subs)| std::iter::once(*a).chain(subs.iter().copied()))
                .collect()
        } else {
            self.architectures.clone()
        };
        let listed = if listed.is_empty() {
            host.arch.compat.to_vec()
        } else {
            listed
        };
        let mut arches = vec![host.arch.token];
        for a in listed {
            if !arches.contains(&a) {
                arches.push(a);
            }
        }
        arches
    }
}

/// Docker's evaluation: every `includes` condition must hold and no
/// `excludes` one may. Caps: includes needs all listed, excludes skips the
/// rule if the container has any listed. Kernel: includes needs at least
/// `minKernel`, excludes skips the rule from `minKernel` on.
fn applies(entry: &Entry, caps: CapabilitySet, host: &Host) -> bool {
    let names_native = |w: &When| w.arches.iter().any(|a| host.arch.names.contains(&&**a));
    let inc = &entry.includes;
    let exc = &entry.excludes;
    let included = caps.contains(inc.caps)
        && (inc.arches.is_empty() || names_native(inc))
        && inc.min_kernel.is_none_or(|v| host.kernel >= v);
    let excluded = caps.intersects(exc.caps)
        || names_native(exc)
        || exc.min_kernel.is_some_and(|v| host.kernel >= v);
    included && !excluded
}

/// libseccomp takes one condition per argument in a rule. When an entry has
/// several on one argument, each condition becomes its own rule (ORed), as
/// runc does; otherwise the entry is one rule with all of them (ANDed).
fn split_args(args: &[Cond]) -> Vec<Vec<Cond>> {
    let repeats = args
        .iter()
        .enumerate()
        .any(|(i, a)| args[..i].iter().any(|b| b.index == a.index));
    if repeats {
        args.iter().map(|a| vec![*a]).collect()
    } else {
        vec![args.to_vec()]
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::seccomp::names::Op;

    const X86_64: Host = Host {
        arch: NativeArch {
            token: ScmpArch::X8664,
            compat: &[ScmpArch::X86, ScmpArch::X32],
            names: &["amd64", "x86_64", "SCMP_ARCH_X86_64"],
        },
        kernel: (6, 1),
    };

    fn profile(json: &str) -> SeccompProfile {
        SeccompProfile::from_json(json, Path::new("t.json")).unwrap()
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.rules.iter().map(|r| r.name.as_str()).collect()
    }

    const GATED: &str = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO",
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ERRNO",
         "excludes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}},
        {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS",
         "includes": {"caps": ["CAP_NET_RAW", "CAP_KILL"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ERRNO",
         "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["s390_only"], "action": "SCMP_ACT_ERRNO",
         "includes": {"arches": ["s390x"]}},
        {"names": ["not_on_amd64"], "action": "SCMP_ACT_ERRNO",
         "excludes": {"arches": ["amd64"]}},
        {"names": ["new_call"], "action": "SCMP_ACT_ERRNO",
         "includes": {"minKernel": "6.2"}},
        {"names": ["old_bug"], "action": "SCMP_ACT_ERRNO",
         "excludes": {"minKernel": "4.8"}},
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
    ]}"#;

    #[test]
    fn caps_arches_and_kernel_select_rules() {
        let p = profile(GATED);
        let none = p.plan(CapabilitySet::empty(), &X86_64);
        assert_eq!(names(&none), ["mount", "bpf", "arch_prctl"]);

        let admin = p.plan(CapabilitySet::SYS_ADMIN, &X86_64);
        assert_eq!(names(&admin), ["arch_prctl"]);

        let bpf = p.plan(CapabilitySet::BPF | CapabilitySet::NET_RAW, &X86_64);
        assert_eq!(names(&bpf), ["mount", "arch_prctl"]);

        let both = p.plan(CapabilitySet::NET_RAW | CapabilitySet::KILL, &X86_64);
        assert_eq!(names(&both), ["mount", "bpf", "reboot", "arch_prctl"]);
        assert_eq!(both.rules[2].action, Action::KillProcess);

        let old = Host {
            kernel: (4, 4),
            ..X86_64
        };
        assert_eq!(
            names(&p.plan(CapabilitySet::SYS_ADMIN, &old)),
            ["arch_prctl", "old_bug"]
        );
        let new = Host {
            kernel: (6, 2),
            ..X86_64
        };
        assert_eq!(
            names(&p.plan(CapabilitySet::SYS_ADMIN, &new)),
            ["arch_prctl", "new_call"]
        );
    }

    #[test]
    fn args_on_distinct_indexes_stay_one_rule() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a", "b"],
               "action": "SCMP_ACT_ERRNO", "args": [
                 {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                 {"index": 2, "value": 7, "valueTwo": 4, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        let plan = p.plan(CapabilitySet::empty(), &X86_64);
        assert_eq!(names(&plan), ["a", "b"]);
        assert_eq!(plan.rules[0].args.len(), 2);
        assert_eq!(plan.rules[1].args[1].op, Op::MaskedEq);
    }

    #[test]
    fn args_on_one_index_become_separate_rules() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["clone"],
               "action": "SCMP_ACT_ERRNO", "args": [
                 {"index": 0, "value": 16, "valueTwo": 16, "op": "SCMP_CMP_MASKED_EQ"},
                 {"index": 1, "value": 3, "op": "SCMP_CMP_GT"},
                 {"index": 0, "value": 32, "valueTwo": 32, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        let plan = p.plan(CapabilitySet::empty(), &X86_64);
        assert_eq!(plan.rules.len(), 3);
        assert!(plan.rules.iter().all(|r| r.args.len() == 1));
        assert_eq!(plan.rules[2].args[0].value, 32);
    }

    #[test]
    fn arches_follow_the_profile_else_native_and_compat() {
        let none = profile(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
        assert_eq!(
            none.plan(CapabilitySet::empty(), &X86_64).arches,
            [ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32]
        );
        let listed = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]}"#,
        );
        assert_eq!(
            listed.plan(CapabilitySet::empty(), &X86_64).arches,
            [ScmpArch::X8664, ScmpArch::X86]
        );
        let mapped = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "archMap": [
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X32"]}]}"#,
        );
        assert_eq!(
            mapped.plan(CapabilitySet::empty(), &X86_64).arches,
            [ScmpArch::X8664, ScmpArch::X32]
        );
    }

    #[test]
    fn host_reads_the_running_kernel() {
        let host = Host::current().unwrap();
        assert!(host.kernel >= (3, 0), "{:?}", host.kernel);
    }
}
