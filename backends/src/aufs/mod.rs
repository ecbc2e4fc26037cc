//! aufs: read-only lower branches under one writable upper branch. Mounted with
//! the kernel's aufs where /proc/filesystems lists it, else with unionfs-fuse.
//!
//! Layout: a fresh volume is `POOL/NAME/{lower,upper}` (`lower` stays empty); a
//! snapshot clone is `POOL/NAME/upper` stacked on its origin's branches (reached by
//! path, so across pools too), or on another backend's plain tree; a snapshot
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
use berth_bdev::fsutil::{allocated_bytes, claim_dir, create_dir_all, kernel_has_fs, require_host};
use berth_bdev::mount::{self, FsOpt, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::registry::PathUse;
use berth_bdev::{
    Backend, BdevError, Caps, CreateOpts, PoolConfig, Registration, Result, Revert, SpecForm, Tool,
    Usage, UsageKind, VolumeSpec,
};
use tracing::debug;

use crate::layout::{Located, PoolDir};
use crate::lookup::{self, Entry, NoOptions};
pub use daemon::Daemon;

pub const NAME: &str = "aufs";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    aliases: &[],
    summary: "read-only branches under a writable one (kernel aufs, else unionfs-fuse)",
    path: PathUse::Volumes,
    pool_options: &[],
    open,
    check_spec: <AufsSpec as SpecForm>::canonical,
    stacks_on_trees: true,
};

/// unionfs-fuse options: copy-on-write into the upper, root's file ownership and
/// device nodes kept, stable inode numbers, whiteout directory hidden from readdir.
const UNIONFS_OPTS: &str = "cow,allow_other,use_ino,suid,dev,nonempty,hide_meta_files";

/// What the unionfs-fuse mechanism runs.
const UNIONFS_TOOLS: &[Tool] = &[Tool::new("unionfs", "unionfs-fuse")];

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Aufs::open(pool, runner)?))
}

crate::spec_shapes::union_spec!(
    /// An aufs spec: `aufs:LOWER[:LOWER…]:UPPER`, topmost lower first.
    AufsSpec,
    NAME,
    aliases: &[]
);

impl AufsSpec {
    /// Every branch, lowers (topmost first) then the upper.
    fn branches(&self) -> impl Iterator<Item = &Path> {
        self.lowers
            .iter()
            .map(PathBuf::as_path)
            .chain([self.upper.as_path()])
    }
}

