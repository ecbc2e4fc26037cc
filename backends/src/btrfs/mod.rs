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
mod sendfix;
mod stream;
mod subvol;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::Runner;
use berth_bdev::fsutil::{allocated_bytes, create_dir_all, require_host};
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::registry::PathUse;
use berth_bdev::{
    Backend, BdevError, Caps, CreateOpts, PoolConfig, Registration, Result, Revert, SpecForm, Tool,
    Usage, UsageKind, VolumeSpec,
};
use tracing::debug;

use crate::layout::{Located, PoolDir};
use crate::lookup::{self, Entry, NoOptions};
use qgroup::QgroupAnswer;

pub const NAME: &str = "btrfs";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    aliases: &[],
    summary: "btrfs subvolumes; snapshot clones are writable subvolume snapshots, O(1)",
    path: PathUse::Volumes,
    pool_options: &[],
    open,
    check_spec: <BtrfsSpec as SpecForm>::canonical,
    stacks_on_trees: false,
};

crate::spec_shapes::path_spec!(
    /// A btrfs subvolume (a volume) or read-only snapshot: `btrfs:PATH`.
    BtrfsSpec { path },
    NAME
);

/// Only for `btrfs qgroup show`: subvolumes go through libbtrfsutil.
const TOOLS: &[Tool] = &[Tool::new("btrfs", "btrfs-progs")];

/// `BTRFS_SUPER_MAGIC` from linux/magic.h.
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;

const NO_QUOTA_NOTE: &str = "exclusive size needs btrfs quotas (btrfs quota enable); \
     this is allocated bytes, blocks shared with snapshots and clones included";

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Btrfs::new(pool, runner)?))
}

pub struct Btrfs {
    layout: PoolDir,
    runner: Arc<dyn Runner>,
}

impl Btrfs {
    fn new(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        pool.options::<NoOptions>()?;
        Ok(Btrfs {
            layout: PoolDir::new(pool.dir()?, Entry::Dir, ""),
            runner,
        })
    }

    fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The subvolume or snapshot of this pool that `v` names.
    fn locate(&self, v: &VolumeSpec) -> Result<Located<PathBuf>> {
        if v.backend() != NAME {
            let owner = format!("the {NAME} pool at {}", self.root().display());
            return Err(BdevError::foreign(v, owner));
        }
        self.layout.locate_spec(v, &BtrfsSpec::from_spec(v)?.path)
    }

