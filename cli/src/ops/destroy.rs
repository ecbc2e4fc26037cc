//! `berth destroy`: refuses while clones depend on the container, unless forced.

use berth_bdev::copy::NoProgress;
use tracing::{info, warn};

use super::Berth;
use crate::error::{BerthError, Result};
use crate::store::dependents;

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
    pub fn destroy(&self, name: &str, req: DestroyRequest) -> Result<Vec<String>> {
        let mut done = Vec::new();
        self.destroy_inner(name, req, &mut done, 0)?;
        Ok(done)
    }

    fn destroy_inner(
        &self,
        name: &str,
        req: DestroyRequest,
        done: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        if depth > 256 {
            return Err(BerthError::Invalid(format!(
                "clone chain below {name:?} is too deep or circular"
            )));
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
        if !c.snapshots.is_empty() && !req.with_snapshots && !req.force {
            return Err(BerthError::HasSnapshots {
                name: name.to_owned(),
                snaps: c.snapshots.iter().map(|s| s.name.clone()).collect(),
            });
        }
        self.refuse_if_active(name, "stop it, or `berth umount` it, first")?;
        for (d, _) in &deps {
            self.destroy_inner(d, req, done, depth + 1)?;
        }

        let backend = self.backend_of(&c)?;
        let mut c = c;
        // Snapshots go first; the record is updated after each so that an
        // interrupted destroy can simply be run again.
        while let Some(s) = c.snapshots.pop() {
            backend.destroy_snapshot(&s.volume)?;
            self.store().save(&c)?;
        }
        backend.destroy(&c.volume)?;
        self.store().remove(name)?;
        if let Err(e) = std::fs::remove_dir(self.store().mountpoint(name)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(name, error = %e, "could not remove the container's mount point");
            }
        }
        done.push(name.to_owned());
        Ok(())
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
