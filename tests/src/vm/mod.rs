//! A throw-away QEMU VM for tests that need kernel features this host lacks
//! (device-mapper, for lvm).
//!
//! Nothing is installed on the host: Debian's cloud kernel, qemu-system-x86 with
//! its firmware and the libraries the host lacks, and lvm2 are fetched with
//! `apt-get download --print-uris` + `apt-helper download-file` (hash-checked) and
//! unpacked with `dpkg-deb -x` into `target/berth-vm/<key>/root`, where the key
//! hashes the package file names (hence their versions). The initramfs is built
//! per run: static busybox, the unpacked lvm2, e2fsprogs and every library they
//! and the payload need (found with `ldd`), the dm modules in dependency order,
//! and the payload, which is the calling test binary itself. `/init` mounts
//! /proc, /sys, /dev, tmpfs on /tmp, /run and /var/tmp, loads the modules and runs
//! the payload with `BERTH_IN_VM=1`; the host reads the serial log. qemu runs
//! under TCG (KVM hangs here), without network, and is stopped by pid when the
//! deadline passes or the test panics.
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::process::Process;

mod assets;
mod initramfs;

pub use assets::*;
pub use initramfs::*;

/// Set (to 1) in the guest's environment.
pub const IN_VM_ENV: &str = "BERTH_IN_VM";

const KERNEL_META: &str = "linux-image-cloud-amd64";
const PACKAGES: [&str; 6] = [
    "lvm2",
    "libdevmapper-event1.02.1",
    "qemu-system-x86",
    // Only unpacked, for its accel-tcg module: installing it would replace the
    // host's backports qemu-utils.
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
];
/// Modules loaded in the guest, with whatever they depend on first.
const MODULES: [&str; 4] = ["loop", "dm-mod", "dm-snapshot", "dm-thin-pool"];
/// Host programs copied into the guest, with their libraries.
const HOST_TOOLS: [&str; 5] = [
    "/sbin/mke2fs",
    "/sbin/e2fsck",
    "/sbin/resize2fs",
    "/sbin/dumpe2fs",
    "/sbin/blkid",
];
const MULTIARCH: &str = "lib/x86_64-linux-gnu";

const LVM_CONF: &str = "\
# No udev in the test VM: LVM creates the /dev nodes itself.
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = \"none\"
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
global {
    use_lvmlockd = 0
    thin_check_executable = \"\"
    thin_repair_executable = \"\"
}
backup {
    backup = 0
    archive = 0
}
";

/// How a guest boots, beyond what every guest gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestConfig {
    /// A pure cgroup v2 host: `cgroup_no_v1=all` on the kernel command line
    /// and cgroup2 mounted at /sys/fs/cgroup by /init (with every controller
    /// available at its root). Kernel messages below errors stay off the
    /// console, so OOM reports do not cut through the payload's lines.
    pub pure_cgroup2: bool,
}

impl GuestConfig {
    /// The kernel command line.
    pub fn kernel_args(&self) -> String {
        if self.pure_cgroup2 {
            "console=ttyS0 panic=-1 quiet loglevel=3 cgroup_no_v1=all".to_owned()
        } else {
            "console=ttyS0 panic=-1 quiet loglevel=4".to_owned()
        }
    }
}

/// Whether this process runs inside the test VM.
pub fn in_vm() -> bool {
    std::env::var(IN_VM_ENV).is_ok_and(|v| v == "1")
}

fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    cmd::run(&HostRunner, prog, args)
        .map(|o| o.stdout)
        .map_err(|e| e.to_string())
}

/// `target/` of the running test binary (`target/debug/deps/NAME-HASH`).
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{exe:?} is not under target/PROFILE/deps"))
}

/// Stops qemu if the test ends early; qemu never outlives the test.
struct Qemu(Option<Process>);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.stop(Duration::from_secs(2));
        }
    }
}

/// Boots the VM and returns its serial log once it powers off; fails after `limit`.
pub fn boot(a: &Assets, initrd: &Path, work: &Path, limit: Duration) -> Result<String, String> {
    boot_with(a, initrd, work, limit, &GuestConfig::default())
}

/// [`boot`] with the kernel command line of `cfg`.
pub fn boot_with(
    a: &Assets,
    initrd: &Path,
    work: &Path,
    limit: Duration,
    cfg: &GuestConfig,
) -> Result<String, String> {
    let append = cfg.kernel_args();
    let log = work.join("serial.log");
    let pidfile = work.join("qemu.pid");
    let _ = std::fs::remove_file(&pidfile);
    let env = format!("LD_LIBRARY_PATH={}", a.lib_path());
    let moddir = format!(
        "QEMU_MODULE_DIR={}",
        a.root.join("usr").join(MULTIARCH).join("qemu").display()
    );
    let qemu = a.qemu().to_string_lossy().into_owned();
    let serial = format!("file:{}", log.display());
    let bios_qemu = a.root.join("usr/share/qemu").to_string_lossy().into_owned();
    let bios_sea = a
        .root
        .join("usr/share/seabios")
        .to_string_lossy()
        .into_owned();
    let kernel = a.kernel.to_string_lossy().into_owned();
    let initrd = initrd.to_string_lossy().into_owned();
    let pid_s = pidfile.to_string_lossy().into_owned();
    let started = Instant::now();
    run(
        "env",
        &[
            &env,
            &moddir,
            &qemu,
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-no-reboot",
            "-nic",
            "none",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            &serial,
            "-L",
            &bios_qemu,
            "-L",
            &bios_sea,
            "-kernel",
            &kernel,
            "-initrd",
            &initrd,
            "-append",
            &append,
            "-daemonize",
            "-pidfile",
            &pid_s,
        ],
    )
    .map_err(|e| format!("start qemu: {e}"))?;
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .ok_or_else(|| format!("qemu wrote no pid to {pidfile:?}"))?;
    let guard = Qemu(Process::of(pid));
    let done = match &guard.0 {
        Some(p) => p.wait_exit(limit.saturating_sub(started.elapsed())),
        None => true,
    };
    drop(guard);
    let text = std::fs::read(&log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if !done {
        return Err(format!(
            "the VM did not finish within {limit:?}; qemu was killed. Serial log:\n{text}"
        ));
    }
    Ok(text)
}

/// What the guest's test run reported.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestResult {
    Passed { tests: usize },
    Failed(String),
}

