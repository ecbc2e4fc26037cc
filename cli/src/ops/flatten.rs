//! `berth flatten` and `berth resize`: change a container's volume in place.

use berth_bdev::{BdevError, CreateOpts, Revert};
use tracing::warn;

use super::{Berth, CopyTo};
use crate::error::Result;

impl Berth {
    /// Makes a clone independent of its origin: its data is copied into a new
    /// volume of the same pool, the record switches to it in one rename, and the
    /// stacked volume is removed. Returns false when there was nothing to do.
    pub fn flatten(&self, name: &str, progress: &dyn berth_bdev::copy::Progress) -> Result<bool> {
        let mut c = self.store().container(name)?;
        if !c.origin.as_ref().is_some_and(|o| o.pinned) {
            return Ok(false);
        }
        self.refuse_if_in_use(name, "stop it, or `berth umount` it, before flattening")?;
        let backend = self.backend_of(&c)?;
        let new_name = format!("{name}.flat-{}", super::snapshot::unique_suffix());
        let mut rv = Revert::new();
        // A native copy (zfs send, qemu-img convert) never keeps a backing chain.
        let to = CopyTo {
            backend: backend.as_ref(),
            name: &new_name,
            opts: CreateOpts {
                size: backend.usage(&c.volume).ok().and_then(|u| u.limit_bytes),
                fstype: None,
            },
        };
        let volume = self.full_copy(backend.as_ref(), &c.volume, to, &mut rv, progress)?;
        let old = std::mem::replace(&mut c.volume, volume);
        if let Some(o) = c.origin.as_mut() {
            o.pinned = false;
            o.mode = "flattened".to_owned();
        }
        self.store().save(&c)?;
        rv.commit();
        if let Err(e) = backend.destroy(&old) {
            warn!(name, volume = %old, error = %e, "flattened, but the stacked volume could not be removed");
        }
        Ok(true)
    }

    /// Grows a container's volume (and its filesystem) to `size` bytes.
    pub fn resize(&self, name: &str, size: u64) -> Result<()> {
        let c = self.store().container(name)?;
        let backend = self.backend_of(&c)?;
        if !backend.caps().resize {
            return Err(BdevError::unsupported(backend.name(), "resize").into());
        }
        self.refuse_if_active(name, "stop it, or `berth umount` it, before resizing")?;
        backend.resize(&c.volume, size)?;
        Ok(())
    }
}
