//! A pool: one backend plus where it keeps its volumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::FsType;
use crate::error::{BdevError, Result};

/// How a pool is configured (`berth pool add NAME --backend … --path …`).
///
/// On disk, the backend's own settings sit in an `[options]` table that the
/// backend reads into its typed form ([`PoolConfig::options`]). Files written
/// before that table existed kept them at the top level; they are read there too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PoolFile")]
pub struct PoolConfig {
    pub name: String,
    /// The backend's registry name.
    pub backend: String,
    /// Directory holding the volumes, for backends that keep them in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Default size of new volumes in bytes (backends with `size_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Default filesystem of new volumes (block-backed backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<FsType>,
    /// The backend's own settings, by key (see the backend's `pool_options`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// The on-disk form, which also takes the old top-level option keys.
#[derive(Deserialize)]
struct PoolFile {
    name: String,
    backend: String,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    fstype: Option<FsType>,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(flatten)]
    top_level: BTreeMap<String, String>,
}

impl From<PoolFile> for PoolConfig {
    fn from(f: PoolFile) -> Self {
        let mut options = f.top_level;
        options.extend(f.options);
        PoolConfig {
            name: f.name,
            backend: f.backend,
            path: f.path,
            size: f.size,
            fstype: f.fstype,
            options,
        }
    }
}

/// A backend-specific pool setting, offered as `berth pool add --KEY VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOption {
    pub key: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    /// A pool of the backend cannot work without it.
    pub required: bool,
    /// A value shown in hints, e.g. `tank/berth`.
    pub example: &'static str,
}

impl PoolConfig {
    pub fn new(name: &str, backend: &str) -> Self {
        PoolConfig {
            name: name.to_owned(),
            backend: backend.to_owned(),
            path: None,
            size: None,
            fstype: None,
            options: BTreeMap::new(),
        }
    }

    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn with_option(mut self, key: &str, value: &str) -> Self {
        self.options.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The backend's settings in its typed form `T`, which should deny unknown
    /// fields: a key it does not know is named in the error, with the keys it does.
    pub fn options<T: DeserializeOwned>(&self) -> Result<T> {
        // Through a self-describing value, so that `Option` fields read too.
        let map = self
            .options
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| BdevError::PoolSetting {
            pool: self.name.clone(),
            reason: e.to_string(),
            hint: format!(
                "see `berth pool add --help` for the {} settings",
                self.backend
            ),
        })
    }

    /// The pool directory, which path-based backends need, absolute.
    pub fn dir(&self) -> Result<&Path> {
        match &self.path {
            Some(p) if p.is_absolute() => Ok(p),
            Some(p) => Err(BdevError::PoolSetting {
                pool: self.name.clone(),
                reason: format!("path {p:?} is relative"),
                hint: "give an absolute --path".to_owned(),
            }),
            None => Err(BdevError::PoolSetting {
                pool: self.name.clone(),
                reason: format!("a {} pool keeps its volumes in a directory", self.backend),
                hint: "give one with --path DIR".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Named {
        dataset: String,
        #[serde(default)]
        thin: Option<String>,
    }

    #[test]
    fn options_round_trip_in_their_own_table() {
        let p = PoolConfig::new("z", "named").with_option("dataset", "tank/b");
        let t = toml::to_string(&p).unwrap();
        assert!(t.contains("[options]"), "{t}");
        let back: PoolConfig = toml::from_str(&t).unwrap();
        assert_eq!(back, p);
        let o: Named = back.options().unwrap();
        assert_eq!(o.dataset, "tank/b");
        assert_eq!(o.thin, None);
        let o: Named = back.with_option("thin", "pool").options().unwrap();
        assert_eq!(o.thin.as_deref(), Some("pool"));
    }

    #[test]
    fn old_files_with_top_level_options_still_load() {
        let p: PoolConfig =
            toml::from_str("name = \"z\"\nbackend = \"named\"\ndataset = \"tank/b\"\n").unwrap();
        assert_eq!(p.options.get("dataset").map(String::as_str), Some("tank/b"));
    }

    #[test]
    fn unknown_and_missing_settings_are_named() {
        let p = PoolConfig::new("z", "named")
            .with_option("dataset", "t")
            .with_option("vgg", "x");
        let e = p.options::<Named>().unwrap_err().to_string();
        assert!(e.contains("vgg") && e.contains("dataset"), "{e}");
        let e = PoolConfig::new("z", "named")
            .options::<Named>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("dataset"), "{e}");
    }

    #[test]
    fn a_pool_directory_must_be_given_and_absolute() {
        let e = PoolConfig::new("p", "tree").dir().unwrap_err().to_string();
        assert!(e.contains("--path"), "{e}");
        let e = PoolConfig::new("p", "tree")
            .with_path("rel")
            .dir()
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
    }
}
