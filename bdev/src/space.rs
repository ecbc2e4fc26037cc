//! Space: how big a copy's volume should be, how much a new block-backed volume
//! will take from its pool, what a filesystem needs at least, how much room a
//! filesystem has, and which errors mean "full".
//!
//! A sparse image (or thin LV) takes its room only as it is written; a pool that
//! runs out mid-copy loses writes the copy already reported done. So copies into
//! such pools are measured before they start, and `NoSpace` names the numbers.

use std::io;
use std::path::Path;

use rustix::io::Errno;

use crate::backend::FsType;
use crate::error::{BdevError, Result};

const MIB: u64 = 1 << 20;

/// Headroom a copy's volume gets above the source's data: a quarter of it, plus
/// this much for the journal and the files of a running container.
pub const COPY_HEADROOM: u64 = 64 * MIB;

/// The smallest volume `fs` can be made on, with the options `blockfs` uses:
/// ext4 below 2 MiB has no room for a journal; mkfs.xfs refuses below 300 MiB;
/// mkfs.btrfs --mixed (used below 5 GiB) below 16 MiB.
pub fn fs_min_size(fs: FsType) -> u64 {
    match fs {
        FsType::Ext4 => 4 * MIB,
        FsType::Xfs => 300 * MIB,
        FsType::Btrfs => 16 * MIB,
    }
}

/// Size of a copy's volume when none was asked for: the source's `used` bytes
/// plus a quarter and [`COPY_HEADROOM`], in whole MiB, at least `fs`'s minimum.
/// It depends on the data only, so a copy of a copy gets the same size.
pub fn copy_size(used: u64, fs: FsType) -> u64 {
    let want = used
        .saturating_add(used / 4)
        .saturating_add(COPY_HEADROOM)
        .div_ceil(MIB)
        .saturating_mul(MIB);
    want.max(fs_min_size(fs))
}

/// Bytes of a new `size`-byte sparse image (or thin volume) holding `fs` once
/// `data` bytes have been copied in: the data, its inodes and directories (a
/// sixteenth), and what the filesystem writes of its own. ext4's journal is
/// about 1/32 of the volume (4 MiB at least, 64 MiB from 2 GiB); xfs logs 64
/// MiB from 300 MiB; btrfs --mixed starts with 8 MiB of chunks.
pub fn fill_estimate(fs: FsType, size: u64, data: u64) -> u64 {
    let own = match fs {
        FsType::Ext4 => (size / 32).clamp(4 * MIB, 64 * MIB) + MIB,
        FsType::Xfs => 64 * MIB + size / 256,
        FsType::Btrfs => 8 * MIB + MIB,
    };
    data.saturating_add(data / 16).saturating_add(own)
}

