//! Reading a profile in Docker's JSON format. Every name in it (actions,
//! operators, capabilities, architectures, kernel versions) is checked here,
//! so a bad profile fails when it is read, whatever the container's caps.

use std::path::Path;

use libseccomp::ScmpArch;
use rustix::thread::CapabilitySet;
use serde::Deserialize;

use super::names::{self, Action, KernelVersion, Op};
use super::SeccompError;

/// berth's default profile; see the module documentation for its groups.
const DEFAULT_JSON: &str = include_str!("default.json");

/// The largest argument index a syscall has.
const MAX_ARG_INDEX: u32 = 5;

/// A seccomp profile, read and checked, not yet compiled. Build one with
/// [`SeccompProfile::default_profile`], [`SeccompProfile::from_file`] or
/// [`SeccompProfile::from_json`], then [`SeccompProfile::compile`] it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeccompProfile {
    pub(crate) default: Action,
    /// The old `architectures` list.
    pub(crate) architectures: Vec<ScmpArch>,
    /// `archMap`: an architecture and its sub-architectures.
    pub(crate) arch_map: Vec<(ScmpArch, Vec<ScmpArch>)>,
    pub(crate) entries: Vec<Entry>,
}

/// One element of `syscalls`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) names: Vec<String>,
    pub(crate) action: Action,
    pub(crate) args: Vec<Cond>,
    pub(crate) includes: When,
    pub(crate) excludes: When,
}

/// One element of a syscall's `args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cond {
    pub(crate) index: u32,
    pub(crate) op: Op,
    pub(crate) value: u64,
    pub(crate) value_two: u64,
}

/// `includes` or `excludes`; empty fields impose nothing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct When {
    pub(crate) caps: CapabilitySet,
    pub(crate) arches: Vec<String>,
    pub(crate) min_kernel: Option<KernelVersion>,
}

impl SeccompProfile {
    /// berth's built-in profile: allow everything except the syscalls that
    /// reach outside the container (see the module documentation).
    pub fn default_profile() -> Result<Self, SeccompError> {
        Self::from_json(DEFAULT_JSON, Path::new("<berth default profile>"))
    }

