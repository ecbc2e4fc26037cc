//! The LXC side of `berth adopt`: reading the container (its config, whether
//! LXC runs it, where its rootfs is and in which form), the host facts that
//! decide whether a pool can take the rootfs without copying (same mount,
//! same btrfs filesystem, same zpool), and the rootfs files adopt writes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_bdev::cmd::{self, Runner};
use berth_bdev::{mount, VolumeSpec};
use tracing::warn;

use super::adopt::DISABLED_CONFIG;
use super::adopt_config::{AdoptError, LxcConfig, LxcRootfs};
use super::adopt_map::{self, Mapped};
use crate::error::{BerthError, Result};

/// The LXC container, read and checked.
pub(super) struct Lxc {
    /// `LXCPATH/NAME`, canonical.
    pub dir: PathBuf,
    pub lxcpath: PathBuf,
    pub name: String,
    pub rootfs_value: String,
    pub mapped: Mapped,
}

/// Where the rootfs is, in the forms berth can take.
pub(super) enum Source {
    Dir(PathBuf),
    Btrfs(PathBuf),
    Zfs(String),
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Dir(_) => berth_backends::dir::NAME,
            Source::Btrfs(_) => berth_backends::btrfs::NAME,
            Source::Zfs(_) => berth_backends::zfs::NAME,
        }
    }

    pub fn spec(&self) -> Result<VolumeSpec> {
        let field = match self {
            Source::Dir(p) | Source::Btrfs(p) => path_str(p)?.to_owned(),
            Source::Zfs(d) => d.clone(),
        };
        Ok(VolumeSpec::new(self.kind(), vec![field]))
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::Dir(p) | Source::Btrfs(p) => Some(p),
            Source::Zfs(_) => None,
        }
    }
}

pub(super) fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| BerthError::Invalid(format!("{p:?} is not valid UTF-8; rename it first")))
}

/// Reads `LXCPATH/NAME/config` (or the config file itself), mapped for
/// the berth container `wanted` (default: the LXC name); returns that name.
pub(super) fn read_lxc(arg: &Path, wanted: Option<&str>) -> Result<(Lxc, String)> {
    let arg = match arg.file_name() {
        Some(n) if n == "config" && arg.is_file() => arg.parent().unwrap_or(arg),
        _ => arg,
    };
    let no_config = || AdoptError::NoConfig {
        path: arg.join("config"),
    };
    let dir = fs::canonicalize(arg).map_err(|_| no_config())?;
    let config = dir.join("config");
    let text = match fs::read_to_string(&config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(DISABLED_CONFIG).exists() {
                return Err(BerthError::Invalid(format!(
                    "{} was adopted by berth already (its config is {DISABLED_CONFIG})",
                    dir.display()
                )));
            }
            return Err(no_config().into());
        }
        Err(e) => return Err(BerthError::io("read", &config)(e)),
    };
    if dir.join(DISABLED_CONFIG).exists() {
        return Err(BerthError::Invalid(format!(
            "{} holds both config and {DISABLED_CONFIG}; remove the one that is stale first",
            dir.display()
        )));
    }
    let cfg = LxcConfig::parse(&config, &text)?;
    let rootfs_value = cfg
        .get(&["lxc.rootfs.path", "lxc.rootfs"])
        .unwrap_or_default()
        .to_owned();
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(no_config)?
        .to_owned();
    let lxcpath = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    let berth_name = wanted.unwrap_or(&name).to_owned();
    let mapped = adopt_map::map(&cfg, &berth_name)?;
    let lxc = Lxc {
        dir,
        lxcpath,
        name,
        rootfs_value,
        mapped,
    };
    Ok((lxc, berth_name))
}

/// The rootfs in a form berth takes; a bare path is btrfs when it is a
/// subvolume, as LXC reads it.
pub(super) fn source_of(r: &LxcRootfs) -> Result<Source> {
    Ok(match r {
        LxcRootfs::Dir(p) => Source::Dir(p.clone()),
        LxcRootfs::Bare(p) if is_subvolume(p) => Source::Btrfs(p.clone()),
        LxcRootfs::Bare(p) => Source::Dir(p.clone()),
        LxcRootfs::Btrfs(p) => Source::Btrfs(p.clone()),
        LxcRootfs::Zfs(d) => Source::Zfs(d.clone()),
        other => {
            return Err(AdoptError::Unsupported {
                kind: other.kind().to_owned(),
                hint: "copy it to a dir container with LXC first \
                       (lxc-copy -P LXCPATH -n NAME -N NEWNAME -B dir), then adopt that"
                    .to_owned(),
            }
            .into())
        }
    })
}

