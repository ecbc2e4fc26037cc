//! `berth_bdev::VolumeSpec`'s string form (`KIND:FIELD[:FIELD…]`, with `\:` and
//! `\\` escapes): parsing never panics, and whatever parses comes back equal
//! through Display, whose output is itself a fixed point.
#![no_main]

use berth_bdev::VolumeSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = s.parse::<VolumeSpec>() else {
        return;
    };
    let shown = spec.to_string();
    assert!(
        shown.starts_with(spec.kind().as_str()),
        "{s:?} shown as {shown:?}, not as a {}",
        spec.kind()
    );
    let back = match shown.parse::<VolumeSpec>() {
        Ok(b) => b,
        Err(e) => panic!("{s:?} parsed as {spec:?}, shown as {shown:?}, which fails: {e}"),
    };
    assert_eq!(back, spec, "{s:?} shown as {shown:?}");
    assert_eq!(
        back.to_string(),
        shown,
        "{s:?}: Display is not a fixed point"
    );
});
