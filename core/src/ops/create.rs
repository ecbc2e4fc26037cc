//! `berth create`: a new volume, populated from a template.

use crate::templates::{self, Cache, CacheMode, Template};
use berth_bdev::copy::{CopyOpts, Progress};
use berth_bdev::generic::{refuse_xattrs, with_mounted};
use berth_bdev::{CreateOpts, FsType, Revert};

use super::Berth;
use crate::error::{BerthError, Result};
use crate::images::record::validate_container_name;
use crate::journal::{self, Commit, Intent, Planned};
use crate::store::{now, Container, DEFAULT_POOL};

#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub pool: Option<String>,
    /// A backend's registry name (`-B`).
    pub backend: Option<String>,
    pub template: Option<Template>,
    pub size: Option<u64>,
    pub fstype: Option<FsType>,
    /// A directory template copied into a pool whose backend cannot store xattrs
    /// leaves them out instead of being refused (`--drop-xattrs`).
    pub drop_xattrs: bool,
    /// Made from this image (`--image`) instead of a template.
    pub image: Option<String>,
}

impl Berth {
    pub fn create(
        &self,
        name: &str,
        req: &CreateRequest,
        progress: &dyn Progress,
    ) -> Result<Container> {
        if let Some(image) = &req.image {
            return self.create_from_image(name, image, req, progress);
        }
        validate_container_name(name)?;
        let _locks = self.lock_containers(&[name], &[])?;
        if self.store().exists(name) {
            return Err(BerthError::ContainerExists(name.to_owned()));
        }
        let pool = self.resolve_pool(req.pool.as_deref(), req.backend.as_deref(), DEFAULT_POOL)?;
        let backend = self.backend(&pool)?;
        let template = req.template.clone().unwrap_or(Template::Minimal);
        templates::probe(&template)?;
        // What the pool cannot store is refused here, before anything is written,
        // unless the user agreed to lose it.
        let copy = CopyOpts {
            drop_xattrs: req.drop_xattrs && backend.caps().lacks_xattrs,
            source_lacks_xattrs: false,
        };
        if let (Template::FromDir(dir), false) = (&template, copy.drop_xattrs) {
            refuse_xattrs(
                backend.as_ref(),
                &[dir.as_path()],
                &[
                    "create it without them (--drop-xattrs)",
                    "create it in a pool whose backend keeps xattrs",
                ],
            )?;
        }

        let mut intent = Intent::new("create", name, Commit::RecordExists);
        intent.creates.push(Planned {
            pool: pool.name.clone(),
            name: name.to_owned(),
            snap: None,
        });
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            // Populating takes long: other commands may use the store meanwhile.
            let volume = self.store().unlocked(|| {
                let opts = CreateOpts {
                    size: req.size.or(pool.size),
                    fstype: req.fstype.or(pool.fstype),
                };
                let volume = backend.create(name, &opts, &mut rv)?;
                let runner = self.runner();
                let cache = Cache {
                    dir: self.store().root().join("cache"),
                    mode: CacheMode::Use,
                };
                // The template's error is kept aside so that the volume is unmounted first.
                let mut populated = Ok(());
                with_mounted(
                    backend.as_ref(),
                    &volume,
                    &self.scratch(),
                    false,
                    |rootfs| {
                        populated = templates::populate_cached(
                            &template,
                            rootfs,
                            &cache,
                            runner.as_ref(),
                            &copy,
                            progress,
                        )
                        .and_then(|_| {
                            // '_' is fine in a container name but not in a hostname.
                            if name.contains('_') {
                                Ok(())
                            } else {
                                templates::write_hostname(rootfs, name)
                            }
                        });
                        Ok(())
                    },
                )?;
                populated?;
                journal::crash_point("create", "populated");
                Ok(volume)
            })?;
            let c = Container {
                name: name.to_owned(),
                pool: pool.name.clone(),
                volume,
                created: now(),
                template: Some(template.to_string()),
                origin: None,
                ephemeral: false,
                snapshots: Vec::new(),
                volume_name: None,
                run: Default::default(),
                image: None,
            };
            self.store().save(&c)?;
            journal::crash_point("create", "recorded");
            rv.commit();
            Ok(c)
        })
    }
}
