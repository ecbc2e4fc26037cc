//! Importing an OCI image layout (what `skopeo copy … oci:DIR[:TAG]` writes):
//! `oci-layout` → `index.json` → manifest (through a nested index, the entry
//! for linux on this machine's architecture) → config and layers, applied in
//! order with [`apply_layer`].
//!
//! Trust: `index.json` is the root (as `skopeo` wrote it); everything it
//! reaches is a blob named by its sha256 digest and checked against it and
//! against its declared size. JSON blobs are read whole (at most
//! [`MAX_JSON`]), verified, then parsed. Layers are verified while they
//! stream into the target, the rest of the blob read to its end afterwards,
//! both as stored (the manifest's digest) and uncompressed (the config's
//! `rootfs.diff_ids`), and a mismatch fails the import: the caller then
//! removes the target, as for any failed layer (see [`super::layer`]).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::digest::{hex, tree_digest};
use super::layer::{apply_layer, ApplyOpts};
use super::{ImageError, Result};

/// The largest index, manifest or config berth reads: real ones are a few
/// KiB, and a descriptor declaring more must not make berth allocate it.
pub const MAX_JSON: u64 = 4 << 20;

/// How deep indexes may nest (an index pointing to an index …).
const MAX_NESTING: usize = 4;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYERS: [&str; 2] = [
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// What a container made from the image runs with unless told otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `NAME=value` entries, in the config's order.
    pub env: Vec<String>,
    /// The config's Entrypoint followed by its Cmd.
    pub cmd: Vec<String>,
    pub workdir: Option<String>,
    /// As the config says it: a name, `uid`, or `uid:gid`.
    pub user: Option<String>,
}

/// The outcome of [`import_layout`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImage {
    pub defaults: ImageDefaults,
    /// "sha256:…" of the manifest: the image's identity in the OCI world.
    pub manifest_digest: String,
    pub config_digest: String,
    /// The layers' blob digests, lowest first.
    pub layer_digests: Vec<String>,
    /// [`tree_digest`] of the unpacked tree.
    pub tree_digest: String,
}

/// Imports the image tagged `tag` (or the layout's only image) from the OCI
/// layout at `layout` into the directory `target`, which should be fresh and
/// empty. On an error `target` holds a partial tree: remove it.
pub fn import_layout(
    layout: &Path,
    tag: Option<&str>,
    target: &Path,
    opts: &ApplyOpts,
) -> Result<ImportedImage> {
    check_layout_version(layout)?;
    let index_path = layout.join("index.json");
    let index: ImageIndex = parse("index.json", &index_path, &read_small(&index_path)?)?;
    let chosen = choose(layout, &index, tag)?;
    let manifest_desc = resolve_manifest(layout, chosen, 0)?;
    let manifest: ImageManifest = read_json_blob(layout, &manifest_desc, "manifest")?;
    let config_desc = manifest.config();
    check_media_type(config_desc, "the image config", |m| {
        *m == MediaType::ImageConfig || media_name(m) == DOCKER_CONFIG
    })?;
    let config: ImageConfiguration = read_json_blob(layout, config_desc, "config")?;
    // Every layer is checked before the first one is written.
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::Layout {
            path: layout.to_path_buf(),
            reason: format!(
                "its config {} lists {} diff_ids for the {} layers of its manifest",
                config_desc.digest(),
                diff_ids.len(),
                manifest.layers().len()
            ),
        });
    }
    for diff_id in diff_ids {
        if sha256_hex(diff_id).is_none() {
            return Err(ImageError::BadDigest {
                what: format!("the config {}'s rootfs.diff_ids", config_desc.digest()),
                digest: diff_id.clone(),
            });
        }
    }
    for layer in manifest.layers() {
        check_media_type(layer, &format!("layer {}", layer.digest()), is_layer)?;
        let path = blob_path(layout, layer, "layer")?;
        if !path.is_file() {
            return Err(ImageError::Layout {
                path: layout.to_path_buf(),
                reason: format!("its layer blob {} is missing", layer.digest()),
            });
        }
    }
    let mut layer_digests = Vec::new();
    for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
        apply_blob(layout, layer, diff_id, target, opts)?;
        layer_digests.push(layer.digest().to_string());
    }
    Ok(ImportedImage {
        defaults: defaults(&config),
        manifest_digest: manifest_desc.digest().to_string(),
        config_digest: config_desc.digest().to_string(),
        layer_digests,
        tree_digest: tree_digest(target)?,
    })
}

