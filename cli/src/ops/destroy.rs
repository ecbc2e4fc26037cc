//! `berth destroy`: refuses while clones depend on the container, unless forced.

use tracing::warn;

use super::Berth;
use crate::error::{BerthError, Result};
use crate::store::dependents;

#[derive(Debug, Clone, Copy, Default)]
pub struct DestroyRequest {
    /// Destroy dependent clones first (depth-first).
    pub force: bool,
    /// Destroy the container's snapshots too (lxc-destroy -s).
    pub with_snapshots: bool,
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
        let c = self.store().container(name)?;
        if depth > 256 {
            return Err(BerthError::Invalid(format!(
                "clone chain below {name:?} is too deep or circular"
            )));
        }
        // Check everything before destroying anything.
        let deps = dependents(&self.store().containers()?, name);
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
}
