//! Undo steps for multi-step operations (Incus's `revert`).
//!
//! Each step that changes the host registers its undo right after it succeeds. If the
//! operation returns early, dropping the `Revert` runs the undo steps in reverse;
//! `commit` keeps everything.

use tracing::warn;

type Undo = Box<dyn FnOnce() -> Result<(), String> + Send>;

#[derive(Default)]
pub struct Revert {
    undo: Vec<(String, Undo)>,
}

impl std::fmt::Debug for Revert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<&str> = self.undo.iter().map(|(d, _)| d.as_str()).collect();
        f.debug_struct("Revert").field("undo", &steps).finish()
    }
}

impl Revert {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an undo step; `what` names it in the warning if it fails.
    pub fn add<E: std::fmt::Display>(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce() -> Result<(), E> + Send + 'static,
    ) {
        self.undo.push((
            what.into(),
            Box::new(move || f().map_err(|e| e.to_string())),
        ));
    }

    /// Keeps every change.
    pub fn commit(mut self) {
        self.undo.clear();
    }

    /// Hands the undo steps to a caller that runs them later.
    pub fn into_cleanup(mut self) -> Cleanup {
        Cleanup {
            undo: std::mem::take(&mut self.undo),
        }
    }

    /// Moves another revert's steps into this one (they run first on failure).
    pub fn absorb(&mut self, mut other: Revert) {
        self.undo.append(&mut other.undo);
    }

    /// Runs every step now, last-added first, for a caller that checks the
    /// outcome: all steps run, and the first failure is returned as
    /// `(step, error)`.
    pub fn run_now(mut self) -> Result<(), (String, String)> {
        Self::run_all(&mut self.undo)
    }

    fn run_all(undo: &mut Vec<(String, Undo)>) -> Result<(), (String, String)> {
        let mut first = None;
        while let Some((what, f)) = undo.pop() {
            if let Err(e) = f() {
                warn!(step = %what, error = %e, "undo failed");
                first.get_or_insert((what, e));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Revert {
    fn drop(&mut self) {
        let _ = Self::run_all(&mut self.undo);
    }
}

/// Undo steps that a caller runs explicitly, or that run on drop.
#[derive(Default)]
pub struct Cleanup {
    undo: Vec<(String, Undo)>,
}

impl Cleanup {
    pub fn run(mut self) {
        let _ = Revert::run_all(&mut self.undo);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Revert::run_all(&mut self.undo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn drop_runs_undo_in_reverse_and_commit_keeps() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut rv = Revert::new();
            for i in 0..3 {
                let log = log.clone();
                rv.add(format!("step {i}"), move || {
                    log.lock().unwrap().push(i);
                    Ok::<(), String>(())
                });
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);

        let mut rv = Revert::new();
        let l2 = log.clone();
        rv.add("never", move || {
            l2.lock().unwrap().push(99);
            Ok::<(), String>(())
        });
        rv.commit();
        assert_eq!(log.lock().unwrap().len(), 3);
    }

    #[test]
    fn failing_undo_does_not_stop_the_others() {
        let hit = Arc::new(Mutex::new(false));
        {
            let mut rv = Revert::new();
            let h = hit.clone();
            rv.add("first", move || {
                *h.lock().unwrap() = true;
                Ok::<(), String>(())
            });
            rv.add("second", || Err::<(), _>("boom"));
        }
        assert!(*hit.lock().unwrap());
        let mut rv = Revert::new();
        rv.add("first", || Err::<(), _>("early"));
        rv.add("second", || Err::<(), _>("late"));
        assert_eq!(rv.run_now(), Err(("second".to_owned(), "late".to_owned())));
    }
}