/// The rootfs directory exists, and nothing is mounted in it (nor on it, for
/// a rename).
pub(super) fn check_source(s: &Source, copy: bool) -> Result<()> {
    let Some(p) = s.path() else { return Ok(()) };
    let md = fs::symlink_metadata(p).map_err(|e| AdoptError::Rootfs {
        value: p.display().to_string(),
        reason: format!("cannot be read ({e})"),
    })?;
    if !md.is_dir() {
        return Err(AdoptError::Rootfs {
            value: p.display().to_string(),
            reason: "is not a directory".to_owned(),
        }
        .into());
    }
    let canon = fs::canonicalize(p).map_err(BerthError::io("resolve", p))?;
    let moving = !copy && matches!(s, Source::Dir(_));
    if let Some(m) = mount::mounts_under(p)
        .into_iter()
        .find(|m| moving || *m != canon)
    {
        return Err(BerthError::Invalid(format!(
            "{} is mounted inside the rootfs (a crashed LXC start?); unmount it first",
            m.display()
        )));
    }
    Ok(())
}

/// Refuses a container LXC runs: its command socket is listening (LXC 5
/// names it `@LXCPATH/NAME/command`), or `lxc-info` says it is not stopped.
pub(super) fn refuse_running(runner: &dyn Runner, lxc: &Lxc) -> Result<()> {
    let running = |state: &str| AdoptError::Running {
        name: lxc.name.clone(),
        state: state.to_owned(),
        lxcpath: lxc.lxcpath.clone(),
    };
    let unix = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    if command_socket_listed(&unix, &lxc.lxcpath, &lxc.name) {
        return Err(running("RUNNING").into());
    }
    if !cmd::have_program("lxc-info") {
        return Ok(());
    }
    let lxcpath = path_str(&lxc.lxcpath)?;
    let args = ["-P", lxcpath, "-n", &lxc.name, "-s", "-H"];
    match cmd::run(runner, "lxc-info", &args) {
        Ok(out) => match out.stdout.trim() {
            "" | "STOPPED" => Ok(()),
            state => Err(running(state).into()),
        },
        // The socket check above stands; lxc-info may just dislike the config.
        Err(e) => {
            warn!(error = %e, "lxc-info could not tell the container's state");
            Ok(())
        }
    }
}

pub(super) fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(BerthError::io("rename", from))?;
    sync_parents(from, to)
}

/// Makes renames between the parents of `a` and `b` durable.
pub(super) fn sync_parents(a: &Path, b: &Path) -> Result<()> {
    for dir in [a.parent(), b.parent()].into_iter().flatten() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(BerthError::io("sync directory", dir))?;
    }
    Ok(())
}

/// Whether LXC's command socket of `name` is listed in /proc/net/unix text.
fn command_socket_listed(unix: &str, lxcpath: &Path, name: &str) -> bool {
    let want = format!("@{}/{name}/command", lxcpath.display());
    unix.lines()
        .any(|l| l.split_whitespace().last() == Some(want.as_str()))
}

/// The zpool a dataset is in.
pub(super) fn zpool(dataset: &str) -> &str {
    dataset.split('/').next().unwrap_or(dataset)
}

