//! The clone plan: how a clone request is carried out, decided from the two
//! sides' capabilities alone.
//!
//! `--snapshot` never quietly becomes a copy: a pair that cannot share data is
//! refused, naming the alternatives.

use crate::backend::Caps;
use crate::error::{BdevError, Result};

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
    /// `dst.stack_on_tree(tree of src)`: a layer over another backend's plain tree.
    StackOnTree { pins_origin: bool },
    /// `dst.copy_clone(src)` (same backend's own tool), falling back to `GenericCopy`.
    NativeCopy,
    /// Create an empty target volume and copy through mounts.
    GenericCopy,
}

impl ClonePlan {
    /// Whether the clone shares data with its origin.
    pub fn shares_data(self) -> bool {
        matches!(
            self,
            ClonePlan::SnapshotClone { .. } | ClonePlan::StackOnTree { .. }
        )
    }

    /// Whether the clone keeps depending on its origin.
    pub fn pins_origin(self) -> bool {
        matches!(
            self,
            ClonePlan::SnapshotClone { pins_origin: true }
                | ClonePlan::StackOnTree { pins_origin: true }
        )
    }
}

/// One side of a clone: the backend's registry name and the pool's capabilities.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub backend: &'a str,
    pub caps: Caps,
}

/// What is being cloned and how.
#[derive(Debug, Clone, Copy)]
pub struct CloneRequest<'a> {
    pub src: Side<'a>,
    pub dst: Side<'a>,
    pub same_pool: bool,
    /// The source is a snapshot rather than a live volume.
    pub from_snapshot: bool,
    pub mode: CloneMode,
    /// Backends whose snapshot clones can stack on plain trees (`stacks_on_trees`),
    /// offered as alternatives when a snapshot clone is refused.
    pub stackers: &'a [&'a str],
}

