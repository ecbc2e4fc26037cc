//! The qcow2 spec form: `qcow2:IMAGE`, an absolute path.

use super::NAME;

crate::spec_shapes::path_spec!(
    /// A qcow2 volume or snapshot: the image file, `qcow2:IMAGE`.
    Qcow2Spec { image },
    NAME
);

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::{BdevError, SpecForm, VolumeSpec};
    use std::path::PathBuf;

    #[test]
    fn specs_round_trip_with_escapes() {
        let v = Qcow2Spec::spec("/p/we:ird\\c1.qcow2");
        let s = v.to_string();
        assert_eq!(s, "qcow2:/p/we\\:ird\\\\c1.qcow2");
        let back: VolumeSpec = s.parse().unwrap();
        assert_eq!(Qcow2Spec::canonical(&back).unwrap(), v);
        assert_eq!(
            Qcow2Spec::from_spec(&back).unwrap().image,
            PathBuf::from("/p/we:ird\\c1.qcow2")
        );
    }

    #[test]
    fn bad_specs_are_rejected() {
        for (s, why) in [
            ("qcow2:rel.qcow2", "absolute"),
            ("qcow2:/p/../c.qcow2", ".."),
            ("qcow2:/a:/b", "exactly one"),
            ("qcow2:", "exactly one"),
        ] {
            let e = Qcow2Spec::canonical(&s.parse().unwrap()).unwrap_err();
            assert!(matches!(e, BdevError::InvalidSpec { .. }), "{s}: {e}");
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
        let e = Qcow2Spec::from_spec(&"loop:/p/c.img".parse().unwrap()).unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    }
}
