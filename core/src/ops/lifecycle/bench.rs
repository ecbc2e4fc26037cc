//! `berth bench lifecycle`: start → exec `/bin/true` → stop of a detached
//! container, whole-process wall time of each command, next to LXC's
//! `lxc-start -d` → `lxc-attach -- /bin/true` → `lxc-stop` on a copy of the same
//! rootfs, alternating rep by rep in one run. A benchmark, never a test.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, HostRunner, Runner};
use berth_bdev::copy::{copy_tree, NoProgress};
use berth_bdev::delete::remove_tree;
use serde::Serialize;
use tracing::warn;

use crate::error::{BerthError, Result};
use crate::ops::Berth;

/// The init both sides run: it exits at once on SIGTERM (berth) or SIGPWR
/// (LXC's halt signal), so `stop` measures stopping, not a timeout.
const INIT_SCRIPT: &str = "trap 'exit 0' TERM PWR\nsleep 100000 &\nwait\n";
const INIT_PATH: &str = "/berth-bench-init.sh";

/// The quiet before each timed command. Moving a process into a cgroup may
/// wait for an RCU grace period, which the kernel skips for a move within a
/// few milliseconds of another one: back-to-back reps would all find it warm,
/// which a start on a quiet host does not.
const QUIET: Duration = Duration::from_millis(100);

fn quiet() {
    std::thread::sleep(QUIET);
}

/// Median and spread of one step, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StepTimes {
    pub tool: &'static str,
    pub step: &'static str,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub runs: usize,
}

fn summary(tool: &'static str, step: &'static str, mut v: Vec<Duration>) -> StepTimes {
    v.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3);
    let n = v.len();
    // An even count's median is the mean of the two middle values.
    let median = match n {
        0 => 0.0,
        _ if n % 2 == 1 => ms(v.get(n / 2)),
        _ => ((ms(v.get(n / 2 - 1)) + ms(v.get(n / 2))) * 500.0).round() / 1e3,
    };
    StepTimes {
        tool,
        step,
        median_ms: median,
        min_ms: ms(v.first()),
        max_ms: ms(v.last()),
        runs: v.len(),
    }
}

/// Runs a program and returns its wall time.
pub fn timed(prog: &OsStr, args: &[&OsStr]) -> Result<Duration> {
    let t = Instant::now();
    HostRunner
        .run(&prog.to_string_lossy(), args)
        .map_err(berth_bdev::BdevError::from)?;
    Ok(t.elapsed())
}

/// Runs the benchmark on container `name` of the store at `root` (stopped; its
/// rootfs gets the bench init script), `runs` times; with `lxc`, LXC too.
pub fn bench_lifecycle(
    root: &Path,
    name: &str,
    runs: usize,
    berth_exe: &Path,
    lxc: bool,
) -> Result<Vec<StepTimes>> {
    let rootfs = Berth::open(root, true)?.mount(name)?;
    let prepared = (|| -> Result<Option<PathBuf>> {
        let script = rootfs.join(INIT_PATH.trim_start_matches('/'));
        std::fs::write(&script, INIT_SCRIPT).map_err(BerthError::io("write", &script))?;
        if !lxc {
            return Ok(None);
        }
        // Not under ROOT/tmp, whose entries berth removes once their process is gone.
        let lxcpath = root.join(format!("lxc-bench-{}", std::process::id()));
        let dir = lxcpath.join(name);
        berth_bdev::fsutil::create_dir_all(&dir.join("rootfs"))?;
        copy_tree(&rootfs, &dir.join("rootfs"), &NoProgress)?;
        let config = format!(
            "lxc.uts.name = {name}\nlxc.rootfs.path = dir:{}\nlxc.init.cmd = /bin/sh {INIT_PATH}\n\
             lxc.net.0.type = empty\nlxc.mount.auto = proc:mixed sys:ro cgroup:mixed\n\
             lxc.apparmor.profile = unconfined\nlxc.autodev = 1\nlxc.pty.max = 16\n",
            dir.join("rootfs").display()
        );
        let path = dir.join("config");
        std::fs::write(&path, config).map_err(BerthError::io("write", &path))?;
        Ok(Some(lxcpath))
    })();
    let unmounted = Berth::open(root, true).and_then(|b| b.umount(name));
    let lxcpath = prepared?;
    unmounted?;

    let out = measure(root, name, runs, berth_exe, lxcpath.as_deref());
    if out.is_err() {
        // A step failed midway: nothing may be left running.
        let args = [
            OsStr::new("--root"),
            root.as_os_str(),
            OsStr::new("stop"),
            OsStr::new(name),
        ];
        let _ = HostRunner.run(&berth_exe.to_string_lossy(), &args);
        if let Some(p) = &lxcpath {
            let args = [
                OsStr::new("-P"),
                p.as_os_str(),
                OsStr::new("-n"),
                OsStr::new(name),
                OsStr::new("-k"),
            ];
            let _ = HostRunner.run("lxc-stop", &args);
        }
    }
    if let Some(p) = &lxcpath {
        if let Err(e) = remove_tree(p, root) {
            warn!(error = %e, "could not remove the LXC copy");
        }
    }
    out
}

