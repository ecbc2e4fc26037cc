//! The escape probes of `berth-probe all`, grouped as the container's defences
//! are: what it sees, what it may write, devices, mounts and namespaces, the
//! capability- and seccomp-gated calls (in `gated.rs`), its own credentials and
//! its terminal.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sched::CloneFlags;

use crate::{check, gated, in_child, os, say, Verdict};
use Verdict::{Allowed, Denied, Skipped};

/// Nodes the test puts into the rootfs from the host, so that the device
/// policy is tested on its own (CAP_MKNOD is dropped too).
const HOST_MADE_NODES: [(&str, &str); 2] = [
    ("devnode-block", "/berth-probe-dev/loop0"),
    ("devnode-char", "/berth-probe-dev/loop-control"),
];

/// A probe's name and the probe.
type Probe<'a> = (&'static str, Box<dyn FnOnce() -> Verdict + 'a>);

pub fn all(host_pid: Option<i32>) -> ExitCode {
    // First, before this process opens anything itself.
    let fds = leaked_fds();
    let info = [
        ("pid", std::process::id().to_string()),
        (
            "pidns",
            fs::read_link("/proc/self/ns/pid").map_or_else(|e| os(&e), |l| l.display().to_string()),
        ),
    ];
    for (k, v) in info {
        println!("INFO {k} {v}");
    }
    let scratch = scratch_dir();
    let probes: Vec<Probe<'_>> = vec![
        ("leaked-fds", Box::new(|| fds)),
        // What it sees.
        ("host-pids", Box::new(host_pids)),
        ("ptrace-host", Box::new(|| ptrace_host(host_pid))),
        ("cgroupns", Box::new(cgroupns)),
        ("host-net", Box::new(host_net)),
        ("kcore-read", Box::new(|| read_some("/proc/kcore"))),
        ("keys-read", Box::new(|| read_some("/proc/keys"))),
        (
            "timer-list-read",
            Box::new(|| read_some("/proc/timer_list")),
        ),
        (
            "sched-debug-read",
            Box::new(|| read_some("/proc/sched_debug")),
        ),
        ("kallsyms", Box::new(kallsyms)),
        ("sys-firmware-list", Box::new(|| list("/sys/firmware"))),
        ("proc-acpi-list", Box::new(|| list("/proc/acpi"))),
        ("proc-scsi-list", Box::new(|| list("/proc/scsi"))),
        // What it may write.
        (
            "core-pattern-write",
            Box::new(|| open_write("/proc/sys/kernel/core_pattern")),
        ),
        (
            "sysrq-trigger-write",
            Box::new(|| open_write("/proc/sysrq-trigger")),
        ),
        (
            "proc-irq-write",
            Box::new(|| open_write("/proc/irq/default_smp_affinity")),
        ),
        (
            "sysfs-write",
            Box::new(|| open_write("/sys/kernel/mm/transparent_hugepage/enabled")),
        ),
        ("proc-sys-ro", Box::new(|| read_only("/proc/sys"))),
        ("proc-irq-ro", Box::new(|| read_only("/proc/irq"))),
        ("proc-bus-ro", Box::new(|| read_only("/proc/bus"))),
        ("proc-fs-ro", Box::new(|| read_only("/proc/fs"))),
        ("sysfs-ro", Box::new(|| read_only("/sys"))),
        // Devices.
        ("mknod-block", Box::new(|| mknod_block(&scratch))),
        (
            HOST_MADE_NODES[0].0,
            Box::new(|| open_node(HOST_MADE_NODES[0].1)),
        ),
        (
            HOST_MADE_NODES[1].0,
            Box::new(|| open_node(HOST_MADE_NODES[1].1)),
        ),
        ("dev-mem-open", Box::new(|| open_read("/dev/mem"))),
        ("dev-kmsg-open", Box::new(|| open_read("/dev/kmsg"))),
        // Mounts and namespaces.
        ("mount-tmpfs", Box::new(|| mount_tmpfs(&scratch))),
        ("fsopen", Box::new(gated::fsopen)),
        ("umount-proc", Box::new(umount_proc)),
        (
            "unshare-user",
            Box::new(|| in_child(|| unshare(CloneFlags::CLONE_NEWUSER))),
        ),
        (
            "userns-mount",
            Box::new(|| in_child(|| userns_mount(&scratch))),
        ),
        (
            "unshare-mnt",
            Box::new(|| in_child(|| unshare(CloneFlags::CLONE_NEWNS))),
        ),
        ("clone-newuser", Box::new(clone_newuser)),
        ("clone3", Box::new(gated::clone3)),
        ("setns", Box::new(gated::setns)),
        ("chroot-escape", Box::new(|| chroot_escape(&scratch))),
        // Capability- and seccomp-gated calls.
        ("keyctl", Box::new(gated::keyctl)),
        ("add-key", Box::new(gated::add_key)),
        ("request-key", Box::new(gated::request_key)),
        ("bpf", Box::new(gated::bpf)),
        ("userfaultfd", Box::new(gated::userfaultfd)),
        ("perf-event-open", Box::new(gated::perf_event_open)),
        ("name-to-handle", Box::new(gated::name_to_handle)),
        ("open-by-handle", Box::new(gated::open_by_handle)),
        ("packet-socket", Box::new(gated::packet_socket)),
        ("reboot", Box::new(gated::reboot)),
        ("kexec-load", Box::new(gated::kexec_load)),
        ("init-module", Box::new(gated::init_module)),
        ("delete-module", Box::new(gated::delete_module)),
        ("swapon", Box::new(gated::swapon)),
        ("set-clock", Box::new(gated::set_clock)),
        ("iopl", Box::new(gated::iopl)),
        ("personality", Box::new(gated::personality)),
        // Its own state.
        (
            "seccomp",
            Box::new(|| status_field("Seccomp", |v| v == "2", "filter mode")),
        ),
        (
            "no-new-privs",
            Box::new(|| status_field("NoNewPrivs", |v| v == "1", "set")),
        ),
        ("cap-sys-admin", Box::new(|| cap(21))),
        ("cap-sys-module", Box::new(|| cap(16))),
        ("cap-sys-ptrace", Box::new(|| cap(19))),
        ("cap-mknod", Box::new(|| cap(27))),
        ("cap-net-raw", Box::new(|| cap(13))),
        ("tiocsti", Box::new(tiocsti)),
    ];
    let count = probes.len();
    for (name, probe) in probes {
        say(name, &probe());
    }
    let _ = fs::remove_dir_all(&scratch);
    println!("DONE {count}");
    ExitCode::SUCCESS
}

