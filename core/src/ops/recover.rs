//! Finishing or undoing what an interrupted berth left: journal entries whose
//! process is gone are rolled back (the volumes they made are destroyed) or,
//! where their commit already happened, rolled forward (the volumes they
//! retired are destroyed). And `berth doctor`: what does not add up between
//! pools, records, mounts and the journal, and the repairs for it.

use std::collections::BTreeSet;

use berth_bdev::{mount, Backend, VolumeSpec};
use tracing::{info, warn};

use super::Berth;
use crate::error::Result;
use crate::journal::{self, Commit, Intent};
use crate::locks;

impl Berth {
    /// Whether `i`'s switch (its record commit) happened.
    fn committed(&self, i: &Intent) -> bool {
        let record = || self.store().container(&i.container).ok();
        match &i.commit {
            Commit::RecordExists => self.store().exists(&i.container),
            Commit::HasSnapshot { snap } => {
                record().is_some_and(|c| c.snapshots.iter().any(|s| &s.name == snap))
            }
            Commit::VolumeIsNot { old } => record().is_none_or(|c| &c.volume != old),
            Commit::ImageCopy { image, pool } => self
                .store()
                .image(image)
                .is_ok_and(|img| img.copy_on(pool).is_some()),
            Commit::Forward => true,
        }
    }

    /// Every volume spec some record uses (never destroyed by a rollback
    /// or the doctor), broken records' salvaged ones included, and whether
    /// some broken record's volume is unknown (then no volume may be called
    /// an orphan).
    fn record_scan(&self) -> Result<(BTreeSet<String>, bool)> {
        let scan = self.store().scan_containers()?;
        let mut all = BTreeSet::new();
        for c in &scan.ok {
            all.insert(c.volume.to_string());
            for s in &c.snapshots {
                all.insert(s.volume.to_string());
            }
        }
        // Images' copies are no container's, and no orphans either; with an
        // unreadable image record, any volume may be one of its copies.
        let mut unknown = false;
        match self.store().images() {
            Ok(images) => {
                for c in images.iter().flat_map(|i| &i.copies) {
                    all.insert(c.volume.to_string());
                }
            }
            Err(e) => {
                warn!(error = %e, "an image record cannot be read");
                unknown = true;
            }
        }
        for b in &scan.broken {
            match &b.salvage.volume {
                Some(v) => {
                    all.insert(v.to_string());
                }
                None => unknown = true,
            }
        }
        Ok((all, unknown))
    }

    /// Rolls one interrupted operation back or forward and clears its entry.
    pub(super) fn recover(&self, i: &Intent) -> Result<()> {
        let forward = self.committed(i);
        if forward {
            info!(op = %i.op, container = %i.container, "finishing an interrupted operation");
            for r in &i.retires {
                let b = self.backend(&self.store().pool(&r.pool)?)?;
                if r.snapshot {
                    b.destroy_snapshot(&r.volume)?;
                } else {
                    b.destroy(&r.volume)?;
                }
            }
            if i.removes_record {
                self.store().remove(&i.container)?;
                let _ = std::fs::remove_dir(self.store().mountpoint(&i.container));
            }
        } else {
            info!(op = %i.op, container = %i.container, "undoing an interrupted operation");
            for r in i.renames.iter().rev() {
                journal::undo_rename(r)?;
            }
        }
        // What it made and no record uses goes either way: rolled forward,
        // the commit check cannot tell its own switch from a later operation's
        // (a retry that overtook it), and then its volume is no one's.
        let (keep, unknown) = self.record_scan()?;
        // Forward, a broken record whose volume is unknown may be using it.
        let creates = if forward && unknown {
            &[][..]
        } else {
            &i.creates[..]
        };
        for p in creates {
            let b = self.backend(&self.store().pool(&p.pool)?)?;
            let found = match &p.snap {
                Some(s) => b.snapshot_named(&p.name, s)?,
                None => b.volume_named(&p.name)?,
            };
            let Some(v) = found else { continue };
            if keep.contains(&v.to_string()) {
                if !forward {
                    warn!(volume = %v, "a record uses this volume: left in place");
                }
                continue;
            }
            destroy_any(b.as_ref(), &v, p.snap.is_some())?;
        }
        journal::clear(self.store().root(), i)
    }

    /// Recovers every journal entry whose process is gone; returns how many.
    pub(super) fn recover_interrupted(&self) -> Result<usize> {
        let mut n = 0;
        for (id, entry) in journal::entries(self.store().root())? {
            match entry {
                Ok(i) if i.alive() => {}
                Ok(i) => {
                    // A live command may have taken the container over (a
                    // retry): it owns those names now; leave the entry.
                    let root = self.store().root();
                    let Some(_held) =
                        locks::try_container(root, &i.container, locks::Mode::Exclusive)?
                    else {
                        continue;
                    };
                    // Its scratch mounts go first: a volume mounted there
                    // cannot be destroyed.
                    self.clean_scratch_of(&format!("{}-{}", i.pid, i.starttime));
                    match self.recover(&i) {
                        Ok(()) => n += 1,
                        Err(e) => {
                            warn!(entry = %id, error = %e, "could not recover an interrupted operation; `berth doctor` shows it")
                        }
                    }
                }
                Err(e) => {
                    warn!(entry = %id, error = %e, "unreadable journal entry; `berth doctor` shows it")
                }
            }
        }
        Ok(n)
    }