fn measure(
    root: &Path,
    name: &str,
    runs: usize,
    exe: &Path,
    lxcpath: Option<&Path>,
) -> Result<Vec<StepTimes>> {
    let o = OsStr::new;
    let berth = |args: &[&str]| -> Result<Duration> {
        let mut all = vec![o("--root"), root.as_os_str()];
        all.extend(args.iter().map(|a| o(a)));
        timed(exe.as_os_str(), &all)
    };
    let mut ours: [Vec<Duration>; 3] = Default::default();
    let mut theirs: [Vec<Duration>; 3] = Default::default();
    let berth = |args: &[&str]| {
        quiet();
        berth(args)
    };
    for _ in 0..runs.max(1) {
        ours[0].push(berth(&["start", name, "--", "/bin/sh", INIT_PATH])?);
        ours[1].push(berth(&["exec", "--no-tty", name, "--", "/bin/true"])?);
        ours[2].push(berth(&["stop", name])?);
        if let Some(p) = lxcpath {
            let lxc = |prog: &str, extra: &[&str]| -> Result<Duration> {
                let mut all = vec![o("-P"), p.as_os_str(), o("-n"), o(name)];
                all.extend(extra.iter().map(|a| o(a)));
                quiet();
                timed(o(prog), &all)
            };
            theirs[0].push(lxc("lxc-start", &["-d"])?);
            theirs[1].push(lxc("lxc-attach", &["--", "/bin/true"])?);
            theirs[2].push(lxc("lxc-stop", &[])?);
        }
    }
    let steps = ["start", "exec /bin/true", "stop"];
    let mut out = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        out.push(summary("berth", step, std::mem::take(&mut ours[i])));
        if lxcpath.is_some() {
            out.push(summary("lxc", step, std::mem::take(&mut theirs[i])));
        }
    }
    Ok(out)
}

/// Whether LXC's tools are installed, for `--lxc`.
pub fn have_lxc() -> bool {
    ["lxc-start", "lxc-attach", "lxc-stop"]
        .iter()
        .all(|p| cmd::have_program(p))
}

/// `berth bench run`: start-to-exit of `/bin/true` through `berth run NAME`,
/// next to its floor: the backend's own mount of the volume, `unshare -m -u
/// -i -n -p -f chroot ROOTFS /bin/true` and the unmount, alternating rep by
/// rep. The ratio is what berth adds (confinement, cgroup, /proc, /dev, the
/// store) over a bare chroot.
pub fn bench_run(root: &Path, name: &str, runs: usize, berth_exe: &Path) -> Result<Vec<StepTimes>> {
    let (backend, volume, at) = {
        let b = Berth::open(root, true)?;
        b.refuse_if_active(name, "stop it first (`berth stop`)")?;
        let c = b.store().container(name)?;
        // Under this process's scratch directory: cleanup leaves it alone.
        let at = b.scratch().join("bench-floor");
        (b.backend_of(&c)?, c.volume, at)
    };
    berth_bdev::fsutil::create_dir_all(&at)?;
    let o = OsStr::new;
    let floor = || -> Result<Duration> {
        let t = Instant::now();
        let guard = backend.mount(&volume, &at, false)?;
        let args = [
            o("-m"),
            o("-u"),
            o("-i"),
            o("-n"),
            o("-p"),
            o("-f"),
            o("chroot"),
            at.as_os_str(),
            o("/bin/true"),
        ];
        let ran = HostRunner
            .run("unshare", &args)
            .map_err(berth_bdev::BdevError::from);
        let released = guard.release();
        ran?;
        released?;
        Ok(t.elapsed())
    };
    let args = [
        o("--root"),
        root.as_os_str(),
        o("run"),
        o("--no-tty"),
        o(name),
        o("--"),
        o("/bin/true"),
    ];
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let measured = (|| -> Result<()> {
        for _ in 0..runs.max(1) {
            quiet();
            ours.push(timed(berth_exe.as_os_str(), &args)?);
            quiet();
            bare.push(floor()?);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir(&at);
    let _ = at.parent().map(std::fs::remove_dir);
    measured?;
    Ok(vec![
        summary("berth", "run /bin/true", ours),
        summary("floor", "mount + unshare chroot /bin/true + umount", bare),
    ])
}
