//! Scratch filesystems, leak checks and the skip rule; see `outcome` for what a
//! conformance property reports.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::{self, HostRunner, Runner};
use berth_bdev::loopdev::{self, LoopDevice};
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::{Backend, CreateOpts, PoolConfig, Revert, VolumeSpec};
use std::io::Write;

/// Under CI (`CI=true`) every tool is installed, so a missing prerequisite is a
/// failure; elsewhere the test prints `SKIP: reason` and passes.
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required under CI, but: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

pub fn runner() -> Arc<dyn Runner> {
    Arc::new(HostRunner)
}

/// A filesystem on a sparse image file, loop-mounted for the test's lifetime.
/// Dropping it unmounts (the autoclear loop device goes with the mount) and
/// deletes the image.
pub struct ScratchFs {
    pub mnt: PathBuf,
    image: PathBuf,
    guard: Option<MountGuard>,
}

impl ScratchFs {
    /// `fstype` is ext4, xfs or btrfs; btrfs wants ≥ 4 GiB or it runs out of
    /// metadata chunks.
    pub fn new(dir: &Path, fstype: &str, size: u64) -> Result<ScratchFs, String> {
        let image = dir.join(format!("{fstype}.img"));
        let mnt = dir.join(format!("{fstype}-mnt"));
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        f.set_len(size).map_err(|e| e.to_string())?;
        drop(f);
        let img = image.to_string_lossy().into_owned();
        let mkfs = match fstype {
            "btrfs" => cmd::run(&HostRunner, "mkfs.btrfs", &["-q", &img]),
            "xfs" => cmd::run(&HostRunner, "mkfs.xfs", &["-q", "-m", "reflink=1", &img]),
            _ => cmd::run(&HostRunner, "mkfs.ext4", &["-q", "-F", &img]),
        };
        mkfs.map_err(|e| format!("mkfs.{fstype}: {e}"))?;
        let dev = LoopDevice::attach(&image, false).map_err(|e| e.to_string())?;
        mount::mount_fs(fstype, dev.path().as_os_str(), &mnt, &[], false)
            .map_err(|e| e.to_string())?;
        drop(dev);
        Ok(ScratchFs {
            mnt: mnt.clone(),
            image,
            guard: Some(MountGuard::mounted(&mnt)),
        })
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            if let Err(e) = g.release() {
                eprintln!("scratch fs: {e}");
            }
        }
        // The autoclear loop device may take a moment to go after the unmount.
        wait_for(|| loopdev::devices_backed_by(&self.image).is_empty());
        let _ = std::fs::remove_file(&self.image);
    }
}

pub use berth_bench::suites::space::write_incompressible;

/// Writes `mib` MiB of incompressible data under `root` as 4 MiB files
/// `data/f0`, `data/f1` …, synced.
pub fn fill_incompressible(root: &Path, mib: usize, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("data"))?;
    for f in 0..mib / 4 {
        let mut file = std::fs::File::create(root.join(format!("data/f{f}")))?;
        write_incompressible(&mut file, 4, seed.wrapping_add(f as u64))?;
        file.sync_all()?;
    }
    Ok(())
}

/// Options for a volume of `size` bytes with the backend's default filesystem.
pub fn sized(size: u64) -> CreateOpts {
    CreateOpts {
        size: Some(size),
        fstype: None,
    }
}

/// Polls `f` for up to two seconds.
pub fn wait_for(f: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}

/// What a test may have leaked below its temp dir: mounts and loop devices.
pub fn leaks_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = mount::mounts_under(dir)
        .into_iter()
        .map(|m| format!("mount {}", m.display()))
        .collect();
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for (dev, backing) in loopdev::attached() {
        if backing.starts_with(&dir) {
            out.push(format!("loop {} -> {}", dev.display(), backing.display()));
        }
    }
    out
}

/// Asserts that nothing is left mounted or attached below `dir`.
pub fn assert_no_leaks(dir: &Path) {
    let clean = wait_for(|| leaks_under(dir).is_empty());
    assert!(clean, "leaked: {:#?}", leaks_under(dir));
}

/// One backend's pool, ready for tests. Drops the backend first, then whatever
/// the setup keeps alive (scratch filesystems, daemons), then checks for leaks.
pub struct Harness {
    pub backend: Box<dyn Backend>,
    pub pool: PoolConfig,
    pub keep: Vec<Box<dyn Any>>,
    pub tmp: tempfile::TempDir,
}

