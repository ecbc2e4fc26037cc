//! The string form of loop specs: `loop:IMAGE`.

use super::NAME;

crate::spec_shapes::path_spec!(
    /// A loop volume or snapshot: its image file, `loop:IMAGE`.
    LoopSpec { image },
    NAME
);

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::BdevError;
    use berth_bdev::SpecForm;
    use std::path::Path;

    #[test]
    fn specs_round_trip_with_escapes() {
        for s in ["loop:/p/c1.img", "loop:/we\\:ird\\\\dir/c1.img"] {
            let v = LoopSpec::canonical(&s.parse().unwrap()).unwrap();
            assert_eq!(v.to_string(), s);
        }
        let v = LoopSpec::spec("/p:q/c.img");
        assert_eq!(v.to_string(), "loop:/p\\:q/c.img");
        assert_eq!(
            LoopSpec::from_spec(&v).unwrap().image,
            Path::new("/p:q/c.img")
        );
    }

    #[test]
    fn bad_specs_are_rejected_with_a_reason() {
        for (s, why) in [
            ("loop:c.img", "absolute"),
            ("loop:/p/../c.img", ".."),
            ("loop:/a.img:/b.img", "exactly one"),
            ("loop:", "exactly one"),
        ] {
            let e = LoopSpec::canonical(&s.parse().unwrap()).unwrap_err();
            assert!(matches!(e, BdevError::InvalidSpec { .. }), "{s}: {e}");
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
    }
}
