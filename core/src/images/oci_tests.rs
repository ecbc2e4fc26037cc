//! import_layout on layouts the tests write themselves (and one written by
//! skopeo, when it is installed), as root on the real kernel.

use std::fs;
use std::os::unix::fs::MetadataExt;

use serde_json::json;

use super::*;
use crate::images::testutil::{
    gzip, is_root_or_skip, listing, scratch, sha256, skip, zstd, Layout, Tar,
};

const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn opts() -> ApplyOpts {
    ApplyOpts::default()
}

/// Layer 1: files, a directory with content, a symlink, a file to hardlink,
/// a file with an xattr. Layer 2: a whiteout, an opaque directory, a hardlink
/// to a layer-1 file, a changed mode, a write through an in-image symlink.
fn two_layers(layout: &Layout) -> (serde_json::Value, Vec<serde_json::Value>) {
    let one = Tar::new()
        .dir("etc", 0o755)
        .file("etc/hostname", 0o644, b"box")
        .file_with_xattr("etc/cap", "user.test", b"v", b"c")
        .dir("opt", 0o755)
        .file("opt/a", 0o644, b"a")
        .dir("opt/sub", 0o755)
        .file("opt/sub/b", 0o644, b"b")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", 0o755, b"tool")
        .symlink("bin", "usr/bin")
        .dir("data", 0o755)
        .file_owned("data/shared", 0o600, 1000, b"shared")
        .file("gone", 0o644, b"x")
        .finish();
    let two = Tar::new()
        .file("etc/.wh.hostname", 0o644, b"")
        .file(".wh.gone", 0o644, b"")
        .dir("opt", 0o750)
        .file("opt/kept", 0o644, b"kept")
        .file("opt/.wh..wh..opq", 0o644, b"")
        .file("opt/new", 0o644, b"new")
        .hardlink("data/link", "data/shared")
        .file("usr/bin/tool", 0o700, b"tool")
        .file("bin/extra", 0o755, b"extra")
        .finish();
    let layers = vec![layout.blob(GZ, &gzip(&one)), layout.blob(ZST, &zstd(&two))];
    let config = json!({
        "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["exec tool"],
        "WorkingDir": "/srv",
        "User": "1000:1000",
    });
    (layout.image(layers.clone(), config), layers)
}

#[test]
fn two_layers_import_to_the_exact_tree() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let base = scratch("oci-two");
    let layout = Layout::new(&base.path().join("layout"));
    let (manifest, layers) = two_layers(&layout);
    layout.index(vec![(manifest.clone(), Some("v1"))]);
    let target = base.path().join("rootfs");
    fs::create_dir(&target).expect("target");

    let image = import_layout(&layout.dir, Some("v1"), &target, &opts()).expect("import");

    assert_eq!(
        listing(&target),
        [
            "bin l 777 0:0 -> usr/bin",
            "data d 755 0:0",
            "data/link f 600 1000:1000 shared",
            "data/shared f 600 1000:1000 shared",
            "etc d 755 0:0",
            "etc/cap f 644 0:0 c",
            "opt d 750 0:0",
            "opt/kept f 644 0:0 kept",
            "opt/new f 644 0:0 new",
            "usr d 755 0:0",
            "usr/bin d 755 0:0",
            "usr/bin/extra f 755 0:0 extra",
            "usr/bin/tool f 700 0:0 tool",
        ]
    );
    let shared = fs::metadata(target.join("data/shared")).expect("stat");
    let link = fs::metadata(target.join("data/link")).expect("stat");
    assert_eq!((shared.ino(), shared.nlink()), (link.ino(), 2));
    assert_eq!(
        crate::images::digest::read_xattrs(&target.join("etc/cap")).expect("xattrs"),
        [(b"user.test".to_vec(), b"v".to_vec())]
    );
    assert_eq!(
        image.defaults,
        ImageDefaults {
            env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
            cmd: vec!["/bin/sh".into(), "-c".into(), "exec tool".into()],
            workdir: Some("/srv".into()),
            user: Some("1000:1000".into()),
        }
    );
    assert_eq!(image.manifest_digest, manifest["digest"]);
    let layer_digests: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
    assert_eq!(
        image.layer_digests.iter().collect::<Vec<_>>(),
        layer_digests
    );
    assert_eq!(image.tree_digest, tree_digest(&target).expect("digest"));

    // The same image imported again (untagged: the only one) has the same
    // tree digest.
    let again = base.path().join("again");
    fs::create_dir(&again).expect("again");
    let second = import_layout(&layout.dir, None, &again, &opts()).expect("import");
    assert_eq!(second.tree_digest, image.tree_digest);
}

