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
                let code = match status {
                    berth_bdev::cmd::ExitStatus::Code(c) => c,
                    berth_bdev::cmd::ExitStatus::Signal(_) => -1,
                };
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
        (
            vec!["create", "c", "-B", "floppy"],
            "possible values: dir, btrfs",
        ),
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
    // The run is recorded just before its cgroup is made: give it a moment.
    let mut has_cgroup = false;
    for _ in 0..250 {
        if !cgroups_of("eph").is_empty() {
            has_cgroup = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(has_cgroup, "the running container has no cgroup");
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

// Issue 9: contained damage and papercuts.

impl Root {
    /// Runs `script` with sh, `$B` being this root's berth command; its stdout.
    fn sh(&self, script: &str) -> String {
        let b = format!(
            "{} --root {}",
            env!("CARGO_BIN_EXE_berth"),
            self.path().display()
        );
        let script = format!("B='{b}'; {script}");
        HostRunner
            .run("sh", &[OsStr::new("-c"), OsStr::new(&script)])
            .unwrap_or_else(|e| panic!("sh -c {script:?}: {e}"))
            .stdout
    }

    /// Cuts a record file right after the start of the line holding `key`.
    fn truncate_record(&self, rel: &str, key: &str) {
        let path = self.path().join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text
            .find(&format!("\n{key}"))
            .unwrap_or_else(|| panic!("no {key} in {text}"));
        std::fs::write(&path, &text[..at + 1 + key.len() / 2]).unwrap();
    }
}

#[test]
fn a_truncated_record_is_listed_broken_and_the_rest_works() {
    let r = Root::new();
    r.ok(&["create", "a"]);
    r.ok(&["create", "b"]);
    r.truncate_record("containers/b.toml", "created");

    let ls = r.ok(&["ls"]);
    let row = ls.lines().find(|l| l.starts_with("b ")).unwrap();
    assert!(row.contains("broken"), "{ls}");
    let note = ls.lines().find(|l| l.starts_with("b: broken:")).unwrap();
    assert!(
        note.contains("containers/b.toml") && note.contains("line 4"),
        "{ls}"
    );
    let json: serde_json::Value = serde_json::from_str(&r.ok(&["ls", "--format", "json"])).unwrap();
    let b = json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "b")
        .unwrap();
    assert_eq!(b["state"], "broken");
    assert_eq!(b["broken"]["line"], 4);
    assert!(b["broken"]["path"].as_str().unwrap().ends_with("b.toml"));
    assert!(!b["broken"]["reason"].as_str().unwrap().is_empty());
    let a = json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "a")
        .unwrap();
    assert_eq!(a["state"], "stopped");

    // Healthy containers and pools work as before.
    assert!(r.ok(&["info", "a"]).contains("name:"));
    assert_eq!(r.ok(&["run", "a", "--", "/bin/echo", "ok"]), "ok\n");
    r.ok(&["clone", "a", "a2", "--copy"]);
    r.ok(&["destroy", "a2"]);
    assert!(r.ok(&["pool", "ls"]).contains("default"));

    // The broken one says what is wrong and what to do.
    let err = r.fails(&["info", "b"]);
    assert!(err.contains("b.toml") && err.contains("line 4"), "{err}");
    let err = r.fails(&["destroy", "b"]);
    assert!(err.contains("broken") && err.contains("--force"), "{err}");
    let out = r.sh("$B destroy --force b 2>&1");
    assert!(out.contains("destroyed b"), "{out}");
    assert!(
        out.contains("berth doctor") && out.contains("storage/default/b"),
        "{out}"
    );
    assert!(!r.ok(&["ls"]).contains("b "));
    // Its volume is left for `berth doctor`.
    assert!(r.path().join("storage/default/b").exists());
    r.ok(&["destroy", "a"]);
}

#[test]
fn a_broken_record_that_may_be_a_clone_keeps_its_origin() {
    let r = Root::new();
    r.ok(&["create", "base"]);
    r.ok(&["clone", "base", "ov", "-s", "-B", "overlay"]);
    // Cut before its [origin] section: which container it reads is unknown.
    r.truncate_record("containers/ov.toml", "created");
    let ls = r.ok(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("ov ") && l.contains("broken")),
        "{ls}"
    );
    for args in [
        vec!["destroy", "base"],
        vec!["destroy", "base", "--force"],
        vec!["destroy", "base", "--keep-clones"],
    ] {
        let err = r.fails(&args);
        assert!(
            err.contains("ov") && err.contains("broken"),
            "{args:?}: {err}"
        );
    }
    assert!(r.ok(&["info", "base"]).contains("broken records): ov"));
    let out = r.sh("$B destroy --force ov 2>&1");
    assert!(
        out.contains("destroyed ov") && out.contains("berth doctor"),
        "{out}"
    );
    r.ok(&["destroy", "base"]);
}