    /// The spec of `path` if it is a subvolume (plain directories are not berth's).
    fn if_subvolume(path: Option<PathBuf>) -> Option<VolumeSpec> {
        path.filter(|p| subvol::is_subvolume(p))
            .map(BtrfsSpec::spec)
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
        backend: NAME,
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
    fn name(&self) -> &'static str {
        NAME
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
            plain_tree: true,
            send_stream: true,
            kernel_fs: &["btrfs"],
            tools: TOOLS,
            ..Caps::default()
        }
    }

    fn probe(&self) -> Result<()> {
        require_host(NAME, &self.caps())?;
        // Check the filesystem before creating the pool directory on it.
        require_btrfs(existing_ancestor(self.root()))?;
        create_dir_all(self.root())?;
        require_btrfs(self.root())
    }

    fn tree_path(&self, v: &VolumeSpec) -> Option<PathBuf> {
        self.locate(v).ok().map(|l| l.at)
    }

    fn cleanup_stale(&self) -> Result<()> {
        self.clean_transfers()
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("volumes", "btrfs subvolumes, bind-mounted".to_owned()),
            (
                "snapshots",
                format!(
                    "read-only subvolume snapshots in {}",
                    self.layout.snapshots_root().display()
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
        let path = self.layout.volume(name);
        subvol::create(&path, rv)?;
        Ok(BtrfsSpec::spec(path))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        // A read-only snapshot stays read-only through any bind mount.
        mount::bind(&self.locate(v)?.at, at, read_only)?;
        Ok(MountGuard::mounted(at))
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let path = &self.locate(v)?.at;
        if !lookup::exists(path)? {
            lookup::already_gone(v);
            return Ok(());
        }
        if !subvol::is_subvolume(path) {
            return Err(BdevError::DeleteRefused {
                path: path.clone(),
                reason: "it exists but is not a btrfs subvolume".to_owned(),
            });
        }
        subvol::delete(path)
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        let mut names = self.layout.volume_names()?;
        names.retain(|n| subvol::is_subvolume(&self.layout.volume(n)));
        Ok(names)
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        Ok(Self::if_subvolume(self.layout.volume_named(name)?))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        let mut snaps = self.layout.snapshot_names(name)?;
        snaps.retain(|s| subvol::is_subvolume(&self.layout.snapshot(name, s)));
        Ok(snaps)
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        Ok(Self::if_subvolume(self.layout.snapshot_named(name, snap)?))
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let path = &self.locate(v)?.at;
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
        let src = self.locate(v)?.at;
        validate_name(name)?;
        validate_name(snap)?;
        let dir = self.layout.snapshots_of(name);
        if !dir.exists() {
            create_dir_all(&dir)?;
            let d = dir.clone();
            rv.add(format!("remove {}", dir.display()), move || {
                fs::remove_dir(&d)
            });
        }
        let path = self.layout.snapshot(name, snap);
        subvol::snapshot(&src, &path, true, rv)?;
        Ok(BtrfsSpec::spec(path))
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let loc = self.locate(snap)?;
        self.destroy(snap)?;
        // Drop the per-volume snapshot directory once it is empty.
        if loc.is_snapshot() {
            let _ = fs::remove_dir(self.layout.snapshots_of(&loc.name));
        }
        Ok(())
    }

    /// `src` may be any btrfs volume or snapshot: a subvolume snapshot works
    /// wherever both ends are on one btrfs filesystem.
    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        let origin = BtrfsSpec::from_spec(src)?.path;
        validate_name(name)?;
        let path = self.layout.volume(name);
        subvol::snapshot(&origin, &path, false, rv)?;
        Ok(BtrfsSpec::spec(path))
    }

    fn send(
        &self,
        v: &VolumeSpec,
        base: Option<&VolumeSpec>,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        self.send_stream(v, base, out)
    }

    fn receive(
        &self,
        input: &mut dyn std::io::Read,
        to: &berth_bdev::ReceiveTo<'_>,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        self.receive_stream(input, to, rv)
    }

    /// A writable subvolume snapshot already is an independent copy: it shares
    /// extents, not a dependency (either can be changed or destroyed first),
    /// as `lxc-copy` makes on btrfs. Across filesystems the caller copies.
    fn copy_clone(
        &self,
        src: &VolumeSpec,
        name: &str,
        _opts: &CreateOpts,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        match self.snapshot_clone(src, name, rv) {
            Err(BdevError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::CrossesDevices =>
            {
                Err(BdevError::unsupported(
                    NAME,
                    "copy to another btrfs filesystem",
                ))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    fn backend() -> Btrfs {
        let pool = PoolConfig::new("p", NAME).with_path("/pool");
        Btrfs::new(&pool, Arc::new(ScriptedRunner::new())).unwrap()
    }

    #[test]
    fn specs_round_trip_with_escapes() {
        for s in ["btrfs:/var/lib/berth/c1", "btrfs:/we\\:ird\\\\dir"] {
            let v = BtrfsSpec::canonical(&s.parse().unwrap()).unwrap();
            assert_eq!(v.to_string(), s);
        }
        let v = BtrfsSpec::spec("/a:b");
        assert_eq!(v.to_string(), "btrfs:/a\\:b");
        assert_eq!(BtrfsSpec::from_spec(&v).unwrap().path, Path::new("/a:b"));
    }

    #[test]
    fn bad_specs_are_rejected_with_a_reason() {
        for (s, why) in [
            ("btrfs:rel", "absolute"),
            ("btrfs:/a/../b", ".."),
            ("btrfs:/a:/b", "exactly one"),
        ] {
            let e = BtrfsSpec::canonical(&s.parse().unwrap()).unwrap_err();
            assert!(matches!(e, BdevError::InvalidSpec { .. }), "{s}: {e}");
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn specs_outside_the_pool_are_refused() {
        let b = backend();
        for bad in [
            "btrfs:/elsewhere/c1",
            "btrfs:/pool",
            "btrfs:/pool/.snapshots/c1",
            "other:/pool/c1",
        ] {
            let v: VolumeSpec = bad.parse().unwrap();
            let e = b.locate(&v).unwrap_err();
            assert!(matches!(e, BdevError::ForeignVolume { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("/pool"), "{e}");
            assert_eq!(b.tree_path(&v), None, "{bad}");
        }
        let v = BtrfsSpec::spec("/pool/.snapshots/c1/s1");
        let loc = b.locate(&v).unwrap();
        assert_eq!(loc.at, Path::new("/pool/.snapshots/c1/s1"));
        assert_eq!(loc.key(), "c1@s1");
        assert_eq!(b.tree_path(&v), Some(loc.at));
        assert_eq!(
            b.tree_path(&BtrfsSpec::spec("/pool/c1")),
            Some(PathBuf::from("/pool/c1"))
        );
    }

    #[test]
    fn clones_need_a_btrfs_origin() {
        let b = backend();
        let mut rv = Revert::new();
        let e = b
            .snapshot_clone(&"other:/x".parse().unwrap(), "c", &mut rv)
            .unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
        assert!(e.to_string().contains("btrfs"), "{e}");
    }

    #[test]
    fn unknown_pool_settings_are_refused() {
        let pool = PoolConfig::new("p", NAME)
            .with_path("/pool")
            .with_option("vg", "x");
        let e = open(&pool, Arc::new(ScriptedRunner::new())).err().unwrap();
        assert!(matches!(e, BdevError::PoolSetting { .. }), "{e}");
        assert!(e.to_string().contains("vg"), "{e}");
    }

    #[test]
    fn caps_are_honest() {
        let c = backend().caps();
        assert!(c.snapshot && c.snapshot_clone && c.clone_from_snapshot && c.copy_on_write);
        assert!(c.plain_tree && !c.clones_span_pools && c.snapshot_clone_refusal.is_none());
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
