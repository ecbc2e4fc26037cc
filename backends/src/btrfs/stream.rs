//! Send streams: `btrfs send` of a read-only subvolume (a live volume goes
//! through a temporary read-only snapshot) and `btrfs receive` into the pool.
//!
//! Received subvolumes are read-only and carry the sender's UUID as their
//! `received_uuid`, which is how a later incremental stream finds its parent
//! (btrfs looks it up by UUID; the path does not matter). A read-only
//! subvolume cannot be moved to another directory, so a snapshot is received
//! straight into its volume's snapshot directory (the stream names it as the
//! sender did, `SNAP` in berth's layout) and at most renamed there. A live
//! volume is received into a staging directory under `.transfer` and made
//! writable as a snapshot of the received one, which then goes.
//!
//! `btrfs receive -C` chroots into the directory it receives into, so a
//! hostile stream cannot write outside it. An incremental stream goes
//! through [`KeepRootTimes`], which restores what btrfs loses of the root
//! directory's times.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use berth_bdev::fsutil::create_dir_all;
use berth_bdev::names::validate_name;
use berth_bdev::process::Process;
use berth_bdev::{BdevError, ReceiveTo, Result, Revert, VolumeSpec};
use tracing::{debug, warn};

use super::sendfix::KeepRootTimes;
use super::{subvol, Btrfs, BtrfsSpec};

/// Where sends and receives keep their temporary subvolumes, one directory
/// per operation named `PID-STARTTIME-N` after the process that owns it.
const TRANSFER: &str = ".transfer";

impl Btrfs {
    fn transfer_root(&self) -> PathBuf {
        self.root().join(TRANSFER)
    }

    /// A fresh directory under `.transfer` for one operation; `rv` removes it.
    fn staging(&self, rv: &mut Revert) -> Result<PathBuf> {
        let me = i32::try_from(std::process::id()).ok().and_then(Process::of);
        let start = me.map_or(0, |p| p.starttime);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = self
            .transfer_root()
            .join(format!("{}-{start}-{nanos}", std::process::id()));
        create_dir_all(&dir)?;
        let d = dir.clone();
        rv.add(format!("remove {}", dir.display()), move || {
            remove_staging(&d)
        });
        Ok(dir)
    }

    /// `btrfs send [-p BASE] SUBVOL` into `out`.
    pub(super) fn send_stream(
        &self,
        v: &VolumeSpec,
        base: Option<&VolumeSpec>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let loc = self.locate(v)?;
        let parent = match base {
            Some(b) => {
                let b = self.locate(b)?;
                if !b.is_snapshot() {
                    return Err(BdevError::InvalidSpec {
                        spec: b.at.display().to_string(),
                        reason: "the base of an incremental send must be a snapshot".to_owned(),
                    });
                }
                Some(b.at)
            }
            None => None,
        };
        // Dropped at the end: the temporary snapshot and its directory go.
        let mut scope = Revert::new();
        let sent = if loc.is_snapshot() {
            loc.at
        } else {
            let tmp = self.staging(&mut scope)?.join(&loc.name);
            subvol::snapshot(&loc.at, &tmp, true, &mut scope)?;
            tmp
        };
        let mut args: Vec<&OsStr> = vec![OsStr::new("send")];
        if let Some(p) = &parent {
            args.extend([OsStr::new("-p"), p.as_os_str()]);
        }
        args.push(sent.as_os_str());
        self.runner.run_into("btrfs", &args, out)?;
        Ok(())
    }

    /// `btrfs receive -C DIR` of one subvolume, then placed as `to` says.
    pub(super) fn receive_stream(
        &self,
        input: &mut dyn Read,
        to: &ReceiveTo<'_>,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(to.name)?;
        let mut fixed;
        let input: &mut dyn Read = match to.base {
            Some(b) => {
                // btrfs finds the parent by UUID; this only names a missing one.
                let at = self.locate(b)?.at;
                if !subvol::is_subvolume(&at) {
                    return Err(BdevError::NotFound {
                        what: "btrfs snapshot",
                        name: b.to_string(),
                    });
                }
                let root = fs::metadata(&at).map_err(BdevError::io("stat", &at))?;
                fixed = KeepRootTimes::new(input, root);
                &mut fixed
            }
            None => input,
        };
        match to.snap {
            Some(snap) => self.receive_snapshot(input, to.name, snap, rv),
            None => self.receive_volume(input, to.name, rv),
        }
    }