/// Where probes make nodes and mount points: the container's own /dev tmpfs
/// (writable even when the rootfs is mounted read-only), else /tmp.
fn scratch_dir() -> PathBuf {
    for d in ["/dev/.berth-probe", "/tmp/.berth-probe"] {
        if fs::create_dir_all(d).is_ok() {
            return PathBuf::from(d);
        }
    }
    PathBuf::from("/tmp")
}

/// Descriptors besides 0, 1 and 2 that the container inherited: a host
/// directory or file left open is a way out (runc's CVE-2024-21626).
fn leaked_fds() -> Verdict {
    let fds: Vec<i32> = match fs::read_dir("/proc/self/fd") {
        Ok(d) => d
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => return Skipped(format!("/proc/self/fd: {}", os(&e))),
    };
    // The listing's own descriptor is closed by now.
    let open: Vec<String> = fds
        .into_iter()
        .filter(|&fd| fd > 2 && check(libc::c_long::from(fcntl_getfd(fd))).is_ok())
        .map(|fd| {
            let to = fs::read_link(format!("/proc/self/fd/{fd}"));
            format!(
                "{fd}->{}",
                to.map_or_else(|e| os(&e), |p| p.display().to_string())
            )
        })
        .collect();
    if open.is_empty() {
        Denied("only 0, 1 and 2 are open".to_owned())
    } else {
        Allowed(open.join(","))
    }
}

fn fcntl_getfd(fd: i32) -> i32 {
    // SAFETY: F_GETFD only reads the descriptor's flags; a closed fd gives EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) }
}

/// The host's processes must be invisible: the container has a handful.
fn host_pids() -> Verdict {
    let pids = fs::read_dir("/proc").map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count()
    });
    let me = std::process::id();
    if pids > 50 || me > 1000 {
        Allowed(format!("{pids} pids visible, mine is {me}"))
    } else {
        Denied(format!("{pids} pids visible, mine is {me}"))
    }
}

/// PTRACE_SEIZE rather than ATTACH: the same permission checks, but it never
/// stops the target, and the probe's exit releases it.
fn ptrace_host(pid: Option<i32>) -> Verdict {
    let Some(pid) = pid else {
        return Skipped("no --host-pid given".to_owned());
    };
    // SAFETY: PTRACE_SEIZE takes no pointers (addr and data are 0).
    let r = check(unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_SEIZE, pid, 0, 0) });
    match r {
        Ok(_) => Allowed(format!("seized host pid {pid}")),
        Err(e) => Denied(format!("{e:?}")),
    }
}

/// In a cgroup namespace every path in /proc/self/cgroup is `/`.
fn cgroupns() -> Verdict {
    match fs::read_to_string("/proc/self/cgroup") {
        Err(e) => Denied(os(&e)),
        Ok(s) => match s.lines().find(|l| !l.ends_with(":/")) {
            Some(l) => Allowed(format!("host cgroup path visible: {l}")),
            None => Denied("every cgroup path is /".to_owned()),
        },
    }
}

