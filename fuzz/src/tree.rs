//! What a directory tree looks like, to tell whether anything in it changed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Every entry below a root (the root too, as ""), by relative path: its type,
/// mode, owner, size, mtime and link target. Symlinks are not followed.
pub type Snapshot = BTreeMap<String, String>;

/// Snapshots `root`, leaving out what is below `skip` (but not `skip` itself,
/// which is recorded by type only: its own metadata may change).
pub fn snapshot(root: &Path, skip: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    walk(root, root, skip, &mut out);
    out
}

fn walk(root: &Path, p: &Path, skip: &Path, out: &mut Snapshot) {
    let rel = p
        .strip_prefix(root)
        .map(|r| r.display().to_string())
        .unwrap_or_default();
    let Ok(m) = fs::symlink_metadata(p) else {
        out.insert(rel, "vanished".to_owned());
        return;
    };
    if p == skip {
        out.insert(rel, format!("{:?}", m.file_type()));
        return;
    }
    let link = fs::read_link(p)
        .map(|l| l.display().to_string())
        .unwrap_or_default();
    let size = if m.is_dir() { 0 } else { m.size() };
    out.insert(
        rel,
        format!(
            "{:o} {}:{} {size} {}.{} {link}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec()
        ),
    );
    if m.is_dir() {
        if let Ok(entries) = fs::read_dir(p) {
            for e in entries.flatten() {
                walk(root, &e.path(), skip, out);
            }
        }
    }
}

/// The entries that differ between two snapshots, for a failure message.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => out.push(format!("removed {k:?} ({v})")),
            Some(w) if w != v => out.push(format!("changed {k:?}: {v} -> {w}")),
            Some(_) => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            out.push(format!("appeared {k:?} ({v})"));
        }
    }
    out
}
