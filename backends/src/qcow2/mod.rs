//! qcow2: each volume is a qcow2 image holding a filesystem (ext4 by default).
//!
//! Layout under the pool directory:
//! - `NAME.qcow2`: a volume; a snapshot clone is a new image whose backing file is
//!   its origin (`qemu-img create -b ORIGIN -F qcow2`), O(1) and copy-on-write. It
//!   reads the origin's live data, so the origin must stay unchanged while clones
//!   exist (`clone_reads_live_origin`; the store keeps it read-only).
//! - `.snapshots/NAME/SNAP.qcow2`: a named snapshot, a copy of the image file made
//!   while the volume is not mounted read-write (reflinked where the pool's
//!   filesystem can, else a sparse copy) that keeps the volume's backing file.
//!   Snapshots are independent files: deleting one never touches the volume or the
//!   other snapshots (with the "rename, then new top image" scheme a delete in the
//!   middle of a chain would need `qemu-img rebase`/`commit`), it mounts read-only
//!   and clones O(1) like a volume.
//! - `.run/KEY/`: per-mount state of the qemu-storage-daemon (see `export`), KEY is
//!   `NAME` or `NAME@SNAP`; `.run/NAME:grow` is a resize's temporary mount point.
//!
//! Mounting: qemu-storage-daemon exports the image as a raw file over FUSE, a loop
//! device turns that into a block device, and the filesystem is mounted from it.
//! The daemon belongs to the `MountGuard`. The `qemu-nbd` route is not implemented:
//! this kernel has no nbd module, so it could not be tested here.

mod export;
mod layout;
mod parse;
mod space;

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::{self, Runner};
use berth_bdev::fsutil::{create_dir_all, require_kernel_fs, require_tool};
use berth_bdev::loopdev::LoopDevice;
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::{
    Backend, BackendKind, BdevError, Caps, CreateOpts, FsType, PoolConfig, Result, Revert, Usage,
    UsageKind, VolumeSpec, DEFAULT_SIZE,
};
use tracing::warn;

use export::Export;
use layout::{remove_image, run_dir_for};

const NAME: &str = "qcow2";
const EXT: &str = "qcow2";
const QSD_PACKAGE: &str = "qemu-utils (Debian 12: qemu-system-common)";

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Qcow2::new(pool, runner)?))
}

/// An image of this pool: a volume, or a snapshot of one.
struct Loc {
    image: PathBuf,
    name: String,
    snap: Option<String>,
}

