//! Reading an LXC container's config for `berth adopt`: `key = value` lines as
//! LXC 5.0 reads them (whole-line `#` comments, blanks around `=`, one pair of
//! matching quotes stripped, an empty value clearing a list key), what its
//! `lxc.rootfs.path` names, and which settings map onto a berth container.

use std::path::{Path, PathBuf};

/// Why a container cannot be adopted; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("{path:?} line {line}: {reason}")]
    Config {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("no LXC config at {path:?}: give the container's directory, LXCPATH/NAME (e.g. /var/lib/lxc/web1)")]
    NoConfig { path: PathBuf },

    #[error("lxc.rootfs.path {value:?}: {reason}")]
    Rootfs { value: String, reason: String },

    #[error("LXC container {name:?} is {state}; stop it first (lxc-stop -P {lxcpath} -n {name})", lxcpath = .lxcpath.display())]
    Running {
        name: String,
        state: String,
        lxcpath: PathBuf,
    },

    #[error("cannot adopt {what} without copying: {why}; {hint}")]
    NeedsCopy {
        what: String,
        why: String,
        hint: String,
    },

    #[error("adopting an LXC {kind} container is not supported; {hint}")]
    Unsupported { kind: String, hint: String },
}

pub(super) type Result<T, E = AdoptError> = std::result::Result<T, E>;

/// What `lxc.rootfs.path` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LxcRootfs {
    /// `dir:PATH`.
    Dir(PathBuf),
    /// A path without a prefix: LXC takes a btrfs subvolume as btrfs, any
    /// other directory as dir (the caller looks).
    Bare(PathBuf),
    /// `btrfs:PATH`, a subvolume.
    Btrfs(PathBuf),
    /// `zfs:POOL/DATASET`.
    Zfs(String),
    /// `overlay:LOWER…:UPPER` (or `overlayfs:`).
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
    },
    /// `loop:IMAGE`.
    Loop(PathBuf),
    /// `lvm:/dev/VG/LV`.
    Lvm(PathBuf),
    /// Any other storage type (nbd, rbd, …).
    Other(String),
}

impl LxcRootfs {
    pub fn parse(value: &str) -> Result<LxcRootfs> {
        let bad = |reason: &str| AdoptError::Rootfs {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let abs = |p: &str| -> Result<PathBuf> {
            let path = Path::new(p);
            if !path.is_absolute() {
                return Err(bad("the path must be absolute"));
            }
            if path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(bad("the path must not contain '..'"));
            }
            Ok(path.to_path_buf())
        };
        if value.is_empty() {
            return Err(bad("it is empty: the container has no rootfs"));
        }
        if value.starts_with('/') {
            return Ok(LxcRootfs::Bare(abs(value)?));
        }
        let Some((kind, rest)) = value.split_once(':') else {
            return Err(bad("expected TYPE:LOCATION or an absolute path"));
        };
        Ok(match kind {
            "dir" => LxcRootfs::Dir(abs(rest)?),
            "btrfs" => LxcRootfs::Btrfs(abs(rest)?),
            "loop" => LxcRootfs::Loop(abs(rest)?),
            "lvm" => LxcRootfs::Lvm(abs(rest)?),
            "zfs" => {
                let ok = !rest.is_empty()
                    && !rest.starts_with('/')
                    && rest.split('/').all(|c| !c.is_empty() && !c.contains('@'));
                if !ok {
                    return Err(bad("expected zfs:POOL/DATASET"));
                }
                LxcRootfs::Zfs(rest.to_owned())
            }
            "overlay" | "overlayfs" => {
                let mut parts: Vec<PathBuf> = rest.split(':').map(abs).collect::<Result<_>>()?;
                if parts.len() < 2 {
                    return Err(bad("expected overlay:LOWER:UPPER"));
                }
                let upper = parts.pop().unwrap_or_default();
                LxcRootfs::Overlay {
                    lowers: parts,
                    upper,
                }
            }
            other => LxcRootfs::Other(other.to_owned()),
        })
    }

    /// The storage type as LXC names it.
    pub fn kind(&self) -> &str {
        match self {
            LxcRootfs::Dir(_) | LxcRootfs::Bare(_) => "dir",
            LxcRootfs::Btrfs(_) => "btrfs",
            LxcRootfs::Zfs(_) => "zfs",
            LxcRootfs::Overlay { .. } => "overlay",
            LxcRootfs::Loop(_) => "loop",
            LxcRootfs::Lvm(_) => "lvm",
            LxcRootfs::Other(k) => k,
        }
    }
}

