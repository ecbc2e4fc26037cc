//! What an LXC container's settings become in berth (`berth adopt`): the
//! cheap and safe ones are mapped onto its run config, every other one is
//! named in a warning, with why berth leaves it out where that is known.

use std::collections::BTreeMap;

use super::adopt_config::{AdoptError, LxcConfig, LxcRootfs, Result};
use crate::confine::{IdShift, RunConfig};

/// What a berth container takes over from an LXC config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub rootfs: LxcRootfs,
    /// `lxc.uts.name`.
    pub uts_name: Option<String>,
    /// Limits, init command, autostart, network; `userns` when there is an
    /// idmap (the caller decides about `shifted`).
    pub run: RunConfig,
    /// The one idmap berth can take: container ids 0…count at host ids.
    pub idmap: Option<IdShift>,
    /// What was left out, one line per key.
    pub warnings: Vec<String>,
}

/// Keys whose job berth does by itself, or that do not apply to it.
const QUIET: [&str; 6] = [
    "lxc.autodev",
    "lxc.tty.max",
    "lxc.pty.max",
    "lxc.arch",
    "lxc.signal.halt",
    "lxc.signal.reboot",
];

/// Why berth leaves out the keys users meet most (`{name}`: the container).
const HINTS: [(&str, &str); 5] = [
    (
        "lxc.apparmor.",
        "berth confines with seccomp, a capability set and a masked /proc instead",
    ),
    (
        "lxc.cap.",
        "berth's default capability set applies (`berth config set {name} cap.add=CAP` adds one)",
    ),
    (
        "lxc.mount.entry",
        "berth mounts no host paths into containers: the rootfs must hold what they provided",
    ),
    ("lxc.mount.auto", "berth mounts /proc, /sys and /dev itself"),
    (
        "lxc.seccomp.",
        "berth applies its own seccomp profile (`berth config set {name} seccomp=FILE`)",
    ),
];