    /// Reads and checks the profile in file `path`.
    pub fn from_file(path: &Path) -> Result<Self, SeccompError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses and checks `text`; `origin` names it in errors. Unknown fields
    /// (comments, `flags`, `listenerPath`…) are ignored.
    pub fn from_json(text: &str, origin: &Path) -> Result<Self, SeccompError> {
        let raw: RawProfile = serde_json::from_str(text).map_err(|source| SeccompError::Parse {
            path: origin.to_owned(),
            line: source.line(),
            column: source.column(),
            source,
        })?;
        raw.check()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProfile {
    default_action: String,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    arch_map: Option<Vec<RawArchMap>>,
    syscalls: Option<Vec<RawSyscall>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArchMap {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSyscall {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<RawArg>>,
    includes: Option<RawWhen>,
    excludes: Option<RawWhen>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArg {
    index: u32,
    value: u64,
    value_two: Option<u64>,
    op: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawWhen {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

impl RawProfile {
    fn check(self) -> Result<SeccompProfile, SeccompError> {
        let architectures = self.architectures.unwrap_or_default();
        let arch_map = self.arch_map.unwrap_or_default();
        if !architectures.is_empty() && !arch_map.is_empty() {
            return Err(SeccompError::ArchListConflict);
        }
        let arch_map = arch_map
            .iter()
            .map(|m| {
                let subs = m.sub_architectures.as_deref().unwrap_or_default();
                Ok((
                    names::arch(&m.architecture)?,
                    subs.iter()
                        .map(|s| names::arch(s))
                        .collect::<Result<_, _>>()?,
                ))
            })
            .collect::<Result<_, SeccompError>>()?;
        Ok(SeccompProfile {
            default: names::action(&self.default_action, self.default_errno_ret)?,
            architectures: architectures
                .iter()
                .map(|a| names::arch(a))
                .collect::<Result<_, _>>()?,
            arch_map,
            entries: self
                .syscalls
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.check(i))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl RawSyscall {
    fn check(self, entry: usize) -> Result<Entry, SeccompError> {
        let mut names: Vec<String> = self.name.into_iter().collect();
        names.extend(self.names.unwrap_or_default());
        names.retain(|n| !n.is_empty());
        if names.is_empty() {
            return Err(SeccompError::Unnamed { entry });
        }
        let args = self
            .args
            .unwrap_or_default()
            .iter()
            .map(|a| {
                if a.index > MAX_ARG_INDEX {
                    return Err(SeccompError::ArgIndex {
                        syscall: names.join(","),
                        index: a.index,
                    });
                }
                Ok(Cond {
                    index: a.index,
                    op: names::op(&a.op)?,
                    value: a.value,
                    value_two: a.value_two.unwrap_or(0),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Entry {
            action: names::action(&self.action, self.errno_ret)?,
            args,
            includes: RawWhen::check(self.includes)?,
            excludes: RawWhen::check(self.excludes)?,
            names,
        })
    }
}

impl RawWhen {
    fn check(this: Option<Self>) -> Result<When, SeccompError> {
        let Some(w) = this else {
            return Ok(When {
                caps: CapabilitySet::empty(),
                arches: Vec::new(),
                min_kernel: None,
            });
        };
        Ok(When {
            caps: names::caps(w.caps.as_deref().unwrap_or_default())?,
            arches: w.arches.unwrap_or_default(),
            min_kernel: w
                .min_kernel
                .as_deref()
                .map(names::kernel_version)
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64",
             "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": null}
        ],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": null,
             "comment": "ignored"},
            {"name": "mount", "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "5.2"}},
            {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "excludes": {"arches": ["s390x"]}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 255, "valueTwo": 3,
                       "op": "SCMP_CMP_MASKED_EQ"}]}
        ],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"]
    }"#;

    fn parse(text: &str) -> Result<SeccompProfile, SeccompError> {
        SeccompProfile::from_json(text, Path::new("test.json"))
    }

    #[test]
    fn docker_format_sample() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(p.default, Action::Errno(38));
        assert!(p.architectures.is_empty());
        assert_eq!(
            p.arch_map,
            [
                (ScmpArch::X8664, vec![ScmpArch::X86, ScmpArch::X32]),
                (ScmpArch::Aarch64, vec![])
            ]
        );
        assert_eq!(p.entries.len(), 4);
        assert_eq!(p.entries[0].names, ["read", "write"]);
        assert_eq!(p.entries[0].action, Action::Allow);
        assert_eq!(p.entries[1].names, ["mount"]);
        assert_eq!(p.entries[1].includes.caps, CapabilitySet::SYS_ADMIN);
        assert_eq!(p.entries[1].includes.min_kernel, Some((5, 2)));
        assert_eq!(p.entries[2].action, Action::Errno(13));
        assert_eq!(p.entries[2].excludes.arches, ["s390x"]);
        assert_eq!(
            p.entries[3].args,
            [
                Cond {
                    index: 0,
                    op: Op::Eq,
                    value: 8,
                    value_two: 0
                },
                Cond {
                    index: 1,
                    op: Op::MaskedEq,
                    value: 255,
                    value_two: 3
                }
            ]
        );
    }

    #[test]
    fn errno_without_errno_ret_is_eperm() {
        let p = parse(r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#).unwrap();
        assert_eq!(p.default, Action::Errno(1));
        assert!(p.entries.is_empty());
    }

    #[test]
    fn malformed_json_names_file_line_and_column() {
        let err = parse("{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\",\n  \"syscalls\": [,]\n}")
            .unwrap_err();
        match &err {
            SeccompError::Parse {
                path, line, column, ..
            } => {
                assert_eq!(path, Path::new("test.json"));
                assert_eq!((*line, *column), (3, 16));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "parse seccomp profile \"test.json\" at line 3, column 16"
        );
    }

    #[test]
    fn bad_names_are_errors_naming_them() {
        let cases = [
            (
                r#"{"defaultAction": "SCMP_ACT_DENY"}"#,
                "unknown seccomp action \"SCMP_ACT_DENY\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
                "SCMP_ACT_NOTIFY needs a seccomp agent, which berth does not have",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"],
                   "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1,
                   "op": "SCMP_CMP_LIKE"}]}]}"#,
                "unknown seccomp comparison operator \"SCMP_CMP_LIKE\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"],
                   "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_WIZARD"]}}]}"#,
                "unknown capability \"CAP_WIZARD\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}"#,
                "unknown seccomp architecture \"SCMP_ARCH_Z80\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#,
                "syscall entry 0 has no name",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"],
                   "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1,
                   "op": "SCMP_CMP_EQ"}]}]}"#,
                "argument index 6 of a is out of range (0 to 5)",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"],
                   "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "new"}}]}"#,
                "parse kernel version \"new\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
                   "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
                "a seccomp profile has either architectures or archMap, not both",
            ),
        ];
        for (json, message) in cases {
            assert_eq!(parse(json).unwrap_err().to_string(), message, "{json}");
        }
    }

    #[test]
    fn unreadable_file_names_it() {
        let err = SeccompProfile::from_file(Path::new("/nonexistent/berth.json")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "read seccomp profile \"/nonexistent/berth.json\""
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn from_file_reads_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, SAMPLE).unwrap();
        assert_eq!(
            SeccompProfile::from_file(&path).unwrap(),
            parse(SAMPLE).unwrap()
        );
    }
}
