//! Fidelity tests' helpers: pools of every backend in one berth state root, the
//! reference tree as each path should leave it, and a runner that tells an
//! identical result, a clean refusal and a loss apart.

use std::any::Any;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::copy::{CopyWarning, NoProgress, Progress};
use berth_bdev::generic::with_mounted;
use berth_bdev::plan::CloneMode;
use berth_bdev::{BdevError, Caps, PoolConfig};
use berth_core::ops::{CloneRequest, CreateRequest, DestroyRequest};
use berth_core::store::Container;
use berth_core::templates::Template;
use berth_core::{Berth, BerthError};
use berth_fixtures::compare::{compare_trees_ignoring, read_xattrs};
use berth_fixtures::filetypes::build_all_types;

use crate::conformance::{strip_xattrs, truncate_times};
use crate::harness::{assert_no_leaks, leaks_under, skip, Setup};
use crate::pools;

pub type SetupFn = fn(&Path) -> Result<Setup, String>;

pub const SETUPS: [(&str, SetupFn); 7] = [
    ("dir", pools::dir::setup),
    ("btrfs", pools::btrfs::setup),
    ("overlay", pools::overlay::setup),
    ("loop", pools::r#loop::setup),
    ("aufs", pools::aufs::setup),
    ("zfs", pools::zfs::setup),
    ("qcow2", pools::qcow2::setup),
];

/// What a tree looks like after the backends it passed through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    /// Its xattrs were dropped (`--drop-xattrs` into a backend that lacks them).
    pub no_xattrs: bool,
    /// Its times were cut to whole seconds.
    pub coarse: bool,
}

impl Expect {
    pub fn through(self, caps: &Caps) -> Expect {
        Expect {
            no_xattrs: self.no_xattrs || caps.lacks_xattrs,
            coarse: self.coarse || caps.coarse_timestamps,
        }
    }
}

/// The reference tree, built once per `Expect`.
pub struct Refs {
    dir: PathBuf,
}

impl Refs {
    pub fn build(dir: &Path) -> Refs {
        let refs = Refs {
            dir: dir.to_path_buf(),
        };
        for no_xattrs in [false, true] {
            for coarse in [false, true] {
                let p = refs.path(Expect { no_xattrs, coarse });
                build_all_types(&p).expect("build reference tree");
                if no_xattrs {
                    strip_xattrs(&p);
                }
                if coarse {
                    truncate_times(&p);
                }
            }
        }
        refs
    }

    pub fn path(&self, e: Expect) -> PathBuf {
        self.dir.join(format!(
            "ref{}{}",
            if e.no_xattrs { "-stripped" } else { "" },
            if e.coarse { "-coarse" } else { "" }
        ))
    }

    pub fn full(&self) -> PathBuf {
        self.path(Expect::default())
    }
}

/// Pools of the given kinds in one berth state root, and the reference trees.
pub struct World {
    berth: Option<Berth>,
    pub pools: Vec<PoolConfig>,
    pub refs: Refs,
    keep: Vec<Box<dyn Any>>,
    pub tmp: tempfile::TempDir,
}

