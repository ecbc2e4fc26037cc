//! zfs (zfs-fuse here): a snapshot clone is `zfs snapshot` + `zfs clone`, a
//! copy is `zfs send | zfs recv`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::process::wait_until;
use berth_bdev::revert::Revert;
use berth_bdev::{PoolConfig, VolumeSpec};

use super::{arg, argv, Commands, Kind, Native, NativeOp, SpaceProbe, Target};
use crate::error::Result;
use crate::session::{self, Session, ZPOOL_PREFIX};

const ZPOOL_SIZE: u64 = 16 << 30;

pub const KIND: Kind = Kind {
    backend: "zfs",
    scratch,
    native: |pool, work| {
        let parent = pool.options.get("dataset")?;
        let zpool = parent.split('/').next()?;
        Some(Box::new(Datasets::new(
            &format!("{zpool}/berth-bench-{}", std::process::id()),
            work,
        )))
    },
};

fn zpool_answers() -> bool {
    cmd::run(&HostRunner, "zpool", &["list", "-H"]).is_ok()
}

/// Starts zfs-fuse unless one answers; its pidfile in the run's directory lets
/// the run (or the cleanup after a killed one) stop exactly this daemon.
fn ensure_daemon(s: &Session, rv: &mut Revert) -> std::result::Result<(), String> {
    if zpool_answers() {
        return Ok(());
    }
    let pidfile = s.dir.join("zfs-fuse.pid");
    cmd::run(
        &HostRunner,
        "zfs-fuse",
        // -x: file capabilities (xattrs) are off in zfs-fuse by default.
        &["-x", "--no-kstat-mount", "--pidfile", &arg(&pidfile)],
    )
    .map_err(|e| format!("start zfs-fuse: {e}"))?;
    let dir = s.dir.clone();
    rv.add("stop zfs-fuse", move || {
        session::stop_own_zfs_fuse(&dir);
        Ok::<(), String>(())
    });
    if !wait_until(Duration::from_secs(15), zpool_answers) {
        return Err("zfs-fuse started but `zpool list` does not answer".to_owned());
    }
    Ok(())
}

fn scratch(s: &Session, dir: &Path) -> std::result::Result<Target, String> {
    for prog in ["zfs-fuse", "zfs", "zpool"] {
        if !cmd::have_program(prog) {
            return Err(format!(
                "{prog} is not installed (apt-get install zfs-fuse)"
            ));
        }
    }
    let mut rv = Revert::new();
    ensure_daemon(s, &mut rv)?;
    let zpool = format!("{ZPOOL_PREFIX}{}", s.tag);
    let image = dir.join("zpool.img");
    let f =
        std::fs::File::create(&image).map_err(|e| format!("create {}: {e}", image.display()))?;
    f.set_len(ZPOOL_SIZE)
        .map_err(|e| format!("size {}: {e}", image.display()))?;
    drop(f);
    let img = image.clone();
    rv.add("remove the zpool image", move || std::fs::remove_file(&img));
    cmd::run(
        &HostRunner,
        "zpool",
        &[
            "create",
            "-o",
            "cachefile=none",
            "-m",
            "none",
            &zpool,
            &arg(&image),
        ],
    )
    .map_err(|e| format!("zpool create: {e}"))?;
    let name = zpool.clone();
    rv.add("destroy the zpool", move || {
        session::destroy_zpool(&name);
        Ok::<(), String>(())
    });
    let pool = PoolConfig::new("bench-zfs", "zfs")
        .with_option("dataset", &format!("{zpool}/berth"))
        .with_path(dir.join("mnt"));
    Ok(Target {
        native: Some(Box::new(Datasets::new(
            &format!("{zpool}/native"),
            &dir.join("native"),
        ))),
        pool,
        root: s.store(),
        under: format!(
            "zpool on a {} GiB sparse file, served by zfs-fuse",
            ZPOOL_SIZE >> 30
        ),
        space: SpaceProbe::ZfsDataset(zpool),
        teardown: rv,
    })
}

/// Datasets under `ns`, a dataset of the primitives' own.
pub struct Datasets {
    ns: String,
    work: PathBuf,
    rootfs: Option<PathBuf>,
    made: bool,
}

impl Datasets {
    fn new(ns: &str, work: &Path) -> Self {
        Datasets {
            ns: ns.to_owned(),
            work: work.to_path_buf(),
            rootfs: None,
            made: false,
        }
    }

    fn ds(&self, id: &str) -> String {
        format!("{}/{id}", self.ns)
    }
}

impl Native for Datasets {
    fn prepare(&mut self, rootfs: &Path, _of: &VolumeSpec) -> Result<()> {
        berth_bdev::fsutil::create_dir_all(&self.work)?;
        self.rootfs = Some(rootfs.to_path_buf());
        super::run_untimed(&[argv(&["zfs", "create", "-o", "mountpoint=none", &self.ns])])?;
        self.made = true;
        let src = self.ds("src");
        let at = self.work.join("src");
        super::run_untimed(&[
            argv(&[
                "zfs",
                "create",
                "-o",
                &format!("mountpoint={}", arg(&at)),
                &src,
            ]),
            argv(&["cp", "-a", &format!("{}/.", arg(rootfs)), &arg(&at)]),
            argv(&["zfs", "snapshot", &format!("{src}@base")]),
        ])
    }

    fn commands(&self, op: NativeOp, id: &str) -> Option<Commands> {
        let src = self.ds("src");
        let dst = self.ds(id);
        Some(match op {
            NativeOp::Create => {
                let at = arg(&self.work.join(id));
                let rootfs = format!("{}/.", arg(self.rootfs.as_deref()?));
                vec![
                    argv(&["zfs", "create", "-o", &format!("mountpoint={at}"), &dst]),
                    argv(&["cp", "-a", &rootfs, &at]),
                ]
            }
            NativeOp::SnapshotClone => vec![
                argv(&["zfs", "snapshot", &format!("{src}@{id}")]),
                argv(&["zfs", "clone", &format!("{src}@{id}"), &dst]),
            ],
            NativeOp::Copy => vec![argv(&[
                "sh",
                "-c",
                &format!("zfs send {src}@base | zfs recv -u {dst}"),
            ])],
            NativeOp::Snapshot => vec![argv(&["zfs", "snapshot", &format!("{src}@{id}")])],
            NativeOp::DestroyClone => vec![
                argv(&["zfs", "destroy", &dst]),
                argv(&["zfs", "destroy", &format!("{src}@{id}")]),
            ],
        })
    }

    fn work(&self) -> &Path {
        &self.work
    }

    fn cleanup(&mut self) -> Result<()> {
        if std::mem::take(&mut self.made) {
            let _ = super::run_untimed(&[argv(&["zfs", "unmount", "-f", &self.ds("src")])]);
            // -R: clones of the source's snapshots go too. zfs-fuse answers
            // "busy" for a moment after an unmount.
            let destroy = [argv(&["zfs", "destroy", "-R", "-f", &self.ns])];
            let mut last = Ok(());
            for _ in 0..20 {
                last = super::run_untimed(&destroy);
                if last.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            last?;
        }
        super::remove_work(&self.work)
    }
}
