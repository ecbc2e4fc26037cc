//! The clone matrix: which source/target pairs a clone request can use.
//!
//! `--snapshot` never quietly becomes a copy: a pair that cannot share data is
//! refused, naming the alternatives.

use crate::backend::Caps;
use crate::error::{BdevError, Result};
use crate::spec::BackendKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMode {
    /// Copy-on-write: share data with the origin.
    Snapshot,
    /// An independent full copy.
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClonePlan {
    /// `dst.snapshot_clone(src)`; `pins_origin` records a dependency on the source.
    SnapshotClone { pins_origin: bool },
    /// `dst.copy_clone(src)` (same backend's own tool), falling back to `Generic`.
    NativeCopy,
    /// Create an empty target volume and copy through mounts.
    GenericCopy,
}

/// Decides how to clone a `src` volume into a pool of kind `dst` with `dst_caps`.
/// `same_pool` says whether source and target pools are the same pool.
pub fn plan_clone(
    src: BackendKind,
    dst: BackendKind,
    dst_caps: &Caps,
    same_pool: bool,
    mode: CloneMode,
) -> Result<ClonePlan> {
    use BackendKind::*;
    if mode == CloneMode::Copy {
        return Ok(if src == dst {
            ClonePlan::NativeCopy
        } else {
            ClonePlan::GenericCopy
        });
    }
    let pins_origin = dst_caps.clone_pins_origin;
    // Layered backends keep the origin's path as a branch, which works across pools.
    let layered = matches!(dst, Overlay | Aufs | Qcow2);
    if src == dst && dst_caps.snapshot_clone && (same_pool || layered) {
        return Ok(ClonePlan::SnapshotClone { pins_origin });
    }
    if dst_caps.stacks_on_trees && matches!(src, Dir | Btrfs) {
        return Ok(ClonePlan::SnapshotClone { pins_origin });
    }

    let reason = if src == dst && !dst_caps.snapshot_clone {
        if dst == Loop {
            "this pool's filesystem cannot reflink images (put the pool on btrfs or xfs with reflink=1)".to_owned()
        } else {
            format!("{dst} volumes cannot share data with each other")
        }
    } else if src == dst {
        format!("{dst} snapshot clones stay inside one pool")
    } else {
        format!("a {dst} volume cannot share data with a {src} volume")
    };
    let mut alternatives = Vec::new();
    if src == dst && !same_pool && dst_caps.snapshot_clone {
        alternatives.push("clone into the source's own pool (--pool)".to_owned());
    }
    if matches!(src, Dir | Btrfs | Overlay) && dst != Overlay {
        alternatives.push("stack an overlay layer on it (-B overlay --snapshot)".to_owned());
    }
    if matches!(src, Dir | Btrfs | Aufs) && dst != Aufs {
        alternatives.push("stack an aufs layer on it (-B aufs --snapshot)".to_owned());
    }
    alternatives.push("make an independent copy (--copy)".to_owned());
    Err(BdevError::CloneRefused {
        src,
        dst,
        reason,
        alternatives,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendKind::*;

    fn caps(kind: BackendKind) -> Caps {
        let mut c = Caps::default();
        match kind {
            Dir => {}
            Btrfs => c.snapshot_clone = true,
            Zfs | Qcow2 | Lvm => {
                c.snapshot_clone = true;
                c.clone_pins_origin = true;
            }
            Loop => c.snapshot_clone = false,
            Overlay | Aufs => {
                c.snapshot_clone = true;
                c.clone_pins_origin = true;
                c.stacks_on_trees = true;
            }
        }
        c
    }

    fn plan(src: BackendKind, dst: BackendKind, same_pool: bool) -> Result<ClonePlan> {
        plan_clone(src, dst, &caps(dst), same_pool, CloneMode::Snapshot)
    }

    /// The whole snapshot matrix, source rows by target columns, in one pool
    /// where the kinds match. S = snapshot clone, P = pinned snapshot clone, - = refused.
    #[test]
    fn snapshot_matrix() {
        let cols = [Dir, Btrfs, Zfs, Lvm, Loop, Aufs, Overlay, Qcow2];
        let rows = [
            (Dir, "-----PP-"),
            (Btrfs, "-S---PP-"),
            (Zfs, "--P-----"),
            (Lvm, "---P----"),
            (Loop, "--------"),
            (Aufs, "-----P--"),
            (Overlay, "------P-"),
            (Qcow2, "-------P"),
        ];
        for (src, row) in rows {
            for (dst, want) in cols.iter().zip(row.chars()) {
                let got = match plan(src, *dst, src == *dst) {
                    Ok(ClonePlan::SnapshotClone { pins_origin: true }) => 'P',
                    Ok(ClonePlan::SnapshotClone { pins_origin: false }) => 'S',
                    Ok(_) => '?',
                    Err(_) => '-',
                };
                assert_eq!(got, want, "{src} -> {dst}");
            }
        }
    }

    #[test]
    fn loop_snapshot_clone_follows_detected_reflink() {
        let mut c = caps(Loop);
        assert!(plan_clone(Loop, Loop, &c, true, CloneMode::Snapshot).is_err());
        c.snapshot_clone = true;
        assert_eq!(
            plan_clone(Loop, Loop, &c, true, CloneMode::Snapshot).unwrap(),
            ClonePlan::SnapshotClone { pins_origin: false }
        );
    }

    #[test]
    fn cross_pool_rules() {
        assert!(plan(Btrfs, Btrfs, false).is_err());
        assert!(plan(Zfs, Zfs, false).is_err());
        assert!(plan(Overlay, Overlay, false).is_ok());
        assert!(plan(Qcow2, Qcow2, false).is_ok());
    }

    #[test]
    fn refusals_name_alternatives() {
        let e = plan(Dir, Dir, true).unwrap_err().to_string();
        assert!(e.contains("-B overlay"), "{e}");
        assert!(e.contains("--copy"), "{e}");
        let e = plan(Btrfs, Btrfs, false).unwrap_err().to_string();
        assert!(e.contains("one pool"), "{e}");
        assert!(e.contains("--pool"), "{e}");
    }

    #[test]
    fn copies_always_plan() {
        for s in BackendKind::ALL {
            for d in BackendKind::ALL {
                let p = plan_clone(s, d, &Caps::default(), false, CloneMode::Copy).unwrap();
                assert_eq!(p == ClonePlan::NativeCopy, s == d);
            }
        }
    }
}
