//! Child side of seccomp: no_new_privs and loading a compiled filter. Both
//! run between clone and exec in a copy of a possibly multi-threaded process,
//! so they are single syscalls that allocate nothing and take no locks.

use rustix::io::Errno;

use crate::seccomp::{BpfProgram, SockFilter};

/// prctl(PR_SET_NO_NEW_PRIVS, 1): execve can no longer grant privileges
/// (setuid bits, file caps), which lets an unprivileged thread load a filter.
pub(crate) fn set_no_new_privs() -> Result<(), Errno> {
    rustix::thread::set_no_new_privs(true)
}

/// seccomp(SECCOMP_SET_MODE_FILTER, 0, prog) on the calling thread. No TSYNC:
/// the container process is single-threaded here.
pub(crate) fn load_filter(prog: &BpfProgram) -> Result<(), Errno> {
    let insns: &[SockFilter] = prog.instructions();
    let len = libc::c_ushort::try_from(insns.len()).map_err(|_| Errno::INVAL)?;
    let fprog = libc::sock_fprog {
        len,
        filter: insns.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    let flags: libc::c_uint = 0;
    // SAFETY: `fprog` lives on this stack frame for the whole call and points
    // at `len` instructions borrowed from `prog`, which outlives the call.
    // `SockFilter` is #[repr(C)] with the fields, sizes and alignment of
    // `struct sock_filter` (asserted at compile time in seccomp/compile.rs).
    // The kernel only reads the program (it copies it), so the `*mut` from a
    // shared borrow is never written through.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(nix::errno::Errno::last_raw()))
    }
}
