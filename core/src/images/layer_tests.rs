//! apply_layer on the real kernel (as root: owners, devices, trusted xattrs),
//! in scratch directories under /var/tmp. Hostile layers are applied to
//! `base/rootfs` next to `base/outside`; nothing but `rootfs` may change.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;
use crate::images::digest::tree_digest;
use crate::images::testutil::{gzip, is_root_or_skip, listing, scratch, sha256, zstd, Tar};

const PRIVILEGED: ApplyOpts = ApplyOpts {
    allow_devices: true,
};
const UNPRIVILEGED: ApplyOpts = ApplyOpts {
    allow_devices: false,
};

/// A target `base/rootfs` and a neighbour `base/outside` holding one file.
struct Sandbox {
    base: tempfile::TempDir,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let base = scratch(name);
        fs::create_dir(base.path().join("rootfs")).expect("rootfs");
        fs::create_dir(base.path().join("outside")).expect("outside");
        fs::write(base.path().join("outside/secret"), b"keep").expect("secret");
        Sandbox { base }
    }

    fn rootfs(&self) -> std::path::PathBuf {
        self.base.path().join("rootfs")
    }

    fn outside(&self) -> std::path::PathBuf {
        self.base.path().join("outside")
    }

    fn apply(&self, layer: &[u8], opts: &ApplyOpts) -> Result<()> {
        apply_layer(layer, &self.rootfs(), opts).map(drop)
    }

    /// Everything in the base except the rootfs is as it was made.
    fn assert_outside_untouched(&self) {
        let all = listing(self.base.path());
        let others: Vec<&String> = all.iter().filter(|l| !l.starts_with("rootfs")).collect();
        assert_eq!(others.len(), 2, "{all:#?}");
        assert!(others[0].starts_with("outside d 755"), "{all:#?}");
        assert!(
            others[1].starts_with("outside/secret f 644 0:0 keep"),
            "{all:#?}"
        );
    }
}

fn entry_error(result: Result<()>) -> String {
    match result {
        Err(e @ (ImageError::Entry { .. } | ImageError::DeviceRefused { .. })) => e.to_string(),
        other => panic!("expected an entry error, got {other:?}"),
    }
}

#[test]
fn plain_gzip_and_zstd_layers_give_the_same_tree() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let tar = Tar::new()
        .dir("etc", 0o755)
        .file("etc/motd", 0o644, b"hello\n")
        .file_owned("home/user/.profile", 0o600, 1000, b"PS1=$\n")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .finish();
    let mut digests = Vec::new();
    for bytes in [tar.clone(), gzip(&tar), zstd(&tar)] {
        let sb = Sandbox::new("formats");
        let diff_id = apply_layer(&bytes[..], &sb.rootfs(), &UNPRIVILEGED).expect("apply");
        assert_eq!(
            diff_id,
            sha256(&tar),
            "the diff_id is of the uncompressed tar"
        );
        digests.push(tree_digest(&sb.rootfs()).expect("digest"));
        assert_eq!(
            listing(&sb.rootfs()),
            [
                "etc d 755 0:0",
                "etc/localtime l 777 0:0 -> /usr/share/zoneinfo/UTC",
                "etc/motd f 644 0:0 hello",
                // Parents a layer leaves out are made 0755, root-owned.
                "home d 755 0:0",
                "home/user d 755 0:0",
                "home/user/.profile f 600 1000:1000 PS1=$",
            ]
        );
        let motd = fs::metadata(sb.rootfs().join("etc/motd")).expect("stat");
        assert_eq!(motd.mtime(), 1_700_000_000);
        let etc = fs::metadata(sb.rootfs().join("etc")).expect("stat");
        assert_eq!(etc.mtime(), 1_700_000_000, "directory mtimes are set last");
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

#[test]
fn xattrs_from_pax_records_are_set() {
    if !is_root_or_skip("trusted xattrs need root") {
        return;
    }
    let sb = Sandbox::new("xattrs");
    let layer = Tar::new()
        .file_with_xattr(
            "bin/ping",
            "security.capability",
            b"\x01\x00\x00\x02 \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            b"ELF",
        )
        .file_with_xattr("etc/conf", "user.origin", b"layer", b"x")
        .finish();
    sb.apply(&layer, &UNPRIVILEGED).expect("apply");
    let read =
        |path: &str| crate::images::digest::read_xattrs(&sb.rootfs().join(path)).expect("xattrs");
    assert_eq!(
        read("etc/conf"),
        [(b"user.origin".to_vec(), b"layer".to_vec())]
    );
    assert_eq!(read("bin/ping").len(), 1);
    assert_eq!(read("bin/ping")[0].0, b"security.capability");
}

#[test]
fn a_replaced_file_does_not_write_through_its_hardlinks() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let sb = Sandbox::new("relink");
    sb.apply(
        &Tar::new()
            .file("a", 0o644, b"1")
            .hardlink("b", "a")
            .finish(),
        &UNPRIVILEGED,
    )
    .expect("layer 1");
    let a = fs::metadata(sb.rootfs().join("a")).expect("a");
    let b = fs::metadata(sb.rootfs().join("b")).expect("b");
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    sb.apply(&Tar::new().file("a", 0o644, b"2").finish(), &UNPRIVILEGED)
        .expect("layer 2");
    assert_eq!(fs::read(sb.rootfs().join("a")).expect("a"), b"2");
    assert_eq!(fs::read(sb.rootfs().join("b")).expect("b"), b"1");
}

