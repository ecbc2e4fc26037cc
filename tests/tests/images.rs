//! Privileged: images (issue #13). Build once, create many: the first
//! container on a pool puts the image's read-only copy there, every later one
//! is a snapshot clone of it that adds a few KiB (btrfs, zfs, overlay, qcow2),
//! or a full copy where the pool can do nothing better (dir). An image that
//! containers read cannot be removed; commit turns a container's changes into
//! an image whose containers have them.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use berth_bdev::copy::NoProgress;
use berth_bdev::generic::with_mounted;
use berth_bdev::{BdevError, PoolConfig};
use berth_bench::pools::SpaceProbe;
use berth_bench::suites::space;
use berth_core::images::digest::rootfs_digest;
use berth_core::ops::{CreateRequest, DestroyRequest};
use berth_core::templates::Template;
use berth_core::{Berth, BerthError};
use berth_tests::harness::{assert_no_leaks, skip, write_incompressible, Setup};
use berth_tests::pools;

const KIB: u64 = 1 << 10;
/// Containers made from the image on each pool after the first.
const MANY: usize = 100;
/// What each of them may add: a few KiB of metadata, far below the image.
const PER_CLONE_MAX: u64 = 512 * KIB;
const DATA_MIB: usize = 8;

/// The space the pool's storage has in use: the scratch filesystem under it,
/// the zfs dataset, or a dir pool's own blocks.
fn used(pool: &PoolConfig) -> u64 {
    let path = pool.path.as_ref().unwrap();
    if pool.backend == "dir" {
        // On the host's filesystem, where others write too: its own blocks.
        return berth_bdev::fsutil::allocated_bytes(path).unwrap();
    }
    // The bench's probe: syncs, then reads the dataset's or filesystem's use.
    let probe = match pool.options.get("dataset") {
        Some(ds) => SpaceProbe::ZfsDataset(ds.clone()),
        None => SpaceProbe::Filesystem(path.clone()),
    };
    space::used(&probe).unwrap().unwrap()
}

fn in_rootfs<T>(b: &Berth, name: &str, f: impl FnOnce(&Path) -> T) -> T {
    let c = b.store().container(name).unwrap();
    let backend = b.backend_of(&c).unwrap();
    let mut out = None;
    with_mounted(backend.as_ref(), &c.volume, &b.scratch(), false, |root| {
        out = Some(f(root));
        Ok::<_, BdevError>(())
    })
    .unwrap();
    out.unwrap()
}

/// A container "seed" on the default pool with DATA_MIB of data and a
/// marker, committed as image "base" (on the default dir pool).
fn base_image(b: &Berth) {
    let req = CreateRequest {
        template: Some(Template::Minimal),
        ..CreateRequest::default()
    };
    b.create("seed", &req, &NoProgress).unwrap();
    in_rootfs(b, "seed", |root| {
        let mut f = std::fs::File::create(root.join("data")).unwrap();
        write_incompressible(&mut f, DATA_MIB, 7).unwrap();
        f.sync_all().unwrap();
        std::fs::write(root.join("etc/marker"), "base").unwrap();
    });
    let img = b.commit("seed", "base", &NoProgress).unwrap();
    assert_eq!(img.parent, None);
    assert!(img.digest.starts_with("sha256:"), "{}", img.digest);
    b.destroy("seed", DestroyRequest::default()).unwrap();
}

fn from_image(b: &Berth, name: &str, pool: &str) -> berth_core::store::Container {
    let req = CreateRequest {
        pool: Some(pool.to_owned()),
        image: Some("base".to_owned()),
        ..CreateRequest::default()
    };
    b.create(name, &req, &NoProgress)
        .unwrap_or_else(|e| panic!("create {name} --image base --pool {pool}: {e}"))
}

