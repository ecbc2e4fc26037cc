//! Privileged tests of the rootfs templates against the real host tools: the
//! minimal rootfs must run under chroot, archives and trees must arrive intact,
//! and hostile archives must not write outside the rootfs.

// Helpers outside #[test] fns are test code too; a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_bdev::cmd::{self, have_program, HostRunner};
use berth_bdev::copy::NoProgress;
use berth_core::templates::{
    detect_flavor, populate, populate_cached, populate_minimal, probe, write_hostname, Cache,
    CacheMode, MinimalFlavor, Populated, Template, TemplateError, FIXED_MTIME,
};
use berth_tests::harness::skip;

fn rootfs_in(tmp: &Path, name: &str) -> PathBuf {
    let r = tmp.join(name);
    fs::create_dir(&r).unwrap();
    // A freshly made filesystem has one; templates must cope with it.
    fs::create_dir(r.join("lost+found")).unwrap();
    r
}

fn chroot_sh(rootfs: &Path, script: &str) -> String {
    let r = rootfs.to_str().unwrap();
    cmd::run(&HostRunner, "chroot", &[r, "/bin/sh", "-c", script])
        .unwrap_or_else(|e| panic!("chroot {r} sh -c {script:?}: {e}"))
        .stdout
}

/// One line per entry below `dir` (but lost+found): path, mode, owner, mtime,
/// size, link target.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            // Made by the test at its own time, and not the template's.
            if p == dir.join("lost+found") {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let link = fs::read_link(&p).map(|l| l.display().to_string());
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            out.push(format!(
                "{rel} {:o} {}:{} {} {} {}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                if m.is_dir() { 0 } else { m.size() },
                link.unwrap_or_default()
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn assert_skeleton(rootfs: &Path) {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
    ] {
        assert!(rootfs.join(d).is_dir(), "/{d}");
    }
    for d in ["var", "run", "home", "mnt"] {
        assert!(rootfs.join(d).is_dir(), "/{d}");
    }
    assert_eq!(mode(&rootfs.join("tmp")), 0o1777);
    assert_eq!(mode(&rootfs.join("root")), 0o700);
    let read = |p: &str| fs::read_to_string(rootfs.join(p)).unwrap();
    assert!(read("etc/passwd").starts_with("root:x:0:0:"));
    assert!(read("etc/passwd").contains("\nnobody:x:65534:"));
    assert!(read("etc/group").starts_with("root:x:0:"));
    assert!(read("etc/os-release").contains("\nID=berth-minimal\n"));
    assert_eq!(read("etc/resolv.conf"), "");
    assert!(!read("etc/hostname").is_empty());
    assert!(read("etc/hosts").contains("localhost"));
    assert!(rootfs.join("sbin/init").symlink_metadata().is_ok());
    assert!(
        rootfs.join("lost+found").is_dir(),
        "lost+found is left alone"
    );
}

#[test]
fn minimal_busybox_runs_under_chroot_and_is_deterministic() {
    let flavor = detect_flavor();
    if flavor == MinimalFlavor::HostTools {
        return skip("no /bin/busybox (apt-get install busybox-static)");
    }
    probe(&Template::Minimal).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = rootfs_in(tmp.path(), "a");
    populate(&Template::Minimal, &a, &HostRunner, &NoProgress).unwrap();

    assert_skeleton(&a);
    assert!(a.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(a.join("sbin/init")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::read_link(a.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(chroot_sh(&a, "echo ok"), "ok\n");
    assert_eq!(
        chroot_sh(&a, "ls /etc/passwd && id -un"),
        "/etc/passwd\nroot\n"
    );

    // Same host, same tree, down to the mtimes.
    let b = rootfs_in(tmp.path(), "b");
    populate(&Template::Minimal, &b, &HostRunner, &NoProgress).unwrap();
    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(ta, tb);
    let etc = fs::metadata(a.join("etc/passwd")).unwrap();
    assert_eq!(etc.mtime(), FIXED_MTIME);
}

#[test]
fn minimal_host_tools_runs_under_chroot() {
    let tmp = tempfile::tempdir().unwrap();
    let r = rootfs_in(tmp.path(), "r");
    populate_minimal(&r, &MinimalFlavor::HostTools, &HostRunner).unwrap();
    assert_skeleton(&r);
    assert!(!r.join("bin/busybox").exists());
    assert!(r.join("bin/sh").is_file());
    assert_eq!(chroot_sh(&r, "echo ok"), "ok\n");
    let out = chroot_sh(
        &r,
        "ls /etc/hostname && cat /etc/hostname && id -un && uname -s",
    );
    assert_eq!(out, "/etc/hostname\nberth\nroot\nLinux\n");
    let os = fs::read_to_string(r.join("etc/os-release")).unwrap();
    assert!(os.contains("VARIANT_ID=host-tools"), "{os}");
}

/// A small tree with what a rootfs archive must keep: owners, modes, symlinks.
fn source_tree(dir: &Path) {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("usr/bin")).unwrap();
    fs::write(dir.join("etc/hostname"), "from-archive\n").unwrap();
    fs::write(dir.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
    std::os::unix::fs::chown(dir.join("etc/hostname"), Some(1234), Some(5678)).unwrap();
}

fn assert_same_content(rootfs: &Path) {
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "from-archive\n"
    );
    let m = fs::metadata(rootfs.join("etc/hostname")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678), "numeric owner kept");
    assert_eq!(mode(&rootfs.join("usr/bin/tool")), 0o4755, "modes kept");
    assert_eq!(
        fs::read_link(rootfs.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
}

fn from_tar(tmp: &Path, name: &str, compress: &[&str]) {
    let src = tmp.join(format!("src-{name}"));
    source_tree(&src);
    let archive = tmp.join(name);
    let (a, s) = (archive.to_str().unwrap(), src.to_str().unwrap());
    let mut args = compress.to_vec();
    args.extend(["--numeric-owner", "-cf", a, "-C", s, "."]);
    cmd::run(&HostRunner, "tar", &args).unwrap();

    let t = Template::FromTar(archive.clone());
    probe(&t).unwrap();
    let r = rootfs_in(tmp, &format!("rootfs-{name}"));
    populate(&t, &r, &HostRunner, &NoProgress).unwrap();
    assert_same_content(&r);
}

#[test]
fn from_tar_gz_and_plain() {
    let tmp = tempfile::tempdir().unwrap();
    from_tar(tmp.path(), "root.tar.gz", &["-z"]);
    from_tar(tmp.path(), "root.tar", &[]);
}

#[test]
fn from_tar_zst_xz_and_bz2() {
    for (tool, package) in [("zstd", "zstd"), ("xz", "xz-utils"), ("bzip2", "bzip2")] {
        if !have_program(tool) {
            return skip(&format!("{tool} not installed (apt-get install {package})"));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    from_tar(tmp.path(), "root.tar.zst", &["--zstd"]);
    // The name lies; the content decides.
    from_tar(tmp.path(), "root.tar.gz", &["-J"]);
    from_tar(tmp.path(), "root.tbz2", &["-j"]);
}

#[test]
fn hostile_archive_members_stay_inside_the_rootfs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let run = |args: &[&str]| cmd::run(&HostRunner, "tar", args).unwrap();
    fs::create_dir(t.join("src")).unwrap();
    let escaped = t.join("escaped");
    fs::write(&escaped, "x").unwrap();
    let (src, esc) = (t.join("src"), escaped.to_str().unwrap().to_owned());
    let src = src.to_str().unwrap();

    // An absolute member lands below the rootfs.
    let abs = t.join("abs.tar");
    run(&["-P", "-cf", abs.to_str().unwrap(), &esc]);
    let r = rootfs_in(t, "r-abs");
    populate(&Template::FromTar(abs), &r, &HostRunner, &NoProgress).unwrap();
    assert!(r.join(escaped.strip_prefix("/").unwrap()).is_file());

    // A `..` member is skipped and the extraction fails.
    let dots = t.join("dots.tar");
    run(&["-P", "-C", src, "-cf", dots.to_str().unwrap(), "../escaped"]);
    fs::remove_file(&escaped).unwrap();
    let r = rootfs_in(t, "r-dots");
    let e = populate(&Template::FromTar(dots), &r, &HostRunner, &NoProgress).unwrap_err();
    assert!(matches!(e, TemplateError::Run { .. }), "{e}");
    assert!(!escaped.exists(), "written outside the rootfs");

    // A symlink out of the tree, then a member through it.
    let outside = t.join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, t.join("src/link")).unwrap();
    let sym = t.join("sym.tar");
    run(&["-C", src, "-cf", sym.to_str().unwrap(), "link"]);
    fs::remove_file(t.join("src/link")).unwrap();
    fs::create_dir(t.join("src/link")).unwrap();
    fs::write(t.join("src/link/file"), "evil").unwrap();
    let second = t.join("second.tar");
    run(&["-C", src, "-cf", second.to_str().unwrap(), "link/file"]);
    run(&["-Af", sym.to_str().unwrap(), second.to_str().unwrap()]);
    let r = rootfs_in(t, "r-sym");
    assert!(populate(&Template::FromTar(sym), &r, &HostRunner, &NoProgress).is_err());
    assert!(!outside.join("file").exists(), "written through a symlink");
}

/// `berth create --from-tar` names the rootfs after the import: that write
/// must not follow what the archive left in etc/ out of the rootfs.
#[test]
fn naming_an_imported_rootfs_stays_inside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let outside = t.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("hostname"), "host\n").unwrap();
    let src = t.join("src");
    fs::create_dir_all(src.join("dir/etc")).unwrap();
    fs::create_dir(src.join("link")).unwrap();
    // etc a link to a host directory (tar restores it last); or etc/hostname a
    // link to a host file and etc/hosts a fifo.
    std::os::unix::fs::symlink(&outside, src.join("link/etc")).unwrap();
    std::os::unix::fs::symlink(outside.join("hostname"), src.join("dir/etc/hostname")).unwrap();
    let fifo = src.join("dir/etc/hosts");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();

    for case in ["link", "dir"] {
        let archive = t.join(format!("{case}.tar"));
        let from = src.join(case);
        let (a, s) = (archive.to_str().unwrap(), from.to_str().unwrap());
        cmd::run(&HostRunner, "tar", &["-C", s, "-cf", a, "etc"]).unwrap();
        let r = rootfs_in(t, &format!("r-{case}"));
        populate(&Template::FromTar(archive), &r, &HostRunner, &NoProgress).unwrap();
        let named = write_hostname(&r, "c1");
        assert_eq!(
            fs::read_to_string(outside.join("hostname")).unwrap(),
            "host\n"
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "{case}: wrote outside"
        );
        if case == "dir" {
            named.unwrap();
            assert_eq!(fs::read_to_string(r.join("etc/hostname")).unwrap(), "c1\n");
            assert!(fs::symlink_metadata(r.join("etc/hosts")).unwrap().is_file());
        } else {
            assert_eq!(
                fs::read_link(r.join("etc")).unwrap(),
                outside,
                "tar kept the link"
            );
            assert!(named.is_err(), "etc leads nowhere inside the rootfs");
        }
    }
}

#[test]
fn from_dir_copies_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source_tree(&src);
    let t = Template::FromDir(src);
    probe(&t).unwrap();
    let r = rootfs_in(tmp.path(), "rootfs");
    populate(&t, &r, &HostRunner, &NoProgress).unwrap();
    assert_same_content(&r);

    let inside = Template::FromDir(tmp.path().to_path_buf());
    let r = rootfs_in(tmp.path(), "rootfs-inside");
    let e = populate(&inside, &r, &HostRunner, &NoProgress).unwrap_err();
    assert!(matches!(e, TemplateError::CopyRefused { .. }), "{e}");
}

/// A real debootstrap takes ~35 s and the network: it runs under CI or when
/// asked for with BERTH_TEST_DEBOOTSTRAP=1.
#[test]
fn debootstrap_then_cache_hit() {
    let wanted = |k: &str, v: &str| std::env::var(k).is_ok_and(|x| x == v);
    if !wanted("CI", "true") && !wanted("BERTH_TEST_DEBOOTSTRAP", "1") {
        eprintln!("SKIP: debootstrap test (set BERTH_TEST_DEBOOTSTRAP=1)");
        return;
    }
    let t: Template = "debootstrap".parse().unwrap();
    probe(&t).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache {
        dir: tmp.path().join("cache"),
        mode: CacheMode::Use,
    };

    let a = rootfs_in(tmp.path(), "a");
    let first = populate_cached(
        &t,
        &a,
        &cache,
        &HostRunner,
        &Default::default(),
        &NoProgress,
    )
    .unwrap();
    let Populated::Cached(file) = first else {
        panic!("first run should build and cache, got {first:?}");
    };
    assert!(file.is_file());
    assert!(a.join("etc/debian_version").is_file());
    assert!(chroot_sh(&a, "dpkg-query -W -f '${Package}\\n' apt").contains("apt"));
    let leftovers: Vec<_> = fs::read_dir(&cache.dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "only the tarball, no temp file");

    let b = rootfs_in(tmp.path(), "b");
    let second = populate_cached(
        &t,
        &b,
        &cache,
        &HostRunner,
        &Default::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(second, Populated::FromCache(file));
    assert_eq!(
        fs::read(a.join("etc/debian_version")).unwrap(),
        fs::read(b.join("etc/debian_version")).unwrap()
    );
    assert_eq!(chroot_sh(&b, "echo ok"), "ok\n");
}
