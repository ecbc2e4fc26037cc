//! Scratch filesystems, leak checks and the skip rule.

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

/// Writes `mib` MiB of bytes that no compression shrinks (xorshift64 from `seed`),
/// so that space figures measure real data.
pub fn write_incompressible(out: &mut impl Write, mib: usize, seed: u64) -> std::io::Result<()> {
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

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
    let tmp = match tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir_in("/var/tmp")
    {
        Ok(t) => t,
        Err(e) => panic!("temp dir: {e}"),
    };
    let s = match setup(tmp.path()) {
        Ok(s) => s,
        Err(reason) => {
            skip(&reason);
            return None;
        }
    };
    let backend = match berth_backends::open(&s.pool, runner()) {
        Ok(b) => b,
        Err(e) => {
            skip(&e.to_string());
            return None;
        }
    };
    if let Err(e) = backend.probe() {
        skip(&e.to_string());
        return None;
    }
    Some(Harness {
        backend,
        pool: s.pool,
        keep: s.keep,
        tmp,
    })
}
