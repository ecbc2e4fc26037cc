//! Writing: `LogWriter` appends records and rotates; `pump` turns a pipe into
//! records, one thread per stream.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tracing::warn;

use super::{rotated, LogLimits, Record, Stream, MAX_LINE};
use crate::error::{BerthError, Result};

/// An open `container.log`, appended to one record per line.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// Bytes in `file`; only this writer appends to it.
    size: u64,
    limits: LogLimits,
}

impl LogWriter {
    /// Opens (or creates) the log at `path` for appending.
    pub fn open(path: impl Into<PathBuf>, limits: LogLimits) -> Result<LogWriter> {
        let path = path.into();
        let file = open_append(&path)?;
        let size = file
            .metadata()
            .map_err(BerthError::io("stat log", &path))?
            .len();
        Ok(LogWriter {
            path,
            file,
            size,
            limits,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `text` (a line with its `\n`, or a piece of one) stamped now.
    pub fn write_line(&mut self, stream: Stream, text: &[u8]) -> Result<()> {
        self.write_at(stream, text, SystemTime::now())
    }

    pub(super) fn write_at(&mut self, stream: Stream, text: &[u8], at: SystemTime) -> Result<()> {
        let record = Record {
            // Docker too replaces what is not UTF-8 with U+FFFD.
            log: String::from_utf8_lossy(text),
            stream,
            time: super::rfc3339_nanos(at).into(),
        };
        let mut line = serde_json::to_vec(&record)
            .map_err(|e| BerthError::io("encode log line for", &self.path)(e.into()))?;
        line.push(b'\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.limits.max_size {
            self.rotate()?;
        }
        // One write(2) per record, so that a reader sees whole lines.
        let written = loop {
            match self.file.write(&line) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(BerthError::io("write log", &self.path))?,
            }
        };
        if written < line.len() {
            // Cut the half record off so that the next one starts a line.
            if let Err(e) = self.file.set_len(self.size) {
                warn!(path = %self.path.display(), error = %e, "cannot cut a short log write");
                self.size += written as u64;
            }
            let short = io::Error::new(io::ErrorKind::WriteZero, "short write");
            return Err(BerthError::io("write log", &self.path)(short));
        }
        self.size += len;
        Ok(())
    }

    /// `PATH.{N-1}` → `PATH.N`, …, `PATH` → `PATH.1`, then a fresh `PATH`.
    /// Renames, not copies, so that a follower holding the old file finishes
    /// it and then notices the new one.
    fn rotate(&mut self) -> Result<()> {
        let keep = self.limits.max_files;
        if keep == 0 {
            self.file
                .set_len(0)
                .map_err(BerthError::io("truncate log", &self.path))?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..keep).rev() {
            rename_if_there(&rotated(&self.path, n), &rotated(&self.path, n + 1))?;
        }
        // Missing after a rotation that failed to reopen: nothing to move.
        rename_if_there(&self.path, &rotated(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(BerthError::io("open log", path))
}

fn rename_if_there(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(BerthError::io("rotate log", from)(e)),
        _ => Ok(()),
    }
}

/// Copies the pipe `input` into `writer` line by line until EOF: a line
/// longer than [`MAX_LINE`] becomes several records, and an unfinished last
/// line is written as it is. Meant to run in a thread per stream.
pub fn pump(input: OwnedFd, stream: Stream, writer: Arc<Mutex<LogWriter>>) -> io::Result<()> {
    let emit = |text: &[u8]| -> io::Result<()> {
        // A panic elsewhere leaves the writer usable: it holds no half state.
        let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
        w.write_line(stream, text)
            .map_err(|e| io::Error::new(io_kind(&e), e))
    };
    let mut input = File::from(input);
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::with_capacity(MAX_LINE + 1);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let room = MAX_LINE - line.len();
            // A newline right after a full line still belongs to it.
            let window = &rest[..rest.len().min(room + 1)];
            if let Some(i) = window.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&rest[..=i]);
                emit(&line)?;
                line.clear();
                rest = &rest[i + 1..];
            } else if room == 0 {
                let cut = utf8_cut(&line);
                emit(&line[..cut])?;
                line.drain(..cut);
            } else {
                let take = rest.len().min(room);
                line.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
        }
    }
    if !line.is_empty() {
        emit(&line)?;
    }
    Ok(())
}

fn io_kind(e: &BerthError) -> io::ErrorKind {
    match e {
        BerthError::Io { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    }
}

/// Where to split a full line so that no UTF-8 character is cut in two:
/// before an unfinished sequence at its end, else at its end.
fn utf8_cut(line: &[u8]) -> usize {
    for back in 1..=line.len().min(4) {
        let i = line.len() - back;
        let b = line[i];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if back < need && i > 0 { i } else { line.len() };
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    fn records(path: &Path) -> Vec<(String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
                assert_eq!(keys, ["log", "stream", "time"], "{l}");
                (
                    v["stream"].as_str().unwrap().to_string(),
                    v["log"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Runs `pump` on a pipe fed with `chunks`, one write each.
    fn pumped(chunks: Vec<Vec<u8>>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let w = Arc::new(Mutex::new(
            LogWriter::open(&path, LogLimits::default()).unwrap(),
        ));
        let (r, wr) = rustix::pipe::pipe().unwrap();
        let feeder = thread::spawn(move || {
            let mut f = File::from(wr);
            for c in chunks {
                f.write_all(&c).unwrap();
            }
        });
        pump(r, Stream::Stderr, w).unwrap();
        feeder.join().unwrap();
        let recs = records(&path);
        assert!(recs.iter().all(|(s, _)| s == "stderr"));
        recs.into_iter().map(|(_, l)| l).collect()
    }

    #[test]
    fn record_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_796_137_445, 123_456_789);
        w.write_at(Stream::Stdout, b"hi \"there\"\n", at).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"log\":\"hi \\\"there\\\"\\n\",\"stream\":\"stdout\",\
             \"time\":\"2026-12-01T15:04:05.123456789Z\"}\n"
        );
    }

    #[test]
    fn text_round_trips() {
        let texts = [
            "plain\n",
            "ünïcødé ✓ 日本語 🦀\n",
            "\"quotes\" and \\backslashes\\\n",
            "ctl \u{0}\u{1}\t\r\u{1b}[31m\u{7f}\n",
            "no newline",
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        for t in texts {
            w.write_line(Stream::Stdout, t.as_bytes()).unwrap();
        }
        w.write_line(Stream::Stderr, b"bad \xff utf8\n").unwrap();
        let got = records(&path);
        for (t, (s, l)) in texts.iter().zip(&got) {
            assert_eq!((s.as_str(), l.as_str()), ("stdout", *t));
        }
        assert_eq!(got[5], ("stderr".into(), "bad \u{fffd} utf8\n".into()));
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        LogWriter::open(&path, LogLimits::default())
            .unwrap()
            .write_line(Stream::Stdout, b"one\n")
            .unwrap();
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        assert!(w.size > 0);
        w.write_line(Stream::Stdout, b"two\n").unwrap();
        assert_eq!(records(&path).len(), 2);
    }

    #[test]
    fn write_errors_are_returned() {
        if !Path::new("/dev/full").exists() {
            eprintln!("SKIP: no /dev/full");
            return;
        }
        let mut w = LogWriter::open("/dev/full", LogLimits::default()).unwrap();
        let e = w.write_line(Stream::Stdout, b"x\n").unwrap_err();
        assert!(
            matches!(
                e,
                BerthError::Io {
                    op: "write log",
                    ..
                }
            ),
            "{e:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(LogWriter::open(dir.path().join("no/such/log"), LogLimits::default()).is_err());
    }

    #[test]
    fn pump_splits_lines_across_reads() {
        let got = pumped(vec![
            b"a\nb".to_vec(),
            b"c\n\nd".to_vec(),
            b"e\nlast".to_vec(),
        ]);
        assert_eq!(got, ["a\n", "bc\n", "\n", "de\n", "last"]);
    }

    #[test]
    fn pump_writes_partial_line_at_eof() {
        assert_eq!(pumped(vec![b"no newline".to_vec()]), ["no newline"]);
        assert!(pumped(vec![]).is_empty());
    }

    #[test]
    fn pump_splits_long_lines() {
        let exact = [vec![b'x'; MAX_LINE], b"\n".to_vec()].concat();
        assert_eq!(
            pumped(vec![exact.clone()]).len(),
            1,
            "a full line and its newline"
        );
        // The same, the newline arriving in a later read.
        let got = pumped(vec![vec![b'x'; MAX_LINE], b"\n".to_vec()]);
        assert_eq!(got.len(), 1);

        let long = [vec![b'y'; 2 * MAX_LINE + 5], b"\n".to_vec()].concat();
        let got = pumped(long.chunks(1000).map(<[u8]>::to_vec).collect());
        let lens: Vec<_> = got.iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 6]);
        assert_eq!(got.concat().as_bytes(), long);

        // A 3-byte character across the boundary moves whole to the next piece.
        let mut cut = vec![b'z'; MAX_LINE - 1];
        cut.extend_from_slice("€tail\n".as_bytes());
        let got = pumped(vec![cut]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE - 1);
        assert_eq!(got[1], "€tail\n");
    }

    #[test]
    fn utf8_cut_points() {
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut("a€".as_bytes()), 4);
        assert_eq!(utf8_cut(&"a€".as_bytes()[..3]), 1);
        assert_eq!(utf8_cut(&"a🦀".as_bytes()[..4]), 1);
        assert_eq!(utf8_cut(&[0x80, 0x80, 0x80, 0x80, 0x80]), 5);
    }

    #[test]
    fn rotation_keeps_n_files_and_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let limits = LogLimits {
            max_size: 1000,
            max_files: 2,
        };
        let mut w = LogWriter::open(&path, limits).unwrap();
        for i in 0..100 {
            w.write_line(Stream::Stdout, format!("line {i:03}\n").as_bytes())
                .unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["container.log", "container.log.1", "container.log.2"]
        );
        let mut all = Vec::new();
        for p in [rotated(&path, 2), rotated(&path, 1), path.clone()] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= 1000, "{p:?} is {len} bytes");
            all.extend(records(&p).into_iter().map(|(_, l)| l));
        }
        // The files hold the newest lines, in order and without a gap.
        let first: usize = all[0][5..8].parse().unwrap();
        assert!(first > 0, "the oldest lines are dropped");
        let want: Vec<_> = (first..100).map(|i| format!("line {i:03}\n")).collect();
        assert_eq!(all, want);
        // Rotated only when the next record would not fit.
        let rec = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .len()
            + 1;
        let old = std::fs::metadata(rotated(&path, 1)).unwrap().len();
        assert!(old + rec as u64 > 1000, "{old} + {rec}");
    }

    #[test]
    fn no_kept_files_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let limits = LogLimits {
            max_size: 300,
            max_files: 0,
        };
        let mut w = LogWriter::open(&path, limits).unwrap();
        for i in 0..20 {
            w.write_line(Stream::Stdout, format!("{i}\n").as_bytes())
                .unwrap();
        }
        assert!(!rotated(&path, 1).exists());
        let recs = records(&path);
        assert!(!recs.is_empty() && recs.len() < 20);
        assert_eq!(recs.last().unwrap().1, "19\n");
    }
}
