//! berth's on-disk state under the state root (default /var/lib/berth):
//!
//! ```text
//! ROOT/lock                   flock: one writer at a time
//! ROOT/pools/NAME.toml        pool configs (the `default` dir pool is built in)
//! ROOT/containers/NAME.toml   container configs
//! ROOT/storage/default/       volumes of the default pool
//! ROOT/run/NAME.toml          what a running or mounted container holds
//! ROOT/mnt/NAME/              where `berth mount` and `berth run` mount rootfs
//! ROOT/tmp/                   scratch mount points for copies
//! ```
//! Every write goes to a temp file, is fsynced, then renamed over the old one.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use berth_bdev::fsutil::atomic_write;
use berth_bdev::names::validate_name;
use berth_bdev::process::Process;
use berth_bdev::{PoolConfig, VolumeSpec};
use serde::{Deserialize, Serialize};

use crate::confine::RunConfig;
use crate::damage::parse_record;
use crate::error::{BerthError, Result};
use crate::locks;

pub const DEFAULT_ROOT: &str = "/var/lib/berth";
pub const DEFAULT_POOL: &str = "default";

/// Where a clone came from, and whether it still depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// A real dependency: the clone reads data that lives in the origin.
    pub pinned: bool,
    /// "snapshot" or "copy".
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub volume: VolumeSpec,
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub pool: String,
    pub volume: VolumeSpec,
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Destroyed when it stops (lxc-copy -e).
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Snapshot>,
    /// The name the volume was made under, when a restore or flatten gave
    /// it another than the container's (`NAME.restore-N`); backends file
    /// snapshots under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// Limits, security settings and user namespace (`berth config`).
    #[serde(default, skip_serializing_if = "is_default_run")]
    pub run: RunConfig,
    /// The image it was made from (`berth create --image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<crate::images::ImageUse>,
}

fn is_default_run(r: &RunConfig) -> bool {
    *r == RunConfig::default()
}

impl Container {
    /// The name its volume was made under.
    pub fn volume_name(&self) -> &str {
        self.volume_name.as_deref().unwrap_or(&self.name)
    }

    pub fn snapshot(&self, snap: &str) -> Result<&Snapshot> {
        self.snapshots
            .iter()
            .find(|s| s.name == snap)
            .ok_or_else(|| BerthError::NoSnapshot {
                name: self.name.clone(),
                snap: snap.to_owned(),
            })
    }
}

/// What a container holds while it runs or is mounted by `berth mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The berth process that runs it (None for a plain `berth mount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its start time in clock ticks since boot, so a reused pid is not mistaken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starttime: Option<u64>,
    pub mountpoint: PathBuf,
    pub volume: VolumeSpec,
    /// Set for a container `berth start` runs detached: the process above is
    /// its monitor, and these say what it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached: Option<Detached>,
    /// Its address on a bridge, while it runs on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<std::net::Ipv4Addr>,
}

/// A detached container's init, as its monitor recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    /// The init's host pid and start time (None until it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_starttime: Option<u64>,
    /// Its cgroup directories, one per hierarchy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup: Vec<PathBuf>,
    /// When it started, in seconds since the epoch.
    pub started: u64,
}

impl Detached {
    /// The init process while it still runs.
    pub fn init_process(&self) -> Option<Process> {
        let pid = i32::try_from(self.init?).ok()?;
        let p = Process {
            pid,
            starttime: self.init_starttime?,
        };
        p.alive().then_some(p)
    }
}

impl RunState {
    /// Whether the process that recorded this state still exists.
    pub fn process_alive(&self) -> bool {
        match (self.pid.and_then(|p| i32::try_from(p).ok()), self.starttime) {
            (Some(pid), Some(starttime)) => Process { pid, starttime }.alive(),
            _ => false,
        }
    }
}

/// The start time of `pid`, while it has not exited.
pub fn proc_starttime(pid: u32) -> Option<u64> {
    Process::of(i32::try_from(pid).ok()?).map(|p| p.starttime)
}

/// An open state root, locked for the lifetime of the value.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// The store lock and its path; `None` when opened read-only.
    lock: Option<(File, PathBuf)>,
}

fn read_toml<T: crate::damage::Record>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(BerthError::io("read", path))?;
    parse_record(path, &text).map_err(|d| BerthError::Corrupt {
        path: path.to_path_buf(),
        reason: d.what(),
    })
}

fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string_pretty(value).map_err(|e| BerthError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(atomic_write(path, text.as_bytes())?)
}

