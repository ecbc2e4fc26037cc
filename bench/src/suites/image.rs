//! image: what a container made from an image costs. On each pool: `berth
//! image build` from the rootfs; the 1st `berth create --image` when the image
//! was built on the pool, and when it lives on the default pool (which copies
//! it here first); then containers #2..N, each next to the backend's raw
//! snapshot clone and to `berth clone --snapshot`, alternately, and the space
//! each adds. The claim measured: a later container costs about one snapshot
//! clone.

use std::time::Duration;

use super::space::used;
use super::{Ctx, Pair};
use crate::error::{BenchError, Result};
use crate::model::{op, Measurement, Primitive, Suite, Unit};
use crate::pools::{NativeOp, SpaceProbe};
use crate::stats::Summary;

pub fn run(cx: &Ctx<'_>, out: &mut Vec<Measurement>) -> Result<()> {
    let mut made = Made::default();
    let measured = measure(cx, &mut made, out);
    // Removed also after a failure or Ctrl-C: on a user's pool nothing else would.
    let removed = made.remove(cx);
    measured?;
    removed
}

/// What the suite made and has not removed yet.
#[derive(Default)]
struct Made {
    containers: Vec<String>,
    images: Vec<String>,
    /// Ids of the primitive's snapshot clones.
    native: Vec<String>,
}

