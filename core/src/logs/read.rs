//! Reading: `berth logs NAME [-f] [--tail N] [--timestamps]`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use tracing::warn;

use super::{rotated, Record, Stream};
use crate::error::{BerthError, Result};

/// How often `follow` looks for new lines.
const POLL: Duration = Duration::from_millis(100);

/// What `berth logs` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only the last N lines, counted across the rotated files.
    pub tail: Option<usize>,
    /// Prefix each line with its time and a space.
    pub timestamps: bool,
    /// Keep printing new lines until the container stops.
    pub follow: bool,
}

/// Prints the log at `path`: the rotated files oldest first, then the current
/// one. stdout lines go to `out`, stderr lines to `err`; a damaged line goes
/// to `out` as it is. A log that does not exist (yet) is empty.
///
/// With `follow`, new lines are printed as they come, across rotations, until
/// `still_running()` returns false and the file holds no more; it should turn
/// false only once the writer is done, or the last lines may be missed.
pub fn read_logs(
    path: &Path,
    q: &LogQuery,
    still_running: &dyn Fn() -> bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let mut sink = Sink {
        out,
        err,
        timestamps: q.timestamps,
        skip: 0,
    };
    // The current file first: a rotation meanwhile then shows up as a rotated
    // file that is the current one, skipped, rather than as a lost file.
    let mut current = Source::open(path)?;
    let current_id = current.as_ref().map(Source::id).transpose()?;
    let mut history = Vec::new();
    for n in 1.. {
        let Some(s) = Source::open(&rotated(path, n))? else {
            break;
        };
        if Some(s.id()?) != current_id {
            history.push(s);
        }
    }
    history.reverse();
    if let Some(n) = q.tail {
        sink.skip = tail_skip(&mut history, current.as_mut(), n)?;
    }
    for s in history {
        s.finish(&mut sink)?;
    }
    if q.follow {
        loop {
            // Asked before reading, so that what was written before the
            // container stopped is read below.
            let running = still_running();
            if let Some(c) = current.as_mut() {
                c.drain(&mut sink)?;
            }
            if let Some(next) = successor(path, current.as_mut())? {
                let next_id = next.id()?;
                if let Some(old) = current.replace(next) {
                    let old_id = old.id()?;
                    old.finish(&mut sink)?;
                    for s in rotated_since(path, old_id, next_id)? {
                        s.finish(&mut sink)?;
                    }
                }
                continue;
            }
            sink.flush(path)?;
            if !running {
                break;
            }
            thread::sleep(POLL);
        }
    }
    if let Some(c) = current {
        c.finish(&mut sink)?;
    }
    sink.flush(path)
}

/// How many of the first lines to leave out to print the last `n`; drops
/// from `history` the files that hold only such lines.
fn tail_skip(history: &mut Vec<Source>, current: Option<&mut Source>, n: usize) -> Result<usize> {
    let mut counts = Vec::with_capacity(history.len());
    for s in history.iter_mut() {
        counts.push(s.count_lines()?);
    }
    let last = match current {
        Some(c) => c.count_lines()?,
        None => 0,
    };
    let mut skip = (counts.iter().sum::<usize>() + last).saturating_sub(n);
    let whole = counts.iter().take_while(|&&c| {
        let all = c <= skip;
        if all {
            skip -= c;
        }
        all
    });
    let whole = whole.count();
    history.drain(..whole);
    Ok(skip)
}

/// The file now at `path` if it replaced `current` (rotation), or appeared
/// where there was none. Rewinds `current` when it was truncated in place.
fn successor(path: &Path, current: Option<&mut Source>) -> Result<Option<Source>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        // Between the writer's rename and its new file.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BerthError::io("stat log", path)(e)),
    };
    let Some(c) = current else {
        return Source::open(path);
    };
    if (meta.dev(), meta.ino()) != c.id()? {
        return Source::open(path);
    }
    if meta.len() < c.pos {
        c.rewind()?;
    }
    Ok(None)
}

/// The rotated files newer than `old`, oldest first: those the writer
/// filled between two polls. All of them if `old` was dropped meanwhile.
fn rotated_since(path: &Path, old: (u64, u64), next: (u64, u64)) -> Result<Vec<Source>> {
    let mut newer = Vec::new();
    for n in 1.. {
        let Some(s) = Source::open(&rotated(path, n))? else {
            break;
        };
        let id = s.id()?;
        if id == old {
            break;
        }
        // `next` itself if the writer rotated again since it was opened.
        if id != next {
            newer.push(s);
        }
    }
    newer.reverse();
    Ok(newer)
}

/// One log file being read, and its unfinished last line.
struct Source {
    file: File,
    path: PathBuf,
    pos: u64,
    pending: Vec<u8>,
}

