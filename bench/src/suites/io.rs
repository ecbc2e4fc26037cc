//! The io suite: fio through a container's mounted rootfs, so the I/O goes
//! through the same filesystem stack (overlay, FUSE, loop, zfs-fuse …) the
//! container's processes see. fio runs on the host because the rootfs has none.
//!
//! Rows: sequential 1 MiB write and read (MiB/s), random 4 KiB read and write
//! (IOPS), 4 KiB writes each followed by fsync (IOPS), and one first-write row
//! (ms): overwriting 4 KiB in the middle of an inherited 64 MiB file (a copy-up
//! on overlay/aufs, CoW elsewhere), with the same write to a new 64 MiB file as
//! its `primitive`, so the ratio is the copy-up's cost. `op::FIRST_WRITE_NEW`
//! is therefore not a row of its own. The clone has one never-written inherited
//! file, so that figure is measured once (the note says so).
//!
//! fio uses `psync` (libaio may be missing under FUSE) and `O_DIRECT`; where the
//! filesystem refuses `O_DIRECT` the rest of the suite runs buffered with a
//! final fsync, and the rows' notes say so.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, CmdError, HostRunner, Runner};
use serde::Deserialize;

use crate::model::{op, Measurement, Primitive, Suite, Unit};
use crate::stats::Summary;
use crate::{BenchError, Result};

const MIB: u64 = 1 << 20;
/// The write a first-write row times: one page, as a small in-place update.
const FIRST_WRITE_BYTES: usize = 4096;
/// Longest error text a row carries.
const MAX_ERROR_CHARS: usize = 600;

// Small under test, so that the real-kernel tests take seconds.
const SEQ_MIB: u64 = if cfg!(test) { 8 } else { 128 };
const RANDOM_FILE_MIB: u64 = if cfg!(test) { 8 } else { 64 };
const RUNTIME_SECS: u32 = if cfg!(test) { 1 } else { 3 };
const NEW_FILE_MIB: u64 = if cfg!(test) { 8 } else { 64 };

/// Whether fio can run; Err(reason) names what to install.
pub fn available() -> std::result::Result<(), String> {
    if cmd::have_program("fio") {
        Ok(())
    } else {
        Err("fio is not installed (install the `fio` package)".to_owned())
    }
}

/// One job of a fio run.
#[derive(Debug, Clone, PartialEq)]
pub struct FioJob {
    pub name: String,
    pub read_bw_bytes: f64,
    pub read_iops: f64,
    pub write_bw_bytes: f64,
    pub write_iops: f64,
}

#[derive(Deserialize)]
struct RawOutput {
    jobs: Vec<RawJob>,
}

#[derive(Deserialize)]
struct RawJob {
    jobname: String,
    #[serde(default)]
    error: i32,
    read: RawDirection,
    write: RawDirection,
}

#[derive(Deserialize)]
struct RawDirection {
    bw_bytes: f64,
    iops: f64,
}

/// Parses `fio --output-format=json` output: per job, read/write bandwidth
/// (bytes/s) and IOPS. A job fio reports as failed is an error.
pub fn parse_fio(json: &str) -> Result<Vec<FioJob>> {
    let invalid = |what: String| BenchError::Invalid(format!("fio output: {what}"));
    let json = json.trim_start();
    if json.is_empty() {
        return Err(invalid("empty, expected a JSON document".to_owned()));
    }
    // fio may print "fio: ..." lines on stdout before the document.
    let start = if json.starts_with('{') {
        Some(0)
    } else {
        json.find("\n{").map(|i| i + 1)
    };
    let start = start.ok_or_else(|| {
        let head: String = json.trim().chars().take(80).collect();
        invalid(format!("no JSON document in {head:?}"))
    })?;
    let raw: RawOutput =
        serde_json::from_str(&json[start..]).map_err(|e| invalid(format!("not fio JSON: {e}")))?;
    if raw.jobs.is_empty() {
        return Err(invalid("no jobs".to_owned()));
    }
    raw.jobs
        .into_iter()
        .map(|j| {
            if j.error != 0 {
                let why = std::io::Error::from_raw_os_error(j.error);
                return Err(invalid(format!(
                    "job {} failed with error {}: {why}",
                    j.jobname, j.error
                )));
            }
            Ok(FioJob {
                name: j.jobname,
                read_bw_bytes: j.read.bw_bytes,
                read_iops: j.read.iops,
                write_bw_bytes: j.write.bw_bytes,
                write_iops: j.write.iops,
            })
        })
        .collect()
}

/// How long a job runs, which also sets its block size and unit.
#[derive(Clone, Copy, PartialEq)]
enum Span {
    /// 1 MiB blocks once through a `SEQ_MIB` file, in MiB/s.
    Once,
    /// 4 KiB blocks for `RUNTIME_SECS` over a `RANDOM_FILE_MIB` file, in IOPS.
    Timed,
    /// Timed, with an fsync after each write.
    TimedFsync,
}

