//! `berth create NAME --image IMAGE`: a snapshot clone of the image's copy
//! on the target pool (made there first if the pool has none), or a full copy
//! where the pool's backend can do nothing better.

use berth_bdev::copy::Progress;
use berth_bdev::plan::{CloneMode, ClonePlan};
use berth_bdev::{CreateOpts, Revert};

use super::{plan_clone, Berth, CopyTo, CreateRequest};
use crate::confine::RunConfig;
use crate::error::{BerthError, Result};
use crate::images::record::{validate_container_name, volume_name};
use crate::images::ImageUse;
use crate::journal::{self, Commit, Intent, Planned};
use crate::store::{now, Container, DEFAULT_POOL};

impl Berth {
    pub(super) fn create_from_image(
        &self,
        name: &str,
        image: &str,
        req: &CreateRequest,
        progress: &dyn Progress,
    ) -> Result<Container> {
        validate_container_name(name)?;
        if req.template.is_some() {
            return Err(BerthError::Invalid(
                "--image and a template (-t, --from-dir, --from-tar) exclude each other".to_owned(),
            ));
        }
        if self.store().exists(name) {
            return Err(BerthError::ContainerExists(name.to_owned()));
        }
        let pool = self.resolve_pool(req.pool.as_deref(), req.backend.as_deref(), DEFAULT_POOL)?;
        let backend = self.backend(&pool)?;
        // Planned before any copy is made: a refusal costs nothing.
        let plan = plan_clone(
            backend.as_ref(),
            backend.as_ref(),
            true,
            false,
            CloneMode::Snapshot,
        )
        .ok()
        .filter(|p| p.shares_data());
        if req.size.is_some() && plan.is_some() {
            return Err(BerthError::Invalid(format!(
                "--size: a container made from an image on pool {:?} is a snapshot clone of the image's copy and keeps its size; `berth resize` it afterwards",
                pool.name
            )));
        }
        if self.store().image(image)?.copy_on(&pool.name).is_none() {
            self.ensure_image_copy(image, &pool, progress)?;
        }

        let lock = volume_name(image);
        let _locks = self.lock_containers(&[name], &[&lock])?;
        if self.store().exists(name) {
            return Err(BerthError::ContainerExists(name.to_owned()));
        }
        let img = self.store().image(image)?;
        let copy = img.copy_on(&pool.name).cloned().ok_or_else(|| {
            BerthError::Invalid(format!(
                "image {image:?}'s copy on pool {:?} was removed meanwhile (`berth image prune`?); try again",
                pool.name
            ))
        })?;

        let mut intent = Intent::new("create", name, Commit::RecordExists);
        intent.reads.push(lock.clone());
        intent.creates.push(Planned {
            pool: pool.name.clone(),
            name: name.to_owned(),
            snap: None,
        });
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let volume = self.store().unlocked(|| {
                let to = CopyTo {
                    backend: backend.as_ref(),
                    pool: &pool.name,
                    name,
                    opts: CreateOpts {
                        size: req.size,
                        fstype: pool.fstype,
                    },
                    drop_xattrs: false,
                };
                // No plan that shares data: a full copy of the image's copy.
                let plan = plan.unwrap_or(ClonePlan::NativeCopy);
                self.volume_by_plan(plan, backend.as_ref(), &copy.volume, to, &mut rv, progress)
            })?;
            journal::crash_point("create", "made");
            let c = Container {
                name: name.to_owned(),
                pool: pool.name.clone(),
                volume,
                created: now(),
                template: None,
                origin: None,
                ephemeral: false,
                snapshots: Vec::new(),
                volume_name: None,
                run: RunConfig {
                    init_cmd: img.defaults.cmd.clone(),
                    env: img.defaults.env.clone(),
                    workdir: img.defaults.workdir.clone(),
                    ..RunConfig::default()
                },
                image: Some(ImageUse {
                    name: image.to_owned(),
                    digest: img.digest.clone(),
                    pinned: plan.is_some_and(ClonePlan::pins_origin),
                    mode: if plan.is_some() { "snapshot" } else { "copy" }.to_owned(),
                }),
            };
            self.store().save(&c)?;
            journal::crash_point("create", "recorded");
            rv.commit();
            Ok(c)
        })
    }
}
