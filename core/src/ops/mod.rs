//! What berth's commands do, on top of the store and the backends. The CLI only
//! parses arguments and prints; tests drive these functions directly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::{HostRunner, Runner};
use berth_bdev::copy::Progress;
use berth_bdev::generic::copy_opts;
use berth_bdev::plan::ClonePlan;
use berth_bdev::registry::PathUse;
use berth_bdev::{Backend, BdevError, CreateOpts, PoolConfig, Revert, VolumeSpec};
use tracing::warn;

use crate::error::{BerthError, Result};
use crate::locks::{self, ContainerLock};
use crate::store::{Container, Store};

mod adopt;
pub mod adopt_config;
mod adopt_lxc;
mod adopt_map;
mod clone;
mod copy;
mod create;
mod destroy;
mod export;
mod flatten;
mod health;
mod image;
mod image_create;
mod image_transfer;
mod import;
pub mod lifecycle;
mod mount;
mod pool;
mod recover;
pub mod run;
mod snapshot;

pub use adopt::{AdoptMode, AdoptRequest, Adopted, DISABLED_CONFIG};
pub use clone::{plan_clone, CloneRequest};
pub use create::CreateRequest;
pub use destroy::{DestroyRequest, Destroyed};
pub use export::{Compress, Encoding, ExportRequest, ExportSource, ExportSummary};
pub use health::{Listed, State};
pub use image::{ImageBuildRequest, ImageSource, Pruned};
pub use image_transfer::{ImportedAny, IMAGE_KIND};
pub use import::{ImportRequest, Imported};
pub use mount::Mounted;
pub use pool::PoolEntry;
pub use recover::Finding;
pub use run::RunRequest;

