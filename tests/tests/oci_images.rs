//! Privileged, through the `berth` binary: OCI image layouts become images
//! (`berth image import --oci DIR:TAG`) and containers made from them hold
//! exactly the layers' tree (whiteouts, an opaque directory, a hardlink
//! across layers) and run with the config's Env and WorkingDir, on a dir pool
//! and on an overlay pool. The good image is written as a docker-archive and
//! turned into an OCI layout by skopeo, as users make them; the hostile ones
//! are written directly. A hostile layout fails with a clear error, writes
//! nothing outside, and leaves no image, volume, journal entry or mount; an
//! import SIGKILLed midway leaves nothing after the next berth command.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use berth_bdev::cmd::{self, have_program, HostRunner};
use berth_bdev::mount::mounts_under;
use berth_tests::cli::{assert_run_left_nothing, unique_name, Store};
use berth_tests::harness::{skip, write_incompressible};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A layer tarball, entry by entry, with fixed times.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    fn dir(mut self, path: &str, mode: u32) -> Layer {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    fn file(self, path: &str, mode: u32, data: &[u8]) -> Layer {
        self.owned(path, mode, 0, data)
    }

    fn owned(mut self, path: &str, mode: u32, uid: u64, data: &[u8]) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Layer {
        let mut h = Self::header(kind, 0o777, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    fn device(mut self, path: &str, major: u32, minor: u32) -> Layer {
        let mut h = Self::header(tar::EntryType::Char, 0o600, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// An entry named as given (the tar crate refuses `..` in paths it
    /// sets) that declares `declared` bytes and holds `data`: what a hostile
    /// archive holds.
    fn raw(mut self, name: &[u8], declared: u64, data: &[u8]) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, 0, declared);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// The image config (OCI and docker-archive alike) for `layers`.
fn config(layers: &[Vec<u8>], settings: Value) -> Vec<u8> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// The docker-archive (`docker save`'s format) of one image, turned into an
/// OCI layout `dir` tagged `tag` by skopeo (which gzips the layers).
fn skopeo_layout(base: &Path, layers: &[Vec<u8>], settings: Value, dir: &Path, tag: &str) {
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("{i}/layer.tar"))
        .collect();
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": ["berth/oci-test:1"],
        "Layers": names,
    }]);
    let mut archive = tar::Builder::new(Vec::new());
    let mut put = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        archive.append_data(&mut h, name, data).unwrap();
    };
    put("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    put("config.json", &config(layers, settings));
    for (name, layer) in names.iter().zip(layers) {
        put(name, layer);
    }
    let path = base.join("image.tar");
    fs::write(&path, archive.into_inner().unwrap()).unwrap();
    let src = format!("docker-archive:{}", path.display());
    let dst = format!("oci:{}:{tag}", dir.display());
    cmd::run(
        &HostRunner,
        "skopeo",
        &["--insecure-policy", "copy", "--quiet", &src, &dst],
    )
    .unwrap_or_else(|e| panic!("skopeo copy {src} {dst}: {e}"));
}

/// An OCI layout written blob by blob, plain tar layers, tagged `t1`;
/// returns the layers' blob paths.
fn direct_layout(dir: &Path, layers: &[Vec<u8>]) -> Vec<PathBuf> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let blob = |media: &str, bytes: &[u8]| {
        let digest = sha256(bytes);
        fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        json!({"mediaType": media, "digest": digest, "size": bytes.len()})
    };
    let descs: Vec<Value> = layers.iter().map(|l| blob(TAR, l)).collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob("application/vnd.oci.image.config.v1+json", &config(layers, json!({}))),
        "layers": descs,
    });
    let mut manifest = blob(
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": "t1"});
    let index = json!({"schemaVersion": 2, "manifests": [manifest]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    layers.iter().map(|l| blobs.join(&sha256(l)[7..])).collect()
}

/// One line per entry below `root`, sorted: "path type mode uid:gid
/// detail", detail being a short file's content (else its sha256) or a
/// symlink's target.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = meta.file_type();
            let (tag, detail) = if kind.is_dir() {
                dirs.push(path.clone());
                ("d", String::new())
            } else if kind.is_symlink() {
                (
                    "l",
                    format!("-> {}", fs::read_link(&path).unwrap().display()),
                )
            } else if kind.is_file() {
                let data = fs::read(&path).unwrap();
                match String::from_utf8(data.clone()) {
                    Ok(text) if text.len() < 64 => ("f", text),
                    _ => ("f", sha256(&data)),
                }
            } else {
                ("?", format!("{:?}", kind))
            };
            let line = format!(
                "{rel} {tag} {:o} {}:{} {detail}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            );
            out.push(line.trim_end().to_owned());
        }
    }
    out.sort();
    out
}

