//! A progress bar for copies, drawn only when the copy is big enough to take more
//! than a moment, and only on a terminal.

use std::io::IsTerminal;
use std::sync::Mutex;

use berth_bdev::copy::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Copies smaller than this finish before a bar would help.
const MIN_BYTES: u64 = 64 << 20;

pub struct CopyBar {
    bar: Mutex<Option<ProgressBar>>,
    label: String,
}

impl CopyBar {
    pub fn new(label: impl Into<String>) -> Self {
        CopyBar {
            bar: Mutex::new(None),
            label: label.into(),
        }
    }

    pub fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }
}

impl Progress for CopyBar {
    fn total(&self, _files: u64, bytes: u64) {
        if bytes < MIN_BYTES || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(self.label.clone());
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }

    fn cancelled(&self) -> bool {
        berth_core::interrupt::requested()
    }

    fn advance(&self, _files: u64, bytes: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.inc(bytes);
            }
        }
    }
}

impl Drop for CopyBar {
    fn drop(&mut self) {
        self.finish();
    }
}
