//! aufs: read-only lower branches under one writable upper branch. Mounted with
//! the kernel's aufs where /proc/filesystems lists it, else with unionfs-fuse.
//!
//! Layout: a fresh volume is `POOL/NAME/{lower,upper}` (`lower` stays empty); a
//! snapshot clone is `POOL/NAME/upper` stacked on its origin's branches; a snapshot
//! is `POOL/.snapshots/NAME/SNAP/upper`, a copy of the volume's upper over the same
//! lowers. The spec lists the lowers topmost first, then the upper, and a
//! `lowers` file beside each upper records the lowers (see `lookup`).
//!
//! Deletions are recorded in the upper in the mechanism's own format: unionfs-fuse
//! writes `UPPER/.unionfs-fuse/PATH_HIDDEN~` and honours those of read-only
//! branches too, so a file deleted in a middle layer stays hidden in clones stacked
//! above it; kernel aufs writes `.wh.NAME` files. The two do not read each other's,
//! so a volume keeps to the mechanism it was written with.

mod daemon;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::Runner;
use berth_bdev::copy::{copy_tree, NoProgress};
use berth_bdev::delete::remove_tree;
use berth_bdev::fsutil::{allocated_bytes, claim_dir, create_dir_all, kernel_has_fs};
use berth_bdev::mount::{self, FsOpt, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::{
    Backend, BackendKind, BdevError, Caps, CreateOpts, PoolConfig, Result, Revert, Usage,
    UsageKind, VolumeSpec,
};
use tracing::debug;

use crate::lookup::{self, Entry};
pub use daemon::Daemon;

/// unionfs-fuse options: copy-on-write into the upper, root's file ownership and
/// device nodes kept, stable inode numbers, whiteout directory hidden from readdir.
const UNIONFS_OPTS: &str = "cow,allow_other,use_ino,suid,dev,nonempty,hide_meta_files";

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Aufs::open(pool, runner)?))
}

/// What mounts the branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Kernel,
    UnionfsFuse,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Kernel => "aufs (kernel)",
            Mechanism::UnionfsFuse => "unionfs-fuse",
        }
    }
}

pub struct Aufs {
    root: PathBuf,
    runner: Arc<dyn Runner>,
    mech: Mechanism,
}

/// A branch list as both mechanisms spell it: `UPPER=rw:LOWER=ro:…` (kernel aufs,
/// lowercase) or `UPPER=RW:LOWER=RO:…` (unionfs-fuse).
pub fn branch_list(upper: &Path, lowers: &[PathBuf], read_only: bool, mech: Mechanism) -> OsString {
    let (rw, ro) = match mech {
        Mechanism::Kernel => ("=rw", "=ro"),
        Mechanism::UnionfsFuse => ("=RW", "=RO"),
    };
    let mut s = OsString::from(upper.as_os_str());
    s.push(if read_only { ro } else { rw });
    for l in lowers {
        s.push(":");
        s.push(l.as_os_str());
        s.push(ro);
    }
    s
}

/// Both mechanisms split branches at ':' and permissions at '='; the kernel's
/// option string also splits at ','.
fn check_branch(spec: &VolumeSpec, p: &Path) -> Result<()> {
    let bytes = p.as_os_str().as_encoded_bytes();
    match bytes.iter().find(|b| matches!(b, b':' | b'=' | b',')) {
        Some(c) => Err(BdevError::InvalidSpec {
            spec: spec.to_string(),
            reason: format!(
                "branch {p:?} contains {:?}, which aufs branch lists cannot express",
                char::from(*c)
            ),
        }),
        None => Ok(()),
    }
}

/// Fails if a unionfs mount uses `dir` as a branch (as its writable one, if
/// `writable_only`). Kernel aufs mounts are not checked.
fn refuse_if_branch_in_use(dir: &Path, op: &'static str, writable_only: bool) -> Result<()> {
    match daemon::using(dir, writable_only) {
        None => Ok(()),
        Some(pid) => Err(BdevError::Io {
            op,
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                format!("a unionfs mount (pid {pid}) uses it as a branch; unmount that first"),
            ),
        }),
    }
}

