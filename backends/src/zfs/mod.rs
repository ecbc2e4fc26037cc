//! zfs: each volume is a dataset `PARENT/NAME`, driven only through the `zfs` and
//! `zpool` commands (kernel ZFS or zfs-fuse).
//!
//! Layout: a volume is `PARENT/NAME` with `canmount=noauto` and
//! `mountpoint=ROOT/NAME` (ROOT is the pool's `path`, which the store places
//! under its state root when `--path` is not given); a snapshot is
//! `PARENT/NAME@SNAP`. A clone of a live volume is made from a hidden snapshot
//! `PARENT/SRC@berth-clone-NAME`, which is destroyed together with the clone (found
//! through the clone's `origin`), so no orphan `@…clone…` snapshots pile up as they
//! do under LXC.
//!
//! Mounting: zfs-fuse has no `mount -t zfs`, and `zfs mount` mounts only at the
//! dataset's `mountpoint`. Rather than rewriting that property for every mount (a
//! persisted or crashed mount would leave it pointing elsewhere), berth mounts the
//! dataset at its own `ROOT/NAME` and bind-mounts that onto the target; the guard
//! unmounts the bind and then the dataset, unless another bind of it is still in
//! use. A snapshot cannot be mounted at all through zfs-fuse (no `.zfs` directory),
//! so a read-only mount of `PARENT/NAME@SNAP` goes through a temporary read-only
//! clone `PARENT/NAME:SNAP` (`:` never occurs in volume names), destroyed on unmount.
//!
//! Speed: every `zfs` command costs milliseconds (more under zfs-fuse), so each
//! operation runs as few as it can without losing a check: a taken name is the
//! refusal of `zfs create`/`snapshot`/`clone` itself, one `zfs get` of several
//! datasets answers what a clone or copy must know, the mount table (not a
//! `zfs get`) says what is mounted, and diagnostic queries (`zpool list`, the
//! `mountpoint`) run only after the fast path failed.

mod abandon;
mod clone;
mod dataset;
mod names;
mod parse;
mod spec;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::{self, Runner};
use berth_bdev::fsutil::{create_dir_all, kernel_has_fs, require_host};
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::pool::PoolOption;
use berth_bdev::registry::PathUse;
use berth_bdev::{
    Backend, BdevError, Caps, CreateOpts, PoolConfig, Registration, Result, Revert, SpecForm, Tool,
    Usage, UsageKind, VolumeSpec,
};

use crate::lookup;
pub use spec::ZfsSpec;
use spec::{VolumeDataset, ZfsOptions};

pub const NAME: &str = "zfs";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    aliases: &[],
    summary: "ZFS datasets driven through zfs/zpool (kernel ZFS or zfs-fuse); O(1) clones",
    path: PathUse::MountPoints,
    pool_options: &[PoolOption {
        key: "dataset",
        value_name: "POOL/PARENT",
        help: "Parent dataset, e.g. tank/berth",
        required: true,
        example: "tank/berth",
    }],
    open,
    check_spec: <ZfsSpec as SpecForm>::canonical,
    stacks_on_trees: false,
};

/// What the probe checks besides a kernel filesystem.
const ZFS_TOOLS: &[Tool] = &[Tool::new("zfs", "zfs-fuse"), Tool::new("zpool", "zfs-fuse")];
/// Prefix of the hidden snapshot a clone of a live volume is made from.
const CLONE_SNAP_PREFIX: &str = "berth-clone-";
/// Prefix of the temporary snapshot `copy_clone` sends.
const COPY_SNAP_PREFIX: &str = "berth-copy-";
/// Snapshot names with this prefix are berth's own.
const RESERVED_PREFIX: &str = "berth-";
const BUSY_ATTEMPTS: u32 = 12;
/// User property marking a volume destroyed while snapshots of it remain.
const DESTROYED_PROP: &str = "berth:destroyed";
/// User property marking a clone whose origin's volume was destroyed and
/// waits for its clones (see `abandon`).
const ORIGIN_DESTROYED_PROP: &str = "berth:origin-destroyed";
/// User property `usage` clears to wait for pending space accounting.
const SYNC_PROP: &str = "berth:sync";