/// Layer 1: a static busybox with /bin/sh, files, a directory with content,
/// a file to white out, a hardlink source, the workdir. Layer 2: a whiteout,
/// an opaque directory with a new file, a hardlink to a layer-1 file, a
/// changed file.
fn two_layers(busybox: &[u8]) -> Vec<Vec<u8>> {
    let one = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, busybox)
        .link(tar::EntryType::Symlink, "bin/sh", "busybox")
        .dir("etc", 0o755)
        .file("etc/motd", 0o644, b"hello")
        .dir("d", 0o755)
        .file("d/a", 0o644, b"a")
        .dir("d/sub", 0o700)
        .file("d/sub/b", 0o644, b"b")
        .file("gone", 0o644, b"gone")
        .dir("data", 0o755)
        .owned("data/shared", 0o640, 1000, b"shared")
        .file("changed", 0o644, b"v1")
        .dir("work", 0o755)
        .dir("tmp", 0o1777)
        .finish();
    let two = Layer::new()
        .file(".wh.gone", 0o644, b"")
        .dir("d", 0o750)
        .file("d/.wh..wh..opq", 0o644, b"")
        .file("d/new", 0o644, b"new")
        .link(tar::EntryType::Link, "data/link", "data/shared")
        .file("changed", 0o600, b"v2")
        .finish();
    vec![one, two]
}

fn expected_tree(busybox: &[u8]) -> Vec<String> {
    let mut tree = vec![
        format!("bin/busybox f 755 0:0 {}", sha256(busybox)),
        "bin d 755 0:0".to_owned(),
        "bin/sh l 777 0:0 -> busybox".to_owned(),
        "changed f 600 0:0 v2".to_owned(),
        "d d 750 0:0".to_owned(),
        "d/new f 644 0:0 new".to_owned(),
        "data d 755 0:0".to_owned(),
        "data/link f 640 1000:1000 shared".to_owned(),
        "data/shared f 640 1000:1000 shared".to_owned(),
        "etc d 755 0:0".to_owned(),
        "etc/motd f 644 0:0 hello".to_owned(),
        "tmp d 1777 0:0".to_owned(),
        "work d 755 0:0".to_owned(),
    ];
    tree.sort();
    tree
}

/// Mounts container `name`, checks its tree against `expected` (and the
/// hardlink's shared inode), unmounts it.
fn assert_tree(s: &Store, name: &str, expected: &[String]) {
    let out = s.ok(&["mount", name]);
    let rootfs = PathBuf::from(out.lines().last().unwrap());
    let found = listing(&rootfs);
    let shared = fs::metadata(rootfs.join("data/shared"));
    let link = fs::metadata(rootfs.join("data/link"));
    s.ok(&["umount", name]);
    assert_eq!(found, expected, "{name}'s tree");
    let (shared, link) = (shared.unwrap(), link.unwrap());
    assert_eq!(
        (shared.ino(), shared.nlink()),
        (link.ino(), 2),
        "{name}: data/link is a hardlink of data/shared"
    );
}