impl Aufs {
    pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        let mech = if kernel_has_fs("aufs") {
            Mechanism::Kernel
        } else {
            Mechanism::UnionfsFuse
        };
        Ok(Aufs {
            root: crate::pool_path(pool)?.to_path_buf(),
            runner,
            mech,
        })
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mech
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join(".snapshots")
    }

    /// The branches of an aufs volume of this pool, whose upper is
    /// `POOL/NAME/upper` or `POOL/.snapshots/NAME/SNAP/upper`.
    fn branches_of<'a>(&self, v: &'a VolumeSpec) -> Result<(&'a [PathBuf], &'a Path)> {
        let bad = |reason: String| BdevError::InvalidSpec {
            spec: v.to_string(),
            reason,
        };
        let VolumeSpec::Aufs { lowers, upper } = v else {
            return Err(bad("not an aufs volume".to_owned()));
        };
        let home = upper.parent().unwrap_or(upper);
        let depth_ok = home.parent() == Some(&self.root)
            || home.parent().and_then(Path::parent) == Some(&self.snapshots_dir());
        if upper.file_name() != Some(OsStr::new("upper")) || !depth_ok {
            return Err(bad(format!(
                "not an aufs volume of the pool at {:?}",
                self.root
            )));
        }
        for p in lowers.iter().map(PathBuf::as_path).chain([upper.as_path()]) {
            check_branch(v, p)?;
        }
        Ok((lowers, upper))
    }

    /// The directory holding a volume's upper (and its own lower).
    fn home_of<'a>(&self, v: &'a VolumeSpec) -> Result<&'a Path> {
        let (_, upper) = self.branches_of(v)?;
        Ok(upper.parent().unwrap_or(upper))
    }

    fn is_snapshot(&self, upper: &Path) -> bool {
        upper.starts_with(self.snapshots_dir())
    }

    /// Creates `home` (which must not exist) with an empty `upper`, registering
    /// the removal of both.
    fn make_home(&self, home: &Path, rv: &mut Revert) -> Result<PathBuf> {
        claim_dir(home, &self.root, rv)?;
        let upper = home.join("upper");
        fs::create_dir(&upper).map_err(BdevError::io("create directory", &upper))?;
        Ok(upper)
    }

    /// The volume or snapshot whose directory is `home`, if there is one.
    fn found_at(home: PathBuf) -> Result<Option<VolumeSpec>> {
        if !lookup::is_entry(&home, Entry::Dir)? {
            return Ok(None);
        }
        Ok(Some(VolumeSpec::Aufs {
            lowers: lookup::lowers_of(&home)?,
            upper: home.join("upper"),
        }))
    }

    /// Removes the directory of `v` (whole, partly made or partly removed), or
    /// warns that it is gone.
    fn remove_home(&self, v: &VolumeSpec, home: &Path) -> Result<()> {
        if !lookup::exists(home)? {
            lookup::already_gone(v);
            return Ok(());
        }
        remove_tree(home, &self.root)
    }

    fn mount_unionfs(&self, branches: &OsStr, at: &Path, read_only: bool) -> Result<MountGuard> {
        let mut opts = UNIONFS_OPTS.to_owned();
        if read_only {
            opts.push_str(",ro");
        }
        let args = [
            OsStr::new("-o"),
            OsStr::new(&opts),
            branches,
            at.as_os_str(),
        ];
        self.runner.run("unionfs", &args)?;
        // unionfs returns once its daemon serves the mount; the daemon is ours now.
        let Some(d) = daemon::find(at).pop() else {
            let _ = mount::unmount_detach(at);
            return Err(BdevError::Io {
                op: "find the unionfs daemon serving",
                path: at.to_path_buf(),
                source: std::io::Error::other("no unionfs process with this mount point"),
            });
        };
        debug!(pid = d.pid, at = %at.display(), "unionfs mounted");
        let mut guard = MountGuard::mounted(at);
        let at = at.to_path_buf();
        guard.on_release(format!("stop unionfs (pid {})", d.pid), move || {
            daemon::reap(&d, &at)
        });
        Ok(guard)
    }
}

