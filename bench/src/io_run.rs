//! The io suite on one pool: a 64 MiB file written into the source container,
//! a clone of it (a snapshot clone where the backend has one), and fio in the
//! clone's mounted rootfs; the file's first write in the clone is a copy-up
//! (overlay, aufs) or a copy-on-write (btrfs, zfs, qcow2, reflinked loop).

use crate::error::Result;
use crate::model::{Measurement, Suite, Unit};
use crate::suites::space::write_incompressible_file;
use crate::suites::Ctx;

const INHERITED: &str = "bench-inherited-64m";

pub fn run(cx: &Ctx<'_>, out: &mut Vec<Measurement>) -> Result<()> {
    cx.events.step(&format!("{}: io", cx.pool()));
    let clone = cx.name("io");
    let prepared = (|| -> Result<()> {
        let src = cx.mount(&cx.src)?;
        let written = write_incompressible_file(&src.join(INHERITED), 64, 11);
        cx.umount(&cx.src)?;
        written?;
        cx.clone_src(&cx.src, &clone)?;
        Ok(())
    })();
    let measured = prepared.and_then(|()| {
        let rootfs = cx.mount(&clone)?;
        let dir = rootfs.join("bench-io");
        berth_bdev::fsutil::create_dir_all(&dir)?;
        let mut rows = crate::suites::io::measure(
            &dir,
            Some(&rootfs.join(INHERITED)),
            cx.backend(),
            cx.pool(),
            cx.plan.runs,
        );
        let _ = std::fs::remove_dir_all(&dir);
        cx.umount(&clone)?;
        if let (_, Some(note)) = cx.clone_mode() {
            for r in &mut rows {
                r.note = Some(match r.note.take() {
                    Some(n) => format!("{n}; {note}"),
                    None => note.clone(),
                });
            }
        }
        out.append(&mut rows);
        Ok(())
    });
    let _ = cx.destroy(&clone);
    // The source goes back to what the other suites expect.
    let restored = cx.mount(&cx.src).and_then(|src| {
        let _ = std::fs::remove_file(src.join(INHERITED));
        cx.umount(&cx.src)
    });
    if let Err(e) = measured {
        let mut m = cx.row(Suite::Io, "fio", Unit::MibPerSec);
        m.error = Some(e.to_string());
        out.push(m);
    }
    restored
}
