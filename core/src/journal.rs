//! The operation journal: before a multi-step operation touches a backend it
//! writes what it will create and remove to `ROOT/journal/ID.toml`, and it
//! deletes that entry when it is done. An entry whose process is gone is an
//! operation that was interrupted; recovery (`ops::recover`) rolls it back, or
//! forward where its commit already happened.

use std::fs;
use std::path::{Path, PathBuf};

use berth_bdev::fsutil::atomic_write;
use berth_bdev::process::Process;
use berth_bdev::VolumeSpec;
use serde::{Deserialize, Serialize};

use crate::error::{BerthError, Result};

/// A volume an operation makes: `name` in `pool`, or snapshot `snap` of the
/// volume called `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    pub pool: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snap: Option<String>,
}

/// A volume to remove once the operation has committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub pool: String,
    pub volume: VolumeSpec,
    #[serde(default)]
    pub snapshot: bool,
}

/// A path an operation renamed (adopt moves an LXC rootfs into a dir pool and
/// sets its config aside): a rollback renames it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renamed {
    pub from: PathBuf,
    pub to: PathBuf,
}

/// How recovery tells whether the operation's switch happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Commit {
    /// Committed once the container's record exists (create, clone).
    RecordExists,
    /// Committed once the record lists this snapshot.
    HasSnapshot { snap: String },
    /// Committed once the record no longer points at `old` (restore, flatten).
    VolumeIsNot { old: VolumeSpec },
    /// Committed once image `image`'s record lists a copy on `pool` (image
    /// build, commit, a copy to another pool). The intent's container is the
    /// image's lock name (`image.NAME`).
    ImageCopy { image: String, pool: String },
    /// Always finished, never undone (destroy: the data is already going).
    Forward,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// "create", "clone", "snapshot", "restore", "flatten", "destroy".
    pub op: String,
    pub pid: u32,
    pub starttime: u64,
    /// The container whose record the operation writes or removes.
    pub container: String,
    pub commit: Commit,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creates: Vec<Planned>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retires: Vec<Retired>,
    /// Destroy: the record goes too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removes_record: bool,
    /// Containers it reads (the source of a clone): a command kept waiting
    /// for one of them can name this operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<String>,
    /// Renames to undo, last first, when the operation is rolled back; done
    /// before `creates` are destroyed, which a failed undo prevents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renames: Vec<Renamed>,
}

impl Intent {
    /// An intent of this process.
    pub fn new(op: &str, container: &str, commit: Commit) -> Intent {
        let me = Process::of(i32::try_from(std::process::id()).unwrap_or(i32::MAX));
        Intent {
            op: op.to_owned(),
            pid: std::process::id(),
            starttime: me.map_or(0, |p| p.starttime),
            container: container.to_owned(),
            commit,
            creates: Vec::new(),
            retires: Vec::new(),
            removes_record: false,
            reads: Vec::new(),
            renames: Vec::new(),
        }
    }

    /// An operation that replaces `old`, the volume of `container` in `pool`,
    /// with a new volume `new_name` (restore, flatten): committed once the
    /// record points elsewhere, and then `old` goes.
    pub fn replacing(
        op: &str,
        container: &str,
        pool: &str,
        old: &VolumeSpec,
        new_name: &str,
    ) -> Intent {
        let mut i = Intent::new(op, container, Commit::VolumeIsNot { old: old.clone() });
        i.creates.push(Planned {
            pool: pool.to_owned(),
            name: new_name.to_owned(),
            snap: None,
        });
        i.retires.push(Retired {
            pool: pool.to_owned(),
            volume: old.clone(),
            snapshot: false,
        });
        i
    }

    /// Whether the process that wrote it still runs.
    pub fn alive(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        Process {
            pid,
            starttime: self.starttime,
        }
        .alive()
    }

    /// The file name: operation, container and owner, unique per live operation.
    pub fn id(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.container, self.op, self.pid, self.starttime
        )
    }
}

/// `ROOT/journal`.
pub fn dir(root: &Path) -> PathBuf {
    root.join("journal")
}