#[test]
fn a_wrong_layer_digest_fails_and_the_caller_discards_only_the_target() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let base = scratch("oci-tamper");
    let layout = Layout::new(&base.path().join("layout"));
    let (manifest, layers) = two_layers(&layout);
    layout.index(vec![(manifest, None)]);
    // Same length, one byte changed: only the digest can tell.
    let digest = layers[1]["digest"].as_str().expect("digest");
    let blob = layout
        .dir
        .join("blobs/sha256")
        .join(&digest["sha256:".len()..]);
    let mut bytes = fs::read(&blob).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, &bytes).expect("tamper");
    let before = listing(base.path());

    let target = base.path().join("rootfs");
    fs::create_dir(&target).expect("target");
    let result = import_layout(&layout.dir, None, &target, &opts());
    match &result {
        Err(ImageError::BlobMismatch { digest: d, .. }) => assert_eq!(d, digest),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    // The caller's side of the contract: remove the target on error.
    fs::remove_dir_all(&target).expect("discard");
    assert_eq!(listing(base.path()), before);

    // A blob longer than its descriptor says fails the same way.
    bytes[last] ^= 0xff;
    bytes.extend_from_slice(&[0; 512]);
    fs::write(&blob, &bytes).expect("extend");
    fs::create_dir(&target).expect("target");
    let result = import_layout(&layout.dir, None, &target, &opts());
    let longer = matches!(&result, Err(ImageError::BlobMismatch { reason, .. })
        if reason.contains("longer"));
    assert!(longer, "{result:?}");
    fs::remove_dir_all(&target).expect("discard");
}

#[test]
fn diff_ids_are_checked_against_the_uncompressed_layers() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let base = scratch("oci-diff-ids");
    let layout = Layout::new(&base.path().join("layout"));
    let one = Tar::new().file("a", 0o644, b"a").finish();
    let two = Tar::new().file("b", 0o644, b"b").finish();
    let layers = vec![layout.blob(GZ, &gzip(&one)), layout.blob(ZST, &zstd(&two))];
    let import = |diff_ids: Vec<String>| {
        let manifest = layout.image_with_diff_ids(layers.clone(), json!({}), diff_ids);
        layout.index(vec![(manifest, None)]);
        let dir = scratch("oci-diff-ids-target");
        let result = import_layout(&layout.dir, None, dir.path(), &opts());
        (result, listing(dir.path()))
    };

    let (right, tree) = import(vec![sha256(&one), sha256(&two)]);
    right.expect("the right diff_ids");
    assert_eq!(tree, ["a f 644 0:0 a", "b f 644 0:0 b"]);

    // The blobs are intact (their digests match the manifest), but the second
    // one's uncompressed content is not what the config says.
    let (wrong, _) = import(vec![sha256(&one), sha256(&one)]);
    match wrong {
        Err(ImageError::BlobMismatch { digest, reason, .. }) => {
            assert_eq!(digest, layers[1]["digest"].as_str().expect("digest"));
            assert!(
                reason.contains(&sha256(&two)) && reason.contains("diff_ids"),
                "{reason}"
            );
        }
        other => panic!("expected a diff_id mismatch, got {other:?}"),
    }
    // The compressed digest is no diff_id.
    let stored = layers[1]["digest"].as_str().expect("digest").to_owned();
    let (compressed, _) = import(vec![sha256(&one), stored]);
    assert!(
        matches!(compressed, Err(ImageError::BlobMismatch { .. })),
        "{compressed:?}"
    );

    // A count or a digest berth cannot check is refused before any layer.
    let (short, tree) = import(vec![sha256(&one)]);
    let err = short.expect_err("one diff_id for two layers").to_string();
    assert!(err.contains("lists 1 diff_ids for the 2 layers"), "{err}");
    assert!(tree.is_empty(), "{tree:?}");
    let (odd, tree) = import(vec![sha256(&one), format!("md5:{}", "0".repeat(32))]);
    assert!(
        matches!(odd, Err(ImageError::BadDigest { ref what, .. }) if what.contains("diff_ids")),
        "{odd:?}"
    );
    assert!(tree.is_empty(), "{tree:?}");
}

#[test]
fn tags_choose_the_image_and_nested_indexes_choose_the_platform() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    let base = scratch("oci-tags");
    let layout = Layout::new(&base.path().join("layout"));
    let image = |name: &str| {
        let tar = Tar::new().file(name, 0o644, name.as_bytes()).finish();
        layout.image(vec![layout.blob(TAR, &tar)], json!({}))
    };
    let (a, b) = (image("a"), image("b"));
    let other_arch = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let mut wrong = image("wrong-arch");
    wrong["platform"] = json!({"os": "linux", "architecture": other_arch});
    let mut right = image("right-arch");
    right["platform"] = json!({"os": "linux", "architecture": host_arch()});
    let nested = json!({"schemaVersion": 2, "manifests": [wrong, right]});
    let nested = layout.blob(
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&nested).expect("json"),
    );
    layout.index(vec![
        (a, Some("a")),
        (b, Some("b")),
        (nested, Some("multi")),
    ]);

    let import = |tag: Option<&str>| {
        let dir = scratch("oci-tags-target");
        let result = import_layout(&layout.dir, tag, dir.path(), &opts());
        (result, listing(dir.path()))
    };
    assert_eq!(import(Some("b")).1, ["b f 644 0:0 b"]);
    assert_eq!(import(Some("multi")).1, ["right-arch f 644 0:0 right-arch"]);
    let (result, _) = import(None);
    let err = result.expect_err("three images, no tag").to_string();
    assert!(
        err.contains("holds 3 images") && err.contains("a, b, multi"),
        "{err}"
    );
    let err = import(Some("c")).0.expect_err("no such tag").to_string();
    assert!(
        err.contains("\"c\"") && err.contains("a, b, multi"),
        "{err}"
    );
}