/// One fio measurement.
struct Job {
    operation: &'static str,
    /// fio's `rw`.
    pattern: &'static str,
    span: Span,
}

const fn job(operation: &'static str, pattern: &'static str, span: Span) -> Job {
    Job {
        operation,
        pattern,
        span,
    }
}

const JOBS: [Job; 5] = [
    job(op::SEQ_WRITE, "write", Span::Once),
    job(op::SEQ_READ, "read", Span::Once),
    job(op::RAND_READ, "randread", Span::Timed),
    job(op::RAND_WRITE, "randwrite", Span::Timed),
    // Sequential like a database's log, each write made durable.
    job(op::FSYNC_WRITE, "write", Span::TimedFsync),
];

impl Job {
    fn unit(&self) -> Unit {
        match self.span {
            Span::Once => Unit::MibPerSec,
            Span::Timed | Span::TimedFsync => Unit::Iops,
        }
    }

    /// The job's fio name and the name of its file in `dir`.
    fn file(&self) -> String {
        let name: String = (self.operation.chars())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("fio-{name}")
    }

    fn reads(&self) -> bool {
        self.pattern.contains("read")
    }

    /// The row's figure from fio's result, in the row's unit.
    fn figure(&self, r: &FioJob) -> f64 {
        let (bw, iops) = if self.reads() {
            (r.read_bw_bytes, r.read_iops)
        } else {
            (r.write_bw_bytes, r.write_iops)
        };
        match self.span {
            Span::Once => bw / MIB as f64,
            Span::Timed | Span::TimedFsync => iops,
        }
    }

    fn args(&self, file: &Path, direct: bool) -> Vec<OsString> {
        let (size, block) = match self.span {
            Span::Once => (SEQ_MIB, "1M"),
            Span::Timed | Span::TimedFsync => (RANDOM_FILE_MIB, "4k"),
        };
        let mut args: Vec<OsString> = [
            "--output-format=json".to_owned(),
            format!("--name={}", self.file()),
            "--ioengine=psync".to_owned(),
            format!("--rw={}", self.pattern),
            format!("--bs={block}"),
            format!("--size={size}M"),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        args.push(filename_arg(file));
        if self.span != Span::Once {
            args.push(format!("--runtime={}", RUNTIME_SECS).into());
            args.push("--time_based".into());
        }
        if self.span == Span::TimedFsync {
            args.push("--fsync=1".into());
        }
        if direct {
            args.push("--direct=1".into());
        } else {
            // Without it buffered writes would only measure the page cache.
            args.push("--end_fsync=1".into());
        }
        args
    }
}

/// `--filename=PATH`, with the colons fio would take as separators escaped.
fn filename_arg(file: &Path) -> OsString {
    let mut arg = b"--filename=".to_vec();
    for &b in file.as_os_str().as_bytes() {
        if b == b':' {
            arg.push(b'\\');
        }
        arg.push(b);
    }
    OsString::from_vec(arg)
}

fn run_fio(job: &Job, file: &Path, direct: bool) -> Result<f64> {
    let args = job.args(file, direct);
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    let out = HostRunner.run("fio", &args)?;
    let jobs = parse_fio(&out.stdout)?;
    let result = jobs
        .first()
        .ok_or_else(|| BenchError::Invalid("fio reported no job".to_owned()))?;
    Ok(job.figure(result))
}

/// Whether fio failed because the filesystem refuses `O_DIRECT`: at open
/// (ramfs) or at the first write (some FUSE filesystems), both EINVAL.
fn refuses_direct(e: &BenchError) -> bool {
    let BenchError::Command(CmdError::Failed { stderr, .. }) = e else {
        return false;
    };
    stderr.contains("O_DIRECT") || stderr.contains("Invalid argument")
}

/// A row's error text: fio's stderr when it has one, trimmed and bounded.
fn error_text(e: &BenchError) -> String {
    let text = match e {
        BenchError::Command(c @ CmdError::Failed { .. }) if !c.stderr().trim().is_empty() => {
            c.stderr().trim().to_owned()
        }
        other => other.to_string(),
    };
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Removes a file the suite made; a file that is not there is fine.
fn remove(file: &Path) -> Result<()> {
    match fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(BenchError::io("removing", file)(e))
        }
        _ => Ok(()),
    }
}

const BUFFERED_NOTE: &str = "buffered I/O with a final fsync, as the filesystem refuses O_DIRECT: \
     repeated reads may come from the page cache";

