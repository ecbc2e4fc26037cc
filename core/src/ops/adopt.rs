//! `berth adopt LXCPATH/NAME`: takes over a stopped LXC container.
//!
//! Everything is checked before anything is touched: the config parses, the
//! rootfs is there and nothing is mounted in it, LXC does not run the
//! container, the name is free and a pool can take the rootfs. Then, without
//! `--copy`, no data is copied:
//! - dir: the rootfs is renamed (`rename(2)`) into a dir pool on its
//!   filesystem, and the LXC config is set aside as `config.adopted-by-berth`
//!   so that two tools never own one tree;
//! - btrfs: a writable subvolume snapshot into a btrfs pool on the same
//!   filesystem; the LXC container stays as it was;
//! - zfs: a clone into a zfs pool on the same zpool; the LXC container stays,
//!   its dataset keeps the clone's origin snapshot while the clone exists.
//!
//! `--copy` makes an independent copy into any pool with the copy machinery
//! of `berth clone --copy`, leaving the LXC container alone. The operation is
//! journaled: an interrupted adopt leaves nothing in berth, and renames the
//! tree and the config back.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_bdev::copy::Progress;
use berth_bdev::generic::with_mounted;
use berth_bdev::{Backend, BdevError, CreateOpts, PoolConfig, Revert, VolumeSpec};
use serde::Serialize;

use super::adopt_config::AdoptError;
use super::adopt_lxc::{
    check_source, etc_file, read_lxc, refuse_running, rename_synced, same_btrfs, same_mount,
    source_of, sync_parents, zpool, Lxc, Source,
};
use super::{Berth, CopyTo};
use crate::error::{BerthError, Result};
use crate::journal::{self, Commit, Intent, Planned, Renamed};
use crate::store::{now, Container, DEFAULT_POOL};

/// What the LXC config is renamed to once berth owns the rootfs.
pub const DISABLED_CONFIG: &str = "config.adopted-by-berth";

#[derive(Debug, Clone, Default)]
pub struct AdoptRequest {
    /// The berth name (`--as`); by default the LXC container's.
    pub name: Option<String>,
    /// An independent copy, the LXC container left alone (`--copy`).
    pub copy: bool,
    pub pool: Option<String>,
    /// A backend's registry name (`-B`).
    pub backend: Option<String>,
    /// See `CloneRequest::drop_xattrs`.
    pub drop_xattrs: bool,
    /// Size of a copy into a block-backed pool (`--size`).
    pub size: Option<u64>,
}

/// How the rootfs came into berth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdoptMode {
    /// Renamed into a dir pool; the LXC container is disabled.
    Moved,
    /// A copy-on-write snapshot or clone; the LXC container stays.
    Snapshot,
    /// A full copy; the LXC container stays.
    Copied,
}

#[derive(Debug, Clone, Serialize)]
pub struct Adopted {
    pub container: Container,
    pub mode: AdoptMode,
    /// `lxc.rootfs.path` as the LXC config gave it.
    pub lxc_rootfs: String,
    /// Where the LXC config went, when the container was disabled.
    pub disabled_config: Option<PathBuf>,
    /// `/etc/hostname` was set to this (from `lxc.uts.name`).
    pub hostname_written: Option<String>,
    /// What was not taken over, and what to watch for.
    pub warnings: Vec<String>,
}

