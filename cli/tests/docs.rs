//! `berth completions` and `berth man`: generated from the clap definitions,
//! so every subcommand shows up in both.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::ffi::OsStr;

use berth_bdev::cmd::{HostRunner, Runner};

fn berth(args: &[&OsStr]) -> String {
    HostRunner
        .run(env!("CARGO_BIN_EXE_berth"), args)
        .unwrap()
        .stdout
}

#[test]
fn completions_cover_the_subcommands() {
    let bash = berth(&[OsStr::new("completions"), OsStr::new("bash")]);
    assert!(bash.contains("_berth()"), "{bash}");
    assert!(bash.contains("snapshot") && bash.contains("--no-wait"));
    for shell in ["zsh", "fish"] {
        let out = berth(&[OsStr::new("completions"), OsStr::new(shell)]);
        assert!(out.contains("flatten"), "{shell}: {out}");
    }
}

#[test]
fn man_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(&[OsStr::new("man"), dir.path().as_os_str()]);
    for page in [
        "berth.1",
        "berth-create.1",
        "berth-pool-add.1",
        "berth-snapshot-rm.1",
    ] {
        let path = dir.path().join(page);
        assert!(
            out.contains(&*path.to_string_lossy()),
            "{page} not listed: {out}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    // `help` has no page: the pages are the help.
    assert!(!dir.path().join("berth-help.1").exists());
}
