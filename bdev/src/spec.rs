//! Volume specs: an opaque handle naming the backend that made a volume and where
//! its data lives, in that backend's own fields.
//!
//! The string form is LXC's `BACKEND:FIELD[:FIELD…]` (e.g. `dir:/var/lib/berth/c1`,
//! or a layered volume's `BACKEND:/lower:/upper`). Within a field, `\:` stands
//! for a colon and `\\` for a backslash, so any path round-trips. This module
//! knows the syntax only: what the fields mean, and which are valid, is each
//! backend's business ([`SpecForm`]).

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{BdevError, Result};

/// Where a volume's data lives. The mount point is never part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeSpec {
    backend: String,
    fields: Vec<String>,
}

impl VolumeSpec {
    /// A spec of `backend` with its `fields` (unescaped).
    pub fn new(backend: &str, fields: Vec<String>) -> Self {
        VolumeSpec {
            backend: backend.to_owned(),
            fields,
        }
    }

    /// The name of the backend that made the volume.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The location fields, unescaped, as the backend wrote them.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }
}

/// A backend's typed form of its specs. The backend owns both directions, so its
/// string form keeps round-tripping however the fields are laid out.
pub trait SpecForm: Sized {
    /// The backend name written before the first colon.
    const BACKEND: &'static str;

    /// Other names the backend's specs are read under (LXC's spellings).
    const ALIASES: &'static [&'static str] = &[];

    /// Reads the fields; the error says what is wrong with them.
    fn from_fields(fields: &[String]) -> std::result::Result<Self, String>;

    fn to_fields(&self) -> Vec<String>;

    fn to_spec(&self) -> VolumeSpec {
        VolumeSpec::new(Self::BACKEND, self.to_fields())
    }

    /// The typed form of `v`, which must be this backend's.
    fn from_spec(v: &VolumeSpec) -> Result<Self> {
        if v.backend != Self::BACKEND && !Self::ALIASES.contains(&v.backend.as_str()) {
            return Err(BdevError::foreign(
                v,
                format!("the {} backend", Self::BACKEND),
            ));
        }
        Self::from_fields(&v.fields).map_err(|reason| BdevError::InvalidSpec {
            spec: v.to_string(),
            reason,
        })
    }

    /// Checks `v`'s fields and returns it in canonical form.
    fn canonical(v: &VolumeSpec) -> Result<VolumeSpec> {
        let mut v = v.clone();
        v.backend = Self::BACKEND.to_owned();
        Ok(Self::from_spec(&v)?.to_spec())
    }
}

/// The one field of a spec that takes exactly one.
pub fn one_field(fields: &[String]) -> std::result::Result<&str, String> {
    match fields {
        [f] if !f.is_empty() => Ok(f),
        _ => Err("takes exactly one location".to_owned()),
    }
}

/// A field that must be an absolute path without `..` (and without NUL).
pub fn abs_path(field: &str) -> std::result::Result<PathBuf, String> {
    let bad = |reason: &str| Err(format!("{field:?}: {reason}"));
    if field.contains('\0') {
        return bad("contains a NUL byte");
    }
    let path = Path::new(field);
    if !path.is_absolute() {
        return bad("paths must be absolute");
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return bad("paths must not contain '..'");
    }
    Ok(path.to_path_buf())
}

/// The string form of a path field.
pub fn path_field(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn escape(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

fn split_fields(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ':')) => out.last_mut().map(|f| f.push(e)).unwrap_or(()),
                _ => return Err("a backslash must be followed by ':' or '\\'".to_owned()),
            },
            ':' => out.push(String::new()),
            c => out.last_mut().map(|f| f.push(c)).unwrap_or(()),
        }
    }
    Ok(out)
}

impl fmt::Display for VolumeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.backend)?;
        for field in &self.fields {
            write!(f, ":{}", escape(field))?;
        }
        Ok(())
    }
}

