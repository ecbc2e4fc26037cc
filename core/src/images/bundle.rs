//! The export bundle: what `berth export` writes and `berth import` reads.
//!
//! A tar (plain, gzip or zstd) whose first entry is `berth-export.toml`
//! ([`Manifest`]: what is inside, with the content digest of every tree)
//! and whose other entries carry the streams it lists, in order. A stream
//! (a layer tar, or a backend's native send stream) is cut into parts of at
//! most [`PART_SIZE`] bytes, because a tar entry's size comes before its data
//! and a stream's size is known only at its end:
//!
//! ```text
//! berth-export.toml
//! streams/00-snap0/000000         first part of the first stream
//! streams/00-snap0/end            "sha256:HEX BYTES": its checksum and length
//! streams/01-rootfs/000000
//! streams/01-rootfs/000001
//! streams/01-rootfs/end
//! ```
//!
//! `tar xf` unpacks it with any tool; `cat streams/01-rootfs/0*` is the
//! stream again. The reader takes nothing on trust: the manifest is size
//! capped and checked, parts must come in order, and a stream's checksum and
//! length are checked at its end; what it was applied to is the caller's to
//! throw away when anything fails.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::digest::hex;
use crate::confine::RunConfig;

/// The format version this berth writes and reads.
pub const FORMAT: u32 = 1;
/// The manifest's entry name.
pub const MANIFEST: &str = "berth-export.toml";
/// The most bytes of a stream one entry holds (and the writer buffers).
pub const PART_SIZE: usize = 16 << 20;
/// The largest manifest read; a real one is a few KiB.
const MANIFEST_MAX: u64 = 1 << 20;
/// `encoding` of a portable bundle: layer tars.
pub const PORTABLE: &str = "tar";

/// What a bundle holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// "container", or "image" (`berth export --image`).
    pub kind: String,
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// "tar" for layer tars, else the backend whose `receive` reads the
    /// streams (its `send` wrote them).
    pub encoding: String,
    /// The backend of the pool it was exported from.
    pub source_backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// [`super::digest::rootfs_digest`] of the root filesystem.
    pub digest: String,
    /// Bytes of files in the largest of its trees: how big a block-backed
    /// volume must be.
    pub bytes: u64,
    /// The size limit of the volume it came from, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// An incremental bundle: the snapshot its root filesystem stream
    /// applies on top of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Base>,
    /// Snapshots, oldest first; the streams carry them before the rootfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotMeta>,
    pub streams: Vec<StreamMeta>,
    /// A container's limits and security settings.
    #[serde(default)]
    pub run: RunConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub snapshot: String,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub name: String,
    pub created: u64,
    pub digest: String,
}

/// One stream: the tree it carries (a snapshot, else the root filesystem)
/// and the snapshot it holds the changes since, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

impl Manifest {
    /// The streams for `snapshots` (each against the one before) and then
    /// the root filesystem (against the last snapshot, or `since`).
    pub fn plan_streams(snapshots: &[String], since: Option<&str>) -> Vec<StreamMeta> {
        let mut out = Vec::new();
        let mut base = since.map(str::to_owned);
        for (i, s) in snapshots.iter().enumerate() {
            out.push(StreamMeta {
                path: format!("streams/{i:02}-{s}"),
                snapshot: Some(s.clone()),
                base: base.replace(s.clone()),
            });
        }
        out.push(StreamMeta {
            path: format!("streams/{:02}-rootfs", snapshots.len()),
            snapshot: None,
            base,
        });
        out
    }

    /// Refuses a manifest that is not one this berth wrote: another format
    /// version, bad names or digests, streams that do not match the trees.
    pub fn check(&self) -> Result<(), TransferError> {
        let bad = |reason: String| Err(TransferError::BadManifest { reason });
        if self.format != FORMAT {
            return Err(TransferError::Version { found: self.format });
        }
        if self.kind != "container" && self.kind != "image" {
            return bad(format!(
                "kind {:?} is neither \"container\" nor \"image\"",
                self.kind
            ));
        }
        let names = std::iter::once(&self.name)
            .chain(self.snapshots.iter().map(|s| &s.name))
            .chain(self.since.iter().map(|b| &b.snapshot));
        for n in names {
            if let Err(e) = berth_bdev::names::validate_name(n) {
                return bad(e.to_string());
            }
        }
        let digests = std::iter::once(&self.digest)
            .chain(self.snapshots.iter().map(|s| &s.digest))
            .chain(self.since.iter().map(|b| &b.digest));
        for d in digests {
            if !is_digest(d) {
                return bad(format!("{d:?} is not a sha256 digest"));
            }
        }
        if self.since.is_some() && !self.snapshots.is_empty() {
            return bad("an incremental export carries no snapshots".to_owned());
        }
        let names: Vec<String> = self.snapshots.iter().map(|s| s.name.clone()).collect();
        let expected = Self::plan_streams(&names, self.since.as_ref().map(|b| b.snapshot.as_str()));
        if self.streams != expected {
            return bad("its streams do not match its snapshots".to_owned());
        }
        Ok(())
    }

