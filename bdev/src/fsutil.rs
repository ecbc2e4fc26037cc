//! Small filesystem helpers shared by backends and the store.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub use crate::atomic_file::AtomicFile;
use crate::error::{BdevError, Result};
use crate::revert::Revert;

/// Writes `data` to `path` atomically through an [`AtomicFile`]: fsync,
/// rename, fsync the directory. Readers see the old content or the new, never
/// a torn file, and a writer killed half-way leaves nothing.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    write_replacing(path, data, true)
}

/// Like [`atomic_write`] but without the fsyncs, for state that a reboot makes
/// meaningless anyway (what runs now): readers still see the old contents or
/// the new, never a mix.
pub fn replace_file(path: &Path, data: &[u8]) -> Result<()> {
    write_replacing(path, data, false)
}

fn write_replacing(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data).map_err(BdevError::io("write", path))?;
    f.commit(durable)
}

/// Creates `path` and its parents.
pub fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(BdevError::io("create directory", path))
}

/// Claims `path` (inside the pool at `root`) as a new directory, failing with
/// `Exists` if anything is there, and registers its removal in `rv`.
pub fn claim_dir(path: &Path, root: &Path, rv: &mut Revert) -> Result<()> {
    claim(path, root, rv, "create directory", |p| fs::create_dir(p))
}

/// Like `claim_dir`, for a new empty file (an image), returned open for writing.
pub fn claim_file(path: &Path, root: &Path, rv: &mut Revert) -> Result<File> {
    claim(path, root, rv, "create file", |p| {
        OpenOptions::new().write(true).create_new(true).open(p)
    })
}

fn claim<T>(
    path: &Path,
    root: &Path,
    rv: &mut Revert,
    op: &'static str,
    make: impl FnOnce(&Path) -> std::io::Result<T>,
) -> Result<T> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    let made = make(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => BdevError::Exists {
            what: "volume",
            name: path.display().to_string(),
        },
        _ => BdevError::io(op, path)(e),
    })?;
    let (p, r) = (path.to_path_buf(), root.to_path_buf());
    rv.add(format!("remove {}", path.display()), move || {
        crate::delete::remove_tree(&p, &r)
    });
    Ok(made)
}

/// Whether the kernel lists `fstype` in /proc/filesystems.
pub fn kernel_has_fs(fstype: &str) -> bool {
    fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some(fstype))
        })
        .unwrap_or(false)
}

/// Fails with `Unavailable` unless the kernel has `fstype`.
pub fn require_kernel_fs(backend: &'static str, fstype: &str) -> Result<()> {
    if kernel_has_fs(fstype) {
        return Ok(());
    }
    Err(BdevError::Unavailable {
        backend,
        missing: format!("the kernel has no {fstype} filesystem (not in /proc/filesystems)"),
        hint: format!("load it with `modprobe {fstype}` or pick another backend"),
    })
}

/// Fails with `Unavailable` unless `prog` is installed; `package` is the Debian
/// package that provides it.
pub fn require_tool(backend: &'static str, prog: &str, package: &str) -> Result<()> {
    if crate::cmd::have_program(prog) {
        return Ok(());
    }
    Err(BdevError::Unavailable {
        backend,
        missing: format!("{prog} is not installed"),
        hint: format!("install it with `apt-get install {package}`"),
    })
}

/// Fails with `Unavailable` naming the first kernel filesystem or host program in
/// `caps` that this host lacks: the one check of what a backend declares it needs,
/// so the declaration and the probe cannot drift apart.
pub fn require_host(backend: &'static str, caps: &crate::backend::Caps) -> Result<()> {
    for fs in caps.kernel_fs {
        require_kernel_fs(backend, fs)?;
    }
    for t in caps.tools {
        require_tool(backend, t.prog, t.package)?;
    }
    Ok(())
}

/// Whether files in `dir` can be reflinked (FICLONE), found by trying it on
/// two unnamed (`O_TMPFILE`) files, so that a berth killed meanwhile leaves
/// nothing; named ones where the filesystem has no `O_TMPFILE`.
pub fn reflink_supported(dir: &Path) -> bool {
    let unnamed = || {
        rustix::fs::open(
            dir,
            rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .map(File::from)
    };
    let (a, b) = (
        dir.join(format!(".berth-reflink-probe-a.{}", std::process::id())),
        dir.join(format!(".berth-reflink-probe-b.{}", std::process::id())),
    );
    let named = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
    };
    let ok = (|| -> std::io::Result<bool> {
        // FICLONE needs a source open for reading.
        let (mut src, dst) = match (unnamed(), unnamed()) {
            (Ok(src), Ok(dst)) => (src, dst),
            _ => (named(&a)?, named(&b)?),
        };
        src.write_all(&[0u8; 4096])?;
        src.sync_all()?;
        Ok(rustix::fs::ioctl_ficlone(dst.as_fd(), src.as_fd()).is_ok())
    })()
    .unwrap_or(false);
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    ok
}

/// Space allocated to `path`'s blocks (st_blocks * 512), summed over a tree without
/// following symlinks or crossing into other filesystems; hardlinks count once.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let root = fs::symlink_metadata(path).map_err(BdevError::io("stat", path))?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(BdevError::Io {
                    op: "stat",
                    path: p,
                    source: e,
                })
            }
        };
        if md.dev() != dev {
            continue;
        }
        if md.nlink() > 1 && !md.is_dir() && !seen.insert(md.ino()) {
            continue;
        }
        total += md.blocks() * 512;
        if md.is_dir() {
            let rd = fs::read_dir(&p).map_err(BdevError::io("read directory", &p))?;
            for e in rd.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.toml");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn reflink_probe_answers_no_on_ext4() {
        // /var/tmp is ext4 here, which cannot reflink; a btrfs "yes" is checked by
        // the privileged loop tests.
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        assert!(!reflink_supported(d.path()));
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            0,
            "probe files left"
        );
    }

    #[test]
    fn proc_filesystems_lookup() {
        assert!(kernel_has_fs("proc"));
        assert!(!kernel_has_fs("no-such-fs"));
        let e = require_kernel_fs("x", "no-such-fs")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-fs"), "{e}");
    }
}
