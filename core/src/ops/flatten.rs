//! `berth flatten` and `berth resize`: change a container's volume in place.

use berth_bdev::{BdevError, Revert};

use tracing::warn;

use super::Berth;
use crate::error::Result;
use crate::journal::{self, Intent};

impl Berth {
    /// Makes a clone independent of its origin (a container, or an image's
    /// copy): its data is copied into a new
    /// volume of the same pool, the record switches to it in one rename, and the
    /// stacked volume is removed. Returns false when there was nothing to do.
    pub fn flatten(&self, name: &str, progress: &dyn berth_bdev::copy::Progress) -> Result<bool> {
        let _locks = self.lock_containers(&[name], &[])?;
        let mut c = self.store().container(name)?;
        let pins_image = c.image.as_ref().is_some_and(|i| i.pinned);
        if !c.origin.as_ref().is_some_and(|o| o.pinned) && !pins_image {
            return Ok(false);
        }
        self.refuse_if_in_use(name, "stop it, or `berth umount` it, before flattening")?;
        let backend = self.backend_of(&c)?;
        let new_name = format!("{name}.flat-{}", super::snapshot::unique_suffix());
        let intent = Intent::replacing("flatten", name, &c.pool, &c.volume, &new_name);
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            // A native copy (zfs send, qemu-img convert) never keeps a backing chain.
            let volume = self.store().unlocked(|| {
                self.copy_in_pool(backend.as_ref(), &c, &c.volume, &new_name, &mut rv, progress)
            })?;
            journal::crash_point("flatten", "made");
            let old = std::mem::replace(&mut c.volume, volume);
            c.volume_name = Some(new_name.clone());
            if let Some(o) = c.origin.as_mut() {
                o.pinned = false;
                o.mode = "flattened".to_owned();
            }
            if let Some(i) = c.image.as_mut() {
                i.pinned = false;
                i.mode = "flattened".to_owned();
            }
            self.store().save(&c)?;
            rv.commit();
            journal::crash_point("flatten", "switched");
            // The old volume can outlive the switch (classic lvm snapshots still
            // read from it): a warning, not a failure of what already happened.
            if let Err(e) = backend.destroy(&old) {
                warn!(name, volume = %old, error = %e, "flattened, but the old volume could not be removed");
            }
            Ok(true)
        })
    }

    /// Grows a container's volume (and its filesystem) to `size` bytes.
    pub fn resize(&self, name: &str, size: u64) -> Result<()> {
        let _locks = self.lock_containers(&[name], &[])?;
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
