//! Privileged: copies into a full pool never lose data (issue 9).
//!
//! A copy into a loop, qcow2, dir, btrfs or zfs pool that cannot hold it fails
//! with "pool P is full: needs N, has M", leaves nothing behind (no volume, no
//! record, no mount, no loop device, no daemon), and the same copy succeeds once
//! room is made. Each pool sits on a small scratch filesystem (a small zpool for
//! zfs) that a filler fills up to a few MiB. A copy that skips the up-front
//! check, into a loop volume whose pool fills up under it, fails instead of
//! reporting success over lost writes.
#![allow(clippy::unwrap_used)]

use std::any::Any;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::copy::{CopyOpts, NoProgress};
use berth_bdev::generic::{copy_volume, with_mounted};
use berth_bdev::plan::CloneMode;
use berth_bdev::space::free_bytes;
use berth_bdev::{BdevError, PoolConfig, Revert};
use berth_core::ops::{CloneRequest, CreateRequest, DestroyRequest};
use berth_core::templates::Template;
use berth_core::{Berth, BerthError};
use berth_tests::harness::{
    assert_no_leaks, fill_incompressible, leaks_under, runner, sized, skip, write_incompressible,
    ScratchFs,
};
use berth_tests::pools;

const MIB: u64 = 1 << 20;
/// Data in the source container: enough to matter, little enough to be quick.
const DATA_MIB: usize = 16;
/// Room a filler leaves in a "full" pool: less than any copy here needs.
const LEAVE: u64 = 6 * MIB;
/// The scratch filesystem under a loop, qcow2 or dir pool.
const SMALL_EXT4: u64 = 64 * MIB;
/// btrfs (not --mixed, as ScratchFs makes it) takes about 110 MiB at least.
const SMALL_BTRFS: u64 = 256 * MIB;
const SMALL_ZPOOL: u64 = 128 * MIB;
const POOL: &str = "full";

/// What takes up a pool's room, and how it is given back.
enum Filler {
    /// A file beside the pool on its scratch filesystem.
    File(PathBuf),
    /// A container in the pool (zfs: the pool's room is the zpool's).
    Container,
}

/// A target pool on small storage, with what its setup keeps alive.
struct Target {
    kind: &'static str,
    pool: PoolConfig,
    keep: Vec<Box<dyn Any>>,
    /// The scratch filesystem's mount, where a filler file goes.
    scratch: Option<PathBuf>,
    /// What the setup itself keeps mounted and attached (the scratch
    /// filesystem and its loop device): not a leak.
    baseline: Vec<String>,
}

impl Drop for Target {
    fn drop(&mut self) {
        // Last-first, as the pool setups expect.
        while let Some(k) = self.keep.pop() {
            drop(k);
        }
    }
}

fn on_scratch(tmp: &Path, kind: &'static str, fstype: &str, size: u64) -> Result<Target, String> {
    let fs = ScratchFs::new(tmp, fstype, size)?;
    let mnt = fs.mnt.clone();
    let mut keep: Vec<Box<dyn Any>> = vec![Box::new(fs)];
    if kind == "qcow2" {
        // Dropped before the scratch filesystem: no daemon may outlive the test.
        keep.push(Box::new(pools::qcow2::NoDaemonsLeft {
            dir: tmp.to_path_buf(),
        }));
    }
    Ok(Target {
        kind,
        pool: PoolConfig::new(POOL, kind).with_path(mnt.join("pool")),
        keep,
        scratch: Some(mnt),
        baseline: leaks_under(tmp),
    })
}

fn target(tmp: &Path, kind: &'static str) -> Result<Target, String> {
    match kind {
        "btrfs" => on_scratch(tmp, kind, "btrfs", SMALL_BTRFS),
        "zfs" => {
            let s = pools::zfs::setup_sized(tmp, SMALL_ZPOOL)?;
            let mut pool = s.pool;
            pool.name = POOL.to_owned();
            Ok(Target {
                kind,
                pool,
                keep: s.keep,
                scratch: None,
                baseline: leaks_under(tmp),
            })
        }
        _ => on_scratch(tmp, kind, "ext4", SMALL_EXT4),
    }
}

fn copy_req(size: Option<u64>) -> CloneRequest {
    CloneRequest {
        mode: CloneMode::Copy,
        pool: Some(POOL.to_owned()),
        backend: None,
        ephemeral: false,
        drop_xattrs: false,
        size,
        freeze: false,
    }
}

