//! Records that cannot be read. One damaged container or pool file must not take
//! the whole store down: it is listed as `broken`, with where and why, and what
//! could still be read from it decides which operations must refuse around it.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use berth_bdev::names::validate_name;
use berth_bdev::{PoolConfig, VolumeSpec};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;
use crate::store::{toml_names, Container, Store, DEFAULT_POOL};

/// Where and why a record file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub reason: String,
}

impl Damage {
    /// The position and reason, without the path: "line 3, column 9: invalid string".
    pub fn what(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("line {l}, column {c}: {}", self.reason),
            (Some(l), None) => format!("line {l}: {}", self.reason),
            _ => self.reason.clone(),
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what())
    }
}

/// Whether a broken container record had an origin, as far as it can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum OriginClue {
    /// The part of the file that would name it is unreadable.
    Unknown,
    /// The whole file parses as TOML and names no origin.
    None,
    From {
        container: String,
        /// None when the flag itself is unreadable.
        pinned: Option<bool>,
    },
}

impl OriginClue {
    /// Whether the record may be a clone that reads `origin`'s data.
    pub fn may_depend_on(&self, origin: &str) -> bool {
        match self {
            OriginClue::Unknown => true,
            OriginClue::None => false,
            OriginClue::From { container, pinned } => container == origin && *pinned != Some(false),
        }
    }
}

/// The registry name of a backend named in a damaged record, if it is one.
fn known_backend(name: &str) -> Option<String> {
    berth_backends::lookup(name).ok().map(|r| r.name.to_owned())
}

/// What could still be read from a broken record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Salvage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub origin: OriginClue,
}

/// A record file (container or pool) that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenRecord {
    /// The file's name without `.toml`.
    pub name: String,
    pub damage: Damage,
    pub salvage: Salvage,
}

impl BrokenRecord {
    /// A record that parsed as nothing at all (unreadable file).
    pub fn unreadable(name: &str, path: &Path, reason: String) -> BrokenRecord {
        BrokenRecord {
            name: name.to_owned(),
            damage: Damage {
                path: path.to_path_buf(),
                line: None,
                column: None,
                reason,
            },
            salvage: salvage(""),
        }
    }
}

/// The healthy and the broken records of one kind.
#[derive(Debug, Clone)]
pub struct Scan<T> {
    pub ok: Vec<T>,
    pub broken: Vec<BrokenRecord>,
}

/// Parses a record, or says where and why it is damaged.
/// A record file the store reads. `check` looks at what its type alone cannot
/// (a pool's backend must be registered), placing the damage on its line.
pub trait Record: DeserializeOwned {
    fn check(_path: &Path, _text: &str) -> Result<(), Damage> {
        Ok(())
    }
}

impl Record for Container {}

impl Record for crate::store::RunState {}

impl Record for PoolConfig {
    fn check(path: &Path, text: &str) -> Result<(), Damage> {
        /// Only the backend, read through the registry.
        #[derive(serde::Deserialize)]
        struct Backend {
            #[serde(rename = "backend", deserialize_with = "registered")]
            _backend: String,
        }
        fn registered<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
            let name = <String as serde::Deserialize>::deserialize(d)?;
            berth_backends::lookup(&name)
                .map(|r| r.name.to_owned())
                .map_err(|e| serde::de::Error::custom(e.to_string()))
        }
        parse_toml::<Backend>(path, text).map(|_| ())
    }
}

/// Reads a record of type `T` from `text` (the contents of `path`).
pub fn parse_record<T: Record>(path: &Path, text: &str) -> Result<T, Damage> {
    let record = parse_toml(path, text)?;
    T::check(path, text)?;
    Ok(record)
}

fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, Damage> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) if !text.trim().is_empty() => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            _ => (None, None),
        };
        let reason = if text.trim().is_empty() {
            "the file is empty".to_owned()
        } else {
            e.message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        };
        Damage {
            path: path.to_path_buf(),
            line,
            column,
            reason,
        }
    })
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Reads what it can from a damaged record: the whole document when it is valid
/// TOML (only a field is wrong), else line by line, trusting only keys that sit
/// under their own section header.
pub fn salvage(text: &str) -> Salvage {
    if let Ok(doc) = text.parse::<toml::Table>() {
        let s = |t: &toml::Table, k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let origin = match doc.get("origin") {
            None => OriginClue::None,
            Some(toml::Value::Table(o)) => match s(o, "container") {
                Some(container) => OriginClue::From {
                    container,
                    pinned: o.get("pinned").and_then(|v| v.as_bool()),
                },
                None => OriginClue::Unknown,
            },
            Some(_) => OriginClue::Unknown,
        };
        return Salvage {
            pool: s(&doc, "pool"),
            volume: s(&doc, "volume").and_then(|v| v.parse().ok()),
            backend: s(&doc, "backend").and_then(|b| known_backend(&b)),
            origin,
        };
    }
    let mut out = Salvage {
        pool: None,
        volume: None,
        backend: None,
        origin: OriginClue::Unknown,
    };
    let mut section = String::new();
    let mut origin_from = None;
    let mut pinned = None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            continue;
        }
        // One line at a time: a damaged line elsewhere cannot mislead this one.
        let Ok(kv) = t.parse::<toml::Table>() else {
            continue;
        };
        for (k, v) in kv {
            match (section.as_str(), k.as_str(), v) {
                ("", "pool", toml::Value::String(p)) => out.pool = Some(p),
                ("", "volume", toml::Value::String(v)) => out.volume = v.parse().ok(),
                ("", "backend", toml::Value::String(b)) => out.backend = known_backend(&b),
                ("origin", "container", toml::Value::String(c)) => origin_from = Some(c),
                ("origin", "pinned", toml::Value::Boolean(p)) => pinned = Some(p),
                _ => {}
            }
        }
    }
    // Without the whole file, an origin that is not seen may still have been there.
    if let Some(container) = origin_from {
        out.origin = OriginClue::From { container, pinned };
    }
    out
}