/// Runs `job` `runs` times; `direct` turns false for good once `O_DIRECT`
/// is refused.
fn measure_job(
    dir: &Path,
    job: &Job,
    direct: &mut bool,
    backend: &str,
    pool: &str,
    runs: usize,
) -> Measurement {
    let row = Measurement::new(Suite::Io, backend, pool, job.operation, job.unit());
    let file = dir.join(job.file());
    let mut values = Vec::with_capacity(runs);
    let mut buffered = !*direct;
    let mut failure = None;
    for _ in 0..runs {
        let mut result = run_fio(job, &file, *direct);
        if *direct && result.as_ref().is_err_and(refuses_direct) {
            *direct = false;
            buffered = true;
            result = remove(&file).and_then(|()| run_fio(job, &file, false));
        }
        // fio leaves its file behind even when it fails.
        let removed = remove(&file);
        match result.and_then(|v| removed.map(|()| v)) {
            Ok(v) => values.push(v),
            Err(e) => {
                failure = Some(error_text(&e));
                break;
            }
        }
    }
    let mut row = match failure {
        Some(_) => row,
        None => row.with(Summary::of(&values), None),
    };
    row.error = failure;
    if buffered {
        row.note = Some(BUFFERED_NOTE.to_owned());
    }
    row
}

/// Wall time to open `file`, overwrite 4 KiB in its middle and fsync: on a
/// file inherited from the origin this includes the copy-up or CoW.
fn overwrite_middle(file: &Path) -> Result<Duration> {
    let len = fs::metadata(file)
        .map_err(BenchError::io("reading the size of", file))?
        .len();
    let offset = (len / 2) & !(FIRST_WRITE_BYTES as u64 - 1);
    let page = [0x5au8; FIRST_WRITE_BYTES];
    let started = Instant::now();
    let f = OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(BenchError::io("opening for writing", file))?;
    f.write_all_at(&page, offset)
        .map_err(BenchError::io("writing", file))?;
    f.sync_all().map_err(BenchError::io("fsyncing", file))?;
    let took = started.elapsed();
    drop(f);
    Ok(took)
}

/// Creates a `NEW_FILE_MIB` file of data (not sparse) and makes it durable, so
/// that the timed write is not charged for flushing it.
fn create_filled(file: &Path) -> Result<()> {
    let mut f = File::create(file).map_err(BenchError::io("creating", file))?;
    let chunk = vec![0xa5u8; MIB as usize];
    for _ in 0..NEW_FILE_MIB {
        f.write_all(&chunk)
            .map_err(BenchError::io("writing", file))?;
    }
    f.sync_all().map_err(BenchError::io("fsyncing", file))
}

fn new_file_first_write(file: &Path) -> Result<Duration> {
    let result = create_filled(file).and_then(|()| overwrite_middle(file));
    let removed = remove(file);
    let took = result?;
    removed?;
    Ok(took)
}

fn first_write_row(
    dir: &Path,
    inherited: &Path,
    backend: &str,
    pool: &str,
    runs: usize,
) -> Measurement {
    let mut row = Measurement::new(
        Suite::Io,
        backend,
        pool,
        op::FIRST_WRITE_INHERITED,
        Unit::Ms,
    );
    let file = dir.join("first-write-new");
    let measured = overwrite_middle(inherited)
        .map_err(|e| format!("inherited file: {}", error_text(&e)))
        .and_then(|inherited| {
            let new = (0..runs)
                .map(|_| new_file_first_write(&file))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| format!("new file: {}", error_text(&e)))?;
            Ok((inherited, new))
        });
    match measured {
        Ok((inherited, new)) => {
            let primitive = Summary::of_durations(&new).map(|value| Primitive {
                command: "same write to a new file".to_owned(),
                value,
            });
            row = row.with(Summary::of_durations(&[inherited]), primitive);
            row.note = Some(format!(
                "open, 4 KiB write in the middle, fsync; the inherited file is written \
                 once (a clone has one never-written copy), the new {} MiB file {runs} times",
                NEW_FILE_MIB
            ));
        }
        Err(e) => row.error = Some(e),
    }
    row
}

/// Runs the io measurements in `dir` (a writable directory inside the
/// container's mounted rootfs), `runs` times each, and returns one row per
/// operation. `inherited`: a 64 MiB file from the clone's origin, never written
/// in this clone; `None` leaves out the first-write row. Files made in `dir`
/// are removed after each job.
pub fn measure(
    dir: &Path,
    inherited: Option<&Path>,
    backend: &str,
    pool: &str,
    runs: usize,
) -> Vec<Measurement> {
    let runs = runs.max(1);
    let mut direct = true;
    let mut rows: Vec<Measurement> = JOBS
        .iter()
        .map(|job| measure_job(dir, job, &mut direct, backend, pool, runs))
        .collect();
    if let Some(inherited) = inherited {
        rows.push(first_write_row(dir, inherited, backend, pool, runs));
    }
    rows
}

#[cfg(test)]
#[path = "io_tests.rs"]
mod tests;