/// The `key = value` pairs of a config, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LxcConfig {
    entries: Vec<(String, String)>,
}

/// Keys LXC keeps a list of: an empty value clears the list.
const LIST_KEYS: [&str; 6] = [
    "lxc.idmap",
    "lxc.id_map",
    "lxc.mount.entry",
    "lxc.cap.drop",
    "lxc.cap.keep",
    "lxc.include",
];

impl LxcConfig {
    /// Parses config text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<LxcConfig> {
        let mut entries: Vec<(String, String)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(AdoptError::Config {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("expected KEY = VALUE, found {line:?}"),
                });
            };
            let key = key.trim();
            if !key.starts_with("lxc.") {
                return Err(AdoptError::Config {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("{key:?} is not an LXC key (they start with \"lxc.\")"),
                });
            }
            let value = unquote(value.trim());
            if value.is_empty() && LIST_KEYS.contains(&key) {
                entries.retain(|(k, _)| k != key);
            }
            entries.push((key.to_owned(), value.to_owned()));
        }
        Ok(LxcConfig { entries })
    }

    /// The last value of the first of `keys` that is set (current name first,
    /// then LXC 2's), unless that value is empty.
    pub fn get(&self, keys: &[&str]) -> Option<&str> {
        keys.iter()
            .find_map(|k| {
                self.entries
                    .iter()
                    .rev()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            })
            .filter(|v| !v.is_empty())
    }

    /// Every pair, in file order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// Every non-empty value of a list key, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// LXC strips one pair of matching quotes around a value.
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> LxcConfig {
        LxcConfig::parse(Path::new("/l/c/config"), text).unwrap()
    }

    #[test]
    fn lines_are_read_as_lxc_reads_them() {
        let c = parse(
            "  # indented comment\n\
             lxc.uts.name=tight\n\
             lxc.init.cmd   =   /sbin/init  --x  \n\
             lxc.mount.entry = a # not a comment\n\
             lxc.mount.entry =\n\
             lxc.mount.entry = b\n\
             lxc.uts.name = 'later wins'\n",
        );
        assert_eq!(c.get(&["lxc.uts.name"]), Some("later wins"));
        assert_eq!(c.get(&["lxc.init.cmd"]), Some("/sbin/init  --x"));
        // An empty value clears a list key.
        assert_eq!(c.all("lxc.mount.entry"), ["b"]);
        assert_eq!(c.get(&["lxc.nope", "lxc.uts.name"]), Some("later wins"));
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (text, why) in [
            ("lxc.uts.name = a\njunk\n", "line 2: expected KEY = VALUE"),
            ("uts.name = a\n", "line 1: \"uts.name\" is not an LXC key"),
        ] {
            let e = LxcConfig::parse(Path::new("/l/c/config"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("/l/c/config") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn every_rootfs_prefix_is_read() {
        let p = |s: &str| LxcRootfs::parse(s).unwrap();
        assert_eq!(p("/srv/c/rootfs"), LxcRootfs::Bare("/srv/c/rootfs".into()));
        assert_eq!(
            p("dir:/srv/c/rootfs"),
            LxcRootfs::Dir("/srv/c/rootfs".into())
        );
        assert_eq!(
            p("btrfs:/b/c/rootfs"),
            LxcRootfs::Btrfs("/b/c/rootfs".into())
        );
        assert_eq!(p("zfs:tank/lxc/c"), LxcRootfs::Zfs("tank/lxc/c".into()));
        assert_eq!(
            p("loop:/l/c/rootdev"),
            LxcRootfs::Loop("/l/c/rootdev".into())
        );
        assert_eq!(p("lvm:/dev/vg/c"), LxcRootfs::Lvm("/dev/vg/c".into()));
        let ov = LxcRootfs::Overlay {
            lowers: vec!["/l/base/rootfs".into()],
            upper: "/l/c/delta0".into(),
        };
        assert_eq!(p("overlay:/l/base/rootfs:/l/c/delta0"), ov);
        assert_eq!(p("overlayfs:/l/base/rootfs:/l/c/delta0"), ov);
        assert_eq!(p("nbd:file:1").kind(), "nbd");
        for (bad, why) in [
            ("", "empty"),
            ("dir:rel", "absolute"),
            ("dir:/a/../b", ".."),
            ("zfs:/tank", "zfs:POOL/DATASET"),
            ("zfs:tank//c", "zfs:POOL/DATASET"),
            ("zfs:tank/c@s", "zfs:POOL/DATASET"),
            ("overlay:/only", "LOWER:UPPER"),
            ("rootfs", "TYPE:LOCATION"),
        ] {
            let e = LxcRootfs::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
