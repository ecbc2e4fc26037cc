//! The two spec shapes several backends share: one absolute path (`dir:/p/c1`,
//! `loop:/p/c1.img`, …) and a union of layers (`overlay:/lower:/upper`, aufs).

/// Defines `$ty { pub $field: PathBuf }`, the spec form `$backend:PATH`, with
/// `$ty::spec(path)` and `SpecForm` (exactly one absolute path without `..`).
macro_rules! path_spec {
    ($(#[$doc:meta])* $ty:ident { $field:ident }, $backend:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty {
            pub $field: std::path::PathBuf,
        }

        impl $ty {
            /// The spec naming `path`.
            pub fn spec(path: impl Into<std::path::PathBuf>) -> berth_bdev::VolumeSpec {
                berth_bdev::SpecForm::to_spec(&$ty { $field: path.into() })
            }
        }

        impl berth_bdev::SpecForm for $ty {
            const BACKEND: &'static str = $backend;

            fn from_fields(fields: &[String]) -> std::result::Result<Self, String> {
                let field = berth_bdev::spec::one_field(fields)?;
                Ok($ty {
                    $field: berth_bdev::spec::abs_path(field)?,
                })
            }

            fn to_fields(&self) -> Vec<String> {
                vec![berth_bdev::spec::path_field(&self.$field)]
            }
        }
    };
}

/// Defines `$ty { pub lowers, pub upper }`, the spec form of a union volume
/// `$backend:LOWER[:LOWER…]:UPPER` (topmost lower first), with `new`, the
/// pool's lenient `read_own` and `SpecForm`.
macro_rules! union_spec {
    ($(#[$doc:meta])* $ty:ident, $backend:expr, aliases: $aliases:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty {
            pub lowers: Vec<std::path::PathBuf>,
            pub upper: std::path::PathBuf,
        }

        impl $ty {
            pub fn new(lowers: Vec<std::path::PathBuf>, upper: std::path::PathBuf) -> Self {
                $ty { lowers, upper }
            }

            /// Reads `v` as this pool's own operations do: also as an upper
            /// alone, the form `volume_named` gives a volume whose lowers were
            /// never recorded (made before the record, or partly made), so that
            /// `destroy` still takes it.
            fn read_own(v: &berth_bdev::VolumeSpec) -> berth_bdev::Result<Self> {
                use berth_bdev::{BdevError, SpecForm};
                match (Self::from_spec(v), v.fields()) {
                    (Err(BdevError::InvalidSpec { spec, .. }), [upper]) => Ok($ty {
                        lowers: Vec::new(),
                        upper: berth_bdev::spec::abs_path(upper)
                            .map_err(|reason| BdevError::InvalidSpec { spec, reason })?,
                    }),
                    (r, _) => r,
                }
            }
        }

        impl berth_bdev::SpecForm for $ty {
            const BACKEND: &'static str = $backend;
            const ALIASES: &'static [&'static str] = $aliases;

            fn from_fields(fields: &[String]) -> std::result::Result<Self, String> {
                let (lowers, upper) = crate::lookup::union_from_fields($backend, fields)?;
                Ok($ty { lowers, upper })
            }

            fn to_fields(&self) -> Vec<String> {
                crate::lookup::union_to_fields(&self.lowers, &self.upper)
            }
        }
    };
}

pub(crate) use {path_spec, union_spec};
