//! Mounting a container's rootfs: for `berth mount` (kept until `berth umount`)
//! and for `berth run` (released when the command exits), and the cleanup of what
//! a crashed berth left mounted.

use std::path::PathBuf;

use berth_bdev::{mount, MountGuard};
use tracing::{info, warn};

use super::{Berth, DestroyRequest};
use crate::error::{BerthError, Result};
use crate::store::{proc_starttime, Container, RunState};

/// A rootfs mounted for `berth run`. Release it with `Berth::finish_run`.
pub struct Mounted {
    pub container: Container,
    pub rootfs: PathBuf,
    pub read_only: bool,
    guard: MountGuard,
}

impl Berth {
    /// Fails with `Busy` while the container runs or is mounted.
    pub fn refuse_if_active(&self, name: &str, hint: &'static str) -> Result<()> {
        let Some(s) = self.store().run_state(name)? else {
            return Ok(());
        };
        let state = if s.pid.is_none() {
            "mounted"
        } else if s.process_alive() {
            "running"
        } else {
            return Ok(());
        };
        Err(BerthError::Busy {
            name: name.to_owned(),
            state,
            hint,
        })
    }

    /// Fails unless the live volume of `name` may be replaced (restore, flatten):
    /// nothing runs or mounts it, and no clone reads it.
    pub(super) fn refuse_if_in_use(&self, name: &str, hint: &'static str) -> Result<()> {
        self.refuse_if_active(name, hint)?;
        let readers = self.pinned_read_only(name)?;
        if !readers.is_empty() {
            return Err(BerthError::ReadByClones {
                name: name.to_owned(),
                clones: readers,
            });
        }
        Ok(())
    }

    /// Reads the record only once it holds the container's lock: not while a
    /// restore, flatten or destroy of it is under way.
    fn mount_rootfs(&self, name: &str) -> Result<(Container, MountGuard, PathBuf, bool)> {
        let _locks = self.lock_containers(&[name], &[])?;
        let c = self.store().container(name)?;
        let c = &c;
        self.refuse_if_active(&c.name, "stop it, or `berth umount` it, first")?;
        let backend = self.backend_of(c)?;
        // Clones read this volume directly: keep it read-only while they exist.
        let read_only = !self.pinned_read_only(&c.name)?.is_empty();
        let at = self.store().mountpoint(&c.name);
        std::fs::create_dir_all(&at).map_err(BerthError::io("create directory", &at))?;
        let guard = backend.mount(&c.volume, &at, read_only)?;
        Ok((c.clone(), guard, at, read_only))
    }

    /// `berth mount`: mounts the rootfs until `umount`; returns where. Mounting
    /// a container `berth mount` already mounted returns the same place, so
    /// that `$(berth mount c)` always names the rootfs.
    pub fn mount(&self, name: &str) -> Result<PathBuf> {
        if let Some(at) = self.mounted_at(name)? {
            return Ok(at);
        }
        let (c, guard, at, _) = self.mount_rootfs(name)?;
        self.store().save_run_state(
            name,
            &RunState {
                pid: None,
                starttime: None,
                mountpoint: at.clone(),
                volume: c.volume.clone(),
                detached: None,
                ipv4: None,
            },
        )?;
        let _ = guard.persist();
        Ok(at)
    }

    /// Where `berth mount` mounted `name`, while it still is.
    fn mounted_at(&self, name: &str) -> Result<Option<PathBuf>> {
        berth_bdev::names::validate_name(name)?;
        Ok(match self.store().run_state(name)? {
            Some(s) if s.pid.is_none() && mount::is_mountpoint(&s.mountpoint) => Some(s.mountpoint),
            _ => None,
        })
    }

    /// `berth umount`.
    pub fn umount(&self, name: &str) -> Result<()> {
        let c = self.store().container(name)?;
        let state = match self.store().run_state(name)? {
            Some(s) if s.pid.is_none() => s,
            Some(_) => {
                return Err(BerthError::Busy {
                    name: name.to_owned(),
                    state: "running",
                    hint: "it is unmounted when its command exits",
                })
            }
            None => {
                return Err(BerthError::Invalid(format!(
                    "container {name:?} is not mounted"
                )))
            }
        };
        self.backend_of(&c)?
            .unmount(&state.volume, &state.mountpoint)?;
        self.store().clear_run_state(name)?;
        Ok(())
    }

    /// Mounts the rootfs for `berth run` and records this process as its runner.
    pub fn start_run(&self, name: &str) -> Result<Mounted> {
        let (c, guard, rootfs, read_only) = self.mount_rootfs(name)?;
        let pid = std::process::id();
        self.store().save_run_state(
            name,
            &RunState {
                pid: Some(pid),
                starttime: proc_starttime(pid),
                mountpoint: rootfs.clone(),
                volume: c.volume.clone(),
                detached: None,
                ipv4: None,
            },
        )?;
        Ok(Mounted {
            container: c,
            rootfs,
            read_only,
            guard,
        })
    }

