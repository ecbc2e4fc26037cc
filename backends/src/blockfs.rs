//! The filesystem on a block device or image file (loop, lvm): detect it from the
//! superblock, format it, give a copy its own UUID, grow it. Command lines are
//! built by pure functions.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use berth_bdev::cmd::{CmdError, ExitStatus, Runner};
use berth_bdev::fsutil::{create_dir_all, require_tool};
use berth_bdev::mount::{self, FsOpt, MountGuard};
use berth_bdev::space::{fs_min_size, human};
use berth_bdev::{BdevError, FsType, Result, Tool};

/// Bytes to read to see every superblock we know (btrfs's is the farthest, at 64 KiB).
pub(crate) const PROBE_LEN: usize = BTRFS_MAGIC_AT + 8;
const EXT_MAGIC_AT: usize = 1080;
const BTRFS_MAGIC_AT: usize = 65536 + 64;

/// `mkfs.btrfs(8)`: mixed data+metadata block groups are recommended below 1 GiB
/// and softly below 5 GiB; without them a small image runs out of metadata chunks
/// while data chunks hold the free space.
const BTRFS_MIXED_BELOW: u64 = 5 << 30;

/// The filesystem whose superblock magic `buf` (the image's first bytes) carries.
pub fn detect(buf: &[u8]) -> Option<FsType> {
    let at = |off: usize, magic: &[u8]| buf.get(off..off + magic.len()) == Some(magic);
    if at(BTRFS_MAGIC_AT, b"_BHRfS_M") {
        Some(FsType::Btrfs)
    } else if at(0, b"XFSB") {
        Some(FsType::Xfs)
    } else if at(EXT_MAGIC_AT, &0xEF53u16.to_le_bytes()) {
        // ext2 and ext3 share the magic; the ext4 driver mounts all three.
        Some(FsType::Ext4)
    } else {
        None
    }
}

/// Reads the superblocks of the image or device at `path` and names its
/// filesystem; `spec` names the volume in the error.
pub(crate) fn detect_path(path: &Path, spec: impl FnOnce() -> String) -> Result<FsType> {
    let mut buf = Vec::with_capacity(PROBE_LEN);
    File::open(path)
        .and_then(|f| f.take(PROBE_LEN as u64).read_to_end(&mut buf))
        .map_err(BdevError::io("read the superblock of", path))?;
    detect(&buf).ok_or_else(|| BdevError::InvalidSpec {
        spec: spec(),
        reason: "it holds no ext2/3/4, xfs or btrfs filesystem".to_owned(),
    })
}

/// The kernel filesystem that mounts `fs`, as /proc/filesystems names it.
pub(crate) fn kernel_fs(fs: FsType) -> &'static [&'static str] {
    match fs {
        FsType::Ext4 => &["ext4"],
        FsType::Xfs => &["xfs"],
        FsType::Btrfs => &["btrfs"],
    }
}

/// The programs a filesystem needs (format, new UUID, grow, check), with the
/// Debian package of each: what the probe of a block-backed backend checks, so
/// its `Caps::tools` should be this list.
pub(crate) const fn tools(fs: FsType) -> &'static [Tool] {
    const EXT4: &[Tool] = &[
        Tool::new("mkfs.ext4", "e2fsprogs"),
        Tool::new("e2fsck", "e2fsprogs"),
        Tool::new("resize2fs", "e2fsprogs"),
        Tool::new("dumpe2fs", "e2fsprogs"),
    ];
    const XFS: &[Tool] = &[
        Tool::new("mkfs.xfs", "xfsprogs"),
        Tool::new("xfs_admin", "xfsprogs"),
        Tool::new("xfs_growfs", "xfsprogs"),
    ];
    const BTRFS: &[Tool] = &[
        Tool::new("mkfs.btrfs", "btrfs-progs"),
        Tool::new("btrfstune", "btrfs-progs"),
        Tool::new("btrfs", "btrfs-progs"),
    ];
    match fs {
        FsType::Ext4 => EXT4,
        FsType::Xfs => XFS,
        FsType::Btrfs => BTRFS,
    }
}

