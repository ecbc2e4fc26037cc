//! Send streams: `zfs send [-i BASE] SNAPSHOT` (a live volume goes through a
//! temporary snapshot `@berth-send-…`) and `zfs recv` into the pool.
//!
//! A stream lands as snapshot `DATASET@SNAP`; for a volume's live state the
//! snapshot is a temporary `@berth-recv-…`, destroyed once received (the
//! dataset keeps its contents). An incremental stream applies to the
//! dataset its base snapshot belongs to, with `-F`: the changes made there
//! since that snapshot are discarded. zfs refuses the stream, changing
//! nothing, when the base is not that dataset's latest snapshot, or when
//! the stream is damaged.

use std::ffi::OsStr;
use std::io::{Read, Write};

use berth_bdev::cmd::{CmdError, CmdOutput};
use berth_bdev::names::validate_name;
use berth_bdev::{BdevError, ReceiveTo, Result, Revert, VolumeSpec};
use tracing::warn;

use super::spec::{VolumeDataset, ZfsSpec};
use super::{parse, Zfs, RESERVED_PREFIX};

/// Prefix of the temporary snapshot `send` sends a live volume through.
const SEND_SNAP_PREFIX: &str = "berth-send-";
/// Prefix of the temporary snapshot a volume's live state is received as.
const RECV_SNAP_PREFIX: &str = "berth-recv-";

/// How many times a `zfs send` is tried when zfs-fuse loses its descriptor.
const LOST_FD_ATTEMPTS: u32 = 3;

/// A writer that counts what passes through it.
struct Counted<'a> {
    inner: &'a mut dyn Write,
    bytes: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A name no other operation of this process uses at the same time.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

impl Zfs {
    pub(super) fn send_stream(
        &self,
        v: &VolumeSpec,
        base: Option<&VolumeSpec>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let t = self.target(v)?;
        let from = match base {
            Some(b) => {
                let b = self.target(b)?;
                if !b.is_snapshot() || b.dataset() != t.dataset() {
                    return Err(BdevError::InvalidSpec {
                        spec: b.at.clone(),
                        reason: format!(
                            "an incremental zfs send needs a snapshot of {} itself as its base \
                             (after a restore, the snapshots stay with the old dataset)",
                            t.dataset()
                        ),
                    });
                }
                Some(b.at)
            }
            None => None,
        };
        let temp =
            (!t.is_snapshot()).then(|| format!("{}@{SEND_SNAP_PREFIX}{}", t.dataset(), unique()));
        if let Some(tmp) = &temp {
            self.zfs(&["snapshot", tmp])?;
        }
        let sent = temp.as_deref().unwrap_or(&t.at);
        let mut args = vec!["send"];
        if let Some(f) = &from {
            args.extend(["-i", f.as_str()]);
        }
        args.push(sent);
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let result = self.send_retrying(&args, out);
        if let Some(tmp) = &temp {
            if let Err(e) = self.destroy_dataset(tmp, false) {
                warn!(snapshot = %tmp, error = %e, "could not destroy the temporary send snapshot");
            }
        }
        result?;
        Ok(())
    }

    /// `zfs send ARGS` into `out`, run again (up to [`LOST_FD_ATTEMPTS`]
    /// times) when zfs-fuse lost the passed descriptor before a byte was
    /// written: a retry then cannot duplicate any of the stream.
    fn send_retrying(
        &self,
        args: &[&OsStr],
        out: &mut dyn Write,
    ) -> std::result::Result<CmdOutput, CmdError> {
        let mut attempt = 1;
        loop {
            let mut counted = Counted {
                inner: out,
                bytes: 0,
            };
            match self.runner.run_into("zfs", args, &mut counted) {
                Err(e)
                    if counted.bytes == 0
                        && parse::is_lost_descriptor(e.stderr())
                        && attempt < LOST_FD_ATTEMPTS =>
                {
                    warn!(attempt, error = %e, "zfs-fuse lost the send's descriptor; sending again");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    pub(super) fn receive_stream(
        &self,
        input: &mut dyn Read,
        to: &ReceiveTo<'_>,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        validate_name(to.name)?;
        if let Some(s) = to.snap {
            validate_name(s)?;
            if s.starts_with(RESERVED_PREFIX) {
                return Err(BdevError::InvalidName {
                    name: s.to_owned(),
                    reason: format!(
                        "snapshot names starting with {RESERVED_PREFIX:?} are berth's own"
                    ),
                });
            }
        }
        let dataset = match to.replaces {
            Some(r) => {
                let t = self.target(r)?;
                t.refuse_snapshot(r, "replaced", "receive into its volume")?;
                t.dataset().to_owned()
            }
            None => format!("{}/{}", self.parent, to.name),
        };
        let base = to.base.map(|b| self.target(b)).transpose()?;
        if let Some(b) = &base {
            if !b.is_snapshot() || b.dataset() != dataset {
                return Err(BdevError::InvalidSpec {
                    spec: b.at.clone(),
                    reason: format!("the base of a stream into {dataset} must be a snapshot of it"),
                });
            }
        }
        let snap = match to.snap {
            Some(s) => s.to_owned(),
            None => format!("{RECV_SNAP_PREFIX}{}", unique()),
        };
        let target = format!("{dataset}@{snap}");
        let mut args = vec!["recv", "-u"];
        if base.is_some() {
            // Back to the base first: the stream applies to it.
            args.push("-F");
        }
        args.push(&target);
        let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        self.runner
            .run_from("zfs", &os, input)
            .map_err(|e| explain(e, &dataset))?;
        match &base {
            None => {
                let (this, ds) = (self.clone(), dataset.clone());
                rv.add(format!("destroy {dataset}"), move || {
                    this.destroy_dataset(&ds, true)
                });
                // canmount first: a mountpoint set while it is `on` could mount it.
                self.zfs(&["set", "canmount=noauto", &dataset])?;
                let mp = format!("mountpoint={}", self.mountpoint_str(to.name));
                self.zfs(&["set", &mp, &dataset])?;
                self.ensure_unmounted(&dataset)?;
            }
            Some(b) => {
                // Undoing a receive in place can only go back to the base.
                let (this, at) = (self.clone(), b.at.clone());
                rv.add(format!("roll {dataset} back to {}", b.at), move || {
                    this.zfs(&["rollback", "-r", &at]).map(drop)
                });
                if to.snap.is_some() {
                    let (this, t) = (self.clone(), target.clone());
                    rv.add(format!("destroy {target}"), move || {
                        this.destroy_dataset(&t, false)
                    });
                }
            }
        }
        if to.snap.is_none() {
            self.destroy_dataset(&target, false)?;
            return Ok(ZfsSpec::spec(dataset));
        }
        Ok(ZfsSpec::spec(target))
    }
}

/// A refused stream, said in berth's terms where zfs's words are known.
fn explain(e: berth_bdev::cmd::CmdError, dataset: &str) -> BdevError {
    let stderr = e.stderr();
    if parse::is_exists(stderr) {
        return BdevError::Exists {
            what: "zfs dataset",
            name: dataset.to_owned(),
        };
    }
    if stderr.contains("does not match incremental source")
        || stderr.contains("most recent snapshot")
    {
        return BdevError::InvalidSpec {
            spec: dataset.to_owned(),
            reason: format!(
                "zfs refused the incremental stream ({}); it applies only on top of the \
                 dataset's latest snapshot, the one it was made against",
                stderr.trim()
            ),
        };
    }
    e.into()
}