impl Backend for Aufs {
    fn kind(&self) -> BackendKind {
        BackendKind::Aufs
    }

    fn caps(&self) -> Caps {
        Caps {
            snapshot: true,
            clone_from_snapshot: true,
            snapshot_clone: true,
            copy_on_write: true,
            clone_pins_origin: true,
            clone_reads_live_origin: true,
            promote: false,
            stacks_on_trees: true,
            // Debian's unionfs-fuse is built without xattr support.
            lacks_xattrs: self.mech == Mechanism::UnionfsFuse,
            coarse_timestamps: false,
            size_limit: false,
            block_backed: false,
            resize: false,
            kernel_fs: match self.mech {
                Mechanism::Kernel => &["aufs"],
                Mechanism::UnionfsFuse => &["fuse"],
            },
            tools: match self.mech {
                Mechanism::Kernel => &[],
                Mechanism::UnionfsFuse => &["unionfs"],
            },
        }
    }

    fn probe(&self) -> Result<()> {
        if self.mech == Mechanism::UnionfsFuse {
            let missing = if !kernel_has_fs("fuse") {
                Some("the kernel has neither aufs nor fuse (not in /proc/filesystems)")
            } else if !berth_bdev::cmd::have_program("unionfs") {
                Some("the kernel has no aufs and unionfs (unionfs-fuse) is not installed")
            } else {
                None
            };
            if let Some(missing) = missing {
                return Err(BdevError::Unavailable {
                    backend: "aufs",
                    missing: missing.to_owned(),
                    hint: "install it with `apt-get install unionfs-fuse` (and `modprobe fuse`), \
                           or use a kernel with aufs"
                        .to_owned(),
                });
            }
        }
        create_dir_all(&self.root)
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let whiteouts = match self.mech {
            Mechanism::Kernel => ".wh.NAME files in the upper branch",
            Mechanism::UnionfsFuse => "UPPER/.unionfs-fuse/PATH_HIDDEN~",
        };
        vec![
            ("mechanism", self.mech.as_str().to_owned()),
            ("whiteouts", whiteouts.to_owned()),
        ]
    }

    fn create(&self, name: &str, _opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let home = self.root.join(name);
        let upper = self.make_home(&home, rv)?;
        let lower = home.join("lower");
        fs::create_dir(&lower).map_err(BdevError::io("create directory", &lower))?;
        let lowers = vec![lower];
        lookup::write_lowers(&home, &lowers)?;
        Ok(VolumeSpec::Aufs { lowers, upper })
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let (lowers, upper) = self.branches_of(v)?;
        let ro = read_only || self.is_snapshot(upper);
        for b in lowers.iter().map(PathBuf::as_path).chain([upper]) {
            if !b.is_dir() {
                return Err(BdevError::NotFound {
                    what: "aufs branch",
                    name: b.display().to_string(),
                });
            }
        }
        let branches = branch_list(upper, lowers, ro, self.mech);
        match self.mech {
            Mechanism::Kernel => {
                mount::mount_fs(
                    "aufs",
                    OsStr::new("none"),
                    at,
                    &[FsOpt::s("br", &branches)],
                    ro,
                )?;
                Ok(MountGuard::mounted(at))
            }
            Mechanism::UnionfsFuse => self.mount_unionfs(&branches, at, ro),
        }
    }

