//! A tmux server of a test's own: a real terminal to drive berth through
//! (`send-keys`) and read back (`capture-pane`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, HostRunner};

use crate::harness::skip;

/// A tmux server of our own (its own socket), killed on drop, its socket
/// file removed (kill-server leaves it).
pub struct Tmux {
    socket: String,
    path: Option<PathBuf>,
}

impl Tmux {
    /// A server running `command` in a 200x50 window (`None`, after a
    /// skip, without tmux); `tag` names its socket.
    pub fn start(tag: &str, command: &str) -> Option<Tmux> {
        Tmux::start_sized(tag, 200, 50, command)
    }

    /// [`Tmux::start`] with a `cols`×`rows` window.
    pub fn start_sized(tag: &str, cols: u16, rows: u16, command: &str) -> Option<Tmux> {
        if !cmd::have_program("tmux") {
            skip("tmux is not installed");
            return None;
        }
        let mut t = Tmux {
            socket: format!("{tag}-{}", std::process::id()),
            path: None,
        };
        let (x, y) = (cols.to_string(), rows.to_string());
        t.tmux(&["new-session", "-d", "-x", &x, "-y", &y, command]);
        let path = t.tmux(&["display-message", "-p", "#{socket_path}"]);
        t.path = Some(PathBuf::from(path.trim()));
        Some(t)
    }

    pub fn tmux(&self, args: &[&str]) -> String {
        let mut all = vec!["-L", self.socket.as_str()];
        all.extend_from_slice(args);
        cmd::run(&HostRunner, "tmux", &all)
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"))
            .stdout
    }

    pub fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-l", text]);
        self.tmux(&["send-keys", "Enter"]);
    }

    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-"])
    }

    /// Waits until the screen contains `want`; returns the screen.
    pub fn wait_for(&self, want: &str) -> String {
        self.wait_until(want, |screen| screen.contains(want))
    }

    /// Waits until a line starts with `prefix`; returns that line.
    pub fn wait_for_line(&self, prefix: &str) -> String {
        let screen = self.wait_until(prefix, |s| s.lines().any(|l| l.starts_with(prefix)));
        let line = screen.lines().find(|l| l.starts_with(prefix));
        line.unwrap_or_default().to_owned()
    }

    /// Waits until `done(screen)`; returns the screen.
    pub fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = cmd::run(&HostRunner, "tmux", &["-L", &self.socket, "kill-server"]);
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}
