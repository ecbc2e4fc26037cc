//! Privileged: berth's seccomp filters on the real kernel. A forked child
//! sets no_new_privs, loads a filter compiled in the parent and makes the
//! calls it must deny or allow, writing each result (a return value or a
//! negative errno) to a pipe; the parent names the check that differs. A
//! control child runs the same calls without a filter, so a check passes
//! only if the filter changed the result.
//!
//! The child of a multi-threaded test process may not allocate: it only
//! makes raw syscalls, writes to the pipe and `_exit`s.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use berth_runtime::seccomp::{set_no_new_privs, BpfProgram, SeccompChoice, SeccompProfile};
use berth_runtime::DEFAULT_CAPS;
use berth_tests::harness::skip;
use rustix::process::{Pid, WaitOptions};
use rustix::thread::CapabilitySet;

const EPERM: i64 = -(libc::EPERM as i64);
const ENOSYS: i64 = -(libc::ENOSYS as i64);
/// The most results one child reports.
const MAX: usize = 32;

/// A raw syscall: its return value, or minus errno.
fn sys(nr: libc::c_long, a: [usize; 5]) -> i64 {
    // SAFETY: every caller passes integers, NULL, or pointers to memory it
    // owns for the call's duration. The calls either fail or change only
    // the calling (forked, single-threaded) child's own state.
    let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) };
    if ret == -1 {
        -i64::from(nix::errno::Errno::last_raw())
    } else {
        ret
    }
}

type Probe = fn() -> i64;

/// A call and what it must give under the filter.
struct Check {
    name: &'static str,
    probe: Probe,
    /// `Some(-errno)`, or `None`: success (a return value ≥ 0).
    want: Option<i64>,
}

const NOWHERE: &std::ffi::CStr = c"/nonexistent-berth-seccomp";

/// The default profile's checks. Calls that change the child's own state
/// without a filter (unshare, personality) come last, so the control run's
/// other results are unaffected.
const DEFAULT_CHECKS: &[Check] = &[
    Check {
        name: "getpid",
        probe: || sys(libc::SYS_getpid, [0; 5]),
        want: None,
    },
    Check {
        name: "keyctl(KEYCTL_GET_KEYRING_ID)",
        probe: || sys(libc::SYS_keyctl, [0, (-3isize) as usize, 0, 0, 0]),
        want: Some(EPERM),
    },
    Check {
        name: "mount(tmpfs)",
        probe: || {
            let target = NOWHERE.as_ptr() as usize;
            let fstype = c"tmpfs".as_ptr() as usize;
            sys(libc::SYS_mount, [fstype, target, fstype, 0, 0])
        },
        want: Some(EPERM),
    },
    Check {
        name: "perf_event_open",
        probe: || sys(libc::SYS_perf_event_open, [0, 0, usize::MAX, usize::MAX, 0]),
        want: Some(EPERM),
    },
    Check {
        name: "userfaultfd",
        probe: || {
            sys(
                libc::SYS_userfaultfd,
                [libc::O_CLOEXEC as usize, 0, 0, 0, 0],
            )
        },
        want: Some(EPERM),
    },
    Check {
        name: "bpf",
        probe: || sys(libc::SYS_bpf, [usize::MAX, 0, 0, 0, 0]),
        want: Some(EPERM),
    },
    Check {
        name: "clone3",
        probe: || sys(libc::SYS_clone3, [0; 5]),
        want: Some(ENOSYS),
    },
    Check {
        name: "clone(CLONE_NEWNS|CLONE_FS)",
        // Invalid without a filter (EINVAL), so it never creates a process.
        probe: || {
            let flags = (libc::CLONE_NEWNS | libc::CLONE_FS) as usize;
            sys(libc::SYS_clone, [flags, 0, 0, 0, 0])
        },
        want: Some(EPERM),
    },
    Check {
        name: "setns",
        probe: || sys(libc::SYS_setns, [usize::MAX, 0, 0, 0, 0]),
        want: Some(EPERM),
    },
    Check {
        name: "clock_settime",
        probe: || sys(libc::SYS_clock_settime, [0; 5]),
        want: Some(EPERM),
    },
    Check {
        name: "ioctl(TIOCSTI)",
        probe: || sys(libc::SYS_ioctl, [usize::MAX, 0x5412, 0, 0, 0]),
        want: Some(EPERM),
    },
    Check {
        name: "ioctl(TIOCLINUX)",
        probe: || sys(libc::SYS_ioctl, [usize::MAX, 0x541c, 0, 0, 0]),
        want: Some(EPERM),
    },
    Check {
        name: "ioctl(TCGETS) on a bad fd",
        probe: || sys(libc::SYS_ioctl, [usize::MAX, 0x5401, 0, 0, 0]),
        want: Some(-(libc::EBADF as i64)),
    },
    Check {
        name: "socket(AF_VSOCK)",
        probe: || sys(libc::SYS_socket, [40, libc::SOCK_STREAM as usize, 0, 0, 0]),
        want: Some(EPERM),
    },
    Check {
        name: "socket(AF_UNIX)",
        probe: || sys(libc::SYS_socket, [1, libc::SOCK_STREAM as usize, 0, 0, 0]),
        want: None,
    },
    Check {
        name: "personality(0xffffffff)",
        probe: || sys(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0]),
        want: None,
    },
    Check {
        name: "personality(READ_IMPLIES_EXEC)",
        probe: || sys(libc::SYS_personality, [0x040_0000, 0, 0, 0, 0]),
        want: Some(EPERM),
    },
    Check {
        name: "unshare(CLONE_NEWUSER)",
        probe: || {
            sys(
                libc::SYS_unshare,
                [libc::CLONE_NEWUSER as usize, 0, 0, 0, 0],
            )
        },
        want: Some(EPERM),
    },
];

/// keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) through the
/// 32-bit `int 0x80` entry (i386 syscall 288).
#[cfg(target_arch = "x86_64")]
fn keyctl_int80() -> i64 {
    let mut eax: u32 = 288;
    // SAFETY: `int 0x80` enters the kernel's i386 ABI with the number in eax
    // and the arguments in ebx, ecx, edx; keyctl reads no memory with these
    // arguments. rbx is reserved by the compiler, so it is swapped with a
    // scratch register holding the argument and swapped back. The kernel
    // preserves all other registers except r8-r11, declared clobbered, and
    // does not touch the user stack.
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "int 0x80",
            "xchg {b}, rbx",
            b = inout(reg) 0u64 => _,
            inout("eax") eax,
            in("ecx") 0xffff_fffd_u32,
            in("edx") 0u32,
            lateout("r8") _,
            lateout("r9") _,
            lateout("r10") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    i64::from(eax as i32)
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Root (the control run must not fail for lack of privilege) and a kernel
/// with seccomp filters; `false` after a skip.
fn prerequisites() -> bool {
    if !is_root() {
        skip("seccomp tests need root (the unfiltered control calls)");
        return false;
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.contains("Seccomp:") {
        skip("seccomp tests need a kernel with CONFIG_SECCOMP_FILTER");
        return false;
    }
    true
}

/// How the child ended.
#[derive(Debug)]
enum Child {
    Results(Vec<i64>),
    /// Exit code: 10 set_no_new_privs failed, 11 loading the filter failed.
    Exited(i32),
    Signaled(i32),
}

/// Runs `probes` in a forked child, under `prog` if given.
fn in_child(prog: Option<&BpfProgram>, probes: &[Probe]) -> Child {
    assert!(probes.len() <= MAX);
    let (rd, wr) = rustix::pipe::pipe().expect("pipe");
    // SAFETY: the child of a multi-threaded process may only make
    // async-signal-safe calls: `child` makes raw syscalls (prctl, seccomp,
    // the probes, write) and `_exit`s without allocating, locking, unwinding
    // or returning into the test harness.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(rd);
        child(prog, probes, wr);
    }
    assert!(pid > 0, "fork failed");
    drop(wr);
    let mut bytes = Vec::new();
    let mut buf = [0u8; MAX * 8];
    loop {
        match rustix::io::read(&rd, &mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("read results: {e}"),
        }
    }
    let pid = Pid::from_raw(pid).expect("child pid");
    let (_, status) = rustix::process::waitpid(Some(pid), WaitOptions::empty())
        .expect("waitpid")
        .expect("child status");
    if let Some(sig) = status.terminating_signal() {
        return Child::Signaled(sig);
    }
    match status.exit_status() {
        Some(0) => Child::Results(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        Some(code) => Child::Exited(code),
        None => panic!("child neither exited nor was killed: {status:?}"),
    }
}

fn child(prog: Option<&BpfProgram>, probes: &[Probe], wr: OwnedFd) -> ! {
    let code = match prog {
        Some(_) if set_no_new_privs().is_err() => 10,
        Some(p) if p.load().is_err() => 11,
        _ => {
            let mut out = [0u8; MAX * 8];
            for (i, probe) in probes.iter().enumerate() {
                out[i * 8..i * 8 + 8].copy_from_slice(&probe().to_ne_bytes());
            }
            match rustix::io::write(&wr, &out[..probes.len() * 8]) {
                Ok(n) if n == probes.len() * 8 => 0,
                _ => 12,
            }
        }
    };
    // SAFETY: _exit(2) ends the forked child without running the parent's
    // atexit handlers or destructors.
    unsafe { libc::_exit(code) }
}

fn results(child: Child) -> Vec<i64> {
    match child {
        Child::Results(r) => r,
        Child::Exited(10) => panic!("child: set_no_new_privs failed"),
        Child::Exited(11) => panic!("child: loading the filter failed"),
        Child::Exited(code) => panic!("child exited with {code}"),
        Child::Signaled(sig) => panic!("child killed by signal {sig}"),
    }
}

/// Runs `checks` with and without `prog`. Every check must give its wanted
/// result under the filter; a wanted errno must differ without it (else the
/// check proves nothing here) unless the check is in `same_either_way`.
fn assert_checks(prog: &BpfProgram, checks: &[Check], same_either_way: &[&str]) {
    let probes: Vec<Probe> = checks.iter().map(|c| c.probe).collect();
    let filtered = results(in_child(Some(prog), &probes));
    let control = results(in_child(None, &probes));
    let mut failures = Vec::new();
    for ((check, got), bare) in checks.iter().zip(&filtered).zip(&control) {
        let ok = match check.want {
            Some(want) => *got == want,
            None => *got >= 0,
        };
        if !ok {
            failures.push(format!("{}: got {got}, want {:?}", check.name, check.want));
        } else if check.want.is_some_and(|w| w == *bare) && !same_either_way.contains(&check.name) {
            failures.push(format!(
                "{}: gives {bare} without the filter too",
                check.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn default_profile_denies_escapes_and_allows_the_rest() {
    if !prerequisites() {
        return;
    }
    let caps = DEFAULT_CAPS.difference(CapabilitySet::MKNOD);
    let prog = SeccompProfile::default_profile()
        .expect("default profile")
        .compile(caps)
        .expect("compile default profile");
    // Allowed calls and the bad-fd ioctl give the same result either way.
    let same = ["ioctl(TCGETS) on a bad fd"];
    assert_checks(&prog, DEFAULT_CHECKS, &same);
}

#[test]
fn default_filter_covers_the_32_bit_abi() {
    if !prerequisites() {
        return;
    }
    let prog = SeccompChoice::Default
        .program(DEFAULT_CAPS)
        .expect("compile default profile")
        .expect("a filter");
    const JEQ_K: u16 = 0x15;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let compares = |k| {
        prog.instructions()
            .iter()
            .any(|i| i.code == JEQ_K && i.k == k)
    };
    assert!(compares(AUDIT_ARCH_X86_64) || !cfg!(target_arch = "x86_64"));
    assert!(compares(AUDIT_ARCH_I386) || !cfg!(target_arch = "x86_64"));

    #[cfg(target_arch = "x86_64")]
    {
        match in_child(None, &[keyctl_int80]) {
            Child::Signaled(sig) if sig == libc::SIGSEGV => {
                eprintln!("NOT APPLICABLE: this kernel has no int 0x80 (IA32 emulation) ABI");
                return;
            }
            Child::Results(r) => assert_ne!(r[0], EPERM, "int 0x80 keyctl without a filter"),
            other => panic!("control child: {other:?}"),
        }
        let r = results(in_child(Some(&prog), &[keyctl_int80]));
        assert_eq!(r[0], EPERM, "int 0x80 keyctl under the default filter");
    }
}

#[test]
fn user_profile_denying_getcwd_takes_effect() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no-getcwd.json");
    fs::write(
        &path,
        r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "comment": "Docker format; unknown fields are ignored",
            "syscalls": [
                {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]
        }"#,
    )
    .expect("write profile");
    let choice: SeccompChoice = path.to_str().expect("utf-8 path").parse().expect("choice");
    let prog = choice
        .program(DEFAULT_CAPS)
        .expect("compile user profile")
        .expect("a filter");
    let checks = [
        Check {
            name: "getcwd",
            probe: || {
                let mut buf = [0u8; 256];
                sys(
                    libc::SYS_getcwd,
                    [buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
                )
            },
            want: Some(EPERM),
        },
        Check {
            name: "getpid",
            probe: || sys(libc::SYS_getpid, [0; 5]),
            want: None,
        },
    ];
    assert_checks(&prog, &checks, &[]);
}

#[test]
fn unconfined_has_no_filter() {
    assert!(SeccompChoice::Unconfined
        .program(CapabilitySet::all())
        .expect("unconfined")
        .is_none());
}
