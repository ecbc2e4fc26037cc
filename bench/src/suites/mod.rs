//! The suites, each measuring one pool through a [`Ctx`].

pub mod image;
pub mod io;
pub mod lifecycle;
pub mod meta;
pub mod scale;
pub mod space;

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_bdev::Caps;

use crate::error::{BenchError, Result};
use crate::model::{Measurement, Primitive, Suite, Unit};
use crate::pools::{describe, NativeOp, Target};
use crate::session::{self, Session};
use crate::stats::Summary;
use crate::Plan;

/// Where clones are full copies, N of them would take N times the rootfs.
pub const MAX_COPIES: usize = 10;

/// Told about progress; asked whether to stop.
pub trait Events: Sync {
    /// The run has `total` steps.
    fn begin(&self, total: u64);
    /// One step starts.
    fn step(&self, what: &str);
    /// Whether the user asked to stop (Ctrl-C).
    fn cancelled(&self) -> bool;
}

/// One pool being measured.
pub struct Ctx<'a> {
    pub session: &'a Session,
    pub target: &'a Target,
    pub plan: &'a Plan,
    pub events: &'a dyn Events,
    /// The container every suite starts from, made from the rootfs.
    pub src: String,
    pub rootfs: &'a Path,
    pub caps: Caps,
}

impl Ctx<'_> {
    pub fn backend(&self) -> &str {
        &self.target.pool.backend
    }

    pub fn pool(&self) -> &str {
        &self.target.pool.name
    }

    pub fn root(&self) -> &Path {
        &self.target.root
    }

    /// A container name unique to this run and pool.
    pub fn name(&self, what: &str) -> String {
        self.session.name(&format!("{}-{what}", self.pool()))
    }

    pub fn check(&self) -> Result<()> {
        if self.events.cancelled() {
            return Err(BenchError::Interrupted);
        }
        Ok(())
    }

    /// Runs `berth ARGS…` on the pool's store after settling; its wall time.
    pub fn berth(&self, args: &[&str]) -> Result<Duration> {
        self.check()?;
        session::settle(self.plan.cold)?;
        self.session.berth(self.root(), args)
    }

    /// Runs `berth ARGS…` untimed.
    pub fn berth_quiet(&self, args: &[&str]) -> Result<String> {
        self.session.berth_output(self.root(), args)
    }

    /// The pool's snapshot clone, or its copy where it has none: the clone
    /// mode the suites use, and a note when it is a copy.
    pub fn clone_mode(&self) -> (&'static str, Option<String>) {
        if self.caps.snapshot_clone {
            ("--snapshot", None)
        } else {
            (
                "--copy",
                Some(format!(
                    "{} has no snapshot clone: copies (at most {MAX_COPIES})",
                    self.backend()
                )),
            )
        }
    }

    /// How many clones the scale and space suites make: N, but at most
    /// [`MAX_COPIES`] where each clone is a full copy.
    pub fn clones(&self) -> usize {
        if self.caps.snapshot_clone {
            self.plan.clones
        } else {
            self.plan.clones.min(MAX_COPIES)
        }
    }

    /// Clones the source (or `from`) as `name` with the suites' clone mode.
    pub fn clone_src(&self, from: &str, name: &str) -> Result<Duration> {
        let (mode, _) = self.clone_mode();
        self.berth(&["clone", from, name, mode, "--pool", self.pool()])
    }

    pub fn destroy(&self, name: &str) -> Result<()> {
        self.berth_quiet(&["destroy", "--force", name]).map(|_| ())
    }

    /// Mounts a container; its rootfs path (the last line `berth mount` prints).
    pub fn mount(&self, name: &str) -> Result<PathBuf> {
        let out = self.berth_quiet(&["mount", name])?;
        out.lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| BenchError::Invalid(format!("berth mount {name} printed no path")))
    }

    pub fn umount(&self, name: &str) -> Result<()> {
        self.berth_quiet(&["umount", name]).map(|_| ())
    }

    /// Runs the primitive of `op` for object `id`: its description and time,
    /// or `None` where the backend has none.
    pub fn native(&self, op: NativeOp, id: &str) -> Option<(String, Result<Duration>)> {
        let native = self.target.native.as_ref()?;
        let cmds = native.commands(op, id)?;
        let text = describe(&cmds, native.work(), self.rootfs);
        let timed = self
            .check()
            .and_then(|()| session::settle(self.plan.cold))
            .and_then(|()| session::timed_all(&cmds));
        Some((text, timed))
    }

    pub fn row(&self, suite: Suite, operation: &str, unit: Unit) -> Measurement {
        Measurement::new(suite, self.backend(), self.pool(), operation, unit)
    }
}

/// Collects berth's and the primitive's times of one operation over the runs.
#[derive(Default)]
pub struct Pair {
    pub berth: Vec<Duration>,
    pub native: Vec<Duration>,
    pub command: Option<String>,
    pub error: Option<String>,
}

impl Pair {
    pub fn berth(&mut self, r: Result<Duration>) {
        match r {
            Ok(d) => self.berth.push(d),
            Err(BenchError::Interrupted) => {}
            Err(e) => {
                self.error.get_or_insert_with(|| format!("berth: {e}"));
            }
        }
    }

    pub fn native(&mut self, r: Option<(String, Result<Duration>)>) {
        let Some((command, r)) = r else {
            return;
        };
        self.command = Some(command);
        match r {
            Ok(d) => self.native.push(d),
            Err(BenchError::Interrupted) => {}
            Err(e) => {
                self.error.get_or_insert_with(|| format!("primitive: {e}"));
            }
        }
    }

    /// The row, with the figures in milliseconds.
    pub fn into_row(self, mut m: Measurement) -> Measurement {
        let primitive = match (self.command, Summary::of_durations(&self.native)) {
            (Some(command), Some(value)) => Some(Primitive { command, value }),
            _ => None,
        };
        m.error = self.error;
        m.with(Summary::of_durations(&self.berth), primitive)
    }
}
