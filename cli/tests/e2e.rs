//! The `berth` binary end to end, as root on the real kernel: the README's main job,
//! dependency refusal, mount/umount, exit codes and bad input.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use berth_bdev::cmd::{CmdError, HostRunner, Runner};

struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        Root {
            dir: tempfile::Builder::new()
                .prefix("berth-e2e-")
                .tempdir_in("/var/tmp")
                .unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs berth; Ok(stdout) on success, Err((exit code, stderr)) otherwise.
    fn berth(&self, args: &[&str]) -> Result<String, (i32, String)> {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--root"), self.path().as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        match HostRunner.run(env!("CARGO_BIN_EXE_berth"), &all) {
            Ok(out) => Ok(out.stdout),
            Err(CmdError::Failed { status, stderr, .. }) => {
                let code = status
                    .rsplit(' ')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(-1);
                Err((code, stderr))
            }
            Err(e) => panic!("berth did not run: {e}"),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.berth(args)
            .unwrap_or_else(|(code, err)| panic!("berth {args:?} failed ({code}): {err}"))
    }

    fn fails(&self, args: &[&str]) -> String {
        match self.berth(args) {
            Ok(out) => panic!("berth {args:?} should fail, printed: {out}"),
            Err((code, err)) => {
                assert_ne!(code, 0);
                assert!(!err.contains("panicked"), "berth {args:?} panicked: {err}");
                err
            }
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let leaked = berth_bdev::mount::mounts_under(self.path());
        for m in &leaked {
            let _ = berth_bdev::mount::unmount_detach(m);
        }
        if !std::thread::panicking() {
            assert!(leaked.is_empty(), "leaked mounts: {leaked:?}");
        }
    }
}

#[test]
fn readme_main_job_create_clone_run() {
    let r = Root::new();
    r.ok(&["create", "c1"]);
    r.ok(&["clone", "c1", "c2", "--copy"]);
    let out = r.ok(&["run", "c2", "--", "/bin/sh", "-c", "hostname; echo ok"]);
    assert_eq!(out, "c2\nok\n");

    // The exit status of the command is berth's.
    assert_eq!(
        r.berth(&["run", "c2", "--", "/bin/sh", "-c", "exit 7"])
            .unwrap_err()
            .0,
        7
    );

    // A copy does not depend on its origin: c1 can go.
    r.ok(&["destroy", "c1"]);
    let ls: serde_json::Value = serde_json::from_str(&r.ok(&["ls", "--format", "json"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["name"], "c2");
    assert_eq!(ls[0]["origin"], "c1");
    r.ok(&["destroy", "c2"]);
}

#[test]
fn snapshot_clone_pins_its_origin() {
    let r = Root::new();
    r.ok(&["create", "base"]);
    // dir cannot share data with dir: refused, with the alternatives named.
    let err = r.fails(&["clone", "base", "x", "--snapshot"]);
    assert!(
        err.contains("-B overlay") && err.contains("--copy"),
        "{err}"
    );
    r.ok(&["clone", "base", "ov", "--snapshot", "-B", "overlay"]);
    let err = r.fails(&["destroy", "base"]);
    assert!(err.contains("ov"), "{err}");
    let info = r.ok(&["info", "ov"]);
    assert!(info.contains("depends on it"), "{info}");
    // The origin is read-only while the overlay clone reads it.
    let err = r
        .berth(&["run", "base", "--", "/bin/sh", "-c", "touch /x"])
        .unwrap_err();
    assert_ne!(err.0, 0);
    let out = r.ok(&["destroy", "base", "--force"]);
    assert_eq!(out, "destroyed ov\ndestroyed base\n");
}

#[test]
fn mount_prints_path_and_umount_releases() {
    let r = Root::new();
    r.ok(&["create", "m1"]);
    let out = r.ok(&["mount", "m1"]);
    let path = PathBuf::from(out.lines().last().unwrap());
    assert!(path.join("bin").exists());
    assert!(berth_bdev::mount::is_mountpoint(&path));
    let err = r.fails(&["destroy", "m1"]);
    assert!(err.contains("mounted"), "{err}");
    r.ok(&["umount", "m1"]);
    assert!(!berth_bdev::mount::is_mountpoint(&path));
    r.ok(&["destroy", "m1"]);
}

#[test]
fn snapshots_restore_and_remove() {
    let r = Root::new();
    r.ok(&["create", "s1"]);
    r.ok(&["run", "s1", "--", "/bin/sh", "-c", "echo one > /state"]);
    r.ok(&["snapshot", "s1"]);
    r.ok(&["snapshot", "s1", "named"]);
    r.ok(&["run", "s1", "--", "/bin/sh", "-c", "echo two > /state"]);
    let ls = r.ok(&["snapshot", "ls", "s1"]);
    assert!(ls.contains("snap0") && ls.contains("named"), "{ls}");
    r.ok(&["snapshot", "restore", "s1", "snap0"]);
    assert_eq!(r.ok(&["run", "s1", "--", "/bin/cat", "/state"]), "one\n");
    let err = r.fails(&["destroy", "s1"]);
    assert!(err.contains("--with-snapshots"), "{err}");
    r.ok(&["snapshot", "rm", "s1", "named"]);
    r.ok(&["destroy", "s1", "-s"]);
}

#[test]
fn bad_input_gets_clear_errors() {
    let r = Root::new();
    for (args, want) in [
        (vec!["create", "a/b"], "'/'"),
        (vec!["create", "a..b"], ".."),
        (vec!["create", &"x".repeat(65)], "64"),
        (vec!["create", "--", "-rf"], "'-'"),
        (vec!["run", "nope", "--", "/bin/true"], "does not exist"),
        (
            vec!["create", "c", "--pool", "nope"],
            "pool \"nope\" does not exist",
        ),
        (vec!["create", "c", "-B", "floppy"], "unknown backend"),
        (
            vec!["create", "c", "--from-dir", "/does/not/exist"],
            "/does/not/exist",
        ),
        (
            vec!["pool", "add", "p", "-B", "btrfs", "--path", "relative"],
            "absolute",
        ),
        (vec!["snapshot", "restore", "nope", "s"], "does not exist"),
    ] {
        let err = r.fails(&args);
        assert!(
            err.contains(want),
            "berth {args:?}: wanted {want:?} in: {err}"
        );
    }
    r.ok(&["create", "c"]);
    let err = r.fails(&["create", "c"]);
    assert!(err.contains("already exists"), "{err}");
    let err = r.fails(&["run", "c", "--", "/bin/no-such-command"]);
    assert!(err.contains("no-such-command"), "{err}");
    r.ok(&["destroy", "c"]);
}

/// LXC once deleted users' home directories through a symlink inside a rootfs.
#[test]
fn destroy_never_follows_symlinks_out_of_the_rootfs() {
    let r = Root::new();
    let victim = tempfile::Builder::new()
        .prefix("berth-victim-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::write(victim.path().join("precious"), "keep me").unwrap();

    r.ok(&["create", "c1"]);
    let at = PathBuf::from(r.ok(&["mount", "c1"]).lines().last().unwrap());
    std::os::unix::fs::symlink(victim.path(), at.join("root/victim-home")).unwrap();
    std::os::unix::fs::symlink(victim.path().join("precious"), at.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", at.join("up")).unwrap();
    r.ok(&["umount", "c1"]);
    r.ok(&["destroy", "c1"]);
    assert_eq!(
        std::fs::read_to_string(victim.path().join("precious")).unwrap(),
        "keep me"
    );

    // A volume directory swapped for a symlink: only the link goes.
    r.ok(&["create", "c2"]);
    let vol = r.path().join("storage/default/c2");
    std::fs::rename(&vol, r.path().join("c2-moved")).unwrap();
    std::os::unix::fs::symlink(victim.path(), &vol).unwrap();
    let _ = r.berth(&["destroy", "c2"]);
    assert_eq!(
        std::fs::read_to_string(victim.path().join("precious")).unwrap(),
        "keep me"
    );
}

#[test]
fn flatten_frees_the_origin() {
    let r = Root::new();
    r.ok(&["create", "base"]);
    r.ok(&[
        "run",
        "base",
        "--",
        "/bin/sh",
        "-c",
        "echo from-base > /marker",
    ]);
    r.ok(&["clone", "base", "ov", "-s", "-B", "overlay"]);
    r.ok(&["run", "ov", "--", "/bin/sh", "-c", "echo mine > /mine"]);
    assert!(r.fails(&["destroy", "base"]).contains("ov"));
    r.ok(&["flatten", "ov"]);
    r.ok(&["destroy", "base"]);
    assert_eq!(
        r.ok(&["run", "ov", "--", "/bin/cat", "/marker", "/mine"]),
        "from-base\nmine\n"
    );
    let info = r.ok(&["info", "ov"]);
    assert!(info.contains("independent"), "{info}");
    r.ok(&["destroy", "ov"]);
}

/// The cgroup directories named `berth/NAME`, in every hierarchy.
fn cgroups_of(name: &str) -> Vec<PathBuf> {
    let want = Path::new("berth").join(name);
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) && depth < 6 {
                if e.path().ends_with(&want) {
                    found.push(e.path());
                }
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found
}

/// A berth killed mid-run leaves a mount behind; the next berth command cleans it
/// up, and destroys the container if it was ephemeral.
#[test]
fn crash_leftovers_are_cleaned_by_the_next_command() {
    let r = Root::new();
    r.ok(&["create", "base"]);
    r.ok(&["clone", "base", "eph", "--ephemeral", "-B", "overlay"]);
    let berth = env!("CARGO_BIN_EXE_berth");
    let root = r.path().display().to_string();
    let script =
        format!("{berth} --root {root} run eph -- /bin/sleep 100 >/dev/null 2>&1 & echo $!");
    let pid = HostRunner
        .run("sh", &[OsStr::new("-c"), OsStr::new(&script)])
        .unwrap()
        .stdout
        .trim()
        .to_owned();
    let mnt = r.path().join("mnt/eph");
    let mut mounted = false;
    for _ in 0..200 {
        if berth_bdev::mount::is_mountpoint(&mnt) && r.ok(&["ls"]).contains("running") {
            mounted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(mounted, "the run never started");
    assert!(
        !cgroups_of("eph").is_empty(),
        "the running container has no cgroup"
    );
    HostRunner
        .run("kill", &[OsStr::new("-9"), OsStr::new(&pid)])
        .unwrap();
    // Wait for the killed berth (and its container) to be gone.
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Any command that takes the lock cleans up.
    r.ok(&[
        "pool",
        "add",
        "extra",
        "-B",
        "dir",
        "--path",
        &format!("{root}/extra"),
    ]);
    assert!(!berth_bdev::mount::is_mountpoint(&mnt), "stale mount left");
    assert!(
        !r.ok(&["ls"]).contains("eph"),
        "ephemeral container survived the crash"
    );
    let left = cgroups_of("eph");
    assert!(left.is_empty(), "cgroups left after the crash: {left:?}");

    // A berth that died after mounting but before recording the mount.
    let at = PathBuf::from(r.ok(&["mount", "base"]).lines().last().unwrap());
    std::fs::remove_file(r.path().join("run/base.toml")).unwrap();
    r.ok(&["pool", "rm", "extra"]);
    assert!(
        !berth_bdev::mount::is_mountpoint(&at),
        "unrecorded mount left"
    );
    r.ok(&["destroy", "base"]);
}

#[test]
fn block_backed_volume_resizes_and_aufs_reports_its_mechanism() {
    let r = Root::new();
    r.ok(&["create", "img", "-B", "loop", "--size", "300M"]);
    let df = |r: &Root| {
        let out = r.ok(&["run", "img", "--", "/bin/df", "-k", "/"]);
        out.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = df(&r);
    let err = r.fails(&["resize", "img", "100M"]);
    assert!(err.contains("grow"), "{err}");
    r.ok(&["resize", "img", "600M"]);
    let after = df(&r);
    assert!(
        after > before + 200 * 1024,
        "df {before} KiB -> {after} KiB"
    );
    let err = r.fails(&["resize", "nope", "1G"]);
    assert!(err.contains("does not exist"), "{err}");

    r.ok(&["create", "base"]);
    r.ok(&["clone", "base", "au", "-s", "-B", "aufs"]);
    let info = r.ok(&["info", "au"]);
    assert!(
        info.contains("unionfs-fuse") || info.contains("kernel aufs"),
        "{info}"
    );
    assert_eq!(
        r.ok(&["run", "au", "--", "/bin/sh", "-c", "echo hi > /x; cat /x"]),
        "hi\n"
    );
    r.ok(&["destroy", "base", "--force"]);
    r.ok(&["destroy", "img"]);
    let err = r.fails(&["resize", "base", "1G"]);
    assert!(err.contains("does not exist"), "{err}");
}
