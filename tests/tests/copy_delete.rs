//! Privileged: `copy_tree`/`copy_file` keep every kind of object on the host
//! filesystem, onto a loop-mounted ext4 and within btrfs (reflinked), and
//! `remove_tree` deletes a rootfs without following symlinks out of it, refusing
//! `/`, paths outside its root and trees with mounts inside.

// The helpers below are test code too: this lets clippy's allow-unwrap-in-tests
// cover them.
#![cfg(test)]

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::copy::{copy_file, copy_tree, CopyStats, Progress};
use berth_bdev::delete::remove_tree;
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::BdevError;
use berth_fixtures::compare::assert_same_tree_ignoring;
use berth_fixtures::filetypes::{build_all_types, Kind, Manifest, BLOB_LEN, SPARSE_LEN};
use berth_tests::harness::{assert_no_leaks, skip, ScratchFs};

/// A copy of the 64 MiB sparse file may allocate at most this much.
const SPARSE_MAX_ALLOC: u64 = 4 << 20;

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A temp dir on a real disk filesystem (/tmp may be tmpfs elsewhere), or `None`
/// after a skip when not root.
fn scratch() -> Option<tempfile::TempDir> {
    if !is_root() {
        skip("copy/delete tests need root (mknod, chown, trusted.* xattrs, mounts)");
        return None;
    }
    Some(
        tempfile::Builder::new()
            .prefix("berth-copy-")
            .tempdir_in("/var/tmp")
            .unwrap(),
    )
}

#[derive(Default)]
struct Count {
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
}

impl Progress for Count {
    fn total(&self, files: u64, bytes: u64) {
        self.total_files.store(files, Ordering::SeqCst);
        self.total_bytes.store(bytes, Ordering::SeqCst);
    }
    fn advance(&self, files: u64, bytes: u64) {
        self.files.fetch_add(files, Ordering::SeqCst);
        self.bytes.fetch_add(bytes, Ordering::SeqCst);
    }
}

fn allocated(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().blocks() * 512
}

/// Copies `src` to `dst`, then checks the trees match, the counters agree with
/// the manifest and the sparse file stayed sparse.
fn copy_and_check(src: &Path, dst: &Path, m: &Manifest, ignore: &[&Path]) -> CopyStats {
    let p = Count::default();
    let st = copy_tree(src, dst, &p).unwrap();
    assert_same_tree_ignoring(src, dst, ignore);
    let non_dirs = (m.entries.len() - m.count(Kind::Dir)) as u64;
    assert!(st.files >= non_dirs, "{st:?} < {non_dirs} files");
    assert!(st.bytes >= m.file_bytes, "{st:?}");
    assert_eq!(p.total_files.load(Ordering::SeqCst), st.files);
    assert_eq!(p.files.load(Ordering::SeqCst), st.files);
    assert_eq!(p.total_bytes.load(Ordering::SeqCst), st.bytes);
    assert_eq!(p.bytes.load(Ordering::SeqCst), st.bytes);
    let sparse = dst.join(&m.sparse_file);
    assert_eq!(fs::metadata(&sparse).unwrap().len(), SPARSE_LEN);
    let a = allocated(&sparse);
    assert!(a <= SPARSE_MAX_ALLOC, "sparse copy allocates {a} bytes");
    st
}

/// Bind-mounts `src` on `dst`; the guard unmounts even if the test panics.
fn bind(src: &Path, dst: &Path) -> MountGuard {
    mount::bind(src, dst, false).unwrap();
    MountGuard::mounted(dst)
}

