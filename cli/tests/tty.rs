//! `berth run` on a real terminal, as root: a tmux session types into a shell
//! that runs `berth run c1 -- /bin/sh`, and reads the screen back. Checks the
//! container's own pty, the window size (at start and after a resize),
//! Ctrl-C reaching the container as a byte, the exit code and the host
//! terminal's mode afterwards.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use berth_bdev::cmd::{self, HostRunner};
use berth_tests::harness::skip;
use berth_tests::tmux::Tmux;

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
    let Some(t) = Tmux::start_sized("berth-tty", 100, 30, "env PS1='$ ' sh") else {
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
