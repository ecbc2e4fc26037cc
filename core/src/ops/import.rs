//! `berth import`: a bundle `berth export` wrote becomes a container again,
//! or, for an incremental bundle, the new state of the container that holds
//! its base snapshot.
//!
//! A full import is journaled like `create`: its volume and snapshots are
//! made, each tree is checked against the manifest's digest, and only then
//! is the record written; a failure, an interruption or a digest mismatch
//! leaves no volume and no record. An incremental import builds the new
//! state beside the current one (as `restore` does) from the base snapshot,
//! whose digest must match the one the export was made against, and
//! switches the record to it in one step; a backend that receives in place
//! (zfs) does so atomically.

use std::io::Read;

use berth_bdev::copy::Progress;
use berth_bdev::space::copy_size;
use berth_bdev::{Backend, CreateOpts, PoolConfig, ReceiveTo, Revert, VolumeSpec};
use rustix::fs::{open, syncfs, Mode, OFlags};
use tracing::warn;

use super::export::{check_interrupt, or_interrupted};
use super::snapshot::unique_suffix;
use super::Berth;
use crate::error::{BerthError, Result};
use crate::images::bundle::{BundleReader, Manifest, StreamReader, TransferError};
use crate::images::digest::rootfs_digest;
use crate::images::record::validate_container_name;
use crate::images::{apply_layer, ApplyOpts};
use crate::journal::{self, Commit, Intent, Planned};
use crate::store::{now, Container, Snapshot, DEFAULT_POOL};

#[derive(Debug, Clone, Default)]
pub struct ImportRequest {
    /// The container's name (default: the exported one's).
    pub name: Option<String>,
    pub pool: Option<String>,
    /// A backend's registry name (`-B`).
    pub backend: Option<String>,
    /// Size of a block-backed volume (default: sized from the data).
    pub size: Option<u64>,
    /// The container runs in a user namespace, and its rootfs may hold no
    /// device nodes: a bundle that carries one is refused.
    pub unprivileged: bool,
    /// Leave the snapshots out (portable bundles only).
    pub without_snapshots: bool,
}

/// What an import made.
#[derive(Debug, Clone)]
pub struct Imported {
    pub container: Container,
    /// The snapshot an incremental bundle was applied on top of.
    pub since: Option<String>,
    /// "tar", or the backend whose send streams it held.
    pub encoding: String,
}

impl Berth {
    /// Imports the bundle read from `input` (plain, gzip or zstd).
    pub fn import(
        &self,
        input: &mut dyn Read,
        req: &ImportRequest,
        progress: &dyn Progress,
    ) -> Result<Imported> {
        self.import_from(&mut Interruptible(input), req, progress)
            .map_err(or_interrupted)
    }

    fn import_from(
        &self,
        input: &mut dyn Read,
        req: &ImportRequest,
        progress: &dyn Progress,
    ) -> Result<Imported> {
        let mut archive = tar::Archive::new(crate::images::layer::decompress(input)?);
        let mut bundle = BundleReader::open(&mut archive)?;
        let m = bundle.manifest.clone();
        self.import_bundle(&mut bundle, &m, req, progress)
    }

    /// A container's bundle, its manifest `m` read: a new container, or the
    /// changes an incremental one carries.
    pub(super) fn import_bundle<R: Read>(
        &self,
        bundle: &mut BundleReader<'_, R>,
        m: &Manifest,
        req: &ImportRequest,
        progress: &dyn Progress,
    ) -> Result<Imported> {
        if m.kind != "container" {
            return Err(BerthError::Invalid(format!(
                "the export holds an {}, not a container: import it with `berth import` (the CLI tells them apart)",
                m.kind
            )));
        }
        let name = req.name.clone().unwrap_or_else(|| m.name.clone());
        validate_container_name(&name)?;
        let container = match &m.since {
            None => self.import_full(bundle, m, &name, req)?,
            Some(_) => self.import_changes(bundle, m, &name, req, progress)?,
        };
        Ok(Imported {
            container,
            since: m.since.as_ref().map(|b| b.snapshot.clone()),
            encoding: m.encoding.clone(),
        })
    }

