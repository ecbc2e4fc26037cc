//! Privileged: unprivileged (`--userns`) containers through berth's own run
//! path, on dir, btrfs, overlay, loop and qcow2. Inside, the container's
//! files belong to root and root can use them; container root is an
//! unprivileged host id from /etc/subuid and cannot read a file owned by an
//! id outside its map. Where the filesystem can be idmapped nothing changes
//! on disk; where it cannot (overlay) the owners are shifted once and the
//! shift is recorded.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use berth_bdev::generic::with_mounted;
use berth_bdev::BdevError;
use berth_core::ops::run::run;
use berth_core::ops::{DestroyRequest, RunRequest};
use berth_core::userns::{find_range, SUBID_USER};
use berth_core::Berth;
use berth_tests::harness::{harness, Harness, Setup};
use berth_tests::{ops, pools};

/// An owner no container map covers: files it owns are the host's.
const HOST_ONLY_UID: u32 = 4_000_000;

/// What the container checks; it writes "ok" to /result only if all pass.
const SCRIPT: &str = r#"set -e
test "$(id -u)" = 0
test "$(stat -c %u /etc/passwd)" = 0
echo made > /made-inside
chmod 0644 /made-inside
if cat /secret >/dev/null 2>&1; then echo "read the host-only file"; exit 3; fi
cat /proc/self/uid_map > /uid_map
echo ok > /result
"#;

fn on_disk<T>(b: &Berth, name: &str, f: impl FnOnce(&Path) -> T) -> T {
    let c = b.store().container(name).unwrap();
    let backend = b.backend_of(&c).unwrap();
    let mut out = None;
    with_mounted(backend.as_ref(), &c.volume, &b.scratch(), false, |root| {
        out = Some(f(root));
        Ok::<(), BdevError>(())
    })
    .unwrap();
    out.unwrap()
}

fn berth_range() -> u32 {
    let text = fs::read_to_string("/etc/subuid").unwrap();
    find_range(&text, SUBID_USER).unwrap().0
}

fn userns_run(h: &Harness, name: &str, expect_idmapped: bool) {
    let state = h.scratch("state");
    {
        let b = ops::berth(h);
        ops::create(&b, h, name);
        on_disk(&b, name, |root| {
            let secret = root.join("secret");
            fs::write(&secret, "host only\n").unwrap();
            fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&secret, Some(HOST_ONLY_UID), Some(HOST_ONLY_UID)).unwrap();
        });
    }
    let req = || RunRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()],
        overrides: vec![("userns".into(), "true".into())],
        ..RunRequest::default()
    };
    let status = run(&state, name, req()).unwrap();
    assert!(status.success(), "container checks failed: {status:?}");

    let b = Berth::open(&state, true).unwrap();
    let base = berth_range();
    let shifted = b.store().container(name).unwrap().run.shifted;
    on_disk(&b, name, |root| {
        assert_eq!(fs::read_to_string(root.join("result")).unwrap(), "ok\n");
        let map = fs::read_to_string(root.join("uid_map")).unwrap();
        let fields: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(fields, ["0", &base.to_string(), "65536"], "{map}");
        let passwd = fs::metadata(root.join("etc/passwd")).unwrap().uid();
        let made = fs::metadata(root.join("made-inside")).unwrap().uid();
        let secret = fs::metadata(root.join("secret")).unwrap().uid();
        assert_eq!(secret, HOST_ONLY_UID, "an id outside the map was shifted");
        if expect_idmapped {
            // Idmapped: nothing on disk changed, and container root's files
            // are stored as uid 0 of the volume.
            assert_eq!(shifted, None);
            assert_eq!((passwd, made), (0, 0));
        } else {
            let s = shifted.expect("the shift is recorded");
            assert_eq!(s.uid, base);
            assert_eq!((passwd, made), (base, base));
        }
    });
    drop(b);
    // A second run takes the recorded path (idmap, or the shifted volume as is).
    let status = run(&state, name, req()).unwrap();
    assert!(status.success(), "second run: {status:?}");
    if !expect_idmapped {
        // Without --userns the owners are shifted back first.
        let plain = RunRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "test $(stat -c %u /etc/passwd) = 0".into(),
            ],
            ..RunRequest::default()
        };
        assert!(run(&state, name, plain).unwrap().success());
        let b = Berth::open(&state, true).unwrap();
        assert_eq!(b.store().container(name).unwrap().run.shifted, None);
    }
    let b = Berth::open(&state, true).unwrap();
    b.destroy(name, DestroyRequest::default()).unwrap();
    assert_no_cgroup(name);
}

/// No `berth/<name>` cgroup is left in any hierarchy.
fn assert_no_cgroup(name: &str) {
    let mut left = Vec::new();
    let mut stack = vec![Path::new("/sys/fs/cgroup").to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if p.ends_with(Path::new("berth").join(name)) {
                left.push(p.clone());
            }
            stack.push(p);
        }
    }
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// Container names differ per test: cgroups are per host, not per store.
fn case(setup: fn(&Path) -> Result<Setup, String>, name: &str, expect_idmapped: bool) {
    if let Some(h) = harness(setup) {
        userns_run(&h, name, expect_idmapped);
    }
}

#[test]
fn userns_dir() {
    case(pools::dir::setup, "userns-dir", true);
}

#[test]
fn userns_btrfs() {
    case(pools::btrfs::setup, "userns-btrfs", true);
}

#[test]
fn userns_loop() {
    case(pools::r#loop::setup, "userns-loop", true);
}

#[test]
fn userns_qcow2() {
    case(pools::qcow2::setup, "userns-qcow2", true);
}

/// overlay cannot be idmapped on top (EINVAL): owners are shifted on disk.
#[test]
fn userns_overlay_shifts_owners() {
    case(pools::overlay::setup, "userns-overlay", false);
}
