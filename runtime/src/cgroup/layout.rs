//! Which cgroup hierarchies this host has, where they are mounted and where
//! the caller sits in each: from `/proc/self/mountinfo` and `/proc/self/cgroup`,
//! below a filesystem root (`/` for real, a temp dir in tests).

use std::path::{Component, Path, PathBuf};

use super::CgroupError;

/// v1 controllers berth creates a cgroup for (with limits or not): the ones
/// it can limit, plus devices (policy) and freezer (to stop forks on kill).
pub(crate) const V1_USED: [&str; 7] = [
    "cpu", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    pub version: Version,
    /// v1: the controllers bound to it; v2: those its top cgroup offers
    /// (`cgroup.controllers` at the mount point).
    pub controllers: Vec<String>,
    /// The mount point, below the filesystem root.
    pub mount: PathBuf,
    /// The cgroup shown at the mount point (mountinfo's root field).
    pub mount_root: PathBuf,
    /// The caller's cgroup in this hierarchy.
    pub own: PathBuf,
}

impl Hierarchy {
    /// The directory of cgroup `cg` (absolute inside the hierarchy), if the
    /// mount shows it.
    pub fn dir(&self, cg: &Path) -> Option<PathBuf> {
        let rel = cg.strip_prefix(&self.mount_root).ok()?;
        Some(self.mount.join(rel))
    }
}

/// The hierarchies berth uses: v1 ones carrying a controller of [`V1_USED`],
/// and the cgroup2 one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// The host's layout.
    pub fn host() -> Result<Layout, CgroupError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| CgroupError::Read {
                path: PathBuf::from(p),
                source,
            })
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let cgroup = read("/proc/self/cgroup")?;
        Layout::parse(&mountinfo, &cgroup, Path::new("/"))
    }

    /// The layout described by `mountinfo` and `proc_cgroup` (the text of
    /// `/proc/self/mountinfo` and `/proc/self/cgroup`), with mount points
    /// taken below `fs_root`. Reads `cgroup.controllers` of the v2 mount.
    pub fn parse(
        mountinfo: &str,
        proc_cgroup: &str,
        fs_root: &Path,
    ) -> Result<Layout, CgroupError> {
        let memberships = parse_proc_cgroup(proc_cgroup);
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for m in parse_mountinfo(mountinfo) {
            let mount = fs_root.join(m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point));
            let (version, controllers, own) = match m.fstype.as_str() {
                "cgroup2" => {
                    let Some((_, own)) = memberships.iter().find(|(c, _)| c.is_empty()) else {
                        continue;
                    };
                    let file = mount.join("cgroup.controllers");
                    let text = std::fs::read_to_string(&file)
                        .map_err(|source| CgroupError::Read { path: file, source })?;
                    let ctrls = text.split_whitespace().map(str::to_owned).collect();
                    (Version::V2, ctrls, own.clone())
                }
                "cgroup" => {
                    let opts: Vec<&str> = m.super_opts.split(',').collect();
                    let ctrls: Vec<String> = V1_USED
                        .iter()
                        .filter(|c| opts.contains(c))
                        .map(|c| (*c).to_owned())
                        .collect();
                    if ctrls.is_empty() {
                        continue;
                    }
                    // The /proc/self/cgroup line whose controller list is
                    // exactly this mount's set of (all) controllers.
                    let Some((_, own)) = memberships.iter().find(|(list, _)| {
                        !list.is_empty()
                            && list.iter().all(|c| opts.contains(&c.as_str()))
                            && ctrls.iter().all(|c| list.contains(c))
                    }) else {
                        continue;
                    };
                    (Version::V1, ctrls, own.clone())
                }
                _ => continue,
            };
            let h = Hierarchy {
                version,
                controllers,
                mount,
                mount_root: m.root,
                own,
            };
            // A hierarchy may be mounted several times: keep the first mount
            // that shows the caller's cgroup.
            let seen = hierarchies
                .iter()
                .any(|o| o.version == h.version && o.controllers == h.controllers);
            if !seen && h.own.starts_with(&h.mount_root) {
                hierarchies.push(h);
            }
        }
        if hierarchies.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Layout { hierarchies })
    }
}

/// One line of mountinfo, the fields berth needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountLine {
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_opts: String,
}

/// `id parent maj:min root mount-point opts [optional…] - fstype source super-opts`
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?.to_owned();
            let _source = post.next()?;
            let super_opts = post.next().unwrap_or("").to_owned();
            Some(MountLine {
                root: PathBuf::from(unescape(pre.get(3)?)),
                mount_point: PathBuf::from(unescape(pre.get(4)?)),
                fstype,
                super_opts,
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `ID:controllers:path` lines: the controller list (empty for v2, e.g.
/// `["cpu", "cpuacct"]` or `["name=systemd"]` for v1) and the path.
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            let ctrls = f.next()?;
            let path = f.next()?;
            let list = ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Some((list, PathBuf::from(path)))
        })
        .collect()
}

