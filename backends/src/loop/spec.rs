//! The string form of loop specs: `loop:IMAGE`.

use std::path::PathBuf;

use berth_bdev::spec::{abs_path, one_field, path_field};
use berth_bdev::{SpecForm, VolumeSpec};

use super::NAME;

/// A loop volume or snapshot: `loop:IMAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopSpec {
    pub image: PathBuf,
}

impl LoopSpec {
    /// The spec of the image file `image`.
    pub fn spec(image: impl Into<PathBuf>) -> VolumeSpec {
        LoopSpec {
            image: image.into(),
        }
        .to_spec()
    }
}

impl SpecForm for LoopSpec {
    const BACKEND: &'static str = NAME;

    fn from_fields(fields: &[String]) -> std::result::Result<Self, String> {
        Ok(LoopSpec {
            image: abs_path(one_field(fields)?)?,
        })
    }

    fn to_fields(&self) -> Vec<String> {
        vec![path_field(&self.image)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::BdevError;
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