fn file_count(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            n += 1;
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

#[test]
fn copy_all_types_on_the_host_fs() {
    let Some(tmp) = scratch() else { return };
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let m = build_all_types(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    let st = copy_and_check(&src, &dst, &m, &[]);
    assert!(st.bytes >= SPARSE_LEN + BLOB_LEN as u64);
    // The copy can be deleted again, devices, sockets and all.
    remove_tree(&dst, tmp.path()).unwrap();
    assert!(!dst.exists());
    assert_no_leaks(tmp.path());
}

#[test]
fn copy_all_types_onto_ext4() {
    let Some(tmp) = scratch() else { return };
    let src = tmp.path().join("src");
    let m = build_all_types(&src).unwrap();
    {
        let sfs = match ScratchFs::new(tmp.path(), "ext4", 1 << 30) {
            Ok(f) => f,
            Err(e) => return skip(&e),
        };
        // A fresh mount root holding only lost+found is a valid target.
        copy_and_check(&src, &sfs.mnt, &m, &[Path::new("lost+found")]);
        // And back from ext4 to the host, through the worker pool again.
        let back = tmp.path().join("back");
        fs::create_dir(&back).unwrap();
        copy_tree(&sfs.mnt, &back, &berth_bdev::copy::NoProgress).unwrap();
        assert_same_tree_ignoring(&src, &back, &[Path::new("lost+found")]);
    }
    assert_no_leaks(tmp.path());
}

#[test]
fn copy_within_btrfs_reflinks_and_flattens_subvolumes() {
    let Some(tmp) = scratch() else { return };
    if !berth_bdev::cmd::have_program("btrfs") {
        return skip("btrfs-progs is not installed");
    }
    {
        let sfs = match ScratchFs::new(tmp.path(), "btrfs", 4 << 30) {
            Ok(f) => f,
            Err(e) => return skip(&e),
        };
        let (src, dst) = (sfs.mnt.join("src"), sfs.mnt.join("dst"));
        let m = build_all_types(&src).unwrap();
        // Nested subvolumes: other st_dev, not mount points, copied as directories.
        let sub = src.join("subvol");
        let inner = sub.join("inner");
        for v in [&sub, &inner] {
            cmd::run(
                &HostRunner,
                "btrfs",
                &["subvolume", "create", v.to_str().unwrap()],
            )
            .unwrap();
        }
        fs::write(
            sub.join("in-subvol"),
            berth_fixtures::filetypes::pattern(300_000, 7),
        )
        .unwrap();
        fs::write(inner.join("deeper"), b"inner\n").unwrap();
        assert_ne!(
            fs::metadata(&sub).unwrap().dev(),
            fs::metadata(&src).unwrap().dev()
        );
        fs::create_dir(&dst).unwrap();

        let st = copy_and_check(&src, &dst, &m, &[]);
        assert!(
            st.reflinked_bytes >= SPARSE_LEN + BLOB_LEN as u64,
            "reflink did not happen: {st:?}"
        );
        let dst_dev = fs::metadata(&dst).unwrap().dev();
        assert_eq!(
            fs::metadata(dst.join("subvol/inner")).unwrap().dev(),
            dst_dev
        );

        // An image clone is one FICLONE.
        let img = sfs.mnt.join("clone.img");
        let one = copy_file(&src.join(&m.sparse_file), &img).unwrap();
        assert_eq!(one.reflinked_bytes, SPARSE_LEN);
        assert_eq!(
            fs::read(&img).unwrap(),
            fs::read(src.join(&m.sparse_file)).unwrap()
        );

        // Deleting walks into the subvolumes (same filesystem, other st_dev).
        remove_tree(&src, &sfs.mnt).unwrap();
        assert!(!src.exists());
    }
    assert_no_leaks(tmp.path());
}

#[test]
fn copy_file_keeps_holes_and_mode() {
    let Some(tmp) = scratch() else { return };
    let src = tmp.path().join("src");
    let m = build_all_types(&src).unwrap();
    let from = src.join(&m.sparse_file);
    fs::set_permissions(&from, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let to = tmp.path().join("copy.img");
    let st = copy_file(&from, &to).unwrap();
    assert_eq!((st.files, st.bytes), (1, SPARSE_LEN));
    assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
    assert_eq!(fs::metadata(&to).unwrap().mode() & 0o7777, 0o640);
    assert!(allocated(&to) <= SPARSE_MAX_ALLOC, "{}", allocated(&to));
    assert_no_leaks(tmp.path());
}

#[test]
fn copy_does_not_descend_into_mounts() {
    let Some(tmp) = scratch() else { return };
    let (src, dst, other) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("other"),
    );
    for d in [src.join("proc"), dst.clone(), other.clone()] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(src.join("kept"), b"k").unwrap();
    fs::write(other.join("secret"), b"from another mount").unwrap();
    {
        let _m = bind(&other, &src.join("proc"));
        assert!(src.join("proc/secret").exists());
        copy_tree(&src, &dst, &berth_bdev::copy::NoProgress).unwrap();
    }
    assert!(dst.join("kept").is_file());
    assert!(dst.join("proc").is_dir());
    assert_eq!(fs::read_dir(dst.join("proc")).unwrap().count(), 0);
    assert_no_leaks(tmp.path());
}

/// A rootfs whose symlinks all point out of it, at a victim.
fn booby_trapped_rootfs(root: &Path, victim: &Path) -> PathBuf {
    let rootfs = root.join("rootfs");
    build_all_types(&rootfs).unwrap();
    symlink(victim, rootfs.join("home/victim")).unwrap();
    symlink(victim.join("precious"), rootfs.join("etc/victim-file")).unwrap();
    symlink("../../../../../../../../..", rootfs.join("up")).unwrap();
    fs::create_dir_all(rootfs.join("a/b")).unwrap();
    let rel = Path::new("../../..").join(victim.strip_prefix("/").unwrap());
    symlink(&rel, rootfs.join("a/b/rel-victim")).unwrap();
    symlink(victim, rootfs.join("home/user/home")).unwrap();
    rootfs
}

fn make_victim(tmp: &Path) -> PathBuf {
    let victim = tmp.join("victim");
    fs::create_dir_all(victim.join("docs")).unwrap();
    fs::write(victim.join("precious"), b"do not delete").unwrap();
    fs::write(victim.join("docs/thesis"), b"years of work").unwrap();
    victim
}

fn assert_victim_intact(victim: &Path) {
    assert_eq!(fs::read(victim.join("precious")).unwrap(), b"do not delete");
    assert_eq!(
        fs::read(victim.join("docs/thesis")).unwrap(),
        b"years of work"
    );
}

#[test]
fn remove_tree_never_follows_symlinks_out_of_the_rootfs() {
    let Some(tmp) = scratch() else { return };
    let victim = make_victim(tmp.path());
    let root = tmp.path().join("containers");
    let rootfs = booby_trapped_rootfs(&root, &victim);
    // A symlink as the path itself is unlinked, not followed.
    symlink(&victim, root.join("link-to-victim")).unwrap();
    remove_tree(&root.join("link-to-victim"), &root).unwrap();
    assert!(fs::symlink_metadata(root.join("link-to-victim")).is_err());
    // `..` tricks resolve outside the root and are refused.
    let e = remove_tree(&rootfs.join("../../victim"), &root).unwrap_err();
    assert!(matches!(e, BdevError::DeleteRefused { .. }), "{e}");
    let e = remove_tree(&rootfs.join("up/..").join("victim"), &root).unwrap_err();
    assert!(matches!(e, BdevError::DeleteRefused { .. }), "{e}");
    assert_victim_intact(&victim);

    remove_tree(&rootfs, &root).unwrap();
    assert!(fs::symlink_metadata(&rootfs).is_err());
    assert!(root.is_dir());
    assert_victim_intact(&victim);
    // Already gone is fine.
    remove_tree(&rootfs, &root).unwrap();
    assert_no_leaks(tmp.path());
}

#[test]
fn remove_tree_refuses_root_outside_and_the_root_itself() {
    let Some(tmp) = scratch() else { return };
    let victim = make_victim(tmp.path());
    let root = tmp.path().join("containers");
    fs::create_dir_all(root.join("c1")).unwrap();
    let refused = |p: &Path, r: &Path| {
        let e = remove_tree(p, r).unwrap_err();
        assert!(matches!(e, BdevError::DeleteRefused { .. }), "{p:?}: {e}");
    };
    refused(Path::new("/"), Path::new("/"));
    refused(Path::new("/"), &root);
    refused(&victim, &root);
    refused(&root, &root);
    refused(&root.join("c1/../.."), &root);
    assert!(root.join("c1").is_dir());
    assert_victim_intact(&victim);
    assert_no_leaks(tmp.path());
}

#[test]
fn remove_tree_refuses_a_tree_with_a_mount_before_deleting_anything() {
    let Some(tmp) = scratch() else { return };
    let victim = make_victim(tmp.path());
    let root = tmp.path().join("containers");
    let rootfs = root.join("rootfs");
    build_all_types(&rootfs).unwrap();
    fs::create_dir_all(rootfs.join("mnt/host")).unwrap();
    {
        let _m = bind(&victim, &rootfs.join("mnt/host"));
        let before = file_count(&rootfs);
        let e = remove_tree(&rootfs, &root).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BdevError::DeleteRefused { .. }), "{msg}");
        assert!(msg.contains("mnt/host") && msg.contains("unmount"), "{msg}");
        assert_eq!(file_count(&rootfs), before, "something was deleted");
    }
    assert_victim_intact(&victim);
    remove_tree(&rootfs, &root).unwrap();
    assert!(!rootfs.exists());
    assert_victim_intact(&victim);
    assert_no_leaks(tmp.path());
}

#[test]
fn remove_tree_names_an_immutable_file() {
    let Some(tmp) = scratch() else { return };
    if !berth_bdev::cmd::have_program("chattr") {
        return skip("chattr (e2fsprogs) is not installed");
    }
    let root = tmp.path().join("containers");
    let locked = root.join("rootfs/etc/locked");
    fs::create_dir_all(locked.parent().unwrap()).unwrap();
    fs::write(&locked, b"x").unwrap();
    let arg = locked.to_str().unwrap();
    if let Err(e) = cmd::run(&HostRunner, "chattr", &["+i", arg]) {
        return skip(&format!("this filesystem has no immutable attribute: {e}"));
    }
    let e = remove_tree(&root.join("rootfs"), &root).unwrap_err();
    let unlock = cmd::run(&HostRunner, "chattr", &["-i", arg]);
    match &e {
        BdevError::DeleteRefused { path, reason } => {
            assert_eq!(path, &locked);
            assert!(reason.contains("immutable"), "{reason}");
        }
        other => panic!("expected DeleteRefused, got {other}"),
    }
    unlock.unwrap();
    remove_tree(&root.join("rootfs"), &root).unwrap();
    assert_no_leaks(tmp.path());
}