impl Source {
    fn open(path: &Path) -> Result<Option<Source>> {
        match File::open(path) {
            Ok(file) => Ok(Some(Source {
                file,
                path: path.to_path_buf(),
                pos: 0,
                pending: Vec::new(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BerthError::io("open log", path)(e)),
        }
    }

    fn id(&self) -> Result<(u64, u64)> {
        let m = self
            .file
            .metadata()
            .map_err(BerthError::io("stat log", &self.path))?;
        Ok((m.dev(), m.ino()))
    }

    fn rewind(&mut self) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(BerthError::io("seek log", &self.path))?;
        self.pos = 0;
        self.pending.clear();
        Ok(())
    }

    /// Reads to the end, then back to the start; an unfinished last line
    /// counts.
    fn count_lines(&mut self) -> Result<usize> {
        let mut lines = 0;
        let mut last = b'\n';
        self.read_all(|chunk| {
            lines += chunk.iter().filter(|&&b| b == b'\n').count();
            if let Some(&b) = chunk.last() {
                last = b;
            }
            Ok(())
        })?;
        self.rewind()?;
        Ok(lines + usize::from(last != b'\n'))
    }

    /// Prints the whole lines read so far; keeps an unfinished one, which
    /// the writer may be writing.
    fn drain(&mut self, sink: &mut Sink) -> Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        let path = self.path.clone();
        let r = self.read_all(|chunk| {
            pending.extend_from_slice(chunk);
            let mut start = 0;
            while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
                sink.line(&pending[start..start + i], &path)?;
                start += i + 1;
            }
            pending.drain(..start);
            Ok(())
        });
        self.pending = pending;
        r
    }

    /// Prints the rest, an unfinished last line included.
    fn finish(mut self, sink: &mut Sink) -> Result<()> {
        self.drain(sink)?;
        if !self.pending.is_empty() {
            sink.line(&self.pending, &self.path)?;
        }
        Ok(())
    }

    fn read_all(&mut self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.pos += n as u64;
                    f(&buf[..n])?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BerthError::io("read log", &self.path)(e)),
            }
        }
    }
}

/// Where the lines go.
struct Sink<'a> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    timestamps: bool,
    /// Lines still to leave out, for `tail`.
    skip: usize,
}

