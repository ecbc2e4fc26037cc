//! How a container is confined when it runs: its resource limits, security
//! settings and user namespace, kept in its config (`berth config`) and
//! overridable per run. Turns them into what the runtime takes.

use std::path::PathBuf;

use berth_runtime::cgroup::{parse_cpus, parse_size};
use berth_runtime::{Limits, SeccompChoice, Security};
use serde::{Deserialize, Serialize};

use crate::error::{BerthError, Result};

/// Where compiled seccomp programs are kept for reuse.
pub fn seccomp_cache(root: &std::path::Path) -> PathBuf {
    root.join("cache").join("seccomp")
}

/// The pids limit every container gets unless told otherwise: a fork bomb
/// stops there instead of taking the host.
pub const DEFAULT_PIDS: u64 = 4096;

/// The keys `berth config set` takes, in the order `berth info` shows them.
pub const KEYS: [&str; 17] = [
    "memory",
    "memory_swap",
    "pids",
    "cpus",
    "cpuset",
    "io_weight",
    "cgroup_parent",
    "seccomp",
    "privileged",
    "cap.add",
    "userns",
    "init.cmd",
    "autostart",
    "start.order",
    "start.delay",
    "net",
    "net.ipv4",
];

/// A container's run settings, as stored in its config. Absent values take
/// the defaults; flags of `berth run` override them for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<PathBuf>,
    /// "default", "unconfined" or a profile's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Capabilities on top of the default set (Docker's `--cap-add`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Run in a user namespace: container root is an unprivileged host id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub userns: bool,
    /// Set once the volume's owners were shifted on disk to these host ids,
    /// because its filesystem cannot be idmapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shifted: Option<IdShift>,
    /// What `berth start` runs when no command is given (split on spaces);
    /// empty: `/sbin/init` if the rootfs has it, else `/bin/sh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_cmd: Vec<String>,
    /// `NAME=value` entries every command in it gets before its own (an
    /// image's Env).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Where its commands start unless told otherwise (an image's WorkingDir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `berth start --all-auto` starts it (what a boot unit runs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub autostart: bool,
    /// Lower starts first among autostarted containers (`lxc.start.order`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_order: Option<i32>,
    /// Seconds to wait after starting it before the next one (`lxc.start.delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_delay: Option<u64>,
    /// Its network unless a start says otherwise: none, host or a bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::net::NetChoice>,
    /// Its address on its bridge: chosen at its first bridged start, kept
    /// so it survives restarts; a clone gets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<std::net::Ipv4Addr>,
}

/// Host ids that container ids 0..count map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdShift {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

fn bad(key: &str, value: &str, want: &str) -> BerthError {
    BerthError::Invalid(format!("{key} = {value:?}: expected {want}"))
}

/// An error and its sources, for a one-line message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(bad(key, value, "true or false")),
    }
}

