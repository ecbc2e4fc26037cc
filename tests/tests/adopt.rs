//! Privileged: `berth adopt` takes over containers made by Debian's LXC 5.0
//! (`lxc-create -t busybox`). A dir container is renamed into the default
//! pool (the very tree: same inode) and disabled in LXC; a btrfs one becomes a
//! writable subvolume snapshot (its parent UUID is the LXC rootfs') while
//! LXC keeps its own, a zfs one a clone on its zpool; `--copy` copies
//! (across backends, or `zfs send | recv`) and leaves LXC alone. Each adopted
//! container runs (`/bin/busybox true`) with the hostname of lxc.uts.name.
//! A running LXC container, a taken name and a rootfs no pool can take
//! without copying are refused with nothing changed; an adopt killed at any
//! of its crash points is rolled back (the tree and the config back in LXC)
//! or forward, and `berth doctor` then finds nothing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_bdev::cmd::{self, have_program, HostRunner};
use berth_tests::cli::{unique_name, Store};
use berth_tests::consistency::{doctor_clean, run_in};
use berth_tests::harness::{assert_no_leaks, skip, ScratchFs};

const DISABLED: &str = "config.adopted-by-berth";

/// Root, LXC's tools and busybox (the template copies the host's).
fn lxc_or_skip() -> bool {
    if !rustix::process::geteuid().is_root() {
        skip("adopting LXC containers needs root");
        return false;
    }
    for tool in ["lxc-create", "lxc-info", "lxc-start", "lxc-stop", "busybox"] {
        if !have_program(tool) {
            skip(&format!(
                "{tool} is not installed (apt-get install lxc busybox-static)"
            ));
            return false;
        }
    }
    true
}

/// An LXC container made by `lxc-create -t busybox`; dropping it stops it
/// if it runs (its files go with the test's temp dir).
struct LxcContainer {
    lxcpath: PathBuf,
    name: String,
}

