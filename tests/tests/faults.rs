//! Privileged: berth never strands a volume. Every multi-step operation
//! (create, clone, snapshot, restore, flatten, destroy) is SIGKILLed at each
//! of its crash points (`BERTH_CRASH_AT=OP:STEP`, honoured by debug builds)
//! and at random delays, on every backend that runs here. The next berth
//! command must roll it back, or forward where it had committed, so that
//! `berth doctor` finds nothing, every container is listed, mounts and runs,
//! the untouched ones keep their data, nothing is left mounted, attached,
//! running or in a cgroup, and the operation succeeds when retried.
//!
//! A random kill (timeout(1), SIGKILL to berth and the helpers in its process
//! group) comes 0–300 ms after the start, within the time the operation took
//! when it last ran through, so that most land inside it. Each test prints
//! its counts ("N kills, N recovered, 0 inconsistent") and the seed of its
//! random kills: `BERTH_TEST_SEED=…` replays the same operations and draws
//! (the delays scale with measured run times). The first command after a
//! crash is either the retry or a run in an untouched container, alternately.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::cli::{unique_name, Failed, Store};
use berth_tests::consistency::{check_store, run_in, write_in};
use berth_tests::harness::{skip, Setup};
use berth_tests::pools;
use berth_tests::rng::Rng;

/// What each check reads back: `/berth-check` in the untouched containers,
/// `/berth-marker` in the one that is snapshotted and restored.
const CHECK: &str = "/berth-check";
const MARKER: &str = "/berth-marker";
/// The marker when snapshot `s0` was taken: what a restore brings back.
const AT_S0: &str = "at-s0";
/// The longest random delay before the kill (shorter for operations that
/// take less).
const MAX_DELAY_MS: u64 = 300;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Op {
    Create,
    CloneSnapshot,
    CloneCopy,
    Snapshot,
    Restore,
    Flatten,
    Destroy,
    ImageBuild,
    Commit,
    CreateFromImage,
}

impl Op {
    /// The operation's name in `BERTH_CRASH_AT`.
    fn crash_name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::CloneSnapshot | Op::CloneCopy => "clone",
            Op::Snapshot => "snapshot",
            Op::Restore => "restore",
            Op::Flatten => "flatten",
            Op::Destroy => "destroy",
            Op::ImageBuild => "image-build",
            Op::Commit => "commit",
            Op::CreateFromImage => "create",
        }
    }

    /// Its crash points, each with whether recovery finishes the operation
    /// (it had committed) rather than undoing it.
    fn steps(self) -> &'static [(&'static str, bool)] {
        match self {
            Op::Create | Op::ImageBuild => &[
                ("journaled", false),
                ("populated", false),
                ("recorded", true),
            ],
            Op::Commit => &[("journaled", false), ("copied", false), ("recorded", true)],
            Op::CreateFromImage => &[("journaled", false), ("made", false), ("recorded", true)],
            Op::CloneSnapshot | Op::CloneCopy => {
                &[("journaled", false), ("made", false), ("recorded", true)]
            }
            Op::Snapshot => &[("journaled", false), ("made", false)],
            Op::Restore | Op::Flatten => {
                &[("journaled", false), ("made", false), ("switched", true)]
            }
            // From its first step a destroy only goes forward.
            Op::Destroy => &[("journaled", true), ("snapshot", true), ("volume", true)],
        }
    }
}

/// One backend's store: pools on scratch storage, a clone source `base`, an
/// untouched bystander `keep`, and `subj`, which is snapshotted and restored
/// (it has snapshot `s0`).
struct Bed {
    tag: &'static str,
    s: Store,
    pool: String,
    base: String,
    keep: String,
    subj: String,
    /// An image built on the pool, which `CreateFromImage` makes containers from.
    image: String,
    snapshot_clones: bool,
    /// Snapshot clones depend on their origin: flatten has work to do.
    pins: bool,
    /// Store root and pool directories: nothing may stay mounted, attached
    /// or served under them.
    dirs: Vec<PathBuf>,
    /// What `subj`'s marker holds now.
    marker: String,
    seq: u32,
    /// How long each operation took when it last ran to its end: random
    /// kills land within that.
    took: HashMap<Op, Duration>,
    // Dropped after the store: scratch filesystems, the zpool, daemon checks.
    _setup: Vec<Box<dyn Any>>,
    _tmp: tempfile::TempDir,
}

/// One interrupted operation and what its retry is.
struct Case {
    op: Op,
    /// The container it makes, changes or destroys.
    name: String,
    snap: Option<String>,
    args: Vec<String>,
    /// `subj`'s volume before a restore.
    before: Option<String>,
}

