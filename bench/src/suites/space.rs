//! space: what one snapshot clone, a 1 MiB write in it and N clones add to the
//! pool's storage, measured on the storage itself, next to what `berth info`
//! reports — does usage reporting tell the truth?

use std::io::Write;
use std::path::Path;

use berth_bdev::cmd::{self, HostRunner};
use berth_core::Berth;

use super::Ctx;
use crate::error::{BenchError, Result};
use crate::model::{op, Measurement, Primitive, Suite, Unit};
use crate::pools::{NativeOp, SpaceProbe};
use crate::stats::Summary;

/// Bytes the pool's storage uses now, after flushing it.
pub fn used(probe: &SpaceProbe) -> Result<Option<u64>> {
    match probe {
        SpaceProbe::Filesystem(mnt) => {
            let dir = std::fs::File::open(mnt).map_err(BenchError::io("open", mnt))?;
            rustix::fs::syncfs(&dir).map_err(|e| BenchError::io("syncfs", mnt)(e.into()))?;
            let st =
                rustix::fs::fstatvfs(&dir).map_err(|e| BenchError::io("statvfs", mnt)(e.into()))?;
            Ok(Some((st.f_blocks - st.f_bfree) * st.f_frsize))
        }
        SpaceProbe::ZfsDataset(ds) => {
            // zfs-fuse's datasets are several mounts: flush them all.
            rustix::fs::sync();
            let out = cmd::run(
                &HostRunner,
                "zfs",
                &["get", "-Hp", "-o", "value", "used", ds],
            )?;
            let n = out.stdout.trim().parse::<u64>().map_err(|e| {
                BenchError::Invalid(format!("zfs get used {ds}: {:?}: {e}", out.stdout.trim()))
            })?;
            Ok(Some(n))
        }
        SpaceProbe::None(_) => Ok(None),
    }
}

/// What `berth info` reports as the container's usage.
fn reported(cx: &Ctx<'_>, name: &str) -> Option<u64> {
    let b = Berth::open(cx.root(), false).ok()?;
    let c = b.store().container(name).ok()?;
    b.backend_of(&c)
        .ok()?
        .usage(&c.volume)
        .ok()
        .map(|u| u.used_bytes)
}

fn bytes(v: u64) -> Option<Summary> {
    Summary::of(&[v as f64])
}

/// Writes `mib` MiB of bytes that no compression shrinks (xorshift64 from
/// `seed`), so that space figures measure real data.
pub fn write_incompressible(out: &mut impl Write, mib: usize, seed: u64) -> std::io::Result<()> {
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// [`write_incompressible`] into a new file at `path`, synced.
pub fn write_incompressible_file(path: &Path, mib: usize, seed: u64) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(BenchError::io("create", path))?;
    write_incompressible(&mut f, mib, seed).map_err(BenchError::io("write", path))?;
    f.sync_all().map_err(BenchError::io("fsync", path))
}

pub fn run(cx: &Ctx<'_>, out: &mut Vec<Measurement>) -> Result<()> {
    let probe = &cx.target.space;
    if let SpaceProbe::None(why) = probe {
        let mut m = cx.row(Suite::Space, op::SPACE_CLONE, Unit::Bytes);
        m.note = Some(why.clone());
        out.push(m);
        return Ok(());
    }
    cx.events.step(&format!("{}: space", cx.pool()));
    let (_, note) = cx.clone_mode();
    let first = cx.name("space0");
    let before = used(probe)?.unwrap_or(0);
    let made = cx.clone_src(&cx.src, &first);
    let mut m = cx.row(Suite::Space, op::SPACE_CLONE, Unit::Bytes);
    m.note.clone_from(&note);
    if let Err(e) = made {
        m.error = Some(e.to_string());
        out.push(m);
        return Ok(());
    }
    let after = used(probe)?.unwrap_or(0);
    let primitive = native_space(cx, probe)?;
    m = m.with(bytes(after.saturating_sub(before)), primitive);
    let reported_clone = reported(cx, &first);
    m.reported = reported_clone;
    out.push(m);

    // 1 MiB of new data in the clone.
    let mut w = cx.row(Suite::Space, op::SPACE_WRITE, Unit::Bytes);
    let written = (|| -> Result<u64> {
        let rootfs = cx.mount(&first)?;
        let r = write_incompressible_file(&rootfs.join("bench-1mib"), 1, 7);
        cx.umount(&first)?;
        r?;
        Ok(used(probe)?.unwrap_or(0))
    })();
    match written {
        Ok(now) => {
            w = w.with(bytes(now.saturating_sub(after)), None);
            w.reported = reported(cx, &first)
                .zip(reported_clone)
                .map(|(a, b)| a.saturating_sub(b));
        }
        Err(e) => w.error = Some(e.to_string()),
    }
    out.push(w);
    let _ = cx.destroy(&first);

    // N clones, per clone.
    let n = cx.clones();
    let mut p = cx.row(Suite::Space, op::SPACE_PER_CLONE, Unit::Bytes);
    p.note = Some(match &note {
        Some(copies) => format!("N = {n}; {copies}"),
        None => format!("N = {n}"),
    });
    let start = used(probe)?.unwrap_or(0);
    let mut names = Vec::new();
    let mut failed = None;
    for i in 0..n {
        cx.check()?;
        let name = cx.name(&format!("space{}", i + 1));
        if let Err(e) = cx.clone_src(&cx.src, &name) {
            failed = Some(e.to_string());
            break;
        }
        names.push(name);
    }
    if let Some(e) = failed {
        p.error = Some(e);
    } else {
        let end = used(probe)?.unwrap_or(0);
        p = p.with(bytes(end.saturating_sub(start) / n.max(1) as u64), None);
        let sum: Option<u64> = names.iter().map(|c| reported(cx, c)).sum();
        p.reported = sum.map(|s| s / n.max(1) as u64);
    }
    for c in names.iter().rev() {
        let _ = cx.destroy(c);
    }
    out.push(p);
    Ok(())
}

/// The space one primitive snapshot clone adds, if the backend has one.
fn native_space(cx: &Ctx<'_>, probe: &SpaceProbe) -> Result<Option<Primitive>> {
    let before = used(probe)?.unwrap_or(0);
    let Some((command, r)) = cx.native(NativeOp::SnapshotClone, "space") else {
        return Ok(None);
    };
    if r.is_err() {
        return Ok(None);
    }
    let after = used(probe)?.unwrap_or(0);
    let _ = cx.native(NativeOp::DestroyClone, "space");
    Ok(bytes(after.saturating_sub(before)).map(|value| Primitive { command, value }))
}
