//! lvm: each volume is a logical volume in one volume group, holding a filesystem
//! (ext4 by default) mounted from `/dev/VG/LV`.
//!
//! With a thin pool (the `thinpool` setting) volumes are thin LVs and snapshots and
//! clones are thin snapshots: O(1), copy-on-write, and independent of their origin
//! (a thin snapshot maps the same pool blocks; deleting the origin only drops its
//! mappings). Without one, volumes are classic LVs and snapshots are classic COW
//! snapshots, which keep reading their origin and cannot be snapshotted again, so
//! that mode offers read-only snapshots only.
//!
//! Layout: volume `NAME` is LV `NAME`, snapshot `SNAP` of it is LV `NAME+SNAP`
//! (`+` never occurs in berth names). Snapshots are always mounted read-only.

use crate::blockfs as fs;
mod names;
mod parse;
mod space;
mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::{self, Runner};
use berth_bdev::fsutil::require_host;
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::pool::PoolOption;
use berth_bdev::registry::PathUse;
use berth_bdev::{
    Backend, BdevError, Caps, CreateOpts, FsType, PoolConfig, Registration, Result, Revert,
    SpecForm, Tool, Usage, UsageKind, VolumeSpec, DEFAULT_SIZE,
};
use tracing::debug;

pub use parse::{misc_has_device_mapper, parse_dumpe2fs_used, parse_lvs, parse_vgs, LvInfo};
use spec::LvmOptions;
pub use spec::LvmSpec;

pub const NAME: &str = "lvm";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    aliases: &[],
    summary:
        "logical volumes holding ext4/xfs/btrfs; O(1) thin snapshots and clones with a thin pool",
    path: PathUse::Unused,
    pool_options: &[
        PoolOption {
            key: "vg",
            value_name: "VG",
            help: "Volume group",
            required: true,
            example: "vg0",
        },
        PoolOption {
            key: "thinpool",
            value_name: "LV",
            help: "Thin pool in the volume group, for thin snapshots",
            required: false,
            example: "pool",
        },
    ],
    open,
    check_spec: <LvmSpec as SpecForm>::canonical,
    stacks_on_trees: false,
};

/// What the probe checks besides the filesystem's tools.
const LVM_TOOLS: &[Tool] = &[Tool::new("lvm", "lvm2")];
/// Separates a volume's name from a snapshot's in an LV name.
const SNAP_SEP: char = '+';
const LVS_FIELDS: &str = "lv_name,vg_name,lv_size,data_percent,origin,pool_lv,lv_attr";

pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Lvm::open(pool, runner)?))
}

pub struct Lvm {
    /// The pool's name, for errors that are about the pool.
    pool: String,
    vg: String,
    thinpool: Option<String>,
    runner: Arc<dyn Runner>,
    size: u64,
    fstype: FsType,
}

/// The LV of snapshot `snap` of volume `name`.
pub fn snapshot_lv(name: &str, snap: &str) -> String {
    format!("{name}{SNAP_SEP}{snap}")
}

/// `SIZE` in bytes as an LVM size argument.
fn bytes_arg(size: u64) -> String {
    format!("{size}b")
}

/// The programs a pool whose volumes hold `fs` runs: lvm's, then the filesystem's.
fn tools(fs: FsType) -> &'static [Tool] {
    const EXT4: [Tool; 5] = fs::backend_tools(LVM_TOOLS, FsType::Ext4);
    const XFS: [Tool; 4] = fs::backend_tools(LVM_TOOLS, FsType::Xfs);
    const BTRFS: [Tool; 4] = fs::backend_tools(LVM_TOOLS, FsType::Btrfs);
    match fs {
        FsType::Ext4 => &EXT4,
        FsType::Xfs => &XFS,
        FsType::Btrfs => &BTRFS,
    }
}