fn ok(s: &Store, args: &[&str]) -> Result<String, String> {
    s.berth(args)
        .map_err(|f| format!("berth {args:?} ({}): {}", f.status, f.stderr.trim()))
}

fn not_found(f: &Failed) -> bool {
    f.stderr.contains("does not exist")
}

impl Bed {
    fn new(
        tag: &'static str,
        setup: fn(&Path) -> Result<Setup, String>,
        size: bool,
    ) -> Option<Bed> {
        if !rustix::process::geteuid().is_root() {
            skip("fault injection needs root (mounts, berth run)");
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("berth-faults-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let setup = match setup(tmp.path()) {
            Ok(s) => s,
            Err(e) => {
                skip(&e);
                return None;
            }
        };
        let s = Store::new();
        let p = &setup.pool;
        let kind = p.backend.as_str();
        let pool_dir = p.path.clone().unwrap();
        let mut add = vec!["pool".to_owned(), "add".into(), tag.into(), "-B".into()];
        add.extend([
            kind.to_owned(),
            "--path".into(),
            pool_dir.display().to_string(),
        ]);
        for (key, value) in &p.options {
            add.extend([format!("--{key}"), value.clone()]);
        }
        if size {
            // Small volumes: the minimal template needs a few MB.
            add.extend(["--size".to_owned(), "256M".into()]);
        }
        s.ok(&add.iter().map(String::as_str).collect::<Vec<_>>());
        let mut dirs = vec![s.root().to_path_buf(), pool_dir.clone()];
        // overlay stacks on a dir container: the clone source lives in a dir pool.
        let base_pool = if kind == "overlay" {
            let d = pool_dir.with_file_name("dirpool");
            s.ok(&[
                "pool",
                "add",
                "d",
                "-B",
                "dir",
                "--path",
                d.to_str().unwrap(),
            ]);
            dirs.push(d);
            "d".to_owned()
        } else {
            tag.to_owned()
        };
        let name = |what: &str| unique_name(&format!("f{tag}-{what}"));
        let (pins, snapshot_clones) = match kind {
            "dir" => (false, false),
            "btrfs" | "loop" => (false, true),
            _ => (true, true),
        };
        let bed = Bed {
            tag,
            pool: tag.to_owned(),
            base: name("base"),
            keep: name("keep"),
            subj: name("subj"),
            image: name("img"),
            snapshot_clones,
            pins,
            dirs,
            marker: "live-0".to_owned(),
            seq: 0,
            took: HashMap::new(),
            s,
            _setup: setup.keep,
            _tmp: tmp,
        };
        let s = &bed.s;
        s.ok(&["create", &bed.base, "--pool", &base_pool]);
        s.ok(&["create", &bed.keep, "--pool", &bed.pool]);
        s.ok(&["create", &bed.subj, "--pool", &bed.pool]);
        write_in(s, &bed.base, CHECK, &bed.base).unwrap();
        write_in(s, &bed.keep, CHECK, &bed.keep).unwrap();
        write_in(s, &bed.subj, MARKER, AT_S0).unwrap();
        s.ok(&["snapshot", &bed.subj, "s0"]);
        write_in(s, &bed.subj, MARKER, &bed.marker).unwrap();
        s.ok(&["image", "build", &bed.image, "--pool", &bed.pool]);
        Some(bed)
    }

    /// The operations this backend has, in the order their crash points
    /// run: restores first, so that snapshots are then taken of a volume
    /// that is no longer called after its container.
    fn ops(&self) -> Vec<Op> {
        let mut ops = vec![
            Op::Create,
            Op::CloneCopy,
            Op::Restore,
            Op::Snapshot,
            Op::ImageBuild,
            Op::Commit,
            Op::CreateFromImage,
            Op::Destroy,
        ];
        if self.snapshot_clones {
            ops.insert(1, Op::CloneSnapshot);
        }
        if self.pins {
            ops.insert(ops.len() - 1, Op::Flatten);
        }
        ops
    }

    fn fresh(&mut self, what: &str) -> String {
        self.seq += 1;
        unique_name(&format!("f{}-{what}{}", self.tag, self.seq))
    }

    fn clone_flag(&self) -> &'static str {
        if self.snapshot_clones {
            "--snapshot"
        } else {
            "--copy"
        }
    }

