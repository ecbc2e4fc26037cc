//! Images as first-class objects (issue #13), the foundations: a content
//! digest over a directory tree ([`tree_digest`]), applying one OCI/Docker
//! layer tarball onto a directory ([`apply_layer`]) and importing an OCI image
//! layout as `skopeo copy … oci:DIR` writes it ([`import_layout`]).
//!
//! The store side (where images live, `berth image …`) builds on these; none
//! of them knows about pools or containers.

mod at;
pub mod bundle;
pub mod digest;
pub mod layer;
pub mod oci;
pub(crate) mod pack;
pub mod record;
mod sparse;
pub(crate) mod tree;

#[cfg(test)]
mod testutil;

use std::path::PathBuf;

pub use digest::tree_digest;
pub use layer::{apply_layer, ApplyOpts};
pub use oci::{import_layout, ImageDefaults, ImportedImage};
pub use record::{Image, ImageCopy, ImageUse};

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// What went wrong reading, verifying or unpacking an image. Each variant
/// names the file, blob or tar entry, and what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{op} {path:?}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path:?} is not a usable OCI image layout: {reason} (write one with `skopeo copy SOURCE oci:DIR[:TAG]`)")]
    Layout { path: PathBuf, reason: String },

    #[error("{what} {path:?} is not valid JSON of its kind: {reason}")]
    BadJson {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error(
        "{what} names the digest {digest:?}; berth expects \"sha256:\" and 64 lowercase hex digits"
    )]
    BadDigest { what: String, digest: String },

    #[error("blob {digest} ({path:?}) does not match its descriptor: {reason}; the layout is damaged or was tampered with, copy the image again")]
    BlobMismatch {
        digest: String,
        path: PathBuf,
        reason: String,
    },

    #[error("{what} has media type {media_type:?}, which berth cannot import (supported: OCI image manifests and indexes, tar, tar+gzip and tar+zstd layers)")]
    UnsupportedMediaType { what: String, media_type: String },

    #[error("{path:?} has no image tagged {tag:?}; its tags: {}", list(.tags))]
    NoSuchTag {
        path: PathBuf,
        tag: String,
        tags: Vec<String>,
    },

    #[error("{path:?} holds {count} images; name one with DIR:TAG (its tags: {})", list(.tags))]
    AmbiguousImage {
        path: PathBuf,
        count: usize,
        tags: Vec<String>,
    },

    #[error("the image index {digest} has no {platform} image; copy one for this machine (skopeo copy --override-arch …)")]
    NoPlatform { digest: String, platform: String },

    #[error("the layer is not a usable tar archive: {reason}")]
    Archive { reason: String },

    #[error("layer entry {entry:?}: {reason}")]
    Entry { entry: String, reason: String },

    #[error("layer entry {entry:?} is a device node, which an unprivileged import does not create; import the image with --allow-devices if you trust it, or remove the node from the image")]
    DeviceRefused { entry: String },

    #[error("layer {layer}")]
    InLayer {
        layer: String,
        #[source]
        source: Box<ImageError>,
    },

    #[error("{path:?} changed while its digest was computed ({what}); compute it again when nothing writes to the tree")]
    Changed { path: PathBuf, what: &'static str },
}

impl ImageError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }

    pub(crate) fn entry(entry: &[u8], reason: impl Into<String>) -> Self {
        ImageError::Entry {
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}