/// Parses the syntax only; the backend checks the fields when it reads the spec.
impl FromStr for VolumeSpec {
    type Err = BdevError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| BdevError::InvalidSpec {
            spec: s.to_owned(),
            reason,
        };
        let (backend, rest) = s.split_once(':').ok_or_else(|| {
            bad("expected BACKEND:LOCATION, e.g. dir:/var/lib/berth/c1".to_owned())
        })?;
        if backend.is_empty() || !backend.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(format!(
                "{backend:?} is not a backend name (letters and digits)"
            )));
        }
        let fields = split_fields(rest).map_err(bad)?;
        Ok(VolumeSpec {
            backend: backend.to_owned(),
            fields,
        })
    }
}

impl Serialize for VolumeSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VolumeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up backend with layered specs, to test the contract without naming
    /// a real one.
    #[derive(Debug, PartialEq)]
    struct Stack {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
    }

    impl SpecForm for Stack {
        const BACKEND: &'static str = "stack";
        fn from_fields(fields: &[String]) -> std::result::Result<Self, String> {
            let mut paths = fields
                .iter()
                .map(|f| abs_path(f))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let upper = paths.pop().ok_or("needs LOWER:UPPER")?;
            if paths.is_empty() {
                return Err("needs LOWER:UPPER".to_owned());
            }
            Ok(Stack {
                lowers: paths,
                upper,
            })
        }
        fn to_fields(&self) -> Vec<String> {
            self.lowers
                .iter()
                .chain(std::iter::once(&self.upper))
                .map(|p| path_field(p))
                .collect()
        }
    }

    #[test]
    fn specs_round_trip_through_their_string_form() {
        for s in [
            "tree:/srv/c1",
            "named:tank/berth/c1@snap1",
            "stack:/a:/b:/up",
        ] {
            let v: VolumeSpec = s.parse().unwrap();
            assert_eq!(v.to_string(), s);
        }
        let v: VolumeSpec = "stack:/a:/b:/up".parse().unwrap();
        assert_eq!(v.backend(), "stack");
        assert_eq!(
            Stack::from_spec(&v).unwrap(),
            Stack {
                lowers: vec!["/a".into(), "/b".into()],
                upper: "/up".into()
            }
        );
    }

    #[test]
    fn colons_and_backslashes_in_fields_are_escaped() {
        let v = Stack {
            lowers: vec!["/we:ird\\dir".into()],
            upper: "/u:p".into(),
        }
        .to_spec();
        let s = v.to_string();
        assert_eq!(s, "stack:/we\\:ird\\\\dir:/u\\:p");
        assert_eq!(s.parse::<VolumeSpec>().unwrap(), v);
    }

    #[test]
    fn bad_syntax_is_rejected_with_a_reason() {
        for (s, why) in [
            ("tree", "BACKEND:LOCATION"),
            (":/x", "backend name"),
            ("a/b:/x", "backend name"),
            ("tree:/a\\b", "backslash"),
        ] {
            let e = s.parse::<VolumeSpec>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn a_backend_checks_its_own_fields_and_refuses_foreign_specs() {
        let e = Stack::from_spec(&"stack:/only".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("LOWER:UPPER"), "{e}");
        let e = Stack::from_spec(&"stack:rel:/u".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = Stack::from_spec(&"stack:/a/../b:/u".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
        let e = Stack::from_spec(&"tree:/x".parse().unwrap()).unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
        assert_eq!(
            one_field(&["a".into(), "b".into()]).unwrap_err(),
            "takes exactly one location"
        );
    }

    #[test]
    fn serde_uses_the_string_form() {
        #[derive(Serialize, Deserialize)]
        struct C {
            v: VolumeSpec,
        }
        let t = toml::to_string(&C {
            v: "tree:/x".parse().unwrap(),
        })
        .unwrap();
        assert_eq!(t.trim(), "v = \"tree:/x\"");
        let c: C = toml::from_str(&t).unwrap();
        assert_eq!(c.v.backend(), "tree");
    }
}
