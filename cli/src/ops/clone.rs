//! `berth clone`: snapshot clones and copies, within a pool or across backends.

use berth_bdev::copy::Progress;
use berth_bdev::fsutil::allocated_bytes;
use berth_bdev::names::validate_name;
use berth_bdev::plan::{plan_clone, CloneMode, ClonePlan};
use berth_bdev::{Backend, BackendKind, BdevError, CreateOpts, Revert, VolumeSpec, DEFAULT_SIZE};

use super::{split_snapshot_ref, Berth, CopyTo};
use crate::error::{BerthError, Result};
use crate::store::{now, Container, Origin};

#[derive(Debug, Clone)]
pub struct CloneRequest {
    pub mode: CloneMode,
    pub pool: Option<String>,
    pub backend: Option<BackendKind>,
    /// Destroy the clone when it stops (lxc-copy -e).
    pub ephemeral: bool,
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
        validate_name(dst)?;
        if self.store().exists(dst) {
            return Err(BerthError::ContainerExists(dst.to_owned()));
        }
        let origin = self.store().container(src_name)?;
        let source = match snap {
            Some(s) => origin.snapshot(s)?.volume.clone(),
            None => origin.volume.clone(),
        };
        let src_pool = self.store().pool(&origin.pool)?;
        let dst_pool = self.resolve_pool(req.pool.as_deref(), req.backend, &origin.pool)?;
        let src_b = self.backend(&src_pool)?;
        let dst_b = self.backend(&dst_pool)?;
        let caps = dst_b.caps();
        let same_pool = src_pool.name == dst_pool.name;
        let plan = plan_clone(source.kind(), dst_pool.backend, &caps, same_pool, req.mode)?;

        if let ClonePlan::SnapshotClone { .. } = plan {
            if snap.is_some() && source.kind() == dst_pool.backend && !caps.clone_from_snapshot {
                return Err(BdevError::CloneRefused {
                    src: source.kind(),
                    dst: dst_pool.backend,
                    reason: "this pool cannot clone from a snapshot without copying".to_owned(),
                    alternatives: vec!["make an independent copy (--copy)".to_owned()],
                }
                .into());
            }
            // A clone that reads the origin's live data must not start from a
            // volume that is being written.
            if snap.is_none() && caps.clone_reads_live_origin {
                self.refuse_if_active(src_name, "stop or unmount it before a snapshot clone")?;
            }
        }

        let mut rv = Revert::new();
        let volume = match plan {
            ClonePlan::SnapshotClone { .. } => dst_b.snapshot_clone(&source, dst, &mut rv)?,
            ClonePlan::NativeCopy | ClonePlan::GenericCopy => {
                let to = CopyTo {
                    backend: dst_b.as_ref(),
                    name: dst,
                    opts: self.copy_opts(&source, &dst_pool, src_b.as_ref()),
                };
                self.full_copy(src_b.as_ref(), &source, to, &mut rv, progress)?
            }
        };
        let pinned = matches!(plan, ClonePlan::SnapshotClone { pins_origin: true });
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
            // Limits and security travel with the rootfs, as lxc-copy copies the config.
            run: origin.run.clone(),
            snapshots: Vec::new(),
        };
        self.store().save(&c)?;
        rv.commit();
        Ok(c)
    }

    /// Size for a copy into a block-backed pool: the source's data with headroom,
    /// and never less than the pool's default.
    fn copy_opts(
        &self,
        source: &VolumeSpec,
        pool: &berth_bdev::PoolConfig,
        src_b: &dyn Backend,
    ) -> CreateOpts {
        let used = match source.tree_path() {
            Some(p) => allocated_bytes(p).ok(),
            None => src_b
                .usage(source)
                .ok()
                .map(|u| u.limit_bytes.unwrap_or(u.used_bytes)),
        };
        let base = pool.size.unwrap_or(DEFAULT_SIZE);
        CreateOpts {
            size: Some(used.map_or(base, |u| base.max(u.saturating_mul(3) / 2))),
            fstype: pool.fstype,
        }
    }
}
