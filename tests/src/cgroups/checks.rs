//! One function per property, run on the host and in the pure v2 VM.

use std::time::{Duration, Instant};

use berth_bdev::process::Process;
use berth_runtime::cgroup::{kill_and_remove_stale, Cgroup, CgroupError, Limits};
use berth_runtime::{run_observed, ExitStatus, LinuxSys, RunSpec};

use super::*;

const V1_CONTROLLERS: [&str; 7] = [
    "cpu", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
];

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-cg-")
        .tempdir_in("/var/tmp")
        .expect("temp dir")
}

/// Membership, limit files and the device policy of one fully limited cgroup.
pub fn limits_membership_and_devices(fl: Flavor) {
    let limits = Limits {
        memory: Some(64 << 20),
        memory_swap: Some(64 << 20),
        pids: Some(64),
        cpus: Some(0.5),
        cpuset: Some("0".into()),
        io_weight: None,
    };
    let g = Guard::create(&config("limits", limits, true));
    let tail = format!("/berth/{}", g.name);

    // Membership: /proc/PID/cgroup names the new cgroup in every hierarchy.
    let held = hold(&mut || 0);
    if let Err(e) = g.cg().add_process(held.pid()) {
        panic!("add {}: {}", held.pid(), chain(&e));
    }
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", held.pid())).expect("cgroup");
    let status = std::fs::read_to_string(format!("/proc/{}/status", held.pid())).expect("status");
    assert_eq!(held.wait(), ExitStatus::Exited(0));
    assert_member(fl, &text, &tail, g.cg().paths().len());
    let cpus = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim);
    assert_eq!(cpus, Some("0"), "cpuset 0");

    // Limit files, as the kernel reads them back.
    let want: &[(&str, &str)] = match fl {
        Flavor::V1 => &[
            ("memory.limit_in_bytes", "67108864"),
            ("memory.memsw.limit_in_bytes", "67108864"),
            ("pids.max", "64"),
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "50000"),
            ("cpuset.cpus", "0"),
        ],
        Flavor::V2 => &[
            ("memory.max", "67108864"),
            ("memory.swap.max", "0"),
            ("pids.max", "64"),
            ("cpu.max", "50000 100000"),
            ("cpuset.cpus", "0"),
        ],
    };
    for (file, value) in want {
        assert_eq!(g.read(file), *value, "{file}");
    }
    match fl {
        Flavor::V1 => {
            let mut list: Vec<String> = g.read("devices.list").lines().map(str::to_owned).collect();
            list.sort();
            let mut allowed: Vec<String> = [
                "c 1:3", "c 1:5", "c 1:7", "c 1:8", "c 1:9", "c 5:0", "c 5:1", "c 5:2", "c 136:*",
            ]
            .iter()
            .map(|d| format!("{d} rwm"))
            .collect();
            allowed.sort();
            assert_eq!(list, allowed, "devices.list");
        }
        Flavor::V2 => {
            let parent = g.cg().paths()[0].parent().expect("parent").to_path_buf();
            let on = std::fs::read_to_string(parent.join("cgroup.subtree_control")).expect("read");
            for c in ["memory", "pids", "cpu", "cpuset"] {
                assert!(on.split_whitespace().any(|x| x == c), "{c} not on: {on}");
            }
        }
    }

    // Devices: only the allowed character devices open inside.
    let tmp = scratch();
    let blk = node(tmp.path(), "loop0", true, 7, 0);
    let tun = node(tmp.path(), "tun", false, 10, 200);
    let pts = node(tmp.path(), "pts7", false, 136, 7);
    let null = std::path::Path::new("/dev/null");
    let outside = open_errno(&blk);
    assert_ne!(
        outside,
        libc_eperm(),
        "the block node opens outside the cgroup"
    );
    let errno = |p: &std::path::Path| run_in(g.cg(), &mut || open_errno(p));
    assert_eq!(errno(null), ExitStatus::Exited(0), "/dev/null opens inside");
    assert_eq!(
        errno(&blk),
        ExitStatus::Exited(libc_eperm()),
        "b 7:0 is denied"
    );
    assert_eq!(
        errno(&tun),
        ExitStatus::Exited(libc_eperm()),
        "c 10:200 is denied"
    );
    let pts_errno = errno(&pts);
    assert_ne!(
        pts_errno,
        ExitStatus::Exited(libc_eperm()),
        "c 136:7 is allowed"
    );
    g.finish();
}