    fn unmount(&self, _v: &VolumeSpec, at: &Path) -> Result<()> {
        // Found before the unmount, while the mount point still names them.
        let daemons = match self.mech {
            Mechanism::Kernel => Vec::new(),
            Mechanism::UnionfsFuse => daemon::find(at),
        };
        mount::unmount(at)?;
        let mut first = None;
        for d in daemons {
            if let Err(e) = daemon::reap(&d, at) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let home = self.home_of(v)?;
        for own in [home.join("upper"), home.join("lower")] {
            refuse_if_branch_in_use(&own, "refuse to destroy", false)?;
        }
        self.remove_home(v, home)
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        lookup::names_in(&self.root, Entry::Dir, "")
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        Self::found_at(self.root.join(name))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        lookup::names_in(&self.snapshots_dir().join(name), Entry::Dir, "")
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        validate_name(snap)?;
        Self::found_at(self.snapshots_dir().join(name).join(snap))
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let (_, upper) = self.branches_of(v)?;
        Ok(Usage {
            used_bytes: allocated_bytes(upper)?,
            kind: UsageKind::Allocated,
            limit_bytes: None,
            note: Some(
                "the upper branch only; lower branches are shared and not counted".to_owned(),
            ),
        })
    }

    fn snapshot(
        &self,
        v: &VolumeSpec,
        name: &str,
        snap: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(name)?;
        validate_name(snap)?;
        let (lowers, upper) = self.branches_of(v)?;
        let vol_home = self.home_of(v)?;
        // A copy of an upper that a mount is writing would be torn.
        refuse_if_branch_in_use(upper, "refuse to snapshot", true)?;
        let home = self.snapshots_dir().join(name).join(snap);
        let snap_upper = self.make_home(&home, rv)?;
        // The whiteout directory is copied too: the snapshot hides what the volume hid.
        copy_tree(upper, &snap_upper, &NoProgress)?;
        // Branches inside the volume's own directory (its empty `lower`) go when the
        // volume does, which a restore does while keeping the snapshot: the snapshot
        // gets its own copy. Foreign lowers (a clone's origin) are pinned by the
        // clone, which outlives its snapshots.
        let mut snap_lowers = Vec::with_capacity(lowers.len());
        for l in lowers {
            if l.starts_with(vol_home) {
                let own = home.join("lower");
                fs::create_dir(&own).map_err(BdevError::io("create directory", &own))?;
                copy_tree(l, &own, &NoProgress)?;
                snap_lowers.push(own);
            } else {
                snap_lowers.push(l.clone());
            }
        }
        lookup::write_lowers(&home, &snap_lowers)?;
        Ok(VolumeSpec::Aufs {
            lowers: snap_lowers,
            upper: snap_upper,
        })
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let home = self.home_of(snap)?;
        if !self.is_snapshot(home) {
            return Err(BdevError::InvalidSpec {
                spec: snap.to_string(),
                reason: "not a snapshot of this pool".to_owned(),
            });
        }
        self.remove_home(snap, home)?;
        if let Some(parent) = home.parent() {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let lowers: Vec<PathBuf> = match src {
            VolumeSpec::Aufs { lowers, upper } => {
                std::iter::once(upper).chain(lowers).cloned().collect()
            }
            other => match other.tree_path() {
                Some(tree) => vec![tree.to_path_buf()],
                None => {
                    return Err(BdevError::CloneRefused {
                        src: other.kind(),
                        dst: BackendKind::Aufs,
                        reason: "aufs stacks only on aufs volumes and plain trees (dir, btrfs)"
                            .to_owned(),
                        alternatives: vec!["make an independent copy (--copy)".to_owned()],
                    })
                }
            },
        };
        for l in &lowers {
            check_branch(src, l)?;
            if !l.is_dir() {
                return Err(BdevError::NotFound {
                    what: "origin branch",
                    name: l.display().to_string(),
                });
            }
        }
        let home = self.root.join(name);
        let upper = self.make_home(&home, rv)?;
        // The union shows the upper's root directory: it must look like the origin's.
        if let Some(top) = lowers.first() {
            berth_bdev::copy::copy_meta(top, &upper)?;
        }
        lookup::write_lowers(&home, &lowers)?;
        Ok(VolumeSpec::Aufs { lowers, upper })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    fn pool(dir: &Path) -> Aufs {
        let cfg = PoolConfig::new("t", BackendKind::Aufs).with_path(dir);
        let mut a = Aufs::open(&cfg, Arc::new(ScriptedRunner::new())).unwrap();
        a.mech = Mechanism::UnionfsFuse;
        a
    }

    #[test]
    fn branch_lists_per_mechanism() {
        let lowers = vec![PathBuf::from("/p/o/upper"), PathBuf::from("/p/o/lower")];
        let up = Path::new("/p/c/upper");
        assert_eq!(
            branch_list(up, &lowers, false, Mechanism::UnionfsFuse),
            "/p/c/upper=RW:/p/o/upper=RO:/p/o/lower=RO"
        );
        assert_eq!(
            branch_list(up, &lowers, true, Mechanism::UnionfsFuse),
            "/p/c/upper=RO:/p/o/upper=RO:/p/o/lower=RO"
        );
        assert_eq!(
            branch_list(up, &lowers[1..], false, Mechanism::Kernel),
            "/p/c/upper=rw:/p/o/lower=ro"
        );
    }

    #[test]
    fn specs_outside_the_pool_or_with_separators_are_refused() {
        let a = pool(Path::new("/p"));
        let ok = VolumeSpec::Aufs {
            lowers: vec!["/p/c/lower".into()],
            upper: "/p/c/upper".into(),
        };
        assert!(a.branches_of(&ok).is_ok());
        let snap = VolumeSpec::Aufs {
            lowers: vec!["/p/c/lower".into()],
            upper: "/p/.snapshots/c/s1/upper".into(),
        };
        assert!(a.branches_of(&snap).is_ok());
        assert!(a.is_snapshot(a.home_of(&snap).unwrap()));
        for (lowers, upper) in [
            (vec!["/p/c/lower"], "/elsewhere/c/upper"),
            (vec!["/p/c/lower"], "/p/c/sub/upper"),
            (vec!["/p/c/lower"], "/p/c/notupper"),
            (vec!["/p/c/lower"], "/p/upper"),
            (vec!["/we:ird"], "/p/c/upper"),
            (vec!["/a=b"], "/p/c/upper"),
        ] {
            let v = VolumeSpec::Aufs {
                lowers: lowers.into_iter().map(PathBuf::from).collect(),
                upper: upper.into(),
            };
            assert!(
                matches!(a.branches_of(&v), Err(BdevError::InvalidSpec { .. })),
                "{v}"
            );
        }
        assert!(a
            .branches_of(&VolumeSpec::Dir {
                path: "/p/c".into()
            })
            .is_err());
    }

    #[test]
    fn clones_stack_on_the_origins_branches() {
        let d = tempfile::tempdir().unwrap();
        let a = pool(d.path());
        let mut rv = Revert::new();
        let o = a.create("o", &CreateOpts::default(), &mut rv).unwrap();
        let c = a.snapshot_clone(&o, "c", &mut rv).unwrap();
        let c2 = a.snapshot_clone(&c, "c2", &mut rv).unwrap();
        let VolumeSpec::Aufs { lowers, upper } = &c2 else {
            panic!("{c2}")
        };
        let p = d.path();
        assert_eq!(upper, &p.join("c2/upper"));
        assert_eq!(
            lowers,
            &vec![p.join("c/upper"), p.join("o/upper"), p.join("o/lower")]
        );
        // A plain tree becomes the single lower.
        let tree = p.join("tree");
        fs::create_dir(&tree).unwrap();
        let t = a
            .snapshot_clone(&VolumeSpec::Dir { path: tree.clone() }, "t", &mut rv)
            .unwrap();
        assert_eq!(
            t,
            VolumeSpec::Aufs {
                lowers: vec![tree],
                upper: p.join("t/upper")
            }
        );
        let q = VolumeSpec::Qcow2 {
            image: "/x.qcow2".into(),
        };
        assert!(matches!(
            a.snapshot_clone(&q, "q", &mut rv),
            Err(BdevError::CloneRefused { .. })
        ));
        drop(rv);
        assert_eq!(
            fs::read_dir(p).unwrap().count(),
            1,
            "revert leaves only the tree"
        );
    }
}
