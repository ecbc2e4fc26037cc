//! `berth destroy`: refuses while clones depend on the container, unless forced.

use berth_bdev::copy::NoProgress;
use tracing::{info, warn};

use super::Berth;
use crate::damage::Damage;
use crate::error::{BerthError, Result};
use crate::journal::{self, Commit, Intent, Retired};
use crate::store::{dependents, Container};
use berth_bdev::VolumeSpec;

#[derive(Debug, Clone, Copy, Default)]
pub struct DestroyRequest {
    /// Destroy dependent clones first (depth-first).
    pub force: bool,
    /// Destroy the container's snapshots too (lxc-destroy -s).
    pub with_snapshots: bool,
    /// Keep the clones that depend on it: promote one where the backend can
    /// (`zfs promote`), make the others independent copies.
    pub keep_clones: bool,
}

impl Berth {
    /// Destroys `name`; returns every container destroyed, dependents first.
    /// What needs saying (volumes that were already gone, broken records dropped)
    /// is logged; [`Berth::destroy_report`] returns it instead.
    pub fn destroy(&self, name: &str, req: DestroyRequest) -> Result<Vec<String>> {
        let report = self.destroy_report(name, req)?;
        for w in &report.warnings {
            warn!("{w}");
        }
        Ok(report.destroyed)
    }

    /// Like [`Berth::destroy`], with the warnings for the user.
    pub fn destroy_report(&self, name: &str, req: DestroyRequest) -> Result<Destroyed> {
        let mut report = Destroyed::default();
        self.destroy_inner(name, req, &mut report, 0)?;
        Ok(report)
    }

    fn destroy_inner(
        &self,
        name: &str,
        req: DestroyRequest,
        report: &mut Destroyed,
        depth: usize,
    ) -> Result<()> {
        if depth > 256 {
            return Err(BerthError::Invalid(format!(
                "clone chain below {name:?} is too deep or circular"
            )));
        }
        let _locks = self.lock_containers(&[name], &[])?;
        if let Some(broken) = self.broken_target(name)? {
            return self.drop_broken_record(name, broken, req, report);
        }
        // Check everything before destroying anything.
        let mut deps = dependents(&self.store().containers()?, name);
        if !deps.is_empty() && req.keep_clones && !req.force {
            self.release_dependents(name)?;
            deps = dependents(&self.store().containers()?, name);
        }
        if !deps.is_empty() && !req.force {
            return Err(BerthError::HasDependents {
                what: format!("container {name:?}"),
                dependents: deps
                    .iter()
                    .map(|(d, s)| match s {
                        Some(s) => format!("{d} (cloned from snapshot {s})"),
                        None => d.clone(),
                    })
                    .collect(),
            });
        }
        let c = self.store().container(name)?;
        self.refuse_if_broken_dependents(&c)?;
        if !c.snapshots.is_empty() && !req.with_snapshots && !req.force {
            return Err(BerthError::HasSnapshots {
                name: name.to_owned(),
                snaps: c.snapshots.iter().map(|s| s.name.clone()).collect(),
            });
        }
        self.refuse_if_active(name, "stop it, or `berth umount` it, first")?;
        for (d, _) in &deps {
            self.destroy_inner(d, req, report, depth + 1)?;
        }

        let backend = self.backend_of(&c)?;
        // A volume deleted behind berth's back is gone, not an error.
        let gone = self.volume_gone(backend.as_ref(), c.volume_name(), &c.volume);
        if gone {
            report.warnings.push(format!(
                "the volume of {name:?} ({}) was already gone; its record is removed",
                c.volume
            ));
        }
        // From here it only goes forward: an interrupted destroy is finished
        // by the next berth command.
        let mut intent = Intent::new("destroy", name, Commit::Forward);
        intent.removes_record = true;
        for s in &c.snapshots {
            intent.retires.push(Retired {
                pool: c.pool.clone(),
                volume: s.volume.clone(),
                snapshot: true,
            });
        }
        intent.retires.push(Retired {
            pool: c.pool.clone(),
            volume: c.volume.clone(),
            snapshot: false,
        });
        self.journaled(&intent, || {
            self.store().unlocked(|| {
                for s in c.snapshots.iter().rev() {
                    already_gone(backend.destroy_snapshot(&s.volume))?;
                    journal::crash_point("destroy", "snapshot");
                }
                already_gone(backend.destroy(&c.volume))?;
                journal::crash_point("destroy", "volume");
                Ok(())
            })?;
            self.store().remove(name)
        })?;
        self.remove_leftovers(name);
        report.destroyed.push(name.to_owned());
        Ok(())
    }

