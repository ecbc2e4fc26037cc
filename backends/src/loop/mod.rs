//! loop: each volume is a sparse image file holding a filesystem (ext4, xfs or
//! btrfs), mounted through an autoclear loop device.
//!
//! Layout: `POOL/NAME.img` is a volume, `POOL/.snapshots/NAME/SNAP.img` a snapshot
//! (a read-only copy of the image: reflinked where the pool's filesystem can,
//! else sparse). Where the pool directory supports reflink, snapshot clones are
//! reflinked image copies: O(1), copy-on-write, and independent of their origin.

use crate::blockfs as fs;

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use berth_bdev::cmd::Runner;
use berth_bdev::copy::copy_file;
use berth_bdev::delete::remove_tree;
use berth_bdev::fsutil::{claim_file, create_dir_all, reflink_supported, require_kernel_fs};
use berth_bdev::loopdev::{self, LoopDevice};
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::space::{check_room, fill_estimate, free_bytes, in_pool};
use berth_bdev::{
    Backend, BackendKind, BdevError, Caps, CreateOpts, FsType, PoolConfig, Result, Revert, Usage,
    UsageKind, VolumeSpec, DEFAULT_SIZE,
};
use tracing::debug;

use crate::lookup::{self, Entry};
pub use fs::detect;

/// How long to wait for an autoclear loop device to go away after an unmount.
const DETACH_WAIT: Duration = Duration::from_secs(2);

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Loop::open(pool, runner)?))
}

pub struct Loop {
    /// The pool's name, for errors that are about the pool.
    pool: String,
    root: PathBuf,
    runner: Arc<dyn Runner>,
    size: u64,
    fstype: FsType,
    /// Whether the pool directory can reflink, found once (by trying it).
    reflink: OnceLock<bool>,
}