    fn receive_snapshot(
        &self,
        input: &mut dyn Read,
        name: &str,
        snap: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(snap)?;
        let dir = self.layout.snapshots_of(name);
        let path = self.layout.snapshot(name, snap);
        if path.exists() {
            return Err(BdevError::Exists {
                what: "btrfs snapshot",
                name: path.display().to_string(),
            });
        }
        if !dir.exists() {
            create_dir_all(&dir)?;
            let d = dir.clone();
            rv.add(format!("remove {}", dir.display()), move || {
                fs::remove_dir(&d)
            });
        }
        let got = receive_one(self, input, &dir)?;
        if got != path {
            // Within one directory a read-only subvolume can be renamed.
            if let Err(e) = fs::rename(&got, &path) {
                if let Err(undo) = subvol::delete(&got) {
                    warn!(path = %got.display(), error = %undo, "could not delete a received snapshot");
                }
                return Err(BdevError::io("rename received snapshot", &got)(e));
            }
        }
        let p = path.clone();
        rv.add(format!("delete subvolume {}", path.display()), move || {
            subvol::delete(&p)
        });
        Ok(BtrfsSpec::spec(path))
    }

    fn receive_volume(
        &self,
        input: &mut dyn Read,
        name: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let path = self.layout.volume(name);
        if path.exists() {
            return Err(BdevError::Exists {
                what: "btrfs subvolume",
                name: path.display().to_string(),
            });
        }
        // Dropped at the end: the received read-only copy and its directory go.
        let mut scope = Revert::new();
        let staging = self.staging(&mut scope)?;
        let got = receive_one(self, input, &staging)?;
        let g = got.clone();
        scope.add(format!("delete subvolume {}", got.display()), move || {
            subvol::delete(&g)
        });
        subvol::snapshot(&got, &path, false, rv)?;
        Ok(BtrfsSpec::spec(path))
    }

    /// Removes what crashed sends and receives left under `.transfer`: the
    /// directories whose owning process is gone.
    pub(super) fn clean_transfers(&self) -> Result<()> {
        let root = self.transfer_root();
        let rd = match fs::read_dir(&root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BdevError::io("read directory", &root)(e)),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_alive(&name) {
                continue;
            }
            debug!(dir = %e.path().display(), "removing a transfer left by a crash");
            remove_staging(&e.path())?;
        }
        let _ = fs::remove_dir(&root);
        Ok(())
    }
}

/// Whether the process a staging directory is named after still runs.
fn owner_alive(name: &str) -> bool {
    let mut parts = name.splitn(3, '-');
    let pid = parts.next().and_then(|p| p.parse::<i32>().ok());
    let start = parts.next().and_then(|s| s.parse::<u64>().ok());
    match (pid, start) {
        (Some(pid), Some(starttime)) => Process { pid, starttime }.alive(),
        _ => false,
    }
}

/// Receives one subvolume into `dir` and returns its path. Whatever a failed
/// or surprising stream made there (a partial subvolume, several) is deleted.
fn receive_one(b: &Btrfs, input: &mut dyn Read, dir: &Path) -> Result<PathBuf> {
    let before = entries(dir)?;
    let args = [OsStr::new("receive"), OsStr::new("-C"), dir.as_os_str()];
    let received = b.runner.run_from("btrfs", &args, input);
    let made: Vec<PathBuf> = entries(dir)?
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let one = match (&received, made.as_slice()) {
        (Ok(_), [one]) => Some(one.clone()),
        _ => None,
    };
    if one.is_none() {
        for p in &made {
            if let Err(e) = subvol::delete(p) {
                warn!(path = %p.display(), error = %e, "could not delete a partly received subvolume");
            }
        }
    }
    received?;
    one.ok_or_else(|| BdevError::Parse {
        what: "btrfs send stream",
        reason: format!(
            "it held {} subvolumes instead of one; berth sends one per stream",
            made.len()
        ),
    })
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(BdevError::io("read directory", dir))?;
    let mut out = Vec::new();
    for e in rd {
        out.push(e.map_err(BdevError::io("read directory", dir))?.path());
    }
    Ok(out)
}

/// Deletes a staging directory and the subvolumes in it.
fn remove_staging(dir: &Path) -> Result<()> {
    for p in entries(dir)? {
        if subvol::is_subvolume(&p) {
            subvol::delete(&p)?;
        } else if p.is_dir() {
            fs::remove_dir_all(&p).map_err(BdevError::io("remove", &p))?;
        } else {
            fs::remove_file(&p).map_err(BdevError::io("remove", &p))?;
        }
    }
    fs::remove_dir(dir).map_err(BdevError::io("remove", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_owners_are_read_from_the_name() {
        let me = Process::of(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(owner_alive(&format!("{}-{}-5", me.pid, me.starttime)));
        assert!(!owner_alive(&format!("{}-{}-5", me.pid, me.starttime + 1)));
        assert!(!owner_alive("junk"));
    }
}
