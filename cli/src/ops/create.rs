//! `berth create`: a new volume, populated from a template.

use berth_bdev::copy::Progress;
use berth_bdev::generic::with_mounted;
use berth_bdev::names::validate_name;
use berth_bdev::{BackendKind, CreateOpts, FsType, Revert};
use berth_fixtures::templates::{self, Cache, CacheMode, Template};

use super::Berth;
use crate::error::{BerthError, Result};
use crate::store::{now, Container, DEFAULT_POOL};

#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub pool: Option<String>,
    pub backend: Option<BackendKind>,
    pub template: Option<Template>,
    pub size: Option<u64>,
    pub fstype: Option<FsType>,
}

impl Berth {
    pub fn create(
        &self,
        name: &str,
        req: &CreateRequest,
        progress: &dyn Progress,
    ) -> Result<Container> {
        validate_name(name)?;
        if self.store().exists(name) {
            return Err(BerthError::ContainerExists(name.to_owned()));
        }
        let pool = self.resolve_pool(req.pool.as_deref(), req.backend, DEFAULT_POOL)?;
        let backend = self.backend(&pool)?;
        let template = req.template.clone().unwrap_or(Template::Minimal);
        templates::probe(&template)?;

        let mut rv = Revert::new();
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
        let c = Container {
            name: name.to_owned(),
            pool: pool.name.clone(),
            volume,
            created: now(),
            template: Some(template.to_string()),
            origin: None,
            ephemeral: false,
            snapshots: Vec::new(),
            run: Default::default(),
        };
        self.store().save(&c)?;
        rv.commit();
        Ok(c)
    }
}
