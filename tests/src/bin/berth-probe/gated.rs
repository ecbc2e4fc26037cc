//! Calls that a dropped capability or the seccomp filter must stop, each
//! given arguments the kernel rejects only after its permission checks, so
//! that even where a call is allowed it changes nothing (see [`crate::gate`]).

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sched::CloneFlags;

use crate::{check, gate, gate_fd, os, Verdict};
use Verdict::{Allowed, Denied, Skipped};

pub fn keyctl() -> Verdict {
    let (op, ring) = (libc::KEYCTL_GET_KEYRING_ID, libc::KEY_SPEC_USER_KEYRING);
    // SAFETY: GET_KEYRING_ID takes two integers and no pointers.
    gate(check(unsafe {
        libc::syscall(libc::SYS_keyctl, op, ring, 0)
    }))
}

/// A type no kernel knows and keyring 0: refused after the syscall got through.
pub fn add_key() -> Verdict {
    let (ty, desc) = (c"berth-probe-no-such-type", c"berth-probe");
    // SAFETY: two NUL-terminated strings, no payload (NULL, length 0).
    gate(check(unsafe {
        libc::syscall(
            libc::SYS_add_key,
            ty.as_ptr(),
            desc.as_ptr(),
            std::ptr::null::<u8>(),
            0,
            0,
        )
    }))
}

pub fn request_key() -> Verdict {
    let (ty, desc) = (c"berth-probe-no-such-type", c"berth-probe");
    // SAFETY: two NUL-terminated strings, no callout info (NULL), keyring 0.
    gate(check(unsafe {
        libc::syscall(
            libc::SYS_request_key,
            ty.as_ptr(),
            desc.as_ptr(),
            std::ptr::null::<u8>(),
            0,
        )
    }))
}

/// BPF_MAP_CREATE of map type 0 (unspecified): EINVAL once permitted.
pub fn bpf() -> Verdict {
    let attr = [0u8; 128];
    // SAFETY: the kernel reads at most attr.len() bytes from a live buffer.
    gate_fd(check(unsafe {
        libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len())
    }))
}

pub fn userfaultfd() -> Verdict {
    // SAFETY: takes a flags word only.
    gate_fd(check(unsafe {
        libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK)
    }))
}

/// `perf_event_attr` up to PERF_ATTR_SIZE_VER0 (64 bytes).
#[repr(C)]
struct PerfAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    bp_addr: u64,
}

/// A software clock counting this process in user space only, which
/// perf_event_paranoid 2 allows everyone: only the filter stops it.
pub fn perf_event_open() -> Verdict {
    let attr = PerfAttr {
        kind: 1, // PERF_TYPE_SOFTWARE
        size: 64,
        config: 0, // PERF_COUNT_SW_CPU_CLOCK
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        flags: 1 | 1 << 5 | 1 << 6, // disabled, exclude_kernel, exclude_hv
        wakeup_events: 0,
        bp_type: 0,
        bp_addr: 0,
    };
    let (pid, cpu, group, cloexec) = (0, -1, -1, 8);
    // SAFETY: a live, fully initialised attr of the size it declares.
    gate_fd(check(unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfAttr,
            pid,
            cpu,
            group,
            cloexec,
        )
    }))
}

/// `struct file_handle` with room for MAX_HANDLE_SZ bytes.
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; 128],
}

fn handle_of(path: &CStr) -> (Result<libc::c_long, Errno>, Handle) {
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0i32;
    // SAFETY: a NUL-terminated path, a handle buffer of the size it declares
    // and an int for the mount id, all live for the call.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut i32,
            0,
        )
    });
    (r, h)
}

pub fn name_to_handle() -> Verdict {
    gate(handle_of(c"/").0)
}

/// The "shocker" breakout: open_by_handle_at reaches files outside the
/// container's root given a handle. Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle() -> Verdict {
    let (r, mut h) = handle_of(c"/");
    if r.is_err() {
        // A made-up handle: ESTALE once the permission check passed.
        h = Handle {
            bytes: 8,
            kind: 1,
            data: [0; 128],
        };
    }
    let root = match File::open("/") {
        Ok(f) => f,
        Err(e) => return Skipped(os(&e)),
    };
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    // SAFETY: a live descriptor and a handle buffer whose declared size fits it.
    gate_fd(check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            root.as_raw_fd(),
            &h as *const Handle,
            flags,
        )
    }))
}

