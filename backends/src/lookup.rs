//! Finding volumes by name in a pool directory, shared by the path-based
//! backends, and the record of a union volume's lower layers (overlay, aufs),
//! which the layout alone cannot tell.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_bdev::fsutil::atomic_write;
use berth_bdev::names::validate_name;
use berth_bdev::{BdevError, Result, VolumeSpec};
use tracing::warn;

/// The pool options of a backend that has none: any key is refused, by name.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoOptions {}

/// What a volume is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Dir,
    File,
}

impl Entry {
    fn matches(self, ft: fs::FileType) -> bool {
        match self {
            Entry::Dir => ft.is_dir(),
            Entry::File => ft.is_file(),
        }
    }
}

/// The volume names in `dir`, sorted: entries of `kind` (a symlink never counts)
/// named `NAME` + `suffix` with a valid `NAME`. Everything else, the backend's
/// own dot-files included, is skipped; a missing `dir` holds none.
pub(crate) fn names_in(dir: &Path, kind: Entry, suffix: &str) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BdevError::io("read directory", dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(BdevError::io("read directory", dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if validate_name(name).is_err() {
            continue;
        }
        let ft = e.file_type().map_err(BdevError::io("stat", e.path()))?;
        if kind.matches(ft) {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `path` is an entry of `kind`, without following a symlink.
pub(crate) fn is_entry(path: &Path, kind: Entry) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(kind.matches(m.file_type())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BdevError::io("stat", path)(e)),
    }
}

/// Whether anything is at `path` (a dangling symlink included).
pub(crate) fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BdevError::io("stat", path)(e)),
    }
}

/// Logs that a destroy found nothing left to remove.
pub(crate) fn already_gone(v: &VolumeSpec) {
    warn!(volume = %v, "already gone; nothing to destroy");
}

/// The file in a union volume's directory that records its lower layers.
pub(crate) const LOWERS_FILE: &str = "lowers";

/// Records `lowers` (topmost first) in `home`: each path followed by a NUL, the
/// one byte no path contains, so any path round-trips.
pub(crate) fn write_lowers(home: &Path, lowers: &[PathBuf]) -> Result<()> {
    let mut data = Vec::new();
    for l in lowers {
        data.extend_from_slice(l.as_os_str().as_bytes());
        data.push(0);
    }
    atomic_write(&home.join(LOWERS_FILE), &data)
}

/// The lowers recorded in `home`; `None` where there is no record (volumes made
/// before berth kept one).
pub(crate) fn read_lowers(home: &Path) -> Result<Option<Vec<PathBuf>>> {
    let p = home.join(LOWERS_FILE);
    let data = match fs::read(&p) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BdevError::io("read", &p)(e)),
    };
    Ok(Some(
        data.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| PathBuf::from(OsStr::from_bytes(s)))
            .collect(),
    ))
}

/// The lowers of the union volume in `home`: its record, else what the layout
/// shows (an own `lower` directory is the only lower of a fresh volume and of a
/// snapshot of one), else none, which `destroy` still accepts.
pub(crate) fn lowers_of(home: &Path) -> Result<Vec<PathBuf>> {
    if let Some(l) = read_lowers(home)? {
        return Ok(l);
    }
    let own = home.join("lower");
    Ok(if is_entry(&own, Entry::Dir)? {
        vec![own]
    } else {
        Vec::new()
    })
}

/// The fields of a union spec (overlay, aufs): absolute lowers, topmost first,
/// then the upper.
pub(crate) fn union_from_fields(
    backend: &str,
    fields: &[String],
) -> std::result::Result<(Vec<PathBuf>, PathBuf), String> {
    let needs = || format!("{backend} needs LOWER[:LOWER…]:UPPER");
    if fields.len() < 2 {
        return Err(needs());
    }
    let mut paths = fields
        .iter()
        .map(|f| berth_bdev::spec::abs_path(f))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let upper = paths.pop().ok_or_else(needs)?;
    Ok((paths, upper))
}

/// The fields of a union spec, lowers then upper.
pub(crate) fn union_to_fields(lowers: &[PathBuf], upper: &Path) -> Vec<String> {
    lowers
        .iter()
        .map(PathBuf::as_path)
        .chain([upper])
        .map(berth_bdev::spec::path_field)
        .collect()
}

/// The directory of a union volume or snapshot: the parent of its upper, which
/// is always called `upper`.
pub(crate) fn union_home(upper: &Path) -> Option<&Path> {
    if upper.file_name()? != "upper" {
        return None;
    }
    upper.parent()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn names_are_valid_entries_of_the_right_kind_sorted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in ["b", "a", ".snapshots", "sp ace"] {
            fs::create_dir(p.join(dir)).unwrap();
        }
        for f in ["c.img", "d.img", ".tmp.img", "e.txt"] {
            fs::write(p.join(f), "").unwrap();
        }
        std::os::unix::fs::symlink(p.join("a"), p.join("link")).unwrap();
        assert_eq!(names_in(p, Entry::Dir, "").unwrap(), ["a", "b"]);
        assert_eq!(names_in(p, Entry::File, ".img").unwrap(), ["c", "d"]);
        assert!(names_in(&p.join("missing"), Entry::Dir, "")
            .unwrap()
            .is_empty());
        assert!(is_entry(&p.join("a"), Entry::Dir).unwrap());
        assert!(!is_entry(&p.join("link"), Entry::Dir).unwrap());
        assert!(exists(&p.join("link")).unwrap());
        assert!(!exists(&p.join("nope")).unwrap());
    }

    #[test]
    fn lowers_round_trip_any_path() {
        let d = tempfile::tempdir().unwrap();
        let odd = PathBuf::from(std::ffi::OsString::from_vec(b"/we:ird\n\xff=,dir".to_vec()));
        let lowers = vec![PathBuf::from("/p/o/upper"), odd];
        assert_eq!(read_lowers(d.path()).unwrap(), None);
        write_lowers(d.path(), &lowers).unwrap();
        assert_eq!(read_lowers(d.path()).unwrap(), Some(lowers.clone()));
        assert_eq!(lowers_of(d.path()).unwrap(), lowers);
        write_lowers(d.path(), &[]).unwrap();
        assert_eq!(read_lowers(d.path()).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn unrecorded_lowers_come_from_the_layout() {
        let d = tempfile::tempdir().unwrap();
        assert!(lowers_of(d.path()).unwrap().is_empty());
        fs::create_dir(d.path().join("lower")).unwrap();
        assert_eq!(lowers_of(d.path()).unwrap(), [d.path().join("lower")]);
    }
}