/// A backend's `own` programs, then those of `fs`: one `Caps::tools` list for a
/// backend that runs both. `N` is their total, checked when the constant is built.
pub(crate) const fn backend_tools<const N: usize>(own: &[Tool], fs: FsType) -> [Tool; N] {
    let rest = tools(fs);
    assert!(own.len() + rest.len() == N, "N must count own and fs tools");
    let mut out = [Tool::new("", ""); N];
    let mut i = 0;
    while i < N {
        out[i] = if i < own.len() {
            own[i]
        } else {
            rest[i - own.len()]
        };
        i += 1;
    }
    out
}

/// Checks the programs of `tools(fs)`, for a volume whose filesystem is not the
/// pool's default (the probe checked that one).
pub(crate) fn require_tools(backend: &'static str, fs: FsType) -> Result<()> {
    for t in tools(fs) {
        require_tool(backend, t.prog, t.package)?;
    }
    Ok(())
}

/// Why `fs` cannot be made `size` bytes big (below what its mkfs accepts, or
/// too small for a journal), if it cannot.
pub(crate) fn size_problem(fs: FsType, size: u64) -> Option<String> {
    let min = fs_min_size(fs);
    if size >= min {
        return None;
    }
    let other = if fs == FsType::Ext4 { "" } else { " or ext4" };
    Some(format!(
        "{fs} needs at least {}, asked for {}; use a bigger --size{other}",
        human(min),
        human(size)
    ))
}