/// A container started by the runtime is in its cgroup in every hierarchy
/// from its exec on: created in cgroup2's by clone3, joined to v1's by a
/// write of its own (see `berth_runtime::cgroup`'s join module).
pub fn a_container_is_in_its_cgroup_in_every_hierarchy(fl: Flavor) {
    let root = scratch();
    let bin = root.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    if std::fs::hard_link("/bin/busybox", bin.join("busybox")).is_err() {
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    }
    let cfg = config("born", Limits::default(), true);
    let tail = format!("/berth/{}", cfg.name);
    let name = cfg.name.clone();
    let mut spec = RunSpec::new(
        root.path(),
        "born",
        vec!["/bin/busybox".into(), "sleep".into(), "30".into()],
    );
    spec.cgroup = Some(cfg);
    let mut seen = None;
    let status = run_observed(&spec, &LinuxSys, &mut |s| {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", s.pid));
        seen = Some((text, s.cgroup.len()));
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(s.pid).expect("a pid"),
            rustix::process::Signal::KILL,
        );
    });
    assert_eq!(status.expect("run"), ExitStatus::Signaled(libc::SIGKILL));
    let (text, dirs) = seen.expect("the container started");
    let text = text.expect("read its /proc/PID/cgroup");
    assert_member(fl, &text, &tail, dirs);
    assert_gone(&name);
}

/// `text`, a `/proc/PID/cgroup`, puts the process in cgroup `tail` in
/// `dirs` hierarchies: cgroup2's and, on v1, each controller's berth uses.
fn assert_member(fl: Flavor, text: &str, tail: &str, dirs: usize) {
    let inside = text.lines().filter(|l| l.ends_with(tail)).count();
    assert_eq!(inside, dirs, "one line per hierarchy of its cgroup: {text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(tail)),
        "not in the cgroup2 cgroup: {text}"
    );
    if fl == Flavor::V1 {
        for c in V1_CONTROLLERS {
            let line = text.lines().find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|cs| cs.split(',').any(|x| x == c))
            });
            if let Some(line) = line {
                assert!(line.ends_with(tail), "{c}: {line}");
            }
        }
    }
}

fn libc_eperm() -> i32 {
    rustix::io::Errno::PERM.raw_os_error()
}

/// A fork loop in a cgroup with pids.max 64 gets 63 children (it is the 64th).
pub fn fork_loop_stops_at_pids_max(_fl: Flavor) {
    let limits = Limits {
        pids: Some(64),
        ..Limits::default()
    };
    let g = Guard::create(&config("pids", limits, false));
    let got = run_in(g.cg(), &mut || fork_until_refused(200));
    assert_eq!(got, ExitStatus::Exited(63), "forks before the refusal");
    assert_eq!(g.read("pids.current"), "63", "the sleepers are still there");
    g.finish();
}

/// A process that needs 100 MiB in a 64 MiB cgroup is OOM-killed.
pub fn memory_limit_oom_kills(fl: Flavor) {
    let limits = Limits {
        memory: Some(64 << 20),
        ..Limits::default()
    };
    let g = Guard::create(&config("oom", limits, false));
    let dd = Exec::busybox(&["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]);
    let got = run_in(g.cg(), &mut || dd.exec());
    assert_eq!(got, ExitStatus::Signaled(9), "dd of 100 MiB");
    let file = match fl {
        Flavor::V1 => "memory.oom_control",
        Flavor::V2 => "memory.events",
    };
    let kills = keyed(&g.read(file), "oom_kill");
    assert!(kills.is_some_and(|k| k >= 1), "{file}: {kills:?}");
    g.finish();
}

/// kill_and_remove kills a process and its children, and removes everything
/// well within its 2 s bound.
pub fn kill_and_remove_kills_every_member(_fl: Flavor) {
    let g = Guard::create(&config("kill", Limits::default(), false));
    let mut held = hold(&mut || {
        fork_until_refused(5);
        std::thread::sleep(Duration::from_secs(30));
        0
    });
    if let Err(e) = g.cg().add_process(held.pid()) {
        panic!("add: {}", chain(&e));
    }
    held.go();
    let procs = g.dir_with("cgroup.procs").join("cgroup.procs");
    let members = || -> Vec<i32> {
        std::fs::read_to_string(&procs)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || members().len() == 6),
        "{:?}",
        members()
    );
    let pids: Vec<Process> = members().into_iter().filter_map(Process::of).collect();
    let started = Instant::now();
    g.finish();
    let took = started.elapsed();
    assert_eq!(held.wait(), ExitStatus::Signaled(9));
    for p in pids {
        assert!(
            p.wait_exit(Duration::from_secs(2)),
            "pid {} survived",
            p.pid
        );
    }
    assert!(
        took < Duration::from_millis(2500),
        "kill_and_remove took {took:?}"
    );
}

/// A leftover with a process in it: create refuses it, crash cleanup kills
/// the process and removes it. An empty one: create replaces it, crash
/// cleanup removes it.
pub fn leftovers_are_reclaimed_or_refused(_fl: Flavor) {
    let cfg = config("stale", Limits::default(), false);
    let parent = cfg.parent.clone();
    let busy = Guard::create(&cfg);
    let held = hold(&mut || 0);
    if let Err(e) = busy.cg().add_process(held.pid()) {
        panic!("add: {}", chain(&e));
    }
    let e = Cgroup::create(&cfg).expect_err("create over a busy leftover");
    assert!(is_in_use(&e), "{}", chain(&e));
    assert!(e.to_string().contains("in use"), "{e}");
    for p in busy.cg().paths() {
        assert!(p.is_dir(), "{p:?} survived the refusal");
    }
    // What outlived its berth is killed with its cgroup.
    match kill_and_remove_stale(parent.as_deref(), &cfg.name) {
        Ok(true) => {}
        other => panic!("crash cleanup of a busy leftover: {other:?}"),
    }
    assert_eq!(held.wait(), ExitStatus::Signaled(9));
    assert_gone(&cfg.name);
    busy.finish();
    // An empty leftover: create replaces it, as after a crash.
    let first = Guard::create(&cfg);
    let second = match Cgroup::create(&cfg) {
        Ok(cg) => Guard::create_from(cg, &cfg.name),
        Err(e) => panic!("create over an empty leftover: {}", chain(&e)),
    };
    assert_eq!(second.cg().paths(), first.cg().paths());
    assert_eq!(
        kill_and_remove_stale(parent.as_deref(), &cfg.name).ok(),
        Some(true)
    );
    assert_gone(&cfg.name);
    assert_eq!(
        kill_and_remove_stale(parent.as_deref(), &cfg.name).ok(),
        Some(false)
    );
    // Removing what is already gone is not an error.
    second.finish();
    first.finish();
}

/// Containers starting and stopping at once share berth's parent cgroup,
/// which the last one out removes: a create racing that removal makes the
/// parent again instead of failing (ENOENT, or ENODEV from a file of the
/// parent being removed).
pub fn creates_racing_the_parent_removal_succeed(_fl: Flavor) {
    const THREADS: usize = 3;
    const ROUNDS: usize = 60;
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for i in 0..ROUNDS {
                        let cfg = config(&format!("race{t}-{i}"), Limits::default(), false);
                        match Cgroup::create(&cfg) {
                            Ok(cg) => {
                                if let Err(e) = cg.kill_and_remove() {
                                    failed.push(format!("remove {}: {}", cfg.name, chain(&e)));
                                }
                            }
                            Err(e) => failed.push(format!("create {}: {}", cfg.name, chain(&e))),
                        }
                        assert_gone(&cfg.name);
                    }
                    failed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        THREADS * ROUNDS,
        failures.join("\n")
    );
}