/// Builds "base" on the default pool, then makes 1 + `many` containers from
/// it on the pool `setup` makes, and checks what they cost and hold.
fn many_from_image(
    kind: &str,
    setup: fn(&Path) -> Result<Setup, String>,
    many: usize,
    snapshots: bool,
) {
    let tmp = tempfile::Builder::new()
        .prefix("berth-images-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let s = match setup(tmp.path()) {
        Ok(s) => s,
        Err(reason) => return skip(&format!("{kind} pool: {reason}")),
    };
    let mut pool = s.pool.clone();
    pool.name = "p".to_owned();
    {
        let b = Berth::open(&tmp.path().join("state"), true).unwrap();
        b.pool_add(&pool).unwrap();
        base_image(&b);

        // The first one copies the image onto the pool.
        let first = from_image(&b, "c0", "p");
        let img = b.store().image("base").unwrap();
        let copy = img
            .copy_on("p")
            .expect("the pool now holds a copy of the image");
        assert_eq!(copy.volume.backend(), kind);
        let usage = first.image.clone().unwrap();
        assert_eq!(
            usage.mode,
            if snapshots { "snapshot" } else { "copy" },
            "{kind}"
        );

        let before = used(&pool);
        let names: Vec<String> = (1..=many).map(|i| format!("c{i}")).collect();
        for n in &names {
            from_image(&b, n, "p");
        }
        let per = (used(&pool).saturating_sub(before)) / many as u64;
        eprintln!("{kind}: {many} containers from an image, {per} bytes each");
        if snapshots {
            assert!(
                per <= PER_CLONE_MAX,
                "{kind}: each container added {per} bytes"
            );
        } else {
            assert!(
                per >= (DATA_MIB as u64) << 20,
                "{kind}: a full copy each, yet {per} bytes"
            );
        }
        let last = names.last().unwrap();
        assert_eq!(
            in_rootfs(&b, last, |r| std::fs::read_to_string(r.join("etc/marker"))
                .unwrap()),
            "base"
        );
        // Containers are independent of each other: a change in one is its own.
        in_rootfs(&b, "c1", |r| {
            std::fs::write(r.join("etc/marker"), "mine").unwrap()
        });
        assert_eq!(
            in_rootfs(&b, last, |r| std::fs::read_to_string(r.join("etc/marker"))
                .unwrap()),
            "base"
        );

        // The image's copies are nobody's orphans.
        let found = b.doctor(false).unwrap();
        assert!(found.is_empty(), "{kind}: {found:?}");
        // Pinned copies keep the image; the refusal names the containers.
        let pinned = b.store().container("c1").unwrap().image.unwrap().pinned;
        match b.image_rm("base") {
            Err(BerthError::ImageInUse { containers, .. }) => {
                assert!(pinned, "{kind}: refused, yet c1 does not pin the image");
                assert!(containers.contains(&"c1".to_owned()), "{containers:?}");
                let msg = b.image_rm("base").unwrap_err().to_string();
                assert!(msg.contains("c0") && msg.contains("destroy"), "{msg}");
                // A flattened container no longer reads the image's copy.
                assert!(b.flatten("c0", &NoProgress).unwrap());
                assert!(!b.store().container("c0").unwrap().image.unwrap().pinned);
                match b.image_rm("base") {
                    Err(BerthError::ImageInUse { containers, .. }) => {
                        assert!(!containers.contains(&"c0".to_owned()), "{containers:?}")
                    }
                    other => panic!("{kind}: image rm after one flatten: {other:?}"),
                }
                assert_eq!(
                    in_rootfs(&b, "c0", |r| std::fs::read_to_string(r.join("etc/marker"))
                        .unwrap()),
                    "base"
                );
                for n in names.iter().chain(["c0".to_owned()].iter()) {
                    b.destroy(n, DestroyRequest::default()).unwrap();
                }
                b.image_rm("base").unwrap();
            }
            Ok(()) => {
                assert!(!pinned, "{kind}: the image went while containers read it");
                for n in names.iter().chain(["c0".to_owned()].iter()) {
                    b.destroy(n, DestroyRequest::default()).unwrap();
                }
            }
            Err(e) => panic!("{kind}: image rm: {e}"),
        }
        assert!(b.store().images().unwrap().is_empty());
        for p in [&pool, &b.store().default_pool()] {
            let left = b.backend(p).unwrap().volume_names().unwrap();
            assert!(
                left.is_empty(),
                "{kind}: pool {} still holds {left:?}",
                p.name
            );
        }
        assert!(
            b.doctor(false).unwrap().is_empty(),
            "{kind}: the doctor finds something"
        );
    }
    drop(s.keep);
    assert_no_leaks(tmp.path());
}