/// Decides how to carry out `req`, or refuses it with the alternatives.
pub fn plan_clone(req: &CloneRequest<'_>) -> Result<ClonePlan> {
    let (src, dst) = (req.src, req.dst);
    let same_backend = src.backend == dst.backend;
    if req.mode == CloneMode::Copy {
        return Ok(if same_backend {
            ClonePlan::NativeCopy
        } else {
            ClonePlan::GenericCopy
        });
    }
    let pins_origin = dst.caps.clone_pins_origin;
    let refuse = |reason: String, alternatives: Vec<String>| BdevError::CloneRefused {
        src: src.backend.to_owned(),
        dst: dst.backend.to_owned(),
        reason,
        alternatives,
    };
    let copy = "make an independent copy (--copy)".to_owned();
    if same_backend && dst.caps.snapshot_clone && (req.same_pool || dst.caps.clones_span_pools) {
        if req.from_snapshot && !dst.caps.clone_from_snapshot {
            return Err(refuse(
                "this pool cannot clone from a snapshot without copying".to_owned(),
                vec![copy],
            ));
        }
        return Ok(ClonePlan::SnapshotClone { pins_origin });
    }
    if !same_backend && dst.caps.stacks_on_trees && src.caps.plain_tree {
        return Ok(ClonePlan::StackOnTree { pins_origin });
    }

    let reason = if same_backend && !dst.caps.snapshot_clone {
        match dst.caps.snapshot_clone_refusal {
            Some(why) => why.to_owned(),
            None => format!("{} volumes cannot share data with each other", dst.backend),
        }
    } else if same_backend {
        format!("{} snapshot clones stay inside one pool", dst.backend)
    } else {
        format!(
            "a {} volume cannot share data with a {} volume",
            dst.backend, src.backend
        )
    };
    let mut alternatives = Vec::new();
    if same_backend && !req.same_pool && dst.caps.snapshot_clone {
        alternatives.push("clone into the source's own pool (--pool)".to_owned());
    }
    for stacker in req.stackers {
        if (src.caps.plain_tree || src.backend == *stacker) && dst.backend != *stacker {
            let a = if stacker.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            alternatives.push(format!(
                "stack {a} {stacker} layer on it (-B {stacker} --snapshot)"
            ));
        }
    }
    alternatives.push(copy);
    Err(refuse(reason, alternatives))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made-up backends covering each shape: a plain tree, a tree with cheap
    /// snapshots, a pinning store, an image pool that cannot share, and a layer.
    fn caps(kind: &str) -> Caps {
        let mut c = Caps::default();
        match kind {
            "tree" => c.plain_tree = true,
            "cowtree" => {
                c.plain_tree = true;
                c.snapshot_clone = true;
                c.clone_from_snapshot = true;
            }
            "store" => {
                c.snapshot_clone = true;
                c.clone_from_snapshot = true;
                c.clone_pins_origin = true;
            }
            "image" => c.snapshot_clone_refusal = Some("this pool cannot reflink"),
            "layer" => {
                c.snapshot_clone = true;
                c.clone_pins_origin = true;
                c.stacks_on_trees = true;
                c.clones_span_pools = true;
            }
            _ => unreachable!(),
        }
        c
    }

    const KINDS: [&str; 5] = ["tree", "cowtree", "store", "image", "layer"];

    fn plan(src: &str, dst: &str, same_pool: bool, from_snapshot: bool) -> Result<ClonePlan> {
        plan_clone(&CloneRequest {
            src: Side {
                backend: src,
                caps: caps(src),
            },
            dst: Side {
                backend: dst,
                caps: caps(dst),
            },
            same_pool,
            from_snapshot,
            mode: CloneMode::Snapshot,
            stackers: &["layer"],
        })
    }

    /// Source rows by target columns, one pool where the kinds match.
    /// S = snapshot clone, P = pinned, T = pinned layer on a tree, - = refused.
    #[test]
    fn snapshot_matrix() {
        let rows = [
            ("tree", "----T"),
            ("cowtree", "-S--T"),
            ("store", "--P--"),
            ("image", "-----"),
            ("layer", "----P"),
        ];
        for (src, row) in rows {
            for (dst, want) in KINDS.iter().zip(row.chars()) {
                let got = match plan(src, dst, src == *dst, false) {
                    Ok(ClonePlan::SnapshotClone { pins_origin: true }) => 'P',
                    Ok(ClonePlan::SnapshotClone { pins_origin: false }) => 'S',
                    Ok(ClonePlan::StackOnTree { pins_origin: true }) => 'T',
                    Ok(_) => '?',
                    Err(_) => '-',
                };
                assert_eq!(got, want, "{src} -> {dst}");
            }
        }
    }

    #[test]
    fn cross_pool_rules() {
        assert!(plan("cowtree", "cowtree", false, false).is_err());
        assert!(plan("store", "store", false, false).is_err());
        assert!(plan("layer", "layer", false, false).is_ok());
    }

    #[test]
    fn clones_of_snapshots_need_the_capability() {
        let mut c = caps("store");
        c.clone_from_snapshot = false;
        let side = Side {
            backend: "store",
            caps: c,
        };
        let req = CloneRequest {
            src: side,
            dst: side,
            same_pool: true,
            from_snapshot: true,
            mode: CloneMode::Snapshot,
            stackers: &[],
        };
        let e = plan_clone(&req).unwrap_err().to_string();
        assert!(e.contains("from a snapshot") && e.contains("--copy"), "{e}");
        assert!(plan_clone(&CloneRequest {
            from_snapshot: false,
            ..req
        })
        .is_ok());
    }

    #[test]
    fn refusals_name_the_backends_reason_and_alternatives() {
        let e = plan("tree", "tree", true, false).unwrap_err().to_string();
        assert!(e.contains("-B layer --snapshot"), "{e}");
        assert!(e.contains("--copy"), "{e}");
        let e = plan("image", "image", true, false).unwrap_err().to_string();
        assert!(e.contains("this pool cannot reflink"), "{e}");
        assert!(!e.contains("-B layer"), "{e}");
        let e = plan("cowtree", "cowtree", false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one pool"), "{e}");
        assert!(e.contains("--pool"), "{e}");
        let e = plan("layer", "store", true, false).unwrap_err().to_string();
        assert!(e.contains("-B layer"), "{e}");
    }

    #[test]
    fn copies_always_plan() {
        for s in KINDS {
            for d in KINDS {
                let p = plan_clone(&CloneRequest {
                    src: Side {
                        backend: s,
                        caps: Caps::default(),
                    },
                    dst: Side {
                        backend: d,
                        caps: Caps::default(),
                    },
                    same_pool: false,
                    from_snapshot: false,
                    mode: CloneMode::Copy,
                    stackers: &[],
                })
                .unwrap();
                assert_eq!(p == ClonePlan::NativeCopy, s == d);
            }
        }
    }
}
