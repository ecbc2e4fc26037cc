//! Planning: which directories a container's cgroup has (one per hierarchy),
//! and which files get which values for its limits and device policy, per
//! layout. Reads the cgroup tree (which files exist, the parent's cpuset) but
//! writes nothing, so it is tested against a fake tree.

use std::path::{Path, PathBuf};

use super::devices;
use super::layout::{is_plain_absolute, Layout, Version};
use super::{CgroupError, Limits};

/// The container's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    pub version: Version,
    pub controllers: Vec<String>,
    /// The hierarchy's mount point: the top of the chain down to `parent`.
    pub top: PathBuf,
    /// The berth directory (`…/berth`) and the container's (`…/berth/NAME`).
    pub parent: PathBuf,
    pub dir: PathBuf,
    /// `parent` is berth's own default (`…/berth`), removed once empty.
    pub owned_parent: bool,
}

impl Place {
    pub(crate) fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// One write of `value` to cgroup file `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Write {
    pub file: PathBuf,
    pub value: String,
}

fn w(dir: &Path, file: &str, value: impl Into<String>) -> Write {
    Write {
        file: dir.join(file),
        value: value.into(),
    }
}

/// Where `name`'s cgroup goes in each hierarchy: `parent/name`, `parent`
/// being given (absolute inside every hierarchy) or the caller's cgroup +
/// `/berth`.
pub(crate) fn places(
    layout: &Layout,
    parent: Option<&Path>,
    name: &str,
) -> Result<Vec<Place>, CgroupError> {
    if let Some(p) = parent.filter(|p| !is_plain_absolute(p)) {
        return Err(CgroupError::InvalidParent {
            parent: p.to_path_buf(),
        });
    }
    layout
        .hierarchies
        .iter()
        .map(|h| {
            let cg_parent = parent.map_or_else(|| h.own.join("berth"), Path::to_path_buf);
            let outside = || CgroupError::NotVisible {
                cgroup: cg_parent.clone(),
                mount: h.mount.clone(),
            };
            let parent_dir = h.dir(&cg_parent).ok_or_else(outside)?;
            Ok(Place {
                version: h.version,
                controllers: h.controllers.clone(),
                top: h.mount.clone(),
                dir: parent_dir.join(name),
                parent: parent_dir,
                owned_parent: parent.is_none(),
            })
        })
        .collect()
}

/// The place of a controller: its v1 hierarchy, else the v2 one if it offers it.
fn find<'a>(places: &'a [Place], v1: &str, v2: &str) -> Option<&'a Place> {
    places
        .iter()
        .find(|p| p.version == Version::V1 && p.has(v1))
        .or_else(|| {
            places
                .iter()
                .find(|p| p.version == Version::V2 && p.has(v2))
        })
}

/// The limits asked for, as (v1 name, v2 name) of their controllers.
fn asked(limits: &Limits) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if limits.memory.is_some() || limits.memory_swap.is_some() {
        out.push(("memory", "memory"));
    }
    if limits.pids.is_some() {
        out.push(("pids", "pids"));
    }
    if limits.cpus.is_some() {
        out.push(("cpu", "cpu"));
    }
    if limits.cpuset.is_some() {
        out.push(("cpuset", "cpuset"));
    }
    if limits.io_weight.is_some() {
        out.push(("blkio", "io"));
    }
    out
}

/// v2 controllers the limits need enabled in every ancestor's
/// `cgroup.subtree_control`.
pub(crate) fn needed_v2(places: &[Place], limits: &Limits) -> Vec<&'static str> {
    asked(limits)
        .into_iter()
        .filter(|(v1, v2)| find(places, v1, v2).is_some_and(|p| p.version == Version::V2))
        .map(|(_, v2)| v2)
        .collect()
}

fn invalid(what: &'static str, value: impl ToString, reason: &'static str) -> CgroupError {
    CgroupError::InvalidLimit {
        what,
        value: value.to_string(),
        reason,
    }
}