#[test]
fn a_broken_pool_is_contained() {
    let r = Root::new();
    let extra = r.path().join("extra");
    r.ok(&[
        "pool",
        "add",
        "extra",
        "-B",
        "dir",
        "--path",
        extra.to_str().unwrap(),
    ]);
    r.ok(&["create", "e", "--pool", "extra"]);
    r.ok(&["create", "d"]);
    std::fs::write(
        r.path().join("pools/extra.toml"),
        "name = \"extra\"\nbackend = ",
    )
    .unwrap();

    let pools = r.ok(&["pool", "ls"]);
    assert!(
        pools
            .lines()
            .any(|l| l.starts_with("extra ") && l.contains("broken")),
        "{pools}"
    );
    assert!(
        pools.contains("extra.toml") && pools.contains("line 2"),
        "{pools}"
    );
    assert!(pools.lines().any(|l| l.starts_with("default ")), "{pools}");
    let json: serde_json::Value =
        serde_json::from_str(&r.ok(&["pool", "ls", "--format", "json"])).unwrap();
    assert_eq!(json[0]["name"], "default");
    assert_eq!(json[1]["state"], "broken");

    let ls = r.ok(&["ls"]);
    let row = ls.lines().find(|l| l.starts_with("e ")).unwrap();
    assert!(row.contains("broken"), "{ls}");
    assert!(ls.contains("its pool \"extra\" is broken"), "{ls}");
    assert!(
        ls.lines()
            .any(|l| l.starts_with("d ") && l.contains("stopped")),
        "{ls}"
    );
    assert_eq!(r.ok(&["run", "d", "--", "/bin/echo", "ok"]), "ok\n");
    r.ok(&["create", "d2"]);

    let err = r.fails(&["destroy", "e"]);
    assert!(err.contains("--force"), "{err}");
    let out = r.sh("$B destroy --force e 2>&1");
    assert!(
        out.contains("destroyed e") && out.contains("extra/e"),
        "{out}"
    );
    r.ok(&["pool", "rm", "extra"]);
    r.ok(&["destroy", "d"]);
    r.ok(&["destroy", "d2"]);
}

#[test]
fn a_vanished_volume_is_missing_and_destroy_removes_the_record() {
    let r = Root::new();
    r.ok(&["create", "gone"]);
    r.ok(&["create", "here"]);
    std::fs::remove_dir_all(r.path().join("storage/default/gone")).unwrap();
    let ls = r.ok(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("gone ") && l.contains("missing")),
        "{ls}"
    );
    assert!(ls.contains("gone: missing"), "{ls}");
    assert!(
        ls.lines()
            .any(|l| l.starts_with("here ") && l.contains("stopped")),
        "{ls}"
    );
    let json: serde_json::Value = serde_json::from_str(&r.ok(&["ls", "--format", "json"])).unwrap();
    assert_eq!(json[0]["name"], "gone");
    assert_eq!(json[0]["state"], "missing");
    let out = r.sh("$B destroy gone 2>&1; echo rc=$?");
    assert!(
        out.contains("destroyed gone") && out.contains("already gone"),
        "{out}"
    );
    assert!(out.ends_with("rc=0\n"), "{out}");
    assert!(!r.ok(&["ls"]).contains("gone"));
    r.ok(&["destroy", "here"]);
}

/// The same on the backends that need no pool set up: image files and layers.
#[test]
fn vanished_volumes_of_other_backends_are_missing_too() {
    let r = Root::new();
    r.ok(&["create", "base"]);
    r.ok(&["create", "lp", "-B", "loop", "--size", "64M"]);
    r.ok(&["create", "q", "-B", "qcow2", "--size", "64M"]);
    r.ok(&["clone", "base", "ov", "-s", "-B", "overlay"]);
    r.ok(&["clone", "base", "au", "-s", "-B", "aufs"]);
    let s = r.path().join("storage");
    std::fs::remove_file(s.join("loop/lp.img")).unwrap();
    std::fs::remove_file(s.join("qcow2/q.qcow2")).unwrap();
    std::fs::remove_dir_all(s.join("overlay/ov")).unwrap();
    std::fs::remove_dir_all(s.join("aufs/au")).unwrap();
    let ls = r.ok(&["ls"]);
    for c in ["lp", "q", "ov", "au"] {
        assert!(
            ls.lines()
                .any(|l| l.starts_with(&format!("{c} ")) && l.contains("missing")),
            "{c}: {ls}"
        );
        let out = r.sh(&format!("$B destroy {c} 2>&1; echo rc=$?"));
        assert!(
            out.contains(&format!("destroyed {c}")) && out.contains("already gone"),
            "{out}"
        );
        assert!(out.ends_with("rc=0\n"), "{out}");
    }
    assert!(r
        .ok(&["ls"])
        .lines()
        .any(|l| l.starts_with("base ") && l.contains("stopped")));
    r.ok(&["destroy", "base"]);
}

#[test]
fn mounting_twice_prints_the_path_again() {
    let r = Root::new();
    r.ok(&["create", "m"]);
    let first = r.ok(&["mount", "m"]);
    let second = r.ok(&["mount", "m"]);
    assert_eq!(first, second);
    let path = PathBuf::from(second.lines().last().unwrap());
    assert!(berth_bdev::mount::is_mountpoint(&path));
    assert_eq!(r.sh("echo \"$($B mount m | tail -1)\""), first);
    r.ok(&["umount", "m"]);
    r.ok(&["destroy", "m"]);
}

