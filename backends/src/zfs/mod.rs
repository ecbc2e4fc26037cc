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

mod dataset;
mod names;
mod parse;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::{self, Runner};
use berth_bdev::fsutil::{create_dir_all, kernel_has_fs, require_tool};
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::{
    Backend, BackendKind, BdevError, Caps, CreateOpts, PoolConfig, Result, Revert, Usage,
    UsageKind, VolumeSpec,
};
use tracing::{debug, warn};

use crate::lookup;

const NAME: &str = "zfs";
/// Prefix of the hidden snapshot a clone of a live volume is made from.
const CLONE_SNAP_PREFIX: &str = "berth-clone-";
/// Prefix of the temporary snapshot `copy_clone` sends.
const COPY_SNAP_PREFIX: &str = "berth-copy-";
/// Snapshot names with this prefix are berth's own.
const RESERVED_PREFIX: &str = "berth-";
const BUSY_ATTEMPTS: u32 = 12;
/// User property marking a volume destroyed while snapshots of it remain.
const DESTROYED_PROP: &str = "berth:destroyed";
/// User property `usage` clears to wait for pending space accounting.
const SYNC_PROP: &str = "berth:sync";

/// Opens a zfs pool: `pool.dataset` is the parent dataset, `pool.path` the
/// directory holding the volumes' mountpoints.
pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Zfs::new(pool, runner)?))
}

/// A dataset named by a spec of this pool: the volume's dataset and, for a
/// snapshot, the snapshot name.
struct Target {
    pub(super) name: String,
    pub(super) dataset: String,
    pub(super) snap: Option<String>,
}

