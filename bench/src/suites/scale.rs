//! scale: 1 → N snapshot clones of one container, the time of each as N
//! grows and the start time of the Nth; then clone and copy of a rootfs 10×
//! larger next to the same on the 1× rootfs, to show what is O(1) and what grows.

use std::path::{Path, PathBuf};

use super::{Ctx, Pair};
use crate::error::Result;
use crate::model::{op, Measurement, Primitive, ScalePoint, Suite, Unit};
use crate::stats::Summary;

/// How many of the first and of the last clones the summary row compares.
const EDGE: usize = 5;

pub fn run(
    cx: &Ctx<'_>,
    big_rootfs: &dyn Fn() -> Result<PathBuf>,
    out: &mut Vec<Measurement>,
    points: &mut Vec<ScalePoint>,
) -> Result<()> {
    let n = cx.clones();
    let (_, note) = cx.clone_mode();
    let mut names = Vec::new();
    let mut times = Vec::new();
    let mut failed = None;
    for i in 1..=n {
        if i % 10 == 1 {
            cx.events.step(&format!("{}: clone {i}/{n}", cx.pool()));
        }
        let name = cx.name(&format!("n{i}"));
        match cx.clone_src(&cx.src, &name) {
            Ok(d) => {
                names.push(name);
                times.push(d);
                points.push(ScalePoint {
                    backend: cx.backend().to_owned(),
                    pool: cx.pool().to_owned(),
                    n: i,
                    clone_ms: crate::stats::round3(d.as_secs_f64() * 1e3),
                });
            }
            Err(e) => {
                failed = Some(format!("clone {i}: {e}"));
                break;
            }
        }
        cx.check()?;
    }
    // The last clones next to the first ones: flat when cloning is O(1) in N.
    let edge = EDGE.min(times.len() / 2).max(1);
    let mut m = cx.row(
        Suite::Scale,
        &format!("clone #{}..{} vs #1..{edge}", n + 1 - edge, n),
        Unit::Ms,
    );
    m.note.clone_from(&note);
    if times.len() >= 2 {
        let last = Summary::of_durations(&times[times.len() - edge..]);
        let first = Summary::of_durations(&times[..edge]).map(|value| Primitive {
            command: format!("clones #1..{edge}"),
            value,
        });
        m = m.with(last, first);
    }
    m.error.clone_from(&failed);
    out.push(m);

    // Start time of the Nth clone next to the first's.
    let mut s = Pair::default();
    if let (Some(first), Some(last)) = (names.first(), names.last()) {
        cx.events
            .step(&format!("{}: start of clone #{}", cx.pool(), names.len()));
        for _ in 0..cx.plan.runs {
            s.berth(cx.berth(&["run", "--no-tty", last, "--", "/bin/true"]));
            let t = cx.berth(&["run", "--no-tty", first, "--", "/bin/true"]);
            s.native(Some(("start /bin/true of clone #1".to_owned(), t)));
        }
    }
    out.push(s.into_row(cx.row(Suite::Scale, op::NTH_START, Unit::Ms)));
    for c in names.iter().rev() {
        let _ = cx.destroy(c);
    }
    if failed.is_none() {
        big(cx, &big_rootfs()?, out)?;
    }
    Ok(())
}

/// Bytes of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    crate::run::tree_size(dir).1
}

/// Clone and copy of a container from the 10× rootfs next to the same from the 1× one.
fn big(cx: &Ctx<'_>, rootfs: &Path, out: &mut Vec<Measurement>) -> Result<()> {
    cx.events.step(&format!("{}: 10x rootfs", cx.pool()));
    let big = cx.name("big");
    // A block-backed volume is sized for the 10x tree (the pool's default fits
    // a rootfs, not ten).
    let size = format!("{}M", (tree_bytes(rootfs) >> 20) * 3 / 2 + 512);
    let rootfs = rootfs.to_string_lossy().into_owned();
    let mut args = vec!["create", &big, "--from-dir", &rootfs, "--pool", cx.pool()];
    if cx.caps.size_limit {
        args.extend(["--size", &size]);
    }
    if cx.caps.lacks_xattrs {
        args.push("--drop-xattrs");
    }
    if let Err(e) = cx.berth_quiet(&args) {
        let mut m = cx.row(Suite::Scale, op::BIG_SNAPSHOT_CLONE, Unit::Ms);
        m.error = Some(format!("create from the 10x rootfs: {e}"));
        out.push(m);
        return Ok(());
    }
    // Copies of 10× the data are slow: a few runs say enough.
    let runs = cx.plan.runs.min(3);
    let (mode, note) = cx.clone_mode();
    for (operation, mode) in [(op::BIG_SNAPSHOT_CLONE, mode), (op::BIG_COPY, "--copy")] {
        if operation == op::BIG_SNAPSHOT_CLONE && note.is_some() {
            continue;
        }
        let mut p = Pair::default();
        for r in 0..runs {
            let (a, b) = (cx.name(&format!("bigc{r}")), cx.name(&format!("smallc{r}")));
            p.berth(cx.berth(&["clone", &big, &a, mode, "--pool", cx.pool()]));
            let t = cx.berth(&["clone", &cx.src, &b, mode, "--pool", cx.pool()]);
            p.native(Some((format!("the same on the 1x rootfs ({mode})"), t)));
            let _ = cx.destroy(&a);
            let _ = cx.destroy(&b);
            cx.check()?;
        }
        out.push(p.into_row(cx.row(Suite::Scale, operation, Unit::Ms)));
    }
    let _ = cx.destroy(&big);
    Ok(())
}
