//! Images in the store: `ROOT/images/NAME.toml`, one record per image with
//! its digest, parent, defaults and the read-only copy it keeps on each pool.
//!
//! An image's copy on a pool is a volume called `image.NAME` ([`volume_name`]):
//! container names cannot start with `image.` ([`validate_container_name`]),
//! so no container's volume is ever mistaken for one.

use std::fs;
use std::path::{Path, PathBuf};

use berth_bdev::fsutil::atomic_write;
use berth_bdev::names::{validate_name, MAX_NAME_LEN};
use berth_bdev::VolumeSpec;
use serde::{Deserialize, Serialize};

use super::ImageDefaults;
use crate::error::{BerthError, Result};
use crate::store::{toml_names, Container, Store};

/// What an image's copies are called in their pools, and its lock's name.
pub const VOLUME_PREFIX: &str = "image.";

/// One image: a read-only root filesystem and what containers made from it
/// run with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// [`super::digest::rootfs_digest`] of the tree: "sha256:…", the same on
    /// every backend.
    pub digest: String,
    /// The image the container it was committed from was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub created: u64,
    /// Where it came from, for people: "template minimal", "commit c1", "oci DIR:TAG".
    pub source: String,
    #[serde(default)]
    pub defaults: ImageDefaults,
    /// Its copies, the first one (where it was built) first.
    pub copies: Vec<ImageCopy>,
}

/// An image's read-only copy on one pool; containers on that pool are
/// snapshot clones of it where the pool can make them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCopy {
    pub pool: String,
    pub volume: VolumeSpec,
    pub created: u64,
}

impl ImageCopy {
    /// The copy on `pool` just made as `volume`.
    pub fn made_now(pool: &str, volume: VolumeSpec) -> ImageCopy {
        ImageCopy {
            pool: pool.to_owned(),
            volume,
            created: crate::store::now(),
        }
    }
}

/// What a container made from an image keeps of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUse {
    pub name: String,
    pub digest: String,
    /// The container reads data of the image's copy on its pool (a zfs,
    /// overlay, aufs or qcow2 clone): the copy cannot go while it exists.
    pub pinned: bool,
    /// "snapshot" (a snapshot clone of the copy) or "copy" (a full copy:
    /// the pool's backend can do nothing better).
    pub mode: String,
}

impl Image {
    pub fn copy_on(&self, pool: &str) -> Option<&ImageCopy> {
        self.copies.iter().find(|c| c.pool == pool)
    }

    /// The name its copies and its lock go by.
    pub fn volume_name(&self) -> String {
        volume_name(&self.name)
    }
}

pub fn volume_name(image: &str) -> String {
    format!("{VOLUME_PREFIX}{image}")
}

/// An image name: a valid name that leaves room for the copies' prefix.
pub fn validate_image_name(name: &str) -> Result<()> {
    validate_name(name)?;
    let max = MAX_NAME_LEN - VOLUME_PREFIX.len();
    if name.len() > max {
        return Err(BerthError::Invalid(format!(
            "image name {name:?} is too long: at most {max} characters"
        )));
    }
    Ok(())
}

/// A container name: a valid name outside what image copies are called.
pub fn validate_container_name(name: &str) -> Result<()> {
    validate_name(name)?;
    if name.starts_with(VOLUME_PREFIX) {
        return Err(BerthError::Invalid(format!(
            "container name {name:?} starts with {VOLUME_PREFIX:?}, which berth keeps for the copies of images; pick another name"
        )));
    }
    Ok(())
}

/// Containers that use image `name`, and whether each pins its copy.
pub fn users<'a>(all: &'a [Container], name: &str) -> Vec<&'a Container> {
    let mut out: Vec<&Container> = all
        .iter()
        .filter(|c| c.image.as_ref().is_some_and(|u| u.name == name))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The containers that read image `name`'s copy on `pool` (or on any pool).
pub fn pinning(all: &[Container], name: &str, pool: Option<&str>) -> Vec<String> {
    users(all, name)
        .into_iter()
        .filter(|c| c.image.as_ref().is_some_and(|u| u.pinned))
        .filter(|c| pool.is_none_or(|p| c.pool == p))
        .map(|c| c.name.clone())
        .collect()
}

impl crate::damage::Record for Image {}

impl Store {
    fn images_dir(&self) -> PathBuf {
        self.root().join("images")
    }

    fn image_file(&self, name: &str) -> PathBuf {
        self.images_dir().join(format!("{name}.toml"))
    }

    pub fn image_exists(&self, name: &str) -> bool {
        self.image_file(name).exists()
    }

    pub fn image(&self, name: &str) -> Result<Image> {
        validate_image_name(name)?;
        let path = self.image_file(name);
        if !path.exists() {
            return Err(BerthError::NoImage(name.to_owned()));
        }
        let img: Image = read_record(&path)?;
        if img.name != name {
            return Err(BerthError::Corrupt {
                path,
                reason: format!("it names itself {:?}, not {name:?}", img.name),
            });
        }
        Ok(img)
    }

    /// Every image; a damaged record is an error naming its file, since
    /// whatever lists images decides what may be destroyed.
    pub fn images(&self) -> Result<Vec<Image>> {
        toml_names(&self.images_dir())?
            .iter()
            .map(|n| self.image(n))
            .collect()
    }

    pub fn save_image(&self, img: &Image) -> Result<()> {
        validate_image_name(&img.name)?;
        let dir = self.images_dir();
        fs::create_dir_all(&dir).map_err(BerthError::io("create directory", &dir))?;
        let text = toml::to_string_pretty(img).map_err(|e| BerthError::Corrupt {
            path: self.image_file(&img.name),
            reason: e.to_string(),
        })?;
        Ok(atomic_write(&self.image_file(&img.name), text.as_bytes())?)
    }

    pub fn remove_image(&self, name: &str) -> Result<()> {
        let path = self.image_file(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BerthError::io("remove", &path)(e)),
        }
    }
}

fn read_record(path: &Path) -> Result<Image> {
    let text = fs::read_to_string(path).map_err(BerthError::io("read", path))?;
    crate::damage::parse_record(path, &text).map_err(|d| BerthError::Corrupt {
        path: path.to_path_buf(),
        reason: d.what(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_stay_clear_of_image_copies() {
        validate_container_name("web.1").unwrap();
        let e = validate_container_name("image.deb")
            .unwrap_err()
            .to_string();
        assert!(e.contains("image."), "{e}");
        validate_image_name(&"x".repeat(58)).unwrap();
        assert!(validate_image_name(&"x".repeat(59)).is_err());
    }

    #[test]
    fn records_round_trip() {
        let dir = std::env::temp_dir().join(format!("berth-img-rec-{}", std::process::id()));
        let store = Store::open(&dir, true).unwrap();
        let img = Image {
            name: "deb".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            parent: None,
            created: 1,
            source: "template minimal".into(),
            defaults: ImageDefaults::default(),
            copies: vec![ImageCopy {
                pool: "default".into(),
                volume: VolumeSpec::new("dir", vec!["/x".into()]),
                created: 1,
            }],
        };
        store.save_image(&img).unwrap();
        assert_eq!(store.image("deb").unwrap(), img);
        assert_eq!(store.images().unwrap(), vec![img]);
        store.remove_image("deb").unwrap();
        assert!(matches!(store.image("deb"), Err(BerthError::NoImage(_))));
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }
}
