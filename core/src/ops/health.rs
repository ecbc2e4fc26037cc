//! What `berth ls` reports for each container, including the ones it cannot
//! use: a broken record (or pool) and a volume that vanished. Also the check
//! that keeps a broken record that may be a clone from losing its origin.

use std::collections::BTreeMap;

use berth_bdev::plan::CloneMode;
use berth_bdev::{Backend, BdevError, VolumeSpec};
use serde::Serialize;
use tracing::debug;

use super::Berth;
use crate::damage::{BrokenRecord, Damage, Salvage, Scan};
use crate::error::Result;
use crate::store::Container;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    /// A detached container whose processes are frozen (`berth freeze`).
    Frozen,
    Mounted,
    Stopped,
    /// Its volume is gone; `berth destroy` removes the record.
    Missing,
    /// Its record or its pool cannot be read.
    Broken,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Frozen => "frozen",
            State::Mounted => "mounted",
            State::Stopped => "stopped",
            State::Missing => "missing",
            State::Broken => "broken",
        }
    }
}

/// One line of `berth ls`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    /// None when a broken record does not say.
    pub pool: Option<String>,
    pub backend: Option<String>,
    pub state: State,
    pub origin: Option<String>,
    pub snapshots: Option<usize>,
    pub ephemeral: bool,
    pub volume: Option<VolumeSpec>,
    /// The host pid of a detached container's init while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When a detached container started, in seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// Its address on a bridge while it runs on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// Why it is broken: the file, line and reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<Damage>,
}

/// A pool as far as a container is concerned.
enum PoolLook {
    Usable(Box<dyn Backend>),
    /// Its backend does not work on this host now; nothing can be said about volumes.
    Unusable,
    Broken(Damage),
    Absent,
}

