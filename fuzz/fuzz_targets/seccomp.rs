//! seccomp profiles in Docker's JSON format: reading and checking one
//! (`SeccompProfile::from_json`) and compiling it with libseccomp for a
//! container's capabilities never panics, and a compiled program is what the
//! kernel takes (1 to 4096 instructions). The first byte picks the caps.
#![no_main]

use std::path::Path;

use berth_runtime::seccomp::SeccompProfile;
use libfuzzer_sys::fuzz_target;
use rustix::thread::CapabilitySet;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(json) else {
        return;
    };
    let Ok(profile) = SeccompProfile::from_json(text, Path::new("fuzz.json")) else {
        return;
    };
    let caps = match pick % 4 {
        0 => CapabilitySet::empty(),
        1 => berth_runtime::DEFAULT_CAPS,
        2 => CapabilitySet::all(),
        _ => berth_runtime::DEFAULT_CAPS | CapabilitySet::SYS_ADMIN,
    };
    if let Ok(prog) = profile.compile(caps) {
        assert!(
            (1..=4096).contains(&prog.len()),
            "{} instructions",
            prog.len()
        );
    }
});
