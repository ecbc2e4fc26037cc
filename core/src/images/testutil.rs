//! Test helpers: scratch directories, the root/CI skip rule, and layer and
//! layout builders (the tests make their own OCI images, nothing is fetched).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::digest::hex;
use crate::templates::archive::{detect, Compression};

/// A scratch directory under /var/tmp (a real disk filesystem with xattrs,
/// unlike a tmpfs /tmp on some hosts), removed when dropped.
pub fn scratch(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("berth-images-{name}-"))
        .tempdir_in("/var/tmp")
        .expect("scratch directory under /var/tmp")
}

/// Under CI (`CI=true`) a missing prerequisite is a failure, elsewhere a skip.
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required under CI, but: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

pub fn is_root_or_skip(why: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        true
    } else {
        skip(&format!("needs root: {why}"));
        false
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Builds one layer tarball entry by entry.
pub struct Tar {
    builder: tar::Builder<Vec<u8>>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Tar {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .expect("dir entry");
        self
    }

    pub fn file(self, path: &str, mode: u32, data: &[u8]) -> Tar {
        self.file_owned(path, mode, 0, data)
    }

    pub fn file_owned(mut self, path: &str, mode: u32, uid: u64, data: &[u8]) -> Tar {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid);
        h.set_size(data.len() as u64);
        self.builder
            .append_data(&mut h, path, data)
            .expect("file entry");
        self
    }

    /// A file preceded by PAX `SCHILY.xattr.*` records.
    pub fn file_with_xattr(mut self, path: &str, name: &str, value: &[u8], data: &[u8]) -> Tar {
        let key = format!("SCHILY.xattr.{name}");
        self.builder
            .append_pax_extensions([(key.as_str(), value)])
            .expect("pax entry");
        self.file(path, 0o644, data)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Tar {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("symlink entry");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Tar {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("hardlink entry");
        self
    }

    pub fn node(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Tar {
        let mut h = Self::header(kind, 0o600, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .expect("node entry");
        self
    }

    /// An entry whose name is written as is, bypassing the tar crate's
    /// refusal of `..` and absolute paths: what a hostile archive holds.
    pub fn raw_file(mut self, name: &[u8], data: &[u8]) -> Tar {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, 0);
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().expect("a GNU header");
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.builder.append(&h, data).expect("raw entry");
        self
    }

    /// A file whose header declares `declared` bytes while only `data`
    /// follows, then the archive ends.
    pub fn lying_file(mut self, path: &str, declared: u64, data: &[u8]) -> Tar {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, 0);
        h.set_path(path).expect("path");
        h.set_size(declared);
        h.set_cksum();
        self.builder.append(&h, data).expect("lying entry");
        self
    }

    /// A GNU sparse file of `real_size` bytes whose only data is `data` at
    /// its end: the rest is a hole, which the tar reader returns as zeros.
    pub fn sparse_file(mut self, path: &str, real_size: u64, data: &[u8]) -> Tar {
        let mut h = Self::header(tar::EntryType::GNUSparse, 0o644, 0);
        h.set_path(path).expect("path");
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().expect("a GNU header");
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(real_size - data.len() as u64);
        gnu.sparse[0].set_length(data.len() as u64);
        h.set_cksum();
        self.builder.append(&h, data).expect("sparse entry");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish the tarball")
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// An OCI image layout written blob by blob.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("blobs dir");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// Stores `bytes` as a blob; its descriptor JSON with `media_type`.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let digest = sha256(bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(self.dir.join("blobs/sha256").join(hex), bytes).expect("blob");
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// Config + manifest for `layers` (already stored descriptors), the
    /// config's diff_ids computed from the stored blobs; returns the
    /// manifest's descriptor.
    pub fn image(
        &self,
        layers: Vec<serde_json::Value>,
        config: serde_json::Value,
    ) -> serde_json::Value {
        let diff_ids: Vec<String> = layers.iter().map(|l| self.diff_id(l)).collect();
        self.image_with_diff_ids(layers, config, diff_ids)
    }

    /// Like [`Layout::image`], with the config's diff_ids as given.
    pub fn image_with_diff_ids(
        &self,
        layers: Vec<serde_json::Value>,
        config: serde_json::Value,
        diff_ids: Vec<String>,
    ) -> serde_json::Value {
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).expect("json"),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).expect("json"),
        )
    }

    /// The sha256 of a stored layer blob, uncompressed; of nothing when the
    /// descriptor names no stored blob (the tests of bad descriptors).
    pub fn diff_id(&self, layer: &serde_json::Value) -> String {
        let stored = layer["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .and_then(|hex| std::fs::read(self.dir.join("blobs/sha256").join(hex)).ok());
        let Some(blob) = stored else {
            return sha256(b"");
        };
        let tar = match detect(&blob) {
            Some(Compression::Gzip) => {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(&blob[..])
                    .read_to_end(&mut tar)
                    .expect("gunzip");
                tar
            }
            Some(Compression::Zstd) => zstd::decode_all(&blob[..]).expect("unzstd"),
            _ => blob,
        };
        sha256(&tar)
    }

    /// index.json listing `manifests`, each tagged when a tag is given.
    pub fn index(&self, manifests: Vec<(serde_json::Value, Option<&str>)>) {
        let list: Vec<serde_json::Value> = manifests
            .into_iter()
            .map(|(mut desc, tag)| {
                if let Some(tag) = tag {
                    let mut notes = BTreeMap::new();
                    notes.insert("org.opencontainers.image.ref.name", tag);
                    desc["annotations"] = json!(notes);
                }
                desc
            })
            .collect();
        let index = json!({"schemaVersion": 2, "manifests": list});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("index.json");
    }
}

/// One line per entry under `root` (not the root itself), sorted:
/// "path type mode uid:gid detail", detail being a file's content, a
/// symlink's target or a device's numbers. What the tree tests compare.
pub fn listing(root: &Path) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).expect("list") {
            let path = item.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path.strip_prefix(root).expect("under root");
            let rel = String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned();
            let kind = meta.file_type();
            let (tag, detail) = if kind.is_dir() {
                dirs.push(path.clone());
                ("d", String::new())
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                ("l", format!("-> {}", target.display()))
            } else if kind.is_file() {
                let data = std::fs::read(&path).expect("read");
                ("f", String::from_utf8_lossy(&data).into_owned())
            } else if kind.is_char_device() || kind.is_block_device() {
                let rdev = meta.rdev();
                let t = if kind.is_char_device() { "c" } else { "b" };
                (
                    t,
                    format!("{},{}", rustix::fs::major(rdev), rustix::fs::minor(rdev)),
                )
            } else {
                ("p", String::new())
            };
            let line = format!(
                "{rel} {tag} {:o} {}:{} {detail}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            );
            out.push(line.trim_end().to_string());
        }
    }
    out.sort();
    out
}
