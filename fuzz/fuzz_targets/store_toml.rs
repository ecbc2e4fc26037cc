//! The TOML files of berth's state root, as the real `Store` reads them: a
//! container config (`containers/NAME.toml`), a pool config (`pools/NAME.toml`)
//! and a run state (`run/NAME.toml`), hostile or corrupt. Reading and using
//! them never panics, and whatever parses is written back and read again
//! unchanged (a later `save` must not corrupt it).
//!
//! Input: the three files' contents, separated by lines `---`; a missing part
//! leaves that file out.
#![no_main]

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use berth_bdev::PoolConfig;
use berth_core::store::{dependents, Container, Store};
use libfuzzer_sys::fuzz_target;

/// One state root for the whole run, locked once; its files are replaced per
/// input. It lives under TMPDIR, which run.sh removes afterwards.
fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix("berth-fuzz-store")
            .tempdir()
            .expect("temp dir")
            .keep();
        Store::open(&root, true).expect("open the store")
    })
}

/// Removes every file the last input left, so each input starts clean.
fn clear(root: &Path) {
    for d in ["containers", "pools", "run"] {
        for e in fs::read_dir(root.join(d))
            .expect("read the store")
            .flatten()
        {
            fs::remove_file(e.path()).expect("clear the store");
        }
    }
}

fn check_container(s: &Store, c: &Container, all: &[Container]) {
    let _ = dependents(all, &c.name);
    let _ = c.snapshot("s1");
    let _ = c.run.entries();
    let _ = c.run.limits();
    let _ = c.run.security();
    // Saved under another name so the original file stays what it was.
    let mut copy = c.clone();
    copy.name = "roundtrip".to_owned();
    s.save(&copy).expect("save a container that was read");
    let back = s
        .container("roundtrip")
        .expect("read back a saved container");
    assert_eq!(back, copy, "a container changed through save and load");
    s.remove("roundtrip").expect("remove");
}

fn check_pool(p: &PoolConfig) {
    let text = toml::to_string_pretty(p).expect("serialize a pool that was read");
    let back: PoolConfig = toml::from_str(&text).expect("read back a pool");
    assert_eq!(&back, p, "a pool changed through save and load:\n{text}");
}

fuzz_target!(|data: &[u8]| {
    let s = store();
    let root = s.root().to_path_buf();
    clear(&root);
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split("\n---\n");
    let files = ["containers/x.toml", "pools/p.toml", "run/x.toml"];
    for (file, part) in files.iter().zip(&mut parts) {
        fs::write(root.join(file), part).expect("write the input");
    }

    if let Ok(all) = s.containers() {
        for c in &all {
            check_container(s, c, &all);
        }
    }
    if let Ok(c) = s.container("x") {
        assert_eq!(s.containers().ok(), Some(vec![c.clone()]));
    }
    if let Ok(pools) = s.pools() {
        pools.iter().for_each(check_pool);
    }
    if let Ok(p) = s.pool("p") {
        check_pool(&p);
    }
    let _ = s.run_states();
    if let Ok(Some(r)) = s.run_state("x") {
        let _ = r.process_alive();
        s.save_run_state("roundtrip", &r)
            .expect("save a run state that was read");
        let back = s.run_state("roundtrip").expect("read back a run state");
        assert_eq!(back, Some(r), "a run state changed through save and load");
    }
});