fn check_layout_version(layout: &Path) -> Result<()> {
    #[derive(Deserialize)]
    struct OciLayout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let path = layout.join("oci-layout");
    let text = read_small(&path)?;
    let found: OciLayout = parse("oci-layout", &path, &text)?;
    if found.version.split('.').next() != Some("1") {
        return Err(ImageError::Layout {
            path: layout.to_path_buf(),
            reason: format!(
                "its image layout version is {:?}; berth reads version 1",
                found.version
            ),
        });
    }
    Ok(())
}

/// The descriptor in index.json that `tag` names, or the only one.
fn choose<'i>(layout: &Path, index: &'i ImageIndex, tag: Option<&str>) -> Result<&'i Descriptor> {
    let tag_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let tags: Vec<String> = index.manifests().iter().filter_map(tag_of).collect();
    let list = index.manifests();
    match tag {
        Some(tag) => list
            .iter()
            .find(|d| tag_of(d).as_deref() == Some(tag))
            .ok_or_else(|| ImageError::NoSuchTag {
                path: layout.to_path_buf(),
                tag: tag.to_string(),
                tags,
            }),
        None => match list.as_slice() {
            [only] => Ok(only),
            [] => Err(ImageError::Layout {
                path: layout.to_path_buf(),
                reason: "its index.json lists no image".to_string(),
            }),
            _ => Err(ImageError::AmbiguousImage {
                path: layout.to_path_buf(),
                count: list.len(),
                tags,
            }),
        },
    }
}

/// The manifest `desc` leads to: itself, or through (nested) indexes the
/// entry for linux on this machine's architecture.
fn resolve_manifest(layout: &Path, desc: &Descriptor, depth: usize) -> Result<Descriptor> {
    let media = desc.media_type();
    if *media == MediaType::ImageManifest || media_name(media) == DOCKER_MANIFEST {
        return Ok(desc.clone());
    }
    if !(*media == MediaType::ImageIndex || media_name(media) == DOCKER_LIST) {
        return Err(ImageError::UnsupportedMediaType {
            what: format!("the image {}", desc.digest()),
            media_type: media.to_string(),
        });
    }
    if depth >= MAX_NESTING {
        return Err(ImageError::Layout {
            path: layout.to_path_buf(),
            reason: format!("image indexes nest more than {MAX_NESTING} deep"),
        });
    }
    let nested: ImageIndex = read_json_blob(layout, desc, "image index")?;
    let arch = host_arch();
    let entry = nested
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .ok_or_else(|| ImageError::NoPlatform {
            digest: desc.digest().to_string(),
            platform: format!("linux/{arch}"),
        })?;
    resolve_manifest(layout, entry, depth + 1)
}

/// This machine's architecture as OCI (GOARCH) names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn is_layer(m: &MediaType) -> bool {
    matches!(
        m,
        MediaType::ImageLayer
            | MediaType::ImageLayerGzip
            | MediaType::ImageLayerZstd
            | MediaType::ImageLayerNonDistributable
            | MediaType::ImageLayerNonDistributableGzip
            | MediaType::ImageLayerNonDistributableZstd
    ) || DOCKER_LAYERS.contains(&media_name(m))
}

fn media_name(m: &MediaType) -> &str {
    m.as_ref()
}

fn check_media_type(desc: &Descriptor, what: &str, ok: impl Fn(&MediaType) -> bool) -> Result<()> {
    if ok(desc.media_type()) {
        Ok(())
    } else {
        Err(ImageError::UnsupportedMediaType {
            what: what.to_string(),
            media_type: desc.media_type().to_string(),
        })
    }
}