    /// Unmounts after `berth run`, and destroys an ephemeral container.
    pub fn finish_run(&self, m: Mounted) -> Result<()> {
        let name = m.container.name.clone();
        let released = m.guard.release();
        self.store().clear_run_state(&name)?;
        released?;
        if m.container.ephemeral {
            self.destroy(
                &name,
                DestroyRequest {
                    with_snapshots: true,
                    ..DestroyRequest::default()
                },
            )?;
        }
        Ok(())
    }

    /// Cleans up after a berth that died: scratch mounts of an interrupted copy or
    /// create, helper daemons the backends left, and runs whose berth process is
    /// gone (ephemeral containers among them are destroyed).
    pub(super) fn collect_garbage(&self) -> Result<()> {
        // Scratch directories are per process: those of dead processes go.
        let scratch = self.store().scratch();
        let mut stale_mounts = Vec::new();
        let mut stale_scratch = false;
        if let Ok(entries) = std::fs::read_dir(&scratch) {
            for e in entries.flatten() {
                let tag = e.file_name().to_string_lossy().into_owned();
                if !berth_bdev::process::tag_alive(&tag) {
                    stale_scratch |= !mount::mounts_under(&e.path()).is_empty();
                    self.clean_scratch_of(&tag);
                }
            }
        }
        // A rootfs mount that no run state accounts for was left by a berth that
        // died between mounting and recording it.
        let mnt_root = self.store().mountpoint("");
        for m in mount::mounts_under(&mnt_root) {
            let name = m
                .strip_prefix(&mnt_root)
                .ok()
                .and_then(|r| r.components().next());
            let recorded = match name {
                Some(n) => self
                    .store()
                    .run_state(&n.as_os_str().to_string_lossy())?
                    .is_some(),
                None => false,
            };
            if !recorded {
                stale_mounts.push(m);
            }
        }
        for m in &stale_mounts {
            info!(mount = %m.display(), "unmounting what an interrupted berth left");
            if let Err(e) = mount::unmount(m) {
                warn!(mount = %m.display(), error = %e, "detaching instead");
                let _ = mount::unmount_detach(m);
            }
        }
        let recovered = self.recover_interrupted()?;
        let mut stale_runs = false;
        for (name, state) in self.store().run_states()? {
            if state.pid.is_none() || state.process_alive() {
                continue;
            }
            stale_runs = true;
            info!(name, "cleaning up after a berth that died while running it");
            // A detached container outlives a killed monitor: kill its init,
            // which takes every process of its pid namespace along.
            if let Some(init) = state.detached.as_ref().and_then(|d| d.init_process()) {
                info!(
                    name,
                    pid = init.pid,
                    "killing the container its monitor left"
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(init.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                if !init.wait_exit(std::time::Duration::from_secs(10)) {
                    warn!(name, pid = init.pid, "the container's init did not die");
                }
            }
            let Ok(c) = self.store().container(&name) else {
                self.store().clear_run_state(&name)?;
                continue;
            };
            if let Err(e) = self
                .backend_of(&c)
                .and_then(|b| Ok(b.unmount(&state.volume, &state.mountpoint)?))
            {
                warn!(name, error = %e, "stale mount left in place");
                continue;
            }
            self.store().clear_run_state(&name)?;
            // A console socket nobody serves any more.
            let _ = std::fs::remove_file(super::lifecycle::console::socket_path(
                self.store().root(),
                &name,
            ));
            // The container died with its berth; anything left is killed.
            let parent = c.run.cgroup_parent.as_deref();
            if let Err(e) = berth_runtime::cgroup::kill_and_remove_stale(parent, &name) {
                warn!(name, error = %e, "could not remove the container's cgroup");
            }
            if state.ipv4.is_some() {
                crate::net::clean_stale(self.store().root(), &name);
            }
            if c.ephemeral {
                self.destroy(
                    &name,
                    DestroyRequest {
                        with_snapshots: true,
                        ..DestroyRequest::default()
                    },
                )?;
            }
        }
        // Helper daemons of a live operation in another berth must stay.
        let stale = !stale_mounts.is_empty() || stale_runs || stale_scratch || recovered > 0;
        if stale && !self.live_operations() {
            for pool in self.store().pools()? {
                let cleaned = self.backend(&pool).and_then(|b| Ok(b.cleanup_stale()?));
                if let Err(e) = cleaned {
                    warn!(pool = %pool.name, error = %e, "could not clean up the pool");
                }
            }
        }
        Ok(())
    }
}
