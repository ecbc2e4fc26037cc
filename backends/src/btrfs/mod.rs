//! btrfs: each volume is a subvolume; snapshots are read-only subvolume snapshots
//! and clones writable ones, O(1) and independent of their origin (Incus's
//! driver_btrfs is the model).
//!
//! Layout: `POOL/NAME` is a subvolume, `POOL/.snapshots/NAME/SNAP` a read-only
//! snapshot of it (the two directories above it are plain). Subvolumes nested in a
//! volume (made inside a container) are snapshotted and deleted with it.
//! Subvolume work goes through libbtrfsutil; the `btrfs` tool only reads quota
//! groups, and only when the filesystem already has quotas enabled.

mod qgroup;
mod subvol;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::Runner;
use berth_bdev::fsutil::{allocated_bytes, create_dir_all, require_kernel_fs, require_tool};
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::{
    Backend, BackendKind, BdevError, Caps, CreateOpts, PoolConfig, Result, Revert, Usage,
    UsageKind, VolumeSpec,
};
use tracing::debug;

use crate::lookup::{self, Entry};
use qgroup::QgroupAnswer;

/// `BTRFS_SUPER_MAGIC` from linux/magic.h.
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;

const NO_QUOTA_NOTE: &str = "exclusive size needs btrfs quotas (btrfs quota enable); \
     this is allocated bytes, blocks shared with snapshots and clones included";

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Btrfs::open(pool, runner)?))
}

pub struct Btrfs {
    root: PathBuf,
    runner: Arc<dyn Runner>,
}

impl Btrfs {
    pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        Ok(Btrfs {
            root: crate::pool_path(pool)?.to_path_buf(),
            runner,
        })
    }

    /// The subvolume path of a volume or snapshot of this pool.
    fn path_of<'a>(&self, v: &'a VolumeSpec) -> Result<&'a Path> {
        match v {
            VolumeSpec::Btrfs { path } if path.starts_with(&self.root) && path != &self.root => {
                Ok(path)
            }
            other => Err(BdevError::InvalidSpec {
                spec: other.to_string(),
                reason: format!("not a btrfs volume of the pool at {:?}", self.root),
            }),
        }
    }

    fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.root.join(".snapshots").join(name)
    }

    /// The subvolumes named in `dir`, sorted (plain directories are not berth's).
    fn subvolumes_in(&self, dir: &Path) -> Result<Vec<String>> {
        let mut names = lookup::names_in(dir, Entry::Dir, "")?;
        names.retain(|n| subvol::is_subvolume(&dir.join(n)));
        Ok(names)
    }

    /// The subvolume at `path` (a symlink is not followed).
    fn subvolume_at(path: PathBuf) -> Result<Option<VolumeSpec>> {
        let found = lookup::is_entry(&path, Entry::Dir)? && subvol::is_subvolume(&path);
        Ok(found.then_some(VolumeSpec::Btrfs { path }))
    }
}

/// Fails unless `path` lies on a btrfs filesystem.
fn require_btrfs(path: &Path) -> Result<()> {
    let st = rustix::fs::statfs(path).map_err(|e| BdevError::io("statfs", path)(e.into()))?;
    // f_type is signed on some architectures; the magic fits in 32 bits.
    if st.f_type as u64 & 0xffff_ffff == BTRFS_SUPER_MAGIC {
        return Ok(());
    }
    Err(BdevError::Unavailable {
        backend: "btrfs",
        missing: format!(
            "{} is not on a btrfs filesystem (statfs type {:#x})",
            path.display(),
            st.f_type
        ),
        hint:
            "put the pool on a btrfs filesystem (mkfs.btrfs, then mount it) or pick another backend"
                .to_owned(),
    })
}

/// The nearest existing ancestor of `path` (itself if it exists).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