#[test]
fn a_layout_with_whiteouts_unpacks_to_the_exact_tree_with_its_config_applied() {
    if !have_program("skopeo") {
        return skip("skopeo is not installed (apt-get install skopeo)");
    }
    let busybox = match fs::read("/bin/busybox") {
        Ok(b) => b,
        Err(e) => {
            return skip(&format!(
                "/bin/busybox (apt-get install busybox-static): {e}"
            ))
        }
    };
    let base = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = base.path().join("oci");
    let settings = json!({
        "Env": ["FOO=bar", "PATH=/bin"],
        "WorkingDir": "/work",
        "Cmd": ["/bin/sh", "-c", "echo started"],
        "User": "0",
    });
    skopeo_layout(base.path(), &two_layers(&busybox), settings, &layout, "t1");
    let s = Store::new();
    let oci = format!("{}:t1", layout.display());
    s.ok(&["image", "import", "--oci", &oci, "img"]);

    let info: Value =
        serde_json::from_str(&s.ok(&["--format", "json", "image", "info", "img"])).unwrap();
    assert_eq!(
        info["defaults"],
        json!({
            "env": ["FOO=bar", "PATH=/bin"],
            "cmd": ["/bin/sh", "-c", "echo started"],
            "workdir": "/work",
            "user": "0",
        }),
        "{info:#}"
    );

    let expected = expected_tree(&busybox);
    for (tag, backend) in [("oci-dir", None), ("oci-ovl", Some("overlay"))] {
        let name = unique_name(tag);
        let mut args = vec!["create", name.as_str(), "--image", "img"];
        args.extend(backend.iter().flat_map(|b| ["-B", *b]));
        s.ok(&args);
        assert_tree(&s, &name, &expected);
        let out = s.ok(&[
            "run",
            "--no-tty",
            &name,
            "--",
            "/bin/sh",
            "-c",
            "echo $FOO; pwd",
        ]);
        assert_eq!(
            out, "bar\n/work\n",
            "{name}: the image's Env and WorkingDir"
        );
        assert_run_left_nothing(&name, None);
        // The image's Entrypoint + Cmd is what `berth start` runs.
        s.ok(&["start", &name]);
        s.ok(&["wait", &name]);
        assert_eq!(s.ok(&["logs", &name]).trim(), "started", "{name}'s log");
        assert_run_left_nothing(&name, None);
        s.ok(&["destroy", &name]);
    }
    s.ok(&["image", "rm", "img"]);
    assert_store_empty(&s);
}

/// No image, no volume in the default pool, no journal entry, no mount.
fn assert_store_empty(s: &Store) {
    assert_eq!(
        s.ok(&["--format", "json", "image", "ls"]).trim(),
        "[]",
        "images left"
    );
    let entries = |dir: &str| -> Vec<String> {
        match fs::read_dir(s.root().join(dir)) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    };
    assert_eq!(
        entries("storage/default"),
        Vec::<String>::new(),
        "volumes left"
    );
    assert_eq!(
        entries("journal"),
        Vec::<String>::new(),
        "journal entries left"
    );
    assert_eq!(mounts_under(s.root()), Vec::<PathBuf>::new(), "mounts left");
}

/// Every path below `dir` whose name is `name`, or which is a device node.
fn find_outside(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let (path, kind) = (e.path(), e.file_type().unwrap());
            if e.file_name() == name || kind.is_char_device() || kind.is_block_device() {
                found.push(path.clone());
            }
            if kind.is_dir() {
                todo.push(path);
            }
        }
    }
    found
}

/// One hostile layout: its layers, whether its first layer's blob is
/// changed after it was written, and words the error must hold.
struct Hostile {
    what: &'static str,
    layers: Vec<Vec<u8>>,
    tampered: bool,
    words: Vec<String>,
}

fn hostile(what: &'static str, layers: Vec<Vec<u8>>, words: &[&str]) -> Hostile {
    Hostile {
        what,
        layers,
        tampered: false,
        words: words.iter().map(|w| (*w).to_owned()).collect(),
    }
}

#[test]
fn hostile_layouts_fail_cleanly_and_leave_nothing() {
    const TIB: u64 = 1 << 40;
    let passwd = fs::read("/etc/passwd").unwrap();
    let plain = Layer::new().file("escape", 0o644, b"x").finish();
    let cases = [
        Hostile {
            tampered: true,
            ..hostile(
                "digest mismatch",
                vec![plain],
                &["does not match", "copy the image again"],
            )
        },
        hostile(
            "dot-dot",
            vec![Layer::new().raw(b"../escape", 1, b"x").finish()],
            &["\"../escape\"", "`..`"],
        ),
        hostile(
            "symlink then a write through it",
            vec![
                Layer::new()
                    .link(tar::EntryType::Symlink, "link", "/etc")
                    .finish(),
                Layer::new().file("link/passwd", 0o644, b"x").finish(),
            ],
            &["\"link/passwd\"", "symlink"],
        ),
        hostile(
            "device node",
            vec![Layer::new()
                .dir("dev", 0o755)
                .device("dev/escape", 1, 1)
                .finish()],
            &["\"dev/escape\"", "device node", "--allow-devices"],
        ),
        hostile(
            "huge declared size",
            vec![Layer::new().raw(b"escape", TIB, b"short").finish()],
            &["\"escape\"", &TIB.to_string(), "free"],
        ),
    ];
    for Hostile {
        what,
        layers,
        tampered,
        words,
    } in cases
    {
        let base = tempfile::tempdir_in("/var/tmp").unwrap();
        let layout = base.path().join("oci");
        let blobs = direct_layout(&layout, &layers);
        if tampered {
            // Same length: only the digest can tell.
            let mut bytes = fs::read(&blobs[0]).unwrap();
            bytes[0] ^= 0x20;
            fs::write(&blobs[0], bytes).unwrap();
        }
        let s = Store::new();
        let oci = format!("{}:t1", layout.display());
        let failed = s
            .berth(&["image", "import", "--oci", &oci, "img"])
            .err()
            .unwrap_or_else(|| panic!("{what}: the import succeeded"));
        assert_eq!(failed.code(), Some(1), "{what}: {}", failed.stderr);
        let err = failed.stderr;
        eprintln!("{what}: {}", err.trim());
        assert!(!err.contains("panicked"), "{what}: {err}");
        for w in &words {
            assert!(err.contains(w.as_str()), "{what}: {w:?} not in: {err}");
        }
        assert_store_empty(&s);
        for dir in [s.root(), base.path()] {
            let found = find_outside(dir, "escape");
            assert!(found.is_empty(), "{what}: {found:?}");
        }
        assert_eq!(
            fs::read("/etc/passwd").unwrap(),
            passwd,
            "{what}: /etc/passwd"
        );
        for path in ["/escape", "/var/escape", "/var/tmp/escape", "/etc/escape"] {
            assert!(!Path::new(path).exists(), "{what}: {path}");
        }
    }
}