impl Loc {
    /// The `.run` entry of this image.
    fn key(&self) -> String {
        match &self.snap {
            Some(s) => format!("{}@{s}", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Qcow2 {
    /// The pool's name, for errors that are about the pool.
    pool: String,
    root: PathBuf,
    size: u64,
    fstype: FsType,
    runner: Arc<dyn Runner>,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2").field("root", &self.root).finish()
    }
}

fn mkfs_tool(fs: FsType) -> (&'static str, &'static str) {
    match fs {
        FsType::Ext4 => ("mkfs.ext4", "e2fsprogs"),
        FsType::Xfs => ("mkfs.xfs", "xfsprogs"),
        FsType::Btrfs => ("mkfs.btrfs", "btrfs-progs"),
    }
}

impl Qcow2 {
    pub fn new(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        let root = crate::pool_path(pool)?.to_path_buf();
        // Image paths travel inside qemu's JSON options and qcow2 headers.
        if root.to_str().is_none() {
            return Err(BdevError::InvalidSpec {
                spec: root.display().to_string(),
                reason: "a qcow2 pool path must be valid UTF-8".to_owned(),
            });
        }
        Ok(Qcow2 {
            pool: pool.name.clone(),
            root,
            size: pool.size.unwrap_or(DEFAULT_SIZE),
            fstype: pool.fstype.unwrap_or_default(),
            runner,
        })
    }

    fn qemu_img(&self, args: &[&OsStr]) -> Result<cmd::CmdOutput> {
        Ok(self.runner.run("qemu-img", args)?)
    }

    fn info(&self, image: &Path) -> Result<parse::ImageInfo> {
        // -U: a mounted image is locked by its daemon; reading its header is safe.
        let out = self.qemu_img(&[
            "info".as_ref(),
            "--output=json".as_ref(),
            "-U".as_ref(),
            image.as_os_str(),
        ])?;
        parse::image_info(&out.stdout)
    }

    /// Runs `f` on the image exported read-write (for mkfs).
    fn with_export<T>(
        &self,
        key: &str,
        image: &Path,
        f: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<T> {
        let ex = Export::start(&*self.runner, &self.run_dir(key), image, false)?;
        let out = f(&ex.file());
        let stopped = ex.stop();
        let out = out?;
        stopped?;
        Ok(out)
    }

    /// The same mkfs as every block-backed backend (`blockfs`).
    fn mkfs(&self, fs: FsType, dev: &Path, size: u64) -> Result<()> {
        let (prog, args) = crate::blockfs::mkfs_command(fs, dev, size);
        crate::blockfs::run(&*self.runner, prog, &args)?;
        Ok(())
    }

    fn detect_fs(&self, dev: &Path) -> Result<FsType> {
        let out = self.runner.run(
            "blkid",
            &["-p", "-o", "value", "-s", "TYPE"]
                .map(OsStr::new)
                .into_iter()
                .chain([dev.as_os_str()])
                .collect::<Vec<_>>(),
        )?;
        parse::blkid_type(&out.stdout)
    }

    /// Grows the filesystem of the (unmounted) volume to fill its image.
    fn grow_fs(&self, v: &VolumeSpec, loc: &Loc) -> Result<()> {
        let fstype = self.with_export(&loc.key(), &loc.image, |export| {
            let fstype = self.detect_fs(export)?;
            if fstype == FsType::Ext4 {
                // Offline, on the export file: an online ext4 grow needs
                // CAP_SYS_RESOURCE, which containers (this host's too) lack.
                match self.runner.run(
                    "e2fsck",
                    &["-f".as_ref(), "-p".as_ref(), export.as_os_str()],
                ) {
                    // 1: errors were corrected, the filesystem is fine now.
                    Err(cmd::CmdError::Failed { status, .. }) if status == "exit status: 1" => {}
                    r => drop(r?),
                }
                self.runner.run("resize2fs", &[export.as_os_str()])?;
            }
            Ok(fstype)
        })?;
        if fstype == FsType::Ext4 {
            return Ok(());
        }
        // xfs and btrfs grow only while mounted.
        let at = self.run_root().join(format!("{}:grow", loc.name));
        create_dir_all(&at)?;
        let result = (|| {
            let guard = self.mount(v, &at, false)?;
            let at_s = at.as_os_str();
            let grown = match fstype {
                FsType::Xfs => self.runner.run("xfs_growfs", &[at_s]),
                _ => self.runner.run(
                    "btrfs",
                    &[
                        "filesystem".as_ref(),
                        "resize".as_ref(),
                        "max".as_ref(),
                        at_s,
                    ],
                ),
            };
            let released = guard.release();
            grown?;
            released
        })();
        let _ = fs::remove_dir(&at);
        result
    }

    /// Removes the leftovers of dead qemu-storage-daemons (their FUSE exports,
    /// loop devices, the filesystems mounted from them and their `.run` state)
    /// and stops live ones whose export nothing uses. Mounts in use are left
    /// alone; no age or timing guess is involved (see `export`).
    fn clean_leftovers(&self) -> Result<()> {
        let rd = match fs::read_dir(self.run_root()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BdevError::io("read directory", self.run_root())(e)),
        };
        let mut first = None;
        for e in rd.flatten() {
            let p = e.path();
            let is_grow = p
                .file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.contains(':'));
            let r = if is_grow {
                // A resize interrupted by a crash left its mount point.
                mount::unmount(&p)
                    .map_err(BdevError::from)
                    .and_then(|()| fs::remove_dir(&p).map_err(BdevError::io("remove", &p)))
            } else {
                export::clean_if_stale(&p).map(drop)
            };
            if let Err(e) = r {
                warn!(entry = %p.display(), error = %e, "cleaning qcow2 leftovers failed");
                first.get_or_insert(e);
            }
        }
        export::remove_run_root_if_empty(&self.run_root());
        first.map_or(Ok(()), Err)
    }
}

fn size_arg(size: u64) -> String {
    size.to_string()
}

impl Backend for Qcow2 {
    fn kind(&self) -> BackendKind {
        BackendKind::Qcow2
    }

    fn cleanup_stale(&self) -> Result<()> {
        self.clean_leftovers()
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
            stacks_on_trees: false,
            lacks_xattrs: false,
            coarse_timestamps: false,
            size_limit: true,
            block_backed: true,
            resize: true,
            kernel_fs: match self.fstype {
                FsType::Ext4 => &["fuse", "ext4"],
                FsType::Xfs => &["fuse", "xfs"],
                FsType::Btrfs => &["fuse", "btrfs"],
            },
            tools: match self.fstype {
                FsType::Ext4 => &["qemu-img", "qemu-storage-daemon", "blkid", "mkfs.ext4"],
                FsType::Xfs => &["qemu-img", "qemu-storage-daemon", "blkid", "mkfs.xfs"],
                FsType::Btrfs => &["qemu-img", "qemu-storage-daemon", "blkid", "mkfs.btrfs"],
            },
        }
    }

    fn probe(&self) -> Result<()> {
        require_tool(NAME, "qemu-img", "qemu-utils")?;
        require_tool(NAME, "qemu-storage-daemon", QSD_PACKAGE)?;
        require_tool(NAME, "blkid", "util-linux")?;
        let (mkfs, package) = mkfs_tool(self.fstype);
        require_tool(NAME, mkfs, package)?;
        require_kernel_fs(NAME, "fuse")?;
        require_kernel_fs(NAME, self.fstype.as_str())?;
        if !Path::new("/dev/fuse").exists() {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: "/dev/fuse does not exist".to_owned(),
                hint: "`modprobe fuse`, or give the container /dev/fuse".to_owned(),
            });
        }
        create_dir_all(&self.root)
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "mount",
                "qemu-storage-daemon FUSE export + loop device (qemu-nbd not used)".to_owned(),
            ),
            ("default filesystem", self.fstype.to_string()),
            (
                "snapshots",
                "image copies in .snapshots/NAME/ (reflinked where possible)".to_owned(),
            ),
        ]
    }

    fn create(&self, name: &str, opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let fstype = opts.fstype.unwrap_or(self.fstype);
        let (mkfs, package) = mkfs_tool(fstype);
        require_tool(NAME, mkfs, package)?;
        create_dir_all(&self.root)?;
        let image = self.image_of(name);
        if image.exists() {
            return Err(BdevError::Exists {
                what: "qcow2 image",
                name: image.display().to_string(),
            });
        }
        let bytes = opts.size.unwrap_or(self.size);
        crate::blockfs::check_size(fstype, bytes, || format!("qcow2:{}", image.display()))?;
        let size = size_arg(bytes);
        self.qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            image.as_os_str(),
            size.as_ref(),
        ])?;
        let img = image.clone();
        rv.add(format!("remove {}", image.display()), move || {
            remove_image(&img)
        });
        self.with_export(name, &image, |export| self.mkfs(fstype, export, bytes))?;
        Ok(VolumeSpec::Qcow2 { image })
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let loc = self.locate(v)?;
        if loc.snap.is_some() && !read_only {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "a snapshot mounts read-only; clone it for a writable copy".to_owned(),
            });
        }
        let ex = Export::start(
            &*self.runner,
            &self.run_dir(&loc.key()),
            &loc.image,
            read_only,
        )?;
        let file = ex.file();
        let mut guard = MountGuard::unmounted(at);
        // The step owns only the path: a persisted guard drops it without stopping.
        let run = ex.into_run_dir();
        guard.on_release("stop qemu-storage-daemon", move || export::teardown(&run));
        // Declared after the guard so that on an error it closes first and the
        // guard's teardown finds the loop device gone.
        let dev = LoopDevice::attach(&file, read_only)?;
        let fstype = self.detect_fs(dev.path())?;
        mount::mount_fs(fstype.as_str(), dev.path().as_os_str(), at, &[], read_only)?;
        guard.set_mounted();
        Ok(guard)
    }

    fn unmount(&self, v: &VolumeSpec, at: &Path) -> Result<()> {
        let loc = self.locate(v)?;
        mount::unmount(at)?;
        let run = self.run_dir(&loc.key());
        match fs::canonicalize(&run) {
            Ok(run) => export::teardown(&run),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BdevError::io("resolve", run)(e)),
        }
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let loc = self.locate(v)?;
        if loc.snap.is_some() {
            return self.destroy_snapshot(v);
        }
        // Snapshots are files of their own and stay: a restore replaces the volume
        // and keeps them; the store removes them with `destroy_snapshot`.
        self.remove_loc(v, &loc)
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        self.list_volumes()
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        self.find_volume(name)
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        self.list_snapshots(name)
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        self.find_snapshot(name, snap)
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let loc = self.locate(v)?;
        let info = self.info(&loc.image)?;
        let note = info.backing.map(|b| {
            format!(
                "the image file only; data it still reads from its backing file {} is not counted",
                b.display()
            )
        });
        Ok(Usage {
            used_bytes: info.actual_size,
            kind: UsageKind::Allocated,
            limit_bytes: Some(info.virtual_size),
            note,
        })
    }

    fn snapshot(
        &self,
        v: &VolumeSpec,
        _name: &str,
        snap: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let loc = self.locate(v)?;
        validate_name(snap)?;
        if loc.snap.is_some() {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "cannot snapshot a snapshot".to_owned(),
            });
        }
        // A copy of an image being written would be torn.
        self.refuse_if_mounted(&loc, "taking a snapshot", true)?;
        let dir = self.snapshot_dir(&loc.name);
        create_dir_all(&dir)?;
        let dst = dir.join(format!("{snap}.{EXT}"));
        if dst.exists() {
            return Err(BdevError::Exists {
                what: "qcow2 snapshot",
                name: dst.display().to_string(),
            });
        }
        // Copied beside, then renamed: a crash never leaves a torn snapshot.
        let tmp = self.snapshot_tmp(&loc.name, snap);
        berth_bdev::copy::copy_file(&loc.image, &tmp)?;
        fs::rename(&tmp, &dst).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            BdevError::io("rename", &dst)(e)
        })?;
        let d = dst.clone();
        rv.add(format!("remove {}", dst.display()), move || {
            remove_image(&d)
        });
        Ok(VolumeSpec::Qcow2 { image: dst })
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let loc = self.locate(snap)?;
        if loc.snap.is_none() {
            return Err(BdevError::InvalidSpec {
                spec: snap.to_string(),
                reason: "not a snapshot".to_owned(),
            });
        }
        self.remove_loc(snap, &loc)?;
        let _ = fs::remove_dir(self.snapshot_dir(&loc.name));
        Ok(())
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let VolumeSpec::Qcow2 { image: origin } = src else {
            return Err(BdevError::InvalidSpec {
                spec: src.to_string(),
                reason: "a qcow2 clone needs a qcow2 source".to_owned(),
            });
        };
        // Writes to a live origin would show through the clone and corrupt it.
        let run = run_dir_for(origin);
        if export::live_daemon(&run).is_some() && export::is_writable(&run) {
            return Err(BdevError::InvalidSpec {
                spec: src.to_string(),
                reason: "it is mounted read-write; unmount it before a snapshot clone".to_owned(),
            });
        }
        if !origin.is_file() {
            return Err(BdevError::NotFound {
                what: "qcow2 image",
                name: origin.display().to_string(),
            });
        }
        create_dir_all(&self.root)?;
        let image = self.image_of(name);
        if image.exists() {
            return Err(BdevError::Exists {
                what: "qcow2 image",
                name: image.display().to_string(),
            });
        }
        self.qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            origin.as_os_str(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            image.as_os_str(),
        ])?;
        let img = image.clone();
        rv.add(format!("remove {}", image.display()), move || {
            remove_image(&img)
        });
        Ok(VolumeSpec::Qcow2 { image })
    }

    fn copy_clone(
        &self,
        src: &VolumeSpec,
        name: &str,
        opts: &CreateOpts,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(name)?;
        let VolumeSpec::Qcow2 { image: origin } = src else {
            return Err(BdevError::unsupported(
                NAME,
                "native copy from another backend",
            ));
        };
        create_dir_all(&self.root)?;
        let image = self.image_of(name);
        if image.exists() {
            return Err(BdevError::Exists {
                what: "qcow2 image",
                name: image.display().to_string(),
            });
        }
        self.check_convert_room(origin)?;
        // convert reads through the whole backing chain: the copy stands alone. It
        // takes qemu's image lock, so a volume mounted read-write is refused.
        let img = image.clone();
        rv.add(format!("remove {}", image.display()), move || {
            remove_image(&img)
        });
        self.qemu_img(&[
            "convert".as_ref(),
            "-q".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            origin.as_os_str(),
            image.as_os_str(),
        ])?;
        let v = VolumeSpec::Qcow2 { image };
        self.sync_image(&v)?;
        if let Some(size) = opts.size {
            if size > self.info(origin)?.virtual_size {
                self.resize(&v, size)?;
            }
        }
        Ok(v)
    }

    fn check_room(&self, opts: &CreateOpts, data: u64) -> Result<()> {
        self.room_for(opts, data)
    }

    fn sync_volume(&self, v: &VolumeSpec) -> Result<()> {
        self.sync_image(v)
    }

    fn check_fs(&self, v: &VolumeSpec) -> Result<()> {
        self.check_image(v)
    }

    fn resize(&self, v: &VolumeSpec, size: u64) -> Result<()> {
        let loc = self.locate(v)?;
        if loc.snap.is_some() {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "a snapshot cannot be resized".to_owned(),
            });
        }
        self.refuse_if_mounted(&loc, "resizing it", false)?;
        let current = self.info(&loc.image)?.virtual_size;
        if size < current {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: format!(
                    "qcow2 volumes only grow: the image is {current} bytes, asked for {size}"
                ),
            });
        }
        if size > current {
            let s = size_arg(size);
            self.qemu_img(&[
                "resize".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                loc.image.as_os_str(),
                s.as_ref(),
            ])?;
        }
        self.grow_fs(v, &loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    fn q() -> Qcow2 {
        let pool = PoolConfig::new("t", BackendKind::Qcow2).with_path("/p");
        Qcow2::new(&pool, Arc::new(ScriptedRunner::new())).unwrap()
    }

    fn spec(p: &str) -> VolumeSpec {
        VolumeSpec::Qcow2 { image: p.into() }
    }

    #[test]
    fn a_snapshot_clone_is_a_new_image_backed_by_its_origin() {
        let d = tempfile::tempdir().unwrap();
        let origin = d.path().join("o.qcow2");
        fs::write(&origin, b"QFI\xfb").unwrap();
        let clone = d.path().join("c.qcow2");
        let line = format!(
            "qemu-img create -q -f qcow2 -b {} -F qcow2 {}",
            origin.display(),
            clone.display()
        );
        let r = Arc::new(ScriptedRunner::new().expect(&line, ""));
        let pool = PoolConfig::new("t", BackendKind::Qcow2).with_path(d.path());
        let q = Qcow2::new(&pool, r.clone()).unwrap();
        let mut rv = Revert::new();
        let c = q
            .snapshot_clone(&VolumeSpec::Qcow2 { image: origin }, "c", &mut rv)
            .unwrap();
        rv.commit();
        assert_eq!(c, VolumeSpec::Qcow2 { image: clone });
        assert_eq!(r.calls(), vec![line]);
    }

    #[test]
    fn a_snapshot_cannot_mount_writable() {
        let e = q()
            .mount(&spec("/p/.snapshots/c1/s1.qcow2"), Path::new("/mnt"), false)
            .unwrap_err();
        assert!(matches!(e, BdevError::InvalidSpec { .. }), "{e}");
    }
}
