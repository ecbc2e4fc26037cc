//! Dataset-level helpers of the zfs backend: running `zfs` with the busy retry,
//! properties, destroy with clear refusals, and the mount bookkeeping.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use berth_bdev::cmd::{self, CmdError, CmdOutput};
use berth_bdev::mount;
use berth_bdev::{BdevError, Result, Revert};
use tracing::{debug, warn};

use super::spec::{Target, VolumeDataset};
use super::{parse, Zfs, BUSY_ATTEMPTS, CLONE_SNAP_PREFIX};

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
        let args: &[&str] = if recursive {
            &["destroy", "-r", what]
        } else {
            &["destroy", what]
        };
        match self.zfs_retry(args) {
            Ok(_) => Ok(()),
            Err(e) => match parse::dependent_clones(e.stderr()) {
                Some(clones) => Err(BdevError::DeleteRefused {
                    path: PathBuf::from(what),
                    reason: format!(
                        "clones depend on it ({}); destroy them first, or promote one to keep it",
                        clones.join(", ")
                    ),
                }),
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

    /// Whether `dataset` is mounted; fails unless its mountpoint is `mp`, where
    /// the pool expects it (binding `mp` would show an empty directory).
    pub(super) fn mounted_at(&self, dataset: &str, mp: &str) -> Result<bool> {
        let props = self.get(dataset, "mounted,mountpoint")?;
        let actual = props.get("mountpoint").map(String::as_str).unwrap_or("-");
        if actual != mp {
            return Err(BdevError::PoolSetting {
                pool: self.pool.clone(),
                reason: format!(
                    "the mountpoint of {dataset} is {actual:?}, not {mp:?} under this pool's path"
                ),
                hint: format!("`zfs set mountpoint={mp} {dataset}` or give the pool that path"),
            });
        }
        Ok(props.get("mounted").map(String::as_str) == Some("yes"))
    }

    /// zfs-fuse may mount a fresh clone despite `canmount=noauto`; undo that.
    pub(super) fn ensure_unmounted(&self, dataset: &str) -> Result<()> {
        let p = self.get(dataset, "mounted")?;
        if p.get("mounted").map(String::as_str) == Some("yes") {
            self.zfs_unmount(dataset)?;
        }
        Ok(())
    }

    /// Clones `origin` (a snapshot) as `PARENT/name`, unmounted, with `refquota`.
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
        self.zfs(&args)?;
        let (this, ds) = (self.clone(), dataset.to_owned());
        rv.add(format!("destroy clone {dataset}"), move || {
            this.destroy_dataset(&ds, false)
        });
        self.ensure_unmounted(dataset)
    }

    /// Destroys the hidden snapshot a destroyed clone came from. Best effort: the
    /// clone itself is already gone, so a failure is only logged.
    pub(super) fn drop_hidden_origin(&self, origin: Option<String>) {
        let Some(origin) = origin else { return };
        let hidden = origin
            .split_once('@')
            .is_some_and(|(_, s)| s.starts_with(CLONE_SNAP_PREFIX));
        if !hidden {
            return;
        }
        match self.destroy_dataset(&origin, false) {
            Ok(()) | Err(BdevError::NotFound { .. }) => {
                debug!(%origin, "hidden clone snapshot destroyed")
            }
            Err(e) => warn!(%origin, error = %e, "could not destroy the hidden clone snapshot"),
        }
    }

    /// Tears down what `mount` set up once the bind on the target is gone: the
    /// temporary clone of a snapshot, or the dataset's own mount unless another
    /// bind of it is still in use.
    pub(super) fn release(&self, t: &Target) -> Result<()> {
        if let Some(snap) = &t.snap {
            let tmp = format!("{}:{snap}", t.dataset());
            if self.exists(&tmp)? {
                self.destroy_dataset(&tmp, false)?;
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

    /// Destroys a volume with its snapshots (zfs refuses if a clone depends on any),
    /// then the hidden snapshot it was cloned from.
    pub(super) fn destroy_now(&self, t: &Target) -> Result<()> {
        let origin = parse::origin(&self.get(t.dataset(), "origin")?);
        self.destroy_dataset(t.dataset(), true)?;
        self.drop_hidden_origin(origin);
        let _ = std::fs::remove_dir(self.mountpoint(&t.name));
        Ok(())
    }

    pub(super) fn refquota_of(&self, dataset: &str) -> Result<Option<u64>> {
        Ok(parse::bytes_opt(
            self.get(dataset, "refquota")?.get("refquota"),
        ))
    }
}