/// Checks the limits against each other and against the layout, before
/// anything is created.
pub(crate) fn validate(places: &[Place], limits: &Limits) -> Result<(), CgroupError> {
    for (v1, v2) in asked(limits) {
        if find(places, v1, v2).is_none() {
            return Err(CgroupError::Unavailable {
                controller: v2,
                reason: "no mounted cgroup hierarchy offers it".to_owned(),
            });
        }
    }
    if let Some(swap) = limits.memory_swap {
        match limits.memory {
            None => return Err(invalid("memory+swap", swap, "needs a memory limit too")),
            Some(m) if swap < m => {
                return Err(invalid("memory+swap", swap, "is below the memory limit"))
            }
            Some(_) => {}
        }
    }
    if limits.memory == Some(0) {
        return Err(invalid("memory", 0, "must be above zero"));
    }
    if limits.pids == Some(0) {
        return Err(invalid("pids", 0, "must be at least 1"));
    }
    if let Some(c) = limits.cpus.filter(|c| !c.is_finite() || *c <= 0.0) {
        return Err(invalid("cpus", c, "must be a number above zero"));
    }
    if let Some(s) = &limits.cpuset {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b == b',' || b == b'-');
        if !ok {
            return Err(invalid("cpuset", s, "must be a cpu list like 0-2,4"));
        }
    }
    if let Some(wt) = limits.io_weight {
        let v2 = find(places, "blkio", "io").is_some_and(|p| p.version == Version::V2);
        let ok = if v2 {
            (1..=10000).contains(&wt)
        } else {
            (10..=1000).contains(&wt)
        };
        if !ok {
            let range = if v2 {
                "must be 1-10000 on cgroup v2"
            } else {
                "must be 10-1000 on cgroup v1"
            };
            return Err(invalid("io weight", wt, range));
        }
    }
    Ok(())
}

/// cfs quota in µs per 100 ms period; at least 1 ms, as the kernel wants.
pub(crate) fn quota_us(cpus: f64) -> u64 {
    let q = (cpus * 100_000.0).round();
    if q >= 1e15 {
        1_000_000_000_000_000
    } else {
        (q as u64).max(1000)
    }
}

fn read_trimmed(file: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(file)
        .map(|s| s.trim().to_owned())
        .map_err(|source| CgroupError::Read {
            path: file.to_path_buf(),
            source,
        })
}

/// v1 cpuset starts empty: the parent's mems, and `cpus` or the parent's cpus,
/// for any of the two that `dir` lacks (always when `cpus` is given).
pub(crate) fn cpuset_fill(
    parent: &Path,
    dir: &Path,
    cpus: Option<&str>,
) -> Result<Vec<Write>, CgroupError> {
    let mut out = Vec::new();
    if read_trimmed(&dir.join("cpuset.mems"))?.is_empty() {
        out.push(w(
            dir,
            "cpuset.mems",
            read_trimmed(&parent.join("cpuset.mems"))?,
        ));
    }
    match cpus {
        Some(c) => out.push(w(dir, "cpuset.cpus", c)),
        None if read_trimmed(&dir.join("cpuset.cpus"))?.is_empty() => {
            out.push(w(
                dir,
                "cpuset.cpus",
                read_trimmed(&parent.join("cpuset.cpus"))?,
            ));
        }
        None => {}
    }
    Ok(out)
}

/// What to write once the directories exist, in order, and where the v2
/// device program goes (if any).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub writes: Vec<Write>,
    pub bpf: Option<PathBuf>,
}

