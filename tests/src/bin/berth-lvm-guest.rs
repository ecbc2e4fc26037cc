//! The payload the lvm test VM runs (see `tests/src/vm/`): this host's kernel has
//! no device-mapper, so the lvm conformance suite and the lvm-specific tests run
//! here, inside Debian's cloud kernel. It prints libtest-style lines, which the
//! host test reads from the serial log.
//!
//! `berth-lvm-guest conformance` runs every conformance property on a thin-pool
//! and on a classic volume group; `berth-lvm-guest specific` runs the tests below.
#![allow(clippy::unwrap_used)]
// A test runner: its report on stdout is its output.
#![allow(clippy::print_stdout)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use berth_bdev::generic::with_mounted;
use berth_bdev::{BdevError, CreateOpts, Revert, VolumeSpec};
use berth_tests::harness::{
    harness, outcome_line, probe_child, run_property, write_incompressible, Harness, Outcome,
    Setup, Tally, Verdict,
};
use berth_tests::pools::lvm::{setup_classic, setup_thin};

berth_tests::conformance!(thin, berth_tests::pools::lvm::setup_thin);
berth_tests::conformance!(classic, berth_tests::pools::lvm::setup_classic);

type Case = (String, Box<dyn Fn() -> Verdict>);
type SetupFn = fn(&std::path::Path) -> Result<Setup, String>;

fn conformance_cases() -> Vec<Case> {
    let suites: [(&str, SetupFn, _); 2] = [
        ("thin", setup_thin, thin::TABLE),
        ("classic", setup_classic, classic::TABLE),
    ];
    let mut cases: Vec<Case> = Vec::new();
    for (suite, setup, table) in suites {
        for (name, prop) in table {
            let run = move || run_property(setup, *prop);
            cases.push((format!("{suite}::{name}"), Box::new(run)));
        }
    }
    cases
}

fn specific_cases() -> Vec<Case> {
    let tests: [(&str, fn()); 4] = [
        (
            "thin_snapshots_are_o1_and_outlive_their_origin",
            thin_snapshots_are_o1_and_outlive_their_origin,
        ),
        (
            "classic_snapshots_pin_their_origin",
            classic_snapshots_pin_their_origin,
        ),
        (
            "resize_grows_the_filesystem_and_refuses_to_shrink",
            resize_grows_the_filesystem_and_refuses_to_shrink,
        ),
        (
            "lvm_refusals_are_clear_and_harmless",
            lvm_refusals_are_clear_and_harmless,
        ),
    ];
    tests
        .into_iter()
        .map(|(n, f)| {
            let run = move || catch_unwind(AssertUnwindSafe(f)).map(|()| Outcome::Passed);
            (n.to_owned(), Box::new(run) as Box<dyn Fn() -> Verdict>)
        })
        .collect()
}

fn main() -> ExitCode {
    // The `tools` property runs this binary again with another PATH.
    if let Some(line) = probe_child() {
        println!("{line}");
        return ExitCode::SUCCESS;
    }
    let cases = match std::env::args().nth(1).as_deref() {
        Some("conformance") => conformance_cases(),
        Some("specific") => specific_cases(),
        other => {
            eprintln!("usage: berth-lvm-guest conformance|specific (got {other:?})");
            return ExitCode::FAILURE;
        }
    };
    println!("running {} tests", cases.len());
    let mut failed = Vec::new();
    // Per suite (the part of a case's name before `::`), in order of appearance.
    let mut tallies: Vec<(String, Tally)> = Vec::new();
    for (name, case) in &cases {
        let verdict = case();
        let (suite, prop) = name.split_once("::").unwrap_or(("specific", name));
        println!("{}", outcome_line(suite, prop, &verdict));
        // Every tool is in the guest: a skip here is a failure, as under CI.
        let ok = matches!(verdict, Ok(Outcome::Passed | Outcome::NotApplicable(_)));
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(name.clone());
        }
        match tallies.iter_mut().find(|(s, _)| s == suite) {
            Some((_, t)) => t.add(&verdict),
            None => {
                let mut t = Tally::default();
                t.add(&verdict);
                tallies.push((suite.to_owned(), t));
            }
        }
    }
    for (suite, t) in &tallies {
        println!("{}", t.summary(suite));
    }
    let passed = cases.len() - failed.len();
    if failed.is_empty() {
        println!("test result: ok. {passed} passed; 0 failed");
        ExitCode::SUCCESS
    } else {
        println!("failures: {}", failed.join(", "));
        println!(
            "test result: FAILED. {passed} passed; {} failed",
            failed.len()
        );
        ExitCode::FAILURE
    }
}

fn opts(mib: u64) -> CreateOpts {
    CreateOpts {
        size: Some(mib << 20),
        fstype: None,
    }
}

fn write_mib(h: &Harness, v: &VolumeSpec, file: &str, mib: usize) {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), false, |root| {
        let p = root.join(file);
        let mut f = std::fs::File::create(&p).map_err(BdevError::io("create", &p))?;
        write_incompressible(&mut f, mib, 7).map_err(BdevError::io("write", &p))?;
        f.sync_all().map_err(BdevError::io("sync", &p))
    })
    .unwrap_or_else(|e| panic!("write {file}: {e}"));
}

