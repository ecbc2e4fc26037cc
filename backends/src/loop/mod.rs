//! loop: each volume is a sparse image file holding a filesystem (ext4, xfs or
//! btrfs), mounted through an autoclear loop device.
//!
//! Layout: `POOL/NAME.img` is a volume, `POOL/.snapshots/NAME/SNAP.img` a snapshot
//! (a read-only copy of the image: reflinked where the pool's filesystem can,
//! else sparse). Where the pool directory supports reflink, snapshot clones are
//! reflinked image copies: O(1), copy-on-write, and independent of their origin.

mod attach;
mod grow;
mod spec;

use crate::blockfs as fs;

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use berth_bdev::cmd::Runner;
use berth_bdev::copy::copy_file;
use berth_bdev::delete::remove_tree;
use berth_bdev::fsutil::{claim_file, create_dir_all, reflink_supported, require_host};
use berth_bdev::loopdev::LoopDevice;
use berth_bdev::mount::MountGuard;
use berth_bdev::names::validate_name;
use berth_bdev::registry::PathUse;
use berth_bdev::space::{check_room, fill_estimate, free_bytes, in_pool};
use berth_bdev::{
    Backend, BdevError, Caps, CreateOpts, FsType, PoolConfig, Registration, Result, Revert,
    SpecForm, Usage, UsageKind, VolumeSpec, DEFAULT_SIZE,
};
use tracing::debug;

use crate::layout::{Located, PoolDir};
use crate::lookup::{self, Entry, NoOptions};
pub use fs::detect;
pub use spec::LoopSpec;

pub const NAME: &str = "loop";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    aliases: &[],
    summary: "image files holding ext4, xfs or btrfs; snapshot clones are reflinked images \
              where the pool's filesystem can",
    path: PathUse::Volumes,
    pool_options: &[],
    open,
    check_spec: <LoopSpec as SpecForm>::canonical,
    stacks_on_trees: false,
};

/// Why a pool without reflink makes no snapshot clones.
const NO_REFLINK: &str =
    "this pool's filesystem cannot reflink images (put the pool on btrfs or xfs with reflink=1)";

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Loop::new(pool, runner)?))
}

pub struct Loop {
    /// The pool's name, for errors that are about the pool.
    pool: String,
    layout: PoolDir,
    runner: Arc<dyn Runner>,
    size: u64,
    fstype: FsType,
    /// Whether the pool directory can reflink, found once (by trying it).
    reflink: OnceLock<bool>,
}

impl Loop {
    fn new(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        pool.options::<NoOptions>()?;
        Ok(Loop {
            pool: pool.name.clone(),
            layout: PoolDir::new(pool.dir()?, Entry::File, ".img"),
            runner,
            size: pool.size.unwrap_or(DEFAULT_SIZE),
            fstype: pool.fstype.unwrap_or_default(),
            reflink: OnceLock::new(),
        })
    }

    fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Whether images in this pool can be reflinked. Until the pool directory
    /// exists (`probe` makes it) the answer is "no" and is not remembered.
    fn reflink(&self) -> bool {
        if let Some(r) = self.reflink.get() {
            return *r;
        }
        if !self.root().is_dir() {
            return false;
        }
        *self.reflink.get_or_init(|| reflink_supported(self.root()))
    }

    /// The image of this pool, volume or snapshot, that `v` names.
    fn locate(&self, v: &VolumeSpec) -> Result<Located<PathBuf>> {
        if v.backend() != NAME {
            let owner = format!("the {NAME} pool at {}", self.root().display());
            return Err(BdevError::foreign(v, owner));
        }
        self.layout.locate_spec(v, &LoopSpec::from_spec(v)?.image)
    }

    /// Claims `img` as a new, empty file and registers its removal.
    fn claim(&self, img: &Path, rv: &mut Revert) -> Result<File> {
        claim_file(img, self.root(), rv)
    }

    /// Copies the image `src` to the new `dst` (reflinked where possible, else
    /// sparse) and gives the copy its own filesystem UUID.
    fn copy_image(&self, src: &Path, dst: &Path, why: CopyFor, rv: &mut Revert) -> Result<()> {
        let fstype = fs::detect_path(src, || LoopSpec::spec(src).to_string())?;
        fs::require_tools(NAME, fstype)?;
        self.refuse_if_attached(src, why.refusal(), true)?;
        // A copy that is not reflinked writes every allocated block of the source.
        let needed = std::fs::metadata(src)
            .map_err(BdevError::io("stat", src))?
            .blocks()
            * 512;
        if !self.reflink() {
            check_room(&self.pool, needed, free_bytes(self.root())?)?;
        }
        drop(self.claim(dst, rv)?);
        let stats = copy_file(src, dst).map_err(|e| in_pool(e, &self.pool))?;
        if why == CopyFor::SnapshotClone && stats.reflinked_bytes < stats.bytes {
            // The pool said it could reflink; a silent full copy would break the
            // O(1) promise of a snapshot clone.
            return Err(BdevError::Io {
                op: "reflink image",
                path: dst.to_path_buf(),
                source: std::io::Error::other(format!("{src:?} was copied, not reflinked")),
            });
        }
        std::fs::set_permissions(dst, Permissions::from_mode(0o644))
            .map_err(BdevError::io("set the mode of", dst))?;
        fs::new_uuid(&*self.runner, fstype, dst)
    }
}