pub(crate) fn toml_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(BerthError::io("read directory", dir)(e)),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".toml") {
            if !stem.starts_with('.') {
                names.push(stem.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

impl Store {
    /// Opens (creating if needed) the state root. Commands that change state
    /// take its lock exclusively (see [`crate::locks`]: only while they read
    /// and commit records); read-only commands take no lock and never wait.
    pub fn open(root: &Path, exclusive: bool) -> Result<Store> {
        if !root.is_absolute() {
            return Err(BerthError::Invalid(format!(
                "state root {root:?} must be an absolute path"
            )));
        }
        if !exclusive {
            return Ok(Store {
                root: root.to_path_buf(),
                lock: None,
            });
        }
        for d in [
            "pools",
            "containers",
            "images",
            "run",
            "mnt",
            "tmp",
            "storage",
            "journal",
            "locks",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(BerthError::io("create directory", &p))?;
        }
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(BerthError::io("open", &lock_path))?;
        locks::acquire(&lock, &lock_path, locks::Mode::Exclusive, &|| {
            "another berth command to commit its changes".to_owned()
        })?;
        Ok(Store {
            root: root.to_path_buf(),
            lock: Some((lock, lock_path)),
        })
    }

    /// Runs `f` with the store lock released (long work under per-container
    /// locks), then takes it back. A store opened read-only just runs `f`.
    pub fn unlocked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some((file, path)) = &self.lock else {
            return f();
        };
        locks::release(file);
        let out = f();
        locks::reacquire(file, path, locks::Mode::Exclusive, &|| {
            "another berth command to commit its changes".to_owned()
        })?;
        out
    }

    /// Whether this store holds the lock (opened for changes).
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Scratch space for temporary mount points.
    pub fn scratch(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where `berth mount` / `berth run` mount a container's rootfs.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.root.join("mnt").join(name)
    }

    fn pool_file(&self, name: &str) -> PathBuf {
        self.root.join("pools").join(format!("{name}.toml"))
    }

    fn container_file(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(format!("{name}.toml"))
    }

    fn run_file(&self, name: &str) -> PathBuf {
        self.root.join("run").join(format!("{name}.toml"))
    }

    /// The built-in pool: the dir backend under the state root.
    pub fn default_pool(&self) -> PoolConfig {
        PoolConfig::new(DEFAULT_POOL, berth_backends::dir::NAME)
            .with_path(self.root.join("storage/default"))
    }

    /// The pools that can be read; see [`Store::scan_pools`] for broken ones.
    pub fn pools(&self) -> Result<Vec<PoolConfig>> {
        Ok(self.scan_pools()?.ok)
    }

    pub fn pool(&self, name: &str) -> Result<PoolConfig> {
        if name == DEFAULT_POOL {
            return Ok(self.default_pool());
        }
        validate_name(name)?;
        let path = self.pool_file(name);
        if !path.exists() {
            return Err(BerthError::NoPool(name.to_owned()));
        }
        let p: PoolConfig = read_toml(&path)?;
        if p.name != name {
            return Err(BerthError::Corrupt {
                path,
                reason: format!("it names itself {:?}, not {name:?}", p.name),
            });
        }
        Ok(p)
    }

    pub fn add_pool(&self, pool: &PoolConfig) -> Result<()> {
        validate_name(&pool.name)?;
        if pool.name == DEFAULT_POOL || self.pool_file(&pool.name).exists() {
            return Err(BerthError::PoolExists(pool.name.clone()));
        }
        write_toml(&self.pool_file(&pool.name), pool)
    }

    pub fn remove_pool(&self, name: &str) -> Result<()> {
        if name == DEFAULT_POOL {
            return Err(BerthError::Invalid(
                "the default pool is built in and cannot be removed".to_owned(),
            ));
        }
        let users = self.pool_users(name)?;
        if !users.is_empty() {
            return Err(BerthError::PoolInUse {
                pool: name.to_owned(),
                containers: users,
            });
        }
        let path = self.pool_file(name);
        if !path.exists() {
            return Err(BerthError::NoPool(name.to_owned()));
        }
        fs::remove_file(&path).map_err(BerthError::io("remove", &path))
    }

    /// The containers whose records can be read. Broken records are left out:
    /// whatever must not miss a dependent uses [`Store::scan_containers`].
    pub fn containers(&self) -> Result<Vec<Container>> {
        Ok(self.scan_containers()?.ok)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.container_file(name).exists()
    }

    pub fn container(&self, name: &str) -> Result<Container> {
        validate_name(name)?;
        let path = self.container_file(name);
        if !path.exists() {
            return Err(BerthError::NoContainer(name.to_owned()));
        }
        let c: Container = read_toml(&path)?;
        if c.name != name {
            return Err(BerthError::Corrupt {
                path,
                reason: format!("it names itself {:?}, not {name:?}", c.name),
            });
        }
        Ok(c)
    }

    pub fn save(&self, c: &Container) -> Result<()> {
        validate_name(&c.name)?;
        write_toml(&self.container_file(&c.name), c)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.container_file(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BerthError::io("remove", &path)(e)),
        }
    }

    pub fn run_state(&self, name: &str) -> Result<Option<RunState>> {
        let path = self.run_file(name);
        if !path.exists() {
            return Ok(None);
        }
        read_toml(&path).map(Some)
    }

    pub fn run_states(&self) -> Result<Vec<(String, RunState)>> {
        toml_names(&self.root.join("run"))?
            .into_iter()
            .map(|n| {
                let s = read_toml(&self.run_file(&n))?;
                Ok((n, s))
            })
            .collect()
    }

    /// Run states describe what runs now, which a reboot ends: replaced
    /// atomically, not synced.
    pub fn save_run_state(&self, name: &str, s: &RunState) -> Result<()> {
        let text = toml::to_string_pretty(s).map_err(|e| BerthError::Corrupt {
            path: self.run_file(name),
            reason: e.to_string(),
        })?;
        Ok(berth_bdev::fsutil::replace_file(
            &self.run_file(name),
            text.as_bytes(),
        )?)
    }

    pub fn clear_run_state(&self, name: &str) -> Result<()> {
        let path = self.run_file(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BerthError::io("remove", &path)(e)),
        }
    }
}

