//! Tests of the io suite: the fio JSON parser on captured output, and
//! real fio runs on the host's filesystem and on a ramfs.

use super::*;

/// fio 3.33 `--output-format=json` of a 1M sequential write job and a
/// timed 4k random read job on ext4, trimmed to the fields around the ones
/// read.
const TWO_JOBS: &str = r#"{
  "fio version" : "fio-3.33",
  "timestamp" : 1796162001,
  "global options" : { "ioengine" : "psync", "direct" : "1", "directory" : ".", "size" : "8M" },
  "jobs" : [
{
  "jobname" : "seqwrite",
  "groupid" : 0,
  "error" : 0,
  "job options" : { "name" : "seqwrite", "rw" : "write", "bs" : "1M" },
  "read" : { "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0, "iops" : 0.000000, "runtime" : 0 },
  "write" : { "io_bytes" : 8388608, "bw_bytes" : 1048576000, "bw" : 1024000, "iops" : 1000.000000, "runtime" : 8 },
  "trim" : { "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0, "iops" : 0.000000, "runtime" : 0 },
  "job_runtime" : 7
},
{
  "jobname" : "randread",
  "groupid" : 1,
  "error" : 0,
  "job options" : { "name" : "randread", "rw" : "randread", "bs" : "4k", "runtime" : "1" },
  "read" : { "io_bytes" : 49770496, "bw_bytes" : 49720775, "bw" : 48555, "iops" : 12138.861139, "runtime" : 1001 },
  "write" : { "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0, "iops" : 0.000000, "runtime" : 0 },
  "trim" : { "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0, "iops" : 0.000000, "runtime" : 0 },
  "job_runtime" : 1000
}
  ]
}"#;

/// fio 3.33's stdout for `--direct=1` on ramfs, which refuses O_DIRECT:
/// a line before the document, and the job's errno.
const REFUSED_DIRECT: &str = r#"fio: pid=6207, err=22/file:filesetup.c:805, func=open(./x.0.0), error=Invalid argument
{
  "fio version" : "fio-3.33",
  "jobs" : [
{
  "jobname" : "x",
  "groupid" : 0,
  "error" : 22,
  "read" : { "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0, "iops" : 0.000000, "runtime" : 0 },
  "write" : { "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0, "iops" : 0.000000, "runtime" : 0 }
}
  ]
}"#;

#[test]
fn fio_json_gives_bandwidth_and_iops_per_job() {
    let jobs = parse_fio(TWO_JOBS).expect("parses");
    let got: Vec<_> = (jobs.iter())
        .map(|j| (j.name.as_str(), j.read_bw_bytes, j.read_iops))
        .chain(
            jobs.iter()
                .map(|j| (j.name.as_str(), j.write_bw_bytes, j.write_iops)),
        )
        .collect();
    let read = [
        ("seqwrite", 0.0, 0.0),
        ("randread", 49_720_775.0, 12_138.861_139),
    ];
    let write = [
        ("seqwrite", 1_048_576_000.0, 1000.0),
        ("randread", 0.0, 0.0),
    ];
    assert_eq!(got, [read, write].concat());
    assert_eq!(JOBS[0].figure(&jobs[0]), 1000.0, "MiB/s of a write job");
    assert_eq!(
        JOBS[2].figure(&jobs[1]),
        12_138.861_139,
        "IOPS of a read job"
    );
}

#[test]
fn a_failed_job_is_an_error_naming_it() {
    let e = parse_fio(REFUSED_DIRECT)
        .expect_err("job error 22")
        .to_string();
    assert!(e.contains("job x failed with error 22"), "{e}");
    assert!(e.contains("Invalid argument"), "{e}");
}

#[test]
fn garbage_and_empty_output_are_errors_saying_what_is_wrong() {
    let cases = [
        ("", "empty"),
        ("  \n", "empty"),
        ("fio: unrecognized option '--bogus'", "no JSON document"),
        ("{ not json", "not fio JSON"),
        (r#"{"jobs": []}"#, "no jobs"),
        (r#"{"fio version": "fio-3.33"}"#, "missing field `jobs`"),
        (
            r#"{"jobs": [{"jobname": "j", "write": {"bw_bytes": 1, "iops": 1}}]}"#,
            "missing field `read`",
        ),
    ];
    for (input, expected) in cases {
        let e = parse_fio(input).expect_err(input).to_string();
        assert!(e.contains(expected), "{input:?}: {e}");
    }
}

#[test]
fn fio_arguments_escape_colons_and_fall_back_to_buffered() {
    let file = Path::new("/r/a:b/f");
    let shown = |direct| -> Vec<String> {
        JOBS[0]
            .args(file, direct)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    let direct = shown(true);
    assert!(direct.contains(&r"--filename=/r/a\:b/f".to_owned()));
    assert!(direct.contains(&"--direct=1".to_owned()));
    let buffered = shown(false);
    assert!(buffered.contains(&"--end_fsync=1".to_owned()));
    assert!(!buffered.contains(&"--direct=1".to_owned()));
    let fsync = JOBS[4].args(file, true);
    assert!(fsync.contains(&OsString::from("--fsync=1")));
    assert!(fsync.contains(&OsString::from("--time_based")));
}

/// Under CI (`CI=true`) a missing prerequisite is a failure, elsewhere a skip.
fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required under CI, but: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

fn can_run_fio() -> bool {
    available().map_err(|reason| skip(&reason)).is_ok()
}

fn assert_measured(row: &Measurement) {
    assert_eq!(row.error, None, "{}", row.operation);
    let figure = row.berth.expect("a figure").median;
    assert!(figure > 0.0, "{}: {figure}", row.operation);
}

fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).expect("read dir").next().is_none()
}

#[test]
fn measures_every_row_on_the_host_filesystem_and_cleans_up() {
    if !can_run_fio() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("bench-io");
    fs::create_dir(&dir).expect("mkdir");
    let inherited = tmp.path().join("inherited");
    fs::write(&inherited, vec![1u8; (NEW_FILE_MIB * MIB) as usize]).expect("write");

    let rows = measure(&dir, Some(&inherited), "dir", "p", 1);

    let ops: Vec<&str> = rows.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(
        ops,
        [
            op::SEQ_WRITE,
            op::SEQ_READ,
            op::RAND_READ,
            op::RAND_WRITE,
            op::FSYNC_WRITE,
            op::FIRST_WRITE_INHERITED
        ]
    );
    for row in &rows {
        assert_measured(row);
        assert_eq!((row.suite, row.backend.as_str()), (Suite::Io, "dir"));
    }
    let first = &rows[5];
    let new = first.primitive.as_ref().expect("new-file figure");
    assert!(new.value.median > 0.0);
    assert!(first.ratio.is_some_and(|r| r > 0.0));
    assert!(first.note.as_ref().is_some_and(|n| n.contains("once")));
    assert!(is_empty(&dir), "the suite's files are removed");
}

#[test]
fn falls_back_to_buffered_io_where_o_direct_is_refused() {
    if !can_run_fio() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // ramfs refuses O_DIRECT.
    if let Err(e) = berth_bdev::mount::mount_fs("ramfs", OsStr::new("none"), tmp.path(), &[], false)
    {
        return skip(&format!("mounting ramfs: {e}"));
    }
    let guard = berth_bdev::mount::MountGuard::mounted(tmp.path());

    let rows = measure(tmp.path(), None, "dir", "p", 1);

    assert_eq!(rows.len(), JOBS.len(), "no first-write row without a file");
    for row in &rows {
        assert_measured(row);
        assert_eq!(
            row.note.as_deref(),
            Some(BUFFERED_NOTE),
            "{}",
            row.operation
        );
    }
    assert!(is_empty(tmp.path()), "the suite's files are removed");
    guard.release().expect("unmount ramfs");
}