impl Sink<'_> {
    fn line(&mut self, raw: &[u8], path: &Path) -> Result<()> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        let printed = match serde_json::from_slice::<Record>(raw) {
            Ok(r) => {
                let w = match r.stream {
                    Stream::Stdout => &mut *self.out,
                    Stream::Stderr => &mut *self.err,
                };
                if self.timestamps {
                    write!(w, "{} {}", r.time, r.log)
                } else {
                    w.write_all(r.log.as_bytes())
                }
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "damaged log line, printed as it is");
                self.out
                    .write_all(raw)
                    .and_then(|()| self.out.write_all(b"\n"))
            }
        };
        printed.map_err(BerthError::io("print log", path))
    }

    fn flush(&mut self, path: &Path) -> Result<()> {
        self.out
            .flush()
            .and_then(|()| self.err.flush())
            .map_err(BerthError::io("print log", path))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::super::{LogLimits, LogWriter};
    use super::*;

    fn read(path: &Path, q: LogQuery) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        read_logs(path, &q, &|| false, &mut out, &mut err).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    fn numbered(out: &str) -> Vec<usize> {
        out.lines().map(|l| l[5..].parse().unwrap()).collect()
    }

    #[test]
    fn streams_go_to_their_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        let lines = [
            (Stream::Stdout, "ünïcødé 🦀\n"),
            (Stream::Stderr, "\"quoted\" \\ \t\u{1b}[0m\n"),
            (Stream::Stdout, "nul \u{0} cr \r\n"),
            (Stream::Stdout, "partial"),
        ];
        for (s, t) in lines {
            w.write_line(s, t.as_bytes()).unwrap();
        }
        let (out, err) = read(&path, LogQuery::default());
        assert_eq!(out, "ünïcødé 🦀\nnul \u{0} cr \r\npartial");
        assert_eq!(err, "\"quoted\" \\ \t\u{1b}[0m\n");
    }

    #[test]
    fn missing_log_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = read(&dir.path().join("container.log"), LogQuery::default());
        assert_eq!((out.as_str(), err.as_str()), ("", ""));
    }

    #[test]
    fn timestamps_prefix_each_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        let at = UNIX_EPOCH + Duration::new(1_796_137_445, 5);
        w.write_at(Stream::Stdout, b"one\n", at).unwrap();
        w.write_at(Stream::Stderr, b"two\n", at + Duration::from_secs(1))
            .unwrap();
        let q = LogQuery {
            timestamps: true,
            ..LogQuery::default()
        };
        let (out, err) = read(&path, q);
        assert_eq!(out, "2026-12-01T15:04:05.000000005Z one\n");
        assert_eq!(err, "2026-12-01T15:04:06.000000005Z two\n");
    }

    #[test]
    fn all_and_tail_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let limits = LogLimits {
            max_size: 500,
            max_files: 3,
        };
        let mut w = LogWriter::open(&path, limits).unwrap();
        for i in 0..40 {
            w.write_line(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert!(rotated(&path, 3).exists() && !rotated(&path, 4).exists());
        let (all, _) = read(&path, LogQuery::default());
        let all = numbered(&all);
        let first = all[0];
        assert!(first > 0);
        assert_eq!(all, (first..40).collect::<Vec<_>>());

        let in_current = std::fs::read_to_string(&path).unwrap().lines().count();
        let n = in_current + 3; // reaches into container.log.1
        let tail = |n| {
            let q = LogQuery {
                tail: Some(n),
                ..LogQuery::default()
            };
            numbered(&read(&path, q).0)
        };
        assert_eq!(tail(n), (40 - n..40).collect::<Vec<_>>());
        assert_eq!(tail(all.len() - 1), all[1..]);
        assert_eq!(tail(1000), all);
        assert!(tail(0).is_empty());
    }

    #[test]
    fn damaged_lines_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        w.write_line(Stream::Stdout, b"good\n").unwrap();
        drop(w);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"not json\n{\"log\":\"x\",\"stream\":\"tty\"}\n")
            .unwrap();
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        w.write_line(Stream::Stderr, b"after\n").unwrap();
        f.write_all(b"{\"log\":\"cut sh").unwrap();
        let (out, err) = read(&path, LogQuery::default());
        assert_eq!(
            out,
            "good\nnot json\n{\"log\":\"x\",\"stream\":\"tty\"}\n{\"log\":\"cut sh\n"
        );
        assert_eq!(err, "after\n");
    }

    /// Starts a follower in a thread and returns once it has printed what
    /// was there (its first `still_running` call); the receiver gets its
    /// output and a test fails instead of hanging.
    fn follow(path: &Path, q: LogQuery, running: Arc<AtomicBool>) -> mpsc::Receiver<Vec<u8>> {
        let path = path.to_path_buf();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        thread::spawn(move || {
            let mut out = Vec::new();
            let still = || {
                let _ = ready_tx.try_send(());
                running.load(Ordering::SeqCst)
            };
            read_logs(&path, &q, &still, &mut out, &mut io::sink()).unwrap();
            let _ = tx.send(out);
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("follow started");
        rx
    }

    #[test]
    fn follow_sees_new_lines_across_rotations_and_stops() {
        follow_rotations(true);
    }

    /// Several rotations between two polls: the follower reads the files
    /// rotated past it too.
    #[test]
    fn follow_catches_up_with_fast_rotations() {
        follow_rotations(false);
    }

    fn follow_rotations(pause: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let limits = LogLimits {
            max_size: 2000,
            max_files: 3,
        };
        let mut w = LogWriter::open(&path, limits).unwrap();
        for i in 0..3 {
            w.write_line(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let running = Arc::new(AtomicBool::new(true));
        let q = LogQuery {
            follow: true,
            tail: Some(2),
            ..LogQuery::default()
        };
        let rx = follow(&path, q, running.clone());
        let started = SystemTime::now();
        for i in 3..100 {
            w.write_line(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
            if pause && i % 5 == 0 {
                thread::sleep(Duration::from_millis(30));
            }
        }
        assert!(rotated(&path, 3).exists(), "the test should rotate");
        running.store(false, Ordering::SeqCst);
        let out = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("follow stopped");
        let elapsed = started.elapsed().unwrap();
        assert_eq!(
            numbered(&String::from_utf8(out).unwrap()),
            (1..100).collect::<Vec<_>>(),
            "after {elapsed:?}"
        );
    }

    #[test]
    fn follow_waits_for_the_log_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let running = Arc::new(AtomicBool::new(true));
        let q = LogQuery {
            follow: true,
            ..LogQuery::default()
        };
        let rx = follow(&path, q, running.clone());
        thread::sleep(Duration::from_millis(150));
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        w.write_line(Stream::Stdout, b"line 7\n").unwrap();
        thread::sleep(Duration::from_millis(150));
        w.write_line(Stream::Stdout, b"line 8\n").unwrap();
        running.store(false, Ordering::SeqCst);
        let out = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("follow stopped");
        assert_eq!(String::from_utf8(out).unwrap(), "line 7\nline 8\n");
    }

    #[test]
    fn truncated_in_place_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        std::fs::write(
            &path,
            "{\"log\":\"a long first line\\n\",\"stream\":\"stdout\",\"time\":\"t\"}\n",
        )
        .unwrap();
        let mut src = Source::open(&path).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut sink = Sink {
            out: &mut out,
            err: &mut err,
            timestamps: false,
            skip: 0,
        };
        src.as_mut().unwrap().drain(&mut sink).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(0).unwrap();
        std::fs::write(
            &path,
            "{\"log\":\"b\\n\",\"stream\":\"stdout\",\"time\":\"t\"}\n",
        )
        .unwrap();
        assert!(successor(&path, src.as_mut()).unwrap().is_none());
        src.unwrap().finish(&mut sink).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a long first line\nb\n");
    }
}
