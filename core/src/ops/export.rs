//! `berth export`: a container's root filesystem, with its snapshots, as a
//! bundle ([`crate::images::bundle`]) that `berth import` turns back into
//! the same container, bit for bit, in any pool.
//!
//! Portable bundles carry layer tars: the first snapshot whole, each later
//! one as the changes since the one before, the root filesystem as the
//! changes since the last snapshot (or whole). Native bundles carry the
//! backend's own send streams (`Caps::send_stream`), chained the same way.
//! `--since SNAP` sends only the root filesystem's changes since a snapshot
//! the importing side holds too.
//!
//! Every tree's content digest goes into the manifest, which leads the
//! bundle, so the trees are digested before they are sent; the import
//! checks each one it makes against it.

use std::io::{self, Write};
use std::path::Path;

use berth_bdev::fsutil::allocated_bytes;
use berth_bdev::generic::with_mounted;
use berth_bdev::BdevError;
use berth_bdev::{Backend, VolumeSpec};

use super::lifecycle::Frozen;
use super::Berth;
use crate::error::{BerthError, Result};
use crate::images::bundle::{BundleWriter, Manifest, SnapshotMeta, FORMAT, PORTABLE};
use crate::images::digest::rootfs_digest;
use crate::images::pack::{pack_changes, pack_tree};
use crate::images::tree::{changes, Tree};
use crate::store::{now, Snapshot};

/// How the bundle is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compress {
    /// What a file name's suffix asks for: `.gz`/`.tgz` gzip, `.zst`/`.tzst`
    /// zstd, anything else none.
    pub fn for_path(path: &Path) -> Compress {
        let name = path.to_string_lossy();
        if name.ends_with(".gz") || name.ends_with(".tgz") {
            Compress::Gzip
        } else if name.ends_with(".zst") || name.ends_with(".tzst") {
            Compress::Zstd
        } else {
            Compress::None
        }
    }
}

/// Which streams a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// The backend's own streams where it has them, else portable.
    #[default]
    Auto,
    /// Layer tars, which any pool can import.
    Portable,
    /// The backend's send streams, which only a pool of the same backend
    /// can import; refused where the backend has none.
    Native,
}

#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    pub compress: Compress,
    pub encoding: Encoding,
    /// Only the changes since this snapshot (no snapshots sent).
    pub since: Option<String>,
    /// Leave the snapshots out.
    pub without_snapshots: bool,
    /// A running detached container is frozen for the export (else refused).
    pub freeze: bool,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// "tar", or the backend whose send streams it holds.
    pub encoding: String,
    /// Each stream's path in the bundle and its length, uncompressed.
    pub streams: Vec<(String, u64)>,
    /// Bytes written to the output, compressed.
    pub bytes: u64,
}

/// A volume to export, and the snapshots to send with it: what an export of
/// anything that lives in a pool (a container, an image's copy) starts from.
pub struct ExportSource<'a> {
    pub backend: &'a dyn Backend,
    pub volume: &'a VolumeSpec,
    /// Sent oldest first, each as the changes since the one before.
    pub snapshots: &'a [Snapshot],
    /// Send only the changes since this snapshot (then `snapshots` is empty).
    pub since: Option<&'a Snapshot>,
}