fn create_in(b: &Berth, name: &str, pool: &str) {
    let req = CreateRequest {
        pool: Some(pool.to_owned()),
        template: Some(Template::Minimal),
        ..CreateRequest::default()
    };
    b.create(name, &req, &NoProgress)
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

/// Runs `f` on the mounted root of container `name`.
fn in_container<T>(b: &Berth, name: &str, f: impl FnOnce(&Path) -> T) -> T {
    let c = b.store().container(name).unwrap();
    let backend = b.backend_of(&c).unwrap();
    with_mounted(backend.as_ref(), &c.volume, &b.scratch(), false, |root| {
        Ok(f(root))
    })
    .unwrap_or_else(|e| panic!("mount {name}: {e}"))
}

/// Bytes the pool of `t` can still take: its scratch filesystem's, or what zfs
/// says its parent dataset has available.
fn pool_free(t: &Target) -> u64 {
    if let Some(mnt) = &t.scratch {
        return free_bytes(mnt).unwrap();
    }
    let ds = t.pool.options.get("dataset").map(String::as_str).unwrap();
    let out = cmd::run(
        &HostRunner,
        "zfs",
        &["get", "-Hp", "-o", "value", "available", ds],
    )
    .unwrap_or_else(|e| panic!("zfs get available {ds}: {e}"));
    out.stdout.trim().parse().unwrap()
}

/// Fills the pool of `t` up to [`LEAVE`].
fn fill(b: &Berth, t: &Target) -> Filler {
    match &t.scratch {
        Some(mnt) => {
            let path = mnt.join("filler");
            let mib = (free_bytes(mnt).unwrap().saturating_sub(LEAVE) / MIB) as usize;
            let mut f = File::create(&path).unwrap();
            write_incompressible(&mut f, mib, 11).unwrap();
            f.sync_all().unwrap();
            Filler::File(path)
        }
        None => {
            create_in(b, "filler", POOL);
            let free = pool_free(t);
            let mib = (free.saturating_sub(LEAVE) / MIB) as usize;
            in_container(b, "filler", |root| {
                fill_incompressible(&root.join("fill"), mib, 11).unwrap()
            });
            Filler::Container
        }
    }
}

/// Gives the filler's room back and waits until the pool shows it (zfs and
/// btrfs free space a transaction later).
fn unfill(b: &Berth, t: &Target, filler: Filler, want: u64) {
    match filler {
        Filler::File(p) => {
            std::fs::remove_file(&p).unwrap();
            let dir = File::open(p.parent().unwrap()).unwrap();
            rustix::fs::syncfs(&dir).unwrap();
        }
        Filler::Container => {
            b.destroy("filler", DestroyRequest::default()).unwrap();
        }
    }
    let start = Instant::now();
    while pool_free(t) < want && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Fails unless `e` is "pool full is full: needs N, has M" with N > M.
fn assert_pool_full(e: &BerthError, what: &str) {
    let text = e.to_string();
    eprintln!("{what}: {text}");
    match e {
        BerthError::Bdev(BdevError::NoSpace {
            target,
            needed,
            available,
        }) => {
            assert_eq!(target, &format!("pool {POOL}"), "{what}: {text}");
            assert!(needed > available, "{what}: {text}");
            assert!(
                text.starts_with(&format!("pool {POOL} is full: needs ")),
                "{text}"
            );
            assert!(text.contains(", has "), "{text}");
        }
        other => panic!("{what}: expected a full pool, got: {other} ({other:?})"),
    }
}

/// Nothing of a failed copy `name` is left: no record, no volume, no mount,
/// no loop device, no daemon.
fn assert_nothing_left(b: &Berth, t: &Target, tmp: &Path, name: &str) {
    assert!(!b.store().exists(name), "{name} was recorded");
    let backend = b.backend(&t.pool).unwrap();
    assert_eq!(
        backend.volume_named(name).unwrap(),
        None,
        "{name}: volume left"
    );
    let left = || -> Vec<String> {
        leaks_under(tmp)
            .into_iter()
            .filter(|l| !t.baseline.contains(l))
            .collect()
    };
    assert!(
        berth_tests::harness::wait_for(|| left().is_empty()),
        "{name}: leaked {:#?}",
        left()
    );
    if t.kind == "qcow2" {
        assert!(
            berth_tests::harness::wait_for(|| pools::qcow2::daemons_under(tmp).is_empty()),
            "{name}: daemons left {:#?}",
            pools::qcow2::daemons_under(tmp)
        );
    }
}

fn same_data(b: &Berth, a: &str, c: &str) {
    let read = |n: &str| in_container(b, n, |root| std::fs::read(root.join("data/f0")).unwrap());
    assert!(read(a) == read(c), "{c} holds other data than {a}");
}

/// A dir source of [`DATA_MIB`] copied into a full pool of `kind`: refused,
/// nothing left, then done once room is made. Block-backed pools also copy
/// natively within the pool (an image copy, `qemu-img convert`) the same way.
fn full_pool_case(kind: &'static str) {
    let tmp = tempfile::Builder::new()
        .prefix("berth-full-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path().join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let t = match target(&dir, kind) {
        Ok(t) => t,
        Err(reason) => return skip(&format!("{kind} pool: {reason}")),
    };
    {
        let b = Berth::open(&tmp.path().join("state"), true).unwrap();
        let src = PoolConfig::new("src", "dir").with_path(tmp.path().join("src"));
        b.pool_add(&src).unwrap();
        if let Err(e) = b.pool_add(&t.pool) {
            return skip(&format!("{kind} pool: {e}"));
        }
        create_in(&b, "big", "src");
        let big = b.store().container("big").unwrap();
        let tree = b.backend(&src).unwrap().tree_path(&big.volume).unwrap();
        fill_incompressible(&tree, DATA_MIB, 5).unwrap();

        let filler = fill(&b, &t);
        let e = b
            .clone_container("big", "bigc", &copy_req(None), &NoProgress)
            .unwrap_err();
        assert_pool_full(&e, &format!("{kind}: copy into a full pool"));
        assert_nothing_left(&b, &t, tmp.path(), "bigc");
        unfill(&b, &t, filler, 2 * DATA_MIB as u64 * MIB);
        b.clone_container("big", "bigc", &copy_req(None), &NoProgress)
            .unwrap_or_else(|e| panic!("{kind}: copy after room was made: {e}"));
        same_data(&b, "big", "bigc");

        if b.backend(&t.pool).unwrap().caps().block_backed {
            // A native copy inside the pool is checked the same way.
            let filler = fill(&b, &t);
            let e = b
                .clone_container("bigc", "bigc2", &copy_req(None), &NoProgress)
                .unwrap_err();
            assert_pool_full(&e, &format!("{kind}: native copy in a full pool"));
            assert_nothing_left(&b, &t, tmp.path(), "bigc2");
            unfill(&b, &t, filler, 2 * DATA_MIB as u64 * MIB);
            b.clone_container("bigc", "bigc2", &copy_req(None), &NoProgress)
                .unwrap_or_else(|e| panic!("{kind}: native copy after room was made: {e}"));
            same_data(&b, "big", "bigc2");
            b.destroy("bigc2", DestroyRequest::default()).unwrap();

            // Below the filesystem's minimum: refused before mkfs runs.
            let tiny = CreateRequest {
                pool: Some(POOL.to_owned()),
                template: Some(Template::Minimal),
                size: Some(MIB),
                ..CreateRequest::default()
            };
            let e = b
                .create("tiny", &tiny, &NoProgress)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("ext4 needs at least 4.0 MiB, asked for 1.0 MiB"),
                "{e}"
            );
            assert_nothing_left(&b, &t, tmp.path(), "tiny");
            // A --size the data does not fit in: refused before anything is made.
            let e = b
                .clone_container("big", "small", &copy_req(Some(8 * MIB)), &NoProgress)
                .unwrap_err()
                .to_string();
            assert!(e.contains("too small for the copy"), "{e}");
            assert_nothing_left(&b, &t, tmp.path(), "small");
        }
        b.destroy("bigc", DestroyRequest::default()).unwrap();
        b.destroy("big", DestroyRequest::default()).unwrap();
    }
    drop(t);
    assert_no_leaks(tmp.path());
}

#[test]
fn full_loop_pool() {
    full_pool_case("loop");
}

#[test]
fn full_qcow2_pool() {
    full_pool_case("qcow2");
}

#[test]
fn full_dir_pool() {
    full_pool_case("dir");
}

#[test]
fn full_btrfs_pool() {
    full_pool_case("btrfs");
}

#[test]
fn full_zfs_pool() {
    full_pool_case("zfs");
}

/// Below the ops' up-front check: a loop volume far bigger than its pool's
/// free room takes a copy into the page cache, its pool fills at writeback,
/// and the copy must fail (syncfs) rather than report success.
#[test]
fn lost_writes_fail_the_copy() {
    let tmp = tempfile::Builder::new()
        .prefix("berth-lost-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = match on_scratch(tmp.path(), "loop", "ext4", SMALL_EXT4) {
        Ok(t) => t,
        Err(reason) => return skip(&format!("loop pool: {reason}")),
    };
    {
        let dst_b = berth_backends::open(&t.pool, runner()).unwrap();
        if let Err(e) = dst_b.probe() {
            return skip(&e.to_string());
        }
        let src_pool = PoolConfig::new("src", "dir").with_path(tmp.path().join("src"));
        let src_b = berth_backends::open(&src_pool, runner()).unwrap();
        src_b.probe().unwrap();
        let mut rv = Revert::new();
        let src = src_b.create("src", &sized(0), &mut rv).unwrap();
        rv.commit();
        fill_incompressible(&src_b.tree_path(&src).unwrap(), DATA_MIB, 9).unwrap();
        let mut rv = Revert::new();
        let dst = dst_b.create("dst", &sized(128 * MIB), &mut rv).unwrap();
        rv.commit();

        let mnt = t.scratch.clone().unwrap();
        let filler = mnt.join("filler");
        let mib = (free_bytes(&mnt).unwrap().saturating_sub(LEAVE) / MIB) as usize;
        let mut f = File::create(&filler).unwrap();
        write_incompressible(&mut f, mib, 13).unwrap();
        f.sync_all().unwrap();
        drop(f);

        let scratch = tmp.path().join("mnt");
        let got = copy_volume(
            src_b.as_ref(),
            &src,
            dst_b.as_ref(),
            &dst,
            &scratch,
            &CopyOpts::default(),
            &NoProgress,
        );
        match got {
            Err(BdevError::WriteLost { volume, .. }) => assert_eq!(volume, dst.to_string()),
            other => panic!("a copy that lost writes must fail, got {other:?}"),
        }
        dst_b.destroy(&dst).unwrap();
        src_b.destroy(&src).unwrap();
        std::fs::remove_file(&filler).unwrap();
    }
    drop(t);
    assert_no_leaks(tmp.path());
}

/// The reported symptom, through the binary: `berth clone big bigc --copy --pool
/// sl` into a loop pool on a small filesystem exits 1 with the pool's numbers
/// (it used to print "cloned" over a journal it could not write), and with
/// room made, `--size` sets the copy's size.
#[test]
fn cli_clone_into_a_full_loop_pool() {
    let tmp = tempfile::Builder::new()
        .prefix("berth-fullcli-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = match on_scratch(tmp.path(), "loop", "ext4", SMALL_EXT4) {
        Ok(t) => t,
        Err(reason) => return skip(&format!("loop pool: {reason}")),
    };
    let mnt = t.scratch.clone().unwrap();
    {
        let s = berth_tests::cli::Store::new();
        let pool_dir = mnt.join("pool").to_string_lossy().into_owned();
        s.ok(&[
            "pool",
            "add",
            "sl",
            "--backend",
            "loop",
            "--path",
            &pool_dir,
        ]);
        s.ok(&["create", "big"]);
        let root = PathBuf::from(s.ok(&["mount", "big"]).lines().last().unwrap());
        fill_incompressible(&root, DATA_MIB, 17).unwrap();
        s.ok(&["umount", "big"]);

        let filler = mnt.join("filler");
        let mib = (free_bytes(&mnt).unwrap().saturating_sub(LEAVE) / MIB) as usize;
        let mut f = File::create(&filler).unwrap();
        write_incompressible(&mut f, mib, 19).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let failed = s
            .berth(&["clone", "big", "bigc", "--copy", "--pool", "sl"])
            .unwrap_err();
        assert_eq!(failed.code(), Some(1), "{}", failed.stderr);
        assert!(
            failed.stderr.contains("pool sl is full: needs "),
            "{}",
            failed.stderr
        );
        assert!(!s.ok(&["ls"]).contains("bigc"));
        assert!(!mnt.join("pool/bigc.img").exists());

        std::fs::remove_file(&filler).unwrap();
        // ext4 hands freed blocks back when the transaction commits.
        rustix::fs::syncfs(File::open(&mnt).unwrap()).unwrap();
        s.ok(&[
            "clone", "big", "bigc", "--copy", "--pool", "sl", "--size", "40M",
        ]);
        let info = s.ok(&["info", "bigc"]);
        assert!(info.contains("of 40.0 MiB"), "{info}");
        s.ok(&["destroy", "bigc"]);
        s.ok(&["destroy", "big"]);
    }
    drop(t);
    assert_no_leaks(tmp.path());
}
