//! Dataset-level helpers of the zfs backend: running `zfs` with the busy retry,
//! properties, destroy with clear refusals, and the mount bookkeeping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_bdev::cmd::{self, CmdError, CmdOutput};
use berth_bdev::mount::{self, MountInfo};
use berth_bdev::{BdevError, Result, Revert};
use tracing::{debug, warn};

use super::parse::Family;
use super::spec::{Target, VolumeDataset};
use super::{parse, Zfs, BUSY_ATTEMPTS, CLONE_SNAP_PREFIX, ORIGIN_DESTROYED_PROP};

impl Zfs {
    pub(super) fn zfs(&self, args: &[&str]) -> std::result::Result<CmdOutput, CmdError> {
        cmd::run(&*self.runner, "zfs", args)
    }

    /// Runs `zfs ARGS`, retrying while zfs-fuse answers "busy".
    pub(super) fn zfs_retry(&self, args: &[&str]) -> std::result::Result<CmdOutput, CmdError> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            match self.zfs(args) {
                Err(e) if parse::is_busy(e.stderr()) && attempt < BUSY_ATTEMPTS => {
                    debug!(?args, attempt, "zfs busy, retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(500));
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    pub(super) fn get(&self, dataset: &str, props: &str) -> Result<BTreeMap<String, String>> {
        match self.zfs(&["get", "-Hp", "-o", "property,value", props, dataset]) {
            Ok(out) => Ok(parse::props(&out.stdout)),
            Err(e) if parse::is_missing(e.stderr()) => Err(BdevError::NotFound {
                what: "zfs dataset",
                name: dataset.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// One `zfs get` of `props` on several datasets: dataset → property → value
    /// for those that exist; a missing one is simply absent.
    pub(super) fn get_many(
        &self,
        datasets: &[&str],
        props: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let mut args = vec!["get", "-Hp", "-o", "name,property,value", props];
        args.extend(datasets);
        match self.zfs(&args) {
            Ok(out) => Ok(parse::named_props(&out.stdout)),
            // zfs still lists the datasets that exist, and fails for the others.
            Err(e) if parse::only_missing(e.stderr()) => Ok(parse::named_props(e.stdout())),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn exists(&self, dataset: &str) -> Result<bool> {
        match self.get(dataset, "type") {
            Ok(_) => Ok(true),
            Err(BdevError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn mountpoint(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub(super) fn mountpoint_str(&self, name: &str) -> String {
        self.mountpoint(name).to_string_lossy().into_owned()
    }

    /// Where the temporary clone that mounts snapshot `snap` of `name` is mounted.
    pub(super) fn snap_mountpoint(&self, name: &str, snap: &str) -> String {
        self.root
            .join(".snapshots")
            .join(name)
            .join(snap)
            .to_string_lossy()
            .into_owned()
    }

    /// Destroys `what` (retrying "busy"), turning "dependent clones" into a clear
    /// refusal that names them.
    pub(super) fn destroy_dataset(&self, what: &str, recursive: bool) -> Result<()> {
        self.destroy_unless_cloned(what, recursive)?
            .map_err(|clones| BdevError::DeleteRefused {
                path: PathBuf::from(what),
                reason: format!(
                    "clones depend on it ({}); destroy them first, or promote one to keep it",
                    clones.join(", ")
                ),
            })
    }

    /// Destroys `what` (retrying "busy"); `Err(clones)` when zfs refused
    /// because those datasets are clones of it (or of its snapshots).
    pub(super) fn destroy_unless_cloned(
        &self,
        what: &str,
        recursive: bool,
    ) -> Result<std::result::Result<(), Vec<String>>> {
        let args: &[&str] = if recursive {
            &["destroy", "-r", what]
        } else {
            &["destroy", what]
        };
        match self.zfs_retry(args) {
            Ok(_) => Ok(Ok(())),
            Err(e) => match parse::dependent_clones(e.stderr()) {
                Some(clones) => Ok(Err(clones)),
                None if parse::is_missing(e.stderr()) => Err(BdevError::NotFound {
                    what: "zfs dataset",
                    name: what.to_owned(),
                }),
                None => Err(e.into()),
            },
        }
    }

    /// `zfs unmount`, where "not mounted" is success.
    pub(super) fn zfs_unmount(&self, dataset: &str) -> Result<()> {
        match self.zfs_retry(&["unmount", dataset]) {
            Err(e) if !parse::is_not_mounted(e.stderr()) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Mounts `dataset` at `mp`, its own mountpoint, unless the mount table shows
    /// it there already. A dataset whose `mountpoint` is elsewhere is refused
    /// (binding `mp` would show an empty directory); the property is read only
    /// when the mount did not land at `mp`.
    pub(super) fn mount_at_own(&self, dataset: &str, mp: &str) -> Result<()> {
        if mounted_at(dataset, Path::new(mp)) {
            return Ok(());
        }
        let mounted = match self.zfs_retry(&["mount", dataset]) {
            Ok(_) => Ok(true),
            // At `mp` by a concurrent mount, or elsewhere: the check below tells.
            Err(e) if parse::is_already_mounted(e.stderr()) => Ok(false),
            Err(e) => Err(e),
        };
        if mounted.is_ok() && mounted_at(dataset, Path::new(mp)) {
            return Ok(());
        }
        let props = self.get(dataset, "mountpoint")?;
        let actual = props.get("mountpoint").map(String::as_str).unwrap_or("-");
        if actual != mp {
            if matches!(mounted, Ok(true)) {
                // This mount put it there: take it back.
                if let Err(e) = self.zfs_unmount(dataset) {
                    warn!(%dataset, error = %e, "could not unmount a dataset mounted at the wrong place");
                }
            }
            return Err(BdevError::PoolSetting {
                pool: self.pool.clone(),
                reason: format!(
                    "the mountpoint of {dataset} is {actual:?}, not {mp:?} under this pool's path"
                ),
                hint: format!("`zfs set mountpoint={mp} {dataset}` or give the pool that path"),
            });
        }
        // Where it belongs (the mount table may spell the path differently).
        mounted.map(drop).map_err(Into::into)
    }

    /// zfs-fuse mounts a received dataset despite `canmount=noauto`; undo that. The
    /// mount table answers without a command when nothing is mounted.
    pub(super) fn ensure_unmounted(&self, dataset: &str) -> Result<()> {
        self.unmount_if_listed(dataset, &mount::mounts())
    }

    /// Unmounts `dataset` if the mount `table` lists it.
    pub(super) fn unmount_if_listed(&self, dataset: &str, table: &[MountInfo]) -> Result<()> {
        if table
            .iter()
            .any(|m| m.source == dataset && m.fstype.contains("zfs"))
        {
            self.zfs_unmount(dataset)?;
        }
        Ok(())
    }

    /// Clones `origin` (a snapshot) as `PARENT/name` with `refquota`, left
    /// as zfs mounts it (zfs-fuse: at `mountpoint`, where `mount` wants it).
    /// A taken name is `Exists`.
    pub(super) fn clone_snapshot(
        &self,
        origin: &str,
        dataset: &str,
        mountpoint: &str,
        refquota: Option<u64>,
        read_only: bool,
        rv: &mut Revert,
    ) -> Result<()> {
        let mp = format!("mountpoint={mountpoint}");
        let mut args = vec!["clone", "-o", "canmount=noauto", "-o", &mp];
        let quota = refquota.map(|q| format!("refquota={q}"));
        if let Some(q) = &quota {
            args.extend(["-o", q]);
        }
        if read_only {
            args.extend(["-o", "readonly=on"]);
        }
        args.extend([origin, dataset]);
        self.zfs(&args).map_err(|e| exists_or(e, dataset))?;
        let (this, ds) = (self.clone(), dataset.to_owned());
        rv.add(format!("destroy clone {dataset}"), move || {
            this.destroy_dataset(&ds, false)
        });
        // zfs-fuse mounts a fresh clone at its mountpoint despite
        // `canmount=noauto` (kernel ZFS does not). It stays there, where
        // `mount` puts it anyway: unmounting now would cost a `zfs unmount`
        // (5-6 ms) and the first start a `zfs mount`; the first mount's guard
        // unmounts it, and `zfs destroy` unmounts it itself.
        Ok(())
    }

    /// Destroys the hidden snapshot a destroyed clone came from, and the
    /// volume it belongs to if that was destroyed and waited only for its
    /// clones. Best effort: the clone itself is already gone, so a failure is
    /// only logged.
    pub(super) fn drop_hidden_origin(&self, family: Family) {
        let Some(origin) = family.origin else { return };
        let Some((base, snap)) = origin.split_once('@') else {
            return;
        };
        if !snap.starts_with(CLONE_SNAP_PREFIX) {
            return;
        }
        match self.destroy_dataset(&origin, false) {
            Ok(()) | Err(BdevError::NotFound { .. }) => {
                debug!(%origin, "hidden clone snapshot destroyed")
            }
            Err(e) => {
                warn!(%origin, error = %e, "could not destroy the hidden clone snapshot");
                return;
            }
        }
        if family.origin_destroyed {
            if let Err(e) = self.drop_if_abandoned(base) {
                warn!(dataset = %base, error = %e, "could not destroy a destroyed volume its last clone kept");
            }
        }
    }

    /// Tears down what `mount` set up once the bind on the target is gone: the
    /// temporary clone of a snapshot, or the dataset's own mount unless another
    /// bind of it is still in use.
    pub(super) fn release(&self, t: &Target) -> Result<()> {
        if let Some(snap) = &t.snap {
            let tmp = format!("{}:{snap}", t.dataset());
            match self.destroy_dataset(&tmp, false) {
                Ok(()) | Err(BdevError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            // The mount point and its parents, while empty.
            let mp = PathBuf::from(self.snap_mountpoint(&t.name, snap));
            for dir in mp.ancestors().take(3) {
                if std::fs::remove_dir(dir).is_err() {
                    break;
                }
            }
            return Ok(());
        }
        let own = self.mountpoint(&t.name);
        let in_use = mount::mounts()
            .iter()
            .any(|m| m.source == t.dataset() && m.fstype.contains("zfs") && m.mount_point != own);
        if in_use {
            debug!(dataset = %t.dataset(), "still bind-mounted elsewhere; leaving it mounted");
            return Ok(());
        }
        self.zfs_unmount(t.dataset())
    }

    /// Names (after `@`) of the snapshots of `dataset`.
    pub(super) fn snapshots(&self, dataset: &str) -> Result<Vec<String>> {
        match self.zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset]) {
            Ok(out) => Ok(parse::snapshot_names(&out.stdout, dataset)),
            Err(e) if parse::is_missing(e.stderr()) => Err(BdevError::NotFound {
                what: "zfs dataset",
                name: dataset.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The origin (`None` unless a clone) and the snapshot names of `dataset`,
    /// in one command.
    pub(super) fn family(&self, dataset: &str) -> Result<Family> {
        let cols = format!("name,origin,{ORIGIN_DESTROYED_PROP}");
        let args = [
            "list",
            "-H",
            "-o",
            &cols,
            "-t",
            "filesystem,snapshot",
            "-r",
            dataset,
        ];
        match self.zfs(&args) {
            Ok(out) => Ok(parse::family(&out.stdout, dataset)),
            Err(e) if parse::is_missing(e.stderr()) => Err(BdevError::NotFound {
                what: "zfs dataset",
                name: dataset.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Destroys a volume with its snapshots (zfs refuses if a clone depends on any),
    /// then the hidden snapshot it was cloned from, its `origin`.
    pub(super) fn destroy_now(&self, t: &Target, family: Family) -> Result<()> {
        self.destroy_dataset(t.dataset(), true)?;
        self.drop_hidden_origin(family);
        let _ = std::fs::remove_dir(self.mountpoint(&t.name));
        Ok(())
    }

    pub(super) fn refquota_of(&self, dataset: &str) -> Result<Option<u64>> {
        Ok(parse::bytes_opt(
            self.get(dataset, "refquota")?.get("refquota"),
        ))
    }
}

/// A failed `zfs create`/`clone`/`snapshot`: `Exists` when the name is taken.
pub(super) fn exists_or(e: CmdError, dataset: &str) -> BdevError {
    if parse::is_exists(e.stderr()) {
        BdevError::Exists {
            what: if dataset.contains('@') {
                "zfs snapshot"
            } else {
                "zfs dataset"
            },
            name: dataset.to_owned(),
        }
    } else {
        e.into()
    }
}

/// Whether the mount table shows `dataset` at `mp` (also when `mp`'s parent is
/// reached through a symlink, which the table shows resolved).
fn mounted_at(dataset: &str, mp: &Path) -> bool {
    let resolved = mp
        .parent()
        .zip(mp.file_name())
        .and_then(|(dir, name)| Some(std::fs::canonicalize(dir).ok()?.join(name)));
    mount::mounts().iter().any(|m| {
        m.source == dataset
            && m.fstype.contains("zfs")
            && (m.mount_point == mp || Some(&m.mount_point) == resolved.as_ref())
    })
}
