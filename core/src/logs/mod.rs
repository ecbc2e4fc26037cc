//! Container logs in the format of Docker's json-file driver: the monitor
//! pumps init's stdout and stderr into `container.log`, one JSON object per
//! line (`{"log":"…\n","stream":"stdout","time":"…Z"}`), rotated at a size
//! cap; `berth logs` reads them back, optionally following.

use std::borrow::Cow;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod read;
mod time;
mod write;

pub use read::{read_logs, LogQuery};
pub use time::rfc3339_nanos;
pub use write::{pump, LogWriter};

/// Size at which `container.log` is rotated (Docker's common `max-size`).
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
/// Rotated files kept beside the current one: `container.log.1` … `.3`.
pub const DEFAULT_MAX_FILES: usize = 3;
/// Longest text of one record, without its newline; longer lines are split
/// into several records, as Docker does.
pub const MAX_LINE: usize = 16 * 1024;

/// Which of init's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// When a log file is rotated and how many rotated files are kept. With
/// `max_files == 0` the file is truncated in place instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_size: u64,
    pub max_files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// One line of a log file; field names and order are Docker's.
#[derive(Debug, Serialize, Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    stream: Stream,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

/// `PATH.N`, the Nth most recent rotated file.
fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut p = OsString::from(path.as_os_str());
    p.push(format!(".{n}"));
    PathBuf::from(p)
}
