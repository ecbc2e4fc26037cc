//! `berth run` on a real terminal, as root: a tmux session types into a shell
//! that runs `berth run c1 -- /bin/sh`, and reads the screen back. Checks the
//! container's own pty, the window size (at start and after a resize),
//! Ctrl-C reaching the container as a byte, the exit code and the host
//! terminal's mode afterwards.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, HostRunner};

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A detached `cols`×`rows` session running `sh`, or `None` after a skip.
    fn start(cols: u16, rows: u16) -> Option<Tmux> {
        if cmd::run(&HostRunner, "tmux", &["-V"]).is_err() {
            skip("tmux is not installed");
            return None;
        }
        let t = Tmux {
            socket: format!("berth-tty-{}", std::process::id()),
        };
        let (x, y) = (cols.to_string(), rows.to_string());
        t.tmux(&["new-session", "-d", "-x", &x, "-y", &y, "env PS1='$ ' sh"]);
        Some(t)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let mut all = vec!["-L", self.socket.as_str()];
        all.extend_from_slice(args);
        cmd::run(&HostRunner, "tmux", &all)
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"))
            .stdout
    }

    /// Types `text` and Enter.
    fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-l", text]);
        self.tmux(&["send-keys", "Enter"]);
    }

    /// The whole pane, history included, wrapped lines joined.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-"])
    }

    /// Waits until the screen contains `want`; returns the screen.
    fn wait_for(&self, want: &str) -> String {
        self.wait_until(want, |screen| screen.contains(want))
    }

    /// Waits until a line starts with `prefix`; returns that line.
    fn wait_for_line(&self, prefix: &str) -> String {
        let screen = self.wait_until(prefix, |s| s.lines().any(|l| l.starts_with(prefix)));
        let line = screen.lines().find(|l| l.starts_with(prefix));
        line.unwrap_or_default().to_owned()
    }

    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what:?}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = cmd::run(&HostRunner, "tmux", &["-L", &self.socket, "kill-server"]);
    }
}

fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required under CI, but: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// No mount may be left under `root` once berth has exited.
fn assert_no_mounts_under(root: &Path) {
    let leaked = berth_bdev::mount::mounts_under(root);
    for m in &leaked {
        let _ = berth_bdev::mount::unmount_detach(m);
    }
    assert!(leaked.is_empty(), "leaked mounts: {leaked:?}");
}

#[test]
fn interactive_shell_gets_a_pty_of_its_own() {
    if !is_root() {
        skip("berth run needs root");
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("berth-tty-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let berth = env!("CARGO_BIN_EXE_berth");
    let root_arg = root.path().to_str().unwrap();
    cmd::run(&HostRunner, berth, &["--root", root_arg, "create", "c1"]).unwrap();
    let Some(t) = Tmux::start(100, 30) else {
        return;
    };
    t.wait_for("$ ");
    // No -t: stdin is a terminal, so berth gives the command a pty.
    t.line(&format!("{berth} --root {root_arg} run c1 -- /bin/sh"));
    t.wait_for("built-in shell");

    t.line("tty; stty size");
    t.wait_for("/dev/pts/0");
    t.wait_for("30 100");

    // SIGWINCH: the new size reaches the container.
    t.tmux(&["resize-window", "-x", "90", "-y", "25"]);
    std::thread::sleep(Duration::from_millis(300));
    t.line("stty size");
    t.wait_for("25 90");

    // Ctrl-C is a byte for the container's terminal: it stops the sleep in
    // there, not berth.
    t.line("sleep 100");
    std::thread::sleep(Duration::from_millis(300));
    t.tmux(&["send-keys", "C-c"]);
    t.line("echo alive-$((6*7))");
    t.wait_for("alive-42");

    t.line("exit 3");
    // Wait for the host shell's prompt: a line typed ahead would be echoed
    // by the terminal before the prompt and the output land after it.
    t.wait_until("the host prompt", |s| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_end() == "$")
    });
    t.line(
        "echo code=$?; echo modes: $(stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)')",
    );
    // berth's exit code, and the host terminal back in canonical mode with echo.
    assert_eq!(t.wait_for_line("code="), "code=3");
    assert_eq!(t.wait_for_line("modes: "), "modes: icanon echo");
    drop(t);
    assert_no_mounts_under(root.path());
}