/// An open berth state root. Commands that change state hold its lock exclusively.
pub struct Berth {
    store: Store,
    runner: Arc<dyn Runner>,
    /// Pools whose probe passed in this process: one command opens a pool
    /// several times (source and target, cleanup), and a probe can cost
    /// several helper commands (zfs: `zpool list`, `zfs get`).
    probed: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Berth {
    /// Opens the state root; an exclusive open also cleans up after crashed runs
    /// (stale mounts, ephemeral containers whose berth died).
    pub fn open(root: &Path, exclusive: bool) -> Result<Berth> {
        let b = Berth {
            store: Store::open(root, exclusive)?,
            runner: Arc::new(HostRunner),
            probed: Default::default(),
        };
        if exclusive {
            if let Err(e) = b.collect_garbage() {
                warn!(error = %e, "cleaning up after an earlier crash failed");
            }
        }
        Ok(b)
    }

    /// Opens the state root exclusively without the cleanup `open` does: for a
    /// monitor's record updates, which an earlier open of the same run cleaned for.
    pub(crate) fn open_locked(root: &Path) -> Result<Berth> {
        Ok(Berth {
            store: Store::open(root, true)?,
            runner: Arc::new(HostRunner),
            probed: Default::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn runner(&self) -> Arc<dyn Runner> {
        self.runner.clone()
    }

    /// Opens a pool's backend and checks that the host can run it.
    pub fn backend(&self, pool: &PoolConfig) -> Result<Box<dyn Backend>> {
        let pool = self.with_default_path(pool);
        let b = berth_backends::open(&pool, self.runner.clone())?;
        let key = format!("{pool:?}");
        let seen = |k: &str| self.probed.lock().is_ok_and(|p| p.contains(k));
        if !seen(&key) {
            b.probe()?;
            if let Ok(mut p) = self.probed.lock() {
                p.insert(key);
            }
        }
        Ok(b)
    }

    pub fn backend_of(&self, c: &Container) -> Result<Box<dyn Backend>> {
        self.backend(&self.store.pool(&c.pool)?)
    }

    /// Picks the target pool: `--pool`, else the only pool of backend `-B`, else
    /// `fallback`. `-B BACKEND` with no such pool makes one under the state root
    /// for backends that need no settings.
    pub fn resolve_pool(
        &self,
        pool: Option<&str>,
        backend: Option<&str>,
        fallback: &str,
    ) -> Result<PoolConfig> {
        let reg = backend.map(berth_backends::lookup).transpose()?;
        if let Some(name) = pool {
            let p = self.store.pool(name)?;
            if let Some(k) = reg.map(|r| r.name) {
                if p.backend != k {
                    return Err(BerthError::Invalid(format!(
                        "pool {name:?} uses the {} backend, not {k}",
                        p.backend
                    )));
                }
            }
            return Ok(p);
        }
        let Some(reg) = reg else {
            return self.store.pool(fallback);
        };
        let kind = reg.name;
        let matching: Vec<PoolConfig> = self
            .store
            .pools()?
            .into_iter()
            .filter(|p| p.backend == kind)
            .collect();
        match matching.as_slice() {
            [one] => return Ok(one.clone()),
            [] => {}
            _ => {
                let names: Vec<&str> = matching.iter().map(|p| p.name.as_str()).collect();
                return Err(BerthError::Invalid(format!(
                    "there are several {kind} pools ({}); pick one with --pool",
                    names.join(", ")
                )));
            }
        }
        if reg.needs_settings() {
            return Err(BerthError::Invalid(format!(
                "there is no {kind} pool yet; add one first, e.g. `berth pool add NAME --backend {kind} {}`",
                reg.example_settings()
            )));
        }
        let mut pool = PoolConfig::new(kind, kind);
        if reg.path == PathUse::Volumes {
            pool.path = Some(self.store.root().join("storage").join(kind));
        }
        self.backend(&pool)?;
        self.store.add_pool(&pool)?;
        Ok(pool)
    }

    /// This process's scratch directory for mount points of copies: one per
    /// process, so that cleanup after a crash never touches a live one.
    pub fn scratch(&self) -> PathBuf {
        self.store.scratch().join(berth_bdev::process::own_tag())
    }

    /// Locks containers for an operation: `exclusive` ones it changes,
    /// `shared` ones it reads. Never waits while holding the store lock (the
    /// holder may need it to commit): a taken lock makes it let the store go,
    /// wait (saying so after a second), take the store back and try again.
    pub fn lock_containers(
        &self,
        exclusive: &[&str],
        shared: &[&str],
    ) -> Result<Vec<ContainerLock>> {
        for n in exclusive.iter().chain(shared) {
            // Names become lock file names: nothing may climb out.
            berth_bdev::names::validate_name(n)?;
        }
        let mut wanted: Vec<(&str, locks::Mode)> = exclusive
            .iter()
            .map(|n| (*n, locks::Mode::Exclusive))
            .chain(shared.iter().map(|n| (*n, locks::Mode::Shared)))
            .collect();
        // One order for everyone: no two commands wait for each other.
        wanted.sort_by(|a, b| a.0.cmp(b.0));
        wanted.dedup_by(|a, b| a.0 == b.0);
        let root = self.store.root();
        loop {
            let mut held = Vec::new();
            let mut busy = None;
            for (name, mode) in &wanted {
                match locks::try_container(root, name, *mode)? {
                    Some(l) => held.push(l),
                    None => {
                        busy = Some((*name, *mode));
                        break;
                    }
                }
            }
            let Some((name, mode)) = busy else {
                self.settle_dying(exclusive)?;
                return Ok(held);
            };
            drop(held);
            self.store
                .unlocked(|| locks::wait_for_container(root, name, mode))?;
        }
    }

    /// Whether the live volume of `name` must stay read-only because clones read
    /// it directly (overlay lowers, qcow2 backing files).
    pub fn pinned_read_only(&self, name: &str) -> Result<Vec<String>> {
        let all = self.store.containers()?;
        let mut readers = Vec::new();
        for c in &all {
            let Some(o) = &c.origin else { continue };
            if !(o.pinned && o.container == name && o.snapshot.is_none()) {
                continue;
            }
            let caps = self.backend_of(c)?.caps();
            if caps.clone_reads_live_origin {
                readers.push(c.name.clone());
            }
        }
        Ok(readers)
    }
}

/// Where `Berth::full_copy` puts its copy.
pub(crate) struct CopyTo<'a> {
    pub backend: &'a dyn Backend,
    /// The pool `backend` serves, named when it is full.
    pub pool: &'a str,
    pub name: &'a str,
    pub opts: CreateOpts,
    /// The user agreed to lose xattrs (`--drop-xattrs`); see `copy_opts`.
    pub drop_xattrs: bool,
}

impl Berth {
    /// Makes the volume `to.name` from `source` (held by `src_b`) as `plan`
    /// says: a snapshot clone, a layer over its tree, or a full copy.
    pub(crate) fn volume_by_plan(
        &self,
        plan: ClonePlan,
        src_b: &dyn Backend,
        source: &VolumeSpec,
        to: CopyTo<'_>,
        rv: &mut Revert,
        progress: &dyn Progress,
    ) -> Result<VolumeSpec> {
        Ok(match plan {
            ClonePlan::SnapshotClone { .. } => to.backend.snapshot_clone(source, to.name, rv)?,
            ClonePlan::StackOnTree { .. } => {
                let tree = src_b.tree_path(source).ok_or_else(|| {
                    BdevError::foreign(source, format!("a {} pool", src_b.name()))
                })?;
                to.backend.stack_on_tree(&tree, to.name, rv)?
            }
            ClonePlan::NativeCopy | ClonePlan::GenericCopy => {
                self.full_copy(src_b, source, to, rv, progress)?
            }
        })
    }

    /// An independent full copy of `source` (held by `src_b`) as a new volume: the
    /// target backend's own tool when both sides are the same kind (`zfs send`,
    /// `qemu-img convert`, a reflinked image), else a new volume filled through
    /// mounts (see `copy_through_mounts` for sizes and room). A native copy keeps
    /// the source's size, so one asked smaller goes through mounts instead.
    pub(crate) fn full_copy(
        &self,
        src_b: &dyn Backend,
        source: &VolumeSpec,
        to: CopyTo<'_>,
        rv: &mut Revert,
        progress: &dyn Progress,
    ) -> Result<VolumeSpec> {
        let shrinks = to.backend.caps().block_backed
            && to.opts.size.is_some_and(|want| {
                src_b
                    .usage(source)
                    .ok()
                    .and_then(|u| u.limit_bytes)
                    .is_some_and(|have| want < have)
            });
        if source.backend() == to.backend.name() && !shrinks {
            match to.backend.copy_clone(source, to.name, &to.opts, rv) {
                Err(BdevError::Unsupported { .. }) => {}
                other => return Ok(other.map_err(|e| berth_bdev::space::in_pool(e, to.pool))?),
            }
        }
        // Refuses a copy that would lose xattrs before the volume exists.
        let copy = copy_opts(src_b, source, to.backend, &self.scratch(), to.drop_xattrs)?;
        self.copy_through_mounts(src_b, source, &to, &copy, rv, progress)
    }
}

impl Berth {
    /// A full copy of `src` as the new volume `name` in `c`'s own pool, as big
    /// as `c`'s volume: what flatten and restore put in its place.
    pub(crate) fn copy_in_pool(
        &self,
        backend: &dyn Backend,
        c: &Container,
        src: &VolumeSpec,
        name: &str,
        rv: &mut Revert,
        progress: &dyn Progress,
    ) -> Result<VolumeSpec> {
        let to = CopyTo {
            backend,
            pool: &c.pool,
            name,
            opts: CreateOpts {
                size: backend.usage(&c.volume).ok().and_then(|u| u.limit_bytes),
                fstype: None,
            },
            drop_xattrs: false,
        };
        self.full_copy(backend, src, to, rv, progress)
    }
}

/// Splits `NAME@SNAP`.
pub fn split_snapshot_ref(s: &str) -> (&str, Option<&str>) {
    match s.split_once('@') {
        Some((n, snap)) => (n, Some(snap)),
        None => (s, None),
    }
}
