//! Properties of the declared capabilities beyond the operations themselves:
//! blocks shared by clones, enforced sizes, and the tools `probe` looks for.

use std::fs;

use berth_bdev::generic::with_mounted;
use berth_bdev::BdevError;

use super::{create, destroy};
use crate::harness::{probe_with_path, write_incompressible, Harness, Outcome};

/// Bytes the pool's backing store holds: the zpool's `used`, the thin pool's
/// mapped data, or the used blocks of the filesystem under the pool directory;
/// read once it stops changing (zfs accounts at its next transaction group).
fn pool_used(h: &Harness) -> u64 {
    let read = || -> u64 {
        rustix::fs::sync();
        let p = &h.pool;
        if let Some(ds) = p.options.get("dataset") {
            let zpool = ds.split('/').next().unwrap_or(ds);
            let out = berth_bdev::cmd::run(
                &berth_bdev::cmd::HostRunner,
                "zfs",
                &["get", "-Hp", "-o", "value", "used", zpool],
            )
            .expect("zfs get used");
            return out.stdout.trim().parse().expect("zfs used");
        }
        if let (Some(vg), Some(tp)) = (p.options.get("vg"), p.options.get("thinpool")) {
            let out = berth_bdev::cmd::run(
                &berth_bdev::cmd::HostRunner,
                "lvs",
                &[
                    "--reportformat",
                    "json",
                    "-o",
                    "lv_name,vg_name,lv_size,data_percent,origin,pool_lv,lv_attr",
                    "--units",
                    "b",
                    "--nosuffix",
                    &format!("{vg}/{tp}"),
                ],
            )
            .expect("lvs");
            let lvs = berth_backends::lvm::parse_lvs(&out.stdout).expect("parse lvs");
            return lvs[0].allocated().expect("thin pool data_percent");
        }
        let dir = p.path.as_deref().expect("pool path");
        let st = rustix::fs::statvfs(dir).expect("statvfs pool");
        (st.f_blocks - st.f_bfree) * st.f_frsize
    };
    let mut last = read();
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Where `copy_on_write` is declared, a snapshot clone of a volume holding 64 MiB
/// of incompressible data adds less than 1 MiB to the pool's backing store.
pub fn copy_on_write(h: &Harness) -> Outcome {
    let caps = h.backend.caps();
    if !caps.copy_on_write {
        return Outcome::NotApplicable("clones do not share blocks".into());
    }
    assert!(caps.snapshot_clone, "copy_on_write without snapshot_clone");
    let v = create(h, "cow");
    with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), false, |root| {
        let p = root.join("big");
        let mut f = fs::File::create(&p).map_err(BdevError::io("create", &p))?;
        write_incompressible(&mut f, 64, 11).map_err(BdevError::io("write", &p))?;
        f.sync_all().map_err(BdevError::io("sync", &p))
    })
    .expect("write 64 MiB");
    let before = pool_used(h);
    let c = h.clone_of(&v, "cow-clone");
    let after = pool_used(h);
    assert!(
        after < before + (1 << 20),
        "a snapshot clone of 64 MiB added {} bytes to the pool ({before} -> {after})",
        after.saturating_sub(before)
    );
    let len = with_mounted(h.backend.as_ref(), &c, &h.scratch("mnt"), true, |root| {
        fs::metadata(root.join("big"))
            .map(|m| m.len())
            .map_err(BdevError::io("stat", root.join("big")))
    });
    assert_eq!(len.expect("clone's copy"), 64 << 20);
    destroy(h, &c);
    destroy(h, &v);
    Outcome::Passed
}

/// Where `size_limit` is declared, writing past a volume's size fails with
/// ENOSPC or EDQUOT, near the limit and not before most of it is used.
pub fn size_limit(h: &Harness) -> Outcome {
    if !h.backend.caps().size_limit {
        return Outcome::NotApplicable("volumes have no enforced size".into());
    }
    let limit: u64 = 256 << 20;
    let v = create(h, "lim");
    let (written, errno) = with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), false, |root| {
        let mut written: u64 = 0;
        // Twice the limit at most, so a limit that is not enforced ends the loop.
        for i in 0..((2 * limit) >> 22) {
            let p = root.join(format!("f{i}"));
            let r = fs::File::create(&p).and_then(|mut f| {
                write_incompressible(&mut f, 4, i)?;
                f.sync_all()
            });
            match r {
                Ok(()) => written += 4 << 20,
                Err(e) => return Ok((written, e.raw_os_error())),
            }
        }
        Ok((written, None))
    })
    .expect("fill the volume");
    assert!(
        errno == Some(libc::ENOSPC) || errno == Some(libc::EDQUOT),
        "writing past {limit} bytes ended with {errno:?} after {written} bytes"
    );
    assert!(
        written >= limit / 2 && written <= limit + (16 << 20),
        "{written} bytes fit in a volume of {limit}"
    );
    destroy(h, &v);
    Outcome::Passed
}

/// `probe` checks for every tool in `caps.tools` and names the one missing, and
/// checks for none beyond them: run in a child whose PATH holds links to all
/// the declared tools but one, then to all of them.
pub fn tools(h: &Harness) -> Outcome {
    let declared = h.backend.caps().tools;
    if declared.is_empty() {
        return Outcome::NotApplicable("needs no host tool".into());
    }
    let host_path = std::env::var_os("PATH").unwrap_or_default();
    let find = |t: &str| {
        std::env::split_paths(&host_path)
            .map(|d| d.join(t))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{t} is not on this host's PATH"))
    };
    let links = |name: &str, without: Option<&str>| {
        let dir = h.scratch(name);
        for t in declared.iter().filter(|t| Some(t.prog) != without) {
            std::os::unix::fs::symlink(find(t.prog), dir.join(t.prog)).expect("link a tool");
        }
        dir
    };
    for missing in declared.iter().map(|t| t.prog) {
        let path = links(&format!("path-without-{missing}"), Some(missing));
        let e = probe_with_path(&h.pool, &path)
            .expect_err(&format!("probe passed without {missing} on PATH"));
        assert!(
            e.contains(missing) && e.contains("not installed"),
            "probe without {missing}: {e}"
        );
    }
    let all = links("path-with-all", None);
    if let Err(e) = probe_with_path(&h.pool, &all) {
        assert!(
            !e.contains("not installed"),
            "probe wants a tool caps.tools does not declare: {e}"
        );
    }
    Outcome::Passed
}