#[test]
fn bad_descriptors_are_refused_before_anything_is_written() {
    let base = scratch("oci-bad");
    let layout = Layout::new(&base.path().join("layout"));
    let target = base.path().join("rootfs");
    fs::create_dir(&target).expect("target");
    let tar = Tar::new().file("f", 0o644, b"f").finish();
    let try_layers = |layers: Vec<serde_json::Value>| {
        let manifest = layout.image(layers, json!({}));
        layout.index(vec![(manifest, None)]);
        let result = import_layout(&layout.dir, None, &target, &opts());
        assert!(listing(&target).is_empty(), "nothing may be written");
        result.expect_err("must be refused")
    };

    let mut bzip = layout.blob(TAR, &tar);
    bzip["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+bzip2");
    let err = try_layers(vec![layout.blob(TAR, &tar), bzip]);
    assert!(
        matches!(err, ImageError::UnsupportedMediaType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("tar+bzip2"), "{err}");

    let mut sha512 = layout.blob(TAR, &tar);
    sha512["digest"] = json!(format!("sha512:{}", "ab".repeat(64)));
    let err = try_layers(vec![sha512]);
    assert!(matches!(err, ImageError::BadDigest { .. }), "{err}");

    // A digest that is not even well-formed fails as bad JSON (oci-spec
    // checks the grammar), never as a path.
    let mut escape = layout.blob(TAR, &tar);
    escape["digest"] = json!("sha256:../../../etc/passwd");
    let err = try_layers(vec![escape]);
    assert!(matches!(err, ImageError::BadJson { .. }), "{err}");

    // A config declaring a huge size is refused without reading it.
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(b"{}"),
            "size": 1u64 << 40,
        },
        "layers": [],
    });
    let manifest = layout.blob(
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    layout.index(vec![(manifest, None)]);
    let err = import_layout(&layout.dir, None, &target, &opts()).expect_err("huge config");
    assert!(err.to_string().contains("at most"), "{err}");

    fs::write(
        layout.dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .expect("layout version");
    let err = import_layout(&layout.dir, None, &target, &opts()).expect_err("version");
    assert!(matches!(err, ImageError::Layout { .. }), "{err}");
}

/// A docker-archive (what `docker save` writes) with one layer, turned into
/// an OCI layout by skopeo, then imported.
#[test]
fn a_layout_written_by_skopeo_imports() {
    if !is_root_or_skip("layers set owners") {
        return;
    }
    if !berth_bdev::cmd::have_program("skopeo") {
        skip("skopeo is not installed (apt-get install skopeo)");
        return;
    }
    let base = scratch("oci-skopeo");
    let layer = Tar::new()
        .dir("etc", 0o755)
        .file("etc/os-release", 0o644, b"ID=berth\n")
        .symlink("bin", "usr/bin")
        .finish();
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Env": ["A=1"], "Cmd": ["/bin/sh"], "WorkingDir": "/root"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    });
    let config = serde_json::to_vec(&config).expect("json");
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": ["berth/test:1"],
        "Layers": ["layer.tar"],
    }]);
    let manifest = serde_json::to_vec(&manifest).expect("json");
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", &manifest),
        ("config.json", &config),
        ("layer.tar", &layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        archive
            .append_data(&mut h, name, data.as_slice())
            .expect("docker-archive entry");
    }
    let archive_path = base.path().join("image.tar");
    fs::write(&archive_path, archive.into_inner().expect("tar")).expect("docker-archive");
    let oci_dir = base.path().join("oci");
    let src = format!("docker-archive:{}", archive_path.display());
    let dst = format!("oci:{}:tagged", oci_dir.display());
    berth_bdev::cmd::run(
        &berth_bdev::cmd::HostRunner,
        "skopeo",
        &["--insecure-policy", "copy", "--quiet", &src, &dst],
    )
    .expect("skopeo copy");

    let target = base.path().join("rootfs");
    fs::create_dir(&target).expect("target");
    let image = import_layout(&oci_dir, Some("tagged"), &target, &opts()).expect("import");
    assert_eq!(
        listing(&target),
        [
            "bin l 777 0:0 -> usr/bin",
            "etc d 755 0:0",
            "etc/os-release f 644 0:0 ID=berth",
        ]
    );
    assert_eq!(image.defaults.env, ["A=1"]);
    assert_eq!(image.defaults.cmd, ["/bin/sh"]);
    assert_eq!(image.defaults.workdir.as_deref(), Some("/root"));
    assert_eq!(image.layer_digests.len(), 1);
}