impl LxcContainer {
    fn create(lxcpath: &Path, name: &str, backing: &str) -> LxcContainer {
        fs::create_dir_all(lxcpath).unwrap();
        let p = lxcpath.to_str().unwrap();
        let args = ["-n", name, "-P", p, "-t", "busybox", "-B", backing];
        cmd::run(&HostRunner, "lxc-create", &args)
            .unwrap_or_else(|e| panic!("lxc-create -B {backing}: {e}"));
        LxcContainer {
            lxcpath: lxcpath.to_path_buf(),
            name: name.to_owned(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.lxcpath.join(&self.name)
    }

    fn arg(&self) -> String {
        self.dir().to_string_lossy().into_owned()
    }

    fn rootfs(&self) -> PathBuf {
        self.dir().join("rootfs")
    }

    fn lxc(&self, tool: &str, extra: &[&str]) -> Result<String, String> {
        let mut args = vec!["-P", self.lxcpath.to_str().unwrap(), "-n", &self.name];
        args.extend_from_slice(extra);
        cmd::run(&HostRunner, tool, &args)
            .map(|o| o.stdout)
            .map_err(|e| e.to_string())
    }

    fn state(&self) -> Result<String, String> {
        self.lxc("lxc-info", &["-s", "-H"])
            .map(|s| s.trim().to_owned())
    }

    /// No network and no AppArmor, so that it starts on any test host.
    fn make_startable(&self) {
        let cfg = self.dir().join("config");
        let text = fs::read_to_string(&cfg).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("lxc.net.") && !l.starts_with("lxc.apparmor."))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = format!("{text}lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\n");
        fs::write(&cfg, text).unwrap();
    }
}

impl Drop for LxcContainer {
    fn drop(&mut self) {
        if self.state().is_ok_and(|s| s != "STOPPED") {
            let _ = self.lxc("lxc-stop", &["-k"]);
        }
    }
}

fn tmp_in_var_tmp(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("berth-adopt-{tag}-"))
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// What a container runs and says its hostname is.
fn assert_runs_as(s: &Store, name: &str, hostname: &str) {
    run_in(s, name, &["/bin/busybox", "true"]).unwrap();
    let h = run_in(s, name, &["/bin/busybox", "hostname"]).unwrap();
    assert_eq!(h.trim(), hostname);
}

#[test]
fn dir_container_is_moved_disabled_in_lxc_and_runs() {
    if !lxc_or_skip() {
        return;
    }
    let tmp = tmp_in_var_tmp("dir");
    let name = unique_name("adopt-dir");
    let lxc = LxcContainer::create(&tmp.path().join("lxc"), &name, "dir");
    fs::write(lxc.rootfs().join("root/marker"), "made in lxc\n").unwrap();
    let ino = fs::metadata(lxc.rootfs()).unwrap().ino();
    let s = Store::new();

    let (out, log) = s.berth_logged(&["adopt", &lxc.arg()]).unwrap();
    assert!(out.contains("moved, no copy"), "{out}");
    assert!(out.contains(DISABLED), "{out}");
    assert!(
        out.contains(&format!("/etc/hostname set to {name}")),
        "{out}"
    );
    // What the busybox template sets and berth does not take over is named.
    assert!(log.contains("lxc.mount.entry"), "{log}");
    assert!(log.contains("lxc.net.0 (veth"), "{log}");

    // The very tree (no copy), and LXC no longer has the container.
    let volume = s.root().join("storage/default").join(&name);
    assert_eq!(fs::metadata(&volume).unwrap().ino(), ino);
    assert!(!lxc.rootfs().exists() && !lxc.dir().join("config").exists());
    assert!(lxc.dir().join(DISABLED).is_file());
    assert!(lxc.state().is_err(), "lxc-info still finds it");

    assert_runs_as(&s, &name, &name);
    let marker = run_in(&s, &name, &["/bin/busybox", "cat", "/root/marker"]).unwrap();
    assert_eq!(marker, "made in lxc\n");
    let etc = run_in(&s, &name, &["/bin/busybox", "cat", "/etc/hostname"]).unwrap();
    assert_eq!(etc.trim(), name);

    let again = s
        .berth(&["adopt", &lxc.arg(), "--as", "again"])
        .unwrap_err();
    assert!(
        again.stderr.contains("adopted by berth already"),
        "{}",
        again.stderr
    );
    doctor_clean(&s).unwrap();
    s.ok(&["destroy", &name]);
    drop(s);
    assert_no_leaks(tmp.path());
}

#[test]
fn btrfs_container_is_snapshotted_and_stays_in_lxc() {
    if !lxc_or_skip() {
        return;
    }
    if !berth_bdev::fsutil::kernel_has_fs("btrfs") || !have_program("mkfs.btrfs") {
        skip("btrfs is not available (mkfs.btrfs, kernel)");
        return;
    }
    let tmp = tmp_in_var_tmp("btrfs");
    let fs = ScratchFs::new(tmp.path(), "btrfs", 4 << 30).unwrap();
    let name = unique_name("adopt-bt");
    let lxc = LxcContainer::create(&fs.mnt.join("lxc"), &name, "btrfs");
    let s = Store::new();

    // The store's own pools are not on that btrfs: nothing is moved or made.
    let e = s.berth(&["adopt", &lxc.arg()]).unwrap_err().stderr;
    assert!(e.contains("no btrfs pool is on the filesystem"), "{e}");
    assert!(e.contains("--copy") && e.contains("berth pool add"), "{e}");
    assert!(lxc.dir().join("config").is_file());
    assert_eq!(s.ok(&["ls"]).lines().count(), 1, "only the header");

    let pool = fs.mnt.join("berth");
    s.ok(&[
        "pool",
        "add",
        "bt",
        "-B",
        "btrfs",
        "--path",
        pool.to_str().unwrap(),
    ]);
    let out = s.ok(&["adopt", &lxc.arg()]);
    assert!(
        out.contains("snapshot, no copy") && out.contains("pool bt"),
        "{out}"
    );
    // A writable snapshot of the LXC subvolume; LXC keeps its container.
    let uuid = |path: &Path, field: &str| -> String {
        let show = cmd::run(
            &HostRunner,
            "btrfs",
            &["subvolume", "show", path.to_str().unwrap()],
        )
        .unwrap()
        .stdout;
        show.lines()
            .find_map(|l| l.trim().strip_prefix(field))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {field} in {show}"))
    };
    assert_eq!(
        uuid(&pool.join(&name), "Parent UUID:"),
        uuid(&lxc.rootfs(), "UUID:")
    );
    assert_eq!(lxc.state().unwrap(), "STOPPED");
    assert!(lxc.dir().join("config").is_file() && !lxc.dir().join(DISABLED).exists());
    assert_runs_as(&s, &name, &name);
    // Independent: a change on berth's side does not reach LXC's rootfs.
    run_in(&s, &name, &["/bin/busybox", "touch", "/root/berth-only"]).unwrap();
    assert!(!lxc.rootfs().join("root/berth-only").exists());

    // --copy across backends, into the default dir pool (without --pool it
    // would go to the one btrfs pool), under another name: LXC's hostname
    // lands in /etc/hostname, the running hostname is the berth name.
    let copy = format!("{name}-c");
    let (out, log) = s
        .berth_logged(&[
            "adopt",
            &lxc.arg(),
            "--copy",
            "--as",
            &copy,
            "--pool",
            "default",
        ])
        .unwrap();
    assert!(
        out.contains("copied") && out.contains("pool default"),
        "{out}"
    );
    assert!(log.contains(&format!("lxc.uts.name is {name}")), "{log}");
    assert_runs_as(&s, &copy, &copy);
    let etc = run_in(&s, &copy, &["/bin/busybox", "cat", "/etc/hostname"]).unwrap();
    assert_eq!(etc.trim(), name);
    assert!(lxc.dir().join("config").is_file());

    doctor_clean(&s).unwrap();
    s.ok(&["destroy", &name]);
    s.ok(&["destroy", &copy]);
    drop(s);
    drop(lxc);
    drop(fs);
    assert_no_leaks(tmp.path());
}

#[test]
fn refusals_leave_lxc_and_berth_as_they_were() {
    if !lxc_or_skip() {
        return;
    }
    let tmp = tmp_in_var_tmp("refuse");
    let name = unique_name("adopt-run");
    let lxc = LxcContainer::create(&tmp.path().join("lxc"), &name, "dir");
    lxc.make_startable();
    let s = Store::new();
    let untouched = |s: &Store| {
        assert!(lxc.dir().join("config").is_file() && lxc.rootfs().join("bin/busybox").exists());
        assert!(!lxc.dir().join(DISABLED).exists());
        assert!(!s.root().join("storage/default").join(&name).exists());
        doctor_clean(s).unwrap();
    };

    lxc.lxc("lxc-start", &["-d"]).unwrap();
    assert!(berth_tests::harness::wait_for(|| lxc
        .state()
        .is_ok_and(|st| st == "RUNNING")));
    let e = s.berth(&["adopt", &lxc.arg()]).unwrap_err().stderr;
    assert!(e.contains("is RUNNING") && e.contains("lxc-stop"), "{e}");
    untouched(&s);
    lxc.lxc("lxc-stop", &["-k"]).unwrap();

    let e = s
        .berth(&["adopt", &tmp.path().to_string_lossy()])
        .unwrap_err()
        .stderr;
    assert!(e.contains("no LXC config"), "{e}");
    let arg = lxc.arg();
    for (extra, why) in [
        (["--as", "bad/name"], "cannot contain '/'"),
        (["-B", "btrfs"], "pass --copy"),
        (["--pool", "nope"], "does not exist"),
    ] {
        let mut all = vec!["adopt", arg.as_str()];
        all.extend_from_slice(&extra);
        let e = s.berth(&all).unwrap_err().stderr;
        assert!(e.contains(why), "{extra:?}: {e}");
    }
    s.ok(&["create", &name]);
    let e = s.berth(&["adopt", &lxc.arg()]).unwrap_err().stderr;
    assert!(e.contains("already exists"), "{e}");
    // An LXC config pointing at a berth volume does not make it LXC's.
    let volume = s.root().join("storage/default").join(&name);
    let other = tmp.path().join("lxc").join("other");
    fs::create_dir_all(&other).unwrap();
    let cfg = format!("lxc.rootfs.path = dir:{}\n", volume.display());
    fs::write(other.join("config"), cfg).unwrap();
    let e = s
        .berth(&["adopt", other.to_str().unwrap(), "--as", "stolen"])
        .unwrap_err()
        .stderr;
    assert!(e.contains("it is berth's already"), "{e}");
    assert!(volume.join("bin").is_dir());
    s.ok(&["destroy", &name]);
    untouched(&s);

    // Stopped, it is adopted; the mapped settings are in its config.
    let out = s.ok(&["adopt", &lxc.arg()]);
    assert!(out.contains("moved"), "{out}");
    assert_runs_as(&s, &name, &name);
    s.ok(&["destroy", &name]);
    drop(s);
    drop(lxc);
    assert_no_leaks(tmp.path());
}

#[test]
fn an_interrupted_adopt_is_rolled_back_or_forward() {
    if !lxc_or_skip() {
        return;
    }
    let tmp = tmp_in_var_tmp("crash");
    let s = Store::new();
    for (i, (step, forward)) in [
        ("journaled", false),
        ("placeholder", false),
        ("made", false),
        ("recorded", true),
    ]
    .into_iter()
    .enumerate()
    {
        let name = unique_name(&format!("adopt-k{i}"));
        let lxc = LxcContainer::create(&tmp.path().join("lxc"), &name, "dir");
        let ino = fs::metadata(lxc.rootfs()).unwrap().ino();
        let at = format!("adopt:{step}");
        let killed = s.berth_env(&[("BERTH_CRASH_AT", &at)], &["adopt", &lxc.arg()]);
        assert!(
            killed.as_ref().is_err_and(|f| f.killed()),
            "{at}: {killed:?}"
        );
        // The next command recovers.
        s.ok(&["doctor", "--fix"]);
        doctor_clean(&s).unwrap_or_else(|e| panic!("{at}: {e}"));
        let volume = s.root().join("storage/default").join(&name);
        if forward {
            assert_eq!(fs::metadata(&volume).unwrap().ino(), ino, "{at}");
            assert!(lxc.dir().join(DISABLED).is_file(), "{at}");
            assert_runs_as(&s, &name, &name);
            s.ok(&["destroy", &name]);
        } else {
            assert_eq!(fs::metadata(lxc.rootfs()).unwrap().ino(), ino, "{at}");
            assert!(lxc.dir().join("config").is_file(), "{at}");
            assert!(!lxc.dir().join(DISABLED).exists(), "{at}");
            assert!(!volume.exists(), "{at}");
            assert!(s.berth(&["info", &name]).is_err(), "{at}");
            // And a retry goes through.
            s.ok(&["adopt", &lxc.arg()]);
            s.ok(&["destroy", &name]);
        }
    }
    drop(s);
    assert_no_leaks(tmp.path());
}

fn zfs(args: &[&str]) -> String {
    cmd::run(&HostRunner, "zfs", args)
        .unwrap_or_else(|e| panic!("zfs {args:?}: {e}"))
        .stdout
}

/// LXC cannot mount zfs-fuse datasets, so the LXC zfs container is made by
/// hand as `lxc-create -B zfs` lays it out: a busybox rootfs in dataset
/// `ZPOOL/lxc/NAME` mounted at `LXCPATH/NAME/rootfs`, and a config naming
/// `zfs:ZPOOL/lxc/NAME`.
#[test]
fn zfs_container_is_cloned_on_its_zpool_or_sent() {
    if !lxc_or_skip() {
        return;
    }
    let tmp = tmp_in_var_tmp("zfs");
    let setup = match berth_tests::pools::zfs::setup(tmp.path()) {
        Ok(s) => s,
        Err(e) => return skip(&e),
    };
    let dataset = setup.pool.options["dataset"].clone();
    let zpool = dataset.split('/').next().unwrap().to_owned();
    let name = unique_name("adopt-z");
    let lxc = LxcContainer::create(&tmp.path().join("lxc"), &name, "dir");
    let lxc_ds = format!("{zpool}/lxc/{name}");
    let staged = lxc.dir().join("rootfs.dir");
    fs::rename(lxc.rootfs(), &staged).unwrap();
    let mountpoint = format!("mountpoint={}", lxc.rootfs().display());
    zfs(&["create", "-p", "-o", &mountpoint, &lxc_ds]);
    let src = format!("{}/.", staged.display());
    cmd::run(
        &HostRunner,
        "cp",
        &["-a", &src, lxc.rootfs().to_str().unwrap()],
    )
    .unwrap();
    fs::remove_dir_all(&staged).unwrap();
    let cfg = lxc.dir().join("config");
    let text = fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        &format!("dir:{}", lxc.rootfs().display()),
        &format!("zfs:{lxc_ds}"),
    );
    fs::write(&cfg, text).unwrap();
    let s = Store::new();
    let e = s.berth(&["adopt", &lxc.arg()]).unwrap_err().stderr;
    assert!(
        e.contains(&format!("no zfs pool is on zpool {zpool}")),
        "{e}"
    );