fn file_len(h: &Harness, v: &VolumeSpec, file: &str) -> Option<u64> {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), true, |root| {
        Ok(std::fs::metadata(root.join(file)).ok().map(|m| m.len()))
    })
    .unwrap_or_else(|e| panic!("read {file}: {e}"))
}

/// Bytes the thin pool `VG/pool` has mapped.
fn pool_used(h: &Harness) -> u64 {
    let vg = h.pool.options.get("vg").cloned().unwrap_or_default();
    let out = berth_bdev::cmd::run(
        &berth_bdev::cmd::HostRunner,
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_name,vg_name,lv_size,data_percent,origin,pool_lv,lv_attr",
            "--units",
            "b",
            "--nosuffix",
            &format!("{vg}/pool"),
        ],
    )
    .expect("lvs");
    let lvs = berth_backends::lvm::parse_lvs(&out.stdout).expect("parse lvs");
    lvs[0].allocated().expect("pool data_percent")
}

fn thin_snapshots_are_o1_and_outlive_their_origin() {
    let Some(h) = harness(setup_thin) else {
        return;
    };
    let v = h.create("big", &opts(256));
    write_mib(&h, &v, "data", 32);
    let before = pool_used(&h);
    let snap = h.snapshot(&v, "big", "s1");
    let clone = h.clone_of(&snap, "c1");
    let after = pool_used(&h);
    assert!(
        after < before + (1 << 20),
        "a snapshot and a clone of 32 MiB mapped {} new bytes",
        after - before
    );
    let u = h.backend.usage(&clone).expect("usage");
    assert!(
        u.used_bytes >= 32 << 20,
        "clone maps the shared data: {u:?}"
    );
    assert_eq!(u.limit_bytes, Some(256 << 20));
    // Thin snapshots map pool blocks themselves: the origin can go first.
    h.backend
        .destroy(&v)
        .expect("destroy origin before its snapshot");
    assert_eq!(file_len(&h, &snap, "data"), Some(32 << 20));
    assert_eq!(file_len(&h, &clone, "data"), Some(32 << 20));
    h.backend.destroy(&clone).expect("destroy clone");
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
}

fn classic_snapshots_pin_their_origin() {
    let Some(h) = harness(setup_classic) else {
        return;
    };
    let v = h.create("o", &opts(64));
    write_mib(&h, &v, "data", 4);
    let snap = h.snapshot(&v, "o", "s1");
    let e = h.backend.destroy(&v).expect_err("origin with a snapshot");
    assert!(
        e.to_string().contains("o+s1"),
        "the refusal names the snapshot: {e}"
    );
    assert_eq!(file_len(&h, &v, "data"), Some(4 << 20), "origin intact");
    assert!(matches!(
        h.backend.snapshot_clone(&v, "c", &mut Revert::new()),
        Err(BdevError::Unsupported { .. })
    ));
    let s2 = h
        .backend
        .snapshot(&snap, "o", "s2", &mut Revert::new())
        .expect_err("a snapshot of a classic snapshot");
    assert!(matches!(s2, BdevError::Unsupported { .. }), "{s2}");
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
    h.backend.destroy(&v).expect("destroy origin");
}

fn resize_grows_the_filesystem_and_refuses_to_shrink() {
    let Some(h) = harness(setup_thin) else {
        return;
    };
    let v = h.create("r", &opts(128));
    write_mib(&h, &v, "a", 8);
    h.backend.resize(&v, 512 << 20).expect("grow");
    let total = with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), true, |root| {
        let st = rustix::fs::statvfs(root).map_err(|e| BdevError::Io {
            op: "statvfs",
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(st.f_blocks * st.f_frsize)
    })
    .expect("statvfs");
    assert!(
        total > 400 << 20,
        "filesystem is {total} bytes after resize"
    );
    assert_eq!(file_len(&h, &v, "a"), Some(8 << 20));
    let e = h.backend.resize(&v, 64 << 20).expect_err("shrink");
    assert!(e.to_string().contains("only grow"), "{e}");
    h.backend.destroy(&v).expect("destroy");
}

fn lvm_refusals_are_clear_and_harmless() {
    let Some(h) = harness(setup_thin) else {
        return;
    };
    // LVM reserves `_tmeta` and friends for internal LVs.
    let mut rv = Revert::new();
    let e = h
        .backend
        .create("x_tmeta", &opts(64), &mut rv)
        .expect_err("reserved LV name");
    drop(rv);
    assert!(e.to_string().contains("lvcreate"), "{e}");
    let v = h.create("busy", &opts(64));
    let mnt = h.scratch("held");
    let guard = h.backend.mount(&v, &mnt, false).expect("mount");
    let e = h.backend.destroy(&v).expect_err("destroy while mounted");
    assert!(e.to_string().contains("lvremove"), "{e}");
    guard.release().expect("unmount");
    h.backend.destroy(&v).expect("destroy");
    // Destroy is idempotent: a volume that is gone is destroyed.
    h.backend.destroy(&v).expect("destroy twice");
}