    /// Removes what a destroyed container leaves outside its record: its mount
    /// point and its logs (a detached run's output and exit status).
    fn remove_leftovers(&self, name: &str) {
        if let Err(e) = std::fs::remove_dir(self.store().mountpoint(name)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(name, error = %e, "could not remove the container's mount point");
            }
        }
        let logs = super::lifecycle::log_dir(self.store().root(), name);
        if let Err(e) = std::fs::remove_dir_all(&logs) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(name, error = %e, "could not remove the container's logs");
            }
        }
    }

    /// Makes every clone that depends on `name` independent of it: one clone in
    /// the same pool is promoted where the backend can, the rest are flattened.
    fn release_dependents(&self, name: &str) -> Result<()> {
        let origin = self.store().container(name)?;
        let backend = self.backend_of(&origin)?;
        let all = self.store().containers()?;
        let deps: Vec<_> = dependents(&all, name)
            .into_iter()
            .filter_map(|(d, _)| all.iter().find(|c| c.name == d).cloned())
            .collect();
        let promoted = if backend.caps().promote {
            deps.iter()
                .find(|d| {
                    d.pool == origin.pool && d.origin.as_ref().is_some_and(|o| o.snapshot.is_none())
                })
                .map(|d| d.name.clone())
        } else {
            None
        };
        if promoted.is_some() && !origin.snapshots.is_empty() {
            return Err(BerthError::Invalid(format!(
                "promoting a clone of {name:?} would move its snapshots to the clone; remove them first (`berth snapshot rm`), or `berth flatten` the clones"
            )));
        }
        for d in &deps {
            self.refuse_if_active(&d.name, "stop it before its origin is destroyed")?;
        }
        for d in deps.iter().filter(|d| Some(&d.name) != promoted.as_ref()) {
            info!(clone = %d.name, origin = name, "copying the clone so that it no longer depends on its origin");
            self.flatten(&d.name, &NoProgress)?;
        }
        if let Some(p) = promoted {
            let mut c = self.store().container(&p)?;
            backend.promote(&c.volume)?;
            if let Some(o) = c.origin.as_mut() {
                o.pinned = false;
                o.mode = "promoted".to_owned();
            }
            self.store().save(&c)?;
        }
        Ok(())
    }
}

/// What a destroy did, and what the user should hear about it.
#[derive(Debug, Clone, Default)]
pub struct Destroyed {
    /// Every container destroyed, dependents first.
    pub destroyed: Vec<String>,
    pub warnings: Vec<String>,
}

/// A volume that is already gone counts as destroyed; any other failure means
/// something is there, and the record stays.
fn already_gone(r: berth_bdev::Result<()>) -> Result<()> {
    match r {
        Err(e) if super::health::is_not_found(&e) => {
            warn!(error = %e, "the volume was already gone");
            Ok(())
        }
        other => Ok(other?),
    }
}

/// A container that cannot be destroyed the usual way: its record or its pool
/// cannot be read.
struct BrokenTarget {
    damage: Damage,
    /// The volumes it names, as far as they can be read.
    volumes: Vec<VolumeSpec>,
}