impl World {
    pub fn new(kinds: &[&str]) -> World {
        let tmp = tempfile::Builder::new()
            .prefix("berth-fidelity-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let mut keep = Vec::new();
        let mut pools = Vec::new();
        for (kind, setup) in SETUPS.iter().filter(|(k, _)| kinds.contains(k)) {
            let dir = tmp.path().join(kind);
            fs::create_dir_all(&dir).expect("pool setup dir");
            match setup(&dir) {
                Ok(s) => {
                    let mut pool = s.pool;
                    pool.name = (*kind).to_owned();
                    pools.push(pool);
                    keep.extend(s.keep);
                }
                Err(reason) => skip(&format!("{kind} pool: {reason}")),
            }
        }
        let refs = Refs::build(&tmp.path().join("refs"));
        let berth = Berth::open(&tmp.path().join("state"), true).expect("open state root");
        for p in &pools {
            berth
                .pool_add(p)
                .unwrap_or_else(|e| panic!("pool {}: {e}", p.name));
        }
        World {
            berth: Some(berth),
            pools,
            refs,
            keep,
            tmp,
        }
    }

    pub fn b(&self) -> &Berth {
        self.berth.as_ref().expect("berth is open until drop")
    }

    pub fn has(&self, pool: &str) -> bool {
        self.pools.iter().any(|p| p.name == pool)
    }

    pub fn caps(&self, pool: &str) -> Caps {
        let p = self.b().store().pool(pool).expect("pool record");
        self.b().backend(&p).expect("open backend").caps()
    }

    /// Everything that could betray a half-done operation: the records, each
    /// pool's volumes, mounts below the test's directory.
    pub fn state(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .b()
            .store()
            .containers()
            .expect("list containers")
            .into_iter()
            .map(|c| format!("record {}", c.name))
            .collect();
        for p in &self.pools {
            if let Some(path) = &p.path {
                for e in list_depth(path, 2) {
                    out.push(format!("{}: {e}", p.name));
                }
            }
            if let Some(ds) = p.options.get("dataset") {
                let listed = cmd::run(
                    &HostRunner,
                    "zfs",
                    &["list", "-H", "-o", "name", "-t", "all", "-r", ds],
                )
                .expect("zfs list");
                for l in listed.stdout.lines() {
                    out.push(format!("{}: {l}", p.name));
                }
            }
        }
        out.extend(leaks_under(self.tmp.path()));
        out.sort();
        out
    }

    pub fn create(
        &self,
        name: &str,
        pool: &str,
        from: &Path,
        drop_xattrs: bool,
    ) -> Result<Container, BerthError> {
        let req = CreateRequest {
            pool: Some(pool.to_owned()),
            template: Some(Template::FromDir(from.to_path_buf())),
            size: Some(256 << 20),
            drop_xattrs,
            ..CreateRequest::default()
        };
        self.b().create(name, &req, &NoProgress)
    }

    pub fn clone_to(
        &self,
        src: &str,
        dst: &str,
        pool: &str,
        mode: CloneMode,
        drop_xattrs: bool,
        progress: &dyn Progress,
    ) -> Result<Container, BerthError> {
        let req = CloneRequest {
            mode,
            pool: Some(pool.to_owned()),
            backend: None,
            ephemeral: false,
            drop_xattrs,
            size: None,
            freeze: false,
        };
        self.b().clone_container(src, dst, &req, progress)
    }

    /// How container `name` differs from `expected` (empty when identical).
    pub fn differences(&self, name: &str, expected: &Path) -> Vec<String> {
        let b = self.b();
        let c = b.store().container(name).expect("container record");
        let backend = b.backend_of(&c).expect("open backend");
        with_mounted(backend.as_ref(), &c.volume, &b.scratch(), true, |root| {
            let lost = Path::new("lost+found");
            Ok(compare_trees_ignoring(expected, root, &[lost])
                .err()
                .unwrap_or_default())
        })
        .unwrap_or_else(|e| vec![format!("mount {name}: {e}")])
    }

    pub fn destroy(&self, name: &str) {
        let req = DestroyRequest {
            force: true,
            with_snapshots: true,
            ..DestroyRequest::default()
        };
        self.b()
            .destroy(name, req)
            .unwrap_or_else(|e| panic!("destroy {name}: {e}"));
    }

    /// Writes, changes and removes something in container `name`.
    pub fn scribble(&self, name: &str) {
        let b = self.b();
        let c = b.store().container(name).expect("container record");
        let backend = b.backend_of(&c).expect("open backend");
        with_mounted(backend.as_ref(), &c.volume, &b.scratch(), false, |root| {
            let io = || BdevError::io("scribble in", root);
            fs::write(root.join("etc/new"), b"new").map_err(io())?;
            fs::write(root.join("bin/blob"), b"overwritten").map_err(io())?;
            fs::remove_file(root.join("etc/empty")).map_err(io())?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("scribble in {name}: {e}"));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(b) = self.berth.take() {
            let req = DestroyRequest {
                force: true,
                with_snapshots: true,
                ..DestroyRequest::default()
            };
            for c in b.store().containers().unwrap_or_default() {
                if b.store().exists(&c.name) {
                    if let Err(e) = b.destroy(&c.name, req) {
                        eprintln!("cleanup: destroy {}: {e}", c.name);
                    }
                }
            }
        }
        while let Some(k) = self.keep.pop() {
            drop(k);
        }
        if !std::thread::panicking() {
            assert_no_leaks(self.tmp.path());
        }
    }
}

/// Relative paths below `dir`, `depth` levels deep.
fn list_depth(dir: &Path, depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::new(), 0)];
    while let Some((rel, d)) = stack.pop() {
        let Ok(rd) = fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let child = rel.join(e.file_name());
            out.push(child.display().to_string());
            if d + 1 < depth && e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((child, d + 1));
            }
        }
    }
    out
}