/// Refuses, before anything is made, a volume too small for its filesystem;
/// `spec` names the volume in the error. Every backend that runs mkfs asks here.
pub(crate) fn check_size(fs: FsType, size: u64, spec: impl FnOnce() -> String) -> Result<()> {
    match size_problem(fs, size) {
        Some(reason) => Err(BdevError::SizeRefused {
            volume: spec(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The read-only check of the filesystem on an unmounted image or device: it
/// reports damage and repairs nothing.
pub fn fsck_command(fs: FsType, img: &Path) -> Command {
    match fs {
        FsType::Ext4 => with_path("e2fsck", &["-f", "-n"], img),
        FsType::Xfs => with_path("xfs_repair", &["-n"], img),
        FsType::Btrfs => with_path("btrfs", &["check", "--readonly"], img),
    }
}

/// Checks the filesystem on the unmounted `img` read-only; an error means the
/// checker found damage (or could not run).
pub(crate) fn fsck(runner: &dyn Runner, fs: FsType, img: &Path) -> Result<()> {
    let (prog, args) = fsck_command(fs, img);
    run(runner, prog, &args)?;
    Ok(())
}

/// Flushes the image file or block device at `path` to stable storage. A write
/// that failed after it was accepted (a sparse image whose filesystem filled up)
/// is reported here, once: `volume` names it in the error.
pub(crate) fn sync_path(path: &Path, volume: impl FnOnce() -> String) -> Result<()> {
    File::open(path)
        .map_err(BdevError::io("open", path))?
        .sync_all()
        .map_err(|source| BdevError::WriteLost {
            volume: volume(),
            source,
        })
}

type Command = (&'static str, Vec<OsString>);

fn with_path(prog: &'static str, args: &[&str], path: &Path) -> Command {
    let mut v: Vec<OsString> = args.iter().map(OsString::from).collect();
    v.push(path.as_os_str().to_owned());
    (prog, v)
}

/// The mkfs command for an image or device of `size` bytes. Forced: a reused
/// device may still carry an old signature.
pub fn mkfs_command(fs: FsType, img: &Path, size: u64) -> Command {
    match fs {
        FsType::Ext4 => with_path("mkfs.ext4", &["-q", "-F"], img),
        // reflink=1 is the default since xfsprogs 5.1; spelled out so a copy of
        // the image inside a reflink pool can share blocks with the image's own
        // files too.
        FsType::Xfs => with_path("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"], img),
        FsType::Btrfs if size < BTRFS_MIXED_BELOW => {
            with_path("mkfs.btrfs", &["-q", "-f", "--mixed"], img)
        }
        FsType::Btrfs => with_path("mkfs.btrfs", &["-q", "-f"], img),
    }
}

/// Formats the image or device `dev` of `size` bytes with `fs`.
pub(crate) fn mkfs(runner: &dyn Runner, fs: FsType, dev: &Path, size: u64) -> Result<()> {
    let (prog, args) = mkfs_command(fs, dev, size);
    run(runner, prog, &args)?;
    Ok(())
}

/// Mounts the filesystem `fs` on block device `dev` at `at`. xfs is mounted
/// `nouuid`: a snapshot, clone or copy carries its origin's UUID, which xfs
/// would refuse as a duplicate, and giving the copy a new one (`xfs_admin -U`)
/// rewrites its whole log (tens of MiB unshared, 100+ ms per clone).
pub(crate) fn mount_device(fs: FsType, dev: &Path, at: &Path, ro: bool) -> Result<()> {
    let opts: &[FsOpt<'_>] = match fs {
        FsType::Xfs => &[FsOpt::Flag("nouuid")],
        _ => &[],
    };
    Ok(mount::mount_fs(fs.as_str(), dev.as_os_str(), at, opts, ro)?)
}

/// The command that gives a copied image a fresh filesystem UUID, so that the copy
/// and its origin can be mounted at once. btrfs refuses a second filesystem with
/// a UUID already mounted; xfs is mounted `nouuid` instead ([`mount_device`]).
/// ext4 does not care, and `tune2fs -U` on a metadata_csum filesystem rewrites
/// every checksummed block, which would unshare a reflinked copy: ext4 copies
/// keep their UUID.
pub fn new_uuid_command(fs: FsType, img: &Path) -> Option<Command> {
    match fs {
        FsType::Ext4 | FsType::Xfs => None,
        // -m changes only the user-visible fsid (metadata_uuid feature, Linux 5.0+);
        // -u would rewrite every metadata block.
        FsType::Btrfs => Some(with_path("btrfstune", &["-m"], img)),
    }
}

/// Gives the copied image `img` its own UUID where the filesystem needs one.
pub(crate) fn new_uuid(runner: &dyn Runner, fs: FsType, img: &Path) -> Result<()> {
    if let Some((prog, args)) = new_uuid_command(fs, img) {
        run(runner, prog, &args)?;
    }
    Ok(())
}

/// Grows an ext4 filesystem to fill its (already extended) image or device;
/// `offline` when nothing mounts it.
pub(crate) fn grow_ext4(runner: &dyn Runner, img: &Path, offline: bool) -> Result<()> {
    if offline {
        // resize2fs insists on a freshly checked filesystem when offline.
        let (prog, args) = with_path("e2fsck", &["-f", "-p"], img);
        if let Err(e) = run(runner, prog, &args) {
            if !fsck_fixed(&e) {
                return Err(e.into());
            }
        }
    }
    let (prog, args) = with_path("resize2fs", &[], img);
    run(runner, prog, &args)?;
    Ok(())
}

/// The command that grows a mounted xfs or btrfs filesystem to fill its device.
pub fn grow_online_command(fs: FsType, mnt: &Path) -> Option<Command> {
    match fs {
        FsType::Ext4 => None,
        FsType::Xfs => Some(with_path("xfs_growfs", &[], mnt)),
        FsType::Btrfs => Some(with_path("btrfs", &["filesystem", "resize", "max"], mnt)),
    }
}

/// Grows the filesystem `fs` on `dev` (an image, export or device that has
/// already grown) to fill it: the one grow of every block-backed backend. ext4
/// grows on `dev` itself, checked first unless `mounted`. xfs and btrfs grow
/// only while mounted, so `mount` mounts `dev` on the new directory `at` for the
/// moment; `at` is removed afterwards.
pub(crate) fn grow(
    runner: &dyn Runner,
    fs: FsType,
    dev: &Path,
    mounted: bool,
    at: &Path,
    mount: impl FnOnce(&Path) -> Result<MountGuard>,
) -> Result<()> {
    let Some((prog, args)) = grow_online_command(fs, at) else {
        return grow_ext4(runner, dev, !mounted);
    };
    create_dir_all(at)?;
    let grown = (|| {
        let guard = mount(at)?;
        berth_bdev::process::crash_point("grow", "mounted");
        let r = run(runner, prog, &args).map_err(BdevError::from);
        let released = guard.release();
        r?;
        released
    })();
    let _ = std::fs::remove_dir(at);
    grown
}

/// `e2fsck` exit status 1 means "errors corrected": the filesystem is fine now.
pub fn fsck_fixed(e: &CmdError) -> bool {
    matches!(
        e,
        CmdError::Failed {
            status: ExitStatus::Code(1),
            ..
        }
    )
}

pub(crate) fn run(runner: &dyn Runner, prog: &str, args: &[OsString]) -> Result<(), CmdError> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    runner.run(prog, &args).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with(at: usize, magic: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_LEN];
        b[at..at + magic.len()].copy_from_slice(magic);
        b
    }

    #[test]
    fn superblock_magic_names_the_filesystem() {
        assert_eq!(detect(&image_with(1080, &[0x53, 0xEF])), Some(FsType::Ext4));
        assert_eq!(detect(&image_with(0, b"XFSB")), Some(FsType::Xfs));
        assert_eq!(detect(&image_with(65600, b"_BHRfS_M")), Some(FsType::Btrfs));
        assert_eq!(detect(&vec![0u8; PROBE_LEN]), None);
        // Big-endian 0xEF53 is not ext.
        assert_eq!(detect(&image_with(1080, &[0xEF, 0x53])), None);
    }

    #[test]
    fn short_images_are_probed_without_panicking() {
        assert_eq!(detect(&[]), None);
        assert_eq!(detect(b"XFS"), None);
        assert_eq!(detect(b"XFSB"), Some(FsType::Xfs));
        let mut ext = vec![0u8; 1082];
        ext[1080..].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(detect(&ext), Some(FsType::Ext4));
        assert_eq!(detect(&ext[..1081]), None);
    }

    fn line((prog, args): Command) -> String {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("{prog} {}", args.join(" "))
    }

    #[test]
    fn mkfs_lines() {
        let img = Path::new("/p/c.img");
        assert_eq!(
            line(mkfs_command(FsType::Ext4, img, 1 << 30)),
            "mkfs.ext4 -q -F /p/c.img"
        );
        assert_eq!(
            line(mkfs_command(FsType::Xfs, img, 1 << 30)),
            "mkfs.xfs -q -f -m reflink=1 /p/c.img"
        );
        assert_eq!(
            line(mkfs_command(FsType::Btrfs, img, 1 << 30)),
            "mkfs.btrfs -q -f --mixed /p/c.img"
        );
        assert_eq!(
            line(mkfs_command(FsType::Btrfs, img, 8 << 30)),
            "mkfs.btrfs -q -f /p/c.img"
        );
    }

    #[test]
    fn uuid_and_grow_lines() {
        let img = Path::new("/p/c.img");
        assert!(new_uuid_command(FsType::Ext4, img).is_none());
        assert!(new_uuid_command(FsType::Xfs, img).is_none());
        assert_eq!(
            line(new_uuid_command(FsType::Btrfs, img).unwrap()),
            "btrfstune -m /p/c.img"
        );
        let mnt = Path::new("/m");
        assert!(grow_online_command(FsType::Ext4, mnt).is_none());
        assert_eq!(
            line(grow_online_command(FsType::Xfs, mnt).unwrap()),
            "xfs_growfs /m"
        );
        assert_eq!(
            line(grow_online_command(FsType::Btrfs, mnt).unwrap()),
            "btrfs filesystem resize max /m"
        );
    }

    #[test]
    fn minimum_sizes_are_refused_with_the_numbers() {
        let x = size_problem(FsType::Xfs, 256 << 20).unwrap();
        assert!(
            x.contains("xfs needs at least 300.0 MiB, asked for 256.0 MiB"),
            "{x}"
        );
        assert!(x.contains("or ext4"), "{x}");
        assert!(size_problem(FsType::Xfs, 300 << 20).is_none());
        let e = size_problem(FsType::Ext4, 1 << 20).unwrap();
        assert!(
            e.contains("ext4 needs at least 4.0 MiB, asked for 1.0 MiB"),
            "{e}"
        );
        assert!(!e.contains("or ext4"), "{e}");
        assert!(size_problem(FsType::Ext4, 4 << 20).is_none());
        // mkfs.btrfs --mixed, which blockfs uses below 5 GiB, takes 16 MiB.
        assert!(size_problem(FsType::Btrfs, 15 << 20).is_some());
        assert!(size_problem(FsType::Btrfs, 16 << 20).is_none());
        let err = check_size(FsType::Ext4, 1 << 20, || "loop:/p/c.img".to_owned())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("loop:/p/c.img") && err.contains("4.0 MiB"),
            "{err}"
        );
    }

    #[test]
    fn fsck_lines_repair_nothing() {
        let img = Path::new("/p/c.img");
        assert_eq!(
            line(fsck_command(FsType::Ext4, img)),
            "e2fsck -f -n /p/c.img"
        );
        assert_eq!(
            line(fsck_command(FsType::Xfs, img)),
            "xfs_repair -n /p/c.img"
        );
        assert_eq!(
            line(fsck_command(FsType::Btrfs, img)),
            "btrfs check --readonly /p/c.img"
        );
    }

    #[test]
    fn a_failed_sync_names_the_volume() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.img");
        std::fs::write(&f, b"x").unwrap();
        sync_path(&f, || "c".to_owned()).unwrap();
        let e = sync_path(&d.path().join("gone.img"), || "c".to_owned()).unwrap_err();
        assert!(matches!(e, BdevError::Io { .. }), "{e}");
    }

    #[test]
    fn fsck_status_one_means_fixed() {
        let failed = |status: ExitStatus| CmdError::Failed {
            prog: "e2fsck".into(),
            args: String::new(),
            status,
            stderr: String::new(),
            stdout: String::new(),
        };
        assert!(fsck_fixed(&failed(ExitStatus::Code(1))));
        assert!(!fsck_fixed(&failed(ExitStatus::Code(4))));
    }

    #[test]
    fn backend_tools_come_before_the_filesystem_tools() {
        const OWN: &[Tool] = &[Tool::new("qemu-img", "qemu-utils")];
        const X: [Tool; 4] = backend_tools(OWN, FsType::Xfs);
        assert_eq!(X[0], OWN[0]);
        assert_eq!(&X[1..], tools(FsType::Xfs));
    }

    #[test]
    fn online_grow_mounts_on_a_temporary_directory_and_removes_it() {
        use berth_bdev::cmd::ScriptedRunner;
        let d = tempfile::tempdir().unwrap();
        let at = d.path().join("grow");
        let line = format!("xfs_growfs {}", at.display());
        let r = ScriptedRunner::new().expect(&line, "");
        let mut mounted_on = None;
        grow(&r, FsType::Xfs, Path::new("/p/c.img"), false, &at, |at| {
            assert!(at.is_dir());
            mounted_on = Some(at.to_path_buf());
            // Nothing is really mounted here.
            Ok(MountGuard::unmounted(at))
        })
        .unwrap();
        assert_eq!(mounted_on.as_deref(), Some(at.as_path()));
        assert_eq!(r.calls(), vec![line]);
        assert!(!at.exists());
        // ext4 grows on the device, checked first only when unmounted.
        let r = ScriptedRunner::new().expect("resize2fs /p/c.img", "");
        grow(&r, FsType::Ext4, Path::new("/p/c.img"), true, &at, |_| {
            unreachable!("ext4 grows without a mount")
        })
        .unwrap();
        assert_eq!(r.calls().len(), 1);
    }

    #[test]
    fn ext4_grow_runs_fsck_then_resize2fs() {
        use berth_bdev::cmd::ScriptedRunner;
        let r = ScriptedRunner::new()
            .fail("e2fsck -f -p /p/c.img", "fixed something")
            .expect("resize2fs /p/c.img", "");
        // The scripted failure reports exit status 1: corrected, so resize goes on.
        grow_ext4(&r, Path::new("/p/c.img"), true).unwrap();
        assert_eq!(r.calls().len(), 2);
    }
}