/// What an image copy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyFor {
    Snapshot,
    /// Must be a reflink: O(1) and copy-on-write.
    SnapshotClone,
    Copy,
}

impl CopyFor {
    fn refusal(self) -> &'static str {
        match self {
            CopyFor::Snapshot => "refuse to snapshot",
            CopyFor::SnapshotClone => "refuse to clone",
            CopyFor::Copy => "refuse to copy",
        }
    }
}

impl Backend for Loop {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cleanup_stale(&self) -> Result<()> {
        self.clean_stale_grow_mounts().map(|_| ())
    }

    fn caps(&self) -> Caps {
        let reflink = self.reflink();
        Caps {
            snapshot: true,
            clone_from_snapshot: reflink,
            snapshot_clone: reflink,
            copy_on_write: reflink,
            // Reflinked copies share blocks, not a dependency: the origin can go.
            clone_pins_origin: false,
            clone_reads_live_origin: false,
            snapshot_clone_refusal: (!reflink).then_some(NO_REFLINK),
            size_limit: true,
            block_backed: true,
            resize: true,
            kernel_fs: fs::kernel_fs(self.fstype),
            tools: fs::tools(self.fstype),
            ..Caps::default()
        }
    }

    fn probe(&self) -> Result<()> {
        require_host(NAME, &self.caps())?;
        if !Path::new("/dev/loop-control").exists() {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: "/dev/loop-control does not exist".to_owned(),
                hint: "load the loop module with `modprobe loop`".to_owned(),
            });
        }
        create_dir_all(self.root())?;
        let _ = self.reflink();
        Ok(())
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let reflink = if self.reflink() {
            "yes: snapshot clones are reflinked images".to_owned()
        } else {
            "no: the pool's filesystem cannot reflink (put it on btrfs or xfs with reflink=1)"
                .to_owned()
        };
        vec![
            ("fstype", self.fstype.to_string()),
            ("default size", format!("{} MiB", self.size >> 20)),
            ("reflink clones", reflink),
        ]
    }

    fn create(&self, name: &str, opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let size = opts.size.unwrap_or(self.size);
        let fstype = opts.fstype.unwrap_or(self.fstype);
        let image = self.layout.volume(name);
        fs::check_size(fstype, size, || LoopSpec::spec(&image).to_string())?;
        fs::require_tools(NAME, fstype)?;
        let f = self.claim(&image, rv)?;
        f.set_len(size)
            .map_err(BdevError::io("size image", &image))?;
        drop(f);
        fs::mkfs(&*self.runner, fstype, &image, size)?;
        Ok(LoopSpec::spec(image))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let loc = self.locate(v)?;
        let img = &loc.at;
        let ro = read_only || loc.is_snapshot();
        // Two writers (or a reader beside a writer) on one image corrupt or
        // mislead: a read-write mount wants the image to itself.
        self.refuse_if_attached(img, "refuse to mount", ro)?;
        let fstype = fs::detect_path(img, || v.to_string())?;
        let dev = LoopDevice::attach(img, ro)?;
        fs::mount_device(fstype, dev.path(), at, ro)?;
        debug!(image = %img.display(), dev = %dev.path().display(), at = %at.display(), ro, "loop mounted");
        // Autoclear: from here the mount holds the device, and the unmount frees it.
        drop(dev);
        Ok(MountGuard::mounted(at))
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let img = &self.locate(v)?.at;
        if !lookup::exists(img)? {
            lookup::already_gone(v);
            return Ok(());
        }
        self.refuse_if_attached(img, "refuse to destroy", false)?;
        // Whatever state it is in: an image without a filesystem goes the same way.
        remove_tree(img, self.root())
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        self.layout.volume_names()
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        Ok(self.layout.volume_named(name)?.map(LoopSpec::spec))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        self.layout.snapshot_names(name)
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        Ok(self.layout.snapshot_named(name, snap)?.map(LoopSpec::spec))
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let img = &self.locate(v)?.at;
        let md = std::fs::metadata(img).map_err(BdevError::io("stat", img))?;
        Ok(Usage {
            used_bytes: md.blocks() * 512,
            kind: UsageKind::Allocated,
            limit_bytes: Some(md.len()),
            note: self.reflink().then(|| {
                "blocks shared with reflinked clones and snapshots are counted in full".to_owned()
            }),
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
        let src = self.locate(v)?.at;
        let image = self.layout.snapshot(name, snap);
        // A mounted read-write image is not consistent on disk; rather than freeze a
        // mount that may live in another mount namespace, the snapshot is refused.
        self.copy_image(&src, &image, CopyFor::Snapshot, rv)?;
        // Read-only on disk too; `mount` also always mounts snapshots read-only.
        std::fs::set_permissions(&image, Permissions::from_mode(0o444))
            .map_err(BdevError::io("set the mode of", &image))?;
        Ok(LoopSpec::spec(image))
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let loc = self.locate(snap)?;
        if !loc.is_snapshot() {
            // A volume is the pool's, but not what this call removes.
            return Err(BdevError::InvalidSpec {
                spec: snap.to_string(),
                reason: "not a snapshot of this pool".to_owned(),
            });
        }
        self.destroy(snap)?;
        // Drop the per-volume snapshot directory once it is empty.
        let _ = std::fs::remove_dir(self.layout.snapshots_of(&loc.name));
        Ok(())
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        if !self.reflink() {
            return Err(BdevError::unsupported(NAME, "snapshot clone"));
        }
        validate_name(name)?;
        let from = self.locate(src)?.at;
        let image = self.layout.volume(name);
        self.copy_image(&from, &image, CopyFor::SnapshotClone, rv)?;
        Ok(LoopSpec::spec(image))
    }

    fn copy_clone(
        &self,
        src: &VolumeSpec,
        name: &str,
        opts: &CreateOpts,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(name)?;
        let from = self.locate(src)?.at;
        let image = self.layout.volume(name);
        self.copy_image(&from, &image, CopyFor::Copy, rv)?;
        let v = LoopSpec::spec(&image);
        // The copy keeps the source's size unless a bigger one was asked for
        // (filesystems here cannot shrink).
        if let Some(size) = opts.size {
            let have = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
            if size > have {
                self.resize(&v, size)?;
            }
        }
        Ok(v)
    }

    fn check_room(&self, opts: &CreateOpts, data: u64) -> Result<()> {
        let size = opts.size.unwrap_or(self.size);
        let needed = fill_estimate(opts.fstype.unwrap_or(self.fstype), size, data);
        check_room(&self.pool, needed, free_bytes(self.root())?)
    }

    fn sync_volume(&self, v: &VolumeSpec) -> Result<()> {
        let img = &self.locate(v)?.at;
        fs::sync_path(img, || v.to_string())
    }

    fn check_fs(&self, v: &VolumeSpec) -> Result<()> {
        let img = &self.locate(v)?.at;
        self.refuse_if_attached(img, "refuse to check", false)?;
        let fstype = fs::detect_path(img, || v.to_string())?;
        fs::fsck(&*self.runner, fstype, img)
    }

    fn resize(&self, v: &VolumeSpec, size: u64) -> Result<()> {
        let loc = self.locate(v)?;
        loc.refuse_snapshot(v, "resized", "clone it and resize the clone")?;
        let img = &loc.at;
        let have = std::fs::metadata(img)
            .map_err(BdevError::io("stat", img))?
            .len();
        if size < have {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: format!(
                    "cannot shrink from {have} to {size} bytes: loop volumes only grow"
                ),
            });
        }
        let fstype = fs::detect_path(img, || v.to_string())?;
        fs::require_tools(NAME, fstype)?;
        self.refuse_if_attached(img, "refuse to resize", false)?;
        let mut rv = Revert::new();
        // At the size already, the filesystem is still grown: a berth killed
        // after growing the image left it smaller than the image.
        if size > have {
            let f = OpenOptions::new()
                .write(true)
                .open(img)
                .map_err(BdevError::io("open image", img))?;
            f.set_len(size).map_err(BdevError::io("grow image", img))?;
            // A filesystem that failed to grow still fits the old size.
            rv.add(format!("shrink {} back", img.display()), move || {
                f.set_len(have)
            });
        }
        self.grow_fs(img, fstype)?;
        rv.commit();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    fn pool(dir: &Path) -> Loop {
        let cfg = PoolConfig::new("t", NAME).with_path(dir);
        Loop::new(&cfg, Arc::new(ScriptedRunner::new())).unwrap()
    }

    #[test]
    fn foreign_specs_are_refused() {
        let l = pool(Path::new("/pool"));
        for foreign in [
            "loop:/elsewhere/x.img",
            "loop:/pool/x.raw",
            "loop:/pool/sub/x.img",
            "other:/pool/x",
        ] {
            let v: VolumeSpec = foreign.parse().unwrap();
            let e = l.locate(&v).unwrap_err();
            assert!(
                matches!(e, BdevError::ForeignVolume { .. }),
                "{foreign}: {e}"
            );
            assert!(e.to_string().contains("/pool"), "{e}");
        }
        let s = LoopSpec::spec("/pool/.snapshots/c/s.img");
        assert!(l.locate(&s).unwrap().is_snapshot());
        assert!(!l
            .locate(&LoopSpec::spec("/pool/c.img"))
            .unwrap()
            .is_snapshot());
        let e = l.resize(&s, 1 << 30).unwrap_err();
        assert!(matches!(e, BdevError::SnapshotReadOnly { .. }), "{e}");
        let e = l
            .destroy_snapshot(&LoopSpec::spec("/pool/c.img"))
            .unwrap_err();
        assert!(e.to_string().contains("not a snapshot"), "{e}");
    }

    #[test]
    fn unknown_pool_settings_are_refused() {
        let cfg = PoolConfig::new("t", NAME)
            .with_path("/pool")
            .with_option("thinpool", "x");
        let e = open(&cfg, Arc::new(ScriptedRunner::new())).err().unwrap();
        assert!(e.to_string().contains("thinpool"), "{e}");
    }

    #[test]
    fn caps_list_what_the_probe_checks() {
        for fstype in [FsType::Ext4, FsType::Xfs, FsType::Btrfs] {
            let cfg = PoolConfig {
                fstype: Some(fstype),
                ..PoolConfig::new("t", NAME).with_path("/nonexistent/berth-pool")
            };
            let c = Loop::new(&cfg, Arc::new(ScriptedRunner::new()))
                .unwrap()
                .caps();
            assert_eq!(c.kernel_fs, [fstype.as_str()]);
            assert_eq!(c.tools, fs::tools(fstype));
            assert!(c.tools.iter().any(|t| t.prog.starts_with("mkfs.")), "{c:?}");
        }
    }

    #[test]
    fn create_runs_mkfs_on_a_sparse_image_and_reverts() {
        let d = tempfile::tempdir().unwrap();
        let runner = Arc::new(ScriptedRunner::new().expect("mkfs.ext4 -q -F", ""));
        let cfg = PoolConfig::new("t", NAME).with_path(d.path());
        let l = Loop::new(&cfg, runner.clone()).unwrap();
        let mut rv = Revert::new();
        let opts = CreateOpts {
            size: Some(64 << 20),
            fstype: None,
        };
        let v = l.create("c1", &opts, &mut rv).unwrap();
        let img = d.path().join("c1.img");
        assert_eq!(v, LoopSpec::spec(&img));
        let md = std::fs::metadata(&img).unwrap();
        assert_eq!(md.len(), 64 << 20);
        assert_eq!(md.blocks(), 0, "the image must be sparse");
        assert!(matches!(
            l.create("c1", &opts, &mut Revert::new()),
            Err(BdevError::Exists { .. })
        ));
        drop(rv);
        assert!(!img.exists(), "revert removes the image");
    }

    #[test]
    fn small_xfs_is_refused_before_anything_is_made() {
        let d = tempfile::tempdir().unwrap();
        let l = pool(d.path());
        let opts = CreateOpts {
            size: Some(256 << 20),
            fstype: Some(FsType::Xfs),
        };
        let e = l
            .create("x", &opts, &mut Revert::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("300.0 MiB"), "{e}");
        assert!(!d.path().join("x.img").exists());
    }

    #[test]
    fn shrinking_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let l = pool(d.path());
        let img = d.path().join("c.img");
        File::create(&img).unwrap().set_len(1 << 20).unwrap();
        let v = LoopSpec::spec(img);
        let e = l.resize(&v, 1 << 10).unwrap_err().to_string();
        assert!(e.contains("only grow"), "{e}");
        // At its size already, the filesystem is still looked at (and grown).
        let e = l.resize(&v, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("no ext2/3/4, xfs or btrfs filesystem"), "{e}");
    }

    #[test]
    fn a_pool_that_does_not_exist_yet_cannot_reflink() {
        let l = pool(Path::new("/nonexistent/berth-pool"));
        let c = l.caps();
        assert!(!c.snapshot_clone);
        assert!(c.snapshot_clone_refusal.unwrap().contains("reflink=1"));
        assert!(l.reflink.get().is_none(), "the answer must not be cached");
        assert!(matches!(
            l.snapshot_clone(
                &LoopSpec::spec("/nonexistent/berth-pool/a.img"),
                "b",
                &mut Revert::new()
            ),
            Err(BdevError::Unsupported { .. })
        ));
    }
}
