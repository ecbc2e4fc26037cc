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
mod spec;

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::{self, Runner};
use berth_bdev::fsutil::{create_dir_all, require_host};
use berth_bdev::loopdev::LoopDevice;
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::registry::PathUse;
use berth_bdev::{
    Backend, BdevError, Caps, CreateOpts, FsType, PoolConfig, Registration, Result, Revert,
    SpecForm, Tool, Usage, UsageKind, VolumeSpec, DEFAULT_SIZE,
};
use tracing::warn;

use crate::blockfs as bfs;
use crate::layout::{Located, PoolDir};
use crate::lookup::{Entry, NoOptions};
use export::Export;
use layout::{remove_image, run_dir_for};
pub use spec::Qcow2Spec;

pub const NAME: &str = "qcow2";
const EXT: &str = "qcow2";
const QSD_PACKAGE: &str = "qemu-utils (Debian 12: qemu-system-common)";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    aliases: &[],
    summary: "qcow2 images holding a filesystem (qemu-storage-daemon FUSE export + loop); O(1) backing-file clones",
    path: PathUse::Volumes,
    pool_options: &[],
    open,
    check_spec: <Qcow2Spec as SpecForm>::canonical,
    stacks_on_trees: false,
};

/// What the probe checks besides the filesystem's tools.
const QEMU_TOOLS: &[Tool] = &[
    Tool::new("qemu-img", "qemu-utils"),
    Tool::new("qemu-storage-daemon", QSD_PACKAGE),
];

/// The programs a pool whose images hold `fs` runs: qemu's, then the filesystem's.
fn tools(fs: FsType) -> &'static [Tool] {
    const EXT4: [Tool; 6] = bfs::backend_tools(QEMU_TOOLS, FsType::Ext4);
    const XFS: [Tool; 5] = bfs::backend_tools(QEMU_TOOLS, FsType::Xfs);
    const BTRFS: [Tool; 5] = bfs::backend_tools(QEMU_TOOLS, FsType::Btrfs);
    match fs {
        FsType::Ext4 => &EXT4,
        FsType::Xfs => &XFS,
        FsType::Btrfs => &BTRFS,
    }
}

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Qcow2::new(pool, runner)?))
}

#[derive(Clone)]
pub struct Qcow2 {
    /// The pool's name, for errors that are about the pool.
    pool: String,
    /// `ROOT/NAME.qcow2` and `ROOT/.snapshots/NAME/SNAP.qcow2`.
    dir: PoolDir,
    size: u64,
    fstype: FsType,
    runner: Arc<dyn Runner>,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2").field("root", &self.root()).finish()
    }
}