fn file(root: &Path, id: &str) -> PathBuf {
    dir(root).join(format!("{id}.toml"))
}

/// Writes (or rewrites) `intent`, durably, before the work it announces.
pub fn record(root: &Path, intent: &Intent) -> Result<()> {
    let d = dir(root);
    fs::create_dir_all(&d).map_err(BerthError::io("create directory", &d))?;
    let path = file(root, &intent.id());
    let text = toml::to_string_pretty(intent).map_err(|e| BerthError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(atomic_write(&path, text.as_bytes())?)
}

/// Deletes `intent`'s entry: the operation is done, or undone.
pub fn clear(root: &Path, intent: &Intent) -> Result<()> {
    remove(root, &intent.id())
}

pub fn remove(root: &Path, id: &str) -> Result<()> {
    let path = file(root, id);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BerthError::io("remove", &path)(e)),
    }
}

/// Every entry, by id; an unreadable one is returned as its error so that
/// recovery can report it without stopping.
pub fn entries(root: &Path) -> Result<Vec<(String, Result<Intent>)>> {
    let d = dir(root);
    let rd = match fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BerthError::io("read directory", &d)(e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".toml") else {
            continue;
        };
        if id.starts_with('.') {
            continue;
        }
        let path = e.path();
        let parsed = fs::read_to_string(&path)
            .map_err(BerthError::io("read", &path))
            .and_then(|t| {
                toml::from_str(&t).map_err(|err: toml::de::Error| BerthError::Corrupt {
                    path: path.clone(),
                    reason: err.to_string(),
                })
            });
        out.push((id.to_owned(), parsed));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Renames `r.to` back to `r.from`, durably. Nothing to do when `to` is gone
/// (never renamed, or already back). When both exist, only an empty `to` (a
/// placeholder the rename never replaced) is no conflict.
pub fn undo_rename(r: &Renamed) -> Result<()> {
    let exists = |p: &Path| p.symlink_metadata().is_ok();
    if !exists(&r.to) {
        return Ok(());
    }
    if exists(&r.from) {
        let empty = fs::read_dir(&r.to).is_ok_and(|mut d| d.next().is_none());
        if empty {
            return Ok(());
        }
        return Err(BerthError::Invalid(format!(
            "cannot move {:?} back to {:?}: both exist; move it back by hand",
            r.to, r.from
        )));
    }
    fs::rename(&r.to, &r.from).map_err(BerthError::io("rename back", &r.to))?;
    for dir in [r.from.parent(), r.to.parent()].into_iter().flatten() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(BerthError::io("sync directory", dir))?;
    }
    Ok(())
}

pub use berth_bdev::process::crash_point;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_ones_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let mut i = Intent::new("clone", "c2", Commit::RecordExists);
        i.creates.push(Planned {
            pool: "default".into(),
            name: "c2".into(),
            snap: None,
        });
        record(d.path(), &i).unwrap();
        let mut r = Intent::new("restore", "c1", Commit::Forward);
        r.commit = Commit::VolumeIsNot {
            old: "dir:/p/c1".parse().unwrap(),
        };
        r.retires.push(Retired {
            pool: "default".into(),
            volume: "dir:/p/c1".parse().unwrap(),
            snapshot: false,
        });
        record(d.path(), &r).unwrap();
        fs::write(dir(d.path()).join("junk.toml"), "op = [").unwrap();
        let got = entries(d.path()).unwrap();
        assert_eq!(got.len(), 3);
        let ok: Vec<&Intent> = got.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        assert!(ok.contains(&&i) && ok.contains(&&r));
        assert!(got.iter().any(|(id, r)| id == "junk" && r.is_err()));
        assert!(i.alive());
        clear(d.path(), &i).unwrap();
        clear(d.path(), &i).unwrap();
        assert_eq!(entries(d.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_dead_owner_is_not_alive() {
        let mut i = Intent::new("create", "x", Commit::RecordExists);
        i.starttime += 1;
        assert!(!i.alive());
    }
}
