use std::fs;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{makedev, mknodat, FileType, Mode, Timespec, Timestamps, CWD};

use super::*;
use crate::images::digest::rootfs_digest;
use crate::images::testutil::{is_root_or_skip, scratch};
use crate::images::tree::changes;
use crate::images::{apply_layer, ApplyOpts};

fn set_time(p: &Path, secs: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Gives every entry below `dir` one fixed time, so trees built at
/// different moments compare equal.
fn pin_times(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            pin_times(&p);
        }
        set_time(&p, 1_500_000_000, 0);
    }
}

/// A tree with one of each kind the format keeps.
fn build(root: &Path) {
    fs::create_dir_all(root.join("etc/sub")).unwrap();
    fs::write(root.join("etc/hostname"), b"box\n").unwrap();
    fs::write(root.join("etc/sub/a"), b"a").unwrap();
    fs::write(root.join("bin"), vec![7u8; 10_000]).unwrap();
    fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("bin"), root.join("etc/bin-link")).unwrap();
    symlink("etc/hostname", root.join("name")).unwrap();
    let f = fs::File::create(root.join("sparse")).unwrap();
    f.set_len(32 << 20).unwrap();
    f.write_all_at(b"middle", 16 << 20).unwrap();
    rustix::fs::setxattr(
        root.join("etc/hostname"),
        "user.note",
        b"x\0y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    mknodat(
        CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    mknodat(
        CWD,
        root.join("sock"),
        FileType::Socket,
        Mode::from_raw_mode(0o755),
        0,
    )
    .unwrap();
    mknodat(
        CWD,
        root.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(1, 3),
    )
    .unwrap();
    fs::create_dir(root.join("lost+found")).unwrap();
    pin_times(root);
    for (i, p) in ["etc/sub/a", "etc/sub", "name", "fifo", "etc", ""]
        .iter()
        .enumerate()
    {
        set_time(&root.join(p), 1_600_000_000 + i as i64, 123_456_789);
    }
}

fn apply(layer: &[u8], target: &Path) {
    apply_layer(
        layer,
        target,
        &ApplyOpts {
            allow_devices: true,
        },
    )
    .unwrap();
}

#[test]
fn a_tree_round_trips_with_times_holes_and_sockets() {
    if !is_root_or_skip("mknod and chown need root") {
        return;
    }
    let d = scratch("pack");
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    build(&a);
    fs::create_dir(&b).unwrap();
    let tar = pack_tree(&Tree::walk(&a).unwrap(), Vec::new()).unwrap();
    // Holes take no room in the archive.
    assert!(tar.len() < 1 << 20, "{} bytes", tar.len());
    apply(&tar, &b);
    assert_eq!(rootfs_digest(&a).unwrap(), rootfs_digest(&b).unwrap());
    assert!(
        !b.join("lost+found").exists(),
        "the filesystem's own entries stay out"
    );
    for p in ["etc/sub/a", "etc", "name", "fifo", ""] {
        let (x, y) = (
            fs::symlink_metadata(a.join(p)).unwrap(),
            fs::symlink_metadata(b.join(p)).unwrap(),
        );
        assert_eq!(
            (x.mtime(), x.mtime_nsec()),
            (y.mtime(), y.mtime_nsec()),
            "{p}"
        );
    }
    let sock = fs::symlink_metadata(b.join("sock")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&sock.file_type()));
    let sparse = fs::metadata(b.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 32 << 20);
    assert!(sparse.blocks() * 512 < 1 << 20, "holes were filled");
}

#[test]
fn changes_reapply_exactly_and_are_small() {
    if !is_root_or_skip("mknod and chown need root") {
        return;
    }
    let d = scratch("diff");
    let (base, new, target) = (
        d.path().join("base"),
        d.path().join("new"),
        d.path().join("target"),
    );
    build(&base);
    build(&new);
    build(&target);
    for p in ["", "etc"] {
        // Same starting times on both sides (build ran at different moments).
        set_time(&new.join(p), 1_600_000_005, 1);
        set_time(&base.join(p), 1_600_000_005, 1);
        set_time(&target.join(p), 1_600_000_005, 1);
    }
    assert_eq!(
        rootfs_digest(&base).unwrap(),
        rootfs_digest(&target).unwrap()
    );
    // Change, add, remove, retype, relink, and a change that keeps the mtime.
    fs::write(new.join("etc/new"), b"new").unwrap();
    fs::remove_dir_all(new.join("etc/sub")).unwrap();
    fs::remove_file(new.join("fifo")).unwrap();
    fs::create_dir(new.join("fifo")).unwrap();
    fs::hard_link(new.join("bin"), new.join("bin3")).unwrap();
    let old = fs::metadata(new.join("etc/hostname")).unwrap();
    fs::write(new.join("etc/hostname"), b"BOX\n").unwrap();
    set_time(&new.join("etc/hostname"), old.mtime(), old.mtime_nsec());

    let ch = changes(&Tree::walk(&base).unwrap(), &Tree::walk(&new).unwrap()).unwrap();
    let layer = pack_changes(&Tree::walk(&new).unwrap(), &ch, Vec::new()).unwrap();
    let full = pack_tree(&Tree::walk(&new).unwrap(), Vec::new()).unwrap();
    assert!(
        layer.len() * 3 < full.len(),
        "{} vs {}",
        layer.len(),
        full.len()
    );
    apply(&layer, &target);
    assert_eq!(
        rootfs_digest(&new).unwrap(),
        rootfs_digest(&target).unwrap()
    );
    let m = |p: &Path| {
        let md = fs::symlink_metadata(p).unwrap();
        (md.mtime(), md.mtime_nsec())
    };
    for p in ["", "etc", "fifo"] {
        assert_eq!(m(&new.join(p)), m(&target.join(p)), "mtime of {p:?}");
    }
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&target.join("bin3")), ino(&target.join("bin")));
    assert_eq!(ino(&target.join("etc/bin-link")), ino(&target.join("bin")));
}

#[test]
fn whiteout_names_in_a_tree_are_refused() {
    let d = scratch("wh");
    fs::write(d.path().join(".wh.x"), b"").unwrap();
    let e = Tree::walk(d.path()).err().unwrap().to_string();
    assert!(e.contains(".wh."), "{e}");
}
