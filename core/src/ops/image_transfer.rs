//! `berth export --image NAME FILE` and the import of what it writes: an
//! image as a bundle of kind "image" (its first copy's tree, portable or as
//! its backend's send stream, and its defaults), which `berth import`
//! turns back into an image, journaled and digest-checked like a
//! container's import.

use std::io::{Read, Write};

use berth_bdev::copy::Progress;
use berth_bdev::Revert;

use super::export::{or_interrupted, ExportRequest, ExportSource, ExportSummary};
use super::image::copy_intent;
use super::import::{Dest, ImportRequest, Imported, Interruptible};
use super::Berth;
use crate::confine::RunConfig;
use crate::error::{BerthError, Result};
use crate::images::bundle::{BundleReader, Manifest, FORMAT};
use crate::images::record::{validate_image_name, volume_name};
use crate::images::{ApplyOpts, Image, ImageCopy, ImageDefaults};
use crate::journal;
use crate::store::now;

/// A bundle's `kind` when it holds an image.
pub const IMAGE_KIND: &str = "image";

/// What `berth import` made: a container, or an image from an image's export.
#[derive(Debug, Clone)]
pub enum ImportedAny {
    Container(Box<Imported>),
    Image(Box<Image>),
}

impl Berth {
    /// Exports image `name`'s tree (its first copy) and defaults into `out`.
    pub fn export_image(
        &self,
        name: &str,
        req: &ExportRequest,
        out: &mut dyn Write,
    ) -> Result<ExportSummary> {
        if req.since.is_some() {
            return Err(BerthError::Invalid(
                "an image has no snapshots: --since applies to containers".to_owned(),
            ));
        }
        validate_image_name(name)?;
        let lock = volume_name(name);
        let _locks = self.lock_containers(&[], &[&lock])?;
        let img = self.store().image(name)?;
        let copy = img.copies.first().ok_or_else(|| {
            BerthError::Invalid(format!("image {name:?} has no copy on any pool"))
        })?;
        let backend = self.backend(&self.store().pool(&copy.pool)?)?;
        let d = &img.defaults;
        let manifest = Manifest {
            format: FORMAT,
            kind: IMAGE_KIND.to_owned(),
            name: name.to_owned(),
            created: img.created,
            encoding: String::new(),
            source_backend: String::new(),
            template: Some(img.source.clone()),
            digest: String::new(),
            bytes: 0,
            size: None,
            since: None,
            snapshots: Vec::new(),
            streams: Vec::new(),
            // An image's defaults, as a container made from it gets them.
            run: RunConfig {
                init_cmd: d.cmd.clone(),
                env: d.env.clone(),
                workdir: d.workdir.clone(),
                ..RunConfig::default()
            },
        };
        let src = ExportSource {
            backend: backend.as_ref(),
            volume: &copy.volume,
            snapshots: &[],
            since: None,
        };
        self.store().unlocked(|| {
            self.export_volume(&src, manifest, req, out)
                .map_err(or_interrupted)
        })
    }

    /// Imports a bundle: a container's (see `import`), or an image's, which
    /// becomes image `req.name` (default: the exported one's name).
    pub fn import_any(
        &self,
        input: &mut dyn Read,
        req: &ImportRequest,
        progress: &dyn Progress,
    ) -> Result<ImportedAny> {
        let mut input = Interruptible(input);
        let mut archive = tar::Archive::new(crate::images::layer::decompress(&mut input)?);
        let mut bundle = BundleReader::open(&mut archive)?;
        let m = bundle.manifest.clone();
        let got = if m.kind == IMAGE_KIND {
            self.import_image(&mut bundle, &m, req)
                .map(|i| ImportedAny::Image(Box::new(i)))
        } else {
            self.import_bundle(&mut bundle, &m, req, progress)
                .map(|c| ImportedAny::Container(Box::new(c)))
        };
        got.map_err(or_interrupted)
    }

    fn import_image<R: Read>(
        &self,
        bundle: &mut BundleReader<'_, R>,
        m: &Manifest,
        req: &ImportRequest,
    ) -> Result<Image> {
        if m.since.is_some() || !m.snapshots.is_empty() {
            return Err(BerthError::Invalid(
                "an image's export holds one tree, and this one holds more: it is damaged"
                    .to_owned(),
            ));
        }
        let name = req.name.clone().unwrap_or_else(|| m.name.clone());
        validate_image_name(&name)?;
        let lock = volume_name(&name);
        let _locks = self.lock_containers(&[&lock], &[])?;
        if self.store().image_exists(&name) {
            return Err(BerthError::ImageExists(name));
        }
        let pool = self.import_pool(m, req)?;
        let backend = self.backend(&pool)?;
        if req.unprivileged && !m.is_portable() {
            return Err(BerthError::Invalid(
                "an unprivileged import must check every entry for device nodes, which a \
                 native stream does not let it; export with --portable"
                    .to_owned(),
            ));
        }
        let intent = copy_intent("image-import", &name, &pool.name);
        let opts = ApplyOpts {
            allow_devices: !req.unprivileged,
        };
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            let to = Dest {
                name: &lock,
                pool: &pool,
                backend: backend.as_ref(),
            };
            // Each stream's tree is checked against the manifest's digest.
            let (volume, _) = self.store().unlocked(|| {
                if m.is_portable() {
                    self.apply_all(bundle, m, &to, req, &opts, &mut rv)
                } else {
                    self.receive_all(bundle, m, &lock, backend.as_ref(), &mut rv)
                }
            })?;
            journal::crash_point("image-import", "made");
            let img = Image {
                name: name.clone(),
                digest: m.digest.clone(),
                parent: None,
                created: now(),
                source: format!(
                    "import of image {} ({})",
                    m.name,
                    m.template.as_deref().unwrap_or("?")
                ),
                defaults: ImageDefaults {
                    env: m.run.env.clone(),
                    cmd: m.run.init_cmd.clone(),
                    workdir: m.run.workdir.clone(),
                    user: None,
                },
                copies: vec![ImageCopy::made_now(&pool.name, volume)],
            };
            self.store().save_image(&img)?;
            journal::crash_point("image-import", "recorded");
            rv.commit();
            Ok(img)
        })
    }
}