// Broken records: dropped only on request, never at the cost of data.
impl Berth {
    fn broken_target(&self, name: &str) -> Result<Option<BrokenTarget>> {
        if let Some(r) = self.store().broken_container(name)? {
            return Ok(Some(BrokenTarget {
                damage: r.damage,
                volumes: r.salvage.volume.into_iter().collect(),
            }));
        }
        let Ok(c) = self.store().container(name) else {
            return Ok(None);
        };
        let damage = match self.store().pool(&c.pool) {
            Ok(_) => return Ok(None),
            Err(BerthError::NoPool(_)) => Damage {
                path: self.store().container_path(name),
                line: None,
                column: None,
                reason: format!("its pool {:?} does not exist", c.pool),
            },
            Err(BerthError::Corrupt { .. }) => match self.store().broken_pool(&c.pool)? {
                Some(b) => super::health::pool_damage(&c.pool, &b.damage),
                None => return Ok(None),
            },
            Err(e) => return Err(e),
        };
        let mut volumes: Vec<VolumeSpec> = c.snapshots.iter().map(|s| s.volume.clone()).collect();
        volumes.push(c.volume);
        Ok(Some(BrokenTarget { damage, volumes }))
    }

    /// `destroy --force` of a broken container removes its record only: which
    /// backend holds its volume cannot be trusted, so the volume stays for
    /// `berth doctor`. Clones that read that volume keep it from going.
    fn drop_broken_record(
        &self,
        name: &str,
        t: BrokenTarget,
        req: DestroyRequest,
        report: &mut Destroyed,
    ) -> Result<()> {
        if !req.force {
            return Err(BerthError::Invalid(format!(
                "container {name:?} is broken: {}; repair the file, or drop the record with `berth destroy --force {name}` (its volume is left in place for `berth doctor`)",
                t.damage
            )));
        }
        let deps = dependents(&self.store().containers()?, name);
        if !deps.is_empty() {
            let names: Vec<&str> = deps.iter().map(|(d, _)| d.as_str()).collect();
            return Err(BerthError::Invalid(format!(
                "container {name:?} is broken ({}), and {} still read its volume; `berth flatten` them first, then drop the record",
                t.damage,
                names.join(", ")
            )));
        }
        match self.store().run_state(name) {
            Ok(Some(s)) if s.pid.is_some() && s.process_alive() => {
                return Err(BerthError::Busy {
                    name: name.to_owned(),
                    state: "running",
                    hint: "stop it first",
                })
            }
            // A plain unmount: its backend's own cannot be trusted.
            Ok(Some(s)) if berth_bdev::mount::is_mountpoint(&s.mountpoint) => {
                berth_bdev::mount::unmount(&s.mountpoint).map_err(berth_bdev::BdevError::from)?;
            }
            _ => {}
        }
        self.store().clear_run_state(name)?;
        self.store().remove(name)?;
        self.remove_leftovers(name);
        let left = if t.volumes.is_empty() {
            "no volume could be read from it; `berth doctor` finds volumes that no record names"
                .to_owned()
        } else {
            let vols: Vec<String> = t.volumes.iter().map(ToString::to_string).collect();
            format!(
                "its volume ({}) is left in place for `berth doctor`",
                vols.join(", ")
            )
        };
        report.warnings.push(format!(
            "dropped the broken record of {name:?} ({}); {left}",
            t.damage
        ));
        report.destroyed.push(name.to_owned());
        Ok(())
    }

    /// Refuses while a broken record may be a clone that reads `c`'s data.
    fn refuse_if_broken_dependents(&self, c: &Container) -> Result<()> {
        let suspects = self.broken_dependents(c)?;
        if suspects.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = suspects
            .iter()
            .map(|b| format!("{} ({})", b.name, b.damage))
            .collect();
        Err(BerthError::Invalid(format!(
            "container {:?} may be needed by broken records that cannot be checked: {}; repair them, or drop them with `berth destroy --force NAME`, then try again",
            c.name,
            list.join("; ")
        )))
    }
}
