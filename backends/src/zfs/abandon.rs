//! Destroyed volumes that clones still read.
//!
//! A volume destroyed while it has snapshots lingers, unmounted and marked
//! `berth:destroyed`, and goes with its last snapshot (zfs keeps snapshots
//! inside their dataset; a restore replaces a volume and keeps them). A
//! hidden clone snapshot (`@berth-clone-NAME`) that a live clone still reads
//! cannot go before that clone does, so it is handed over: each such clone is
//! marked `berth:origin-destroyed`, and the last of them to be destroyed
//! takes the lingering volume along once no snapshot of it is left. Marking
//! the clones first is safe: a mark whose volume is not marked destroyed
//! does nothing.

use tracing::debug;

use berth_bdev::{BdevError, Result};

use super::spec::{Target, VolumeDataset};
use super::{Zfs, DESTROYED_PROP, ORIGIN_DESTROYED_PROP, RESERVED_PREFIX};

impl Zfs {
    /// Destroys `what` (recursively with `recursive`); if clones of it (or
    /// of its snapshots) refuse that, marks them so that the last of them
    /// takes it along, and answers `false`.
    pub(super) fn destroy_or_hand_over(&self, what: &str, recursive: bool) -> Result<bool> {
        let Err(clones) = self.destroy_unless_cloned(what, recursive)? else {
            return Ok(true);
        };
        let mark = format!("{ORIGIN_DESTROYED_PROP}=on");
        // zfs lists the clones' own snapshots too; only datasets carry marks.
        for clone in clones.iter().filter(|c| !c.contains('@')) {
            self.zfs(&["set", &mark, clone])?;
        }
        debug!(%what, ?clones, "kept until these clones are destroyed");
        Ok(false)
    }

    /// Destroys `dataset` if it is a destroyed volume (`berth:destroyed`)
    /// with no snapshot of the user's left, handing it over to the clones
    /// that still read a hidden snapshot of it.
    pub(super) fn drop_if_abandoned(&self, dataset: &str) -> Result<()> {
        let marked = match self.get(dataset, DESTROYED_PROP) {
            Err(BdevError::NotFound { .. }) => return Ok(()),
            r => r?,
        };
        if marked.get(DESTROYED_PROP).map(String::as_str) != Some("on") {
            return Ok(());
        }
        let family = self.family(dataset)?;
        if family
            .snapshots
            .iter()
            .any(|s| !s.starts_with(RESERVED_PREFIX))
        {
            return Ok(());
        }
        if self.destroy_or_hand_over(dataset, true)? {
            let name = dataset.rsplit('/').next().unwrap_or(dataset);
            let _ = std::fs::remove_dir(self.mountpoint(name));
            // It may itself have been a clone of a hidden snapshot.
            self.drop_hidden_origin(family);
        }
        Ok(())
    }

    /// `destroy` of a volume that has snapshots of the user's: its own
    /// snapshots go (a hidden one that clones read is handed over to them),
    /// and the dataset stays, unmounted and marked, for the user's.
    pub(super) fn destroy_keeping_snapshots(&self, t: &Target, own: &[&String]) -> Result<()> {
        for s in own {
            self.destroy_or_hand_over(&format!("{}@{s}", t.dataset()), false)?;
        }
        self.zfs_unmount(t.dataset())?;
        self.zfs(&["set", &format!("{DESTROYED_PROP}=on"), t.dataset()])?;
        debug!(dataset = %t.dataset(), "destroyed volume kept for the user's snapshots");
        Ok(())
    }
}