fn defaults(config: &ImageConfiguration) -> ImageDefaults {
    let Some(c) = config.config() else {
        return ImageDefaults::default();
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let mut cmd = c.entrypoint().clone().unwrap_or_default();
    cmd.extend(c.cmd().clone().unwrap_or_default());
    ImageDefaults {
        env: c.env().clone().unwrap_or_default(),
        cmd,
        workdir: non_empty(c.working_dir()),
        user: non_empty(c.user()),
    }
}

/// The path of the blob `desc` names, its digest checked to be
/// "sha256:" and 64 lowercase hex digits first (so it is one plain name).
fn blob_path(layout: &Path, desc: &Descriptor, what: &str) -> Result<PathBuf> {
    let digest = desc.digest().to_string();
    let hex_part = sha256_hex(&digest).ok_or_else(|| ImageError::BadDigest {
        what: format!("the {what} descriptor"),
        digest: digest.clone(),
    })?;
    Ok(layout.join("blobs").join("sha256").join(hex_part))
}

/// The hex part of "sha256:" and 64 lowercase hex digits.
fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Reads a blob that must be JSON of type `T`, verified before parsing.
fn read_json_blob<T: serde::de::DeserializeOwned>(
    layout: &Path,
    desc: &Descriptor,
    what: &'static str,
) -> Result<T> {
    let path = blob_path(layout, desc, what)?;
    let digest = desc.digest().to_string();
    if desc.size() > MAX_JSON {
        return Err(ImageError::Layout {
            path: layout.to_path_buf(),
            reason: format!(
                "its {what} {digest} is declared {} bytes long; berth reads at most {MAX_JSON}",
                desc.size()
            ),
        });
    }
    let file = std::fs::File::open(&path).map_err(ImageError::io("open blob", &path))?;
    let mut reader = Verified::new(file, desc.size());
    let mut bytes = Vec::new();
    let read = reader.read_to_end(&mut bytes);
    reader.check(&digest, &path)?;
    read.map_err(ImageError::io("read blob", &path))?;
    parse(what, &path, &bytes)
}

/// Streams a layer blob into `target`, verifying it on the way against its
/// descriptor and, uncompressed, against `diff_id`.
fn apply_blob(
    layout: &Path,
    desc: &Descriptor,
    diff_id: &str,
    target: &Path,
    opts: &ApplyOpts,
) -> Result<()> {
    let path = blob_path(layout, desc, "layer")?;
    let digest = desc.digest().to_string();
    let in_layer = |e: ImageError| ImageError::InLayer {
        layer: digest.clone(),
        source: Box::new(e),
    };
    let file = std::fs::File::open(&path).map_err(ImageError::io("open blob", &path))?;
    let mut reader = Verified::new(io::BufReader::new(file), desc.size());
    let applied = apply_layer(&mut reader, target, opts);
    // The tar ends before the blob does (padding, the compressor's trailer);
    // the digest covers all of it. A mismatch explains any apply error too,
    // so it is reported first.
    let drained = io::copy(&mut reader, &mut io::sink());
    reader.check(&digest, &path)?;
    drained.map_err(ImageError::io("read blob", &path))?;
    let found = applied.map_err(in_layer)?;
    if found != diff_id {
        return Err(ImageError::BlobMismatch {
            digest,
            path,
            reason: format!(
                "uncompressed, it hashes to {found}, but the image config's rootfs.diff_ids \
                 lists {diff_id} for it"
            ),
        });
    }
    Ok(())
}

/// A reader that hashes what passes and refuses to read past the size the
/// descriptor declares.
struct Verified<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    declared: u64,
    overrun: bool,
}

impl<R: Read> Verified<R> {
    fn new(inner: R, declared: u64) -> Self {
        Verified {
            inner,
            hasher: Sha256::new(),
            read: 0,
            declared,
            overrun: false,
        }
    }

    /// After the blob was read to its end (or an error): the size and the
    /// digest match the descriptor's.
    fn check(self, digest: &str, path: &Path) -> Result<()> {
        let mismatch = |reason: String| ImageError::BlobMismatch {
            digest: digest.to_string(),
            path: path.to_path_buf(),
            reason,
        };
        if self.overrun {
            return Err(mismatch(format!(
                "it is longer than the {} bytes its descriptor declares",
                self.declared
            )));
        }
        if self.read != self.declared {
            return Err(mismatch(format!(
                "it holds {} bytes, its descriptor declares {}",
                self.read, self.declared
            )));
        }
        let found = format!("sha256:{}", hex(&self.hasher.finalize()));
        if found != digest {
            return Err(mismatch(format!("its content hashes to {found}")));
        }
        Ok(())
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.overrun {
            return Err(io::Error::other("blob longer than its descriptor declares"));
        }
        // One byte past the declared size is enough to know it is longer.
        let room = self.declared.saturating_sub(self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.declared {
            self.overrun = true;
            return Err(io::Error::other("blob longer than its descriptor declares"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A small file that is not a blob (oci-layout, index.json), read whole but
/// never past [`MAX_JSON`].
fn read_small(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(ImageError::io("open", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(ImageError::io("read", path))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(ImageError::BadJson {
            what: "layout file",
            path: path.to_path_buf(),
            reason: format!("longer than {MAX_JSON} bytes"),
        });
    }
    Ok(bytes)
}

fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::BadJson {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[path = "oci_tests.rs"]
mod tests;
