//! Making volumes from other datasets: a snapshot clone (through a hidden
//! snapshot when the source is live), a full copy (`zfs send | zfs recv`), and
//! the temporary read-only clone that mounts a snapshot. Each asks what it must
//! know in one `zfs get` of every dataset involved.

use std::path::Path;

use berth_bdev::cmd;
use berth_bdev::mount;
use berth_bdev::{BdevError, CreateOpts, Result, Revert, SpecForm, VolumeSpec};
use tracing::warn;

use super::spec::{Target, ZfsSpec};
use super::{parse, Zfs, CLONE_SNAP_PREFIX, COPY_SNAP_PREFIX};

/// What one `zfs get` says about a new volume's name, its source and a
/// snapshot berth is about to make of the source.
struct Preflight {
    /// The source volume's `refquota`.
    refquota: Option<u64>,
    /// Whether the snapshot to make is there already (left by an earlier try).
    leftover: bool,
}

impl Zfs {
    /// Refuses a taken `dataset` and a missing `base` (the source volume), and
    /// reads `base`'s refquota and whether `snapshot` exists, in one command.
    fn preflight(&self, dataset: &str, base: &str, snapshot: Option<&str>) -> Result<Preflight> {
        let mut query = vec![dataset, base];
        query.extend(snapshot);
        let found = self.get_many(&query, "type,refquota")?;
        if found.contains_key(dataset) {
            return Err(BdevError::Exists {
                what: "zfs dataset",
                name: dataset.to_owned(),
            });
        }
        let Some(src) = found.get(base) else {
            return Err(BdevError::NotFound {
                what: "zfs dataset",
                name: base.to_owned(),
            });
        };
        Ok(Preflight {
            refquota: parse::bytes_opt(src.get("refquota")),
            leftover: snapshot.is_some_and(|s| found.contains_key(s)),
        })
    }

    /// `snapshot_clone`: a clone of a snapshot, or of a live volume through
    /// the hidden snapshot `SRC@berth-clone-NAME`, keeping the source's refquota.
    pub(super) fn clone_volume(
        &self,
        src: &VolumeSpec,
        name: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let src_ds = ZfsSpec::from_spec(src)?.dataset;
        let dataset = format!("{}/{name}", self.parent);
        let (base, hidden) = match src_ds.split_once('@') {
            Some((base, _)) => (base, None),
            None => (
                src_ds.as_str(),
                Some(format!("{src_ds}@{CLONE_SNAP_PREFIX}{name}")),
            ),
        };
        let pre = self.preflight(&dataset, base, hidden.as_deref())?;
        let origin = match hidden {
            None => src_ds.clone(),
            Some(hidden) => {
                if pre.leftover {
                    // Left by an earlier clone of the same name whose cleanup failed;
                    // no clone of ours depends on it any more (the name is free).
                    self.destroy_dataset(&hidden, false)?;
                }
                self.zfs(&["snapshot", &hidden])?;
                let (this, h) = (self.clone(), hidden.clone());
                rv.add(format!("destroy {hidden}"), move || {
                    this.destroy_dataset(&h, false)
                });
                hidden
            }
        };
        self.clone_snapshot(
            &origin,
            &dataset,
            &self.mountpoint_str(name),
            pre.refquota,
            false,
            rv,
        )?;
        Ok(ZfsSpec::spec(dataset))
    }

    /// `copy_clone`: `zfs send | zfs recv` of a snapshot, or of a live volume
    /// through a temporary snapshot removed on both sides whatever happens.
    pub(super) fn copy_volume(
        &self,
        src: &VolumeSpec,
        name: &str,
        opts: &CreateOpts,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let src_ds = ZfsSpec::from_spec(src)?.dataset;
        let dataset = format!("{}/{name}", self.parent);
        let (base, temp) = match src_ds.split_once('@') {
            Some((base, _)) => (base, None),
            None => (
                src_ds.as_str(),
                Some(format!("{src_ds}@{COPY_SNAP_PREFIX}{name}")),
            ),
        };
        let pre = self.preflight(&dataset, base, temp.as_deref())?;
        let sent = match &temp {
            None => src_ds.clone(),
            Some(t) => {
                if pre.leftover {
                    // Left by a copy of the same name that was killed; the
                    // caller holds `name`, so nothing sends it any more.
                    self.destroy_dataset(t, false)?;
                }
                self.zfs(&["snapshot", t])?;
                t.clone()
            }
        };
        let quota = opts.size.or(pre.refquota);
        let result = self.receive(&sent, &dataset, name, quota, rv);
        if let Some(t) = temp {
            if let Err(e) = self.destroy_dataset(&t, false) {
                warn!(snapshot = %t, error = %e, "could not destroy the temporary copy snapshot");
            }
        }
        result?;
        Ok(ZfsSpec::spec(dataset))
    }

    /// Sends snapshot `sent` as the new volume `dataset` (called `name`) and
    /// gives it the volume's properties; the received snapshot is dropped.
    fn receive(
        &self,
        sent: &str,
        dataset: &str,
        name: &str,
        refquota: Option<u64>,
        rv: &mut Revert,
    ) -> Result<()> {
        let a1 = cmd::args(["send", sent]);
        let a2 = cmd::args(["recv", "-u", dataset]);
        let a1: Vec<&std::ffi::OsStr> = a1.iter().map(|a| a.as_os_str()).collect();
        let a2: Vec<&std::ffi::OsStr> = a2.iter().map(|a| a.as_os_str()).collect();
        self.runner.pipe(("zfs", &a1), ("zfs", &a2))?;
        let (this, ds) = (self.clone(), dataset.to_owned());
        rv.add(format!("destroy {dataset}"), move || {
            this.destroy_dataset(&ds, true)
        });
        let snap = sent.split_once('@').map(|(_, s)| s).unwrap_or_default();
        self.destroy_dataset(&format!("{dataset}@{snap}"), false)?;
        // canmount first: a mountpoint set while it is `on` could mount it.
        self.zfs(&["set", "canmount=noauto", dataset])?;
        let mp = format!("mountpoint={}", self.mountpoint_str(name));
        self.zfs(&["set", &mp, dataset])?;
        if let Some(q) = refquota {
            self.zfs(&["set", &format!("refquota={q}"), dataset])?;
        }
        self.ensure_unmounted(dataset)
    }

    /// Makes `tmp`, the read-only clone of snapshot `t` that is mounted at `mp`.
    /// One that is already there is another mount's (refused) or a crash's
    /// (replaced); that is looked into only when the clone finds the name taken.
    pub(super) fn clone_for_mount(&self, t: &Target, tmp: &str, mp: &str) -> Result<()> {
        let mut rv = Revert::new();
        match self.clone_snapshot(&t.at, tmp, mp, None, true, &mut rv) {
            Err(BdevError::Exists { .. }) => {
                if mount::mounts()
                    .iter()
                    .any(|m| m.source == tmp && m.mount_point != Path::new(mp))
                {
                    return Err(BdevError::Exists {
                        what: "mount of zfs snapshot",
                        name: t.at.clone(),
                    });
                }
                // Left by a crash: nothing uses it.
                self.destroy_dataset(tmp, false)?;
                self.clone_snapshot(&t.at, tmp, mp, None, true, &mut rv)?;
            }
            r => r?,
        }
        rv.commit();
        Ok(())
    }
}