    /// Unmounts and removes the scratch directory of process `tag`.
    pub(super) fn clean_scratch_of(&self, tag: &str) {
        let dir = self.store().scratch().join(tag);
        if !dir.exists() {
            return;
        }
        for m in mount::mounts_under(&dir).iter().rev() {
            info!(mount = %m.display(), "unmounting what an interrupted berth left");
            if mount::unmount(m).is_err() {
                let _ = mount::unmount_detach(m);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            warn!(dir = %dir.display(), error = %e, "could not remove scratch directory");
        }
    }

    /// Whether any operation of a live berth process is under way.
    pub(super) fn live_operations(&self) -> bool {
        journal::entries(self.store().root())
            .map(|all| all.iter().any(|(_, i)| i.as_ref().is_ok_and(Intent::alive)))
            .unwrap_or(true)
    }
}

fn destroy_any(b: &dyn Backend, v: &VolumeSpec, snapshot: bool) -> Result<()> {
    if snapshot {
        b.destroy_snapshot(v)?;
    } else {
        b.destroy(v)?;
    }
    Ok(())
}

/// One thing `berth doctor` found, and what `--fix` does (or did) about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub what: String,
    pub fix: String,
    pub fixed: bool,
}

impl Berth {
    /// `berth doctor [--fix]`: volumes without a record, records without a
    /// volume, dangling dependency edges, unreadable records and journal
    /// entries, mounts nothing accounts for. With `fix`, repairs each.
    pub fn doctor(&self, fix: bool) -> Result<Vec<Finding>> {
        let mut out = Vec::new();
        let mut note = |what: String, fix_text: &str, fixed: bool| {
            out.push(Finding {
                what,
                fix: fix_text.to_owned(),
                fixed,
            })
        };
        // Interrupted operations first: what they made is not an orphan.
        if fix {
            self.recover_interrupted()?;
        }
        let mut planned = BTreeSet::new();
        for (id, entry) in journal::entries(self.store().root())? {
            match entry {
                Ok(i) => {
                    for p in &i.creates {
                        planned.insert((p.pool.clone(), p.name.clone()));
                    }
                    if !i.alive() {
                        note(
                            format!("interrupted {} of {:?} (journal {id})", i.op, i.container),
                            "roll it back or forward",
                            false,
                        );
                    }
                }
                Err(e) => note(
                    format!("unreadable journal entry {id}: {e}"),
                    "remove it",
                    fix && journal::remove(self.store().root(), &id).is_ok(),
                ),
            }
        }
        let scan = self.store().scan_containers()?;
        let records = scan.ok;
        let names: BTreeSet<&str> = records
            .iter()
            .map(|c| c.name.as_str())
            .chain(scan.broken.iter().map(|b| b.name.as_str()))
            .collect();
        let (recorded, unknown_owner) = self.record_scan()?;
        for pool in self.store().pools()? {
            let b = match self.backend(&pool) {
                Ok(b) => b,
                Err(e) => {
                    note(
                        format!("pool {:?} cannot be opened: {e}", pool.name),
                        "check the pool",
                        false,
                    );
                    continue;
                }
            };
            for name in b.volume_names()? {
                if planned.contains(&(pool.name.clone(), name.clone())) {
                    continue;
                }
                let Some(v) = b.volume_named(&name)? else {
                    continue;
                };
                if recorded.contains(&v.to_string()) {
                    continue;
                }
                if unknown_owner || names.contains(name.as_str()) {
                    note(
                        format!(
                            "volume {name:?} in pool {:?} has no readable record ({v})",
                            pool.name
                        ),
                        "repair or `berth destroy --force` the broken record first",
                        false,
                    );
                    continue;
                }
                let fixed = fix && b.destroy(&v).is_ok();
                note(
                    format!(
                        "volume {name:?} in pool {:?} has no record ({v})",
                        pool.name
                    ),
                    "destroy the volume",
                    fixed,
                );
            }
            for c in records.iter().filter(|c| c.pool == pool.name) {
                if b.usage(&c.volume).is_err() {
                    note(
                        format!("container {:?} has no volume ({})", c.name, c.volume),
                        "`berth destroy NAME` removes the record",
                        false,
                    );
                }
            }
        }
        for c in &records {
            if let Some(o) = &c.origin {
                if o.pinned && !names.contains(o.container.as_str()) {
                    let fixed = fix && self.drop_dangling_edge(&c.name).is_ok();
                    note(
                        format!(
                            "container {:?} depends on {:?}, which does not exist",
                            c.name, o.container
                        ),
                        "forget the dependency",
                        fixed,
                    );
                }
            }
        }
        let mnt_root = self.store().mountpoint("");
        let running: BTreeSet<String> = self
            .store()
            .run_states()?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for m in mount::mounts_under(&mnt_root) {
            let name = m
                .strip_prefix(&mnt_root)
                .ok()
                .and_then(|r| r.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            if name.is_some_and(|n| running.contains(&n)) {
                continue;
            }
            let fixed = fix && mount::unmount(&m).is_ok();
            note(
                format!("mount {} belongs to no run or `berth mount`", m.display()),
                "unmount it",
                fixed,
            );
        }
        Ok(out)
    }

    fn drop_dangling_edge(&self, name: &str) -> Result<()> {
        let mut c = self.store().container(name)?;
        if let Some(o) = c.origin.as_mut() {
            o.pinned = false;
        }
        self.store().save(&c)
    }
}

impl Berth {
    /// Runs operation `f` under journal entry `intent`: recorded before `f`
    /// touches anything, cleared when it succeeds, and on failure the same
    /// recovery a crash gets runs at once (after `f`'s own revert steps), so
    /// a failed operation leaves nothing half-made.
    pub(super) fn journaled<T>(&self, intent: &Intent, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let root = self.store().root();
        journal::record(root, intent)?;
        journal::crash_point(&intent.op, "journaled");
        let out = f();
        match &out {
            Ok(_) => journal::clear(root, intent)?,
            Err(e) => {
                if let Err(r) = self.recover(intent) {
                    warn!(op = %intent.op, container = %intent.container, error = %e, cleanup = %r, "the failed operation could not be fully undone; the next berth command retries");
                }
            }
        }
        out
    }
}

impl Berth {
    /// Called once this process holds `names`' locks: a journal entry of
    /// another process for one of them belongs to a berth that is exiting (a
    /// SIGKILLed one can linger in a FUSE request after its locks are gone).
    /// Waits for it to be gone, then recovers its operation.
    pub(super) fn settle_dying(&self, names: &[&str]) -> Result<()> {
        let root = self.store().root();
        let me = std::process::id();
        for (_, entry) in journal::entries(root)? {
            let Ok(i) = entry else { continue };
            let ours = |n: &&str| i.container == *n || i.creates.iter().any(|p| p.name == *n);
            if i.pid == me || !names.iter().any(ours) {
                continue;
            }
            let deadline = std::time::Instant::now() + DYING_WITHIN;
            while i.alive() {
                if std::time::Instant::now() > deadline {
                    return Err(crate::error::BerthError::Locked {
                        what: format!(
                            "{} of {} (pid {}), which does not exit",
                            i.op, i.container, i.pid
                        ),
                        hint: "stop that process, then try again",
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            self.clean_scratch_of(&format!("{}-{}", i.pid, i.starttime));
            self.recover(&i)?;
        }
        Ok(())
    }
}

/// How long a lock holder that lost its locks may take to exit.
const DYING_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use berth_bdev::{CreateOpts, Revert};

    use super::*;
    use crate::journal::{Planned, Retired};
    use crate::store::{now, Container};

    /// A restore killed before its switch, then overtaken by a retry that
    /// switched the record itself: its own half-made volume must still go.
    #[test]
    fn an_overtaken_operation_leaves_no_volume() {
        let d = tempfile::tempdir().unwrap();
        let b = Berth::open(d.path(), true).unwrap();
        let pool = b.store().default_pool();
        let be = b.backend(&pool).unwrap();
        let mut rv = Revert::new();
        let opts = CreateOpts::default();
        let mut make = |name: &str| be.create(name, &opts, &mut rv).unwrap();
        let (old, _mine, theirs) = (make("c"), make("c.restore-1"), make("c.restore-2"));
        rv.commit();
        b.store()
            .save(&Container {
                name: "c".into(),
                pool: pool.name.clone(),
                volume: theirs.clone(),
                created: now(),
                template: None,
                origin: None,
                ephemeral: false,
                snapshots: Vec::new(),
                volume_name: None,
                run: Default::default(),
                image: None,
            })
            .unwrap();
        let mut i = Intent::new("restore", "c", Commit::VolumeIsNot { old: old.clone() });
        i.creates.push(Planned {
            pool: pool.name.clone(),
            name: "c.restore-1".into(),
            snap: None,
        });
        i.retires.push(Retired {
            pool: pool.name.clone(),
            volume: old,
            snapshot: false,
        });
        b.recover(&i).unwrap();
        assert_eq!(be.volume_names().unwrap(), vec!["c.restore-2".to_owned()]);
        assert_eq!(b.store().container("c").unwrap().volume, theirs);
    }
}