/// What each path did.
#[derive(Default)]
pub struct Log {
    pub report: Vec<String>,
    pub failures: Vec<String>,
}

impl Log {
    pub fn note(&mut self, r: Result<String, String>) {
        match r {
            Ok(line) => self.report.push(line),
            Err(line) => self.failures.push(line),
        }
    }
}

/// Records what a copy reports it could not keep.
#[derive(Default)]
pub struct Warnings(pub Mutex<Vec<(PathBuf, String)>>);

impl Progress for Warnings {
    fn warn(&self, w: &CopyWarning<'_>) {
        let entry = match w {
            CopyWarning::XattrDropped { path, name } => {
                (path.to_path_buf(), name.to_string_lossy().into_owned())
            }
            CopyWarning::HolesFilled { path, .. } => (path.to_path_buf(), "holes".to_owned()),
        };
        self.0.lock().expect("warnings lock").push(entry);
    }
}

/// Every (path, xattr name) of the tree at `root`, relative to it.
pub fn xattrs_of(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        for name in read_xattrs(&p).expect("read xattrs").keys() {
            out.push((rel.clone(), String::from_utf8_lossy(name).into_owned()));
        }
        if fs::symlink_metadata(&p).expect("stat").is_dir() {
            for e in fs::read_dir(&p).expect("read directory") {
                stack.push(rel.join(e.expect("directory entry").file_name()));
            }
        }
    }
    out.sort();
    out
}

/// Whether `e` is a refusal that names an xattr (and the file carrying it).
pub fn xattr_refusal(e: &BerthError) -> Option<(PathBuf, String)> {
    match e {
        BerthError::Bdev(BdevError::XattrsRefused {
            path,
            name,
            alternatives,
            ..
        }) => {
            assert!(!alternatives.is_empty(), "{e}");
            Some((path.clone(), name.clone()))
        }
        _ => None,
    }
}

/// Runs one path; `Ok(line)` for the report, `Err(line)` for a failure. A
/// refusal must leave everything as it was.
pub fn attempt(
    w: &World,
    what: &str,
    dst: &str,
    expect: Option<Expect>,
    op: impl FnOnce() -> Result<Container, BerthError>,
) -> Result<String, String> {
    let before = w.state();
    match (op(), expect) {
        (Ok(_), Some(e)) => {
            let d = w.differences(dst, &w.refs.path(e));
            w.destroy(dst);
            if d.is_empty() {
                Ok(format!("{what}: identical ({e:?})"))
            } else {
                Err(format!(
                    "{what}: {} differences:\n    {}",
                    d.len(),
                    d.join("\n    ")
                ))
            }
        }
        (Ok(_), None) => {
            w.destroy(dst);
            Err(format!("{what}: succeeded, but it had to be refused"))
        }
        (Err(e), expect) => {
            let refusal = xattr_refusal(&e).is_some()
                || matches!(e, BerthError::Bdev(BdevError::CloneRefused { .. }));
            if !refusal {
                return Err(format!("{what}: failed instead of refusing up front: {e}"));
            }
            if expect.is_some() && xattr_refusal(&e).is_some() {
                return Err(format!("{what}: refused for xattrs it could keep: {e}"));
            }
            let after = w.state();
            if after != before {
                return Err(format!(
                    "{what}: refused, but left something behind:\n    before {before:?}\n    after  {after:?}"
                ));
            }
            Ok(format!("{what}: refused ({e})"))
        }
    }
}

/// Checks that a copy of `reference` into a backend without xattrs reported
/// every xattr it dropped, once (the reference hardlinks no file with xattrs).
pub fn expected_drops(reference: &Path, mut got: Vec<(PathBuf, String)>) {
    got.sort();
    assert_eq!(
        got,
        xattrs_of(reference),
        "dropped xattrs as reported vs in the reference"
    );
}
