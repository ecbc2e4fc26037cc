//! What a copy could not keep: counted, passed to the progress sink as it
//! happens, and summed up in one warning at the end.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tracing::{debug, warn};

use super::data::Copied;
use super::{CopyWarning, Progress};

/// The losses of one copy; shared by its workers.
pub(super) struct Losses<'a> {
    pub(super) progress: &'a dyn Progress,
    dropped: AtomicU64,
    filled: AtomicU64,
    first_drop: Mutex<Option<(PathBuf, OsString)>>,
}

impl<'a> Losses<'a> {
    pub(super) fn new(progress: &'a dyn Progress) -> Self {
        Losses {
            progress,
            dropped: AtomicU64::new(0),
            filled: AtomicU64::new(0),
            first_drop: Mutex::new(None),
        }
    }

    pub(super) fn xattrs(&self, rel: &Path, names: &[OsString]) {
        let Some(first) = names.first() else { return };
        for name in names {
            debug!(path = %shown(rel), name = %name.to_string_lossy(), "xattr dropped");
            self.progress
                .warn(&CopyWarning::XattrDropped { path: rel, name });
        }
        self.first_drop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| (rel.to_path_buf(), first.clone()));
        self.dropped
            .fetch_add(names.len() as u64, Ordering::Relaxed);
    }

    /// Reports a file whose holes were filled; returns the bytes reflinked.
    pub(super) fn data(&self, rel: &Path, copied: Copied, len: u64) -> u64 {
        match copied {
            Copied::Reflinked => len,
            Copied::Sparse => 0,
            Copied::HolesFilled {
                allocated,
                source_allocated,
            } => {
                warn!(
                    "{}: the target filled the holes of this sparse file \
                     ({allocated} bytes allocated; the source takes {source_allocated})",
                    shown(rel)
                );
                self.progress.warn(&CopyWarning::HolesFilled {
                    path: rel,
                    allocated,
                    source_allocated,
                });
                self.filled.fetch_add(1, Ordering::Relaxed);
                0
            }
        }
    }

    /// Logs the dropped xattrs once; returns (xattrs dropped, files filled).
    pub(super) fn summary(&self) -> (u64, u64) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let first = self
            .first_drop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((rel, name)) = first {
            let plural = if dropped == 1 { "" } else { "s" };
            warn!(
                "dropped {dropped} xattr{plural} that the target cannot store, e.g. {} of {}",
                name.to_string_lossy(),
                shown(rel.as_path())
            );
        }
        (dropped, self.filled.load(Ordering::Relaxed))
    }
}

/// A path relative to the copied tree as it reads inside it (an absolute one as is).
fn shown(rel: &Path) -> String {
    Path::new("/").join(rel).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl Progress for Seen {
        fn warn(&self, w: &CopyWarning<'_>) {
            self.0.lock().unwrap().push(format!("{w:?}"));
        }
    }

    #[test]
    fn counts_reports_and_sums_up() {
        let seen = Seen::default();
        let l = Losses::new(&seen);
        l.xattrs(Path::new("bin/ping"), &["security.capability".into()]);
        l.xattrs(Path::new(""), &[]);
        l.xattrs(Path::new("acl"), &["a".into(), "b".into()]);
        assert_eq!(l.data(Path::new("f"), Copied::Reflinked, 7), 7);
        assert_eq!(l.data(Path::new("f"), Copied::Sparse, 7), 0);
        let filled = Copied::HolesFilled {
            allocated: 9,
            source_allocated: 1,
        };
        assert_eq!(l.data(Path::new("s"), filled, 7), 0);
        assert_eq!(l.summary(), (3, 1));
        let seen = seen.0.into_inner().unwrap();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[0].contains("security.capability"), "{seen:?}");
        assert_eq!(shown(Path::new("bin/ping")), "/bin/ping");
        assert_eq!(shown(Path::new("/abs/x")), "/abs/x");
    }
}