impl Lvm {
    pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        let LvmOptions { vg, thinpool } = LvmOptions::of(pool)?;
        Ok(Lvm {
            pool: pool.name.clone(),
            vg,
            thinpool,
            runner,
            size: pool.size.unwrap_or(DEFAULT_SIZE),
            fstype: pool.fstype.unwrap_or_default(),
        })
    }

    fn spec(&self, lv: &str) -> VolumeSpec {
        LvmSpec::spec(&self.vg, lv)
    }

    fn full(&self, lv: &str) -> String {
        format!("{}/{lv}", self.vg)
    }

    fn device(&self, lv: &str) -> PathBuf {
        Path::new("/dev").join(&self.vg).join(lv)
    }

    fn run(&self, prog: &str, args: &[&str]) -> Result<String> {
        Ok(cmd::run(&*self.runner, prog, args)?.stdout)
    }

    /// Every LV of the volume group.
    fn lvs(&self) -> Result<Vec<LvInfo>> {
        let out = self.run(
            "lvs",
            &[
                "--reportformat",
                "json",
                "-o",
                LVS_FIELDS,
                "--units",
                "b",
                "--nosuffix",
                &self.vg,
            ],
        )?;
        parse_lvs(&out)
    }

    fn find(&self, lv: &str) -> Result<LvInfo> {
        self.lvs()?
            .into_iter()
            .find(|l| l.name == lv)
            .ok_or_else(|| BdevError::NotFound {
                what: "logical volume",
                name: self.full(lv),
            })
    }

    fn refuse_existing(&self, lv: &str) -> Result<()> {
        if self.lvs()?.iter().any(|l| l.name == lv) {
            return Err(BdevError::Exists {
                what: "logical volume",
                name: self.full(lv),
            });
        }
        Ok(())
    }

    /// Registers the removal of the new LV `lv`.
    fn undo_create(&self, lv: &str, rv: &mut Revert) {
        let runner = self.runner.clone();
        let full = self.full(lv);
        rv.add(format!("remove logical volume {full}"), move || {
            cmd::run(&*runner, "lvremove", &["-f", &full]).map(drop)
        });
    }

    /// Activates `lv` if its device node is missing (thin snapshots made by other
    /// tools skip activation by default, hence `-K`).
    fn activate(&self, lv: &str) -> Result<PathBuf> {
        let dev = self.device(lv);
        if !dev.exists() {
            self.run("lvchange", &["-ay", "-K", &self.full(lv)])?;
        }
        Ok(dev)
    }

    /// A snapshot of `lv` called `new`: a thin snapshot in a thin pool, else a
    /// classic COW snapshot as big as its origin (so it can never overflow).
    fn lv_snapshot(&self, lv: &str, new: &str, rv: &mut Revert) -> Result<()> {
        let origin = self.find(lv)?;
        self.refuse_existing(new)?;
        let full = self.full(lv);
        if self.thinpool.is_some() {
            self.run(
                "lvcreate",
                &["-q", "--yes", "-s", &full, "-n", new, "-kn", "-ay"],
            )?;
        } else {
            if origin.is_classic_snapshot() {
                return Err(BdevError::unsupported(
                    NAME,
                    "snapshots of classic snapshots",
                ));
            }
            let size = bytes_arg(origin.size);
            self.run(
                "lvcreate",
                &["-q", "--yes", "-s", &full, "-n", new, "-L", &size],
            )?;
        }
        self.undo_create(new, rv);
        Ok(())
    }

    /// The filesystem on `lv`, from its superblock.
    fn detect_fs(&self, lv: &str) -> Result<FsType> {
        let dev = self.activate(lv)?;
        fs::detect_path(&dev, || self.spec(lv).to_string())
    }

    /// Grows the filesystem on `dev` to fill it (`blockfs::grow`).
    fn grow_fs(&self, lv: &str, dev: &Path, fstype: FsType) -> Result<()> {
        let at = std::env::temp_dir().join(format!(
            "berth-lvm-grow-{}-{}-{lv}",
            std::process::id(),
            self.vg
        ));
        fs::grow(&*self.runner, fstype, dev, self.mounted(dev), &at, |at| {
            self.mount_dev(dev, at, fstype, false)
        })
    }

    fn mounted(&self, dev: &Path) -> bool {
        let Ok(real) = std::fs::canonicalize(dev) else {
            return false;
        };
        mount::mounts()
            .iter()
            .any(|m| std::fs::canonicalize(&m.source).is_ok_and(|s| s == real))
    }

    fn mount_dev(&self, dev: &Path, at: &Path, fstype: FsType, ro: bool) -> Result<MountGuard> {
        fs::mount_device(fstype, dev, at, ro)?;
        Ok(MountGuard::mounted(at))
    }
}