impl Berth {
    /// Exports container `name` into `out`; see the module documentation.
    pub fn export(
        &self,
        name: &str,
        req: &ExportRequest,
        out: &mut dyn Write,
    ) -> Result<ExportSummary> {
        let _locks = self.lock_containers(&[], &[name])?;
        let c = self.store().container(name)?;
        let since = req.since.as_deref().map(|s| c.snapshot(s)).transpose()?;
        let snapshots: &[Snapshot] = if since.is_some() || req.without_snapshots {
            &[]
        } else {
            &c.snapshots
        };
        let running = self.running_detached(name)?;
        if running.is_some() && !req.freeze {
            return Err(BerthError::Busy {
                name: name.to_owned(),
                state: "running",
                hint: "its files would change under the export; stop it, or pass --freeze \
                       to freeze it for the whole export",
            });
        }
        let backend = self.backend_of(&c)?;
        let manifest = Manifest {
            format: FORMAT,
            kind: "container".to_owned(),
            name: name.to_owned(),
            created: now(),
            encoding: String::new(),
            source_backend: String::new(),
            template: c.template.clone(),
            digest: String::new(),
            bytes: 0,
            size: None,
            since: None,
            snapshots: Vec::new(),
            streams: Vec::new(),
            // An address is the container's own on this host.
            run: crate::confine::RunConfig {
                ipv4: None,
                ..c.run.clone()
            },
        };
        let src = ExportSource {
            backend: backend.as_ref(),
            volume: &c.volume,
            snapshots,
            since,
        };
        // Exports take long: other commands may use the store meanwhile.
        self.store().unlocked(|| {
            let _frozen = running.as_ref().map(Frozen::new).transpose()?;
            self.export_volume(&src, manifest, req, out)
                .map_err(or_interrupted)
        })
    }

    /// Exports `src` into `out` as a bundle whose manifest is `manifest`
    /// with the trees' facts (digests, streams, sizes) filled in.
    pub fn export_volume(
        &self,
        src: &ExportSource<'_>,
        mut manifest: Manifest,
        req: &ExportRequest,
        out: &mut dyn Write,
    ) -> Result<ExportSummary> {
        let caps = src.backend.caps();
        let native = match req.encoding {
            Encoding::Auto => caps.send_stream,
            Encoding::Portable => false,
            Encoding::Native if caps.send_stream => true,
            Encoding::Native => {
                return Err(BerthError::Invalid(format!(
                    "the {} backend has no native send streams; export with --portable",
                    src.backend.name()
                )))
            }
        };
        manifest.encoding = if native {
            src.backend.name().to_owned()
        } else {
            PORTABLE.to_owned()
        };
        manifest.source_backend = src.backend.name().to_owned();
        manifest.size = src
            .backend
            .usage(src.volume)
            .ok()
            .and_then(|u| u.limit_bytes);
        // The manifest leads the bundle: every tree is digested first.
        let (digest, mut bytes) = self.facts(src.backend, src.volume)?;
        manifest.digest = digest;
        for s in src.snapshots {
            let (digest, b) = self.facts(src.backend, &s.volume)?;
            bytes = bytes.max(b);
            manifest.snapshots.push(SnapshotMeta {
                name: s.name.clone(),
                created: s.created,
                digest,
            });
        }
        if let Some(s) = src.since {
            manifest.since = Some(crate::images::bundle::Base {
                snapshot: s.name.clone(),
                digest: self.facts(src.backend, &s.volume)?.0,
            });
        }
        manifest.bytes = bytes;
        let names: Vec<String> = src.snapshots.iter().map(|s| s.name.clone()).collect();
        manifest.streams = Manifest::plan_streams(&names, src.since.map(|s| s.name.as_str()));

        let mut counted = Counted { inner: out, n: 0 };
        let mut z = Compressor::new(&mut counted, req.compress).map_err(write_err)?;
        let mut w = BundleWriter::new(&mut z, &manifest).map_err(write_err)?;
        let mut streams = Vec::new();
        let mut base: Option<&VolumeSpec> = src.since.map(|s| &s.volume);
        let trees = src
            .snapshots
            .iter()
            .map(|s| &s.volume)
            .chain(std::iter::once(src.volume));
        for (meta, tree) in manifest.streams.iter().zip(trees) {
            let mut sink = w.stream(&meta.path);
            if native {
                src.backend.send(tree, base, &mut sink)?;
            } else {
                self.pack(src.backend, tree, base, &mut sink)?;
            }
            streams.push((meta.path.clone(), sink.end().map_err(write_err)?));
            base = Some(tree);
        }
        w.finish().map_err(write_err)?;
        z.finish().map_err(write_err)?;
        counted.flush().map_err(write_err)?;
        Ok(ExportSummary {
            encoding: manifest.encoding,
            streams,
            bytes: counted.n,
        })
    }