impl Backend for Btrfs {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
    }

    fn caps(&self) -> Caps {
        Caps {
            snapshot: true,
            clone_from_snapshot: true,
            snapshot_clone: true,
            copy_on_write: true,
            // A writable snapshot shares extents, not a dependency: the origin
            // can be changed or deleted under it.
            clone_pins_origin: false,
            kernel_fs: &["btrfs"],
            tools: &["btrfs"],
            ..Caps::default()
        }
    }

    fn probe(&self) -> Result<()> {
        require_kernel_fs("btrfs", "btrfs")?;
        require_tool("btrfs", "btrfs", "btrfs-progs")?;
        // Check the filesystem before creating the pool directory on it.
        require_btrfs(existing_ancestor(&self.root))?;
        create_dir_all(&self.root)?;
        require_btrfs(&self.root)
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("volumes", "btrfs subvolumes, bind-mounted".to_owned()),
            (
                "snapshots",
                format!(
                    "read-only subvolume snapshots in {}",
                    self.root.join(".snapshots").display()
                ),
            ),
            (
                "clones",
                "writable subvolume snapshots (O(1), independent)".to_owned(),
            ),
            (
                "interface",
                "libbtrfsutil; `btrfs qgroup show` for usage".to_owned(),
            ),
        ]
    }

    fn create(&self, name: &str, opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        if opts.size.is_some() {
            // size_limit is off: quotas would have to be enabled filesystem-wide.
            debug!(
                name,
                "btrfs volumes have no size limit; ignoring the requested size"
            );
        }
        let path = self.root.join(name);
        subvol::create(&path, rv)?;
        Ok(VolumeSpec::Btrfs { path })
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        // A read-only snapshot stays read-only through any bind mount.
        mount::bind(self.path_of(v)?, at, read_only)?;
        Ok(MountGuard::mounted(at))
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let path = self.path_of(v)?;
        match fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lookup::already_gone(v);
                return Ok(());
            }
            Err(e) => return Err(BdevError::io("stat", path)(e)),
        }
        if !subvol::is_subvolume(path) {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "the path exists but is not a btrfs subvolume".to_owned(),
            });
        }
        subvol::delete(path)
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        self.subvolumes_in(&self.root)
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        Self::subvolume_at(self.root.join(name))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        self.subvolumes_in(&self.snapshot_dir(name))
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        validate_name(snap)?;
        Self::subvolume_at(self.snapshot_dir(name).join(snap))
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let path = self.path_of(v)?;
        match qgroup::query(self.runner.as_ref(), path, subvol::id(path)?)? {
            QgroupAnswer::Figures(q, warning) => Ok(Usage {
                used_bytes: q.exclusive,
                kind: UsageKind::Exclusive,
                limit_bytes: q.max_exclusive.or(q.max_referenced),
                note: Some(match warning {
                    Some(w) => format!("{} bytes referenced; btrfs says: {w}", q.referenced),
                    None => format!("{} bytes referenced, shared blocks included", q.referenced),
                }),
            }),
            QgroupAnswer::Disabled => Ok(Usage {
                used_bytes: allocated_bytes(path)?,
                kind: UsageKind::Allocated,
                limit_bytes: None,
                note: Some(NO_QUOTA_NOTE.to_owned()),
            }),
        }
    }

    fn snapshot(
        &self,
        v: &VolumeSpec,
        name: &str,
        snap: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let src = self.path_of(v)?;
        validate_name(name)?;
        validate_name(snap)?;
        let dir = self.snapshot_dir(name);
        if !dir.exists() {
            create_dir_all(&dir)?;
            let d = dir.clone();
            rv.add(format!("remove {}", dir.display()), move || {
                fs::remove_dir(&d)
            });
        }
        let path = dir.join(snap);
        subvol::snapshot(src, &path, true, rv)?;
        Ok(VolumeSpec::Btrfs { path })
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        self.destroy(snap)?;
        // Drop the per-volume snapshot directory once it is empty.
        if let Some(parent) = self.path_of(snap)?.parent() {
            if parent.starts_with(self.root.join(".snapshots")) {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        let VolumeSpec::Btrfs { path: origin } = src else {
            return Err(BdevError::InvalidSpec {
                spec: src.to_string(),
                reason: "a btrfs clone needs a btrfs volume or snapshot as its origin".to_owned(),
            });
        };
        validate_name(name)?;
        let path = self.root.join(name);
        subvol::snapshot(origin, &path, false, rv)?;
        Ok(VolumeSpec::Btrfs { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    fn backend() -> Btrfs {
        let pool = PoolConfig::new("p", BackendKind::Btrfs).with_path("/pool");
        Btrfs::open(&pool, Arc::new(ScriptedRunner::new())).unwrap()
    }

    #[test]
    fn specs_outside_the_pool_are_refused() {
        let b = backend();
        for bad in ["btrfs:/elsewhere/c1", "btrfs:/pool", "dir:/pool/c1"] {
            let v: VolumeSpec = bad.parse().unwrap();
            assert!(b.path_of(&v).is_err(), "{bad}");
        }
        let v: VolumeSpec = "btrfs:/pool/.snapshots/c1/s1".parse().unwrap();
        assert_eq!(b.path_of(&v).unwrap(), Path::new("/pool/.snapshots/c1/s1"));
    }

    #[test]
    fn clones_need_a_btrfs_origin() {
        let b = backend();
        let mut rv = Revert::new();
        let e = b
            .snapshot_clone(&"dir:/x".parse().unwrap(), "c", &mut rv)
            .unwrap_err();
        assert!(e.to_string().contains("btrfs volume"), "{e}");
    }

    #[test]
    fn caps_are_honest() {
        let c = backend().caps();
        assert!(c.snapshot && c.snapshot_clone && c.clone_from_snapshot && c.copy_on_write);
        assert!(!c.clone_pins_origin && !c.size_limit && !c.resize && !c.stacks_on_trees);
    }

    #[test]
    fn probe_names_the_wrong_filesystem() {
        // /proc is procfs, never btrfs.
        let e = require_btrfs(Path::new("/proc")).unwrap_err().to_string();
        assert!(e.contains("not on a btrfs filesystem"), "{e}");
        assert_eq!(
            existing_ancestor(Path::new("/proc/no/such/dir")),
            Path::new("/proc")
        );
    }
}
