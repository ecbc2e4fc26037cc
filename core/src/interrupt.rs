//! Ctrl-C and SIGTERM: the first one asks the running operation to stop at its next
//! safe point, so that its undo steps and mount guards run; a second Ctrl-C ends
//! berth at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers; call once at start-up.
pub fn install() -> std::io::Result<()> {
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the shutdown check sees the flag set by an earlier signal.
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag().clone())?;
        signal_hook::flag::register(sig, flag().clone())?;
    }
    Ok(())
}

/// Whether the user asked berth to stop.
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}