    /// The rootfs digest of `v` and the bytes its files take.
    fn facts(&self, b: &dyn Backend, v: &VolumeSpec) -> Result<(String, u64)> {
        self.in_mounted(b, v, true, |root| {
            let digest = rootfs_digest(root)?;
            Ok((digest, allocated_bytes(root)?))
        })
    }

    /// One portable stream: `tree` whole, or its changes since `base`.
    fn pack(
        &self,
        b: &dyn Backend,
        tree: &VolumeSpec,
        base: Option<&VolumeSpec>,
        sink: &mut dyn Write,
    ) -> Result<()> {
        self.in_mounted(b, tree, true, |root| {
            let new = Tree::walk(root)?;
            match base {
                None => pack_tree(&new, sink).map(drop).map_err(Into::into),
                Some(base) => self.in_mounted(b, base, true, |old| {
                    let ch = changes(&Tree::walk(old)?, &new)?;
                    pack_changes(&new, &ch, &mut *sink)?;
                    Ok(())
                }),
            }
        })
    }

    /// Runs `f` on the mounted root of `v` (see `with_mounted`); `f`'s error
    /// wins over an unmount's.
    pub(super) fn in_mounted<T>(
        &self,
        b: &dyn Backend,
        v: &VolumeSpec,
        read_only: bool,
        f: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<T> {
        let mut out = None;
        let mounted = with_mounted(b, v, &self.scratch(), read_only, |root| {
            out = Some(f(root));
            Ok(())
        });
        match out {
            Some(Err(e)) => Err(e),
            Some(Ok(v)) => mounted.map(|()| v).map_err(Into::into),
            None => Err(mounted.err().map_or_else(
                || BerthError::Invalid("the volume was never mounted".to_owned()),
                Into::into,
            )),
        }
    }
}

fn write_err(e: io::Error) -> BerthError {
    BerthError::Io {
        op: "write the export",
        path: "-".into(),
        source: e,
    }
}

/// Counts what reaches the output; stops at a Ctrl-C.
struct Counted<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

/// The error a stream stops with once the user asked berth to stop: the
/// operation fails at that safe point and its undo steps run.
pub(super) fn check_interrupt() -> io::Result<()> {
    if crate::interrupt::requested() {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    Ok(())
}

/// `e`, or `Interrupted` when the user asked berth to stop (a stream that
/// stopped for it fails with whatever error its reader made of that).
pub(super) fn or_interrupted(e: BerthError) -> BerthError {
    if crate::interrupt::requested() {
        BdevError::Interrupted.into()
    } else {
        e
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check_interrupt()?;
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The output, compressed as asked; `finish` writes the trailer.
enum Compressor<'a> {
    Plain(&'a mut dyn Write),
    Gzip(flate2::write::GzEncoder<&'a mut dyn Write>),
    Zstd(zstd::stream::write::Encoder<'static, &'a mut dyn Write>),
}

impl<'a> Compressor<'a> {
    fn new(out: &'a mut dyn Write, c: Compress) -> io::Result<Self> {
        Ok(match c {
            Compress::None => Compressor::Plain(out),
            Compress::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compress::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
        })
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(g) => g.finish()?.flush(),
            Compressor::Zstd(z) => z.finish()?.flush(),
        }
    }
}

impl Write for Compressor<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_follows_the_suffix() {
        for (name, c) in [
            ("c1.tar", Compress::None),
            ("c1.tar.gz", Compress::Gzip),
            ("c1.tgz", Compress::Gzip),
            ("c1.tar.zst", Compress::Zstd),
            ("-", Compress::None),
        ] {
            assert_eq!(Compress::for_path(Path::new(name)), c, "{name}");
        }
    }
}
