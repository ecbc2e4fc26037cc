//! Raw bpf(2) calls for cgroup v2 device filters: rustix, nix and libc have no
//! wrappers, and linux-raw-sys has no bpf bindings, so the ABI structs are
//! defined here (`include/uapi/linux/bpf.h`), field for field.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;

/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
pub(crate) const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE`, the attach type of device programs.
pub(crate) const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: programs of parents and children all run; any deny wins.
pub(crate) const F_ALLOW_MULTI: u32 = 2;

const CMD_PROG_LOAD: libc::c_int = 5;
const CMD_PROG_ATTACH: libc::c_int = 8;

/// One eBPF instruction, `struct bpf_insn`: opcode, two 4-bit registers (a C
/// bitfield: dst in the low nibble on little-endian targets), offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl BpfInsn {
    pub(crate) const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
        let regs = if cfg!(target_endian = "little") {
            (src << 4) | (dst & 0x0f)
        } else {
            (dst << 4) | (src & 0x0f)
        };
        BpfInsn {
            code,
            regs,
            off,
            imm,
        }
    }

    #[cfg(test)]
    pub(crate) const fn code(&self) -> u8 {
        self.code
    }

    #[cfg(test)]
    pub(crate) const fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0x0f
        } else {
            self.regs >> 4
        }
    }

    #[cfg(test)]
    pub(crate) const fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0x0f
        }
    }

    #[cfg(test)]
    pub(crate) const fn off(&self) -> i16 {
        self.off
    }

    #[cfg(test)]
    pub(crate) const fn imm(&self) -> i32 {
        self.imm
    }

    #[cfg(test)]
    /// The 8 bytes the kernel reads, in this target's byte order.
    pub(crate) fn to_bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0] = self.code;
        out[1] = self.regs;
        out[2..4].copy_from_slice(&self.off.to_ne_bytes());
        out[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        out
    }
}

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` member of `union bpf_attr`, up to `replace_bpf_fd`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const _: () = assert!(std::mem::size_of::<BpfInsn>() == 8);
const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 72);
const _: () = assert!(std::mem::size_of::<ProgAttachAttr>() == 20);

fn last_errno() -> Errno {
    Errno::from_raw_os_error(nix::errno::Errno::last_raw())
}

/// Loads `insns` as a program of `prog_type`. With `log`, the verifier writes
/// its report there (NUL-terminated); without, it stays silent.
pub(crate) fn prog_load(
    prog_type: u32,
    insns: &[BpfInsn],
    license: &CStr,
    name: &str,
    log: Option<&mut [u8]>,
) -> Result<OwnedFd, Errno> {
    let insn_cnt = u32::try_from(insns.len()).map_err(|_| Errno::TOOBIG)?;
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (
            1,
            u32::try_from(buf.len()).map_err(|_| Errno::TOOBIG)?,
            buf.as_mut_ptr() as u64,
        ),
        None => (0, 0, 0),
    };
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    // SAFETY: `attr` is a fully initialised `union bpf_attr` prefix whose size
    // we pass; the kernel zero-extends the rest. The pointers in it (insns,
    // license, log_buf with its length) refer to memory borrowed for this whole
    // call: `insns` holds `insn_cnt` instructions of the kernel's 8-byte
    // layout, `license` is NUL-terminated, and `log_buf` is writable for
    // `log_size` bytes. The kernel keeps none of them after returning.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            CMD_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if ret < 0 {
        return Err(last_errno());
    }
    let fd = i32::try_from(ret).map_err(|_| Errno::BADF)?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor that
    // nothing else owns; wrapping it makes this the only owner, which closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches program `prog` to cgroup directory `cgroup` as `attach_type`.
/// The attachment holds its own reference: both descriptors may be closed.
pub(crate) fn prog_attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
) -> Result<(), Errno> {
    let fd = |b: BorrowedFd<'_>| u32::try_from(b.as_raw_fd()).map_err(|_| Errno::BADF);
    let attr = ProgAttachAttr {
        target_fd: fd(cgroup)?,
        attach_bpf_fd: fd(prog)?,
        attach_type,
        attach_flags: flags,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a fully initialised `union bpf_attr` prefix whose size
    // we pass; it holds only integers, and both descriptors are borrowed, so
    // they stay open for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            CMD_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if ret < 0 {
        return Err(last_errno());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn instructions_have_the_kernel_layout() {
        // BPF_LDX_MEM(BPF_W, BPF_REG_2, BPF_REG_1, 4)
        assert_eq!(
            BpfInsn::new(0x61, 2, 1, 4, 0).to_bytes(),
            [0x61, 0x12, 4, 0, 0, 0, 0, 0]
        );
        // BPF_JMP_IMM(BPF_JNE, BPF_REG_3, 136, -2)
        assert_eq!(
            BpfInsn::new(0x55, 3, 0, -2, 136).to_bytes(),
            [0x55, 0x03, 0xfe, 0xff, 136, 0, 0, 0]
        );
        let i = BpfInsn::new(0x61, 2, 1, 4, -7);
        assert_eq!(
            (i.code(), i.dst(), i.src(), i.off(), i.imm()),
            (0x61, 2, 1, 4, -7)
        );
        // BPF_MOV64_IMM(BPF_REG_0, 1), BPF_EXIT_INSN()
        assert_eq!(
            BpfInsn::new(0xb7, 0, 0, 0, 1).to_bytes(),
            [0xb7, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            BpfInsn::new(0x95, 0, 0, 0, 0).to_bytes(),
            [0x95, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