pub fn packet_socket() -> Verdict {
    let proto = i32::from(u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be());
    // SAFETY: socket takes three integers.
    let r = check(libc::c_long::from(unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
    }));
    match r {
        Err(e) => Denied(format!("{e:?}")),
        Ok(_) => {
            let _ = gate_fd(r);
            Allowed("opened a raw packet socket".to_owned())
        }
    }
}

/// Magic 0: EINVAL once CAP_SYS_BOOT is checked.
pub fn reboot() -> Verdict {
    // SAFETY: integers and a NULL argument, which a bad magic never reads.
    gate(check(unsafe {
        libc::syscall(libc::SYS_reboot, 0, 0, 0, std::ptr::null::<u8>())
    }))
}

/// An unknown flag (0x8000) and too many segments: EINVAL once permitted
/// (zero segments and no flags would unload the loaded kernel instead).
pub fn kexec_load() -> Verdict {
    // SAFETY: the segment pointer is NULL and never read: the flags are rejected first.
    gate(check(unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            0,
            1000,
            std::ptr::null::<u8>(),
            0x8000,
        )
    }))
}

pub fn init_module() -> Verdict {
    let image = [0u8; 0];
    // SAFETY: an empty image (length 0) and a NUL-terminated parameter string.
    gate(check(unsafe {
        libc::syscall(libc::SYS_init_module, image.as_ptr(), 0, c"".as_ptr())
    }))
}

pub fn delete_module() -> Verdict {
    // SAFETY: a NUL-terminated name of a module that does not exist.
    gate(check(unsafe {
        libc::syscall(
            libc::SYS_delete_module,
            c"berth_probe_no_such_module".as_ptr(),
            libc::O_NONBLOCK,
        )
    }))
}

pub fn swapon() -> Verdict {
    // SAFETY: a NUL-terminated path that does not exist (ENOENT once permitted).
    gate(check(unsafe {
        libc::syscall(libc::SYS_swapon, c"/berth-probe-no-such-file".as_ptr(), 0)
    }))
}

/// clock_adjtime with an out-of-range tick: the CAP_SYS_TIME check comes
/// before the range check (EINVAL). (clock_settime with a bad timespec would
/// not tell: it checks the value before the capability.)
pub fn set_clock() -> Verdict {
    // SAFETY: timex is plain integers, for which all-zero is valid.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_TICK;
    tx.tick = 1;
    // SAFETY: a live timex for the call.
    gate(check(libc::c_long::from(unsafe {
        libc::clock_adjtime(libc::CLOCK_REALTIME, &mut tx)
    })))
}

#[cfg(target_arch = "x86_64")]
pub fn iopl() -> Verdict {
    // SAFETY: changes only this process's I/O privilege level; it does no port I/O.
    let r = check(unsafe { libc::syscall(libc::SYS_iopl, 3) });
    if r.is_ok() {
        // SAFETY: as above, back to level 0.
        unsafe { libc::syscall(libc::SYS_iopl, 0) };
    }
    gate(r)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn iopl() -> Verdict {
    Skipped("not x86_64".to_owned())
}

/// READ_IMPLIES_EXEC (0x0400000), outside the filter's few allowed personas.
pub fn personality() -> Verdict {
    // SAFETY: 0xffffffff only queries the current persona.
    let old = unsafe { libc::personality(0xffff_ffff) };
    // SAFETY: changes only this process's execution domain, restored below.
    let r = check(libc::c_long::from(unsafe { libc::personality(0x0400000) }));
    if r.is_ok() {
        // SAFETY: as above, the persona we had.
        unsafe { libc::personality(libc::c_ulong::from(old.unsigned_abs())) };
    }
    gate(r)
}

pub fn fsopen() -> Verdict {
    // SAFETY: a NUL-terminated string and a flags word; fsopen reads only the string.
    gate_fd(check(unsafe {
        libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), 0)
    }))
}

/// clone3 with a NULL argument: EINVAL from the kernel, ENOSYS from the filter
/// (which cannot see clone3's flags, so refuses it so that libc falls back to clone).
pub fn clone3() -> Verdict {
    // SAFETY: size 0 makes the kernel reject the (NULL) argument before reading it.
    gate(check(unsafe {
        libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0)
    }))
}

/// Joining our own user namespace: EINVAL from the kernel, EPERM from the filter.
pub fn setns() -> Verdict {
    match File::open("/proc/self/ns/user") {
        Err(e) => Skipped(os(&e)),
        Ok(f) => gate(nix::sched::setns(&f, CloneFlags::CLONE_NEWUSER).map(|()| 0)),
    }
}
