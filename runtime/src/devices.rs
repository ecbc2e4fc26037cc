//! The minimal /dev every container gets: a tmpfs with the usual character
//! devices, a private devpts instance, /dev/shm and the fd symlinks.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::step::Step;

/// (name, major, minor) of the character devices created in /dev.
pub const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// (link name, target) of the symlinks in /dev.
const SYMLINKS: [(&str, &str); 5] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Steps that build `dev` (the rootfs's /dev, still seen from the host side).
pub(crate) fn dev_steps(dev: &Path) -> Vec<Step<'static>> {
    let mut steps = vec![
        Step::EnsureDir {
            path: dev.to_path_buf(),
            mode: 0o755,
        },
        Step::Mount {
            what: "/dev tmpfs",
            src: Some(PathBuf::from("tmpfs")),
            target: dev.to_path_buf(),
            fstype: Some("tmpfs"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            data: Some("mode=755,size=65536k"),
        },
    ];
    for (name, major, minor) in DEVICES {
        steps.push(Step::Device {
            path: dev.join(name),
            host: Path::new("/dev").join(name),
            major,
            minor,
        });
    }
    steps.push(Step::EnsureDir {
        path: dev.join("pts"),
        mode: 0o755,
    });
    steps.push(Step::Mount {
        what: "devpts",
        src: Some(PathBuf::from("devpts")),
        target: dev.join("pts"),
        fstype: Some("devpts"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // A new instance so the container's ptys are its own; gid 5 is "tty".
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    });
    steps.push(Step::EnsureDir {
        path: dev.join("shm"),
        mode: 0o1777,
    });
    steps.push(Step::Mount {
        what: "/dev/shm tmpfs",
        src: Some(PathBuf::from("shm")),
        target: dev.join("shm"),
        fstype: Some("tmpfs"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: Some("mode=1777,size=65536k"),
    });
    for (name, target) in SYMLINKS {
        steps.push(Step::Symlink {
            target: PathBuf::from(target),
            link: dev.join(name),
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, FakeSys};

    #[test]
    fn dev_is_a_tmpfs_with_nodes_pts_shm_and_links() {
        let fake = FakeSys::new();
        for step in dev_steps(Path::new("/r/dev")) {
            step.run(&fake).unwrap();
        }
        let calls = fake.calls();
        assert!(
            matches!(&calls[1], Call::Mount { fstype: Some(t), target, data: Some(d), .. }
            if t == "tmpfs" && target == Path::new("/r/dev") && d.starts_with("mode=755"))
        );
        let nodes: Vec<_> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mknod {
                    path,
                    mode: 0o666,
                    major,
                    minor,
                } => Some((path.clone(), *major, *minor)),
                _ => None,
            })
            .collect();
        assert_eq!(nodes.len(), 6);
        assert_eq!(nodes[0], (PathBuf::from("/r/dev/null"), 1, 3));
        assert_eq!(nodes[5], (PathBuf::from("/r/dev/tty"), 5, 0));
        assert!(calls.iter().any(
            |c| matches!(c, Call::Mount { fstype: Some(t), data: Some(d), .. }
            if t == "devpts" && d.contains("newinstance") && d.contains("ptmxmode=0666"))
        ));
        assert!(calls.contains(&Call::Symlink {
            target: "pts/ptmx".into(),
            link: "/r/dev/ptmx".into()
        }));
        assert!(calls.contains(&Call::Symlink {
            target: "/proc/self/fd".into(),
            link: "/r/dev/fd".into()
        }));
        assert!(calls.contains(&Call::EnsureDir {
            path: "/r/dev/shm".into(),
            mode: 0o1777
        }));
    }
}