impl Loop {
    pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        Ok(Loop {
            pool: pool.name.clone(),
            root: crate::pool_path(pool)?.to_path_buf(),
            runner,
            size: pool.size.unwrap_or(DEFAULT_SIZE),
            fstype: pool.fstype.unwrap_or_default(),
            reflink: OnceLock::new(),
        })
    }

    /// Whether images in this pool can be reflinked. Until the pool directory
    /// exists (`probe` makes it) the answer is "no" and is not remembered.
    fn reflink(&self) -> bool {
        if let Some(r) = self.reflink.get() {
            return *r;
        }
        if !self.root.is_dir() {
            return false;
        }
        *self.reflink.get_or_init(|| reflink_supported(&self.root))
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join(".snapshots")
    }

    fn image_of<'a>(&self, v: &'a VolumeSpec) -> Result<&'a Path> {
        match v {
            VolumeSpec::Loop { image } if image.starts_with(&self.root) => Ok(image),
            other => Err(BdevError::InvalidSpec {
                spec: other.to_string(),
                reason: format!("not a loop volume of the pool at {:?}", self.root),
            }),
        }
    }

    fn is_snapshot(&self, img: &Path) -> bool {
        img.starts_with(self.snapshots_dir())
    }

    /// Claims `img` as a new, empty file and registers its removal.
    fn claim(&self, img: &Path, rv: &mut Revert) -> Result<File> {
        let f = claim_file(img, &self.root, rv)?;
        Ok(f)
    }

    /// Copies the image `src` to the new `dst` (reflinked where possible, else
    /// sparse) and gives the copy its own filesystem UUID.
    fn copy_image(&self, src: &Path, dst: &Path, why: CopyFor, rv: &mut Revert) -> Result<()> {
        let fstype = fs::detect_path(src, || format!("loop:{}", src.display()))?;
        fs::require_tools("loop", fstype)?;
        refuse_if_attached(src, why.refusal(), true)?;
        // A copy that is not reflinked writes every allocated block of the source.
        let needed = std::fs::metadata(src)
            .map_err(BdevError::io("stat", src))?
            .blocks()
            * 512;
        if !self.reflink() {
            check_room(&self.pool, needed, free_bytes(&self.root)?)?;
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

    /// Mounts `img` on `at` for a moment, to grow a filesystem that only grows online.
    fn grow_online(&self, img: &Path, fstype: FsType) -> Result<()> {
        let name = img
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let at = self
            .root
            .join(format!(".resize-{name}.{}", std::process::id()));
        let Some((prog, args)) = fs::grow_online_command(fstype, &at) else {
            return Ok(());
        };
        create_dir_all(&at)?;
        let grown = (|| {
            // Attached after the image grew, so the device already has the new size.
            let dev = LoopDevice::attach(img, false)?;
            mount::mount_fs(fstype.as_str(), dev.path().as_os_str(), &at, &[], false)?;
            let guard = MountGuard::mounted(&at);
            drop(dev);
            let grown = fs::run(&*self.runner, prog, &args).map_err(BdevError::from);
            let released = guard.release();
            grown?;
            released
        })();
        let _ = std::fs::remove_dir(&at);
        grown
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

/// Fails if a loop device (only a writable one, if asked) holds `img`: the image
/// is mounted, and a copy or an offline resize would see a filesystem in flux. A
/// device that an unmount is just releasing gets a moment to go.
fn refuse_if_attached(img: &Path, op: &'static str, only_writable: bool) -> Result<()> {
    let busy = || {
        loopdev::devices_backed_by(img)
            .into_iter()
            .find(|d| !only_writable || !device_read_only(d))
    };
    let start = Instant::now();
    let Some(mut dev) = busy() else {
        return Ok(());
    };
    while start.elapsed() < DETACH_WAIT {
        std::thread::sleep(Duration::from_millis(20));
        match busy() {
            None => return Ok(()),
            Some(d) => dev = d,
        }
    }
    let how = if only_writable { "read-write " } else { "" };
    Err(BdevError::Io {
        op,
        path: img.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            format!(
                "the image is {how}attached to {} (mounted); unmount it first",
                dev.display()
            ),
        ),
    })
}

/// Whether the loop device `dev` (`/dev/loopN`) is read-only, from sysfs.
fn device_read_only(dev: &Path) -> bool {
    let Some(name) = dev.file_name() else {
        return false;
    };
    std::fs::read_to_string(Path::new("/sys/block").join(name).join("ro"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

impl Backend for Loop {
    fn kind(&self) -> BackendKind {
        BackendKind::Loop
    }

    fn caps(&self) -> Caps {
        let reflink = self.reflink();
        Caps {
            snapshot: true,
            clone_from_snapshot: reflink,
            snapshot_clone: reflink,
            copy_on_write: reflink,
            clone_pins_origin: false,
            clone_reads_live_origin: false,
            promote: false,
            stacks_on_trees: false,
            lacks_xattrs: false,
            coarse_timestamps: false,
            size_limit: true,
            block_backed: true,
            resize: true,
            kernel_fs: fs::kernel_fs(self.fstype),
            tools: match self.fstype {
                FsType::Ext4 => &["mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs"],
                FsType::Xfs => &["mkfs.xfs", "xfs_admin", "xfs_growfs"],
                FsType::Btrfs => &["mkfs.btrfs", "btrfstune", "btrfs"],
            },
        }
    }

    fn probe(&self) -> Result<()> {
        if !Path::new("/dev/loop-control").exists() {
            return Err(BdevError::Unavailable {
                backend: "loop",
                missing: "/dev/loop-control does not exist".to_owned(),
                hint: "load the loop module with `modprobe loop`".to_owned(),
            });
        }
        require_kernel_fs("loop", self.fstype.as_str())?;
        fs::require_tools("loop", self.fstype)?;
        create_dir_all(&self.root)?;
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
        let image = self.root.join(format!("{name}.img"));
        fs::check_size(fstype, size, || format!("loop:{}", image.display()))?;
        fs::require_tools("loop", fstype)?;
        let f = self.claim(&image, rv)?;
        f.set_len(size)
            .map_err(BdevError::io("size image", &image))?;
        drop(f);
        let (prog, args) = fs::mkfs_command(fstype, &image, size);
        fs::run(&*self.runner, prog, &args)?;
        Ok(VolumeSpec::Loop { image })
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let img = self.image_of(v)?;
        let ro = read_only || self.is_snapshot(img);
        // Two writers (or a reader beside a writer) on one image corrupt or
        // mislead: a read-write mount wants the image to itself.
        refuse_if_attached(img, "refuse to mount", ro)?;
        let fstype = fs::detect_path(img, || format!("loop:{}", img.display()))?;
        let dev = LoopDevice::attach(img, ro)?;
        mount::mount_fs(fstype.as_str(), dev.path().as_os_str(), at, &[], ro)?;
        debug!(image = %img.display(), dev = %dev.path().display(), at = %at.display(), ro, "loop mounted");
        // Autoclear: from here the mount holds the device, and the unmount frees it.
        drop(dev);
        Ok(MountGuard::mounted(at))
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let img = self.image_of(v)?;
        if !lookup::exists(img)? {
            lookup::already_gone(v);
            return Ok(());
        }
        refuse_if_attached(img, "refuse to destroy", false)?;
        // Whatever state it is in: an image without a filesystem goes the same way.
        remove_tree(img, &self.root)
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        lookup::names_in(&self.root, Entry::File, ".img")
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        let image = self.root.join(format!("{name}.img"));
        Ok(lookup::is_entry(&image, Entry::File)?.then_some(VolumeSpec::Loop { image }))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        lookup::names_in(&self.snapshots_dir().join(name), Entry::File, ".img")
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        validate_name(snap)?;
        let image = self.snapshots_dir().join(name).join(format!("{snap}.img"));
        Ok(lookup::is_entry(&image, Entry::File)?.then_some(VolumeSpec::Loop { image }))
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let img = self.image_of(v)?;
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
        let src = self.image_of(v)?;
        let image = self.snapshots_dir().join(name).join(format!("{snap}.img"));
        // A mounted read-write image is not consistent on disk; rather than freeze a
        // mount that may live in another mount namespace, the snapshot is refused.
        self.copy_image(src, &image, CopyFor::Snapshot, rv)?;
        // Read-only on disk too; `mount` also always mounts snapshots read-only.
        std::fs::set_permissions(&image, Permissions::from_mode(0o444))
            .map_err(BdevError::io("set the mode of", &image))?;
        Ok(VolumeSpec::Loop { image })
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let img = self.image_of(snap)?;
        if !self.is_snapshot(img) {
            return Err(BdevError::InvalidSpec {
                spec: snap.to_string(),
                reason: "not a snapshot of this pool".to_owned(),
            });
        }
        self.destroy(snap)?;
        // Drop the per-volume snapshot directory once it is empty.
        if let Some(parent) = img.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        if !self.reflink() {
            return Err(BdevError::unsupported("loop", "snapshot clone"));
        }
        validate_name(name)?;
        let from = self.image_of(src)?;
        let image = self.root.join(format!("{name}.img"));
        self.copy_image(from, &image, CopyFor::SnapshotClone, rv)?;
        Ok(VolumeSpec::Loop { image })
    }

    fn copy_clone(
        &self,
        src: &VolumeSpec,
        name: &str,
        opts: &CreateOpts,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(name)?;
        let from = self.image_of(src)?;
        let image = self.root.join(format!("{name}.img"));
        self.copy_image(from, &image, CopyFor::Copy, rv)?;
        let v = VolumeSpec::Loop { image };
        // The copy keeps the source's size unless a bigger one was asked for
        // (filesystems here cannot shrink).
        if let Some(size) = opts.size {
            let have = std::fs::metadata(self.image_of(&v)?)
                .map(|m| m.len())
                .unwrap_or(0);
            if size > have {
                self.resize(&v, size)?;
            }
        }
        Ok(v)
    }

    fn check_room(&self, opts: &CreateOpts, data: u64) -> Result<()> {
        let size = opts.size.unwrap_or(self.size);
        let needed = fill_estimate(opts.fstype.unwrap_or(self.fstype), size, data);
        check_room(&self.pool, needed, free_bytes(&self.root)?)
    }

    fn sync_volume(&self, v: &VolumeSpec) -> Result<()> {
        let img = self.image_of(v)?;
        fs::sync_path(img, || v.to_string())
    }

    fn check_fs(&self, v: &VolumeSpec) -> Result<()> {
        let img = self.image_of(v)?;
        refuse_if_attached(img, "refuse to check", false)?;
        let fstype = fs::detect_path(img, || v.to_string())?;
        fs::fsck(&*self.runner, fstype, img)
    }

    fn resize(&self, v: &VolumeSpec, size: u64) -> Result<()> {
        let img = self.image_of(v)?;
        if self.is_snapshot(img) {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "snapshots are read-only and cannot be resized".to_owned(),
            });
        }
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
        if size == have {
            return Ok(());
        }
        let fstype = fs::detect_path(img, || format!("loop:{}", img.display()))?;
        fs::require_tools("loop", fstype)?;
        refuse_if_attached(img, "refuse to resize", false)?;
        let f = OpenOptions::new()
            .write(true)
            .open(img)
            .map_err(BdevError::io("open image", img))?;
        f.set_len(size).map_err(BdevError::io("grow image", img))?;
        let mut rv = Revert::new();
        // A filesystem that failed to grow still fits the old size.
        rv.add(format!("shrink {} back", img.display()), move || {
            f.set_len(have)
        });
        match fstype {
            FsType::Ext4 => fs::grow_ext4(&*self.runner, img, true)?,
            FsType::Xfs | FsType::Btrfs => self.grow_online(img, fstype)?,
        }
        rv.commit();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    fn pool(dir: &Path) -> Loop {
        let cfg = PoolConfig::new("t", BackendKind::Loop).with_path(dir);
        Loop::open(&cfg, Arc::new(ScriptedRunner::new())).unwrap()
    }

    #[test]
    fn foreign_specs_are_refused() {
        let l = pool(Path::new("/pool"));
        let other = VolumeSpec::Loop {
            image: "/elsewhere/x.img".into(),
        };
        assert!(matches!(
            l.image_of(&other),
            Err(BdevError::InvalidSpec { .. })
        ));
        let dir = VolumeSpec::Dir {
            path: "/pool/x".into(),
        };
        assert!(l.image_of(&dir).is_err());
        assert!(l.is_snapshot(Path::new("/pool/.snapshots/c/s.img")));
        assert!(!l.is_snapshot(Path::new("/pool/c.img")));
    }

    #[test]
    fn create_runs_mkfs_on_a_sparse_image_and_reverts() {
        let d = tempfile::tempdir().unwrap();
        let runner = Arc::new(ScriptedRunner::new().expect("mkfs.ext4 -q -F", ""));
        let cfg = PoolConfig::new("t", BackendKind::Loop).with_path(d.path());
        let l = Loop::open(&cfg, runner.clone()).unwrap();
        let mut rv = Revert::new();
        let opts = CreateOpts {
            size: Some(64 << 20),
            fstype: None,
        };
        let v = l.create("c1", &opts, &mut rv).unwrap();
        let img = d.path().join("c1.img");
        assert_eq!(v, VolumeSpec::Loop { image: img.clone() });
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
        let v = VolumeSpec::Loop { image: img };
        let e = l.resize(&v, 1 << 10).unwrap_err().to_string();
        assert!(e.contains("only grow"), "{e}");
        l.resize(&v, 1 << 20).unwrap();
    }

    #[test]
    fn a_pool_that_does_not_exist_yet_cannot_reflink() {
        let l = pool(Path::new("/nonexistent/berth-pool"));
        assert!(!l.caps().snapshot_clone);
        assert!(l.reflink.get().is_none(), "the answer must not be cached");
        assert!(matches!(
            l.snapshot_clone(
                &VolumeSpec::Loop {
                    image: "/nonexistent/berth-pool/a.img".into()
                },
                "b",
                &mut Revert::new()
            ),
            Err(BdevError::Unsupported { .. })
        ));
    }
}