#[test]
fn whiteouts_remove_lower_trees_and_ignore_missing_names() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let sb = Sandbox::new("whiteout");
    let lower = Tar::new()
        .file("var/cache/a/b/c", 0o644, b"c")
        .symlink("var/cache/link", "/outside")
        .file("var/keep", 0o644, b"k")
        .finish();
    sb.apply(&lower, &UNPRIVILEGED).expect("lower");
    let upper = Tar::new()
        .file_owned("var/.wh.cache", 0, 0, b"")
        .file_owned("var/.wh.never-there", 0, 0, b"")
        .file_owned("nowhere/.wh.x", 0, 0, b"")
        .finish();
    sb.apply(&upper, &UNPRIVILEGED).expect("upper");
    assert_eq!(
        listing(&sb.rootfs()),
        ["var d 755 0:0", "var/keep f 644 0:0 k"]
    );
}

#[test]
fn dot_dot_is_refused_and_absolute_paths_land_inside() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let sb = Sandbox::new("dotdot");
    let err = entry_error(sb.apply(
        &Tar::new().raw_file(b"../escape", b"x").finish(),
        &UNPRIVILEGED,
    ));
    assert!(err.contains("../escape") && err.contains("`..`"), "{err}");
    let err = entry_error(
        sb.apply(
            &Tar::new()
                .raw_file(b"etc/../../outside/secret", b"x")
                .finish(),
            &UNPRIVILEGED,
        ),
    );
    assert!(err.contains("`..`"), "{err}");
    sb.assert_outside_untouched();

    let sb = Sandbox::new("absolute");
    sb.apply(
        &Tar::new()
            .raw_file(b"/etc/passwd", b"root:x:0:0::/:/bin/sh\n")
            .finish(),
        &UNPRIVILEGED,
    )
    .expect("an absolute path is re-rooted");
    assert_eq!(
        fs::read(sb.rootfs().join("etc/passwd")).expect("inside"),
        b"root:x:0:0::/:/bin/sh\n"
    );
    sb.assert_outside_untouched();
}

#[test]
fn writes_through_planted_symlinks_stay_inside() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let sb = Sandbox::new("symlink");
    let outside = sb.outside();
    let outside = outside.to_str().expect("utf-8 path");
    let lower = Tar::new()
        .symlink("link", outside)
        .symlink("up", "../../..")
        .finish();
    sb.apply(&lower, &UNPRIVILEGED).expect("lower");
    // `link` resolves to ROOTFS/<outside's path>, which does not exist.
    let err = entry_error(sb.apply(
        &Tar::new().file("link/file", 0o644, b"x").finish(),
        &UNPRIVILEGED,
    ));
    assert!(err.contains("link/file"), "{err}");
    // `up` climbs no further than the rootfs: the write lands inside.
    sb.apply(
        &Tar::new().file("up/file", 0o644, b"x").finish(),
        &UNPRIVILEGED,
    )
    .expect("write through `up`");
    assert_eq!(fs::read(sb.rootfs().join("file")).expect("inside"), b"x");
    // A hardlink to a file outside, by absolute path or through the link.
    let secret = format!("{outside}/secret");
    for target in [secret.as_str(), "link/secret"] {
        let err = entry_error(sb.apply(
            &Tar::new().hardlink("stolen", target).finish(),
            &UNPRIVILEGED,
        ));
        assert!(err.contains("neither this layer nor a lower one"), "{err}");
    }
    let err = entry_error(sb.apply(
        &Tar::new().hardlink("stolen", "../outside/secret").finish(),
        &UNPRIVILEGED,
    ));
    assert!(err.contains("`..`"), "{err}");
    // Replacing the symlink itself replaces the link, not its target.
    sb.apply(
        &Tar::new().file("link", 0o644, b"now a file").finish(),
        &UNPRIVILEGED,
    )
    .expect("replace the link");
    assert!(fs::symlink_metadata(sb.rootfs().join("link"))
        .expect("stat")
        .is_file());
    assert!(!sb.rootfs().join("stolen").exists());
    sb.assert_outside_untouched();
}

