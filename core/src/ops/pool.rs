//! `berth pool`: pools are checked with their backend's probe before they are
//! saved, and never placed where berth's own files or other volumes live.

use std::path::{Component, Path, PathBuf};

use berth_bdev::registry::PathUse;
use berth_bdev::PoolConfig;
use serde::Serialize;

use super::Berth;
use crate::damage::Damage;
use crate::error::{BerthError, Result};

/// One line of `berth pool ls`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PoolEntry {
    Ok(PoolConfig),
    /// Its file cannot be read; its containers are listed as broken too.
    Broken {
        name: String,
        state: &'static str,
        broken: Damage,
    },
}

impl Berth {
    pub fn pool_add(&self, pool: &PoolConfig) -> Result<()> {
        berth_bdev::names::validate_name(&pool.name)?;
        let pool = &self.with_default_path(pool);
        // Before the probe, which may already write there.
        if let Some(path) = &pool.path {
            self.refuse_pool_path(&pool.name, path)?;
        }
        // Open and probe first: a pool that cannot work is never recorded.
        self.backend(pool)?;
        self.store().add_pool(pool)
    }

    /// `pool` with the place the store gives it when its config names none: a
    /// backend that mounts its volumes from elsewhere (`PathUse::MountPoints`)
    /// gets `ROOT/BACKEND/NAME`, under the state root. (Under the default root
    /// that is where berth always put them, so pools recorded without a path keep
    /// working.)
    pub(super) fn with_default_path(&self, pool: &PoolConfig) -> PoolConfig {
        let mut p = pool.clone();
        let mounts =
            berth_backends::lookup(&p.backend).is_ok_and(|r| r.path == PathUse::MountPoints);
        if mounts && p.path.is_none() {
            p.path = Some(self.store().root().join(&p.backend).join(&p.name));
        }
        p
    }

    pub fn pool_rm(&self, name: &str) -> Result<()> {
        self.store().remove_pool(name)
    }

    pub fn pools(&self) -> Result<Vec<PoolConfig>> {
        self.store().pools()
    }

    /// Every pool, broken ones included, in the order `pools` gives plus the
    /// broken ones by name.
    pub fn pool_entries(&self) -> Result<Vec<PoolEntry>> {
        let scan = self.store().scan_pools()?;
        let mut out: Vec<PoolEntry> = scan.ok.into_iter().map(PoolEntry::Ok).collect();
        out.extend(scan.broken.into_iter().map(|b| PoolEntry::Broken {
            name: b.name,
            state: "broken",
            broken: b.damage,
        }));
        Ok(out)
    }

    /// A pool's volumes get destroyed by name under its path: the path must not
    /// hold berth's state, nor be another pool's.
    fn refuse_pool_path(&self, name: &str, path: &Path) -> Result<()> {
        // A relative path is the backend's to refuse, with its own message.
        if !path.is_absolute() {
            return Ok(());
        }
        let p = resolve(path);
        let root = resolve(self.store().root());
        let storage = root.join("storage");
        let why = if p.parent().is_none() {
            Some("it is the filesystem root".to_owned())
        } else if p == root {
            Some("it is berth's state root".to_owned())
        } else if root.starts_with(&p) {
            Some(format!("it holds berth's state root {}", root.display()))
        } else if p == storage {
            Some("it holds the directories of berth's pools".to_owned())
        } else if let Some(d) = self
            .store()
            .own_dirs()
            .iter()
            .map(|d| resolve(d))
            .find(|d| p.starts_with(d))
        {
            Some(format!(
                "it is inside berth's own directory {}",
                d.display()
            ))
        } else {
            self.pools()?
                .iter()
                .find(|q| q.path.as_deref().is_some_and(|qp| resolve(qp) == p))
                .map(|q| format!("pool {:?} already keeps its volumes there", q.name))
        };
        match why {
            Some(why) => Err(BerthError::Invalid(format!(
                "pool {name:?} cannot use {}: {why}; give it a directory of its own, e.g. {}",
                path.display(),
                storage.join(name).display()
            ))),
            None => Ok(()),
        }
    }
}

/// `p` with `.` and `..` folded and symlinks resolved as far as it exists, so
/// that `/var/lib/berth/../berth` and a link to the root are recognised.
fn resolve(p: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut real) = std::fs::canonicalize(&existing) {
            real.extend(rest.iter().rev());
            return real;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n.to_owned());
                existing = parent.to_path_buf();
            }
            _ => return lexical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_folds_dots_and_links() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("link")).unwrap();
        assert_eq!(resolve(&real.join("a/../a/./b")), real.join("a/b"));
        assert_eq!(resolve(&real.join("link/new/x")), real.join("a/new/x"));
        assert_eq!(resolve(Path::new("/")), PathBuf::from("/"));
        assert_eq!(resolve(Path::new("/..")), PathBuf::from("/"));
    }

    #[test]
    fn mount_points_default_to_the_state_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("state");
        let b = Berth::open(&root, true).unwrap();
        for reg in berth_backends::REGISTRY {
            let p = PoolConfig::new("z", reg.name);
            let want = (reg.path == PathUse::MountPoints).then(|| root.join(reg.name).join("z"));
            assert_eq!(b.with_default_path(&p).path, want, "{}", reg.name);
            let given = p.clone().with_path("/srv/z");
            assert_eq!(b.with_default_path(&given), given);
        }
    }

    #[test]
    fn pool_paths_that_hold_berth_state_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("state");
        let b = Berth::open(&root, true).unwrap();
        let refused = |p: PathBuf| {
            b.pool_add(&PoolConfig::new("p", berth_backends::dir::NAME).with_path(&p))
                .unwrap_err()
                .to_string()
        };
        assert!(refused("/".into()).contains("filesystem root"));
        assert!(refused(root.clone()).contains("state root"));
        assert!(refused(root.join("x/..")).contains("state root"));
        assert!(refused(d.path().to_path_buf()).contains("holds berth's state root"));
        assert!(refused(root.join("containers")).contains("own directory"));
        assert!(refused(root.join("mnt/c1")).contains("own directory"));
        assert!(refused(root.join("storage")).contains("pools"));
        assert!(refused(root.join("storage/default")).contains("\"default\""));
        let e = refused(root.clone());
        assert!(e.contains("storage/p"), "{e}");
        b.pool_add(
            &PoolConfig::new("p", berth_backends::dir::NAME).with_path(root.join("storage/p")),
        )
        .unwrap();
        assert!(refused(root.join("storage/p")).contains("\"p\""));
    }
}