impl Backend for Lvm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn caps(&self) -> Caps {
        let thin = self.thinpool.is_some();
        Caps {
            snapshot: true,
            // Classic snapshots cannot be snapshotted, and a writable classic
            // snapshot as a clone would pin its origin for good: clones are thin only.
            clone_from_snapshot: thin,
            snapshot_clone: thin,
            copy_on_write: thin,
            clone_pins_origin: false,
            clone_reads_live_origin: false,
            promote: false,
            stacks_on_trees: false,
            plain_tree: false,
            clones_span_pools: false,
            snapshot_clone_refusal: None,
            lacks_xattrs: false,
            coarse_timestamps: false,
            size_limit: true,
            block_backed: true,
            resize: true,
            send_stream: false,
            kernel_fs: fs::kernel_fs(self.fstype),
            tools: tools(self.fstype),
        }
    }

    fn probe(&self) -> Result<()> {
        // Checked before the tools: without device-mapper no package helps, and
        // a host missing both should hear about the kernel (tests/tests/lvm.rs).
        let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
        if !misc_has_device_mapper(&misc) && !Path::new("/sys/class/misc/device-mapper").exists() {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: "the kernel has no device-mapper (no device-mapper in /proc/misc)"
                    .to_owned(),
                hint: "load it with `modprobe dm-mod` (and dm-thin-pool for thin pools), or use a kernel built with CONFIG_BLK_DEV_DM"
                    .to_owned(),
            });
        }
        require_host(NAME, &self.caps())?;
        let vgs = self
            .run("vgs", &["--reportformat", "json", "-o", "vg_name"])
            .and_then(|out| parse_vgs(&out))?;
        if !vgs.contains(&self.vg) {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: format!("volume group {:?} does not exist", self.vg),
                hint: format!("create it with `vgcreate {} /dev/DEVICE`", self.vg),
            });
        }
        if let Some(tp) = &self.thinpool {
            let lvs = self.lvs()?;
            if !lvs.iter().any(|l| l.name == *tp && l.is_thin_pool()) {
                return Err(BdevError::Unavailable {
                    backend: NAME,
                    missing: format!("thin pool {}/{tp} does not exist", self.vg),
                    hint: format!("create it with `lvcreate -T -L SIZE {}/{tp}`", self.vg),
                });
            }
        }
        Ok(())
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let mode = match &self.thinpool {
            Some(tp) => format!("thin pool {}/{tp}: O(1) thin snapshots and clones", self.vg),
            None => "classic LVs: COW snapshots, no clones".to_owned(),
        };
        vec![
            ("volume group", self.vg.clone()),
            ("mode", mode),
            ("fstype", self.fstype.to_string()),
            ("default size", format!("{} MiB", self.size >> 20)),
        ]
    }

    fn create(&self, name: &str, opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let size = opts.size.unwrap_or(self.size);
        let fstype = opts.fstype.unwrap_or(self.fstype);
        fs::check_size(fstype, size, || self.spec(name).to_string())?;
        fs::require_tools(NAME, fstype)?;
        self.refuse_existing(name)?;
        let size_arg = bytes_arg(size);
        match &self.thinpool {
            Some(tp) => {
                let pool = self.full(tp);
                self.run(
                    "lvcreate",
                    &["-q", "--yes", "-T", &pool, "-V", &size_arg, "-n", name],
                )?
            }
            None => self.run(
                "lvcreate",
                &["-q", "--yes", "-Wy", "-L", &size_arg, "-n", name, &self.vg],
            )?,
        };
        self.undo_create(name, rv);
        let dev = self.activate(name)?;
        fs::mkfs(&*self.runner, fstype, &dev, size)?;
        debug!(vg = %self.vg, lv = name, %fstype, size, "lvm volume created");
        Ok(self.spec(name))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let loc = self.locate(v)?;
        let lv = loc.at.as_str();
        // Snapshots are always mounted read-only.
        let ro = read_only || loc.is_snapshot();
        let fstype = self.detect_fs(lv)?;
        let dev = self.activate(lv)?;
        self.mount_dev(&dev, at, fstype, ro)
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let loc = self.locate(v)?;
        let lv = loc.at.as_str();
        let lvs = self.lvs()?;
        if !lvs.iter().any(|l| l.name == lv) {
            crate::lookup::already_gone(v);
            return Ok(());
        }
        // `lvremove -f` on an origin silently takes its classic snapshots along.
        let pinned: Vec<&str> = lvs
            .iter()
            .filter(|l| l.is_classic_snapshot() && l.origin.as_deref() == Some(lv))
            .map(|l| l.name.as_str())
            .collect();
        if !pinned.is_empty() {
            return Err(BdevError::DeleteRefused {
                path: self.device(lv),
                reason: format!(
                    "classic snapshots read from it ({}); destroy them first",
                    pinned.join(", ")
                ),
            });
        }
        // Whatever state it is in: an LV without a filesystem goes the same way.
        self.run("lvremove", &["-q", "-f", &self.full(lv)])?;
        Ok(())
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        Ok(names::volumes(&self.lvs()?, self.thinpool.as_deref()))
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        let found = names::volumes(&self.lvs()?, self.thinpool.as_deref())
            .iter()
            .any(|n| n == name);
        Ok(found.then(|| self.spec(name)))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        Ok(names::snapshots(&self.lvs()?, name))
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        validate_name(snap)?;
        let lv = snapshot_lv(name, snap);
        let found = self.lvs()?.iter().any(|l| l.name == lv);
        Ok(found.then(|| self.spec(&lv)))
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let loc = self.locate(v)?;
        let lv = loc.at.as_str();
        let info = self.find(lv)?;
        if let Some(used) = info.allocated() {
            let note = if info.is_thin_volume() {
                "thin blocks mapped by the volume, shared ones (snapshots, clones) included"
            } else {
                "copy-on-write space the snapshot holds"
            };
            return Ok(Usage {
                used_bytes: used,
                kind: UsageKind::Allocated,
                limit_bytes: Some(info.size),
                note: Some(note.to_owned()),
            });
        }
        // A classic LV is allocated in full; what its filesystem holds is the
        // figure that changes.
        let dev = self.activate(lv)?;
        if self.detect_fs(lv)? == FsType::Ext4 {
            let dev_s = dev.to_string_lossy().into_owned();
            let out = self.run("dumpe2fs", &["-h", &dev_s])?;
            if let Some(used) = parse_dumpe2fs_used(&out) {
                return Ok(Usage {
                    used_bytes: used,
                    kind: UsageKind::Allocated,
                    limit_bytes: Some(info.size),
                    note: Some(
                        "blocks in use in the filesystem (superblock counters, updated on unmount); the LV itself is allocated in full"
                            .to_owned(),
                    ),
                });
            }
        }
        Ok(Usage {
            used_bytes: info.size,
            kind: UsageKind::Allocated,
            limit_bytes: Some(info.size),
            note: Some("a classic LV is allocated in full".to_owned()),
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
        let loc = self.locate(v)?;
        let new = snapshot_lv(name, snap);
        self.lv_snapshot(&loc.at, &new, rv)?;
        Ok(self.spec(&new))
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        if !self.locate(snap)?.is_snapshot() {
            return Err(BdevError::InvalidSpec {
                spec: snap.to_string(),
                reason: "not a snapshot of this pool".to_owned(),
            });
        }
        self.destroy(snap)
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        if self.thinpool.is_none() {
            return Err(BdevError::unsupported(NAME, "snapshot clone"));
        }
        validate_name(name)?;
        let loc = self.locate(src)?;
        self.lv_snapshot(&loc.at, name, rv)?;
        Ok(self.spec(name))
    }

    fn check_room(&self, opts: &CreateOpts, data: u64) -> Result<()> {
        self.room_for(opts, data)
    }

    fn sync_volume(&self, v: &VolumeSpec) -> Result<()> {
        self.sync_device(v)
    }

    fn check_fs(&self, v: &VolumeSpec) -> Result<()> {
        self.check_device(v)
    }

    fn resize(&self, v: &VolumeSpec, size: u64) -> Result<()> {
        let loc = self.locate(v)?;
        loc.refuse_snapshot(v, "resized", "clone it and resize the clone")?;
        let lv = loc.at.as_str();
        let info = self.find(lv)?;
        if size < info.size {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: format!(
                    "cannot shrink from {} to {size} bytes: lvm volumes only grow",
                    info.size
                ),
            });
        }
        if size == info.size {
            return Ok(());
        }
        let fstype = self.detect_fs(lv)?;
        self.run("lvextend", &["-q", "-L", &bytes_arg(size), &self.full(lv)])?;
        let dev = self.activate(lv)?;
        self.grow_fs(lv, &dev, fstype)
    }
}

#[cfg(test)]
mod tests;