impl Berth {
    /// Adopts the LXC container in directory `dir` (`LXCPATH/NAME`).
    pub fn adopt(
        &self,
        dir: &Path,
        req: &AdoptRequest,
        progress: &dyn Progress,
    ) -> Result<Adopted> {
        let (lxc, name) = read_lxc(dir, req.name.as_deref())?;
        crate::images::record::validate_container_name(&name).map_err(|e| match &req.name {
            Some(_) => e,
            None => BerthError::Invalid(format!("{e}; give it a berth name with --as NAME")),
        })?;
        let _locks = self.lock_containers(&[&name], &[])?;
        if self.store().exists(&name) {
            return Err(BerthError::ContainerExists(name));
        }
        refuse_running(self.runner().as_ref(), &lxc)?;
        let source = source_of(&lxc.mapped.rootfs)?;
        check_source(&source, req.copy)?;
        self.refuse_own_tree(&source)?;
        let (mode, pool) = if req.copy {
            (AdoptMode::Copied, self.copy_pool(req, &source)?)
        } else {
            self.in_place_pool(req, &lxc, &source)?
        };
        let backend = self.backend(&pool)?;
        if backend.volume_named(&name)?.is_some() {
            return Err(BerthError::Invalid(format!(
                "pool {:?} already holds a volume {name:?} that no container uses; \
                 `berth doctor --fix` removes it, or adopt --as another name",
                pool.name
            )));
        }
        let mut warnings = lxc.mapped.warnings.clone();
        let run = self.run_config(&lxc, &source, &mut warnings)?;
        notes(&lxc, &name, mode, &source, &mut warnings);

        let mut intent = Intent::new("adopt", &name, Commit::RecordExists);
        intent.creates.push(Planned {
            pool: pool.name.clone(),
            name: name.clone(),
            snap: None,
        });
        let config = lxc.dir.join("config");
        let disabled = lxc.dir.join(DISABLED_CONFIG);
        // Where the dir pool puts volume `name` (checked against the pool
        // before the rename): the journal must name it before the move.
        let moved_to = match mode {
            AdoptMode::Moved => pool.dir()?.join(&name),
            _ => PathBuf::new(),
        };
        if let (AdoptMode::Moved, Some(from)) = (mode, source.path()) {
            intent.renames.push(Renamed {
                from: from.to_path_buf(),
                to: moved_to.clone(),
            });
            intent.renames.push(Renamed {
                from: config.clone(),
                to: disabled.clone(),
            });
        }
        let from_spec = source.spec()?;
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let volume = match (mode, &source) {
                (AdoptMode::Moved, Source::Dir(from)) => {
                    let v = move_in(backend.as_ref(), &name, from, &moved_to, &mut rv)?;
                    rename_synced(&config, &disabled)?;
                    let (c, d) = (config.clone(), disabled.clone());
                    rv.add(format!("rename {} back", disabled.display()), move || {
                        rename_synced(&d, &c)
                    });
                    v
                }
                (AdoptMode::Snapshot, _) => {
                    snapshot_in(backend.as_ref(), &from_spec, &name, &mut rv)?
                }
                _ => self.store().unlocked(|| {
                    self.copy_in(
                        &source,
                        &from_spec,
                        backend.as_ref(),
                        &pool,
                        &name,
                        req,
                        &mut rv,
                        progress,
                    )
                })?,
            };
            journal::crash_point("adopt", "made");
            let hostname = match &lxc.mapped.uts_name {
                Some(h) => {
                    self.set_hostname(backend.as_ref(), &volume, h, &mut rv, &mut warnings)?
                }
                None => None,
            };
            let c = Container {
                name: name.clone(),
                pool: pool.name.clone(),
                volume,
                created: now(),
                template: Some(format!("lxc:{}", lxc.dir.display())),
                origin: None,
                ephemeral: false,
                snapshots: Vec::new(),
                volume_name: None,
                run: run.clone(),
                image: None,
            };
            self.store().save(&c)?;
            journal::crash_point("adopt", "recorded");
            rv.commit();
            Ok(Adopted {
                container: c,
                mode,
                lxc_rootfs: lxc.rootfs_value.clone(),
                disabled_config: (mode == AdoptMode::Moved).then(|| disabled.clone()),
                hostname_written: hostname,
                warnings: warnings.clone(),
            })
        })
    }

    /// Refuses a rootfs inside the state root or a pool: it is a volume of
    /// berth's already (an LXC config pointing at it), and moving it would
    /// take it from under its container.
    fn refuse_own_tree(&self, source: &Source) -> Result<()> {
        let Some(p) = source.path() else {
            return Ok(());
        };
        let p = fs::canonicalize(p).map_err(BerthError::io("resolve", p))?;
        let pools = self.store().pools()?;
        let own = std::iter::once(self.store().root().to_path_buf())
            .chain(pools.iter().filter_map(|pool| pool.path.clone()));
        for dir in own {
            if fs::canonicalize(&dir).is_ok_and(|d| p.starts_with(&d)) {
                return Err(BerthError::Invalid(format!(
                    "{} lies in berth's {}: it is berth's already, not LXC's",
                    p.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The pool that takes the rootfs without copying, and how.
    fn in_place_pool(
        &self,
        req: &AdoptRequest,
        lxc: &Lxc,
        source: &Source,
    ) -> Result<(AdoptMode, PoolConfig)> {
        let kind = source.kind();
        let what = format!("the {kind} rootfs {}", lxc.rootfs_value);
        let needs_copy = |why: String, hint: String| AdoptError::NeedsCopy {
            what: what.clone(),
            why,
            hint,
        };
        let mode = match source {
            Source::Dir(_) => AdoptMode::Moved,
            _ => AdoptMode::Snapshot,
        };
        let fits = |p: &PoolConfig| -> bool {
            match source {
                Source::Dir(path) => p.path.as_deref().is_some_and(|d| same_mount(d, path)),
                Source::Btrfs(path) => p.path.as_deref().is_some_and(|d| same_btrfs(d, path)),
                Source::Zfs(ds) => p
                    .options
                    .get("dataset")
                    .is_some_and(|d| zpool(d) == zpool(ds)),
            }
        };
        let place = match source {
            Source::Zfs(ds) => format!("zpool {}", zpool(ds)),
            _ => format!("the filesystem of {}", lxc.rootfs_value),
        };
        if let Some(b) = &req.backend {
            let b = berth_backends::lookup(b)?.name;
            if b != kind {
                return Err(needs_copy(
                    format!("-B {b} is not the rootfs' {kind}"),
                    "pass --copy to copy it into that backend".to_owned(),
                )
                .into());
            }
        }
        if let Some(name) = &req.pool {
            let p = self.store().pool(name)?;
            if p.backend != kind {
                return Err(needs_copy(
                    format!("pool {name} is a {} pool", p.backend),
                    "pass --copy to copy it there".to_owned(),
                )
                .into());
            }
            if !fits(&p) {
                return Err(needs_copy(
                    format!("pool {name} is not on {place}"),
                    "pass --copy, or pick a pool there".to_owned(),
                )
                .into());
            }
            return Ok((mode, p));
        }
        let pools = self.store().pools()?;
        let fitting: Vec<&PoolConfig> = pools
            .iter()
            .filter(|p| p.backend == kind && fits(p))
            .collect();
        match fitting.as_slice() {
            [one] => return Ok((mode, (*one).clone())),
            [] => {}
            many => {
                if let Some(d) = many.iter().find(|p| p.name == DEFAULT_POOL) {
                    return Ok((mode, (*d).clone()));
                }
                let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
                return Err(BerthError::Invalid(format!(
                    "several {kind} pools are on {place} ({}); pick one with --pool",
                    names.join(", ")
                )));
            }
        }
        // A btrfs pool under the state root is made as `-B btrfs` would make
        // it, when that is on the rootfs' filesystem.
        let own =
            PoolConfig::new(kind, kind).with_path(self.store().root().join("storage").join(kind));
        if kind == berth_backends::btrfs::NAME
            && fits(&own)
            && !pools.iter().any(|p| p.name == own.name)
        {
            self.backend(&own)?;
            self.store().add_pool(&own)?;
            return Ok((mode, own));
        }
        let hint = match source {
            Source::Zfs(ds) => format!(
                "add a pool there (berth pool add lxc -B zfs --dataset {}/berth), or pass --copy",
                zpool(ds)
            ),
            _ => format!(
                "add a pool there (berth pool add lxc -B {kind} --path {}-berth), or pass --copy",
                lxc.lxcpath.display()
            ),
        };
        Err(needs_copy(format!("no {kind} pool is on {place}"), hint).into())
    }

    /// The pool a copy goes to: `--pool`, `-B`, else the one pool of the
    /// rootfs' backend, else the default pool.
    fn copy_pool(&self, req: &AdoptRequest, source: &Source) -> Result<PoolConfig> {
        let kind = source.kind();
        let mut fallback = DEFAULT_POOL.to_owned();
        if req.pool.is_none() && req.backend.is_none() && kind != berth_backends::dir::NAME {
            let same: Vec<PoolConfig> = self
                .store()
                .pools()?
                .into_iter()
                .filter(|p| p.backend == kind)
                .collect();
            if let [one] = same.as_slice() {
                fallback = one.name.clone();
            }
        }
        let pool = self.resolve_pool(req.pool.as_deref(), req.backend.as_deref(), &fallback)?;
        if matches!(source, Source::Zfs(_)) && pool.backend != kind {
            return Err(BerthError::Invalid(format!(
                "an LXC zfs rootfs is copied with zfs send | zfs recv, so only into a zfs pool, \
                 not {:?} ({}): pick one with --pool or -B zfs, then `berth clone --copy` it anywhere",
                pool.name, pool.backend
            )));
        }
        Ok(pool)
    }

    /// Mapped settings, with the idmap as the rootfs is owned on disk.
    fn run_config(
        &self,
        lxc: &Lxc,
        source: &Source,
        warnings: &mut Vec<String>,
    ) -> Result<crate::confine::RunConfig> {
        let mut run = lxc.mapped.run.clone();
        let Some(shift) = lxc.mapped.idmap else {
            return Ok(run);
        };
        // LXC shifts an unprivileged container's files on disk; berth then
        // runs it with those ids instead of idmapping its own.
        let owner = match source.path() {
            Some(p) => Some(fs::metadata(p).map_err(BerthError::io("stat", p))?.uid()),
            None => None,
        };
        match owner {
            Some(0) => {}
            Some(uid) if uid != shift.uid => warnings.push(format!(
                "lxc.idmap maps root to host uid {}, but the rootfs belongs to uid {uid}: \
                 check the owners before running it",
                shift.uid
            )),
            _ => run.shifted = Some(shift),
        }
        Ok(run)
    }

    /// A full copy of `source` as volume `name` of `backend`.
    #[allow(clippy::too_many_arguments)]
    fn copy_in(
        &self,
        source: &Source,
        spec: &VolumeSpec,
        backend: &dyn Backend,
        pool: &PoolConfig,
        name: &str,
        req: &AdoptRequest,
        rv: &mut Revert,
        progress: &dyn Progress,
    ) -> Result<VolumeSpec> {
        let opts = CreateOpts {
            size: req.size,
            fstype: pool.fstype,
        };
        let Some(path) = source.path() else {
            // zfs into zfs: send | recv reads any dataset of the host.
            let v = backend.copy_clone(spec, name, &opts, rv);
            return Ok(v.map_err(|e| berth_bdev::space::in_pool(e, &pool.name))?);
        };
        // The LXC rootfs, read as the only volume of a pool over its parent.
        let parent = path.parent().unwrap_or(Path::new("/"));
        let src_pool = PoolConfig::new("lxc-source", source.kind()).with_path(parent);
        let src_b = berth_backends::open(&src_pool, self.runner())?;
        src_b.probe()?;
        if src_b.tree_path(spec).is_none() {
            return Err(BerthError::Invalid(format!(
                "the rootfs directory name of {} is not one berth can read as a volume \
                 (letters, digits, '_', '-', '.'); rename it in LXC first",
                path.display()
            )));
        }
        let to = CopyTo {
            backend,
            pool: &pool.name,
            name,
            opts,
            drop_xattrs: req.drop_xattrs,
        };
        self.full_copy(src_b.as_ref(), spec, to, rv, progress)
    }

    /// Writes `/etc/hostname` of the new volume when it does not say `h`;
    /// returns what it wrote.
    fn set_hostname(
        &self,
        backend: &dyn Backend,
        volume: &VolumeSpec,
        h: &str,
        rv: &mut Revert,
        warnings: &mut Vec<String>,
    ) -> Result<Option<String>> {
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if h.len() > 64 || !h.chars().all(valid) || h.starts_with('-') {
            warnings.push(format!(
                "lxc.uts.name = {h}: not a hostname berth writes (letters, digits, '-', '.')"
            ));
            return Ok(None);
        }
        let mut written = None;
        with_mounted(backend, volume, &self.scratch(), false, |root| {
            written = Some(etc_file::replace(root, "hostname", &format!("{h}\n")));
            Ok(())
        })?;
        let Some(old) = written.transpose()? else {
            return Ok(None);
        };
        let Some(old) = old else {
            return Ok(None);
        };
        // A moved tree goes back to LXC as it was.
        if let Some(tree) = backend.tree_path(volume) {
            rv.add("restore /etc/hostname", move || {
                etc_file::restore(&tree, "hostname", old.as_deref())
            });
        }
        Ok(Some(h.to_owned()))
    }
}

/// Renames the dir rootfs `from` onto the empty placeholder volume the pool
/// makes at `to`; on failure nothing has moved.
fn move_in(
    backend: &dyn Backend,
    name: &str,
    from: &Path,
    to: &Path,
    rv: &mut Revert,
) -> Result<VolumeSpec> {
    let mut placeholder = Revert::new();
    let v = backend.create(name, &CreateOpts::default(), &mut placeholder)?;
    if backend.tree_path(&v).as_deref() != Some(to) {
        return Err(BerthError::Invalid(format!(
            "the pool put volume {name} at {v}, not at {}: adopt it with --copy",
            to.display()
        )));
    }
    journal::crash_point("adopt", "placeholder");
    // rename(2) replaces an empty directory.
    match fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            return Err(AdoptError::NeedsCopy {
                what: from.display().to_string(),
                why: format!("{} is on another filesystem or mount", to.display()),
                hint: "pass --copy, or add a dir pool on its filesystem".to_owned(),
            }
            .into())
        }
        Err(e) => return Err(BerthError::io("rename into the pool", from)(e)),
        Ok(()) => placeholder.commit(),
    }
    let (f, t) = (from.to_path_buf(), to.to_path_buf());
    rv.add(format!("move {} back", to.display()), move || {
        rename_synced(&t, &f)
    });
    sync_parents(from, to)?;
    Ok(v)
}

/// A writable snapshot (btrfs) or clone (zfs) of the LXC rootfs.
fn snapshot_in(
    b: &dyn Backend,
    from: &VolumeSpec,
    name: &str,
    rv: &mut Revert,
) -> Result<VolumeSpec> {
    match b.snapshot_clone(from, name, rv) {
        Err(BdevError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::CrossesDevices =>
        {
            Err(AdoptError::NeedsCopy {
                what: from.to_string(),
                why: source.to_string(),
                hint: "pass --copy".to_owned(),
            }
            .into())
        }
        other => Ok(other?),
    }
}

/// What to tell about the result besides the unmapped keys.
fn notes(lxc: &Lxc, name: &str, mode: AdoptMode, source: &Source, warnings: &mut Vec<String>) {
    if let Some(h) = lxc.mapped.uts_name.as_deref().filter(|h| *h != name) {
        warnings.push(format!(
            "lxc.uts.name is {h}: /etc/hostname says so, but berth sets a running \
             container's hostname to its name, {name} (adopt it --as {h} to keep {h})"
        ));
    }
    if mode != AdoptMode::Moved && lxc.mapped.run.autostart {
        warnings.push(
            "lxc.start.auto is set and the LXC container stays: LXC and berth would both \
             start it at boot; set lxc.start.auto = 0 in LXC or `berth config set NAME autostart=false`"
                .to_owned(),
        );
    }
    if let (AdoptMode::Snapshot, Source::Zfs(ds)) = (mode, source) {
        warnings.push(format!(
            "the clone's origin is the snapshot {ds}@berth-clone-{name}: LXC cannot destroy \
             {ds} while the berth container exists"
        ));
    }
}