fn memory_writes(p: &Place, limits: &Limits) -> Result<Vec<Write>, CgroupError> {
    let mut out = Vec::new();
    let Some(mem) = limits.memory else {
        return Ok(out);
    };
    let v1 = p.version == Version::V1;
    let num = |v: u64| match (v, v1) {
        (u64::MAX, true) => "-1".to_owned(),
        (u64::MAX, false) => "max".to_owned(),
        (v, _) => v.to_string(),
    };
    out.push(w(
        &p.dir,
        if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        },
        num(mem),
    ));
    if let Some(swap) = limits.memory_swap {
        let file = if v1 {
            "memory.memsw.limit_in_bytes"
        } else {
            "memory.swap.max"
        };
        if !p.dir.join(file).exists() {
            return Err(CgroupError::SwapAccountingOff {
                file: p.dir.join(file),
            });
        }
        // v1 limits memory+swap; v2 limits swap alone.
        let value = match (v1, swap, mem) {
            (true, s, _) => num(s),
            (false, u64::MAX, _) | (false, _, u64::MAX) => num(u64::MAX),
            (false, s, m) => (s - m).to_string(),
        };
        out.push(w(&p.dir, file, value));
    }
    Ok(out)
}

fn io_weight_write(p: &Place, weight: u16) -> Result<Write, CgroupError> {
    let candidates: &[(&str, String)] = if p.version == Version::V1 {
        &[
            ("blkio.weight", weight.to_string()),
            ("blkio.bfq.weight", weight.to_string()),
        ]
    } else {
        &[
            ("io.weight", format!("default {weight}")),
            ("io.bfq.weight", format!("default {weight}")),
        ]
    };
    candidates
        .iter()
        .find(|(f, _)| p.dir.join(f).exists())
        .map(|(f, v)| w(&p.dir, f, v.clone()))
        .ok_or_else(|| CgroupError::NoWeightFile {
            dir: p.dir.clone(),
            files: if p.version == Version::V1 {
                "blkio.weight nor blkio.bfq.weight"
            } else {
                "io.weight nor io.bfq.weight"
            },
        })
}

/// The writes for `limits` and the device policy, in the order they must
/// happen, reading the (already created) directories to pick files.
pub(crate) fn plan(
    places: &[Place],
    limits: &Limits,
    restrict_devices: bool,
) -> Result<Plan, CgroupError> {
    validate(places, limits)?;
    let mut out = Plan::default();
    if let Some(p) = find(places, "memory", "memory") {
        out.writes.extend(memory_writes(p, limits)?);
    }
    if let (Some(n), Some(p)) = (limits.pids, find(places, "pids", "pids")) {
        out.writes.push(w(&p.dir, "pids.max", n.to_string()));
    }
    if let (Some(c), Some(p)) = (limits.cpus, find(places, "cpu", "cpu")) {
        let q = quota_us(c);
        if p.version == Version::V1 {
            out.writes.push(w(&p.dir, "cpu.cfs_period_us", "100000"));
            out.writes
                .push(w(&p.dir, "cpu.cfs_quota_us", q.to_string()));
        } else {
            out.writes.push(w(&p.dir, "cpu.max", format!("{q} 100000")));
        }
    }
    // v1 cpuset needs cpus and mems before any task can join, asked or not.
    if let Some(p) = places
        .iter()
        .find(|p| p.version == Version::V1 && p.has("cpuset"))
    {
        out.writes
            .extend(cpuset_fill(&p.parent, &p.dir, limits.cpuset.as_deref())?);
    } else if let (Some(c), Some(p)) = (&limits.cpuset, find(places, "cpuset", "cpuset")) {
        out.writes.push(w(&p.dir, "cpuset.cpus", c.clone()));
    }
    if let (Some(wt), Some(p)) = (limits.io_weight, find(places, "blkio", "io")) {
        out.writes.push(io_weight_write(p, wt)?);
    }
    if restrict_devices {
        if let Some(p) = places
            .iter()
            .find(|p| p.version == Version::V1 && p.has("devices"))
        {
            out.writes.push(w(&p.dir, "devices.deny", "a"));
            for line in devices::v1_allow_lines() {
                out.writes.push(w(&p.dir, "devices.allow", line));
            }
        } else if let Some(p) = places.iter().find(|p| p.version == Version::V2) {
            out.bpf = Some(p.dir.clone());
        } else {
            return Err(CgroupError::Unavailable {
                controller: "devices",
                reason: "no v1 devices hierarchy and no cgroup2 mount for a device program"
                    .to_owned(),
            });
        }
    }
    Ok(out)
}