    fn volume_of(&self, name: &str) -> Result<String, String> {
        let out = ok(&self.s, &["info", name])?;
        out.lines()
            .find_map(|l| l.strip_prefix("volume:"))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| format!("berth info {name} shows no volume:\n{out}"))
    }

    /// Sets up what `op` works on; returns the case to interrupt.
    fn prepare(&mut self, op: Op) -> Result<Case, String> {
        let mut case = Case {
            op,
            name: self.subj.clone(),
            snap: None,
            args: Vec::new(),
            before: None,
        };
        let (base, pool) = (self.base.clone(), self.pool.clone());
        case.args = match op {
            Op::Create => {
                case.name = self.fresh("c");
                vec!["create".into(), case.name.clone(), "--pool".into(), pool]
            }
            Op::CloneSnapshot | Op::CloneCopy => {
                case.name = self.fresh(if op == Op::CloneCopy { "k" } else { "s" });
                let mode = if op == Op::CloneCopy {
                    "--copy"
                } else {
                    "--snapshot"
                };
                vec![
                    "clone".into(),
                    base,
                    case.name.clone(),
                    mode.into(),
                    "--pool".into(),
                    pool,
                ]
            }
            Op::Snapshot => {
                let snap = self.fresh("sn");
                case.snap = Some(snap.clone());
                vec!["snapshot".into(), self.subj.clone(), snap]
            }
            Op::Restore => {
                self.marker = format!("live-{}", self.seq);
                self.seq += 1;
                write_in(&self.s, &self.subj, MARKER, &self.marker)?;
                case.before = Some(self.volume_of(&self.subj)?);
                vec![
                    "snapshot".into(),
                    "restore".into(),
                    self.subj.clone(),
                    "s0".into(),
                ]
            }
            Op::Flatten => {
                case.name = self.fresh("f");
                ok(
                    &self.s,
                    &["clone", &base, &case.name, "--snapshot", "--pool", &pool],
                )?;
                vec!["flatten".into(), case.name.clone()]
            }
            Op::ImageBuild => {
                case.name = self.fresh("i");
                vec![
                    "image".into(),
                    "build".into(),
                    case.name.clone(),
                    "--pool".into(),
                    pool,
                ]
            }
            Op::Commit => {
                case.name = self.fresh("m");
                vec!["commit".into(), self.keep.clone(), case.name.clone()]
            }
            Op::CreateFromImage => {
                case.name = self.fresh("n");
                vec![
                    "create".into(),
                    case.name.clone(),
                    "--image".into(),
                    self.image.clone(),
                    "--pool".into(),
                    pool,
                ]
            }
            Op::Destroy => {
                case.name = self.fresh("v");
                let flag = self.clone_flag();
                ok(
                    &self.s,
                    &["clone", &base, &case.name, flag, "--pool", &pool],
                )?;
                ok(&self.s, &["snapshot", &case.name, "vs"])?;
                vec!["destroy".into(), case.name.clone(), "-s".into()]
            }
        };
        Ok(case)
    }

    /// Whether the case's operation has taken effect (read-only commands).
    fn done(&self, c: &Case) -> Result<bool, String> {
        let info = if matches!(c.op, Op::ImageBuild | Op::Commit) {
            self.s.berth(&["image", "info", &c.name])
        } else {
            self.s.berth(&["info", &c.name])
        };
        let gone = match &info {
            Ok(_) => false,
            Err(f) if not_found(f) => true,
            Err(f) => {
                return Err(format!(
                    "berth info {} ({}): {}",
                    c.name, f.status, f.stderr
                ))
            }
        };
        Ok(match c.op {
            Op::Create
            | Op::CloneSnapshot
            | Op::CloneCopy
            | Op::ImageBuild
            | Op::Commit
            | Op::CreateFromImage => !gone,
            Op::Destroy => gone,
            Op::Snapshot => {
                let out = ok(&self.s, &["snapshot", "ls", &self.subj])?;
                let snap = c.snap.as_deref().unwrap_or_default();
                out.lines()
                    .any(|l| l.split_whitespace().next() == Some(snap))
            }
            Op::Restore => self.volume_of(&self.subj)? != c.before.clone().unwrap_or_default(),
            Op::Flatten => info.as_ref().is_ok_and(|o| {
                o.lines()
                    .any(|l| l.starts_with("origin:") && l.contains("independent"))
            }),
        })
    }

    /// Runs the operation again; a destroy may find its container already
    /// gone (recovery finished it).
    fn retry(&mut self, c: &Case) -> Result<(), String> {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let started = Instant::now();
        match self.s.berth(&args) {
            Ok(_) => {
                self.took.insert(c.op, started.elapsed());
                Ok(())
            }
            Err(f) if c.op == Op::Destroy && not_found(&f) => Ok(()),
            Err(f) => Err(format!(
                "retry berth {args:?} ({}): {}",
                f.status,
                f.stderr.trim()
            )),
        }
    }

    /// The whole store adds up; `subj` holds what `restored` says.
    fn check(&self, restored: bool) -> Vec<String> {
        let marker = if restored { AT_S0 } else { &self.marker };
        let files = [
            (self.base.as_str(), CHECK, self.base.as_str()),
            (self.keep.as_str(), CHECK, self.keep.as_str()),
            (self.subj.as_str(), MARKER, marker),
        ];
        let dirs: Vec<&Path> = self.dirs.iter().map(PathBuf::as_path).collect();
        check_store(&self.s, &files, &dirs)
    }

    /// After the kill: recover, check, retry. `expect` is the direction the
    /// crash point promises (None for random kills); `retry_first` makes the
    /// retry the first command after the crash, else the bystander's read is.
    fn recover(&mut self, c: &Case, expect: Option<bool>, retry_first: bool) -> Vec<String> {
        let mut bad = Vec::new();
        let restored;
        if retry_first {
            match self.done(c) {
                Ok(true) => {}
                Ok(false) => bad.extend(self.retry(c).err()),
                Err(e) => bad.push(e),
            }
            match self.done(c) {
                Ok(true) => {}
                Ok(false) => bad.push("not done after the retry".to_owned()),
                Err(e) => bad.push(e),
            }
            restored = c.op == Op::Restore;
            bad.extend(self.check(restored));
        } else {
            // Any state-changing command recovers: here the bystander's run.
            if let Err(e) = run_in(&self.s, &self.keep, &["/bin/cat", CHECK]) {
                bad.push(format!("first command after the crash: {e}"));
            }
            let done = self.done(c);
            match (&done, expect) {
                (Ok(d), Some(want)) if *d != want => bad.push(format!(
                    "rolled {} instead of {}",
                    if *d { "forward" } else { "back" },
                    if want { "forward" } else { "back" }
                )),
                (Err(e), _) => bad.push(e.clone()),
                _ => {}
            }
            let done = done.unwrap_or(false);
            restored = c.op == Op::Restore && done;
            bad.extend(self.check(restored));
            if !done {
                bad.extend(self.retry(c).err());
            }
        }
        if c.op == Op::Restore {
            self.marker = AT_S0.to_owned();
        }
        bad
    }

    /// Removes what the case made, so that the store stays small.
    fn clean(&self, c: &Case) -> Result<(), String> {
        match c.op {
            Op::ImageBuild | Op::Commit => match self.s.berth(&["image", "rm", &c.name]) {
                Ok(_) => Ok(()),
                Err(f) if not_found(&f) => Ok(()),
                Err(f) => Err(format!("image rm {} ({}): {}", c.name, f.status, f.stderr)),
            },
            Op::Create
            | Op::CloneSnapshot
            | Op::CloneCopy
            | Op::Flatten
            | Op::Destroy
            | Op::CreateFromImage => match self.s.berth(&["destroy", &c.name, "-s"]) {
                Ok(_) => Ok(()),
                Err(f) if not_found(&f) => Ok(()),
                Err(f) => Err(format!("destroy {} ({}): {}", c.name, f.status, f.stderr)),
            },
            Op::Snapshot => {
                let snap = c.snap.as_deref().unwrap_or_default();
                ok(&self.s, &["snapshot", "rm", &self.subj, snap]).map(drop)
            }
            Op::Restore => Ok(()),
        }
    }

    /// Destroys every container, then checks that nothing is left.
    fn teardown(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for name in [&self.subj, &self.keep, &self.base] {
            if let Err(e) = ok(&self.s, &["destroy", name, "-s", "--force"]) {
                bad.push(e);
            }
        }
        if let Err(e) = ok(&self.s, &["image", "rm", &self.image]) {
            bad.push(e);
        }
        let dirs: Vec<&Path> = self.dirs.iter().map(PathBuf::as_path).collect();
        bad.extend(check_store(&self.s, &[], &dirs));
        bad
    }
}