/// Whether `p` is absolute and has only plain components (no `..`, no `.`).
pub(crate) fn is_plain_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    impl Layout {
        fn v1(&self, controller: &str) -> Option<&Hierarchy> {
            self.hierarchies
                .iter()
                .find(|h| h.version == Version::V1 && h.controllers.iter().any(|c| c == controller))
        }

        fn v2(&self) -> Option<&Hierarchy> {
            self.hierarchies.iter().find(|h| h.version == Version::V2)
        }
    }

    pub(crate) const HYBRID_MOUNTINFO: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    pub(crate) const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/5863
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn mountinfo_fields_and_escapes() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].root, PathBuf::from("/mnt1"));
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/my dir"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].super_opts, "rw,errors=continue");
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn proc_cgroup_lines() {
        let l = parse_proc_cgroup("2:cpu,cpuacct:/a:b\n0::/x\n");
        assert_eq!(
            l[0],
            (vec!["cpu".into(), "cpuacct".into()], PathBuf::from("/a:b"))
        );
        assert_eq!(l[1], (vec![], PathBuf::from("/x")));
    }

    #[test]
    fn hybrid_host_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let unified = tmp.path().join("sys/fs/cgroup/unified");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "hugetlb\n").unwrap();
        let l = Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP, tmp.path()).unwrap();
        let names: Vec<String> = l
            .hierarchies
            .iter()
            .map(|h| h.controllers.join(","))
            .collect();
        // cpuacct and name=systemd are not berth's business.
        assert_eq!(
            names,
            ["cpu", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb"]
        );
        let mem = l.v1("memory").unwrap();
        assert_eq!(mem.own, PathBuf::from("/process_api/5863"));
        assert_eq!(mem.mount, tmp.path().join("sys/fs/cgroup/memory"));
        assert_eq!(
            mem.dir(Path::new("/process_api/5863/berth/c")),
            Some(
                tmp.path()
                    .join("sys/fs/cgroup/memory/process_api/5863/berth/c")
            )
        );
        assert_eq!(l.v2().unwrap().mount, unified);
        assert_eq!(l.v1("pids").unwrap().controllers, ["pids"]);
    }

    #[test]
    fn pure_v2_and_comounted_v1() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = tmp.path().join("sys/fs/cgroup");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let mi = "30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::parse(mi, "0::/user.slice/x.scope\n", tmp.path()).unwrap();
        assert_eq!(l.hierarchies.len(), 1);
        let v2 = l.v2().unwrap();
        assert_eq!(v2.controllers, ["cpuset", "cpu", "io", "memory", "pids"]);
        assert_eq!(v2.own, PathBuf::from("/user.slice/x.scope"));

        let mi = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                  33 31 0:29 / /mnt/again rw - cgroup cgroup rw,cpu,cpuacct\n";
        let l = Layout::parse(mi, "3:cpu,cpuacct:/a\n", tmp.path()).unwrap();
        assert_eq!(
            l.hierarchies.len(),
            1,
            "a second mount of one hierarchy is skipped"
        );
        assert_eq!(l.hierarchies[0].controllers, ["cpu"]);
        assert_eq!(
            l.hierarchies[0].mount,
            tmp.path().join("sys/fs/cgroup/cpu,cpuacct")
        );
    }

    #[test]
    fn a_mount_that_hides_the_callers_cgroup_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let mi = "32 31 0:29 /other /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        let e = Layout::parse(mi, "3:pids:/mine\n", tmp.path()).unwrap_err();
        assert!(matches!(e, CgroupError::NoHierarchy), "{e}");
        let mi = "32 31 0:29 /mine /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        let l = Layout::parse(mi, "3:pids:/mine/sub\n", tmp.path()).unwrap();
        let h = l.v1("pids").unwrap();
        assert_eq!(
            h.dir(Path::new("/mine/sub/berth")),
            Some(tmp.path().join("sys/fs/cgroup/pids/sub/berth"))
        );
        assert_eq!(h.dir(Path::new("/elsewhere")), None);
    }

    #[test]
    fn plain_absolute_paths() {
        assert!(is_plain_absolute(Path::new("/berth")));
        assert!(!is_plain_absolute(Path::new("berth")));
        assert!(!is_plain_absolute(Path::new("/a/../b")));
    }
}