/// The nearest existing ancestor of `p` (itself if it exists), resolved.
fn existing(p: &Path) -> PathBuf {
    p.ancestors()
        .find_map(|a| fs::canonicalize(a).ok())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The innermost mount holding `p`.
fn mount_of(p: &Path) -> Option<mount::MountInfo> {
    let p = existing(p);
    mount::mounts()
        .into_iter()
        .filter(|m| p.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
}

/// Whether a rename from `tree`'s directory into pool directory `pool` can
/// work: one mount, and one btrfs subvolume (device) on it.
pub(super) fn same_mount(pool: &Path, tree: &Path) -> bool {
    let parent = tree.parent().unwrap_or(tree);
    let dev = |p: &Path| fs::metadata(existing(p)).ok().map(|m| m.dev());
    mount_of(pool).map(|m| m.mount_point) == mount_of(parent).map(|m| m.mount_point)
        && dev(pool).is_some()
        && dev(pool) == dev(parent)
}

/// Whether `a` and `b` are on one btrfs filesystem (subvolumes have devices
/// of their own; the mount's source names the filesystem).
pub(super) fn same_btrfs(a: &Path, b: &Path) -> bool {
    match (mount_of(a), mount_of(b)) {
        (Some(x), Some(y)) => x.fstype == "btrfs" && x.fstype == y.fstype && x.source == y.source,
        _ => false,
    }
}

/// A btrfs subvolume's root directory has inode 256.
fn is_subvolume(p: &Path) -> bool {
    mount_of(p).is_some_and(|m| m.fstype == "btrfs")
        && fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.ino() == 256)
}

/// Files in a rootfs's /etc, resolved inside the rootfs (`openat2`
/// `RESOLVE_IN_ROOT`) and replaced by rename, so a symlink in the tree never
/// leads a write onto the host.
pub(super) mod etc_file {
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::Path;

    use rustix::fs::{openat, openat2, renameat, unlinkat, AtFlags, Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;

    use crate::error::{BerthError, Result};

    fn etc(rootfs: &Path) -> std::result::Result<Option<OwnedFd>, Errno> {
        let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(rootfs, dir, Mode::empty())?;
        match openat2(&root, "etc", dir, Mode::empty(), in_root()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn in_root() -> ResolveFlags {
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
    }

    fn read(etc: &OwnedFd, name: &str) -> std::result::Result<Option<String>, Errno> {
        // Non-blocking: a FIFO planted there must not hang the adopt.
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match openat2(etc, name, flags, Mode::empty(), in_root()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut text)
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        Ok(Some(text))
    }

    fn write(etc: &OwnedFd, name: &str, text: &str) -> std::result::Result<(), Errno> {
        let tmp = format!(".{name}.berth-new");
        // Left by an interrupted run, if at all.
        let _ = unlinkat(etc, &tmp, AtFlags::empty());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW;
        let fd = openat(
            etc,
            &tmp,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let mut f = std::fs::File::from(fd);
        let done = f
            .write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
            .and_then(|()| renameat(etc.as_fd(), &tmp, etc.as_fd(), name));
        if done.is_err() {
            let _ = unlinkat(etc, &tmp, AtFlags::empty());
        }
        done
    }

    fn fail(rootfs: &Path) -> impl Fn(Errno) -> BerthError + '_ {
        move |e| BerthError::io("write", rootfs.join("etc"))(e.into())
    }

    /// Sets `/etc/NAME` to `text` unless it says that already (or the rootfs
    /// has no /etc): `Some(previous contents)` when it wrote.
    pub fn replace(rootfs: &Path, name: &str, text: &str) -> Result<Option<Option<String>>> {
        let Some(etc) = etc(rootfs).map_err(fail(rootfs))? else {
            return Ok(None);
        };
        let old = read(&etc, name).map_err(fail(rootfs))?;
        if old.as_deref().map(str::trim) == Some(text.trim()) {
            return Ok(None);
        }
        write(&etc, name, text).map_err(fail(rootfs))?;
        Ok(Some(old))
    }

    /// Puts `/etc/NAME` back as it was before `replace`.
    pub fn restore(rootfs: &Path, name: &str, old: Option<&str>) -> Result<()> {
        let Some(etc) = etc(rootfs).map_err(fail(rootfs))? else {
            return Ok(());
        };
        match old {
            Some(text) => write(&etc, name, text),
            None => unlinkat(&etc, name, AtFlags::empty()),
        }
        .map_err(fail(rootfs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_socket_is_found_by_its_full_name() {
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000076f53e28: 00000002 00000000 00010000 0001 01 4928009 @/var/lib/lxc/c1/command\n\
            0000000076f53e29: 00000002 00000000 00010000 0001 01 4928010 @/var/lib/lxc/c10/command\n";
        let at = Path::new("/var/lib/lxc");
        assert!(command_socket_listed(unix, at, "c1"));
        assert!(command_socket_listed(unix, at, "c10"));
        assert!(!command_socket_listed(unix, at, "c"));
        assert!(!command_socket_listed(unix, Path::new("/srv/lxc"), "c1"));
    }

    #[test]
    fn zpools_are_the_first_component() {
        assert_eq!(zpool("tank/lxc/c1"), "tank");
        assert_eq!(zpool("tank"), "tank");
    }

    #[test]
    fn hostname_is_replaced_inside_the_rootfs_and_restored() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // No /etc: nothing to do.
        assert_eq!(etc_file::replace(root, "hostname", "h\n").unwrap(), None);
        fs::create_dir(root.join("etc")).unwrap();
        assert_eq!(
            etc_file::replace(root, "hostname", "web1\n").unwrap(),
            Some(None)
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "web1\n"
        );
        assert_eq!(etc_file::replace(root, "hostname", "web1\n").unwrap(), None);
        etc_file::restore(root, "hostname", None).unwrap();
        assert!(!root.join("etc/hostname").exists());
        // A symlink planted in the tree is replaced, never followed.
        let outside = d.path().join("outside");
        fs::write(&outside, "host\n").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/hostname")).unwrap();
        let old = etc_file::replace(root, "hostname", "web2\n").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "host\n");
        assert_eq!(
            old,
            Some(None),
            "an absolute link resolves inside the rootfs"
        );
        etc_file::restore(root, "hostname", Some("before\n")).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "before\n"
        );
    }

    #[test]
    fn unsupported_kinds_say_how_to_get_there() {
        let e = source_of(&LxcRootfs::Loop("/l/c/rootdev".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("LXC loop container") && e.contains("lxc-copy"),
            "{e}"
        );
        let ok = source_of(&LxcRootfs::Bare("/no/such/dir".into())).unwrap();
        assert_eq!(ok.kind(), "dir");
    }
}