#[derive(Default)]
struct Tally {
    kills: u32,
    /// Random kills that came after the operation had finished.
    finished_first: u32,
    /// Killed operations after which everything added up.
    recovered: u32,
    inconsistent: Vec<String>,
}

/// How one interrupted run of a case went.
enum Run {
    Killed,
    Finished,
    /// Did not die as it should have: what happened.
    Wrong(String),
}

impl Tally {
    /// Interrupts `case` with `kill`, recovers, checks and retries it, and
    /// counts the outcome; `expect` is the direction its crash point
    /// promises (forward?), if known.
    fn case(
        &mut self,
        bed: &mut Bed,
        what: &str,
        case: &Case,
        kill: impl FnOnce(&Store, &[&str]) -> Run,
        expect: Option<bool>,
        retry_first: bool,
    ) {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let mut bad = Vec::new();
        let started = Instant::now();
        let killed = match kill(&bed.s, &args) {
            Run::Killed => true,
            Run::Finished => {
                bed.took.insert(case.op, started.elapsed());
                self.finished_first += 1;
                false
            }
            Run::Wrong(e) => {
                bad.push(e);
                false
            }
        };
        self.kills += u32::from(killed);
        bad.extend(bed.recover(case, expect, retry_first));
        bad.extend(bed.clean(case).err());
        if bad.is_empty() {
            self.recovered += u32::from(killed);
            return;
        }
        self.inconsistent
            .push(format!("{what}:\n    {}", bad.join("\n    ")));
        // Repair, so that the next case starts from a sound store.
        let _ = bed.s.berth_status(&["doctor", "--fix"]);
    }
}