/// Whether a backend error means the volume does not exist.
pub(crate) fn is_not_found(e: &BdevError) -> bool {
    match e {
        BdevError::NotFound { .. } => true,
        BdevError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

impl Berth {
    /// Every container, healthy or not, sorted by name.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let scan = self.store().scan_containers()?;
        let pools = self.store().scan_pools()?;
        let mut looks: BTreeMap<String, PoolLook> = BTreeMap::new();
        let mut out = Vec::new();
        for c in scan.ok {
            let look = looks
                .entry(c.pool.clone())
                .or_insert_with(|| self.look_at_pool(&c.pool, &pools));
            let run = self.store().run_state(&c.name);
            let (detached, ipv4) = match &run {
                Ok(Some(s)) if s.process_alive() => (s.detached.clone(), s.ipv4),
                _ => (None, None),
            };
            let mut state = match run {
                Ok(Some(s)) if s.pid.is_none() => State::Mounted,
                Ok(Some(s)) if s.process_alive() => match &s.detached {
                    Some(d) if berth_runtime::cgroup::is_frozen(&d.cgroup) => State::Frozen,
                    _ => State::Running,
                },
                Ok(_) => State::Stopped,
                Err(e) => {
                    debug!(name = %c.name, error = %e, "unreadable run state");
                    State::Stopped
                }
            };
            let mut broken = None;
            match look {
                PoolLook::Broken(d) => {
                    state = State::Broken;
                    broken = Some(pool_damage(&c.pool, d));
                }
                PoolLook::Absent => {
                    state = State::Broken;
                    broken = Some(Damage {
                        path: self.store().container_path(&c.name),
                        line: None,
                        column: None,
                        reason: format!("its pool {:?} does not exist", c.pool),
                    });
                }
                PoolLook::Usable(b) if state == State::Stopped => {
                    if self.volume_gone(b.as_ref(), c.volume_name(), &c.volume) {
                        state = State::Missing;
                    }
                }
                PoolLook::Usable(_) | PoolLook::Unusable => {}
            }
            let mut entry = listed(c, state, broken);
            entry.ipv4 = ipv4;
            if let Some(d) = detached {
                entry.pid = d.init;
                entry.started = Some(d.started);
            }
            out.push(entry);
        }
        for b in scan.broken {
            out.push(Listed {
                name: b.name,
                pool: b.salvage.pool,
                backend: b.salvage.volume.as_ref().map(|v| v.backend().to_owned()),
                state: State::Broken,
                origin: None,
                snapshots: None,
                ephemeral: false,
                volume: b.salvage.volume,
                pid: None,
                started: None,
                ipv4: None,
                broken: Some(b.damage),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn look_at_pool(&self, name: &str, pools: &Scan<berth_bdev::PoolConfig>) -> PoolLook {
        if let Some(p) = pools.ok.iter().find(|p| p.name == name) {
            return match self.backend(p) {
                Ok(b) => PoolLook::Usable(b),
                Err(e) => {
                    debug!(pool = name, error = %e, "pool unusable");
                    PoolLook::Unusable
                }
            };
        }
        match pools.broken.iter().find(|b| b.name == name) {
            Some(b) => PoolLook::Broken(b.damage.clone()),
            None => PoolLook::Absent,
        }
    }

    /// Whether volume `v` of container `name` is gone. The volume is looked up
    /// by the container's name first (cheap, and right unless a restore or
    /// flatten renamed it); when that does not find it, `usage` decides: a "not
    /// found" is gone, a volume it can read is there, and one it cannot read is
    /// gone only when nothing carries the container's name either.
    pub(crate) fn volume_gone(&self, backend: &dyn Backend, name: &str, v: &VolumeSpec) -> bool {
        let named = backend.volume_named(name);
        if matches!(&named, Ok(Some(found)) if found == v) {
            return false;
        }
        match backend.usage(v) {
            Ok(_) => false,
            Err(e) if is_not_found(&e) => true,
            Err(e) => {
                debug!(name, volume = %v, error = %e, "usage unreadable");
                matches!(named, Ok(None))
            }
        }
    }

    /// The broken container records that may be clones depending on `origin`:
    /// their origin cannot be read or names it, and the pool they may be in can
    /// make clones that pin it. Destroying `origin` must wait for them.
    pub fn broken_dependents(&self, origin: &Container) -> Result<Vec<BrokenRecord>> {
        let scan = self.store().scan_containers()?;
        if scan.broken.is_empty() {
            return Ok(Vec::new());
        }
        let pools = self.store().scan_pools()?;
        Ok(scan
            .broken
            .into_iter()
            .filter(|b| b.name != origin.name && b.salvage.origin.may_depend_on(&origin.name))
            .filter(|b| self.could_pin(origin, &b.salvage, &pools))
            .collect())
    }

    /// Whether a clone described by `clue` may pin `origin`: true unless every
    /// pool it may be in is known and cannot make a pinning clone of it.
    fn could_pin(
        &self,
        origin: &Container,
        clue: &Salvage,
        pools: &Scan<berth_bdev::PoolConfig>,
    ) -> bool {
        use crate::damage::OriginClue;
        if matches!(
            clue.origin,
            OriginClue::From {
                pinned: Some(true),
                ..
            }
        ) {
            return true;
        }
        let candidates: Vec<&berth_bdev::PoolConfig> = match (&clue.pool, &clue.volume) {
            (Some(p), _) => match pools.ok.iter().find(|x| &x.name == p) {
                Some(pool) => vec![pool],
                None => return true,
            },
            (None, Some(v)) => pools
                .ok
                .iter()
                .filter(|p| p.backend == v.backend())
                .collect(),
            (None, None) if !pools.broken.is_empty() => return true,
            (None, None) => pools.ok.iter().collect(),
        };
        if candidates.is_empty() {
            return true;
        }
        let Ok(src_b) = self
            .store()
            .pool(&origin.pool)
            .and_then(|p| self.backend(&p))
        else {
            return true;
        };
        candidates.into_iter().any(|pool| {
            let Ok(b) = self.backend(pool) else {
                return true;
            };
            let same_pool = pool.name == origin.pool;
            super::clone::plan_clone(
                src_b.as_ref(),
                b.as_ref(),
                same_pool,
                false,
                CloneMode::Snapshot,
            )
            .is_ok_and(|p| p.pins_origin())
        })
    }
}

/// A container's damage when its pool's file is damaged: that file, and why.
pub(crate) fn pool_damage(pool: &str, d: &Damage) -> Damage {
    Damage {
        path: d.path.clone(),
        line: None,
        column: None,
        reason: format!("its pool {pool:?} is broken: {}", d.what()),
    }
}

fn listed(c: Container, state: State, broken: Option<Damage>) -> Listed {
    Listed {
        backend: Some(c.volume.backend().to_owned()),
        state,
        origin: match (&c.origin, &c.image) {
            (Some(o), _) => Some(match &o.snapshot {
                Some(s) => format!("{}@{s}", o.container),
                None => o.container.clone(),
            }),
            (None, Some(i)) => Some(format!("image {}", i.name)),
            (None, None) => None,
        },
        snapshots: Some(c.snapshots.len()),
        ephemeral: c.ephemeral,
        name: c.name,
        pool: Some(c.pool),
        volume: Some(c.volume),
        pid: None,
        started: None,
        ipv4: None,
        broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_not_found_means_gone() {
        let nf = BdevError::NotFound {
            what: "volume",
            name: "c".into(),
        };
        assert!(is_not_found(&nf));
        let io = BdevError::io("stat", "/x")(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(is_not_found(&io));
        let denied =
            BdevError::io("stat", "/x")(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!is_not_found(&denied));
        assert!(!is_not_found(&BdevError::Interrupted));
    }

    #[test]
    fn states_print_lowercase() {
        assert_eq!(State::Missing.as_str(), "missing");
        assert_eq!(serde_json::to_string(&State::Broken).unwrap(), "\"broken\"");
    }
}
