//! The `--from-tar` importer as `berth create` runs it: `populate` with a
//! `Template::FromTar` (GNU tar, run through the real `HostRunner`), then
//! `write_hostname` into the new rootfs. Whatever the archive holds (absolute
//! names, `..`, symlinks followed by writes through them, hard links out,
//! device nodes, fifos, huge declared sizes, pax and GNU long-name headers),
//! nothing outside the target directory may change and nothing may panic.
//!
//! The input is the text format of `berth_fuzz::tarball`. Each input gets a
//! fresh sentinel directory:
//!
//! ```text
//! S/archive.tar  S/canary  S/a/1/…/8 (absolute paths land here)
//! S/t/1/…/8/target/lost+found (the rootfs)
//! ```
//!
//! Everything in S but below `target` is snapshotted before and compared
//! after. Needs root (device nodes, ownership), like `berth create`.
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};

use berth_bdev::cmd::HostRunner;
use berth_bdev::copy::NoProgress;
use berth_core::templates::{populate, write_hostname, Template};
use berth_fuzz::tarball::{self, MAX_DOTDOTS};
use berth_fuzz::tree;
use libfuzzer_sys::fuzz_target;

/// `S/<top>/1/…/<depth>`, created.
fn nest(s: &Path, top: &str) -> PathBuf {
    let mut p = s.join(top);
    for i in 1..=MAX_DOTDOTS {
        p.push(i.to_string());
    }
    fs::create_dir_all(&p).expect("create the nested directories");
    p
}

fuzz_target!(|data: &[u8]| {
    let sentinel = tempfile::Builder::new()
        .prefix("berth-fuzz-tar")
        .tempdir()
        .expect("temp dir");
    let s = sentinel.path();
    let abs_root = nest(s, "a");
    let target = nest(s, "t").join("target");
    fs::create_dir_all(target.join("lost+found")).expect("create the target");
    fs::write(s.join("canary"), "canary").expect("write the canary");
    let archive = s.join("archive.tar");
    let abs_root = abs_root.to_str().expect("a UTF-8 temp dir");
    fs::write(&archive, tarball::build(data, abs_root)).expect("write the archive");

    let before = tree::snapshot(s, &target);
    let imported = populate(
        &Template::FromTar(archive),
        &target,
        &HostRunner,
        &NoProgress,
    );
    // `berth create` names the rootfs after a successful import.
    let named = imported
        .as_ref()
        .ok()
        .map(|()| write_hostname(&target, "fuzz"));
    let after = tree::snapshot(s, &target);
    let changed = tree::diff(&before, &after);
    assert!(
        changed.is_empty(),
        "the import (result {imported:?}, hostname {named:?}) changed things outside \
         the target:\n{}",
        changed.join("\n")
    );
});