// Reading around damaged records: see crate::damage, which scans them.
impl Store {
    /// Where the record of container `name` is kept.
    pub fn container_path(&self, name: &str) -> PathBuf {
        self.container_file(name)
    }

    /// The directories berth keeps its own state in, which no pool may use.
    pub fn own_dirs(&self) -> Vec<PathBuf> {
        [
            "pools",
            "containers",
            "images",
            "run",
            "mnt",
            "tmp",
            "cache",
            "journal",
            "locks",
        ]
        .iter()
        .map(|d| self.root.join(d))
        .collect()
    }
}

/// Containers that depend on `name` (or on one of its snapshots), with what they
/// depend on: the edges that make destroying `name` unsafe.
pub fn dependents(all: &[Container], name: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = all
        .iter()
        .filter_map(|c| match &c.origin {
            Some(o) if o.pinned && o.container == name => {
                Some((c.name.clone(), o.snapshot.clone()))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Seconds since the epoch, for `created` fields.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, origin: Option<(&str, Option<&str>, bool)>) -> Container {
        Container {
            name: name.to_owned(),
            pool: "default".to_owned(),
            volume: format!("dir:/p/{name}").parse().unwrap(),
            created: 1,
            template: None,
            origin: origin.map(|(c, s, pinned)| Origin {
                container: c.to_owned(),
                snapshot: s.map(str::to_owned),
                pinned,
                mode: "snapshot".to_owned(),
            }),
            ephemeral: false,
            snapshots: Vec::new(),
            volume_name: None,
            run: RunConfig::default(),
            image: None,
        }
    }

    #[test]
    fn only_pinned_edges_are_dependents() {
        let all = vec![
            container("base", None),
            container("copy", Some(("base", None, false))),
            container("ov", Some(("base", None, true))),
            container("fromsnap", Some(("base", Some("s1"), true))),
            container("other", Some(("ov", None, true))),
        ];
        assert_eq!(
            dependents(&all, "base"),
            vec![
                ("fromsnap".to_owned(), Some("s1".to_owned())),
                ("ov".to_owned(), None)
            ]
        );
        assert_eq!(dependents(&all, "copy"), vec![]);
        assert_eq!(dependents(&all, "ov"), vec![("other".to_owned(), None)]);
    }

    #[test]
    fn store_round_trips_and_validates() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let mut c = container("c1", Some(("c0", None, false)));
        c.snapshots.push(Snapshot {
            name: "snap0".into(),
            volume: "dir:/p/.snapshots/c1/snap0".parse().unwrap(),
            created: 2,
        });
        s.save(&c).unwrap();
        assert_eq!(s.container("c1").unwrap(), c);
        assert_eq!(s.containers().unwrap().len(), 1);
        assert!(matches!(
            s.container("nope"),
            Err(BerthError::NoContainer(_))
        ));
        assert!(s.container("../etc").is_err());
        let p = PoolConfig::new("fast", "btrfs").with_path("/srv/b");
        s.add_pool(&p).unwrap();
        assert!(matches!(s.add_pool(&p), Err(BerthError::PoolExists(_))));
        assert_eq!(s.pools().unwrap().len(), 2);
        assert_eq!(s.pool("fast").unwrap(), p);
        assert!(s.remove_pool("default").is_err());
        s.remove_pool("fast").unwrap();
    }

    #[test]
    fn corrupt_config_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        fs::write(d.path().join("containers/bad.toml"), "name = [").unwrap();
        let e = s.container("bad").unwrap_err().to_string();
        assert!(e.contains("bad.toml"), "{e}");
    }

    #[test]
    fn broken_container_records_are_listed_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        s.save(&container("good", None)).unwrap();
        let full = toml::to_string_pretty(&container("bad", Some(("good", None, true)))).unwrap();
        let cut = &full[..full.find("created").unwrap() + 3];
        fs::write(d.path().join("containers/bad.toml"), cut).unwrap();
        fs::write(d.path().join("containers/empty.toml"), "").unwrap();

        let scan = s.scan_containers().unwrap();
        let ok: Vec<&str> = scan.ok.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(ok, ["good"]);
        let broken: Vec<&str> = scan.broken.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(broken, ["bad", "empty"]);
        let bad = &scan.broken[0];
        assert_eq!(bad.damage.path, d.path().join("containers/bad.toml"));
        assert_eq!(bad.damage.line, Some(4), "{cut}");
        assert_eq!(bad.salvage.pool.as_deref(), Some("default"));
        assert_eq!(bad.salvage.volume, Some("dir:/p/bad".parse().unwrap()));
        // Its [origin] was cut off: it may be a clone of anything.
        assert!(bad.salvage.origin.may_depend_on("good"));
        assert_eq!(scan.broken[1].damage.reason, "the file is empty");

        assert_eq!(s.containers().unwrap().len(), 1);
        assert!(s.broken_container("bad").unwrap().is_some());
        assert!(s.broken_container("good").unwrap().is_none());
        assert!(s.broken_container("nope").unwrap().is_none());
        let e = s.container("bad").unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("line 4"), "{e}");

        // `empty` may be in any pool, `bad` is in the default one.
        let p = PoolConfig::new("p", "dir").with_path("/srv/p");
        s.add_pool(&p).unwrap();
        let e = s.remove_pool("p").unwrap_err().to_string();
        assert!(
            e.contains("empty (broken record)") && !e.contains("bad"),
            "{e}"
        );
        fs::remove_file(d.path().join("containers/empty.toml")).unwrap();
        s.remove_pool("p").unwrap();
    }

    #[test]
    fn broken_pools_are_listed_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let good = PoolConfig::new("good", "btrfs").with_path("/srv/b");
        s.add_pool(&good).unwrap();
        fs::write(
            d.path().join("pools/bad.toml"),
            "name = \"bad\"\nbackend = \"floppy\"\n",
        )
        .unwrap();
        // A file that shadows the built-in pool is ignored.
        fs::write(d.path().join("pools/default.toml"), "junk").unwrap();

        let scan = s.scan_pools().unwrap();
        let ok: Vec<&str> = scan.ok.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(ok, ["default", "good"]);
        assert_eq!(scan.broken.len(), 1);
        assert_eq!(scan.broken[0].name, "bad");
        assert_eq!(scan.broken[0].damage.line, Some(2));
        assert_eq!(s.pools().unwrap().len(), 2);
        assert!(s.broken_pool("bad").unwrap().is_some());
        assert!(s.broken_pool("good").unwrap().is_none());
        assert!(s.broken_pool(DEFAULT_POOL).unwrap().is_none());
        let e = s.pool("bad").unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("line 2"), "{e}");
        // A broken pool no container uses can still be removed.
        s.remove_pool("bad").unwrap();
        assert!(s.scan_pools().unwrap().broken.is_empty());
    }

    #[test]
    fn starttime_of_self_is_found() {
        assert!(proc_starttime(std::process::id()).is_some());
        assert!(proc_starttime(u32::MAX).is_none());
    }
}