#[test]
fn btrfs_containers_from_an_image_are_snapshots() {
    many_from_image("btrfs", pools::btrfs::setup, MANY, true);
}

#[test]
fn zfs_containers_from_an_image_are_snapshots() {
    many_from_image("zfs", pools::zfs::setup, MANY, true);
}

#[test]
fn overlay_containers_from_an_image_are_snapshots() {
    many_from_image("overlay", pools::overlay::setup, MANY, true);
}

#[test]
fn qcow2_containers_from_an_image_are_snapshots() {
    many_from_image("qcow2", pools::qcow2::setup, MANY, true);
}

#[test]
fn dir_containers_from_an_image_are_copies() {
    many_from_image("dir", pools::dir::setup, 3, false);
}

#[test]
fn commit_carries_changes_into_new_containers() {
    let tmp = tempfile::Builder::new()
        .prefix("berth-commit-")
        .tempdir_in("/var/tmp")
        .unwrap();
    {
        let b = Berth::open(&tmp.path().join("state"), true).unwrap();
        base_image(&b);
        from_image(&b, "work", "default");
        in_rootfs(&b, "work", |r| {
            std::fs::write(r.join("etc/added"), "new file").unwrap();
            std::fs::remove_file(r.join("etc/marker")).unwrap();
            std::fs::create_dir(r.join("app")).unwrap();
        });
        let mut cfg = b.store().container("work").unwrap();
        cfg.run.env = vec!["APP=1".to_owned()];
        b.store().save(&cfg).unwrap();
        let want = in_rootfs(&b, "work", |r| rootfs_digest(r).unwrap());

        let img = b.commit("work", "next", &NoProgress).unwrap();
        assert_eq!(img.parent.as_deref(), Some("base"));
        assert_eq!(
            img.digest, want,
            "the image is exactly the container's tree"
        );
        assert_ne!(img.digest, b.store().image("base").unwrap().digest);
        assert_eq!(img.defaults.env, vec!["APP=1".to_owned()]);
        // A second commit under the same name is refused, nothing made.
        assert!(matches!(
            b.commit("work", "next", &NoProgress),
            Err(BerthError::ImageExists(_))
        ));

        let req = CreateRequest {
            image: Some("next".to_owned()),
            ..CreateRequest::default()
        };
        let c = b.create("again", &req, &NoProgress).unwrap();
        assert_eq!(c.run.env, vec!["APP=1".to_owned()]);
        in_rootfs(&b, "again", |r| {
            assert_eq!(
                std::fs::read_to_string(r.join("etc/added")).unwrap(),
                "new file"
            );
            assert!(!r.join("etc/marker").exists());
            assert!(r.join("app").is_dir());
            assert_eq!(rootfs_digest(r).unwrap(), want);
        });
        // Bad input is refused by name before anything is made.
        for (bad, what) in [("image.x", "image."), ("a/b", "'/'")] {
            let e = b.create(bad, &req, &NoProgress).unwrap_err().to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
        let e = b
            .create(
                "x",
                &CreateRequest {
                    image: Some("nope".to_owned()),
                    ..CreateRequest::default()
                },
                &NoProgress,
            )
            .unwrap_err();
        assert!(matches!(e, BerthError::NoImage(_)), "{e}");

        for n in ["again", "work"] {
            b.destroy(n, DestroyRequest::default()).unwrap();
        }
        b.image_rm("next").unwrap();
        b.image_rm("base").unwrap();
        let left = b
            .backend(&b.store().default_pool())
            .unwrap()
            .volume_names()
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
    assert_no_leaks(tmp.path());
}

#[test]
fn image_export_import_round_trips() {
    use berth_core::ops::{ExportRequest, ImportRequest, ImportedAny};
    let tmp = tempfile::Builder::new()
        .prefix("berth-imgx-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let s = match pools::btrfs::setup(tmp.path()) {
        Ok(s) => s,
        Err(reason) => return skip(&format!("btrfs pool: {reason}")),
    };
    let mut pool = s.pool.clone();
    pool.name = "bt".to_owned();
    {
        let b = Berth::open(&tmp.path().join("state"), true).unwrap();
        b.pool_add(&pool).unwrap();
        base_image(&b);
        let mut img = b.store().image("base").unwrap();
        img.defaults.env = vec!["K=v".to_owned()];
        img.defaults.cmd = vec!["/bin/sh".to_owned()];
        b.store().save_image(&img).unwrap();
        // The image's copy on btrfs, exported natively from there.
        let req = CreateRequest {
            pool: Some("bt".to_owned()),
            image: Some("base".to_owned()),
            ..CreateRequest::default()
        };
        b.create("onbt", &req, &NoProgress).unwrap();
        b.commit("onbt", "btimg", &NoProgress).unwrap();

        let import = |bytes: &[u8], name: &str, pool: Option<&str>| {
            let req = ImportRequest {
                name: Some(name.to_owned()),
                pool: pool.map(str::to_owned),
                ..ImportRequest::default()
            };
            b.import_any(&mut &bytes[..], &req, &NoProgress)
        };
        for (src, pool, native) in [("base", None, false), ("btimg", Some("bt"), true)] {
            let mut bundle = Vec::new();
            let sum = b
                .export_image(src, &ExportRequest::default(), &mut bundle)
                .unwrap();
            assert_eq!(sum.encoding != "tar", native, "{src}: {}", sum.encoding);
            let want = b.store().image(src).unwrap();
            let name = format!("{src}-again");
            match import(&bundle, &name, pool).unwrap() {
                ImportedAny::Image(got) => {
                    assert_eq!(got.digest, want.digest, "{src}");
                    assert_eq!(got.defaults.env, want.defaults.env);
                    assert_eq!(got.defaults.cmd, want.defaults.cmd);
                }
                ImportedAny::Container(c) => panic!("{src}: imported as container {c:?}"),
            }
            // A container from the imported image holds the same tree.
            let req = CreateRequest {
                pool: pool.map(str::to_owned),
                image: Some(name.clone()),
                ..CreateRequest::default()
            };
            let c = format!("{src}-c");
            b.create(&c, &req, &NoProgress).unwrap();
            assert_eq!(
                in_rootfs(&b, &c, |r| rootfs_digest(r).unwrap()),
                want.digest
            );
            b.destroy(&c, DestroyRequest::default()).unwrap();
            b.image_rm(&name).unwrap();

            // A damaged bundle is refused, and leaves nothing.
            let before: Vec<String> = b
                .store()
                .images()
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
            let mid = bundle.len() / 2;
            bundle[mid] ^= 0xff;
            assert!(
                import(&bundle, "broken", pool).is_err(),
                "{src}: a damaged bundle imported"
            );
            let after: Vec<String> = b
                .store()
                .images()
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
            assert_eq!(before, after);
        }
        b.destroy("onbt", DestroyRequest::default()).unwrap();
        for i in ["btimg", "base"] {
            b.image_rm(i).unwrap();
        }
        for p in [&pool, &b.store().default_pool()] {
            let left = b.backend(p).unwrap().volume_names().unwrap();
            assert!(left.is_empty(), "pool {} still holds {left:?}", p.name);
        }
        assert!(b.doctor(false).unwrap().is_empty());
    }
    drop(s.keep);
    assert_no_leaks(tmp.path());
}