impl Made {
    /// Removes everything, containers before the images they read; the first
    /// failure, after trying all.
    fn remove(&mut self, cx: &Ctx<'_>) -> Result<()> {
        // The primitive's leftovers also go with its work space at the pool's end.
        for id in self.native.drain(..).rev() {
            let _ = cx.native(NativeOp::DestroyClone, &id);
        }
        let mut first = None;
        for c in self.containers.drain(..).rev() {
            if let Err(e) = cx.destroy(&c) {
                first.get_or_insert(e);
            }
        }
        for i in self.images.drain(..).rev() {
            if let Err(e) = cx.berth_quiet(&["image", "rm", &i]) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn measure(cx: &Ctx<'_>, made: &mut Made, out: &mut Vec<Measurement>) -> Result<()> {
    match first_creates(cx, made, out)? {
        Some(image) => later_creates(cx, &image, made, out),
        None => {
            for operation in [op::IMAGE_LATER, op::IMAGE_LAST] {
                let mut m = cx.row(Suite::Image, operation, Unit::Ms);
                m.error = Some("no image and 1st container to start from (see above)".to_owned());
                out.push(m);
            }
            Ok(())
        }
    }
}

/// `berth image build NAME --from-dir ROOTFS` on `pool` (the default pool for `None`).
fn build_args<'a>(
    cx: &'a Ctx<'_>,
    image: &'a str,
    rootfs: &'a str,
    pool: Option<&'a str>,
) -> Vec<&'a str> {
    let mut args = vec!["image", "build", image, "--from-dir", rootfs];
    if let Some(p) = pool {
        args.extend(["--pool", p]);
        if cx.caps.lacks_xattrs {
            args.push("--drop-xattrs");
        }
    }
    args
}

/// The primitive of `op` on object `id`, then removed (untimed): runs leave
/// nothing that grows the pool.
fn native_once(cx: &Ctx<'_>, op: NativeOp, id: &str) -> Option<(String, Result<Duration>)> {
    let timed = cx.native(op, id)?;
    // DestroyClone removes what Create made too (zfs: its dataset; the
    // snapshot it also names does not exist, which is ignored here).
    let _ = cx.native(NativeOp::DestroyClone, id);
    Some(timed)
}

/// Per run: a new image built on the pool and its 1st container; a new image
/// on the default pool and its 1st container here. Returns the last run's
/// image (its 1st container kept) for the later containers.
fn first_creates(
    cx: &Ctx<'_>,
    made: &mut Made,
    out: &mut Vec<Measurement>,
) -> Result<Option<String>> {
    let runs = cx.plan.runs;
    let pool = cx.pool();
    let rootfs = crate::pools::arg(cx.rootfs);
    // The default pool of the throw-away store is the run's own; a user's
    // store's default pool is not written to.
    let default_pool = cx.root() == cx.session.store();
    let mut build = Pair::default();
    let mut first = Pair::default();
    let mut copied = Pair::default();
    let mut kept = None;
    for r in 0..runs {
        cx.events.step(&format!(
            "{pool}: image build and 1st create, run {}/{runs}",
            r + 1
        ));
        if default_pool {
            let image = cx.name(&format!("dimg{r}"));
            match cx.berth_quiet(&build_args(cx, &image, &rootfs, None)) {
                Ok(_) => {
                    made.images.push(image.clone());
                    let c = cx.name(&format!("d{r}"));
                    let t = cx.berth(&["create", &c, "--image", &image, "--pool", pool]);
                    if t.is_ok() {
                        made.containers.push(c);
                    }
                    copied.berth(t);
                    copied.native(native_once(cx, NativeOp::Create, &format!("id{r}")));
                    made.remove(cx)?;
                }
                Err(e) => copied.berth(Err(e)),
            }
        }

        let image = cx.name(&format!("img{r}"));
        let built = cx.berth(&build_args(cx, &image, &rootfs, Some(pool)));
        let ok = built.is_ok();
        build.berth(built);
        build.native(native_once(cx, NativeOp::Create, &format!("ib{r}")));
        if ok {
            made.images.push(image.clone());
            let c = cx.name(&format!("{r}i1"));
            let t = cx.berth(&["create", &c, "--image", &image, "--pool", pool]);
            let ok = t.is_ok();
            if ok {
                made.containers.push(c);
            }
            first.berth(t);
            first.native(native_once(cx, NativeOp::SnapshotClone, &format!("if{r}")));
            if ok && r + 1 == runs {
                kept = Some(image);
            } else {
                made.remove(cx)?;
            }
        }
        cx.check()?;
    }
    out.push(build.into_row(cx.row(Suite::Image, op::IMAGE_BUILD, Unit::Ms)));
    let mut m = first.into_row(cx.row(Suite::Image, op::IMAGE_FIRST, Unit::Ms));
    m.note = cx.clone_mode().1.map(|_| copy_note(cx));
    out.push(m);
    let mut m = copied.into_row(cx.row(Suite::Image, op::IMAGE_FIRST_COPIED, Unit::Ms));
    m.note = Some(if !default_pool {
        "not measured on a user's pool (it would write to the store's default pool)".to_owned()
    } else if m.primitive.is_some() {
        "copies the image onto this pool first; primitive: a new volume filled from the rootfs"
            .to_owned()
    } else {
        "copies the image onto this pool first".to_owned()
    });
    out.push(m);
    Ok(kept)
}

fn copy_note(cx: &Ctx<'_>) -> String {
    format!(
        "{} has no snapshot clone: each container is a full copy of the image",
        cx.backend()
    )
}

/// Containers #2..N from `image`: each timed next to the primitive's snapshot
/// clone and to `berth clone --snapshot` of the source, alternately; the
/// space each adds is read around its own create only.
fn later_creates(
    cx: &Ctx<'_>,
    image: &str,
    made: &mut Made,
    out: &mut Vec<Measurement>,
) -> Result<()> {
    let n = cx.clones();
    let pool = cx.pool();
    let probe = &cx.target.space;
    let mut raw = Pair::default();
    let mut vs_clone = Pair::default();
    let mut added = Some(0u64);
    let mut failed = None;
    for i in 2..=n {
        if i % 10 == 2 {
            cx.events
                .step(&format!("{pool}: container {i}/{n} from an image"));
        }
        let c = cx.name(&format!("i{i}"));
        let before = used(probe)?;
        let d = match cx.berth(&["create", &c, "--image", image, "--pool", pool]) {
            Ok(d) => d,
            Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
            Err(e) => {
                failed = Some(format!("container #{i}: {e}"));
                break;
            }
        };
        made.containers.push(c);
        let after = used(probe)?;
        added = added
            .zip(before.zip(after))
            .map(|(sum, (b, a))| sum + a.saturating_sub(b));
        raw.berth.push(d);
        // Kept until the end like berth's containers: both are the ith.
        let id = format!("in{i}");
        raw.native(cx.native(NativeOp::SnapshotClone, &id));
        made.native.push(id);
        if cx.caps.snapshot_clone {
            vs_clone.berth.push(d);
            let cl = cx.name(&format!("c{i}"));
            let t = cx.clone_src(&cx.src, &cl);
            if t.is_ok() {
                made.containers.push(cl);
            }
            vs_clone.native(Some(("berth clone --snapshot SRC".to_owned(), t)));
        }
        cx.check()?;
    }
    let note = later_note(cx, n);
    let last = last_row(cx, &raw, &note);
    let mut m = raw.into_row(cx.row(Suite::Image, op::IMAGE_LATER, Unit::Ms));
    m.note = Some(note.clone());
    if failed.is_some() {
        m.error.clone_from(&failed);
    }
    out.push(m);
    out.push(last);
    if cx.caps.snapshot_clone {
        let mut m = vs_clone.into_row(cx.row(Suite::Image, op::IMAGE_LATER_VS_CLONE, Unit::Ms));
        m.note = Some(format!("{note}; the same ith, each after the other"));
        if failed.is_some() {
            m.error.clone_from(&failed);
        }
        out.push(m);
    }
    out.push(space_row(cx, added, n, failed));
    Ok(())
}

fn later_note(cx: &Ctx<'_>, n: usize) -> String {
    let mut note = format!("N = {n}");
    if n < 2 {
        note += "; --clones 1 makes no later container";
    }
    if cx.clone_mode().1.is_some() {
        note = format!("{note} (at most {}); {}", super::MAX_COPIES, copy_note(cx));
    }
    note
}

/// The Nth container next to the Nth primitive clone: flat when making one
/// does not grow with how many there are.
fn last_row(cx: &Ctx<'_>, raw: &Pair, note: &str) -> Measurement {
    let mut m = cx.row(Suite::Image, op::IMAGE_LAST, Unit::Ms);
    m.note = Some(note.to_owned());
    let berth = raw.berth.last().and_then(|d| Summary::of_durations(&[*d]));
    let primitive = raw
        .command
        .clone()
        .zip(raw.native.last().and_then(|d| Summary::of_durations(&[*d])))
        .map(|(command, value)| Primitive { command, value });
    m.with(berth, primitive)
}

fn space_row(cx: &Ctx<'_>, added: Option<u64>, n: usize, failed: Option<String>) -> Measurement {
    let mut m = cx.row(Suite::Image, op::IMAGE_SPACE, Unit::Bytes);
    if let SpaceProbe::None(why) = &cx.target.space {
        m.note = Some(why.clone());
        return m;
    }
    m.error = failed;
    let later = n.saturating_sub(1) as u64;
    if m.error.is_none() && later > 0 {
        m = m.with(added.and_then(|a| Summary::of(&[(a / later) as f64])), None);
        m.note = Some(format!(
            "the pool's used space before and after each create, summed, over {later}"
        ));
    }
    m
}