/// io_weight is written where the kernel has a weight file, or refused
/// clearly with nothing left behind.
pub fn io_weight_is_set_or_refused_cleanly(fl: Flavor) {
    let weight = 500;
    let limits = Limits {
        io_weight: Some(weight),
        ..Limits::default()
    };
    let cfg = config("io", limits, false);
    match Cgroup::create(&cfg) {
        Ok(cg) => {
            let g = Guard::create_from(cg, &cfg.name);
            let (files, want) = match fl {
                Flavor::V1 => (["blkio.weight", "blkio.bfq.weight"], weight.to_string()),
                Flavor::V2 => (["io.weight", "io.bfq.weight"], format!("default {weight}")),
            };
            let file = files
                .iter()
                .find(|f| g.cg().paths().iter().any(|p| p.join(f).exists()))
                .expect("a weight file");
            let got = g.read(file);
            assert!(got.contains(&want), "{file}: {got}");
            eprintln!("io weight: {file} reads {got:?}");
            g.finish();
        }
        Err(e) => {
            assert!(
                matches!(e, CgroupError::NoWeightFile { .. }),
                "{}",
                chain(&e)
            );
            assert!(e.to_string().contains("weight"), "{e}");
            eprintln!("io weight refused: {e}");
            assert_gone(&cfg.name);
        }
    }
    let bad = Limits {
        io_weight: Some(if fl == Flavor::V1 { 5 } else { 0 }),
        ..Limits::default()
    };
    let e = Cgroup::create(&config("io-bad", bad, false)).expect_err("weight out of range");
    assert!(
        matches!(e, CgroupError::InvalidLimit { .. }),
        "{}",
        chain(&e)
    );
    assert_gone(&unique("io-bad"));
}

/// One check, run for the flavor of cgroups it is on.
pub type Check = fn(Flavor);

/// Every check, by name, for a runner.
pub fn all() -> Vec<(&'static str, Check)> {
    vec![
        (
            "limits_membership_and_devices",
            limits_membership_and_devices,
        ),
        (
            "a_container_is_in_its_cgroup_in_every_hierarchy",
            a_container_is_in_its_cgroup_in_every_hierarchy,
        ),
        ("fork_loop_stops_at_pids_max", fork_loop_stops_at_pids_max),
        ("memory_limit_oom_kills", memory_limit_oom_kills),
        (
            "kill_and_remove_kills_every_member",
            kill_and_remove_kills_every_member,
        ),
        (
            "leftovers_are_reclaimed_or_refused",
            leftovers_are_reclaimed_or_refused,
        ),
        (
            "creates_racing_the_parent_removal_succeed",
            creates_racing_the_parent_removal_succeed,
        ),
        (
            "io_weight_is_set_or_refused_cleanly",
            io_weight_is_set_or_refused_cleanly,
        ),
    ]
}