    pub fn is_portable(&self) -> bool {
        self.encoding == PORTABLE
    }
}

/// "sha256:" and 64 lowercase hex digits.
pub fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// What is wrong with a bundle, or with where it was to go.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the input is not a berth export: {reason}")]
    NotABundle { reason: String },

    #[error("the export is format version {found}; this berth reads version {FORMAT}: import it with the berth that wrote it, or a newer one")]
    Version { found: u32 },

    #[error("the export's {MANIFEST} is not valid: {reason}")]
    BadManifest { reason: String },

    #[error("the export ends in the middle of {stream}: it was cut off; export it again")]
    Truncated { stream: String },

    #[error(
        "the export holds {entry:?} where {expected} should be: it is damaged or was tampered with"
    )]
    Unexpected { entry: String, expected: String },

    #[error("{stream} does not match its checksum: the export is damaged or was tampered with; nothing was kept")]
    StreamChecksum { stream: String },

    #[error("imported, {what} digests as {found}, but the export says {expected}: it is damaged or was tampered with; nothing was kept")]
    TreeDigest {
        what: String,
        expected: String,
        found: String,
    },

    #[error("container {name:?} has no snapshot {snap:?}, which this incremental export applies on top of; import the full export first")]
    NoBase { name: String, snap: String },

    #[error("snapshot {name}@{snap} is not the one this incremental export was made against (its digest is {found}, the export's {expected}); import the full export instead")]
    BaseMismatch {
        name: String,
        snap: String,
        expected: String,
        found: String,
    },

    #[error("this export is a {encoding} send stream, which only a {encoding} pool can receive ({pool} is {backend}); import it into a {encoding} pool (--pool), or export again with --portable")]
    NativeElsewhere {
        encoding: String,
        pool: String,
        backend: String,
    },
}

/// Writes a bundle into `out` (already compressed as wanted).
pub struct BundleWriter<W: Write> {
    b: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> BundleWriter<W> {
    /// Starts the bundle with its manifest.
    pub fn new(out: W, manifest: &Manifest) -> io::Result<Self> {
        let text = toml::to_string_pretty(manifest).map_err(io::Error::other)?;
        let mut w = BundleWriter {
            b: tar::Builder::new(out),
            mtime: manifest.created,
        };
        w.entry(MANIFEST, text.as_bytes())?;
        Ok(w)
    }

    fn entry(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(self.mtime);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data)
    }

    /// Starts the stream at `path` (from the manifest): write it into the
    /// returned writer, then [`StreamWriter::end`] it.
    pub fn stream<'w>(&'w mut self, path: &'w str) -> StreamWriter<'w, W> {
        StreamWriter {
            w: self,
            path,
            buf: Vec::with_capacity(PART_SIZE),
            next: 0,
            hasher: Sha256::new(),
            total: 0,
        }
    }

    /// Ends the archive; returns the writer for the caller to finish (a
    /// compressor's trailer, a sync).
    pub fn finish(self) -> io::Result<W> {
        self.b.into_inner()
    }
}

/// A stream being cut into parts.
pub struct StreamWriter<'w, W: Write> {
    w: &'w mut BundleWriter<W>,
    path: &'w str,
    buf: Vec<u8>,
    next: usize,
    hasher: Sha256,
    total: u64,
}

impl<W: Write> StreamWriter<'_, W> {
    fn flush_part(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let name = format!("{}/{:06}", self.path, self.next);
        let data = std::mem::take(&mut self.buf);
        self.w.entry(&name, &data)?;
        self.buf = data;
        self.buf.clear();
        self.next += 1;
        Ok(())
    }

    /// Writes the last part and the checksum; returns the stream's length.
    pub fn end(mut self) -> io::Result<u64> {
        self.flush_part()?;
        let sum = format!(
            "sha256:{} {}\n",
            hex(&std::mem::take(&mut self.hasher).finalize()),
            self.total
        );
        let name = format!("{}/end", self.path);
        self.w.entry(&name, sum.as_bytes())?;
        Ok(self.total)
    }
}

