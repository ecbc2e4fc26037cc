//! lifecycle: create, snapshot clone, copy, snapshot, restore, mount, start,
//! destroy — berth's whole command next to the backend's primitive, alternating
//! run by run.

use std::time::{Duration, Instant};

use berth_core::ops::lifecycle::bench::bench_run;
use berth_core::Berth;

use super::{Ctx, Pair};
use crate::error::Result;
use crate::model::{op, Measurement, Primitive, Suite, Unit};
use crate::pools::NativeOp;
use crate::stats::Summary;

pub fn run(cx: &Ctx<'_>, out: &mut Vec<Measurement>) -> Result<()> {
    let runs = cx.plan.runs;
    let rootfs = cx.rootfs.to_string_lossy().into_owned();
    let pool = cx.pool().to_owned();
    let row = |o: &str| cx.row(Suite::Lifecycle, o, Unit::Ms);
    let mut drop_xattrs: Vec<&str> = Vec::new();
    if cx.caps.lacks_xattrs {
        drop_xattrs.push("--drop-xattrs");
    }

    let mut create = Pair::default();
    let mut snap_clone = Pair::default();
    let mut copy = Pair::default();
    let mut snapshot = Pair::default();
    let mut restore = Pair::default();
    let mut mount = Pair::default();
    let mut destroy = Pair::default();
    let mut floor = Pair::default();
    for r in 0..runs {
        cx.events
            .step(&format!("{pool}: lifecycle run {}/{runs}", r + 1));
        let made = cx.name(&format!("new{r}"));
        let mut args = vec!["create", &made, "--from-dir", &rootfs, "--pool", &pool];
        args.extend(&drop_xattrs);
        create.berth(cx.berth(&args));
        create.native(cx.native(NativeOp::Create, &format!("new{r}")));
        let _ = cx.destroy(&made);

        let copied = cx.name(&format!("copy{r}"));
        copy.berth(cx.berth(&["clone", &cx.src, &copied, "--copy", "--pool", &pool]));
        copy.native(cx.native(NativeOp::Copy, &format!("copy{r}")));
        let _ = cx.destroy(&copied);

        let snap = format!("s{r}");
        snapshot.berth(cx.berth(&["snapshot", &cx.src, &snap]));
        snapshot.native(cx.native(NativeOp::Snapshot, &format!("snap{r}")));
        restore.berth(cx.berth(&["snapshot", "restore", &cx.src, &snap]));
        let _ = cx.berth_quiet(&["snapshot", "rm", &cx.src, &snap]);

        mount.berth(time_mount(cx));
        mount.native(Some((
            "the backend's mount + unmount in-process, + 2 × exec /bin/true".to_owned(),
            floor_mount(cx),
        )));

        floor.berth(berth_floor(cx, r));
        floor.native(Some((
            "/bin/true".to_owned(),
            cx.check()
                .and_then(|()| crate::session::timed("/bin/true", &[])),
        )));

        if cx.caps.snapshot_clone {
            let clone = cx.name(&format!("sc{r}"));
            let id = format!("sc{r}");
            snap_clone.berth(cx.berth(&["clone", &cx.src, &clone, "--snapshot", "--pool", &pool]));
            snap_clone.native(cx.native(NativeOp::SnapshotClone, &id));
            destroy.berth(cx.berth(&["destroy", &clone]));
            destroy.native(cx.native(NativeOp::DestroyClone, &id));
        }
        cx.check()?;
    }
    out.push(create.into_row(row(op::CREATE)));
    let mut sc = snap_clone.into_row(row(op::SNAPSHOT_CLONE));
    let mut de = destroy.into_row(row(op::DESTROY));
    if !cx.caps.snapshot_clone {
        let why = cx
            .caps
            .snapshot_clone_refusal
            .unwrap_or("the backend has no snapshot clone");
        sc.note = Some(why.to_owned());
        de.note = Some("of a snapshot clone: none (see snapshot clone)".to_owned());
    }
    out.push(sc);
    out.push(copy.into_row(row(op::COPY)));
    out.push(snapshot.into_row(row(op::SNAPSHOT)));
    out.push(restore.into_row(row(op::RESTORE)));
    out.push(mount.into_row(row(op::MOUNT)));
    out.push(start(cx));
    out.push(de);
    out.push(floor.into_row(row(op::FLOOR)));
    Ok(())
}

/// The least a state-changing berth command costs on this host: starting the
/// berth binary (`berth --version`), plus what its journal and record cost
/// (two atomic writes, each a temp file, fsync, rename and directory fsync,
/// and the journal entry's removal), timed in this process on the store's
/// filesystem. A primitive cheaper than this cannot be matched within 1.2×.
fn berth_floor(cx: &Ctx<'_>, r: usize) -> Result<Duration> {
    let mut d = cx.berth(&["--version"])?;
    let entry = cx.root().join(format!("bench-floor-journal-{r}.toml"));
    let record = cx.root().join(format!("bench-floor-record-{r}.toml"));
    let text = [b'x'; 512];
    let t = Instant::now();
    berth_bdev::fsutil::atomic_write(&entry, &text)?;
    berth_bdev::fsutil::atomic_write(&record, &text)?;
    std::fs::remove_file(&entry).map_err(berth_bdev::BdevError::io("remove", &entry))?;
    d += t.elapsed();
    std::fs::remove_file(&record).map_err(berth_bdev::BdevError::io("remove", &record))?;
    Ok(d)
}

/// `berth mount` + `berth umount`, two whole commands.
fn time_mount(cx: &Ctx<'_>) -> Result<Duration> {
    let up = cx.berth(&["mount", &cx.src])?;
    let t = Instant::now();
    cx.umount(&cx.src)?;
    Ok(up + t.elapsed())
}

/// The backend's own mount and unmount of the source volume, in this process.
fn floor_mount(cx: &Ctx<'_>) -> Result<Duration> {
    cx.check()?;
    let b = Berth::open(cx.root(), false)?;
    let c = b.store().container(&cx.src)?;
    let backend = b.backend_of(&c)?;
    let at = cx.session.dir.join("floor-mount");
    berth_bdev::fsutil::create_dir_all(&at)?;
    crate::session::settle(cx.plan.cold)?;
    let t = Instant::now();
    let guard = backend.mount(&c.volume, &at, false)?;
    guard.release()?;
    let mut d = t.elapsed();
    let _ = std::fs::remove_dir(&at);
    // berth's figure is two commands: the floor pays two process starts too.
    for _ in 0..2 {
        d += crate::session::timed("/bin/true", &[])?;
    }
    Ok(d)
}

/// `berth run SRC -- /bin/true` next to its floor (the backend's mount,
/// `unshare … chroot ROOTFS /bin/true`, unmount), as `berth bench run` does.
fn start(cx: &Ctx<'_>) -> Measurement {
    let mut m = cx.row(Suite::Lifecycle, op::START, Unit::Ms);
    cx.events.step(&format!("{}: start-to-exit", cx.pool()));
    match bench_run(cx.root(), &cx.src, cx.plan.runs, &cx.session.berth) {
        Ok(steps) => {
            let summary = |tool: &str| {
                steps.iter().find(|s| s.tool == tool).map(|s| Summary {
                    median: s.median_ms,
                    min: s.min_ms,
                    max: s.max_ms,
                    runs: s.runs,
                })
            };
            let floor = steps.iter().find(|s| s.tool == "floor");
            let primitive = floor.zip(summary("floor")).map(|(f, value)| Primitive {
                command: f.step.to_owned(),
                value,
            });
            m = m.with(summary("berth"), primitive);
        }
        Err(e) => m.error = Some(e.to_string()),
    }
    m
}
