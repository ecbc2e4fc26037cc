//! `berth snapshot`: take, list, restore and remove snapshots (lxc-snapshot).

use berth_bdev::copy::Progress;
use berth_bdev::names::validate_name;
use berth_bdev::Revert;

use tracing::warn;

use super::Berth;
use crate::error::{BerthError, Result};
use crate::journal::{self, Commit, Intent, Planned};
use crate::store::{dependents, now, Snapshot};

/// Nanoseconds since the epoch: two restores in one second still get new names.
pub(super) fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Berth {
    /// Takes snapshot `snap` (default `snapN`, as lxc-snapshot names them).
    pub fn snapshot(&self, name: &str, snap: Option<&str>) -> Result<Snapshot> {
        let _locks = self.lock_containers(&[name], &[])?;
        let mut c = self.store().container(name)?;
        let snap = match snap {
            Some(s) => s.to_owned(),
            None => (0..)
                .map(|i| format!("snap{i}"))
                .find(|s| c.snapshots.iter().all(|x| &x.name != s))
                .unwrap_or_else(|| "snap".to_owned()),
        };
        validate_name(&snap)?;
        if c.snapshots.iter().any(|s| s.name == snap) {
            return Err(BerthError::SnapshotExists {
                name: name.to_owned(),
                snap,
            });
        }
        let backend = self.backend_of(&c)?;
        let mut intent = Intent::new("snapshot", name, Commit::HasSnapshot { snap: snap.clone() });
        // Backends file snapshots under the volume's own name.
        let vol_name = c.volume_name().to_owned();
        intent.creates.push(Planned {
            pool: c.pool.clone(),
            name: vol_name.clone(),
            snap: Some(snap.clone()),
        });
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let volume = self
                .store()
                .unlocked(|| Ok(backend.snapshot(&c.volume, &vol_name, &snap, &mut rv)?))?;
            journal::crash_point("snapshot", "made");
            let s = Snapshot {
                name: snap.clone(),
                volume,
                created: now(),
            };
            c.snapshots.push(s.clone());
            self.store().save(&c)?;
            rv.commit();
            Ok(s)
        })
    }

    pub fn snapshots(&self, name: &str) -> Result<Vec<Snapshot>> {
        Ok(self.store().container(name)?.snapshots)
    }

    /// Removes a snapshot no clone depends on.
    pub fn snapshot_rm(&self, name: &str, snap: &str) -> Result<()> {
        let _locks = self.lock_containers(&[name], &[])?;
        let mut c = self.store().container(name)?;
        let s = c.snapshot(snap)?.clone();
        let users: Vec<String> = dependents(&self.store().containers()?, name)
            .into_iter()
            .filter(|(_, on)| on.as_deref() == Some(snap))
            .map(|(d, _)| d)
            .collect();
        if !users.is_empty() {
            return Err(BerthError::SnapshotInUse {
                name: name.to_owned(),
                snap: snap.to_owned(),
                clones: users,
            });
        }
        self.backend_of(&c)?.destroy_snapshot(&s.volume)?;
        c.snapshots.retain(|x| x.name != snap);
        self.store().save(&c)?;
        Ok(())
    }

    /// Restores `name` to snapshot `snap` atomically: the restored volume is built
    /// beside the current one, the container record is switched to it in one
    /// rename, and only then is the old volume destroyed.
    pub fn restore(&self, name: &str, snap: &str, progress: &dyn Progress) -> Result<()> {
        let _locks = self.lock_containers(&[name], &[])?;
        let mut c = self.store().container(name)?;
        let s = c.snapshot(snap)?.clone();
        self.refuse_if_in_use(name, "stop it, or `berth umount` it, before restoring")?;
        let backend = self.backend_of(&c)?;
        let caps = backend.caps();
        let new_name = format!("{name}.restore-{}", unique_suffix());
        let intent = Intent::replacing("restore", name, &c.pool, &c.volume, &new_name);
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            // A clone that kept reading the snapshot would pin it; restore by copy there.
            let volume = self.store().unlocked(|| {
                if caps.clone_from_snapshot && !caps.clone_pins_origin {
                    return Ok(backend.snapshot_clone(&s.volume, &new_name, &mut rv)?);
                }
                self.copy_in_pool(backend.as_ref(), &c, &s.volume, &new_name, &mut rv, progress)
            })?;
            journal::crash_point("restore", "made");
            let old = std::mem::replace(&mut c.volume, volume);
            c.volume_name = Some(new_name.clone());
            self.store().save(&c)?;
            rv.commit();
            journal::crash_point("restore", "switched");
            // The old volume can outlive the switch (classic lvm snapshots still
            // read from it): a warning, not a failure of what already happened.
            if let Err(e) = backend.destroy(&old) {
                warn!(name, volume = %old, error = %e, "restored, but the old volume could not be removed");
            }
            Ok(())
        })
    }
}