impl Harness {
    /// Creates volume `name`, keeping it (the test destroys it).
    pub fn create(&self, name: &str, opts: &CreateOpts) -> VolumeSpec {
        let mut rv = Revert::new();
        let v = self
            .backend
            .create(name, opts, &mut rv)
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        rv.commit();
        v
    }

    /// Takes snapshot `snap` of volume `name`.
    pub fn snapshot(&self, v: &VolumeSpec, name: &str, snap: &str) -> VolumeSpec {
        let mut rv = Revert::new();
        let s = self
            .backend
            .snapshot(v, name, snap, &mut rv)
            .unwrap_or_else(|e| panic!("snapshot {v}: {e}"));
        rv.commit();
        s
    }

    /// Snapshot-clones `src` as `name`.
    pub fn clone_of(&self, src: &VolumeSpec, name: &str) -> VolumeSpec {
        let mut rv = Revert::new();
        let c = self
            .backend
            .snapshot_clone(src, name, &mut rv)
            .unwrap_or_else(|e| panic!("clone {src} as {name}: {e}"));
        rv.commit();
        c
    }

    /// A layer of this pool's backend over the plain tree `tree`.
    pub fn stack_on(&self, tree: &Path, name: &str) -> VolumeSpec {
        let mut rv = Revert::new();
        let c = self
            .backend
            .stack_on_tree(tree, name, &mut rv)
            .unwrap_or_else(|e| panic!("stack {name} on {}: {e}", tree.display()));
        rv.commit();
        c
    }

    /// A scratch directory for mount points and reference trees.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        let _ = std::fs::create_dir_all(&p);
        p
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        while let Some(k) = self.keep.pop() {
            drop(k);
        }
        if !std::thread::panicking() {
            assert_no_leaks(self.tmp.path());
        }
    }
}

/// What a pool setup returns: the pool and the guards it needs kept alive.
pub struct Setup {
    pub pool: PoolConfig,
    pub keep: Vec<Box<dyn Any>>,
}

/// Makes a harness from a pool setup, or `None` after `skip` when the host lacks
/// what the backend needs (a failure under CI).
pub fn harness(setup: fn(&Path) -> Result<Setup, String>) -> Option<Harness> {
    match try_harness(setup) {
        Ok(h) => Some(h),
        Err(reason) => {
            skip(&reason);
            None
        }
    }
}

/// Makes a harness from a pool setup, or says why the host cannot have one.
pub fn try_harness(setup: fn(&Path) -> Result<Setup, String>) -> Result<Harness, String> {
    let tmp = match tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir_in("/var/tmp")
    {
        Ok(t) => t,
        Err(e) => panic!("temp dir: {e}"),
    };
    let s = setup(tmp.path())?;
    let backend = berth_backends::open(&s.pool, runner()).map_err(|e| e.to_string())?;
    backend.probe().map_err(|e| e.to_string())?;
    Ok(Harness {
        backend,
        pool: s.pool,
        keep: s.keep,
        tmp,
    })
}

/// What a conformance property found. A property that does not apply to a
/// backend says so instead of passing; one the host could not run is skipped
/// (a failure under CI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    NotApplicable(String),
    Skipped(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Passed => write!(f, "passed"),
            Outcome::NotApplicable(why) => write!(f, "not applicable: {why}"),
            Outcome::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// A property's outcome, or the panic that failed it.
pub type Verdict = Result<Outcome, Box<dyn Any + Send>>;

/// Runs property `prop` on a fresh harness from `setup`; a panic (a failed
/// assertion, a leak) is caught and returned for the caller to resume.
pub fn run_property(
    setup: fn(&Path) -> Result<Setup, String>,
    prop: fn(&Harness) -> Outcome,
) -> Verdict {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match try_harness(setup) {
            // The harness drops (and checks for leaks) inside the catch.
            Ok(h) => prop(&h),
            Err(reason) => Outcome::Skipped(reason),
        }
    }))
}

/// Per-suite counts of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub not_applicable: usize,
    pub skipped: usize,
    pub failed: usize,
}