/// The spec of an aufs volume with `lowers` (topmost first) under `upper`.
pub fn spec(lowers: Vec<PathBuf>, upper: PathBuf) -> VolumeSpec {
    AufsSpec::new(lowers, upper).to_spec()
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
    dir: PoolDir,
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
/// option string also splits at ','. `what` names the spec (or tree) in errors.
fn check_branch(what: &str, p: &Path) -> Result<()> {
    let bytes = p.as_os_str().as_encoded_bytes();
    match bytes.iter().find(|b| matches!(b, b':' | b'=' | b',')) {
        Some(c) => Err(BdevError::InvalidSpec {
            spec: what.to_owned(),
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
        pool.options::<NoOptions>()?;
        let mech = if kernel_has_fs("aufs") {
            Mechanism::Kernel
        } else {
            Mechanism::UnionfsFuse
        };
        Ok(Aufs {
            dir: PoolDir::new(pool.dir()?, Entry::Dir, ""),
            runner,
            mech,
        })
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mech
    }

    fn root(&self) -> &Path {
        self.dir.root()
    }

    /// The branches of an aufs volume or snapshot of this pool, whose upper is
    /// `POOL/NAME/upper` or `POOL/.snapshots/NAME/SNAP/upper`, and where it is.
    fn branches_of(&self, v: &VolumeSpec) -> Result<(AufsSpec, Located<PathBuf>)> {
        let s = AufsSpec::read_own(v)?;
        let loc = match lookup::union_home(&s.upper) {
            Some(home) => self.dir.locate_spec(v, home)?,
            None => {
                return Err(BdevError::foreign(
                    v,
                    format!("the {NAME} pool at {}", self.root().display()),
                ))
            }
        };
        let what = v.to_string();
        for p in s.branches() {
            check_branch(&what, p)?;
        }
        Ok((s, loc))
    }

    /// Creates `home` (which must not exist) with an empty `upper`, registering
    /// the removal of both.
    fn make_home(&self, home: &Path, rv: &mut Revert) -> Result<PathBuf> {
        claim_dir(home, self.root(), rv)?;
        let upper = home.join("upper");
        fs::create_dir(&upper).map_err(BdevError::io("create directory", &upper))?;
        Ok(upper)
    }

    /// The volume or snapshot whose directory is `home`.
    fn found_at(home: PathBuf) -> Result<VolumeSpec> {
        Ok(spec(lookup::lowers_of(&home)?, home.join("upper")))
    }

    /// Removes the directory of `v` (whole, partly made or partly removed), or
    /// warns that it is gone.
    fn remove_home(&self, v: &VolumeSpec, home: &Path) -> Result<()> {
        if !lookup::exists(home)? {
            lookup::already_gone(v);
            return Ok(());
        }
        remove_tree(home, self.root())
    }

    /// Creates `name` as an empty upper over `lowers`, topmost first; `what`
    /// names the origin in errors.
    fn stack(
        &self,
        what: &str,
        lowers: Vec<PathBuf>,
        name: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(name)?;
        for l in &lowers {
            check_branch(what, l)?;
            if !l.is_dir() {
                return Err(BdevError::NotFound {
                    what: "origin branch",
                    name: l.display().to_string(),
                });
            }
        }
        let home = self.dir.volume(name);
        let upper = self.make_home(&home, rv)?;
        // The union shows the upper's root directory: it must look like the origin's.
        if let Some(top) = lowers.first() {
            berth_bdev::copy::copy_meta(top, &upper)?;
        }
        lookup::write_lowers(&home, &lowers)?;
        Ok(spec(lowers, upper))
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
    fn name(&self) -> &'static str {
        NAME
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
            plain_tree: false,
            clones_span_pools: true,
            snapshot_clone_refusal: None,
            // Debian's unionfs-fuse is built without xattr support.
            lacks_xattrs: self.mech == Mechanism::UnionfsFuse,
            coarse_timestamps: false,
            size_limit: false,
            block_backed: false,
            resize: false,
            send_stream: false,
            kernel_fs: match self.mech {
                Mechanism::Kernel => &["aufs"],
                Mechanism::UnionfsFuse => &["fuse"],
            },
            tools: match self.mech {
                Mechanism::Kernel => &[],
                Mechanism::UnionfsFuse => UNIONFS_TOOLS,
            },
        }
    }

    fn probe(&self) -> Result<()> {
        require_host(NAME, &self.caps()).map_err(|e| match e {
            // unionfs-fuse is the fallback: say what the first choice lacked.
            BdevError::Unavailable {
                backend,
                missing,
                hint,
            } if self.mech == Mechanism::UnionfsFuse => BdevError::Unavailable {
                backend,
                missing: format!("the kernel has no aufs, and {missing}"),
                hint: format!("{hint}, or use a kernel with aufs"),
            },
            e => e,
        })?;
        create_dir_all(self.root())
    }

    fn branch_dirs(&self, v: &VolumeSpec) -> Vec<PathBuf> {
        AufsSpec::read_own(v)
            .map(|s| s.branches().map(Path::to_path_buf).collect())
            .unwrap_or_default()
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
        let home = self.dir.volume(name);
        let upper = self.make_home(&home, rv)?;
        let lower = home.join("lower");
        fs::create_dir(&lower).map_err(BdevError::io("create directory", &lower))?;
        let lowers = vec![lower];
        lookup::write_lowers(&home, &lowers)?;
        Ok(spec(lowers, upper))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let (s, loc) = self.branches_of(v)?;
        let ro = read_only || loc.is_snapshot();
        for b in s.branches() {
            if !b.is_dir() {
                return Err(BdevError::NotFound {
                    what: "aufs branch",
                    name: b.display().to_string(),
                });
            }
        }
        let branches = branch_list(&s.upper, &s.lowers, ro, self.mech);
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
        let (_, loc) = self.branches_of(v)?;
        for own in [loc.at.join("upper"), loc.at.join("lower")] {
            refuse_if_branch_in_use(&own, "refuse to destroy", false)?;
        }
        self.remove_home(v, &loc.at)
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        self.dir.volume_names()
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        self.dir.volume_named(name)?.map(Self::found_at).transpose()
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        self.dir.snapshot_names(name)
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        self.dir
            .snapshot_named(name, snap)?
            .map(Self::found_at)
            .transpose()
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let (s, _) = self.branches_of(v)?;
        Ok(Usage {
            used_bytes: allocated_bytes(&s.upper)?,
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
        let (s, vol) = self.branches_of(v)?;
        // A copy of an upper that a mount is writing would be torn.
        refuse_if_branch_in_use(&s.upper, "refuse to snapshot", true)?;
        let home = self.dir.snapshot(name, snap);
        let snap_upper = self.make_home(&home, rv)?;
        // The whiteout directory is copied too: the snapshot hides what the volume hid.
        copy_tree(&s.upper, &snap_upper, &NoProgress)?;
        // Branches inside the volume's own directory (its empty `lower`) go when the
        // volume does, which a restore does while keeping the snapshot: the snapshot
        // gets its own copy. Foreign lowers (a clone's origin) are pinned by the
        // clone, which outlives its snapshots.
        let mut snap_lowers = Vec::with_capacity(s.lowers.len());
        for l in s.lowers {
            if l.starts_with(&vol.at) {
                let own = home.join("lower");
                fs::create_dir(&own).map_err(BdevError::io("create directory", &own))?;
                copy_tree(&l, &own, &NoProgress)?;
                snap_lowers.push(own);
            } else {
                snap_lowers.push(l);
            }
        }
        lookup::write_lowers(&home, &snap_lowers)?;
        Ok(spec(snap_lowers, snap_upper))
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let (_, loc) = self.branches_of(snap)?;
        if !loc.is_snapshot() {
            return Err(BdevError::foreign(
                snap,
                format!(
                    "the snapshots of the {NAME} pool at {}",
                    self.root().display()
                ),
            ));
        }
        self.remove_home(snap, &loc.at)?;
        let _ = fs::remove_dir(self.dir.snapshots_of(&loc.name));
        Ok(())
    }

    /// `src` may be of another aufs pool: the clone reaches it by path.
    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        let s = AufsSpec::from_spec(src)?;
        let lowers = std::iter::once(s.upper).chain(s.lowers).collect();
        self.stack(&src.to_string(), lowers, name, rv)
    }

    fn stack_on_tree(&self, tree: &Path, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        let what = tree.display().to_string();
        self.stack(&what, vec![tree.to_path_buf()], name, rv)
    }
}

#[cfg(test)]
mod tests;