// Scanning the store: reading never fails on one broken file.
impl Store {
    /// Reads every record in `dir`: the healthy ones parsed, the others broken
    /// with where and why. Only an unreadable directory is an error.
    fn scan<T: Record>(&self, dir: &str, name_of: fn(&T) -> &str) -> Result<Scan<T>> {
        let dir = self.root().join(dir);
        let mut scan = Scan {
            ok: Vec::new(),
            broken: Vec::new(),
        };
        for name in toml_names(&dir)? {
            let path = dir.join(format!("{name}.toml"));
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                // Removed since the directory was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    scan.broken.push(BrokenRecord::unreadable(
                        &name,
                        &path,
                        format!("cannot read it: {e}"),
                    ));
                    continue;
                }
            };
            match parse_record(&path, &text) {
                // Records name themselves; one whose name is not its file's
                // would act on another container's paths.
                Ok(v) if name_of(&v) != name => scan.broken.push(BrokenRecord::unreadable(
                    &name,
                    &path,
                    format!("it names itself {:?}, not {name:?}", name_of(&v)),
                )),
                Ok(v) => scan.ok.push(v),
                Err(damage) => scan.broken.push(BrokenRecord {
                    name,
                    damage,
                    salvage: salvage(&text),
                }),
            }
        }
        Ok(scan)
    }

    /// Every container record, healthy or broken.
    pub fn scan_containers(&self) -> Result<Scan<Container>> {
        self.scan("containers", |c: &Container| c.name.as_str())
    }

    /// Every pool, the built-in one first; a file named after it is ignored.
    pub fn scan_pools(&self) -> Result<Scan<PoolConfig>> {
        let mut scan: Scan<PoolConfig> = self.scan("pools", |p: &PoolConfig| p.name.as_str())?;
        scan.ok.retain(|p| p.name != DEFAULT_POOL);
        scan.broken.retain(|b| b.name != DEFAULT_POOL);
        scan.ok.insert(0, self.default_pool());
        Ok(scan)
    }

    /// The record of `name` if it exists but cannot be read.
    pub fn broken_container(&self, name: &str) -> Result<Option<BrokenRecord>> {
        validate_name(name)?;
        let path = self.container_path(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                let why = format!("cannot read it: {e}");
                return Ok(Some(BrokenRecord::unreadable(name, &path, why)));
            }
        };
        Ok(parse_record::<Container>(&path, &text)
            .err()
            .map(|damage| BrokenRecord {
                name: name.to_owned(),
                damage,
                salvage: salvage(&text),
            }))
    }

    /// The pool `name` if its file exists but cannot be read.
    pub fn broken_pool(&self, name: &str) -> Result<Option<BrokenRecord>> {
        if name == DEFAULT_POOL {
            return Ok(None);
        }
        validate_name(name)?;
        Ok(self
            .scan_pools()?
            .broken
            .into_iter()
            .find(|b| b.name == name))
    }

    /// Containers that keep pool `name` from being removed: its own, and broken
    /// records that may be in it (theirs cannot be told apart from others').
    pub(crate) fn pool_users(&self, name: &str) -> Result<Vec<String>> {
        let scan = self.scan_containers()?;
        let mut users: Vec<String> = scan
            .ok
            .into_iter()
            .filter(|c| c.pool == name)
            .map(|c| c.name)
            .collect();
        users.extend(
            scan.broken
                .into_iter()
                .filter(|b| b.salvage.pool.as_deref().is_none_or(|p| p == name))
                .map(|b| format!("{} (broken record)", b.name)),
        );
        for img in self.images()? {
            if img.copy_on(name).is_some() {
                users.push(format!(
                    "image {} (its copy; `berth image rm` or `berth image prune`)",
                    img.name
                ));
            }
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Rec {
        name: String,
        pool: String,
    }

    impl Record for Rec {}

    #[test]
    fn damage_names_line_and_column() {
        let text = "name = \"a\"\npool = \n";
        let d = parse_record::<Rec>(Path::new("/s/a.toml"), text).unwrap_err();
        assert_eq!(d.line, Some(2));
        assert!(d.column.is_some());
        assert!(!d.reason.contains('\n'), "{}", d.reason);
        let shown = d.to_string();
        assert!(shown.starts_with("/s/a.toml: line 2, column"), "{shown}");
    }

    #[test]
    fn empty_file_says_so() {
        let d = parse_record::<Rec>(Path::new("/s/a.toml"), "").unwrap_err();
        assert_eq!(d.reason, "the file is empty");
        assert_eq!(d.line, None);
        assert_eq!(d.to_string(), "/s/a.toml: the file is empty");
    }

    #[test]
    fn missing_field_is_damage() {
        let d = parse_record::<Rec>(Path::new("/s/a.toml"), "name = \"a\"\n").unwrap_err();
        assert!(d.reason.contains("pool"), "{}", d.reason);
    }

    #[test]
    fn truncated_record_keeps_its_head_but_not_its_origin() {
        let s =
            salvage("name = \"c\"\npool = \"ovl\"\nvolume = \"overlay:/a:/u\"\ncreated = 1\nephem");
        assert_eq!(s.pool.as_deref(), Some("ovl"));
        assert_eq!(
            s.volume.map(|v| v.backend().to_owned()).as_deref(),
            Some("overlay")
        );
        assert_eq!(s.origin, OriginClue::Unknown);
        assert!(s.origin.may_depend_on("anything"));
    }

    #[test]
    fn truncated_record_with_its_origin_section() {
        let s = salvage("name = \"c\"\npool = \"p\"\n[origin]\ncontainer = \"base\"\npinned = true\nmode = \"sn");
        assert_eq!(
            s.origin,
            OriginClue::From {
                container: "base".into(),
                pinned: Some(true)
            }
        );
        assert!(s.origin.may_depend_on("base"));
        assert!(!s.origin.may_depend_on("other"));
        // A key under another section is not taken for a top-level one.
        let s = salvage("name = \"c\"\n[run]\npool = \"x\"\n[broken");
        assert_eq!(s.pool, None);
    }

    #[test]
    fn valid_toml_with_a_bad_field_is_read_whole() {
        let s = salvage("name = \"c\"\npool = \"p\"\nvolume = \"nonsense\"\ncreated = \"x\"\n");
        assert_eq!(s.pool.as_deref(), Some("p"));
        assert_eq!(s.volume, None);
        assert_eq!(s.origin, OriginClue::None);
        assert!(!s.origin.may_depend_on("c"));
        let s = salvage("name = \"c\"\n[origin]\ncontainer = \"b\"\npinned = false\n");
        assert!(!s.origin.may_depend_on("b"));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_col("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(line_col("ab\ncdé\nx", 8), (3, 1));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