#[test]
fn devices_need_allow_devices() {
    if !is_root_or_skip("mknod needs root") {
        return;
    }
    let layer = Tar::new()
        .node("dev/null", tar::EntryType::Char, 1, 3)
        .node("dev/pipe", tar::EntryType::Fifo, 0, 0)
        .finish();
    let sb = Sandbox::new("devices");
    let err = entry_error(sb.apply(&layer, &UNPRIVILEGED));
    assert!(
        err.contains("dev/null") && err.contains("device node"),
        "{err}"
    );
    assert!(!sb.rootfs().join("dev/null").exists());
    let sb = Sandbox::new("devices-ok");
    sb.apply(&layer, &PRIVILEGED).expect("privileged");
    assert_eq!(
        listing(&sb.rootfs()),
        [
            "dev d 755 0:0",
            "dev/null c 600 0:0 1,3",
            "dev/pipe p 600 0:0"
        ]
    );
}

#[test]
fn a_huge_declared_size_fails_before_anything_is_written() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    const TIB: u64 = 1 << 40;
    // A plain entry claiming 1 TiB, and a GNU sparse one whose 1 TiB is
    // nearly all hole (the tar reader returns a hole as zeros: written out,
    // it would fill the disk).
    for layer in [
        Tar::new().lying_file("big", TIB, b"only this").finish(),
        Tar::new().sparse_file("big", TIB, b"only this").finish(),
    ] {
        let sb = Sandbox::new("huge");
        let err = entry_error(sb.apply(&layer, &UNPRIVILEGED));
        assert!(
            err.contains("big") && err.contains(&TIB.to_string()) && err.contains("free"),
            "{err}"
        );
        assert!(!sb.rootfs().join("big").exists(), "nothing of it is made");
        sb.assert_outside_untouched();
    }
}

#[test]
fn a_short_body_fails_the_layer() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let sb = Sandbox::new("short");
    let layer = Tar::new()
        .lying_file("short", 1 << 16, b"only this")
        .finish();
    let err = entry_error(sb.apply(&layer, &UNPRIVILEGED));
    assert!(
        err.contains("short") && err.contains("declares 65536 bytes but the archive holds"),
        "{err}"
    );
    sb.assert_outside_untouched();
}

#[test]
fn a_sparse_file_that_fits_is_written_whole() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let sb = Sandbox::new("sparse");
    let layer = Tar::new().sparse_file("holey", 1 << 20, b"end").finish();
    sb.apply(&layer, &UNPRIVILEGED).expect("apply");
    let data = fs::read(sb.rootfs().join("holey")).expect("read");
    assert_eq!(data.len(), 1 << 20);
    assert!(data.ends_with(b"end") && data[..data.len() - 3].iter().all(|b| *b == 0));
}

#[test]
fn other_compressions_and_garbage_are_refused() {
    let sb = Sandbox::new("garbage");
    let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4];
    match sb.apply(&xz, &UNPRIVILEGED) {
        Err(ImageError::Archive { reason }) => assert!(reason.contains("Xz"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let garbage = vec![b'x'; 2048];
    assert!(matches!(
        sb.apply(&garbage, &UNPRIVILEGED),
        Err(ImageError::Archive { .. })
    ));
    // An empty layer is only the end-of-archive blocks.
    sb.apply(&[0u8; 1024], &UNPRIVILEGED).expect("empty layer");
    assert!(listing(&sb.rootfs()).is_empty());
}

#[test]
fn pax_times_parse() {
    let t = pax_time(b"1700000000.5").expect("time");
    assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
    let t = pax_time(b"-1").expect("time");
    assert_eq!((t.tv_sec, t.tv_nsec), (-1, 0));
    assert!(pax_time(b"soon").is_none());
}
