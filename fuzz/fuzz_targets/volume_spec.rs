//! Volume specs' string form (`BACKEND:FIELD[:FIELD…]`, with `\:` and `\\`
//! escapes), through each backend's own reading of its fields: parsing never
//! panics, and whatever a backend accepts comes back equal through Display,
//! whose output is itself a fixed point.
#![no_main]

use berth_bdev::VolumeSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = s.parse::<VolumeSpec>() else {
        return;
    };
    assert_eq!(raw.to_string().parse::<VolumeSpec>().ok(), Some(raw.clone()));
    let Ok(spec) = berth_backends::parse_spec(s) else {
        return;
    };
    let shown = spec.to_string();
    assert!(
        shown.starts_with(&format!("{}:", spec.backend())),
        "{s:?} shown as {shown:?}, not as a {}",
        spec.backend()
    );
    let back = match berth_backends::parse_spec(&shown) {
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