#[test]
fn a_closed_stdout_ends_output_quietly() {
    let r = Root::new();
    r.ok(&["create", "c"]);
    let out = r.sh("$B info c 2>&1 | head -1");
    assert_eq!(out, "name:       c\n");
    // The reader is gone before berth writes: every write meets EPIPE.
    let err = r.path().join("stderr");
    for cmd in ["info c", "ls", "ls --format json", "pool ls"] {
        let out = r.sh(&format!(
            "(sleep 0.3; $B {cmd} 2>{e}; echo rc=$? >>{e}) | true; cat {e}",
            e = err.display()
        ));
        assert_eq!(out, "rc=0\n", "berth {cmd}");
        std::fs::remove_file(&err).unwrap();
    }
    r.ok(&["destroy", "c"]);
}

#[test]
fn restore_refusal_names_a_real_way_out() {
    let r = Root::new();
    r.ok(&["create", "base"]);
    r.ok(&["snapshot", "base", "s0"]);
    r.ok(&["clone", "base", "ov", "-s", "-B", "overlay"]);
    let err = r.fails(&["snapshot", "restore", "base", "s0"]);
    assert!(!err.contains("--force"), "{err}");
    assert!(err.contains("ov") && err.contains("berth flatten"), "{err}");
    r.ok(&["destroy", "base", "--force"]);
}

#[test]
fn pools_never_go_where_berth_keeps_its_state() {
    let r = Root::new();
    let root = r.path().to_str().unwrap().to_owned();
    let parent = r.path().parent().unwrap().to_str().unwrap().to_owned();
    for (path, want) in [
        ("/".to_owned(), "filesystem root"),
        (root.clone(), "state root"),
        (format!("{root}/"), "state root"),
        (parent, "holds berth's state root"),
        (format!("{root}/containers"), "own directory"),
        (format!("{root}/storage/default"), "\"default\""),
    ] {
        let err = r.fails(&["pool", "add", "p", "-B", "dir", "--path", &path]);
        assert!(err.contains(want), "pool at {path}: {err}");
    }
    let pools = r.ok(&["pool", "ls"]);
    assert_eq!(pools.lines().count(), 2, "{pools}");
}

/// Issue 9, never lose data: aufs through unionfs-fuse cannot store xattrs, so a
/// snapshot clone, a copy or a create that would put a tree with xattrs there is
/// refused, naming the file, the attribute and the way out; `--drop-xattrs`
/// copies anyway and says what it dropped.
#[test]
fn xattrs_are_never_dropped_silently() {
    if std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\taufs\n")) {
        eprintln!("the kernel has aufs, which keeps xattrs");
        return;
    }
    let r = Root::new();
    let tree = r.path().join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    let ping = tree.join("bin/ping");
    std::fs::write(&ping, b"ping").unwrap();
    berth_bdev::cmd::run(
        &HostRunner,
        "setfattr",
        &["-n", "user.berth", "-v", "kept", &ping.to_string_lossy()],
    )
    .unwrap();
    let tree = tree.to_str().unwrap();
    r.ok(&["create", "deb", "--from-dir", tree]);
    for args in [
        &["clone", "deb", "k", "--snapshot", "-B", "aufs"][..],
        &["clone", "deb", "k", "--copy", "-B", "aufs"][..],
        &["create", "k", "-B", "aufs", "--from-dir", tree][..],
    ] {
        let err = r.fails(args);
        assert!(
            err.contains("bin/ping") && err.contains("user.berth") && err.contains("--drop-xattrs"),
            "berth {args:?}: {err}"
        );
    }
    let ls = r.ok(&["ls"]);
    assert!(
        !ls.lines().any(|l| l.split_whitespace().next() == Some("k")),
        "{ls}"
    );
    let mut all: Vec<&OsStr> = vec![OsStr::new("--root"), r.path().as_os_str()];
    all.extend(
        ["clone", "deb", "k", "--copy", "-B", "aufs", "--drop-xattrs"]
            .iter()
            .map(OsStr::new),
    );
    let out = HostRunner.run(env!("CARGO_BIN_EXE_berth"), &all).unwrap();
    assert!(
        out.stderr.contains("dropped 1 xattr ") && out.stderr.contains("user.berth"),
        "{}",
        out.stderr
    );
    r.ok(&["destroy", "k"]);
    r.ok(&["destroy", "deb"]);
}

#[test]
fn a_size_too_small_for_the_filesystem_reads_well() {
    let r = Root::new();
    let err = r.fails(&["create", "tiny", "-B", "loop", "--size", "1M"]);
    assert!(
        err.starts_with("berth: error: cannot create tiny (volume loop:")
            && err.contains("needs at least")
            && err.contains("--size"),
        "{err}"
    );
    assert!(
        !err.contains("mkfs") && !err.contains("invalid volume spec"),
        "{err}"
    );
    assert!(!r.ok(&["ls"]).contains("tiny"));
    assert!(!r.path().join("storage/loop/tiny.img").exists());
}
