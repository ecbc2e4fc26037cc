//! `/etc/hosts` and `/etc/resolv.conf` of a bridged container, written into
//! its rootfs at each start. Paths resolve inside the rootfs (`openat2`
//! `RESOLVE_IN_ROOT`) and files are replaced by rename, so a symlink the
//! container planted never leads a write onto the host.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{openat, openat2, renameat, unlinkat, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{BerthError, Result};

const BEGIN: &str = "# berth: begin (rewritten at each start)";
const END: &str = "# berth: end";
const LOCALHOST: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Writes the container's `/etc/hosts` (its own lines kept, berth's block
/// replaced) and `/etc/resolv.conf` (the host's resolvers that are not
/// loopback addresses). A rootfs without `/etc` is left alone.
pub fn write_etc(rootfs: &Path, hostname: &str, address: Ipv4Addr) -> Result<()> {
    let fail = |what: &'static str| {
        move |e: Errno| BerthError::io(what, rootfs.join("etc"))(std::io::Error::from(e))
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open the rootfs"))?;
    let etc = match openat2(
        &root,
        "etc",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(()),
        Err(e) => return Err(fail("open")(e)),
    };
    let old = read_in(&etc, "hosts").map_err(fail("read hosts in"))?;
    replace_in(&etc, "hosts", hosts(&old, hostname, address).as_bytes())
        .map_err(fail("write hosts in"))?;
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut resolv = resolv_conf(&host);
    if !resolv.contains("nameserver") {
        // systemd-resolved's stub is a loopback address; its upstreams are here.
        let upstream =
            std::fs::read_to_string("/run/systemd/resolve/resolv.conf").unwrap_or_default();
        resolv = resolv_conf(&upstream);
    }
    replace_in(&etc, "resolv.conf", resolv.as_bytes()).map_err(fail("write resolv.conf in"))
}

fn read_in(dir: &OwnedFd, name: &str) -> std::result::Result<String, Errno> {
    let fd = match openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    Ok(text)
}

/// Replaces `dir/name` (whatever it was, a symlink included) by a new file.
fn replace_in(dir: &OwnedFd, name: &str, contents: &[u8]) -> std::result::Result<(), Errno> {
    let tmp = format!(".{name}.berth-new");
    let fd = openat(
        dir,
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    let written = std::io::Write::write_all(&mut std::fs::File::from(fd), contents)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
        .and_then(|()| renameat(dir.as_fd(), &tmp, dir.as_fd(), name));
    if written.is_err() {
        let _ = unlinkat(dir, &tmp, AtFlags::empty());
    }
    written
}

/// `old` without berth's block, then the block naming this container.
fn hosts(old: &str, hostname: &str, address: Ipv4Addr) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in old.lines() {
        match line {
            BEGIN => inside = true,
            END => inside = false,
            _ if !inside => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    if !out.contains("localhost") {
        out.insert_str(0, LOCALHOST);
    }
    out.push_str(&format!("{BEGIN}\n{address}\t{hostname}\n{END}\n"));
    out
}

/// The host's `resolv.conf` without loopback resolvers, which a container's
/// own network namespace cannot reach.
fn resolv_conf(host: &str) -> String {
    let mut out = String::from("# written by berth from the host's resolv.conf\n");
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(addr)) => {
                let loopback = addr
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
                if !loopback {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            (Some("search" | "domain" | "options"), Some(_)) => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_keep_their_lines_and_get_one_berth_block() {
        let ip = Ipv4Addr::new(10, 88, 0, 2);
        let first = hosts("", "web", ip);
        assert!(first.starts_with("127.0.0.1\tlocalhost"), "{first}");
        assert!(first.contains("10.88.0.2\tweb\n"), "{first}");
        let mine = format!("{first}192.168.1.9\tprinter\n");
        let again = hosts(&mine, "web", Ipv4Addr::new(10, 88, 0, 3));
        assert_eq!(again.matches(BEGIN).count(), 1, "{again}");
        assert!(!again.contains("10.88.0.2"), "{again}");
        assert!(again.contains("printer"), "{again}");
    }

    #[test]
    fn loopback_resolvers_are_left_out() {
        let host = "nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch example.org\n#x\n";
        let r = resolv_conf(host);
        assert!(!r.contains("127.0.0.53"), "{r}");
        assert!(r.contains("nameserver 192.0.2.1\n"), "{r}");
        assert!(r.contains("search example.org\n"), "{r}");
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "host file\n").unwrap();
        let rootfs = t.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("etc/hosts")).unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("etc/resolv.conf")).unwrap();
        write_etc(&rootfs, "web", Ipv4Addr::new(10, 88, 0, 2)).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "host file\n");
        let h = std::fs::read_to_string(rootfs.join("etc/hosts")).unwrap();
        assert!(h.contains("10.88.0.2\tweb"), "{h}");
        assert!(!rootfs.join("etc/hosts").is_symlink());
        // No /etc: nothing to write, no error.
        let bare = t.path().join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        write_etc(&bare, "web", Ipv4Addr::new(10, 88, 0, 2)).unwrap();
    }
}
