//! Privileged: concurrency without a global stall. Fifty berth processes at
//! once clone (snapshot clones within a pool, copies across pools), snapshot,
//! destroy and list on one store with a btrfs and an overlay pool: each
//! command succeeds or fails with a clear busy, exists or not-found error,
//! and a busy one succeeds when retried; afterwards the store adds up
//! (`berth doctor` finds nothing, the snapshots and containers are exactly
//! those the successful commands made) and nothing leaked. And a long copy
//! (200 MiB in 20,000 files, from the btrfs pool into the store's default
//! dir pool on another filesystem, so nothing is reflinked) holds only what
//! it reads and writes: `berth ls`, `berth info` of another container and an
//! unrelated clone finish before it does, `--no-wait` against its source or
//! its target fails at once naming the copy, and a snapshot of its source
//! waits for it, saying so.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use berth_tests::cli::{unique_name, Failed, Store};
use berth_tests::consistency::{doctor_clean, leaks, listed, run_in, write_in};
use berth_tests::harness::{fill_incompressible, skip, ScratchFs};
use berth_tests::rng::Rng;

const THREADS: u64 = 50;
const OPS_PER_THREAD: usize = 3;
/// Names several threads clone to and destroy.
const SHARED: u64 = 4;
/// What a successful command may still log: anything else is a finding.
const BAD_LOG: &[&str] = &[
    "panicked",
    "corrupt",
    "cannot read",
    "could not",
    "unreadable",
];

/// One store with two pools on a scratch btrfs: `bt` (btrfs) and `ov`
/// (overlay). Fields drop in order: the store (which checks for mounts)
/// before the filesystem under its pools.
struct TwoPools {
    s: Store,
    dirs: Vec<PathBuf>,
    _fs: ScratchFs,
    _tmp: tempfile::TempDir,
}

