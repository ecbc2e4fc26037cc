//! `berth bench`: a whole benchmark on throw-away pools, the report it
//! writes, and that nothing of it stays — after it ends, fails or is killed.

use std::path::Path;
use std::time::Duration;

use berth_bench::model::{op, Report, Suite, Unit};
use berth_tests::cli::Store;
use berth_tests::consistency::leaks;

const LIFECYCLE: [&str; 8] = [
    op::CREATE,
    op::SNAPSHOT_CLONE,
    op::COPY,
    op::SNAPSHOT,
    op::RESTORE,
    op::MOUNT,
    op::START,
    op::DESTROY,
];

/// Nothing mounted, attached or running under the store, and no run directory left.
fn assert_left_nothing(s: &Store) {
    let left = leaks(&[s.root()]);
    assert!(left.is_empty(), "left behind: {left:#?}");
    let runs: Vec<_> = std::fs::read_dir(s.root().join("bench"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(runs.is_empty(), "benchmark run directories left: {runs:?}");
}

fn row<'a>(
    r: &'a Report,
    backend: &str,
    suite: Suite,
    operation: &str,
) -> &'a berth_bench::Measurement {
    r.results
        .iter()
        .find(|m| m.backend == backend && m.suite == suite && m.operation == operation)
        .unwrap_or_else(|| panic!("no {operation} row for {backend}: {:#?}", r.results))
}

#[test]
fn the_benchmark_measures_each_backend_next_to_its_primitive_and_leaves_nothing() {
    let s = Store::new();
    let out = tempfile::Builder::new()
        .prefix("berth-bench-report-")
        .tempdir_in("/var/tmp")
        .expect("report dir");
    let report_dir = out.path().join("report");
    let json = s.ok(&[
        "--format",
        "json",
        "bench",
        "--suite",
        "lifecycle,space,image",
        "--runs",
        "1",
        "--clones",
        "3",
        "--backends",
        "dir,overlay,btrfs",
        "--out",
        &report_dir.to_string_lossy(),
    ]);
    // The schema: the JSON reads back into the report type, field for field.
    let r: Report = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(r.schema, berth_bench::model::SCHEMA);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(r.rootfs.source, "minimal");
    assert!(r.rootfs.files > 10, "{:?}", r.rootfs);
    assert_eq!(r.settings.runs, 1);
    assert!(!r.host.kernel.is_empty() && r.host.cpus >= 1);
    assert_eq!(r.host.filesystems.len(), 3);
    assert_eq!(
        r.failures().count(),
        0,
        "{:#?}",
        r.failures().collect::<Vec<_>>()
    );
    for backend in ["dir", "overlay", "btrfs"] {
        for operation in LIFECYCLE {
            let m = row(&r, backend, Suite::Lifecycle, operation);
            assert_eq!(m.unit, Unit::Ms);
            let no_snapshot_clone =
                backend == "dir" && (operation == op::SNAPSHOT_CLONE || operation == op::DESTROY);
            if no_snapshot_clone {
                assert!(m.berth.is_none() && m.note.is_some(), "{m:?}");
                continue;
            }
            let b = m.berth.unwrap_or_else(|| panic!("no figure: {m:?}"));
            assert!(
                b.median > 0.0 && b.min <= b.median && b.median <= b.max && b.runs == 1,
                "{m:?}"
            );
            if operation != op::RESTORE {
                let p = m
                    .primitive
                    .as_ref()
                    .unwrap_or_else(|| panic!("no primitive: {m:?}"));
                assert!(p.value.median > 0.0 && !p.command.is_empty(), "{m:?}");
                assert!(m.ratio.is_some_and(|x| x > 0.0), "{m:?}");
            }
        }
        for operation in [op::SPACE_CLONE, op::SPACE_WRITE, op::SPACE_PER_CLONE] {
            let m = row(&r, backend, Suite::Space, operation);
            assert_eq!(m.unit, Unit::Bytes);
            assert!(m.berth.is_some() && m.reported.is_some(), "{m:?}");
        }
        // 1 MiB written shows as at least most of a MiB on the storage.
        let w = row(&r, backend, Suite::Space, op::SPACE_WRITE);
        assert!(w.berth.is_some_and(|b| b.median >= 768.0 * 1024.0), "{w:?}");
    }
    // A snapshot clone shares its data: far less than the copy a dir clone is.
    let dir_clone = row(&r, "dir", Suite::Space, op::SPACE_CLONE)
        .berth
        .map(|b| b.median);
    let btrfs_clone = row(&r, "btrfs", Suite::Space, op::SPACE_CLONE)
        .berth
        .map(|b| b.median);
    assert!(
        btrfs_clone < dir_clone,
        "btrfs {btrfs_clone:?} vs dir {dir_clone:?}"
    );

    check_image_rows(&r);

    for f in [
        "report.json",
        "lifecycle.csv",
        "space.csv",
        "image.csv",
        "image.svg",
        "index.html",
        "clone.svg",
        "start.svg",
    ] {
        let p = report_dir.join(f);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!text.is_empty(), "{f} is empty");
    }
    let html = std::fs::read_to_string(report_dir.join("index.html")).expect("index.html");
    assert!(
        html.contains("clone.svg") && html.contains("btrfs"),
        "{html}"
    );
    assert_left_nothing(&s);
}