/// Interfaces other than lo are the host's (or a shared network).
fn host_net() -> Verdict {
    match fs::read_dir("/sys/class/net") {
        Err(e) => Denied(os(&e)),
        Ok(d) => {
            let others: Vec<String> = d
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "lo")
                .collect();
            if others.is_empty() {
                Denied("only lo".to_owned())
            } else {
                Allowed(others.join(","))
            }
        }
    }
}

/// Content is an allowed read; an error or nothing (masked by /dev/null) a denial.
fn read_some(path: &str) -> Verdict {
    let mut buf = [0u8; 256];
    match File::open(path).and_then(|mut f| f.read(&mut buf)) {
        Err(e) => Denied(os(&e)),
        Ok(0) => Denied("empty".to_owned()),
        Ok(n) => Allowed(format!("read {n} bytes")),
    }
}

/// Real kernel addresses: the first text symbol's address is not zero.
fn kallsyms() -> Verdict {
    let text = match fs::read_to_string("/proc/kallsyms") {
        Ok(t) => t,
        Err(e) => return Denied(os(&e)),
    };
    let first_text = text.lines().find(|l| {
        let mut f = l.split_whitespace();
        matches!(f.nth(1), Some("T" | "t"))
    });
    match first_text {
        None => Denied("no text symbols".to_owned()),
        Some(l)
            if l.split_whitespace()
                .next()
                .is_some_and(|a| a.bytes().all(|b| b == b'0')) =>
        {
            Denied("addresses are zeroed".to_owned())
        }
        Some(l) => Allowed(format!("address shown: {l}")),
    }
}

fn list(path: &str) -> Verdict {
    match fs::read_dir(path) {
        Err(e) => Denied(os(&e)),
        Ok(d) => {
            let names: Vec<String> = d
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            if names.is_empty() {
                Denied("empty".to_owned())
            } else {
                Allowed(format!("{} entries: {}", names.len(), names.join(",")))
            }
        }
    }
}

/// Opened for writing, never written. /dev/null bound over the file (masking)
/// counts as denied.
fn open_write(path: &str) -> Verdict {
    match OpenOptions::new().write(true).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Denied("absent ENOENT".to_owned()),
        Err(e) => Denied(os(&e)),
        Ok(f) => match masked(&f) {
            Some(why) => Denied(why),
            None => Allowed("opened for writing (nothing written)".to_owned()),
        },
    }
}

fn open_read(path: &str) -> Verdict {
    match File::open(path) {
        Err(e) => Denied(os(&e)),
        Ok(f) => match masked(&f) {
            Some(why) => Denied(why),
            None => Allowed("opened".to_owned()),
        },
    }
}

fn masked(f: &File) -> Option<String> {
    let m = f.metadata().ok()?;
    let null = libc::makedev(1, 3);
    (m.file_type().is_char_device() && m.rdev() == null).then(|| "masked by /dev/null".to_owned())
}

/// Whether the mount holding `path` is read-only (absent counts as denied).
fn read_only(path: &str) -> Verdict {
    match rustix::fs::statvfs(path) {
        Err(e) => Denied(format!("{:?}", Errno::from_raw(e.raw_os_error()))),
        Ok(s) if s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) => {
            Denied("read-only mount".to_owned())
        }
        Ok(_) => Allowed("writable mount".to_owned()),
    }
}

/// A block node for the host's loop0: CAP_MKNOD must be gone, and the device
/// policy must refuse the open even if it were not.
fn mknod_block(scratch: &Path) -> Verdict {
    let node = scratch.join("loop0");
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        &node,
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(7, 0),
    );
    let v = match made {
        Err(e) => Denied(format!("mknod {:?}", Errno::from_raw(e.raw_os_error()))),
        Ok(()) => match File::open(&node) {
            Err(e) => Denied(format!("mknod ok, open {}", os(&e))),
            Ok(_) => Allowed("made and opened a node for loop0".to_owned()),
        },
    };
    let _ = fs::remove_file(&node);
    v
}

fn open_node(path: &str) -> Verdict {
    match File::open(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            Skipped("the test made no such node".to_owned())
        }
        Err(e) => Denied(os(&e)),
        Ok(_) => Allowed("opened".to_owned()),
    }
}

fn mount_tmpfs(scratch: &Path) -> Verdict {
    let at = scratch.join("mnt");
    let _ = fs::create_dir_all(&at);
    let r = nix::mount::mount(
        Some("tmpfs"),
        &at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    );
    match r {
        Err(e) => Denied(format!("{e:?}")),
        Ok(()) => {
            let _ = nix::mount::umount(&at);
            Allowed("mounted a tmpfs (unmounted again)".to_owned())
        }
    }
}

