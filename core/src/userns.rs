//! Unprivileged containers: which host ids a container's root maps to (the
//! `berth` ranges of /etc/subuid and /etc/subgid, added on first use as LXC's
//! set-up does), and the one-time chown shift for volumes whose filesystem
//! cannot be idmapped (FUSE, overlay mounts).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use berth_bdev::fsutil::atomic_write;
use rustix::fs::{AtFlags, Gid, Uid, CWD};

use crate::confine::IdShift;
use crate::error::{BerthError, Result};

/// The name whose subordinate ranges berth uses.
pub const SUBID_USER: &str = "berth";
/// Ids per container: a whole 16-bit range, as LXC and Docker map.
pub const SUBID_COUNT: u32 = 65536;
/// Where allocation starts when no range is taken yet (as useradd does).
const SUBID_FIRST: u32 = 100_000;

/// `(start, count)` of `user`'s first range in a subuid/subgid file.
pub fn find_range(text: &str, user: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (name, start, count) = (f.next()?, f.next()?, f.next()?);
        if name != user {
            return None;
        }
        let count: u32 = count.parse().ok()?;
        (count >= SUBID_COUNT).then_some((start.parse().ok()?, count))
    })
}

/// The first start at or after [`SUBID_FIRST`] that overlaps no range in
/// `text`, aligned to [`SUBID_COUNT`].
pub fn free_start(text: &str) -> Option<u32> {
    let taken: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':').skip(1);
            let start: u64 = f.next()?.parse().ok()?;
            let count: u64 = f.next()?.parse().ok()?;
            Some((start, start + count))
        })
        .collect();
    let mut start = u64::from(SUBID_FIRST);
    loop {
        let end = start + u64::from(SUBID_COUNT);
        match taken.iter().find(|(s, e)| *s < end && start < *e) {
            // Past the clash, rounded up to the next aligned start.
            Some((_, e)) => {
                let step = u64::from(SUBID_COUNT);
                start = e.div_ceil(step) * step;
            }
            None => {
                return u32::try_from(start)
                    .ok()
                    .filter(|s| s.checked_add(SUBID_COUNT).is_some())
            }
        }
    }
}

/// `user`'s range in `path`, appended (atomically) when it has none.
fn range_in(path: &Path, user: &str) -> Result<u32> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(BerthError::io("read", path)(e)),
    };
    if let Some((start, _)) = find_range(&text, user) {
        return Ok(start);
    }
    let start = free_start(&text).ok_or_else(|| {
        BerthError::Invalid(format!(
            "no free range of {SUBID_COUNT} ids left in {path:?}"
        ))
    })?;
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!("{user}:{start}:{SUBID_COUNT}\n"));
    atomic_write(path, new.as_bytes())?;
    Ok(start)
}

/// The host ids container root maps to, from /etc/subuid and /etc/subgid.
pub fn subordinate_ids() -> Result<IdShift> {
    Ok(IdShift {
        uid: range_in(Path::new("/etc/subuid"), SUBID_USER)?,
        gid: range_in(Path::new("/etc/subgid"), SUBID_USER)?,
        count: SUBID_COUNT,
    })
}

/// Moves every owner id in `from..from+count` to the same offset from `to`,
/// for uids and gids, below `root` on its filesystem only, never following
/// symlinks. Ids outside the range are left alone, so a second pass (or a
/// second hard link) shifts nothing twice. Returns how many entries changed.
pub fn shift_owners(root: &Path, from: IdShift, to: IdShift) -> Result<u64> {
    let dev = fs::symlink_metadata(root)
        .map_err(BerthError::io("stat", root))?
        .dev();
    let count = from.count.min(to.count);
    let shift = |id: u32, from: u32, to: u32| {
        id.checked_sub(from)
            .filter(|off| *off < count)
            .map(|off| to + off)
    };
    let mut changed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let md = fs::symlink_metadata(&path).map_err(BerthError::io("stat", &path))?;
        if md.dev() != dev {
            continue;
        }
        let uid = shift(md.uid(), from.uid, to.uid);
        let gid = shift(md.gid(), from.gid, to.gid);
        if uid.is_some() || gid.is_some() {
            let uid = Uid::from_raw(uid.unwrap_or(md.uid()));
            let gid = Gid::from_raw(gid.unwrap_or(md.gid()));
            rustix::fs::chownat(CWD, &path, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| BerthError::io("chown", &path)(e.into()))?;
            // chown clears set-user-ID and set-group-ID bits: put them back.
            if md.is_file() && md.mode() & 0o6000 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(md.mode() & 0o7777))
                    .map_err(BerthError::io("chmod", &path))?;
            }
            changed += 1;
        }
        if md.is_dir() {
            for entry in fs::read_dir(&path).map_err(BerthError::io("read directory", &path))? {
                stack.push(
                    entry
                        .map_err(BerthError::io("read directory", &path))?
                        .path(),
                );
            }
        }
    }
    Ok(changed)
}

/// The identity mapping's ids: container ids as they are on disk unshifted.
pub fn unshifted(count: u32) -> IdShift {
    IdShift {
        uid: 0,
        gid: 0,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_allocates_ranges() {
        let text = "root:100000:65536\nberth:300000:65536\n";
        assert_eq!(find_range(text, "berth"), Some((300_000, 65536)));
        assert_eq!(find_range(text, "nobody"), None);
        assert_eq!(find_range("berth:5:10\n", "berth"), None);
        assert_eq!(free_start(""), Some(100_000));
        assert_eq!(free_start("root:100000:65536\n"), Some(196_608));
        assert_eq!(free_start("a:0:1000\nb:131072:65536\n"), Some(196_608));
        assert_eq!(free_start("junk\n\n"), Some(100_000));
    }

    #[test]
    fn shift_moves_ids_in_range_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        std::os::unix::fs::chown(&f, Some(5), Some(7)).unwrap_or(());
        let Ok(md) = fs::metadata(&f) else { return };
        if md.uid() != 5 {
            return; // not root: chown is not allowed here
        }
        let to = IdShift {
            uid: 100_000,
            gid: 200_000,
            count: 65536,
        };
        let n = shift_owners(dir.path(), unshifted(65536), to).unwrap();
        assert_eq!(n, 3);
        let md = fs::metadata(&f).unwrap();
        assert_eq!((md.uid(), md.gid()), (100_005, 200_007));
        assert_eq!(shift_owners(dir.path(), unshifted(65536), to).unwrap(), 0);
        shift_owners(dir.path(), to, unshifted(65536)).unwrap();
        let md = fs::metadata(&f).unwrap();
        assert_eq!((md.uid(), md.gid()), (5, 7));
    }
}