#[test]
fn devices_are_created_with_allow_devices() {
    let base = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = base.path().join("oci");
    let layer = Layer::new()
        .dir("dev", 0o755)
        .device("dev/null", 1, 3)
        .finish();
    direct_layout(&layout, &[layer]);
    let s = Store::new();
    let oci = format!("{}:t1", layout.display());
    s.ok(&["image", "import", "--allow-devices", "--oci", &oci, "img"]);
    let node = s.root().join("storage/default/image.img/dev/null");
    let meta = fs::symlink_metadata(&node).unwrap();
    assert!(meta.file_type().is_char_device(), "{node:?}");
    assert_eq!(meta.rdev(), rustix::fs::makedev(1, 3));
    s.ok(&["image", "rm", "img"]);
    assert_store_empty(&s);
}

/// A SIGKILL while a big layer is written: the next berth command that
/// opens the store for writing (here `berth doctor`) removes the half-made
/// volume, and the import then works.
#[test]
fn an_import_killed_midway_leaves_nothing() {
    let base = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = base.path().join("oci");
    let mut data = Vec::new();
    write_incompressible(&mut data, 48, 13).unwrap();
    let layer = Layer::new()
        .file("a", 0o644, &data[..data.len() / 2])
        .file("b", 0o644, &data[data.len() / 2..])
        .finish();
    drop(data);
    direct_layout(&layout, &[layer]);
    let oci = format!("{}:t1", layout.display());
    let import = ["image", "import", "--oci", oci.as_str(), "big"];

    let s = Store::new();
    let started = Instant::now();
    s.ok(&import);
    let took = started.elapsed();
    s.ok(&["image", "rm", "big"]);
    let volume = s.root().join("storage/default/image.big");
    let (mut midway, mut kills) = (0, 0);
    for tenths in [5, 3, 7, 2, 8, 4, 6] {
        let delay = took * tenths / 10;
        match s.berth_killed_after(delay, &import) {
            Err(f) if f.killed() => kills += 1,
            Ok(_) => {
                s.ok(&["image", "rm", "big"]);
                continue;
            }
            Err(f) => panic!("import failed on its own ({}): {}", f.status, f.stderr),
        }
        let recorded = s.root().join("images/big.toml").exists();
        if volume.exists() && !recorded {
            midway += 1;
        }
        let doctor = s.ok(&["doctor"]);
        assert_eq!(
            doctor.trim(),
            "nothing to repair",
            "after a kill at {delay:?}"
        );
        if recorded {
            // Killed after the record was written: a whole image.
            s.ok(&["image", "rm", "big"]);
        }
        assert_store_empty(&s);
        if midway >= 2 {
            break;
        }
    }
    eprintln!("import of a 48 MiB layer: {took:?}; {kills} kills, {midway} while it was written");
    assert!(
        midway > 0,
        "no kill landed while the layer was written (a whole import takes {took:?})"
    );
    s.ok(&import);
    s.ok(&["image", "rm", "big"]);
    assert_store_empty(&s);
}