/// Opens a zfs pool: its `dataset` option is the parent dataset, `pool.path` the
/// directory holding the volumes' mountpoints.
pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Zfs::new(pool, runner)?))
}

#[derive(Clone)]
pub struct Zfs {
    /// The pool's name, for errors that are about the pool.
    pub(super) pool: String,
    pub(super) parent: String,
    pub(super) root: PathBuf,
    pub(super) runner: Arc<dyn Runner>,
}

impl std::fmt::Debug for Zfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zfs")
            .field("parent", &self.parent)
            .field("root", &self.root)
            .finish()
    }
}

impl Zfs {
    pub fn new(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Self> {
        let parent = ZfsOptions::parent(pool)?;
        // No default here: where mount points go is the store's to say.
        let root = pool.dir()?.to_path_buf();
        // Mountpoints are zfs property strings.
        if root.to_str().is_none() {
            return Err(BdevError::PoolSetting {
                pool: pool.name.clone(),
                reason: format!("path {root:?} is not valid UTF-8"),
                hint: "zfs mountpoints are strings; give a UTF-8 --path".to_owned(),
            });
        }
        Ok(Zfs {
            pool: pool.name.clone(),
            parent,
            root,
            runner,
        })
    }

    /// Says why the probe's `zfs get` of the parent failed (daemon down, zpool
    /// missing), or makes the missing parent: berth's own, it never mounts
    /// (volumes carry their own mountpoints).
    fn probe_failed(&self, get: BdevError) -> Result<()> {
        let pools =
            cmd::run(&*self.runner, "zpool", &["list", "-H", "-o", "name"]).map_err(|e| {
                BdevError::Unavailable {
                    backend: NAME,
                    missing: format!(
                        "the ZFS daemon does not answer `zpool list` ({})",
                        e.stderr()
                    ),
                    hint: "start it with `zfs-fuse` (or `service zfs-fuse start`)".to_owned(),
                }
            })?;
        let zpool = self.parent.split('/').next().unwrap_or(&self.parent);
        if !parse::pool_names(&pools.stdout).iter().any(|p| p == zpool) {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: format!("zpool {zpool:?} does not exist"),
                hint: format!(
                    "create it with `zpool create {zpool} DEVICE` or pick another --dataset"
                ),
            });
        }
        if !matches!(get, BdevError::NotFound { .. }) {
            return Err(get);
        }
        self.zfs(&["create", "-o", "canmount=off", &self.parent])
            .map_err(|e| BdevError::Unavailable {
                backend: NAME,
                missing: format!(
                    "parent dataset {:?} cannot be created ({})",
                    self.parent,
                    e.stderr()
                ),
                hint: "create its parent datasets with `zfs create`".to_owned(),
            })?;
        Ok(())
    }
}