/// Every crash point of every operation, then `random` kills at random delays.
fn faults(tag: &'static str, setup: fn(&Path) -> Result<Setup, String>, size: bool, random: u32) {
    let started = Instant::now();
    let Some(mut bed) = Bed::new(tag, setup, size) else {
        return;
    };
    let mut t = Tally::default();
    let mut points = 0;
    for op in bed.ops() {
        for (step, forward) in op.steps() {
            points += 1;
            let at = format!("{}:{step}", op.crash_name());
            let what = format!("{tag} {at}");
            let case = bed
                .prepare(op)
                .unwrap_or_else(|e| panic!("{what}: setting up: {e}"));
            let crash =
                |s: &Store, args: &[&str]| match s.berth_env(&[("BERTH_CRASH_AT", &at)], args) {
                    Err(f) if f.killed() => Run::Killed,
                    Err(f) => Run::Wrong(format!(
                        "did not reach {at}: failed ({}): {}",
                        f.status, f.stderr
                    )),
                    Ok(_) => Run::Wrong(format!("did not reach {at}: it finished")),
                };
            t.case(
                &mut bed,
                &what,
                &case,
                crash,
                Some(*forward),
                points % 2 == 0,
            );
        }
    }
    let (mut rng, seed) = Rng::from_env();
    let ops = bed.ops();
    for _ in 0..random {
        let op = *rng.pick(&ops);
        // Within the operation's last run time, so that most kills land in it.
        let max = bed
            .took
            .get(&op)
            .map_or(MAX_DELAY_MS, |d| (d.as_millis() as u64).min(MAX_DELAY_MS));
        let delay = Duration::from_millis(rng.below(max + 1));
        let retry_first = rng.below(2) == 0;
        let what = format!("{tag} {} killed after {delay:?}", op.crash_name());
        let case = bed
            .prepare(op)
            .unwrap_or_else(|e| panic!("{what}: setting up: {e}"));
        let kill = |s: &Store, args: &[&str]| match s.berth_killed_after(delay, args) {
            Err(f) if f.killed() => Run::Killed,
            Ok(_) => Run::Finished,
            Err(f) => Run::Wrong(format!("failed on its own ({}): {}", f.status, f.stderr)),
        };
        t.case(&mut bed, &what, &case, kill, None, retry_first);
    }
    let end = bed.teardown();
    eprintln!(
        "faults {tag}: {points} crash points and {random} random kills (seed {seed:#x}; \
         {} of them came after the operation had finished): {} kills, {} recovered, \
         {} inconsistent, in {:.0?}",
        t.finished_first,
        t.kills,
        t.recovered,
        t.inconsistent.len(),
        started.elapsed()
    );
    assert!(
        t.inconsistent.is_empty() && end.is_empty(),
        "faults {tag} (seed {seed:#x}):\n  {}\nat the end: {end:#?}",
        t.inconsistent.join("\n  ")
    );
}

#[test]
fn dir_never_strands_a_volume() {
    faults("dir", pools::dir::setup, false, 24);
}

#[test]
fn overlay_over_dir_never_strands_a_volume() {
    faults("ovl", pools::overlay::setup, false, 24);
}

#[test]
fn btrfs_never_strands_a_volume() {
    faults("btr", pools::btrfs::setup, false, 24);
}

#[test]
fn loop_never_strands_a_volume() {
    faults("lp", pools::r#loop::setup, true, 12);
}

#[test]
fn aufs_never_strands_a_volume() {
    faults("au", pools::aufs::setup, false, 12);
}

#[test]
fn qcow2_never_strands_a_volume() {
    faults("qc", pools::qcow2::setup, true, 8);
}

#[test]
fn zfs_never_strands_a_volume() {
    faults("zf", pools::zfs::setup, false, 8);
}