/// Bytes unprivileged writers can still put on the filesystem holding `path`
/// (`f_bavail`: the root reserve is left out, so the answer errs on the safe side).
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(|e| BdevError::Io {
        op: "measure the free space of",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Fails with `NoSpace` naming pool `pool` unless `available` covers `needed`.
pub fn check_room(pool: &str, needed: u64, available: u64) -> Result<()> {
    if needed <= available {
        return Ok(());
    }
    Err(BdevError::NoSpace {
        target: format!("pool {pool}"),
        needed,
        available,
    })
}

/// Names pool `pool` as what is full in a `NoSpace` error of a copy into it (the
/// copy engine knows only the path it wrote to); other errors pass unchanged.
pub fn in_pool(e: BdevError, pool: &str) -> BdevError {
    match e {
        BdevError::NoSpace {
            needed, available, ..
        } => BdevError::NoSpace {
            target: format!("pool {pool}"),
            needed,
            available,
        },
        other => other,
    }
}

/// `NoSpace` for an error of writing to `dst` that says the storage is full,
/// with the bytes the write needed and the room there was before it began.
pub fn full_at(e: BdevError, dst: &Path, needed: u64, available: u64) -> BdevError {
    if matches!(e, BdevError::NoSpace { .. }) || !error_is_full(&e) {
        return e;
    }
    BdevError::NoSpace {
        target: format!("{}", dst.display()),
        needed,
        available,
    }
}

/// Whether `e` says the storage is full: ENOSPC, or EDQUOT (a quota, a btrfs
/// qgroup limit).
pub fn is_full(e: &io::Error) -> bool {
    if let Some(n) = e.raw_os_error() {
        return n == Errno::NOSPC.raw_os_error() || n == Errno::DQUOT.raw_os_error();
    }
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Whether `e` failed because the storage is full (see [`is_full`]).
pub fn error_is_full(e: &BdevError) -> bool {
    match e {
        BdevError::NoSpace { .. } => true,
        BdevError::Io { source, .. } => is_full(source),
        _ => false,
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `81.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_size_is_data_plus_headroom_and_stable_along_a_chain() {
        // 81 MiB of data: 81 + 20.25 + 64, rounded up to whole MiB.
        assert_eq!(copy_size(81 * MIB, FsType::Ext4), 166 * MIB);
        // The copy holds the same data, so its copy is no bigger.
        let first = copy_size(200 * MIB, FsType::Ext4);
        assert_eq!(copy_size(200 * MIB, FsType::Ext4), first);
        assert!(first < 1 << 30, "no 1 GiB floor: {first}");
        // An empty source still gets a usable volume.
        assert_eq!(copy_size(0, FsType::Ext4), COPY_HEADROOM);
        // Never below the filesystem's minimum.
        assert_eq!(copy_size(MIB, FsType::Xfs), 300 * MIB);
        assert_eq!(copy_size(0, FsType::Btrfs), COPY_HEADROOM);
    }

    #[test]
    fn minimum_sizes_follow_mkfs() {
        assert_eq!(fs_min_size(FsType::Xfs), 300 * MIB);
        assert_eq!(fs_min_size(FsType::Btrfs), 16 * MIB);
        assert!(fs_min_size(FsType::Ext4) >= 2 * MIB);
    }

    #[test]
    fn fill_estimate_counts_data_and_filesystem() {
        // 24 MiB into a fresh 94 MiB ext4: the data, 1.5 MiB of inodes, 5 MiB own.
        assert_eq!(
            fill_estimate(FsType::Ext4, 94 * MIB, 24 * MIB),
            24 * MIB + 3 * MIB / 2 + 5 * MIB
        );
        assert!(fill_estimate(FsType::Xfs, 1 << 30, 0) >= 64 * MIB);
        assert!(fill_estimate(FsType::Ext4, 4 << 30, 0) <= 65 * MIB);
    }

    #[test]
    fn room_check_names_pool_and_sizes() {
        check_room("p", 10, 10).unwrap();
        let e = check_room("sl", 81 * MIB, 40 * MIB).unwrap_err();
        assert!(error_is_full(&e));
        assert_eq!(
            e.to_string(),
            "pool sl is full: needs 81.0 MiB, has 40.0 MiB"
        );
    }

    #[test]
    fn full_errors_name_the_pool() {
        let enospc =
            || BdevError::io("write", "/p/c/f")(io::Error::from_raw_os_error(libc::ENOSPC));
        let e = full_at(enospc(), Path::new("/p/c"), 30 * MIB, 10 * MIB);
        assert_eq!(e.to_string(), "/p/c is full: needs 30.0 MiB, has 10.0 MiB");
        let e = in_pool(e, "sl");
        assert_eq!(
            e.to_string(),
            "pool sl is full: needs 30.0 MiB, has 10.0 MiB"
        );
        // Other errors pass through both.
        let eio = BdevError::io("write", "/p")(io::Error::from_raw_os_error(libc::EIO));
        let eio = in_pool(full_at(eio, Path::new("/p"), 1, 1), "sl");
        assert!(matches!(eio, BdevError::Io { .. }), "{eio}");
    }

    #[test]
    fn full_errors_are_recognised() {
        assert!(is_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_full(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(is_full(&io::Error::new(io::ErrorKind::StorageFull, "x")));
        let io = BdevError::io("write", "/x")(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(error_is_full(&io));
        assert!(!error_is_full(&BdevError::Interrupted));
    }

    #[test]
    fn free_bytes_of_a_real_directory() {
        let d = tempfile::tempdir().unwrap();
        assert!(free_bytes(d.path()).unwrap() > 0);
        assert!(free_bytes(Path::new("/nonexistent/berth")).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