/// MNT_EXPIRE passes the permission checks, then only marks /proc as expired
/// (EAGAIN) instead of unmounting it.
fn umount_proc() -> Verdict {
    match nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_EXPIRE) {
        Err(e @ (Errno::EPERM | Errno::EACCES)) => Denied(format!("{e:?}")),
        Err(e) => Allowed(format!("reached the kernel ({e:?})")),
        Ok(()) => Allowed("unmounted /proc".to_owned()),
    }
}

fn unshare(flags: CloneFlags) -> Verdict {
    match nix::sched::unshare(flags) {
        Err(e) => Denied(format!("{e:?}")),
        Ok(()) => Allowed("unshared".to_owned()),
    }
}

/// A new user namespace gives back every capability over its own mounts.
fn userns_mount(scratch: &Path) -> Verdict {
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
        return Denied(format!("unshare {e:?}"));
    }
    let at = scratch.join("userns-mnt");
    let _ = fs::create_dir_all(&at);
    match nix::mount::mount(
        Some("tmpfs"),
        &at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        Err(e) => Allowed(format!(
            "unshared a user namespace (mount then failed: {e:?})"
        )),
        Ok(()) => Allowed("mounted a tmpfs in a new user namespace".to_owned()),
    }
}

fn clone_newuser() -> Verdict {
    let flags = libc::CLONE_NEWUSER | libc::SIGCHLD;
    // SAFETY: without CLONE_VM the child gets a copy of our memory, like fork;
    // it calls only _exit.
    let r = check(unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) });
    match r {
        // SAFETY: in the child: leave at once.
        Ok(0) => unsafe { libc::_exit(0) },
        Ok(pid) => {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(-1));
            let _ = nix::sys::wait::waitpid(pid, None);
            Allowed("a child in a new user namespace".to_owned())
        }
        Err(e) => Denied(format!("{e:?}")),
    }
}

/// The classic chroot breakout (chroot into a subdirectory, climb with `..`,
/// chroot to where we are): after pivot_root and a detached old root it must
/// still end at the container's root.
fn chroot_escape(scratch: &Path) -> Verdict {
    let root = match fs::metadata("/") {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => return Skipped(os(&e)),
    };
    let jail = scratch.join("jail");
    let _ = fs::create_dir_all(&jail);
    in_child(move || {
        if let Err(e) = nix::unistd::chroot(&jail) {
            return Denied(format!("chroot {e:?}"));
        }
        for _ in 0..64 {
            let _ = nix::unistd::chdir("..");
        }
        if let Err(e) = nix::unistd::chroot(".") {
            return Denied(format!("second chroot {e:?}"));
        }
        match fs::metadata("/") {
            Ok(m) if (m.dev(), m.ino()) == root => {
                Denied("stayed in the container's root".to_owned())
            }
            Ok(m) => Allowed(format!(
                "reached another root (dev {} ino {})",
                m.dev(),
                m.ino()
            )),
            Err(e) => Denied(os(&e)),
        }
    })
}

/// A /proc/self/status field: `denied_if` true is a denial.
fn status_field(field: &str, denied_if: impl Fn(&str) -> bool, what: &str) -> Verdict {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim);
    match value {
        None => Skipped(format!("no {field} in /proc/self/status")),
        Some(v) if denied_if(v) => Denied(format!("{field} {v} ({what})")),
        Some(v) => Allowed(format!("{field} {v}")),
    }
}

fn cap(bit: u32) -> Verdict {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match eff {
        None => Skipped("no CapEff in /proc/self/status".to_owned()),
        Some(e) if e & (1 << bit) != 0 => Allowed(format!("in CapEff {e:016x}")),
        Some(e) => Denied(format!("not in CapEff {e:016x}")),
    }
}

/// TIOCSTI pushes input into a terminal as if typed: into the host's shell if
/// the container can reach the host's terminal as its controlling tty.
pub fn tiocsti() -> Verdict {
    // SAFETY: isatty and tcgetsid only query fd 0.
    let (tty, sid) = unsafe { (libc::isatty(0) == 1, libc::tcgetsid(0)) };
    if !tty {
        return Skipped("not-a-tty".to_owned());
    }
    let ctty = if sid == -1 {
        "not our controlling tty"
    } else {
        "our controlling tty"
    };
    let byte = b'x';
    // SAFETY: TIOCSTI reads one byte from a live variable.
    let r = check(libc::c_long::from(unsafe {
        libc::ioctl(0, libc::TIOCSTI, &byte as *const u8)
    }));
    match r {
        Ok(_) => Allowed(format!("pushed 'x' into fd 0 ({ctty})")),
        Err(e) => Denied(format!("{e:?} ({ctty})")),
    }
}