impl Qcow2 {
    pub fn new(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        pool.options::<NoOptions>()?;
        let root = pool.dir()?;
        // Image paths travel inside qemu's JSON options and qcow2 headers.
        if root.to_str().is_none() {
            return Err(BdevError::PoolSetting {
                pool: pool.name.clone(),
                reason: format!("path {root:?} is not valid UTF-8"),
                hint: "qemu takes image paths as strings; give a UTF-8 --path".to_owned(),
            });
        }
        Ok(Qcow2 {
            pool: pool.name.clone(),
            dir: PoolDir::new(root, Entry::File, ".qcow2"),
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

    /// Grows the filesystem of the (unmounted) volume to fill its image, all on
    /// one read-write export (`blockfs::grow`).
    fn grow_fs(&self, v: &VolumeSpec, loc: &Located<PathBuf>) -> Result<()> {
        // Where xfs and btrfs, which grow only while mounted, are mounted for it.
        let at = self.run_root().join(format!(
            "{}{}.{}",
            loc.name,
            export::GROW_MARK,
            berth_bdev::process::own_tag()
        ));
        self.with_export(&loc.key(), &loc.at, |export| {
            let fstype = bfs::detect_path(export, || v.to_string())?;
            // ext4 grows offline, on the export file: an online ext4 grow needs
            // CAP_SYS_RESOURCE, which containers (this host's too) lack.
            bfs::grow(&*self.runner, fstype, export, false, &at, |at| {
                let dev = LoopDevice::attach(export, false)?;
                bfs::mount_device(fstype, dev.path(), at, false)?;
                Ok(MountGuard::mounted(at))
            })
        })
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
                .is_some_and(|n| n.contains(export::GROW_MARK));
            let r = if is_grow {
                // A resize interrupted by a crash left its mount point; a
                // live berth's grow is left alone.
                if export::is_dead_grow(&p) {
                    mount::unmount(&p)
                        .map_err(BdevError::from)
                        .and_then(|()| fs::remove_dir(&p).map_err(BdevError::io("remove", &p)))
                } else {
                    Ok(())
                }
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
    fn name(&self) -> &'static str {
        NAME
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
            plain_tree: false,
            // A clone names its origin's image by path, wherever its pool is.
            clones_span_pools: true,
            snapshot_clone_refusal: None,
            lacks_xattrs: false,
            coarse_timestamps: false,
            size_limit: true,
            block_backed: true,
            resize: true,
            send_stream: false,
            kernel_fs: match self.fstype {
                FsType::Ext4 => &["fuse", "ext4"],
                FsType::Xfs => &["fuse", "xfs"],
                FsType::Btrfs => &["fuse", "btrfs"],
            },
            tools: tools(self.fstype),
        }
    }

    fn probe(&self) -> Result<()> {
        require_host(NAME, &self.caps())?;
        if !Path::new("/dev/fuse").exists() {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: "/dev/fuse does not exist".to_owned(),
                hint: "`modprobe fuse`, or give the container /dev/fuse".to_owned(),
            });
        }
        create_dir_all(self.root())
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
        bfs::require_tools(NAME, fstype)?;
        create_dir_all(self.root())?;
        let image = self.image_of(name);
        if image.exists() {
            return Err(BdevError::Exists {
                what: "qcow2 image",
                name: image.display().to_string(),
            });
        }
        let bytes = opts.size.unwrap_or(self.size);
        bfs::check_size(fstype, bytes, || Qcow2Spec::spec(&image).to_string())?;
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
        self.with_export(name, &image, |export| {
            bfs::mkfs(&*self.runner, fstype, export, bytes)
        })?;
        Ok(Qcow2Spec::spec(image))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let loc = self.locate(v)?;
        if !read_only {
            loc.refuse_snapshot(v, "mounted writable", "clone it for a writable copy")?;
        }
        let ex = Export::start(&*self.runner, &self.run_dir(&loc.key()), &loc.at, read_only)?;
        let file = ex.file();
        let mut guard = MountGuard::unmounted(at);
        // The step owns only the path: a persisted guard drops it without stopping.
        let run = ex.into_run_dir();
        guard.on_release("stop qemu-storage-daemon", move || export::teardown(&run));
        // Declared after the guard so that on an error it closes first and the
        // guard's teardown finds the loop device gone.
        let dev = LoopDevice::attach(&file, read_only)?;
        let fstype = bfs::detect_path(dev.path(), || v.to_string())?;
        bfs::mount_device(fstype, dev.path(), at, read_only)?;
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
        if loc.is_snapshot() {
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
        let info = self.info(&loc.at)?;
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
        loc.refuse_snapshot(v, "snapshotted", "snapshot the volume it was taken of")?;
        // A copy of an image being written would be torn.
        self.refuse_if_mounted(v, &loc, "unmount it before taking a snapshot", true)?;
        create_dir_all(&self.snapshot_dir(&loc.name))?;
        let dst = self.dir.snapshot(&loc.name, snap);
        if dst.exists() {
            return Err(BdevError::Exists {
                what: "qcow2 snapshot",
                name: dst.display().to_string(),
            });
        }
        // Copied beside, then renamed: a crash never leaves a torn snapshot.
        let tmp = self.snapshot_tmp(&loc.name, snap);
        berth_bdev::copy::copy_file(&loc.at, &tmp)?;
        fs::rename(&tmp, &dst).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            BdevError::io("rename", &dst)(e)
        })?;
        let d = dst.clone();
        rv.add(format!("remove {}", dst.display()), move || {
            remove_image(&d)
        });
        Ok(Qcow2Spec::spec(dst))
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let loc = self.locate(snap)?;
        if !loc.is_snapshot() {
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
        // The origin may be in another pool: it is reached by path.
        let origin = &Qcow2Spec::from_spec(src)?.image;
        // Writes to a live origin would show through the clone and corrupt it.
        let run = run_dir_for(origin);
        if export::live_daemon(&run).is_some() && export::is_writable(&run) {
            return Err(BdevError::VolumeBusy {
                spec: src.to_string(),
                state: "mounted read-write",
                hint: "unmount it before a snapshot clone",
            });
        }
        if !origin.is_file() {
            return Err(BdevError::NotFound {
                what: "qcow2 image",
                name: origin.display().to_string(),
            });
        }
        create_dir_all(self.root())?;
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
        Ok(Qcow2Spec::spec(image))
    }

    fn copy_clone(
        &self,
        src: &VolumeSpec,
        name: &str,
        opts: &CreateOpts,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(name)?;
        if src.backend() != NAME {
            return Err(BdevError::unsupported(
                NAME,
                "native copy from another backend",
            ));
        }
        let origin = &Qcow2Spec::from_spec(src)?.image;
        create_dir_all(self.root())?;
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
        let v = Qcow2Spec::spec(image);
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
        loc.refuse_snapshot(v, "resized", "clone it and resize the clone")?;
        self.refuse_if_mounted(v, &loc, "unmount it before resizing it", false)?;
        let current = self.info(&loc.at)?.virtual_size;
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
                loc.at.as_os_str(),
                s.as_ref(),
            ])?;
        }
        self.grow_fs(v, &loc)
    }
}

#[cfg(test)]
mod tests;