impl Tally {
    pub fn add(&mut self, v: &Verdict) {
        match v {
            Ok(Outcome::Passed) => self.passed += 1,
            Ok(Outcome::NotApplicable(_)) => self.not_applicable += 1,
            Ok(Outcome::Skipped(_)) => self.skipped += 1,
            Err(_) => self.failed += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.passed + self.not_applicable + self.skipped + self.failed
    }

    /// `conformance dir: 15 passed, 3 not applicable, 0 skipped, 0 failed`.
    pub fn summary(&self, suite: &str) -> String {
        format!(
            "conformance {suite}: {} passed, {} not applicable, {} skipped, {} failed",
            self.passed, self.not_applicable, self.skipped, self.failed
        )
    }
}

/// `conformance dir: read_only_mount passed`.
pub fn outcome_line(suite: &str, prop: &str, v: &Verdict) -> String {
    match v {
        Ok(o) => format!("conformance {suite}: {prop} {o}"),
        Err(_) => format!("conformance {suite}: {prop} FAILED"),
    }
}

/// The tallies of the suites run in this process (libtest runs a suite's
/// properties on parallel threads of one process).
static TALLIES: std::sync::Mutex<Vec<(String, Tally)>> = std::sync::Mutex::new(Vec::new());

/// Reports one property's verdict for a libtest run: prints its line and, once
/// all `total` properties of `suite` are in, the suite's summary, past libtest's
/// output capture; then fails the test on a panic, and on a skip under CI.
pub fn report(suite: &str, prop: &str, total: usize, v: Verdict) {
    let mut lines = vec![outcome_line(suite, prop, &v)];
    {
        let mut tallies = TALLIES.lock().unwrap_or_else(|e| e.into_inner());
        let i = match tallies.iter().position(|(s, _)| s == suite) {
            Some(i) => i,
            None => {
                tallies.push((suite.to_owned(), Tally::default()));
                tallies.len() - 1
            }
        };
        let tally = &mut tallies[i].1;
        tally.add(&v);
        if tally.total() == total {
            lines.push(tally.summary(suite));
        }
    }
    // Straight to fd 2: `eprintln!` would be captured and shown only on failure.
    let mut err = std::io::stderr().lock();
    for l in lines {
        let _ = writeln!(err, "{l}");
    }
    drop(err);
    match v {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Outcome::Skipped(reason)) => skip(&reason),
        Ok(_) => {}
    }
}

/// The variable that makes this test executable probe the pool it holds (JSON)
/// and exit: see [`probe_with_path`].
pub const PROBE_POOL_ENV: &str = "BERTH_PROBE_POOL";

/// Probes `pool` in a child process, this executable run again with `PATH` set
/// to `path` (the `tools` property; PATH is per process, and the other tests of
/// this one need theirs). The executable answers through [`probe_child`]: a
/// libtest binary runs its `probe_child` test, the lvm guest checks first thing.
pub fn probe_with_path(pool: &PoolConfig, path: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().expect("current exe");
    let json = serde_json::to_string(pool).expect("pool as json");
    let out = cmd::run(
        &HostRunner,
        "env",
        &[
            &format!("PATH={}", path.display()),
            &format!("{PROBE_POOL_ENV}={json}"),
            &exe.to_string_lossy(),
            "probe_child",
            "--nocapture",
            "--test-threads=1",
        ],
    )
    .unwrap_or_else(|e| panic!("run the probe child: {e}"));
    let line = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        // libtest prints the test's name on the same line.
        .find_map(|l| l.split_once("PROBE-RESULT ").map(|(_, r)| r))
        .map(str::to_owned);
    match line.as_deref() {
        Some("ok") => Ok(()),
        Some(e) => Err(e.strip_prefix("err ").unwrap_or(e).to_owned()),
        None => panic!("the probe child said nothing: {out:?}"),
    }
}

/// In a child started by [`probe_with_path`], probes the pool it was given and
/// returns the line to print (`PROBE-RESULT ok` or `PROBE-RESULT err …`);
/// `None` anywhere else.
pub fn probe_child() -> Option<String> {
    let json = std::env::var(PROBE_POOL_ENV).ok()?;
    let pool: PoolConfig = serde_json::from_str(&json).expect("pool json");
    let probed = berth_backends::open(&pool, runner()).and_then(|b| b.probe());
    Some(match probed {
        Ok(()) => "PROBE-RESULT ok".to_owned(),
        Err(e) => format!("PROBE-RESULT err {e}").replace('\n', " "),
    })
}