impl<W: Write> Write for StreamWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PART_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.total += n as u64;
        if self.buf.len() == PART_SIZE {
            self.flush_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a bundle: the manifest first, then its streams in order.
pub struct BundleReader<'a, R: Read + 'a> {
    entries: tar::Entries<'a, R>,
    pub manifest: Manifest,
    next: usize,
}

impl<'a, R: Read + 'a> BundleReader<'a, R> {
    /// Reads and checks the manifest.
    pub fn open(archive: &'a mut tar::Archive<R>) -> Result<Self, TransferError> {
        let not = |reason: String| TransferError::NotABundle { reason };
        let mut entries = archive
            .entries()
            .map_err(|e| not(format!("cannot read it as a tar archive: {e}")))?;
        let first = entries
            .next()
            .ok_or_else(|| not("it is empty".to_owned()))?
            .map_err(|e| not(format!("cannot read it as a tar archive: {e}")))?;
        if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
            return Err(not(format!(
                "its first entry is {:?}, not {MANIFEST}",
                String::from_utf8_lossy(&first.path_bytes())
            )));
        }
        if first.size() > MANIFEST_MAX {
            return Err(TransferError::BadManifest {
                reason: format!("it declares {} bytes", first.size()),
            });
        }
        let mut text = String::new();
        first
            .take(MANIFEST_MAX)
            .read_to_string(&mut text)
            .map_err(|e| TransferError::BadManifest {
                reason: format!("cannot read it: {e}"),
            })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| TransferError::BadManifest {
            reason: e.to_string(),
        })?;
        manifest.check()?;
        Ok(BundleReader {
            entries,
            manifest,
            next: 0,
        })
    }

    /// The next stream, to be read to its end and then [`StreamReader::finish`]ed.
    pub fn next_stream(&mut self) -> Option<StreamReader<'_, 'a, R>> {
        let meta = self.manifest.streams.get(self.next)?.clone();
        self.next += 1;
        Some(StreamReader {
            entries: &mut self.entries,
            path: meta.path,
            current: None,
            left: 0,
            part: 0,
            hasher: Sha256::new(),
            total: 0,
            state: State::Reading,
        })
    }
}

enum State {
    Reading,
    Done,
    Failed(TransferError),
}

/// One stream of a bundle, its parts read in order.
pub struct StreamReader<'r, 'a, R: Read + 'a> {
    entries: &'r mut tar::Entries<'a, R>,
    path: String,
    current: Option<tar::Entry<'a, R>>,
    /// Bytes the current part declares and has not yet given.
    left: u64,
    part: usize,
    hasher: Sha256,
    total: u64,
    state: State,
}

impl<R: Read> StreamReader<'_, '_, R> {
    /// Reads what the consumer left (a tar's end blocks), then checks the
    /// stream's length and checksum; the error of a read that failed on the
    /// bundle's side comes first.
    pub fn finish(mut self) -> Result<(), TransferError> {
        let drained = io::copy(&mut self, &mut io::sink());
        match std::mem::replace(&mut self.state, State::Done) {
            State::Failed(e) => Err(e),
            _ => drained.map(drop).map_err(|e| TransferError::NotABundle {
                reason: format!("cannot read {}: {e}", self.path),
            }),
        }
    }

    /// The bundle-side error that made a read fail, if one did: a consumer
    /// (`apply_layer`, `zfs recv`) reports it only as text.
    pub fn failure(&mut self) -> Option<TransferError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Failed(e) => Some(e),
            other => {
                self.state = other;
                None
            }
        }
    }

    fn fail(&mut self, e: TransferError) -> io::Error {
        let err = io::Error::other(e.to_string());
        self.state = State::Failed(e);
        err
    }

    /// Moves to the next part, or checks the end.
    fn advance(&mut self) -> io::Result<()> {
        let entry = match self.entries.next() {
            None => {
                let stream = self.path.clone();
                return Err(self.fail(TransferError::Truncated { stream }));
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let stream = self.path.clone();
                return Err(self.fail(TransferError::Truncated { stream }));
            }
            Some(Err(e)) => {
                return Err(self.fail(TransferError::NotABundle {
                    reason: format!("cannot read the entry after {}: {e}", self.path),
                }))
            }
            Some(Ok(e)) => e,
        };
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if name == format!("{}/{:06}", self.path, self.part) {
            self.part += 1;
            self.left = entry.size();
            self.current = Some(entry);
            return Ok(());
        }
        if name != format!("{}/end", self.path) {
            let expected = format!("part {} of {}", self.part, self.path);
            return Err(self.fail(TransferError::Unexpected {
                entry: name,
                expected,
            }));
        }
        let declared = entry.size();
        let mut end = String::new();
        let read = entry.take(256).read_to_string(&mut end);
        if read.as_ref().is_ok_and(|n| (*n as u64) < declared.min(256)) {
            let stream = self.path.clone();
            return Err(self.fail(TransferError::Truncated { stream }));
        }
        let sum = format!(
            "sha256:{} {}",
            hex(&std::mem::take(&mut self.hasher).finalize()),
            self.total
        );
        if read.is_err() || end.trim_end() != sum {
            let stream = self.path.clone();
            self.state = State::Failed(TransferError::StreamChecksum { stream });
        } else {
            self.state = State::Done;
        }
        Ok(())
    }
}

impl<R: Read> Read for StreamReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &self.state {
                State::Reading => {}
                // The checksum is judged by `finish`; the stream itself ends.
                State::Done | State::Failed(_) => return Ok(0),
            }
            if let Some(cur) = &mut self.current {
                let n = cur.read(buf)?;
                if n > 0 {
                    self.hasher.update(&buf[..n]);
                    self.total += n as u64;
                    self.left = self.left.saturating_sub(n as u64);
                    return Ok(n);
                }
                self.current = None;
                if self.left > 0 {
                    let stream = self.path.clone();
                    return Err(self.fail(TransferError::Truncated { stream }));
                }
            }
            self.advance()?;
        }
    }
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
