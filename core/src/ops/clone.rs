//! `berth clone`: snapshot clones and copies, within a pool or across backends.

use std::path::PathBuf;

use berth_bdev::copy::Progress;
use berth_bdev::generic::refuse_xattrs;
use berth_bdev::plan::{self, CloneMode, ClonePlan, Side};
use berth_bdev::{Backend, CreateOpts, Revert};

use super::lifecycle::Frozen;
use super::{split_snapshot_ref, Berth, CopyTo};
use crate::error::{BerthError, Result};
use crate::images::record::validate_container_name;
use crate::images::ImageUse;
use crate::journal::{self, Commit, Intent, Planned};
use crate::store::{now, Container, Origin};

#[derive(Debug, Clone)]
pub struct CloneRequest {
    pub mode: CloneMode,
    pub pool: Option<String>,
    /// A backend's registry name (`-B`).
    pub backend: Option<String>,
    /// Destroy the clone when it stops (lxc-copy -e).
    pub ephemeral: bool,
    /// A copy into a pool whose backend cannot store xattrs leaves them out
    /// instead of being refused (`--drop-xattrs`).
    pub drop_xattrs: bool,
    /// Size of a copy into a block-backed pool (`--size`); by default it is sized
    /// from the data the source holds.
    pub size: Option<u64>,
    /// A copy of a running detached container freezes it for the whole copy
    /// (`--freeze`); without it, such a copy is refused.
    pub freeze: bool,
}

/// How a clone from `src_b`'s pool into `dst_b`'s is carried out, decided by
/// the contract's planner from the two pools' capabilities.
pub fn plan_clone(
    src_b: &dyn Backend,
    dst_b: &dyn Backend,
    same_pool: bool,
    from_snapshot: bool,
    mode: CloneMode,
) -> Result<ClonePlan> {
    let stackers = berth_backends::stackers();
    Ok(plan::plan_clone(&plan::CloneRequest {
        src: Side {
            backend: src_b.name(),
            caps: src_b.caps(),
        },
        dst: Side {
            backend: dst_b.name(),
            caps: dst_b.caps(),
        },
        same_pool,
        from_snapshot,
        mode,
        stackers: &stackers,
    })?)
}

impl Berth {
    /// Clones `src` (a container, or `NAME@SNAP` for one of its snapshots) as `dst`.
    pub fn clone_container(
        &self,
        src: &str,
        dst: &str,
        req: &CloneRequest,
        progress: &dyn Progress,
    ) -> Result<Container> {
        let (src_name, snap) = split_snapshot_ref(src);
        validate_container_name(dst)?;
        // Before anything is read: the source cannot change under the copy.
        let _locks = self.lock_containers(&[dst], &[src_name])?;
        if self.store().exists(dst) {
            return Err(BerthError::ContainerExists(dst.to_owned()));
        }
        let origin = self.store().container(src_name)?;
        let source = match snap {
            Some(s) => origin.snapshot(s)?.volume.clone(),
            None => origin.volume.clone(),
        };
        let src_pool = self.store().pool(&origin.pool)?;
        let dst_pool =
            self.resolve_pool(req.pool.as_deref(), req.backend.as_deref(), &origin.pool)?;
        let src_b = self.backend(&src_pool)?;
        let dst_b = self.backend(&dst_pool)?;
        let caps = dst_b.caps();
        let same_pool = src_pool.name == dst_pool.name;
        let plan = plan_clone(
            src_b.as_ref(),
            dst_b.as_ref(),
            same_pool,
            snap.is_some(),
            req.mode,
        )?;
        if req.size.is_some() && plan.shares_data() {
            return Err(BerthError::Invalid(
                "--size applies to copies (--copy); a snapshot clone keeps its origin's size"
                    .to_owned(),
            ));
        }

        // A detached container that runs is frozen, its filesystem synced,
        // while the clone is taken: the clone holds one consistent moment.
        let running = match snap {
            None => self.running_detached(src_name)?,
            Some(_) => None,
        };
        if running.is_some() && !plan.shares_data() && !req.freeze {
            return Err(BerthError::Busy {
                name: src_name.to_owned(),
                state: "running",
                hint: "a copy takes long and would see its files change; stop it, clone it with \
                       --snapshot, or pass --freeze to freeze it for the whole copy",
            });
        }
        if plan.shares_data() {
            // A clone that reads the origin's live data must not start from a
            // volume that is being written.
            if snap.is_none() && caps.clone_reads_live_origin {
                self.refuse_if_active(src_name, "stop or unmount it before a snapshot clone")?;
            }
            // A layer that cannot show xattrs would hide the source's: refused
            // as `create` refuses such a tree. A source whose own mount cannot
            // show them either is not scanned (an O(files) walk): its clone
            // shows exactly what it shows, and the branches lose nothing.
            if !src_b.caps().lacks_xattrs {
                refuse_xattrs(
                    dst_b.as_ref(),
                    &src_b
                        .branch_dirs(&source)
                        .iter()
                        .map(PathBuf::as_path)
                        .collect::<Vec<_>>(),
                    &[
                        "copy without them (--copy --drop-xattrs)",
                        "clone into a pool whose backend keeps xattrs",
                    ],
                )?;
            }
        }

        let mut intent = Intent::new("clone", dst, Commit::RecordExists);
        intent.reads.push(src_name.to_owned());
        intent.creates.push(Planned {
            pool: dst_pool.name.clone(),
            name: dst.to_owned(),
            snap: None,
        });
        self.journaled(&intent, || {
            let mut rv = Revert::new();
            // Copies take long: other commands may use the store meanwhile.
            let volume = self.store().unlocked(|| {
                let _frozen = running.as_ref().map(Frozen::new).transpose()?;
                let to = CopyTo {
                    backend: dst_b.as_ref(),
                    name: dst,
                    pool: &dst_pool.name,
                    opts: CreateOpts {
                        size: req.size,
                        fstype: dst_pool.fstype,
                    },
                    drop_xattrs: req.drop_xattrs,
                };
                self.volume_by_plan(plan, src_b.as_ref(), &source, to, &mut rv, progress)
            })?;
            journal::crash_point("clone", "made");
            let pinned = plan.pins_origin();
            let c = Container {
                name: dst.to_owned(),
                pool: dst_pool.name.clone(),
                volume,
                created: now(),
                template: origin.template.clone(),
                origin: Some(Origin {
                    container: src_name.to_owned(),
                    snapshot: snap.map(str::to_owned),
                    pinned,
                    mode: match req.mode {
                        CloneMode::Snapshot => "snapshot",
                        CloneMode::Copy => "copy",
                    }
                    .to_owned(),
                }),
                ephemeral: req.ephemeral,
                // Limits and security travel with the rootfs, as lxc-copy
                // copies the config; an address is the origin's own.
                run: crate::confine::RunConfig {
                    ipv4: None,
                    ..origin.run.clone()
                },
                snapshots: Vec::new(),
                volume_name: None,
                // A snapshot clone reads what its origin reads of the image's
                // copy, so the copy stays pinned by it too.
                image: origin.image.clone().map(|u| ImageUse {
                    pinned: u.pinned && plan.shares_data(),
                    ..u
                }),
            };
            self.store().save(&c)?;
            journal::crash_point("clone", "recorded");
            rv.commit();
            Ok(c)
        })
    }
}