impl RunConfig {
    /// Sets `key` to `value` (an empty value unsets it), validating it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let v = (!value.is_empty()).then(|| value.to_owned());
        let size = |v: &Option<String>| -> Result<()> {
            if let Some(s) = v {
                parse_size(s).map_err(|e| bad(key, s, &e.to_string()))?;
            }
            Ok(())
        };
        match key {
            "memory" => {
                size(&v)?;
                self.memory = v;
            }
            "memory_swap" => {
                size(&v)?;
                self.memory_swap = v;
            }
            "pids" => {
                self.pids = v
                    .map(|s| s.parse().map_err(|_| bad(key, &s, "a whole number")))
                    .transpose()?;
            }
            "cpus" => {
                if let Some(s) = &v {
                    parse_cpus(s).map_err(|e| bad(key, s, &e.to_string()))?;
                }
                self.cpus = v;
            }
            "cpuset" => self.cpuset = v,
            "io_weight" => {
                self.io_weight = v
                    .map(|s| {
                        s.parse()
                            .map_err(|_| bad(key, &s, "a number from 1 to 10000"))
                    })
                    .transpose()?;
            }
            "cgroup_parent" => self.cgroup_parent = v.map(PathBuf::from),
            "seccomp" => {
                if let Some(s) = &v {
                    // Load it now, so a bad profile is named here, not at run time.
                    let choice: SeccompChoice = s.parse().unwrap_or_default();
                    choice
                        .program(berth_runtime::DEFAULT_CAPS)
                        .map_err(|e| bad(key, s, &error_chain(&e)))?;
                }
                self.seccomp = v;
            }
            "privileged" => self.privileged = v.is_some() && parse_bool(key, value)?,
            "cap.add" => {
                let names: Vec<String> = value
                    .split([',', ' '])
                    .filter(|n| !n.is_empty())
                    .map(|n| n.trim_start_matches("CAP_").to_ascii_uppercase())
                    .collect();
                berth_runtime::seccomp::parse_caps(&names)
                    .map_err(|e| bad(key, value, &e.to_string()))?;
                self.cap_add = names;
            }
            "userns" => self.userns = v.is_some() && parse_bool(key, value)?,
            "autostart" => self.autostart = v.is_some() && parse_bool(key, value)?,
            "start.order" => {
                self.start_order = v
                    .map(|s| s.parse().map_err(|_| bad(key, &s, "a whole number")))
                    .transpose()?;
            }
            "start.delay" => {
                self.start_delay = v
                    .map(|s| s.parse().map_err(|_| bad(key, &s, "whole seconds")))
                    .transpose()?;
            }
            "net" => self.net = v.map(|s| s.parse()).transpose()?,
            "net.ipv4" => {
                self.ipv4 = v
                    .map(|s| s.parse().map_err(|_| bad(key, &s, "an IPv4 address")))
                    .transpose()?;
            }
            "init.cmd" => {
                self.init_cmd = value.split_whitespace().map(str::to_owned).collect();
                if self.init_cmd.first().is_some_and(|c| !c.starts_with('/')) {
                    return Err(bad(key, value, "an absolute path, then its arguments"));
                }
            }
            _ => {
                return Err(BerthError::Invalid(format!(
                    "unknown config key {key:?}; known keys: {}",
                    KEYS.join(", ")
                )))
            }
        }
        Ok(())
    }

    /// `(key, value)` for every key that is set, in [`KEYS`] order.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |k, v: Option<String>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        put("memory", self.memory.clone());
        put("memory_swap", self.memory_swap.clone());
        put("pids", self.pids.map(|p| p.to_string()));
        put("cpus", self.cpus.clone());
        put("cpuset", self.cpuset.clone());
        put("io_weight", self.io_weight.map(|w| w.to_string()));
        put(
            "cgroup_parent",
            self.cgroup_parent.as_ref().map(|p| p.display().to_string()),
        );
        put("seccomp", self.seccomp.clone());
        put("privileged", self.privileged.then(|| "true".to_owned()));
        put(
            "cap.add",
            (!self.cap_add.is_empty()).then(|| self.cap_add.join(",")),
        );
        put("userns", self.userns.then(|| "true".to_owned()));
        put(
            "init.cmd",
            (!self.init_cmd.is_empty()).then(|| self.init_cmd.join(" ")),
        );
        put("autostart", self.autostart.then(|| "true".to_owned()));
        put("start.order", self.start_order.map(|o| o.to_string()));
        put("start.delay", self.start_delay.map(|d| d.to_string()));
        put("net", self.net.as_ref().map(ToString::to_string));
        put("net.ipv4", self.ipv4.map(|a| a.to_string()));
        out
    }

    /// The cgroup limits, with the default pids limit.
    pub fn limits(&self) -> Result<Limits> {
        let size = |key: &str, v: &Option<String>| -> Result<Option<u64>> {
            v.as_deref()
                .map(|s| parse_size(s).map_err(|e| bad(key, s, &e.to_string())))
                .transpose()
        };
        Ok(Limits {
            memory: size("memory", &self.memory)?,
            memory_swap: size("memory_swap", &self.memory_swap)?,
            pids: Some(self.pids.unwrap_or(DEFAULT_PIDS)),
            cpus: self
                .cpus
                .as_deref()
                .map(|s| parse_cpus(s).map_err(|e| bad("cpus", s, &e.to_string())))
                .transpose()?,
            cpuset: self.cpuset.clone(),
            io_weight: self.io_weight,
        })
    }

    /// The security settings: berth's safe default unless privileged.
    pub fn security(&self) -> Result<Security> {
        if self.privileged {
            return Ok(Security::privileged());
        }
        let mut sec = Security::default();
        if let Some(s) = &self.seccomp {
            sec.seccomp = s.parse().unwrap_or_default();
        }
        let added = berth_runtime::seccomp::parse_caps(&self.cap_add)
            .map_err(|e| bad("cap.add", &self.cap_add.join(","), &e.to_string()))?;
        sec.caps = sec.caps.map(|c| c | added);
        Ok(sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_validates_and_unsets() {
        let mut c = RunConfig::default();
        c.set("memory", "64M").unwrap();
        c.set("pids", "64").unwrap();
        c.set("userns", "true").unwrap();
        assert_eq!(c.memory.as_deref(), Some("64M"));
        assert_eq!(c.limits().unwrap().memory, Some(64 << 20));
        assert_eq!(c.limits().unwrap().pids, Some(64));
        assert!(c.userns);
        c.set("memory", "").unwrap();
        assert_eq!(c.memory, None);
        assert!(c.set("memory", "lots").is_err());
        assert!(c.set("pids", "-1").is_err());
        assert!(c.set("userns", "maybe").is_err());
        let e = c.set("colour", "red").unwrap_err().to_string();
        assert!(e.contains("unknown config key \"colour\""), "{e}");
        assert_eq!(
            c.entries(),
            [("pids", "64".to_owned()), ("userns", "true".to_owned())]
        );
    }

    #[test]
    fn defaults_are_safe() {
        let c = RunConfig::default();
        assert_eq!(c.limits().unwrap().pids, Some(DEFAULT_PIDS));
        let sec = c.security().unwrap();
        assert!(sec.mask_proc && sec.no_new_privs && sec.restrict_devices);
        assert!(sec.caps.is_some());
        let p = RunConfig {
            privileged: true,
            ..RunConfig::default()
        };
        assert!(p.security().unwrap().caps.is_none());
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = RunConfig::default();
        c.set("cpus", "0.5").unwrap();
        c.set("seccomp", "unconfined").unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), c);
        assert!(toml::from_str::<RunConfig>("bogus = 1").is_err());
    }
}