impl Backend for Zfs {
    fn name(&self) -> &'static str {
        NAME
    }

    /// `zfs promote`: makes the clone `v` independent of its origin, which becomes a
    /// clone of it instead, so the old origin can be destroyed while `v` is kept.
    fn promote(&self, v: &VolumeSpec) -> Result<()> {
        let t = self.target(v)?;
        t.refuse_snapshot(v, "promoted", "promote a clone volume instead")?;
        self.zfs(&["promote", t.dataset()])?;
        Ok(())
    }

    fn caps(&self) -> Caps {
        Caps {
            snapshot: true,
            clone_from_snapshot: true,
            snapshot_clone: true,
            copy_on_write: true,
            clone_pins_origin: true,
            // Clones hang off a frozen snapshot; the origin stays writable.
            clone_reads_live_origin: false,
            promote: true,
            stacks_on_trees: false,
            plain_tree: false,
            clones_span_pools: false,
            snapshot_clone_refusal: None,
            lacks_xattrs: false,
            // zfs-fuse keeps whole seconds; the kernel module keeps nanoseconds.
            coarse_timestamps: !kernel_has_fs("zfs"),
            size_limit: true,
            block_backed: false,
            resize: true,
            send_stream: true,
            // Either the zfs module or fuse (zfs-fuse); `probe` checks for one.
            kernel_fs: &[],
            tools: ZFS_TOOLS,
        }
    }

    fn probe(&self) -> Result<()> {
        require_host(NAME, &self.caps())?;
        if !kernel_has_fs("zfs") && !kernel_has_fs("fuse") {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: "neither the zfs nor the fuse filesystem is in /proc/filesystems"
                    .to_owned(),
                hint: "`modprobe fuse` for zfs-fuse (or install the zfs kernel module)".to_owned(),
            });
        }
        // One query answers the usual case: the daemon runs, and the zpool and
        // the parent exist. Only a failure asks `zpool list` which it is.
        if let Err(e) = self.get(&self.parent, "type") {
            self.probe_failed(e)?;
        }
        create_dir_all(&self.root)
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let kernel = kernel_has_fs("zfs");
        let imp = if kernel {
            "kernel zfs"
        } else {
            // Measured on zfs-fuse 0.7: both limit what a rootfs keeps.
            "zfs-fuse (userspace): timestamps to the second only; xattrs and file \
             capabilities only when the daemon runs with -x (enable-xattr in /etc/zfs/zfsrc)"
        };
        vec![
            ("parent dataset", self.parent.clone()),
            ("implementation", imp.to_owned()),
            (
                "mount",
                format!(
                    "zfs mount at {}/NAME, bind-mounted on the target",
                    self.root.display()
                ),
            ),
        ]
    }

    fn create(&self, name: &str, opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let dataset = format!("{}/{name}", self.parent);
        let mp = format!("mountpoint={}", self.mountpoint_str(name));
        let quota = opts.size.map(|q| format!("refquota={q}"));
        let mut args = vec!["create", "-o", "canmount=noauto", "-o", &mp];
        if let Some(q) = &quota {
            args.extend(["-o", q]);
        }
        args.push(&dataset);
        // zfs refuses a taken name: no query first.
        self.zfs(&args)
            .map_err(|e| dataset::exists_or(e, &dataset))?;
        let (this, ds) = (self.clone(), dataset.clone());
        rv.add(format!("destroy {dataset}"), move || {
            this.destroy_dataset(&ds, true)
        });
        Ok(ZfsSpec::spec(dataset))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let t = self.target(v)?;
        if !read_only {
            t.refuse_snapshot(v, "mounted writable", "clone it for a writable copy")?;
        }
        let mut guard = MountGuard::unmounted(at);
        let (dataset, mp) = match &t.snap {
            None => (t.dataset().to_owned(), self.mountpoint_str(&t.name)),
            Some(snap) => {
                let tmp = format!("{}:{snap}", t.dataset());
                let mp = self.snap_mountpoint(&t.name, snap);
                self.clone_for_mount(&t, &tmp, &mp)?;
                (tmp, mp)
            }
        };
        // Registered before anything can fail below, so the guard's drop undoes it.
        let (this, t2) = (self.clone(), t);
        guard.on_release(format!("release {dataset}"), move || this.release(&t2));
        self.mount_at_own(&dataset, &mp)?;
        mount::bind(Path::new(&mp), at, read_only)?;
        guard.set_mounted();
        Ok(guard)
    }

    fn unmount(&self, v: &VolumeSpec, at: &Path) -> Result<()> {
        let t = self.target(v)?;
        mount::unmount(at)?;
        self.release(&t)
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let t = self.target(v)?;
        if t.is_snapshot() {
            return self.destroy_snapshot(v);
        }
        let family = match self.family(t.dataset()) {
            Err(BdevError::NotFound { .. }) => {
                lookup::already_gone(v);
                let _ = std::fs::remove_dir(self.mountpoint(&t.name));
                return Ok(());
            }
            r => r?,
        };
        let (own, user): (Vec<_>, Vec<_>) = family
            .snapshots
            .iter()
            .partition(|s| s.starts_with(RESERVED_PREFIX));
        if user.is_empty() {
            return self.destroy_now(&t, family);
        }
        // Snapshots outlive their volume (a restore replaces the volume and keeps
        // them), but zfs keeps them inside the dataset: the dataset lingers,
        // unmounted and marked, and goes with its last snapshot.
        self.destroy_keeping_snapshots(&t, &own)
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
        let t = self.target(v)?;
        // Space is accounted when a transaction group syncs, seconds after a write;
        // any property change is a sync task that waits for that, so clearing a
        // (never set) user property makes the figures current.
        self.zfs(&["inherit", SYNC_PROP, t.dataset()])?;
        let p = self.get(&t.at, "used,referenced,refquota")?;
        let referenced = parse::bytes(&p, "referenced")?;
        Ok(Usage {
            used_bytes: parse::bytes(&p, "used")?,
            kind: UsageKind::Exclusive,
            limit_bytes: parse::bytes_opt(p.get("refquota")),
            note: Some(format!(
                "zfs `used`: blocks of this dataset and its snapshots that no other dataset \
                 shares (blocks a clone still shares with its origin count at the origin); \
                 it refers to {referenced} bytes in all"
            )),
        })
    }

    fn snapshot(
        &self,
        v: &VolumeSpec,
        _name: &str,
        snap: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let t = self.target(v)?;
        validate_name(snap)?;
        if snap.starts_with(RESERVED_PREFIX) {
            return Err(BdevError::InvalidName {
                name: snap.to_owned(),
                reason: format!("snapshot names starting with {RESERVED_PREFIX:?} are berth's own"),
            });
        }
        t.refuse_snapshot(v, "snapshotted", "snapshot the volume it was taken of")?;
        let full = format!("{}@{snap}", t.dataset());
        // zfs refuses a taken name: no query first.
        self.zfs(&["snapshot", &full])
            .map_err(|e| dataset::exists_or(e, &full))?;
        let (this, f) = (self.clone(), full.clone());
        rv.add(format!("destroy {full}"), move || {
            this.destroy_dataset(&f, false)
        });
        Ok(ZfsSpec::spec(full))
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let t = self.target(snap)?;
        if !t.is_snapshot() {
            return Err(BdevError::InvalidSpec {
                spec: snap.to_string(),
                reason: "not a snapshot".to_owned(),
            });
        }
        let destroyed = match self.destroy_dataset(&t.at, false) {
            // The only dependent clone may be a crashed mount's temporary one.
            Err(BdevError::DeleteRefused { .. }) if self.drop_unused_snapshot_mount(&t)? => {
                self.destroy_dataset(&t.at, false)
            }
            r => r,
        };
        match destroyed {
            Err(BdevError::NotFound { .. }) => lookup::already_gone(snap),
            r => r?,
        }
        // A volume destroyed while it had snapshots goes with the last of them.
        self.drop_if_abandoned(t.dataset())
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        self.clone_volume(src, name, rv)
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
        self.copy_volume(src, name, opts, rv)
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

    fn resize(&self, v: &VolumeSpec, size: u64) -> Result<()> {
        let t = self.target(v)?;
        t.refuse_snapshot(v, "resized", "clone it and resize the clone")?;
        if let Some(current) = self.refquota_of(t.dataset())? {
            if size < current {
                return Err(BdevError::InvalidSpec {
                    spec: v.to_string(),
                    reason: format!(
                        "zfs volumes only grow: refquota is {current}, asked for {size}"
                    ),
                });
            }
        }
        self.zfs(&["set", &format!("refquota={size}"), t.dataset()])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