    let path = setup.pool.path.clone().unwrap();
    let (ds_arg, path_arg) = (dataset.as_str(), path.to_str().unwrap());
    s.ok(&[
        "pool",
        "add",
        "z",
        "-B",
        "zfs",
        "--dataset",
        ds_arg,
        "--path",
        path_arg,
    ]);
    let (out, log) = s.berth_logged(&["adopt", &lxc.arg()]).unwrap();
    assert!(
        out.contains("snapshot, no copy") && out.contains("pool z"),
        "{out}"
    );
    assert!(log.contains("LXC cannot destroy"), "{log}");
    let origin = zfs(&[
        "get",
        "-H",
        "-o",
        "value",
        "origin",
        &format!("{dataset}/{name}"),
    ]);
    assert_eq!(origin.trim(), format!("{lxc_ds}@berth-clone-{name}"));
    assert!(cfg.is_file(), "the LXC container stays");
    assert_runs_as(&s, &name, &name);

    let e = s
        .berth(&[
            "adopt",
            &lxc.arg(),
            "--copy",
            "--as",
            "zc",
            "--pool",
            "default",
        ])
        .unwrap_err()
        .stderr;
    assert!(e.contains("only into a zfs pool"), "{e}");
    let copy = format!("{name}-c");
    let out = s.ok(&["adopt", &lxc.arg(), "--copy", "--as", &copy]);
    assert!(out.contains("copied") && out.contains("pool z"), "{out}");
    let origin = zfs(&[
        "get",
        "-H",
        "-o",
        "value",
        "origin",
        &format!("{dataset}/{copy}"),
    ]);
    assert_eq!(origin.trim(), "-", "a copy has no origin");
    assert_runs_as(&s, &copy, &copy);

    doctor_clean(&s).unwrap();
    s.ok(&["destroy", &name]);
    s.ok(&["destroy", &copy]);
    let snaps = zfs(&["list", "-H", "-t", "snapshot", "-o", "name", "-r", &zpool]);
    assert!(!snaps.contains("berth-"), "snapshots left: {snaps}");
    drop(s);
    drop(lxc);
    drop(setup);
    assert_no_leaks(tmp.path());
}