/// The line to write to a `cgroup.subtree_control` whose cgroup offers
/// `available` and has `enabled` on, so that `needed` are all on: `None` if
/// they are already, the first missing one as the error if not offered.
pub(crate) fn enable_line<'a>(
    available: &str,
    enabled: &str,
    needed: &[&'a str],
) -> Result<Option<String>, &'a str> {
    let has = |list: &str, c: &str| list.split_whitespace().any(|x| x == c);
    let mut line = Vec::new();
    for c in needed {
        if has(enabled, c) {
            continue;
        }
        if !has(available, c) {
            return Err(c);
        }
        line.push(format!("+{c}"));
    }
    Ok((!line.is_empty()).then(|| line.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::layout::tests::{HYBRID_CGROUP, HYBRID_MOUNTINFO};

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// The hybrid host's tree with `c1`'s directories made, as the kernel
    /// would fill them (only the files planning looks at).
    fn hybrid(tmp: &Path, swap: bool, blkio_weight: bool) -> Vec<Place> {
        let cg = tmp.join("sys/fs/cgroup");
        put(&cg.join("unified/cgroup.controllers"), "hugetlb\n");
        let l = Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP, tmp).unwrap();
        let places = places(&l, None, "c1").unwrap();
        for p in &places {
            std::fs::create_dir_all(&p.dir).unwrap();
        }
        put(
            &cg.join("memory/process_api/5863/berth/c1/memory.limit_in_bytes"),
            "",
        );
        if swap {
            put(
                &cg.join("memory/process_api/5863/berth/c1/memory.memsw.limit_in_bytes"),
                "",
            );
        }
        put(&cg.join("cpuset/berth/cpuset.cpus"), "0-1\n");
        put(&cg.join("cpuset/berth/cpuset.mems"), "0\n");
        put(&cg.join("cpuset/berth/c1/cpuset.cpus"), "\n");
        put(&cg.join("cpuset/berth/c1/cpuset.mems"), "\n");
        if blkio_weight {
            put(&cg.join("blkio/berth/c1/blkio.bfq.weight"), "");
        }
        places
    }

    fn pure_v2(tmp: &Path) -> Vec<Place> {
        let cg = tmp.join("sys/fs/cgroup");
        put(
            &cg.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        let mi = "30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::parse(mi, "0::/\n", tmp).unwrap();
        let places = places(&l, None, "c1").unwrap();
        put(&cg.join("berth/c1/memory.swap.max"), "max\n");
        put(&cg.join("berth/c1/io.weight"), "default 100\n");
        places
    }

    fn full() -> Limits {
        Limits {
            memory: Some(64 << 20),
            memory_swap: Some(96 << 20),
            pids: Some(64),
            cpus: Some(0.5),
            cpuset: Some("0".into()),
            io_weight: Some(500),
        }
    }

    /// (file relative to `root`, value) pairs, in order.
    fn rel(root: &Path, plan: &Plan) -> Vec<(String, String)> {
        plan.writes
            .iter()
            .map(|w| {
                let f = w
                    .file
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (f, w.value.clone())
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn hybrid_places_follow_the_callers_cgroup_per_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let places = hybrid(tmp.path(), true, true);
        let dirs: Vec<_> = places
            .iter()
            .map(|p| {
                p.dir
                    .strip_prefix(tmp.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            dirs,
            [
                "sys/fs/cgroup/cpu/berth/c1",
                "sys/fs/cgroup/cpuset/berth/c1",
                "sys/fs/cgroup/memory/process_api/5863/berth/c1",
                "sys/fs/cgroup/devices/berth/c1",
                "sys/fs/cgroup/freezer/berth/c1",
                "sys/fs/cgroup/blkio/berth/c1",
                "sys/fs/cgroup/pids/berth/c1",
                "sys/fs/cgroup/unified/berth/c1",
            ]
        );
        let l = Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP, tmp.path()).unwrap();
        let given = super::places(&l, Some(Path::new("/ct")), "x").unwrap();
        assert!(given[2].dir.ends_with("sys/fs/cgroup/memory/ct/x"));
        assert!(matches!(
            super::places(&l, Some(Path::new("ct")), "x"),
            Err(CgroupError::InvalidParent { .. })
        ));
    }

    #[test]
    fn hybrid_writes_go_to_v1_files() {
        let tmp = tempfile::tempdir().unwrap();
        let places = hybrid(tmp.path(), true, true);
        let plan = plan(&places, &full(), true).unwrap();
        assert_eq!(plan.bpf, None, "v1 devices, no program");
        let mem = "sys/fs/cgroup/memory/process_api/5863/berth/c1";
        let mut want = vec![
            (
                format!("{mem}/memory.limit_in_bytes"),
                "67108864".to_owned(),
            ),
            (
                format!("{mem}/memory.memsw.limit_in_bytes"),
                "100663296".to_owned(),
            ),
        ];
        want.extend(pairs(&[
            ("sys/fs/cgroup/pids/berth/c1/pids.max", "64"),
            ("sys/fs/cgroup/cpu/berth/c1/cpu.cfs_period_us", "100000"),
            ("sys/fs/cgroup/cpu/berth/c1/cpu.cfs_quota_us", "50000"),
            ("sys/fs/cgroup/cpuset/berth/c1/cpuset.mems", "0"),
            ("sys/fs/cgroup/cpuset/berth/c1/cpuset.cpus", "0"),
            ("sys/fs/cgroup/blkio/berth/c1/blkio.bfq.weight", "500"),
            ("sys/fs/cgroup/devices/berth/c1/devices.deny", "a"),
        ]));
        let got = rel(tmp.path(), &plan);
        assert_eq!(got[..want.len()], want[..]);
        let allows: Vec<_> = got[want.len()..]
            .iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect();
        assert_eq!(allows.len(), 9);
        assert_eq!(
            allows[0],
            ("sys/fs/cgroup/devices/berth/c1/devices.allow", "c 1:3 rwm")
        );
        assert_eq!(allows[8].1, "c 136:* rwm");
        assert!(needed_v2(&places, &full()).is_empty());
    }

    #[test]
    fn hybrid_cpuset_is_inherited_when_not_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let places = hybrid(tmp.path(), false, false);
        let plan = plan(&places, &Limits::default(), false).unwrap();
        assert_eq!(
            rel(tmp.path(), &plan),
            pairs(&[
                ("sys/fs/cgroup/cpuset/berth/c1/cpuset.mems", "0"),
                ("sys/fs/cgroup/cpuset/berth/c1/cpuset.cpus", "0-1"),
            ])
        );
    }

    #[test]
    fn hybrid_refusals_name_the_missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let places = hybrid(tmp.path(), false, false);
        let e = plan(&places, &full(), false).unwrap_err();
        assert!(matches!(e, CgroupError::SwapAccountingOff { .. }), "{e}");
        assert!(e.to_string().contains("memory.memsw.limit_in_bytes"), "{e}");
        let mut l = full();
        l.memory_swap = None;
        let e = plan(&places, &l, false).unwrap_err();
        assert!(matches!(e, CgroupError::NoWeightFile { .. }), "{e}");
        assert!(e.to_string().contains("blkio.weight"), "{e}");
        l.io_weight = Some(5);
        let e = plan(&places, &l, false).unwrap_err();
        assert!(e.to_string().contains("10-1000"), "{e}");
    }

    #[test]
    fn pure_v2_writes_and_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let places = pure_v2(tmp.path());
        assert_eq!(places.len(), 1);
        let plan = plan(&places, &full(), true).unwrap();
        assert_eq!(
            rel(tmp.path(), &plan),
            pairs(&[
                ("sys/fs/cgroup/berth/c1/memory.max", "67108864"),
                ("sys/fs/cgroup/berth/c1/memory.swap.max", "33554432"),
                ("sys/fs/cgroup/berth/c1/pids.max", "64"),
                ("sys/fs/cgroup/berth/c1/cpu.max", "50000 100000"),
                ("sys/fs/cgroup/berth/c1/cpuset.cpus", "0"),
                ("sys/fs/cgroup/berth/c1/io.weight", "default 500"),
            ])
        );
        assert_eq!(plan.bpf, Some(tmp.path().join("sys/fs/cgroup/berth/c1")));
        assert_eq!(
            needed_v2(&places, &full()),
            ["memory", "pids", "cpu", "cpuset", "io"]
        );
        let only_pids = Limits {
            pids: Some(10),
            ..Limits::default()
        };
        assert_eq!(needed_v2(&places, &only_pids), ["pids"]);
        let mut unlimited = full();
        unlimited.memory = Some(u64::MAX);
        unlimited.memory_swap = Some(u64::MAX);
        unlimited.io_weight = Some(10000);
        let got = rel(tmp.path(), &plan_ok(&places, &unlimited));
        assert_eq!(got[0].1, "max");
        assert_eq!(got[1].1, "max");
        assert_eq!(got[5].1, "default 10000");
    }

    fn plan_ok(places: &[Place], l: &Limits) -> Plan {
        plan(places, l, false).unwrap()
    }

    #[test]
    fn limits_are_checked_against_each_other() {
        let tmp = tempfile::tempdir().unwrap();
        let places = pure_v2(tmp.path());
        let bad = [
            Limits {
                memory_swap: Some(1 << 20),
                ..Limits::default()
            },
            Limits {
                memory: Some(2 << 20),
                memory_swap: Some(1 << 20),
                ..Limits::default()
            },
            Limits {
                memory: Some(0),
                ..Limits::default()
            },
            Limits {
                pids: Some(0),
                ..Limits::default()
            },
            Limits {
                cpus: Some(0.0),
                ..Limits::default()
            },
            Limits {
                cpus: Some(f64::NAN),
                ..Limits::default()
            },
            Limits {
                cpuset: Some("0;1".into()),
                ..Limits::default()
            },
            Limits {
                io_weight: Some(0),
                ..Limits::default()
            },
        ];
        for l in bad {
            let e = validate(&places, &l).unwrap_err();
            assert!(matches!(e, CgroupError::InvalidLimit { .. }), "{l:?}: {e}");
        }
        assert!(validate(
            &places,
            &Limits {
                io_weight: Some(5000),
                ..Limits::default()
            }
        )
        .is_ok());
        // A controller nobody offers.
        let v1_pids_only = vec![Place {
            version: Version::V1,
            controllers: vec!["pids".into()],
            top: tmp.path().into(),
            parent: tmp.path().into(),
            dir: tmp.path().join("x"),
            owned_parent: false,
        }];
        let e = validate(&v1_pids_only, &full()).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::Unavailable {
                    controller: "memory",
                    ..
                }
            ),
            "{e}"
        );
        let e = plan(&v1_pids_only, &Limits::default(), true).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::Unavailable {
                    controller: "devices",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn quota_rounds_and_has_a_floor() {
        assert_eq!(quota_us(0.5), 50_000);
        assert_eq!(quota_us(2.0), 200_000);
        assert_eq!(quota_us(0.333_333), 33_333);
        assert_eq!(quota_us(0.001), 1000);
    }

    #[test]
    fn subtree_control_lines() {
        let avail = "cpuset cpu io memory pids";
        assert_eq!(
            enable_line(avail, "", &["memory", "pids"]),
            Ok(Some("+memory +pids".into()))
        );
        assert_eq!(
            enable_line(avail, "memory", &["memory", "pids"]),
            Ok(Some("+pids".into()))
        );
        assert_eq!(
            enable_line(avail, "pids memory", &["memory", "pids"]),
            Ok(None)
        );
        assert_eq!(enable_line("hugetlb", "", &["pids"]), Err("pids"));
        assert_eq!(enable_line("", "", &[]), Ok(None));
    }
}