/// Reads the payload's exit status and libtest's summary from the serial log.
pub fn parse_guest_log(log: &str) -> GuestResult {
    let exit = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("BERTH-VM-EXIT "))
        .and_then(|s| s.trim().parse::<i32>().ok());
    let count = |prefix: &str| -> usize {
        log.lines()
            .filter_map(|l| l.trim().strip_prefix(prefix))
            .filter_map(|r| r.split_whitespace().next()?.parse::<usize>().ok())
            .sum()
    };
    let (planned, passed) = (count("running "), count("test result: ok. "));
    match exit {
        None => GuestResult::Failed("the payload never finished".to_owned()),
        Some(0) if passed > 0 && passed == planned => GuestResult::Passed { tests: passed },
        Some(0) if passed > 0 => GuestResult::Failed(format!(
            "{passed} of the {planned} planned tests passed in the VM"
        )),
        Some(0) => {
            GuestResult::Failed("no test ran in the VM (filter matched nothing?)".to_owned())
        }
        Some(n) => GuestResult::Failed(format!("the payload exited with status {n}")),
    }
}

/// qemu processes whose command line mentions `dir`.
fn qemus_under(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    berth_bdev::process::pids()
        .into_iter()
        .filter(|pid| {
            berth_bdev::process::cmdline(*pid).is_some_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            }) && Process::of(*pid).is_some()
        })
        .collect()
}

/// Runs this test binary's ignored tests matching `filter` inside the VM, one at
/// a time, and panics with the guest's log unless exactly `expected` tests ran
/// and all passed. Under CI a VM that cannot be built is a failure; elsewhere it
/// is a skip.
pub fn run_in_vm(exe: &Path, args: &[&str], limit: Duration) {
    run_in_vm_with(exe, args, limit, &GuestConfig::default());
}

/// [`run_in_vm`] in a guest booted as `cfg` says.
pub fn run_in_vm_with(exe: &Path, args: &[&str], limit: Duration, cfg: &GuestConfig) {
    let started = Instant::now();
    let a = match assets() {
        Ok(a) => a,
        Err(e) => {
            crate::harness::skip(&format!("cannot build the test VM: {e}"));
            return;
        }
    };
    let prepared = started.elapsed();
    let work = match tempfile::Builder::new()
        .prefix("berth-vm-")
        .tempdir_in("/var/tmp")
    {
        Ok(t) => t,
        Err(e) => panic!("temp dir: {e}"),
    };
    let initrd = work.path().join("initrd.cpio");
    if let Err(e) = initramfs_with(&a, exe, args, &initrd, cfg) {
        panic!("build the initramfs: {e}");
    }
    let booted = boot_with(
        &a,
        &initrd,
        work.path(),
        limit.saturating_sub(started.elapsed()),
        cfg,
    );
    let left = qemus_under(work.path());
    assert!(left.is_empty(), "qemu outlived the test: pids {left:?}");
    let log = match booted {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    // Kept for reading after the test (the panic message holds it too).
    if let Ok(t) = target_dir() {
        let _ = std::fs::write(t.join("berth-vm").join("last-serial.log"), &log);
    }
    match parse_guest_log(&log) {
        GuestResult::Passed { tests } => eprintln!(
            "VM: {tests} tests passed in the guest (assets {:.1}s, total {:.1}s)",
            prepared.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
        GuestResult::Failed(why) => panic!("{why}; serial log:\n{log}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_log_verdicts() {
        let ok = "running 3 tests\ntest result: ok. 3 passed; 0 failed\nBERTH-VM-EXIT 0\n";
        assert_eq!(parse_guest_log(ok), GuestResult::Passed { tests: 3 });
        let short = "running 4 tests\ntest result: ok. 3 passed; 0 failed\nBERTH-VM-EXIT 0\n";
        assert!(matches!(parse_guest_log(short), GuestResult::Failed(_)));
        let none = "test result: ok. 0 passed; 0 failed\nBERTH-VM-EXIT 0\n";
        assert!(matches!(parse_guest_log(none), GuestResult::Failed(_)));
        let bad = "test result: FAILED. 1 passed; 1 failed\nBERTH-VM-EXIT 101\n";
        assert!(matches!(parse_guest_log(bad), GuestResult::Failed(_)));
        assert!(matches!(
            parse_guest_log("Kernel panic"),
            GuestResult::Failed(_)
        ));
    }
}
