//! Finding the pool's volumes and snapshots by name, and clearing what a crash
//! left of a snapshot mount.

use std::path::Path;

use berth_bdev::mount;
use berth_bdev::names::validate_name;
use berth_bdev::{BdevError, Result, VolumeSpec};
use tracing::warn;

use super::spec::{Target, VolumeDataset, ZfsSpec};
use super::{parse, Zfs, DESTROYED_PROP, RESERVED_PREFIX};

impl Zfs {
    pub(super) fn list_volumes(&self) -> Result<Vec<String>> {
        let cols = format!("name,{DESTROYED_PROP}");
        let out = self.zfs(&[
            "list",
            "-H",
            "-o",
            &cols,
            "-t",
            "filesystem",
            "-r",
            &self.parent,
        ])?;
        Ok(parse::volume_names(&out.stdout, &self.parent))
    }

    /// A volume destroyed while it had snapshots lingers, marked, until its last
    /// snapshot goes; it is no longer a volume.
    pub(super) fn find_volume(&self, name: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        let dataset = format!("{}/{name}", self.parent);
        let props = match self.get(&dataset, DESTROYED_PROP) {
            Err(BdevError::NotFound { .. }) => return Ok(None),
            r => r?,
        };
        if props.get(DESTROYED_PROP).map(String::as_str) == Some("on") {
            return Ok(None);
        }
        Ok(Some(ZfsSpec::spec(dataset)))
    }

    pub(super) fn list_snapshots(&self, name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        let mut snaps = match self.snapshots(&format!("{}/{name}", self.parent)) {
            Err(BdevError::NotFound { .. }) => return Ok(Vec::new()),
            r => r?,
        };
        snaps.retain(|s| !s.starts_with(RESERVED_PREFIX) && validate_name(s).is_ok());
        snaps.sort();
        Ok(snaps)
    }

    pub(super) fn find_snapshot(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        validate_name(snap)?;
        if snap.starts_with(RESERVED_PREFIX) {
            return Ok(None);
        }
        let full = format!("{}/{name}@{snap}", self.parent);
        Ok(self.exists(&full)?.then(|| ZfsSpec::spec(full)))
    }

    /// Removes the temporary clone that mounts snapshot `t` when nothing uses it
    /// (a crash left it); returns whether it did.
    pub(super) fn drop_unused_snapshot_mount(&self, t: &Target) -> Result<bool> {
        let Some(snap) = &t.snap else {
            return Ok(false);
        };
        let tmp = format!("{}:{snap}", t.dataset());
        if !self.exists(&tmp)? {
            return Ok(false);
        }
        let own = self.snap_mountpoint(&t.name, snap);
        if mount::mounts()
            .iter()
            .any(|m| m.source == tmp && m.mount_point != Path::new(&own))
        {
            return Ok(false);
        }
        warn!(dataset = %tmp, "removing a snapshot mount left by a crash");
        self.release(t)?;
        Ok(true)
    }
}
