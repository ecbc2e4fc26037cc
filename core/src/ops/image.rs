//! `berth image build|import|rm|prune` and `berth commit`: images in the
//! store, and the read-only copy each keeps per pool (see
//! [`crate::images::record`]).

use std::path::{Path, PathBuf};

use berth_bdev::copy::{CopyOpts, Progress};
use berth_bdev::generic::refuse_xattrs;
use berth_bdev::{Backend, CreateOpts, FsType, PoolConfig, Revert, VolumeSpec};

use super::lifecycle::Frozen;
use super::{Berth, CopyTo};
use crate::error::{BerthError, Result};
use crate::images::digest::rootfs_digest;
use crate::images::record::{pinning, users, validate_image_name, volume_name};
use crate::images::{import_layout, ApplyOpts, Image, ImageCopy, ImageDefaults, ImageError};
use crate::journal::{self, Commit, Intent, Planned};
use crate::store::{now, DEFAULT_POOL};
use crate::templates::{self, Cache, CacheMode, Template};

/// What an image is built from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A template, as `berth create -t` (`--from-dir`, `--from-tar` included).
    Template(Template),
    /// An OCI image layout (`skopeo copy … oci:DIR[:TAG]`).
    Oci {
        layout: PathBuf,
        tag: Option<String>,
    },
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Template(t) => write!(f, "template {t}"),
            ImageSource::Oci { layout, tag } => match tag {
                Some(t) => write!(f, "oci {}:{t}", layout.display()),
                None => write!(f, "oci {}", layout.display()),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageBuildRequest {
    pub source: ImageSource,
    pub pool: Option<String>,
    /// A backend's registry name (`-B`).
    pub backend: Option<String>,
    pub size: Option<u64>,
    pub fstype: Option<FsType>,
    /// Leave out xattrs a pool cannot store instead of refusing (`--drop-xattrs`).
    pub drop_xattrs: bool,
    /// Create device nodes an OCI layer holds (refused otherwise).
    pub allow_devices: bool,
}

/// What `berth image prune` removed: (image, pool) of each copy.
pub type Pruned = Vec<(String, String)>;

impl Berth {
    /// Builds image `name` on one pool (`--pool`, `-B`, else the default).
    pub fn image_build(
        &self,
        name: &str,
        req: &ImageBuildRequest,
        progress: &dyn Progress,
    ) -> Result<Image> {
        validate_image_name(name)?;
        let lock = volume_name(name);
        let _locks = self.lock_containers(&[&lock], &[])?;
        if self.store().image_exists(name) {
            return Err(BerthError::ImageExists(name.to_owned()));
        }
        let pool = self.resolve_pool(req.pool.as_deref(), req.backend.as_deref(), DEFAULT_POOL)?;
        let backend = self.backend(&pool)?;
        let copy = CopyOpts {
            drop_xattrs: req.drop_xattrs && backend.caps().lacks_xattrs,
            source_lacks_xattrs: false,
        };
        match &req.source {
            ImageSource::Template(t) => {
                templates::probe(t)?;
                if let (Template::FromDir(dir), false) = (t, copy.drop_xattrs) {
                    refuse_xattrs(
                        backend.as_ref(),
                        &[dir.as_path()],
                        &[
                            "build it without them (--drop-xattrs)",
                            "build it in a pool whose backend keeps xattrs",
                        ],
                    )?;
                }
            }
            ImageSource::Oci { layout, .. } => {
                if !layout.join("index.json").is_file() {
                    return Err(ImageError::Layout {
                        path: layout.clone(),
                        reason: "it has no index.json".to_owned(),
                    }
                    .into());
                }
            }
        }
        let opts = CreateOpts {
            size: req.size.or(pool.size),
            fstype: req.fstype.or(pool.fstype),
        };
        let source = req.source.to_string();
        self.new_image_volume(
            name,
            &source,
            &pool,
            backend.as_ref(),
            &opts,
            |rootfs| match &req.source {
                ImageSource::Template(t) => {
                    let cache = Cache {
                        dir: self.store().root().join("cache"),
                        mode: CacheMode::Use,
                    };
                    templates::populate_cached(
                        t,
                        rootfs,
                        &cache,
                        self.runner().as_ref(),
                        &copy,
                        progress,
                    )?;
                    Ok((rootfs_digest(rootfs)?, ImageDefaults::default()))
                }
                ImageSource::Oci { layout, tag } => {
                    let opts = ApplyOpts {
                        allow_devices: req.allow_devices,
                    };
                    let got = import_layout(layout, tag.as_deref(), rootfs, &opts)?;
                    // The same tree digests the same on every backend
                    // (without the filesystem's own lost+found).
                    Ok((rootfs_digest(rootfs)?, got.defaults))
                }
            },
        )
    }

    /// Makes image `name`'s first copy on `pool`, filled by `fill` (which
    /// returns the tree's digest and the image's defaults), and records it.
    fn new_image_volume(
        &self,
        name: &str,
        source: &str,
        pool: &PoolConfig,
        backend: &dyn Backend,
        opts: &CreateOpts,
        fill: impl FnOnce(&Path) -> Result<(String, ImageDefaults)>,
    ) -> Result<Image> {
        let lock = volume_name(name);
        let intent = copy_intent("image-build", name, &pool.name);
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let (volume, digest, defaults) = self.store().unlocked(|| {
                let volume = backend.create(&lock, opts, &mut rv)?;
                let (digest, defaults) = self.in_mounted(backend, &volume, false, fill)?;
                journal::crash_point("image-build", "populated");
                Ok((volume, digest, defaults))
            })?;
            let img = Image {
                name: name.to_owned(),
                digest,
                parent: None,
                created: now(),
                source: source.to_owned(),
                defaults,
                copies: vec![ImageCopy::made_now(&pool.name, volume)],
            };
            self.store().save_image(&img)?;
            journal::crash_point("image-build", "recorded");
            rv.commit();
            Ok(img)
        })
    }

    /// `berth commit CONTAINER IMAGE`: an independent copy of the container's
    /// rootfs, in its own pool, becomes image `image`. A detached container
    /// that runs is frozen (filesystem synced) for the copy.
    pub fn commit(&self, container: &str, image: &str, progress: &dyn Progress) -> Result<Image> {
        validate_image_name(image)?;
        let lock = volume_name(image);
        let _locks = self.lock_containers(&[&lock], &[container])?;
        if self.store().image_exists(image) {
            return Err(BerthError::ImageExists(image.to_owned()));
        }
        let c = self.store().container(container)?;
        let running = self.running_detached(container)?;
        if running.is_none() {
            self.refuse_if_active(
                container,
                "stop it (or `berth umount` it) before committing it",
            )?;
        }
        let pool = self.store().pool(&c.pool)?;
        let b = self.backend(&pool)?;
        let parent = c.image.as_ref().map(|u| u.name.clone());
        let mut defaults = parent
            .as_deref()
            .and_then(|p| self.store().image(p).ok())
            .map(|p| p.defaults)
            .unwrap_or_default();
        // What the container was told to run with is what its image passes on.
        if !c.run.init_cmd.is_empty() {
            defaults.cmd = c.run.init_cmd.clone();
        }
        if !c.run.env.is_empty() {
            defaults.env = c.run.env.clone();
        }
        if c.run.workdir.is_some() {
            defaults.workdir = c.run.workdir.clone();
        }

        let mut intent = copy_intent("commit", image, &pool.name);
        intent.reads.push(container.to_owned());
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let (volume, digest) = self.store().unlocked(|| {
                let volume = {
                    let _frozen = running.as_ref().map(Frozen::new).transpose()?;
                    let to = CopyTo {
                        backend: b.as_ref(),
                        pool: &pool.name,
                        name: &lock,
                        opts: CreateOpts {
                            size: None,
                            fstype: pool.fstype,
                        },
                        drop_xattrs: false,
                    };
                    self.full_copy(b.as_ref(), &c.volume, to, &mut rv, progress)?
                };
                journal::crash_point("commit", "copied");
                let digest = self.digest_of(b.as_ref(), &volume)?;
                Ok((volume, digest))
            })?;
            let img = Image {
                name: image.to_owned(),
                digest,
                parent: parent.clone(),
                created: now(),
                source: format!("commit {container}"),
                defaults: defaults.clone(),
                copies: vec![ImageCopy::made_now(&pool.name, volume)],
            };
            self.store().save_image(&img)?;
            journal::crash_point("commit", "recorded");
            rv.commit();
            Ok(img)
        })
    }

    /// The digest of the tree in volume `v`, mounted read-only.
    pub(crate) fn digest_of(&self, b: &dyn Backend, v: &VolumeSpec) -> Result<String> {
        self.in_mounted(b, v, true, |rootfs| Ok(rootfs_digest(rootfs)?))
    }

    /// Makes sure image `name` has a copy on `pool`: a full copy of its first
    /// one, in the pool's own form, made once and kept for later containers.
    pub fn ensure_image_copy(
        &self,
        name: &str,
        pool: &PoolConfig,
        progress: &dyn Progress,
    ) -> Result<Image> {
        let lock = volume_name(name);
        let _locks = self.lock_containers(&[&lock], &[])?;
        let mut img = self.store().image(name)?;
        if img.copy_on(&pool.name).is_some() {
            return Ok(img);
        }
        let home = img
            .copies
            .first()
            .cloned()
            .ok_or_else(|| BerthError::Corrupt {
                path: self
                    .store()
                    .root()
                    .join("images")
                    .join(format!("{name}.toml")),
                reason: "the image has no copy on any pool; `berth image rm` it and build it again"
                    .to_owned(),
            })?;
        let src_b = self.backend(&self.store().pool(&home.pool)?)?;
        let dst_b = self.backend(pool)?;
        let intent = copy_intent("image-copy", name, &pool.name);
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let volume = self.store().unlocked(|| {
                let to = CopyTo {
                    backend: dst_b.as_ref(),
                    pool: &pool.name,
                    name: &lock,
                    opts: CreateOpts {
                        size: None,
                        fstype: pool.fstype,
                    },
                    drop_xattrs: false,
                };
                self.full_copy(src_b.as_ref(), &home.volume, to, &mut rv, progress)
            })?;
            journal::crash_point("image-copy", "copied");
            img.copies.push(ImageCopy::made_now(&pool.name, volume));
            self.store().save_image(&img)?;
            rv.commit();
            Ok(img.clone())
        })
    }

    /// `berth image rm`: refused while containers read one of its copies;
    /// otherwise every copy and the record go.
    pub fn image_rm(&self, name: &str) -> Result<()> {
        validate_image_name(name)?;
        let lock = volume_name(name);
        let _locks = self.lock_containers(&[&lock], &[])?;
        let mut img = self.store().image(name)?;
        let scan = self.store().scan_containers()?;
        let mut pinned = pinning(&scan.ok, name, None);
        // A broken record on a pool with a copy may be a clone of it.
        pinned.extend(
            scan.broken
                .iter()
                .filter(|b| {
                    b.salvage
                        .pool
                        .as_deref()
                        .is_none_or(|p| img.copy_on(p).is_some())
                })
                .map(|b| format!("{} (broken record)", b.name)),
        );
        if !pinned.is_empty() {
            return Err(BerthError::ImageInUse {
                image: name.to_owned(),
                containers: pinned,
            });
        }
        // One copy at a time, the record rewritten after each: an interrupted
        // rm leaves a smaller image that the next rm finishes.
        while let Some(copy) = img.copies.pop() {
            let b = self.backend(&self.store().pool(&copy.pool)?)?;
            b.destroy(&copy.volume)?;
            if !img.copies.is_empty() {
                self.store().save_image(&img)?;
            }
        }
        self.store().remove_image(name)
    }

    /// `berth image prune`: removes the copies of images on pools where no
    /// container reads them, keeping each image's first copy.
    pub fn image_prune(&self) -> Result<Pruned> {
        let mut pruned = Vec::new();
        for name in self.store().images()?.into_iter().map(|i| i.name) {
            let lock = volume_name(&name);
            let _locks = self.lock_containers(&[&lock], &[])?;
            let mut img = self.store().image(&name)?;
            let scan = self.store().scan_containers()?;
            // A broken record on a pool may be a clone of the copy there.
            let unsure = |pool: &str| {
                scan.broken
                    .iter()
                    .any(|b| b.salvage.pool.as_deref().is_none_or(|p| p == pool))
            };
            let spare: Vec<ImageCopy> = img
                .copies
                .iter()
                .skip(1)
                .filter(|c| pinning(&scan.ok, &name, Some(&c.pool)).is_empty() && !unsure(&c.pool))
                .cloned()
                .collect();
            for copy in spare {
                self.backend(&self.store().pool(&copy.pool)?)?
                    .destroy(&copy.volume)?;
                img.copies.retain(|c| c.pool != copy.pool);
                self.store().save_image(&img)?;
                pruned.push((name.clone(), copy.pool));
            }
        }
        Ok(pruned)
    }

    /// Container names that use image `name` (pinning its copy or not).
    pub fn image_users(&self, name: &str) -> Result<Vec<String>> {
        Ok(users(&self.store().containers()?, name)
            .into_iter()
            .map(|c| c.name.clone())
            .collect())
    }
}

/// The journal entry of an operation that makes image `image`'s copy on
/// `pool`: committed once the image's record lists it.
pub(super) fn copy_intent(op: &str, image: &str, pool: &str) -> Intent {
    let lock = volume_name(image);
    let mut intent = Intent::new(
        op,
        &lock,
        Commit::ImageCopy {
            image: image.to_owned(),
            pool: pool.to_owned(),
        },
    );
    intent.creates.push(Planned {
        pool: pool.to_owned(),
        name: lock,
        snap: None,
    });
    intent
}