impl Target {
    fn full(&self) -> String {
        match &self.snap {
            Some(s) => format!("{}@{s}", self.dataset),
            None => self.dataset.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Zfs {
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
        let parent = pool.dataset.clone().ok_or_else(|| BdevError::InvalidSpec {
            spec: pool.name.clone(),
            reason: "a zfs pool needs --dataset POOL/PARENT, e.g. tank/berth".to_owned(),
        })?;
        if parent.is_empty() || parent.contains('@') || parent.split('/').any(str::is_empty) {
            return Err(BdevError::InvalidSpec {
                spec: parent,
                reason: "expected a dataset like tank/berth".to_owned(),
            });
        }
        // No default here: where mount points go is the store's to say.
        let root = crate::pool_path(pool)?.to_path_buf();
        // Mountpoints are zfs property strings.
        if root.to_str().is_none() {
            return Err(BdevError::InvalidSpec {
                spec: root.display().to_string(),
                reason: "a zfs pool path must be valid UTF-8".to_owned(),
            });
        }
        Ok(Zfs {
            parent,
            root,
            runner,
        })
    }
}

impl Backend for Zfs {
    fn kind(&self) -> BackendKind {
        BackendKind::Zfs
    }

    /// `zfs promote`: makes the clone `v` independent of its origin, which becomes a
    /// clone of it instead, so the old origin can be destroyed while `v` is kept.
    fn promote(&self, v: &VolumeSpec) -> Result<()> {
        let t = self.target(v)?;
        if t.snap.is_some() {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "only a clone volume can be promoted, not a snapshot".to_owned(),
            });
        }
        self.zfs(&["promote", &t.dataset])?;
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
            lacks_xattrs: false,
            // zfs-fuse keeps whole seconds; the kernel module keeps nanoseconds.
            coarse_timestamps: !kernel_has_fs("zfs"),
            size_limit: true,
            block_backed: false,
            resize: true,
            // Either the zfs module or fuse (zfs-fuse); `probe` checks for one.
            kernel_fs: &[],
            tools: &["zfs", "zpool"],
        }
    }

    fn probe(&self) -> Result<()> {
        require_tool(NAME, "zfs", "zfs-fuse")?;
        require_tool(NAME, "zpool", "zfs-fuse")?;
        if !kernel_has_fs("zfs") && !kernel_has_fs("fuse") {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: "neither the zfs nor the fuse filesystem is in /proc/filesystems"
                    .to_owned(),
                hint: "`modprobe fuse` for zfs-fuse (or install the zfs kernel module)".to_owned(),
            });
        }
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
        // The parent is berth's own; make it when its zpool is there. It never
        // mounts: volumes carry their own mountpoints.
        if !self.exists(&self.parent)? {
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
        if self.exists(&dataset)? {
            return Err(BdevError::Exists {
                what: "zfs dataset",
                name: dataset,
            });
        }
        let mp = format!("mountpoint={}", self.mountpoint_str(name));
        let quota = opts.size.map(|q| format!("refquota={q}"));
        let mut args = vec!["create", "-o", "canmount=noauto", "-o", &mp];
        if let Some(q) = &quota {
            args.extend(["-o", q]);
        }
        args.push(&dataset);
        self.zfs(&args)?;
        let (this, ds) = (self.clone(), dataset.clone());
        rv.add(format!("destroy {dataset}"), move || {
            this.destroy_dataset(&ds, true)
        });
        Ok(Self::spec(dataset))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let t = self.target(v)?;
        if t.snap.is_some() && !read_only {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "a snapshot mounts read-only; clone it for a writable copy".to_owned(),
            });
        }
        let mut guard = MountGuard::unmounted(at);
        let (dataset, mp) = match &t.snap {
            None => (t.dataset.clone(), self.mountpoint_str(&t.name)),
            Some(snap) => {
                let tmp = format!("{}:{snap}", t.dataset);
                let mp = self.snap_mountpoint(&t.name, snap);
                if self.exists(&tmp)? {
                    if mount::mounts()
                        .iter()
                        .any(|m| m.source == tmp && m.mount_point != Path::new(&mp))
                    {
                        return Err(BdevError::Exists {
                            what: "mount of zfs snapshot",
                            name: t.full(),
                        });
                    }
                    // Left by a crash: nothing uses it.
                    self.destroy_dataset(&tmp, false)?;
                }
                let mut rv = Revert::new();
                self.clone_snapshot(&t.full(), &tmp, &mp, None, true, &mut rv)?;
                rv.commit();
                (tmp, mp)
            }
        };
        // Registered before anything can fail below, so the guard's drop undoes it.
        let (this, t2) = (self.clone(), t);
        guard.on_release(format!("release {dataset}"), move || this.release(&t2));
        if !self.mounted_at(&dataset, &mp)? {
            match self.zfs_retry(&["mount", &dataset]) {
                // Another mount of it won the race: use that.
                Err(e) if parse::is_already_mounted(e.stderr()) => {}
                r => drop(r?),
            }
        }
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
        if t.snap.is_some() {
            return self.destroy_snapshot(v);
        }
        let snaps = match self.snapshots(&t.dataset) {
            Err(BdevError::NotFound { .. }) => {
                lookup::already_gone(v);
                let _ = std::fs::remove_dir(self.mountpoint(&t.name));
                return Ok(());
            }
            r => r?,
        };
        let (own, user): (Vec<_>, Vec<_>) =
            snaps.iter().partition(|s| s.starts_with(RESERVED_PREFIX));
        if user.is_empty() {
            return self.destroy_now(&t);
        }
        // Snapshots outlive their volume (a restore replaces the volume and keeps
        // them), but zfs keeps them inside the dataset: the dataset lingers,
        // unmounted and marked, and goes with its last snapshot.
        for s in own {
            self.destroy_dataset(&format!("{}@{s}", t.dataset), false)?;
        }
        self.zfs_unmount(&t.dataset)?;
        self.zfs(&["set", &format!("{DESTROYED_PROP}=on"), &t.dataset])?;
        debug!(dataset = %t.dataset, snapshots = ?user, "destroyed volume kept for its snapshots");
        Ok(())
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
        self.zfs(&["inherit", SYNC_PROP, &t.dataset])?;
        let p = self.get(&t.full(), "used,referenced,refquota")?;
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
        if t.snap.is_some() {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "cannot snapshot a snapshot".to_owned(),
            });
        }
        let full = format!("{}@{snap}", t.dataset);
        if self.exists(&full)? {
            return Err(BdevError::Exists {
                what: "zfs snapshot",
                name: full,
            });
        }
        self.zfs(&["snapshot", &full])?;
        let (this, f) = (self.clone(), full.clone());
        rv.add(format!("destroy {full}"), move || {
            this.destroy_dataset(&f, false)
        });
        Ok(Self::spec(full))
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let t = self.target(snap)?;
        if t.snap.is_none() {
            return Err(BdevError::InvalidSpec {
                spec: snap.to_string(),
                reason: "not a snapshot".to_owned(),
            });
        }
        let destroyed = match self.destroy_dataset(&t.full(), false) {
            // The only dependent clone may be a crashed mount's temporary one.
            Err(BdevError::DeleteRefused { .. }) if self.drop_unused_snapshot_mount(&t)? => {
                self.destroy_dataset(&t.full(), false)
            }
            r => r,
        };
        match destroyed {
            Err(BdevError::NotFound { .. }) => lookup::already_gone(snap),
            r => r?,
        }
        // A volume destroyed while it had snapshots goes with the last of them.
        let marked = match self.get(&t.dataset, DESTROYED_PROP) {
            Err(BdevError::NotFound { .. }) => return Ok(()),
            r => r?,
        };
        if marked.get(DESTROYED_PROP).map(String::as_str) == Some("on")
            && !self
                .snapshots(&t.dataset)?
                .iter()
                .any(|s| !s.starts_with(RESERVED_PREFIX))
        {
            self.destroy_now(&Target { snap: None, ..t })?;
        }
        Ok(())
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let VolumeSpec::Zfs { dataset: src_ds } = src else {
            return Err(BdevError::InvalidSpec {
                spec: src.to_string(),
                reason: "a zfs clone needs a zfs source".to_owned(),
            });
        };
        let dataset = format!("{}/{name}", self.parent);
        if self.exists(&dataset)? {
            return Err(BdevError::Exists {
                what: "zfs dataset",
                name: dataset,
            });
        }
        let (origin, quota_of) = match src_ds.split_once('@') {
            Some((base, _)) => (src_ds.clone(), base.to_owned()),
            None => {
                let hidden = format!("{src_ds}@{CLONE_SNAP_PREFIX}{name}");
                if self.exists(&hidden)? {
                    // Left by an earlier clone of the same name whose cleanup failed;
                    // no clone of ours depends on it any more (the name is free).
                    self.destroy_dataset(&hidden, false)?;
                }
                self.zfs(&["snapshot", &hidden])?;
                let (this, h) = (self.clone(), hidden.clone());
                rv.add(format!("destroy {hidden}"), move || {
                    this.destroy_dataset(&h, false)
                });
                (hidden, src_ds.clone())
            }
        };
        let quota = self.refquota_of(&quota_of)?;
        self.clone_snapshot(
            &origin,
            &dataset,
            &self.mountpoint_str(name),
            quota,
            false,
            rv,
        )?;
        Ok(Self::spec(dataset))
    }

    fn copy_clone(
        &self,
        src: &VolumeSpec,
        name: &str,
        opts: &CreateOpts,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(name)?;
        let VolumeSpec::Zfs { dataset: src_ds } = src else {
            return Err(BdevError::unsupported(
                NAME,
                "native copy from another backend",
            ));
        };
        let dataset = format!("{}/{name}", self.parent);
        if self.exists(&dataset)? {
            return Err(BdevError::Exists {
                what: "zfs dataset",
                name: dataset,
            });
        }
        // A live volume is sent through a temporary snapshot, removed on both sides
        // whatever happens.
        let (sent, base, temp) = match src_ds.split_once('@') {
            Some((base, _)) => (src_ds.clone(), base.to_owned(), None),
            None => {
                let t = format!("{src_ds}@{COPY_SNAP_PREFIX}{name}");
                if self.exists(&t)? {
                    // Left by a copy of the same name that was killed; the
                    // caller holds `name`, so nothing sends it any more.
                    self.destroy_dataset(&t, false)?;
                }
                self.zfs(&["snapshot", &t])?;
                (t.clone(), src_ds.clone(), Some(t))
            }
        };
        let result = (|| -> Result<()> {
            let a1 = cmd::args(["send", sent.as_str()]);
            let a2 = cmd::args(["recv", "-u", dataset.as_str()]);
            let a1: Vec<&std::ffi::OsStr> = a1.iter().map(|a| a.as_os_str()).collect();
            let a2: Vec<&std::ffi::OsStr> = a2.iter().map(|a| a.as_os_str()).collect();
            self.runner.pipe(("zfs", &a1), ("zfs", &a2))?;
            let (this, ds) = (self.clone(), dataset.clone());
            rv.add(format!("destroy {dataset}"), move || {
                this.destroy_dataset(&ds, true)
            });
            let snap = sent.split_once('@').map(|(_, s)| s).unwrap_or_default();
            self.destroy_dataset(&format!("{dataset}@{snap}"), false)?;
            self.zfs(&["set", "canmount=noauto", &dataset])?;
            self.zfs(&[
                "set",
                &format!("mountpoint={}", self.mountpoint_str(name)),
                &dataset,
            ])?;
            let quota = match opts.size {
                Some(s) => Some(s),
                None => self.refquota_of(&base)?,
            };
            if let Some(q) = quota {
                self.zfs(&["set", &format!("refquota={q}"), &dataset])?;
            }
            self.ensure_unmounted(&dataset)
        })();
        if let Some(t) = temp {
            if let Err(e) = self.destroy_dataset(&t, false) {
                warn!(snapshot = %t, error = %e, "could not destroy the temporary copy snapshot");
            }
        }
        result?;
        Ok(Self::spec(dataset))
    }

    fn resize(&self, v: &VolumeSpec, size: u64) -> Result<()> {
        let t = self.target(v)?;
        if t.snap.is_some() {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "a snapshot cannot be resized".to_owned(),
            });
        }
        if let Some(current) = self.refquota_of(&t.dataset)? {
            if size < current {
                return Err(BdevError::InvalidSpec {
                    spec: v.to_string(),
                    reason: format!(
                        "zfs volumes only grow: refquota is {current}, asked for {size}"
                    ),
                });
            }
        }
        self.zfs(&["set", &format!("refquota={size}"), &t.dataset])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    fn zfs_with(r: ScriptedRunner) -> (Zfs, Arc<ScriptedRunner>) {
        let r = Arc::new(r);
        let pool = PoolConfig::new("t", BackendKind::Zfs)
            .with_dataset("tank/berth")
            .with_path("/srv/z");
        (Zfs::new(&pool, r.clone()).unwrap(), r)
    }

    fn ds(s: &str) -> VolumeSpec {
        VolumeSpec::Zfs {
            dataset: s.to_owned(),
        }
    }

    #[test]
    fn specs_outside_the_parent_are_refused() {
        let (z, _) = zfs_with(ScriptedRunner::new());
        assert!(z.target(&ds("tank/other/c1")).is_err());
        assert!(z.target(&ds("tank/berth/a/b")).is_err());
        assert!(z.target(&ds("tank/berth/c1:s1")).is_err());
        let t = z.target(&ds("tank/berth/c1@s1")).unwrap();
        assert_eq!((t.name.as_str(), t.snap.as_deref()), ("c1", Some("s1")));
        assert_eq!(t.full(), "tank/berth/c1@s1");
    }

    #[test]
    fn clone_of_a_live_volume_goes_through_a_hidden_snapshot() {
        let (z, r) = zfs_with(
            ScriptedRunner::new()
                .fail("zfs get -Hp -o property,value type tank/berth/c1", "cannot open 'tank/berth/c1': dataset does not exist")
                .fail("zfs get -Hp -o property,value type tank/berth/v1@berth-clone-c1", "dataset does not exist")
                .expect("zfs snapshot tank/berth/v1@berth-clone-c1", "")
                .expect("zfs get -Hp -o property,value refquota tank/berth/v1", "refquota\t268435456\n")
                .expect(
                    "zfs clone -o canmount=noauto -o mountpoint=/srv/z/c1 -o refquota=268435456 tank/berth/v1@berth-clone-c1 tank/berth/c1",
                    "",
                )
                .expect("zfs get -Hp -o property,value mounted tank/berth/c1", "mounted\tyes\n")
                .expect("zfs unmount tank/berth/c1", ""),
        );
        let mut rv = Revert::new();
        let c = z
            .snapshot_clone(&ds("tank/berth/v1"), "c1", &mut rv)
            .unwrap();
        rv.commit();
        assert_eq!(c, ds("tank/berth/c1"));
        assert_eq!(r.calls().len(), 7);
    }

    #[test]
    fn destroying_a_clone_destroys_its_hidden_origin() {
        let (z, r) = zfs_with(
            ScriptedRunner::new()
                .expect("zfs list -H -o name -t snapshot -r tank/berth/c1", "")
                .expect(
                    "zfs get -Hp -o property,value origin tank/berth/c1",
                    "origin\ttank/berth/v1@berth-clone-c1\n",
                )
                .fail(
                    "zfs destroy -r tank/berth/c1",
                    "cannot destroy 'tank/berth/c1': dataset is busy",
                )
                .expect("zfs destroy -r tank/berth/c1", "")
                .expect("zfs destroy tank/berth/v1@berth-clone-c1", ""),
        );
        z.destroy(&ds("tank/berth/c1")).unwrap();
        assert_eq!(r.calls().len(), 5);
    }

    #[test]
    fn a_user_snapshot_origin_is_kept() {
        let (z, r) = zfs_with(
            ScriptedRunner::new()
                .expect(
                    "zfs list -H -o name -t snapshot -r tank/berth/c1",
                    "tank/berth/c1@berth-copy-x\n",
                )
                .expect(
                    "zfs get -Hp -o property,value origin tank/berth/c1",
                    "origin\ttank/berth/v1@s1\n",
                )
                .expect("zfs destroy -r tank/berth/c1", ""),
        );
        z.destroy(&ds("tank/berth/c1")).unwrap();
        assert_eq!(r.calls().len(), 3);
    }

    #[test]
    fn a_volume_with_snapshots_lingers_until_its_last_snapshot_goes() {
        let (z, r) = zfs_with(
            ScriptedRunner::new()
                .expect(
                    "zfs list -H -o name -t snapshot -r tank/berth/v1",
                    "tank/berth/v1@s1\n",
                )
                .expect("zfs unmount tank/berth/v1", "")
                .expect("zfs set berth:destroyed=on tank/berth/v1", "")
                .expect("zfs destroy tank/berth/v1@s1", "")
                .expect(
                    "zfs get -Hp -o property,value berth:destroyed tank/berth/v1",
                    "berth:destroyed\ton\n",
                )
                .expect("zfs list -H -o name -t snapshot -r tank/berth/v1", "")
                .expect(
                    "zfs get -Hp -o property,value origin tank/berth/v1",
                    "origin\t-\n",
                )
                .expect("zfs destroy -r tank/berth/v1", ""),
        );
        z.destroy(&ds("tank/berth/v1")).unwrap();
        z.destroy_snapshot(&ds("tank/berth/v1@s1")).unwrap();
        assert_eq!(r.calls().len(), 8);
    }

    #[test]
    fn destroying_an_origin_with_clones_is_refused_by_name() {
        let (z, _) = zfs_with(
            ScriptedRunner::new()
                .expect("zfs list -H -o name -t snapshot -r tank/berth/v1", "tank/berth/v1@berth-clone-c1\n")
                .expect("zfs get -Hp -o property,value origin tank/berth/v1", "origin\t-\n")
                .fail(
                    "zfs destroy -r tank/berth/v1",
                    "cannot destroy 'tank/berth/v1': filesystem has dependent clones\nuse '-R' to destroy the following datasets:\ntank/berth/c1",
                ),
        );
        let e = z.destroy(&ds("tank/berth/v1")).unwrap_err();
        assert!(matches!(e, BdevError::DeleteRefused { .. }), "{e}");
        assert!(e.to_string().contains("tank/berth/c1"), "{e}");
    }

    #[test]
    fn a_pool_needs_a_path_for_its_mount_points() {
        let pool = PoolConfig::new("t", BackendKind::Zfs).with_dataset("tank/berth");
        let e = Zfs::new(&pool, Arc::new(ScriptedRunner::new())).unwrap_err();
        assert!(e.to_string().contains("--path"), "{e}");
    }

    #[test]
    fn destroying_what_is_gone_succeeds() {
        let missing = "cannot open 'tank/berth/gone': dataset does not exist";
        let (z, r) = zfs_with(
            ScriptedRunner::new()
                .fail(
                    "zfs list -H -o name -t snapshot -r tank/berth/gone",
                    missing,
                )
                .fail(
                    "zfs destroy tank/berth/v1@s1",
                    "cannot open 'tank/berth/v1@s1': dataset does not exist",
                )
                .expect(
                    "zfs get -Hp -o property,value berth:destroyed tank/berth/v1",
                    "berth:destroyed\t-\n",
                )
                .fail(
                    "zfs destroy tank/berth/gone@s1",
                    "cannot open 'tank/berth/gone@s1': dataset does not exist",
                )
                .fail(
                    "zfs get -Hp -o property,value berth:destroyed tank/berth/gone",
                    missing,
                ),
        );
        z.destroy(&ds("tank/berth/gone")).unwrap();
        z.destroy_snapshot(&ds("tank/berth/v1@s1")).unwrap();
        z.destroy_snapshot(&ds("tank/berth/gone@s1")).unwrap();
        assert_eq!(r.calls().len(), 5);
    }

    #[test]
    fn reserved_snapshot_names_are_refused() {
        let (z, _) = zfs_with(ScriptedRunner::new());
        let mut rv = Revert::new();
        let e = z
            .snapshot(&ds("tank/berth/v1"), "v1", "berth-clone-x", &mut rv)
            .unwrap_err();
        assert!(matches!(e, BdevError::InvalidName { .. }), "{e}");
    }

    #[test]
    fn resize_only_grows() {
        let (z, _) = zfs_with(ScriptedRunner::new().expect(
            "zfs get -Hp -o property,value refquota tank/berth/v1",
            "refquota\t1000\n",
        ));
        assert!(z.resize(&ds("tank/berth/v1"), 10).is_err());
    }
}