/// The image suite: build, the 1st containers, the later ones next to the
/// raw snapshot clone (with a ratio where the backend has one) and the space
/// each adds.
fn check_image_rows(r: &Report) {
    for backend in ["dir", "overlay", "btrfs"] {
        let snapshot_clone = backend != "dir";
        for operation in [
            op::IMAGE_BUILD,
            op::IMAGE_FIRST,
            op::IMAGE_FIRST_COPIED,
            op::IMAGE_LATER,
            op::IMAGE_LAST,
        ] {
            let m = row(r, backend, Suite::Image, operation);
            assert_eq!(m.unit, Unit::Ms);
            let b = m.berth.unwrap_or_else(|| panic!("no figure: {m:?}"));
            assert!(
                b.median > 0.0 && b.min <= b.median && b.median <= b.max,
                "{m:?}"
            );
            let has_primitive = match operation {
                op::IMAGE_BUILD | op::IMAGE_FIRST_COPIED => true,
                _ => snapshot_clone,
            };
            assert_eq!(m.primitive.is_some(), has_primitive, "{m:?}");
            assert_eq!(m.ratio.is_some_and(|x| x > 0.0), has_primitive, "{m:?}");
        }
        // Containers #2 and #3 of --clones 3.
        let later = row(r, backend, Suite::Image, op::IMAGE_LATER);
        assert_eq!(later.berth.map(|b| b.runs), Some(2), "{later:?}");
        let vs_clone = r
            .results
            .iter()
            .find(|m| m.backend == backend && m.operation == op::IMAGE_LATER_VS_CLONE);
        assert_eq!(vs_clone.is_some(), snapshot_clone, "{vs_clone:?}");
        if let Some(m) = vs_clone {
            assert!(m.ratio.is_some_and(|x| x > 0.0), "{m:?}");
        }
        let space = row(r, backend, Suite::Image, op::IMAGE_SPACE);
        assert_eq!(space.unit, Unit::Bytes);
        assert!(space.berth.is_some(), "{space:?}");
    }
    // A container from an image shares the image's data where the backend can
    // snapshot-clone; on dir it is a copy of the rootfs.
    let per = |backend| {
        row(r, backend, Suite::Image, op::IMAGE_SPACE)
            .berth
            .map(|b| b.median)
    };
    assert!(
        per("btrfs") < per("dir"),
        "btrfs {:?} vs dir {:?}",
        per("btrfs"),
        per("dir")
    );
}

#[test]
fn a_killed_benchmark_is_cleaned_up_by_the_next_one() {
    let s = Store::new();
    // Killed while its pools are mounted and measuring.
    let killed = s.berth_killed_after(
        Duration::from_millis(2500),
        &[
            "bench",
            "--backends",
            "btrfs,overlay",
            "--suite",
            "lifecycle",
            "--runs",
            "200",
        ],
    );
    assert!(killed.as_ref().is_err_and(|f| f.killed()), "{killed:?}");
    assert!(
        !leaks(&[s.root()]).is_empty() || has_entries(&s.root().join("bench")),
        "the killed run left nothing to clean: the test proves nothing"
    );
    s.ok(&[
        "bench",
        "--backends",
        "dir",
        "--suite",
        "lifecycle",
        "--runs",
        "1",
    ]);
    assert_left_nothing(&s);
}

#[test]
fn an_interrupted_benchmark_removes_what_it_made_before_it_exits() {
    let s = Store::new();
    let root = s.root().to_string_lossy().into_owned();
    let bin = s.bin().to_string_lossy().into_owned();
    // One SIGINT to berth alone, as Ctrl-C sends it (its children get their
    // own from the terminal; here they finish their step).
    let script = format!(
        "{bin} --root {root} bench --backends btrfs,overlay --suite lifecycle --runs 200 & \
         p=$!; sleep 2.5; kill -INT $p; wait $p"
    );
    let r = berth_bdev::cmd::run(&berth_bdev::cmd::HostRunner, "sh", &["-c", &script]);
    let e = r.expect_err("an interrupted benchmark does not succeed");
    assert!(e.stderr().contains("interrupted"), "{e}");
    // No later command: the interrupted run itself left nothing.
    assert_left_nothing(&s);
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn bad_input_is_refused_by_name_before_anything_is_made() {
    let s = Store::new();
    for (args, says) in [
        (&["bench", "--runs", "0"][..], "--runs"),
        (
            &["bench", "--backends", "floppy"][..],
            "unknown backend \"floppy\"",
        ),
        (
            &["bench", "--suite", "speed"][..],
            "unknown suite \"speed\"",
        ),
        (&["bench", "--pool", "nosuch"][..], "nosuch"),
        (
            &["bench", "--rootfs", "/nonexistent-rootfs"][..],
            "not a directory",
        ),
        (&["bench", "clone", "nosuch"][..], "nosuch"),
    ] {
        let f = s.berth(args).expect_err("refused");
        assert!(f.stderr.contains(says), "{args:?}: {}", f.stderr);
        assert_ne!(f.code(), Some(0));
    }
    assert!(!has_entries(&s.root().join("bench")));
}