    fn import_full<R: Read>(
        &self,
        bundle: &mut BundleReader<'_, R>,
        m: &Manifest,
        name: &str,
        req: &ImportRequest,
    ) -> Result<Container> {
        let _locks = self.lock_containers(&[name], &[])?;
        if self.store().exists(name) {
            return Err(BerthError::ContainerExists(name.to_owned()));
        }
        let pool = self.import_pool(m, req)?;
        let backend = self.backend(&pool)?;
        let keep_snaps = !req.without_snapshots;
        if !m.is_portable() && !keep_snaps && !m.snapshots.is_empty() {
            return Err(BerthError::Invalid(
                "a native export's streams build on its snapshots: --without-snapshots works \
                 with portable exports only"
                    .to_owned(),
            ));
        }
        if keep_snaps && !m.snapshots.is_empty() && !backend.caps().snapshot {
            return Err(BerthError::Invalid(format!(
                "pool {:?} cannot take snapshots and the export holds {}; import it with \
                 --without-snapshots, or into another pool",
                pool.name,
                m.snapshots.len()
            )));
        }
        let unprivileged = req.unprivileged || m.run.userns;
        if unprivileged && !m.is_portable() {
            return Err(BerthError::Invalid(
                "an unprivileged import must check every entry for device nodes, which a \
                 native stream does not let it; export with --portable"
                    .to_owned(),
            ));
        }
        let mut intent = Intent::new("import", name, Commit::RecordExists);
        // Snapshots first: recovery destroys in this order.
        for s in m.snapshots.iter().filter(|_| keep_snaps) {
            intent.creates.push(Planned {
                pool: pool.name.clone(),
                name: name.to_owned(),
                snap: Some(s.name.clone()),
            });
        }
        intent.creates.push(Planned {
            pool: pool.name.clone(),
            name: name.to_owned(),
            snap: None,
        });
        let opts = ApplyOpts {
            allow_devices: !unprivileged,
        };
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let to = Dest {
                name,
                pool: &pool,
                backend: backend.as_ref(),
            };
            let (volume, snapshots) = self.store().unlocked(|| {
                if m.is_portable() {
                    return self.apply_all(bundle, m, &to, req, &opts, &mut rv);
                }
                let got = self.receive_all(bundle, m, name, backend.as_ref(), &mut rv)?;
                // A stream carries no size limit: the one asked, or the
                // source's, is set again.
                let caps = backend.caps();
                if let (Some(size), true) = (req.size.or(m.size), caps.size_limit && caps.resize) {
                    backend.resize(&got.0, size)?;
                }
                Ok(got)
            })?;
            journal::crash_point("import", "made");
            let c = Container {
                name: name.to_owned(),
                pool: pool.name.clone(),
                volume,
                created: now(),
                template: m.template.clone(),
                origin: None,
                ephemeral: false,
                snapshots,
                volume_name: None,
                // An image record is this host's: the rootfs came whole.
                image: None,
                run: crate::confine::RunConfig {
                    ipv4: None,
                    userns: unprivileged,
                    ..m.run.clone()
                },
            };
            self.store().save(&c)?;
            journal::crash_point("import", "recorded");
            rv.commit();
            Ok(c)
        })
    }

    /// The pool a full import goes to: `--pool`/`-B`, else for native
    /// streams the only pool of their backend, else the default pool.
    pub(super) fn import_pool(&self, m: &Manifest, req: &ImportRequest) -> Result<PoolConfig> {
        let wanted = match (&req.backend, m.is_portable()) {
            (Some(b), _) => Some(b.as_str()),
            (None, false) if req.pool.is_none() => Some(m.encoding.as_str()),
            _ => None,
        };
        let pool = self.resolve_pool(req.pool.as_deref(), wanted, DEFAULT_POOL)?;
        if !m.is_portable() && pool.backend != m.encoding {
            return Err(TransferError::NativeElsewhere {
                encoding: m.encoding.clone(),
                pool: pool.name.clone(),
                backend: pool.backend.clone(),
            }
            .into());
        }
        Ok(pool)
    }

    /// A portable bundle into a new volume: each stream applied in turn,
    /// checked, and snapshotted where it is a snapshot's.
    pub(super) fn apply_all<R: Read>(
        &self,
        bundle: &mut BundleReader<'_, R>,
        m: &Manifest,
        to: &Dest<'_>,
        req: &ImportRequest,
        opts: &ApplyOpts,
        rv: &mut Revert,
    ) -> Result<(VolumeSpec, Vec<Snapshot>)> {
        let Dest {
            name,
            pool,
            backend,
        } = *to;
        let fstype = pool.fstype;
        // As asked, else as big as the volume it came from, and a
        // block-backed one at least as big as its data needs.
        let size = req.size.or(pool.size).or_else(|| {
            if backend.caps().block_backed {
                let needs = copy_size(m.bytes, fstype.unwrap_or_default());
                Some(needs.max(m.size.unwrap_or(0)))
            } else {
                m.size
            }
        });
        let create = CreateOpts { size, fstype };
        backend
            .check_room(&create, m.bytes)
            .map_err(|e| berth_bdev::space::in_pool(e, &pool.name))?;
        let volume = backend.create(name, &create, rv)?;
        let mut snapshots = Vec::new();
        for (i, meta) in m.streams.clone().iter().enumerate() {
            let Some(mut stream) = bundle.next_stream() else {
                break;
            };
            let expected = match &meta.snapshot {
                Some(_) => &m.snapshots[i].digest,
                None => &m.digest,
            };
            let what = meta.snapshot.as_deref().unwrap_or("the root filesystem");
            self.apply_stream(backend, &volume, &mut stream, opts, what, expected)?;
            stream.finish()?;
            if let (Some(s), false) = (&meta.snapshot, req.without_snapshots) {
                let snap = backend.snapshot(&volume, name, s, rv)?;
                snapshots.push(Snapshot {
                    name: s.clone(),
                    volume: snap,
                    created: m.snapshots[i].created,
                });
            }
        }
        Ok((volume, snapshots))
    }

    /// Applies one layer stream onto `volume` and checks the tree it leaves
    /// against `expected`. A block-backed volume's writes are synced before
    /// it counts as done.
    fn apply_stream<R: Read>(
        &self,
        backend: &dyn Backend,
        volume: &VolumeSpec,
        stream: &mut StreamReader<'_, '_, R>,
        opts: &ApplyOpts,
        what: &str,
        expected: &str,
    ) -> Result<()> {
        let block = backend.caps().block_backed;
        self.in_mounted(backend, volume, false, |root| {
            let dir = open(
                root,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| BerthError::io("open", root)(e.into()))?;
            if let Err(e) = apply_layer(&mut *stream, root, opts) {
                // A read that failed on the bundle's side says it better.
                return Err(stream.failure().map_or_else(|| e.into(), Into::into));
            }
            if block {
                syncfs(&dir).map_err(|e| berth_bdev::BdevError::WriteLost {
                    volume: volume.to_string(),
                    source: e.into(),
                })?;
            }
            check_digest(root, what, expected)
        })?;
        if block {
            backend.sync_volume(volume)?;
        }
        Ok(())
    }

    /// A native bundle: each stream received as the backend's own, checked.
    pub(super) fn receive_all<R: Read>(
        &self,
        bundle: &mut BundleReader<'_, R>,
        m: &Manifest,
        name: &str,
        backend: &dyn Backend,
        rv: &mut Revert,
    ) -> Result<(VolumeSpec, Vec<Snapshot>)> {
        let mut snapshots: Vec<Snapshot> = Vec::new();
        for (i, meta) in m.streams.clone().iter().enumerate() {
            let Some(mut stream) = bundle.next_stream() else {
                break;
            };
            let to = ReceiveTo {
                name,
                snap: meta.snapshot.as_deref(),
                base: snapshots.last().map(|s| &s.volume),
                replaces: None,
            };
            let got = backend.receive(&mut stream, &to, rv);
            let got = match (stream.failure(), got) {
                (Some(e), _) => return Err(e.into()),
                (None, r) => r?,
            };
            stream.finish()?;
            match &meta.snapshot {
                Some(s) => {
                    let digest = &m.snapshots[i].digest;
                    self.in_mounted(backend, &got, true, |root| check_digest(root, s, digest))?;
                    snapshots.push(Snapshot {
                        name: s.clone(),
                        volume: got,
                        created: m.snapshots[i].created,
                    });
                }
                None => {
                    let what = "the root filesystem";
                    self.in_mounted(backend, &got, true, |root| {
                        check_digest(root, what, &m.digest)
                    })?;
                    return Ok((got, snapshots));
                }
            }
        }
        Err(TransferError::Truncated {
            stream: "the root filesystem's stream".to_owned(),
        }
        .into())
    }

    /// An incremental bundle onto container `name`, which must hold its base
    /// snapshot unchanged.
    fn import_changes<R: Read>(
        &self,
        bundle: &mut BundleReader<'_, R>,
        m: &Manifest,
        name: &str,
        req: &ImportRequest,
        progress: &dyn Progress,
    ) -> Result<Container> {
        let base_meta = m
            .since
            .clone()
            .ok_or_else(|| BerthError::Invalid("not an incremental export".to_owned()))?;
        if req.pool.is_some() || req.backend.is_some() || req.size.is_some() {
            return Err(BerthError::Invalid(
                "an incremental export applies to the container it was made for, in its own \
                 pool: leave out --pool, -B and --size"
                    .to_owned(),
            ));
        }
        let _locks = self.lock_containers(&[name], &[])?;
        let mut c = self.store().container(name)?;
        let base = c
            .snapshots
            .iter()
            .find(|s| s.name == base_meta.snapshot)
            .cloned()
            .ok_or_else(|| TransferError::NoBase {
                name: name.to_owned(),
                snap: base_meta.snapshot.clone(),
            })?;
        self.refuse_if_in_use(
            name,
            "stop it, or `berth umount` it, before importing into it",
        )?;
        let backend = self.backend_of(&c)?;
        if !m.is_portable() && backend.name() != m.encoding {
            return Err(TransferError::NativeElsewhere {
                encoding: m.encoding.clone(),
                pool: c.pool.clone(),
                backend: backend.name().to_owned(),
            }
            .into());
        }
        let unprivileged = req.unprivileged || c.run.userns;
        if unprivileged && !m.is_portable() {
            return Err(BerthError::Invalid(format!(
                "{name} is unprivileged: its imports must be checked for device nodes, which a \
                 native stream does not let berth do; export with --portable"
            )));
        }
        let found = self.in_mounted(backend.as_ref(), &base.volume, true, |root| {
            Ok(rootfs_digest(root)?)
        })?;
        if found != base_meta.digest {
            return Err(TransferError::BaseMismatch {
                name: name.to_owned(),
                snap: base.name.clone(),
                expected: base_meta.digest.clone(),
                found,
            }
            .into());
        }
        let caps = backend.caps();
        let new_name = format!("{name}.import-{}", unique_suffix());
        let intent = Intent::replacing("import", name, &c.pool, &c.volume, &new_name);
        let opts = ApplyOpts {
            allow_devices: !unprivileged,
        };
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let volume = self.store().unlocked(|| {
                let mut stream = bundle.next_stream().ok_or_else(|| TransferError::Truncated {
                    stream: "the root filesystem's stream".to_owned(),
                })?;
                let what = "the root filesystem";
                if !m.is_portable() {
                    let to = ReceiveTo {
                        name: &new_name,
                        snap: None,
                        base: Some(&base.volume),
                        replaces: Some(&c.volume),
                    };
                    let got = backend.receive(&mut stream, &to, &mut rv);
                    if let Some(e) = stream.failure() {
                        return Err(e.into());
                    }
                    let got = got?;
                    stream.finish()?;
                    self.in_mounted(backend.as_ref(), &got, true, |root| {
                        check_digest(root, what, &m.digest)
                    })?;
                    return Ok(got);
                }
                // The new state starts as a copy of the base, as a restore's.
                let v = if caps.clone_from_snapshot && !caps.clone_pins_origin {
                    backend.snapshot_clone(&base.volume, &new_name, &mut rv)?
                } else {
                    self.copy_in_pool(backend.as_ref(), &c, &base.volume, &new_name, &mut rv, progress)?
                };
                self.apply_stream(backend.as_ref(), &v, &mut stream, &opts, what, &m.digest)?;
                stream.finish()?;
                Ok(v)
            })?;
            journal::crash_point("import", "made");
            if volume == c.volume {
                // Received in place: nothing to switch.
                rv.commit();
                return Ok(c.clone());
            }
            let old = std::mem::replace(&mut c.volume, volume);
            c.volume_name = Some(new_name.clone());
            self.store().save(&c)?;
            rv.commit();
            journal::crash_point("import", "switched");
            if let Err(e) = backend.destroy(&old) {
                warn!(name, volume = %old, error = %e, "imported, but the old volume could not be removed");
            }
            Ok(c.clone())
        })
    }
}

/// Where a full import goes.
#[derive(Clone, Copy)]
pub(super) struct Dest<'a> {
    pub name: &'a str,
    pub pool: &'a PoolConfig,
    pub backend: &'a dyn Backend,
}

/// The input, stopped at a Ctrl-C.
pub(super) struct Interruptible<'a>(pub &'a mut dyn Read);

impl Read for Interruptible<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        check_interrupt()?;
        self.0.read(buf)
    }
}

/// Fails unless the tree at `root` digests as `expected`.
fn check_digest(root: &std::path::Path, what: &str, expected: &str) -> Result<()> {
    let found = rootfs_digest(root)?;
    if found != expected {
        return Err(TransferError::TreeDigest {
            what: what.to_owned(),
            expected: expected.to_owned(),
            found,
        }
        .into());
    }
    Ok(())
}