fn two_pools() -> Option<TwoPools> {
    if !rustix::process::geteuid().is_root() {
        skip("the concurrency tests need root (mounts)");
        return None;
    }
    for (fs, tool) in [("btrfs", "mkfs.btrfs"), ("overlay", "true")] {
        if !berth_bdev::fsutil::kernel_has_fs(fs) || !berth_bdev::cmd::have_program(tool) {
            skip(&format!("{fs} is not available ({tool})"));
            return None;
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("berth-conc-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let fs = ScratchFs::new(tmp.path(), "btrfs", 4 << 30).unwrap();
    let s = Store::new();
    let (bt, ov) = (fs.mnt.join("bt"), fs.mnt.join("ov"));
    s.ok(&[
        "pool",
        "add",
        "bt",
        "-B",
        "btrfs",
        "--path",
        bt.to_str().unwrap(),
    ]);
    s.ok(&[
        "pool",
        "add",
        "ov",
        "-B",
        "overlay",
        "--path",
        ov.to_str().unwrap(),
    ]);
    let dirs = vec![s.root().to_path_buf(), bt, ov];
    Some(TwoPools {
        s,
        dirs,
        _fs: fs,
        _tmp: tmp,
    })
}

impl TwoPools {
    fn leaks(&self) -> Vec<String> {
        let dirs: Vec<&Path> = self.dirs.iter().map(PathBuf::as_path).collect();
        leaks(&dirs)
    }

    /// Destroys every container, then nothing may be left.
    fn teardown(&self) {
        // Clones before their origins: --force takes the dependents along.
        for _ in 0..3 {
            for c in listed(&self.s).unwrap() {
                match self.s.berth(&["destroy", &c.name, "-s", "--force"]) {
                    Ok(_) => {}
                    Err(f) if f.stderr.contains("does not exist") => {}
                    Err(f) => panic!("destroy {} ({}): {}", c.name, f.status, f.stderr),
                }
            }
        }
        assert_eq!(listed(&self.s).unwrap(), Vec::new());
        doctor_clean(&self.s).unwrap();
        let left = self.leaks();
        assert!(left.is_empty(), "leaked: {left:#?}");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Busy,
    Exists,
    NotFound,
}

/// How a command ended, or what was wrong with it.
fn classify(args: &[&str], r: Result<(String, String), Failed>) -> Result<Outcome, String> {
    let (text, outcome) = match r {
        Ok((_, log)) => (log, Outcome::Done),
        Err(f) if f.stderr.contains("busy: ") => (f.stderr, Outcome::Busy),
        Err(f) if f.stderr.contains("already exists") => (f.stderr, Outcome::Exists),
        Err(f) if f.stderr.contains("does not exist") => (f.stderr, Outcome::NotFound),
        Err(f) => {
            return Err(format!(
                "berth {args:?} failed ({}): {}",
                f.status,
                f.stderr.trim()
            ))
        }
    };
    if let Some(w) = BAD_LOG.iter().find(|w| text.contains(*w)) {
        return Err(format!(
            "berth {args:?} ({outcome:?}) logged {w:?}: {}",
            text.trim()
        ));
    }
    Ok(outcome)
}

/// What one command did, for the books kept at the end.
#[derive(Debug, Clone)]
enum Did {
    Made(String),
    Destroyed(String),
    Snapshot(String),
    Nothing,
}

/// How often each first answer came: done, busy, exists, not found.
type Seen = [u32; 4];

/// One thread's work: `OPS_PER_THREAD` commands picked at random; a busy
/// command (from `--no-wait`) is retried waiting, and must then get through.
fn worker(s: &Store, t: u64, rng: &mut Rng, srcs: &[&str; 2]) -> Result<(Vec<Did>, Seen), String> {
    let mut did = Vec::new();
    let mut seen = Seen::default();
    let mut mine: Vec<String> = Vec::new();
    for k in 0..OPS_PER_THREAD {
        let src_i = rng.below(2) as usize;
        let (src, pool, other) = (srcs[src_i], ["bt", "ov"][src_i], ["ov", "bt"][src_i]);
        let own = unique_name(&format!("c{t}x{k}"));
        let shared = unique_name(&format!("shared{}", rng.below(SHARED)));
        let (args, effect): (Vec<String>, Did) = match rng.below(7) {
            0 => (
                v(&["clone", src, &own, "--snapshot", "--pool", pool]),
                Did::Made(own.clone()),
            ),
            1 => (
                v(&["clone", src, &own, "--copy", "--pool", other]),
                Did::Made(own.clone()),
            ),
            2 => (v(&["snapshot", src]), Did::Snapshot(src.to_owned())),
            3 => match mine.pop() {
                Some(m) => (v(&["destroy", &m]), Did::Destroyed(m)),
                None => (v(&["destroy", &shared]), Did::Destroyed(shared.clone())),
            },
            4 => (
                v(&["clone", src, &shared, "--snapshot", "--pool", pool]),
                Did::Made(shared.clone()),
            ),
            5 => (v(&["destroy", &shared]), Did::Destroyed(shared.clone())),
            _ => (v(&["ls"]), Did::Nothing),
        };
        let no_wait = rng.below(3) == 0;
        let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
        if no_wait {
            argv.insert(0, "--no-wait");
        }
        let mut outcome = classify(&argv, s.berth_logged(&argv))?;
        seen[outcome as usize] += 1;
        if args[0] == "ls" && outcome != Outcome::Done {
            return Err(format!(
                "berth {argv:?} must never wait or fail: {outcome:?}"
            ));
        }
        if outcome == Outcome::Busy {
            if !no_wait {
                return Err(format!("berth {argv:?} said busy without --no-wait"));
            }
            argv.remove(0);
            outcome = classify(&argv, s.berth_logged(&argv))?;
            if outcome == Outcome::Busy {
                return Err(format!("berth {argv:?} still busy when retried waiting"));
            }
        }
        let is_mine = |n: &str| !n.contains("shared");
        match (&effect, outcome) {
            (Did::Made(n), Outcome::Done) if is_mine(n) => mine.push(n.clone()),
            (_, Outcome::Done) => {}
            (Did::Made(n) | Did::Destroyed(n), Outcome::Exists | Outcome::NotFound)
                if !is_mine(n) => {}
            (_, o) => return Err(format!("berth {argv:?}: {o:?}")),
        }
        did.push(if outcome == Outcome::Done {
            effect
        } else {
            Did::Nothing
        });
    }
    Ok((did, seen))
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[test]
fn fifty_commands_at_once_leave_a_sound_store() {
    let Some(p) = two_pools() else { return };
    let s = &p.s;
    let (src_bt, src_ov) = (unique_name("src-bt"), unique_name("src-ov"));
    s.ok(&["create", &src_bt, "--pool", "bt"]);
    s.ok(&["create", &src_ov, "--pool", "ov"]);
    let (mut rng, seed) = Rng::from_env();
    let seeds: Vec<u64> = (0..THREADS).map(|_| rng.next_u64()).collect();
    let srcs = [src_bt.as_str(), src_ov.as_str()];
    let barrier = Barrier::new(THREADS as usize);
    let started = Instant::now();
    let results: Vec<Result<(Vec<Did>, Seen), String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = seeds
            .iter()
            .enumerate()
            .map(|(t, seed)| {
                let barrier = &barrier;
                sc.spawn(move || {
                    let mut rng = Rng::new(*seed);
                    barrier.wait();
                    worker(s, t as u64, &mut rng, &srcs)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let did: Vec<Did> = results
        .iter()
        .flatten()
        .flat_map(|(d, _)| d.clone())
        .collect();
    let mut seen = Seen::default();
    for (_, n) in results.iter().flatten() {
        for (total, n) in seen.iter_mut().zip(n) {
            *total += n;
        }
    }

    // The books: what the successful commands made must be what is there.
    let mut made: BTreeMap<String, i64> = BTreeMap::new();
    let mut snaps: BTreeMap<String, usize> = BTreeMap::new();
    for d in &did {
        match d {
            Did::Made(n) => *made.entry(n.clone()).or_default() += 1,
            Did::Destroyed(n) => *made.entry(n.clone()).or_default() -= 1,
            Did::Snapshot(src) => *snaps.entry(src.clone()).or_default() += 1,
            Did::Nothing => {}
        }
    }
    let mut wrong = Vec::new();
    let now: Vec<String> = listed(s).unwrap().into_iter().map(|c| c.name).collect();
    for (n, count) in &made {
        let there = now.contains(n);
        if !(*count == 0 && !there || *count == 1 && there) {
            wrong.push(format!(
                "{n}: made minus destroyed is {count}, listed: {there}"
            ));
        }
    }
    for src in srcs {
        let out = s.ok(&["snapshot", "ls", src]);
        let have = out.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
        let want = snaps.get(src).copied().unwrap_or(0);
        if have != want {
            wrong.push(format!(
                "{src} has {have} snapshots; {want} snapshot commands succeeded"
            ));
        }
    }
    let doctor = doctor_clean(s).err();
    let unusable: Vec<String> = listed(s)
        .unwrap()
        .into_iter()
        .filter(|c| c.state != "stopped")
        .map(|c| format!("{} is {}", c.name, c.state))
        .collect();
    // A sample of the clones still mounts and runs.
    for n in now.iter().filter(|n| n.contains("x0")).take(4) {
        if let Err(e) = run_in(s, n, &["/bin/true"]) {
            wrong.push(e);
        }
    }
    let leaked = p.leaks();
    eprintln!(
        "concurrency: {THREADS} threads x {OPS_PER_THREAD} commands (seed {seed:#x}) in {took:.1?}: \
         {} took effect; first answers {} done, {} busy (then retried), {} exists, \
         {} not found; {} errors, {} wrong in the books, {} containers now",
        did.iter().filter(|d| !matches!(d, Did::Nothing)).count(),
        seen[0],
        seen[1],
        seen[2],
        seen[3],
        errors.len(),
        wrong.len(),
        now.len()
    );
    assert!(
        errors.is_empty(),
        "commands that went wrong (seed {seed:#x}):\n{errors:#?}"
    );
    assert!(
        wrong.is_empty(),
        "the store does not add up (seed {seed:#x}):\n{wrong:#?}"
    );
    assert!(doctor.is_none(), "{doctor:?}");
    assert!(unusable.is_empty(), "{unusable:?}");
    assert!(leaked.is_empty(), "leaked: {leaked:#?}");
    p.teardown();
}

/// The MiB of data the long copy moves.
const BIG_MIB: usize = 200;
/// And this many small files.
const SMALL_FILES: usize = 20_000;

/// What happened during the long copy.
struct Checks {
    ls: String,
    info: String,
    ls_done: bool,
    cloned: Result<String, Failed>,
    clone_done: bool,
    no_wait_src: Result<String, Failed>,
    no_wait_dst: Result<String, Failed>,
    no_wait_done: bool,
    checks: Duration,
    waited: Result<(String, String), Failed>,
    copied: Result<String, Failed>,
    copy_took: Duration,
}

#[test]
fn ls_and_info_never_wait_for_a_copy() {
    let Some(p) = two_pools() else { return };
    let s = &p.s;
    let (big, copy, other, other2) = (
        unique_name("big"),
        unique_name("big-copy"),
        unique_name("other"),
        unique_name("other-clone"),
    );
    s.ok(&["create", &big, "--pool", "bt"]);
    s.ok(&["create", &other, "--pool", "bt"]);
    write_in(s, &other, "berth-check", "other").unwrap();
    let at = s.ok(&["mount", &big]);
    let root = Path::new(at.lines().last().unwrap());
    fill_incompressible(root, BIG_MIB, 7).unwrap();
    // Many small files too: a copy is slow per file, however fast the disk.
    for d in 0..SMALL_FILES / 100 {
        let dir = root.join(format!("small/{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(f.to_string()), format!("{d}/{f}")).unwrap();
        }
    }
    s.ok(&["umount", &big]);

    let journal = s.root().join("journal");
    // Under way once its journal entry is there.
    let entry = format!("{copy}-clone-");
    let under_way = || {
        std::fs::read_dir(&journal)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&entry))
            })
            .unwrap_or(false)
    };
    let copy_args = ["clone", &big, &copy, "--copy", "--pool", "default"];
    let snap_args = ["snapshot", &big];
    let r = std::thread::scope(|sc| {
        let started = Instant::now();
        let copying = sc.spawn(move || (s.berth(&copy_args), started.elapsed()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !under_way() && !copying.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(under_way(), "the copy never started (or ended at once)");
        let t0 = Instant::now();
        let ls = s.ok(&["ls"]);
        let info = s.ok(&["info", &other]);
        let ls_done = !copying.is_finished();
        let cloned = s.berth(&["clone", &other, &other2, "--snapshot"]);
        let clone_done = !copying.is_finished();
        let no_wait_src = s.berth(&["--no-wait", "snapshot", &big]);
        let no_wait_dst = s.berth(&["--no-wait", "destroy", &copy]);
        let no_wait_done = !copying.is_finished();
        let checks = t0.elapsed();
        // Without --no-wait a snapshot of the source waits for the copy.
        let waiting = sc.spawn(move || s.berth_logged(&snap_args));
        let (copied, copy_took) = copying.join().unwrap();
        let waited = waiting.join().unwrap();
        Checks {
            ls,
            info,
            ls_done,
            cloned,
            clone_done,
            no_wait_src,
            no_wait_dst,
            no_wait_done,
            checks,
            waited,
            copied,
            copy_took,
        }
    });
    let Checks {
        ls,
        info,
        ls_done,
        cloned,
        clone_done,
        no_wait_src,
        no_wait_dst,
        no_wait_done,
        checks,
        waited,
        copied,
        copy_took,
    } = r;
    eprintln!(
        "concurrency: the copy of {BIG_MIB} MiB in {SMALL_FILES} files took {copy_took:.1?}; \
         ls, info, a clone and two --no-wait commands during it {checks:.1?}"
    );
    assert!(
        ls.contains(&big) && ls.contains(&other),
        "berth ls during the copy:\n{ls}"
    );
    assert!(info.contains(&other), "berth info during the copy:\n{info}");
    assert!(
        ls_done,
        "berth ls and info did not finish before the copy of {BIG_MIB} MiB"
    );
    cloned.unwrap_or_else(|f| {
        panic!(
            "unrelated clone during the copy ({}): {}",
            f.status, f.stderr
        )
    });
    assert!(
        clone_done,
        "an unrelated clone did not finish before the copy"
    );
    for (what, r) in [
        ("snapshot of the source", no_wait_src),
        ("destroy of the target", no_wait_dst),
    ] {
        let f = r.expect_err(&format!("--no-wait {what} during the copy succeeded"));
        let msg = f.stderr.trim();
        assert!(
            msg.contains("busy: ") && msg.contains("clone of") && msg.contains(&copy),
            "--no-wait {what} during the copy: wanted a busy error naming the clone \
             of {copy}, got: {msg}"
        );
    }
    assert!(no_wait_done, "--no-wait waited for the copy");
    copied.unwrap_or_else(|f| panic!("the copy ({}): {}", f.status, f.stderr));
    let (_, log) =
        waited.unwrap_or_else(|f| panic!("snapshot after the copy ({}): {}", f.status, f.stderr));
    assert!(
        log.contains(&format!("waiting for clone of {copy}")),
        "a snapshot of the source during the copy did not say what it waits for: {log}"
    );
    assert_eq!(
        run_in(s, &other2, &["/bin/cat", "/berth-check"]).unwrap(),
        "other"
    );
    doctor_clean(s).unwrap();
    p.teardown();
}
