//! meta: many small files, where backends differ most — unpack a tarball of
//! the rootfs into the container, walk it with `find` (a stat per entry), and
//! remove it, each followed by a syncfs so that the figure includes writeback.

use std::path::Path;
use std::time::Duration;

use super::{Ctx, Pair};
use crate::error::Result;
use crate::model::{op, Measurement, Suite, Unit};
use crate::pools::argv;
use crate::session::{self, timed_all};

pub fn run(cx: &Ctx<'_>, tarball: &Path, out: &mut Vec<Measurement>) -> Result<()> {
    cx.events.step(&format!("{}: metadata", cx.pool()));
    let rows = [op::UNPACK, op::WALK, op::REMOVE];
    let rootfs = match cx.mount(&cx.src) {
        Ok(r) => r,
        Err(e) => {
            for o in rows {
                let mut m = cx.row(Suite::Meta, o, Unit::Ms);
                m.error = Some(format!("berth mount: {e}"));
                out.push(m);
            }
            return Ok(());
        }
    };
    let dir = rootfs.join("bench-meta");
    let (d, root, tar) = (
        dir.to_string_lossy().into_owned(),
        rootfs.to_string_lossy().into_owned(),
        tarball.to_string_lossy().into_owned(),
    );
    let mut pairs: [Pair; 3] = Default::default();
    let measured = (|| -> Result<()> {
        for _ in 0..cx.plan.runs {
            cx.check()?;
            timed_all(&[argv(&["mkdir", "-p", &d])])?;
            session::settle(cx.plan.cold)?;
            pairs[0].berth(timed_all(&[
                argv(&["tar", "-xf", &tar, "-C", &d]),
                argv(&["sync", "-f", &root]),
            ]));
            session::settle(cx.plan.cold)?;
            pairs[1].berth(timed_all(&[argv(&["find", &d, "-printf", "%s %m %U\n"])]));
            session::settle(cx.plan.cold)?;
            pairs[2].berth(timed_all(&[
                argv(&["rm", "-rf", &d]),
                argv(&["sync", "-f", &root]),
            ]));
        }
        Ok(())
    })();
    // Whatever happened, the tree goes and the container is unmounted.
    let _ = timed_all(&[argv(&["rm", "-rf", &d])]).map(|_: Duration| ());
    let unmounted = cx.umount(&cx.src);
    measured?;
    unmounted?;
    for (p, o) in pairs.into_iter().zip(rows) {
        let mut m = p.into_row(cx.row(Suite::Meta, o, Unit::Ms));
        m.note = Some("host tar/find/rm on the container's mounted rootfs".to_owned());
        out.push(m);
    }
    Ok(())
}