/// Maps `cfg` onto a berth container called `name`.
pub fn map(cfg: &LxcConfig, name: &str) -> Result<Mapped> {
    let rootfs_value =
        cfg.get(&["lxc.rootfs.path", "lxc.rootfs"])
            .ok_or_else(|| AdoptError::Rootfs {
                value: String::new(),
                reason: "the config sets no lxc.rootfs.path".to_owned(),
            })?;
    let rootfs = LxcRootfs::parse(rootfs_value)?;
    let mut run = RunConfig::default();
    let mut warnings = Vec::new();
    let mut handled: Vec<&str> = vec![
        "lxc.rootfs.path",
        "lxc.rootfs",
        "lxc.rootfs.backend",
        "lxc.uts.name",
        "lxc.utsname",
        "lxc.include",
    ];
    handled.extend(QUIET);

    let mut set = |berth_key: &str, lxc_keys: &[&'static str], warnings: &mut Vec<String>| {
        let Some(v) = cfg.get(lxc_keys) else {
            return;
        };
        // "max" and "-1" are LXC's "no limit", berth's default.
        let unlimited = berth_key == "memory" && (v == "max" || v == "-1");
        if unlimited {
            return;
        }
        let value = match berth_key {
            "autostart" => (v != "0").to_string(),
            _ => v.to_owned(),
        };
        // `set` may change a field before refusing its value: try a copy.
        let mut tried = run.clone();
        match tried.set(berth_key, &value) {
            Ok(()) => run = tried,
            Err(e) => warnings.push(format!("{}: not mapped ({e})", lxc_keys[0])),
        }
    };
    let pairs: [(&str, &[&'static str]); 7] = [
        (
            "memory",
            &["lxc.cgroup2.memory.max", "lxc.cgroup.memory.limit_in_bytes"],
        ),
        ("pids", &["lxc.cgroup2.pids.max", "lxc.cgroup.pids.max"]),
        (
            "cpuset",
            &["lxc.cgroup2.cpuset.cpus", "lxc.cgroup.cpuset.cpus"],
        ),
        ("init.cmd", &["lxc.init.cmd", "lxc.init_cmd"]),
        ("autostart", &["lxc.start.auto"]),
        ("start.order", &["lxc.start.order"]),
        ("start.delay", &["lxc.start.delay"]),
    ];
    for (berth_key, lxc_keys) in pairs {
        if berth_key == "pids" && cfg.get(lxc_keys) == Some("max") {
            handled.extend(lxc_keys);
            continue;
        }
        set(berth_key, lxc_keys, &mut warnings);
        handled.extend(lxc_keys);
    }

    let idmap = map_idmap(cfg, &mut warnings);
    run.userns = idmap.is_some() || !cfg.all("lxc.idmap").is_empty();
    handled.extend(["lxc.idmap", "lxc.id_map"]);
    if !cfg.all("lxc.id_map").is_empty() && cfg.all("lxc.idmap").is_empty() {
        warnings.push("lxc.id_map (LXC 2 syntax): not mapped; convert the config with lxc-update-config first".to_owned());
    }

    map_network(cfg, name, &mut run, &mut warnings);
    for inc in cfg.all("lxc.include") {
        warnings.push(format!(
            "lxc.include = {inc}: not read; what it sets is not adopted"
        ));
    }
    // One line per unmapped key, with how often it occurs.
    let mut left: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in cfg.entries() {
        let net = k.starts_with("lxc.net.") || k.starts_with("lxc.network.");
        if !handled.contains(&k.as_str()) && !net {
            left.entry(k.as_str()).or_default().push(v.as_str());
        }
    }
    for (k, vs) in left {
        let vs: Vec<&str> = vs.into_iter().filter(|v| !v.is_empty()).collect();
        let mut w = match vs.as_slice() {
            [] => continue,
            [one] => format!("{k} = {one}: not mapped"),
            many => format!("{k} ({} entries): not mapped", many.len()),
        };
        if let Some((_, hint)) = HINTS.iter().find(|(key, _)| k.starts_with(key)) {
            w.push_str("; ");
            w.push_str(&hint.replace("{name}", name));
        }
        warnings.push(w);
    }
    Ok(Mapped {
        rootfs,
        uts_name: cfg.get(&["lxc.uts.name", "lxc.utsname"]).map(str::to_owned),
        run,
        idmap,
        warnings,
    })
}

/// `lxc.idmap = u 0 100000 65536` plus the same for `g`: the one shape berth
/// runs (container ids from 0, uids and gids the same count).
fn map_idmap(cfg: &LxcConfig, warnings: &mut Vec<String>) -> Option<IdShift> {
    let maps = cfg.all("lxc.idmap");
    if maps.is_empty() {
        return None;
    }
    let parse = |line: &str| -> Option<(char, u32, u32, u32)> {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [kind, inside, host, count] => Some((
                kind.chars().next()?,
                inside.parse().ok()?,
                host.parse().ok()?,
                count.parse().ok()?,
            )),
            _ => None,
        }
    };
    let parsed: Option<Vec<_>> = maps.iter().map(|l| parse(l)).collect();
    let one = |want: char, all: &[(char, u32, u32, u32)]| {
        let of: Vec<_> = all.iter().filter(|m| m.0 == want).collect();
        match of.as_slice() {
            [(_, 0, host, count)] => Some((*host, *count)),
            _ => None,
        }
    };
    let shift = parsed.as_deref().and_then(|all| {
        let ((uid, ucount), (gid, gcount)) = (one('u', all)?, one('g', all)?);
        (ucount == gcount && all.len() == 2).then_some(IdShift {
            uid,
            gid,
            count: ucount,
        })
    });
    if shift.is_none() {
        warnings.push(format!(
            "lxc.idmap ({}): only one u and one g range from container id 0, of one size, is \
             mapped; it runs in a user namespace with berth's own ids",
            maps.join("; ")
        ));
    }
    shift
}

/// `lxc.net.0.type = empty` is berth's default (loopback only) and `none`
/// is the host's network; anything else needs a bridge berth does not take over.
fn map_network(cfg: &LxcConfig, name: &str, run: &mut RunConfig, warnings: &mut Vec<String>) {
    let mut types: BTreeMap<String, &str> = BTreeMap::new();
    for (k, v) in cfg.entries() {
        if let Some(rest) = k.strip_prefix("lxc.net.") {
            if let Some((idx, "type")) = rest.split_once('.') {
                types.insert(idx.to_owned(), v.as_str());
            }
        }
    }
    let legacy = cfg
        .entries()
        .iter()
        .any(|(k, _)| k.starts_with("lxc.network."));
    for (idx, kind) in &types {
        match *kind {
            "empty" => {}
            "none" if types.len() == 1 => run.net = Some(crate::net::NetChoice::Host),
            other => {
                let link = cfg
                    .get(&[&format!("lxc.net.{idx}.link")])
                    .map(|l| format!(" on {l}"))
                    .unwrap_or_default();
                warnings.push(format!(
                    "lxc.net.{idx} ({other}{link}): not mapped; it runs without a network \
                     until `berth config set {name} net=bridge` (or net=host)"
                ));
            }
        }
    }
    if legacy {
        warnings
            .push("lxc.network.* (LXC 2 syntax): not mapped; it runs without a network".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn map_c1(cfg: &LxcConfig) -> Result<Mapped> {
        map(cfg, "c1")
    }

    fn parse(text: &str) -> LxcConfig {
        LxcConfig::parse(Path::new("/l/c/config"), text).unwrap()
    }

    /// What `lxc-create -t busybox` writes (LXC 5.0.2), trimmed.
    const BUSYBOX: &str = "\
# Template used to create this container: /usr/share/lxc/templates/lxc-busybox
#lxc.include = /usr/share/lxc/config/nesting.conf
lxc.net.0.type = veth
lxc.net.0.link = lxcbr0
lxc.net.0.flags = up
lxc.apparmor.profile = generated
lxc.rootfs.path = dir:/var/lib/lxc/c1/rootfs
lxc.signal.halt = SIGUSR1
lxc.uts.name = \"c1\"
lxc.autodev = 1
lxc.tty.max = 5
lxc.cap.drop = sys_module mac_admin mac_override sys_time
lxc.mount.auto = cgroup:mixed proc:mixed sys:ro
lxc.mount.entry = shm dev/shm tmpfs defaults,create=dir 0 0
lxc.mount.entry = /lib lib none ro,bind 0 0
";

    #[test]
    fn a_busybox_config_maps_and_says_what_it_leaves_out() {
        let m = map_c1(&parse(BUSYBOX)).unwrap();
        assert_eq!(m.rootfs, LxcRootfs::Dir("/var/lib/lxc/c1/rootfs".into()));
        assert_eq!(m.uts_name.as_deref(), Some("c1"));
        assert_eq!(m.run, RunConfig::default());
        let w = m.warnings.join("\n");
        for expected in [
            "lxc.net.0 (veth on lxcbr0): not mapped",
            "`berth config set c1 net=bridge`",
            "lxc.apparmor.profile = generated: not mapped; berth confines with seccomp",
            "lxc.mount.entry (2 entries): not mapped; berth mounts no host paths",
            "lxc.cap.drop = sys_module mac_admin mac_override sys_time: not mapped; berth's \
             default capability set applies (`berth config set c1 cap.add=CAP`",
        ] {
            assert!(w.contains(expected), "{expected} missing from:\n{w}");
        }
        // Nothing berth does by itself, and no line per network key.
        for quiet in [
            "lxc.autodev",
            "lxc.tty.max",
            "lxc.signal",
            "flags",
            "lxc.uts",
        ] {
            assert!(!w.contains(quiet), "{quiet} in:\n{w}");
        }
    }

    #[test]
    fn limits_init_autostart_and_host_network_map() {
        let m = map_c1(&parse(
            "lxc.rootfs = /srv/c\n\
             lxc.utsname = old\n\
             lxc.cgroup.memory.limit_in_bytes = 256M\n\
             lxc.cgroup2.pids.max = 100\n\
             lxc.cgroup2.cpuset.cpus = 0-1\n\
             lxc.init.cmd = /bin/busybox init\n\
             lxc.start.auto = 1\n\
             lxc.start.order = 5\n\
             lxc.start.delay = 2\n\
             lxc.net.0.type = none\n",
        ))
        .unwrap();
        assert_eq!(m.rootfs, LxcRootfs::Bare("/srv/c".into()));
        assert_eq!(m.uts_name.as_deref(), Some("old"));
        let r = &m.run;
        assert_eq!(r.memory.as_deref(), Some("256M"));
        assert_eq!((r.pids, r.cpuset.as_deref()), (Some(100), Some("0-1")));
        assert_eq!(r.init_cmd, ["/bin/busybox", "init"]);
        assert!(r.autostart);
        assert_eq!((r.start_order, r.start_delay), (Some(5), Some(2)));
        assert_eq!(r.net, Some(crate::net::NetChoice::Host));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        // cgroup2 wins over v1; "max" is no limit.
        let m = map_c1(&parse(
            "lxc.rootfs.path = dir:/c\nlxc.cgroup2.memory.max = max\n\
             lxc.cgroup.memory.limit_in_bytes = 1G\nlxc.start.auto = 0\n",
        ))
        .unwrap();
        assert_eq!((m.run.memory, m.run.autostart), (None, false));
    }

    #[test]
    fn bad_values_are_warnings_not_failures() {
        let m = map_c1(&parse(
            "lxc.rootfs.path = dir:/c\nlxc.cgroup2.memory.max = lots\n\
             lxc.init.cmd = sbin/init\nlxc.include = /usr/share/lxc/config/common.conf\n",
        ))
        .unwrap();
        let w = m.warnings.join("\n");
        assert!(w.contains("lxc.cgroup2.memory.max: not mapped"), "{w}");
        assert!(w.contains("lxc.init.cmd: not mapped"), "{w}");
        assert!(
            w.contains("lxc.include = /usr/share/lxc/config/common.conf: not read"),
            "{w}"
        );
        assert_eq!(m.run, RunConfig::default());
        let e = map_c1(&parse("lxc.uts.name = x\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no lxc.rootfs.path"), "{e}");
    }

    #[test]
    fn one_idmap_range_is_a_shift_others_are_warned_about() {
        let m = map_c1(&parse(
            "lxc.rootfs.path = dir:/c\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 200000 65536\n",
        ))
        .unwrap();
        assert_eq!(
            m.idmap,
            Some(IdShift {
                uid: 100000,
                gid: 200000,
                count: 65536
            })
        );
        assert!(m.run.userns && m.warnings.is_empty(), "{:?}", m.warnings);
        let m = map_c1(&parse(
            "lxc.rootfs.path = dir:/c\nlxc.idmap = u 0 100000 1000\nlxc.idmap = u 1000 1000 1\n\
             lxc.idmap = g 0 100000 65536\n",
        ))
        .unwrap();
        assert_eq!(m.idmap, None);
        assert!(m.run.userns);
        assert!(
            m.warnings[0].starts_with("lxc.idmap (u 0 100000 1000;"),
            "{:?}",
            m.warnings
        );
    }
}
