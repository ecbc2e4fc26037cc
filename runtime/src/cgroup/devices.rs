//! The device policy of `restrict_devices`: the character devices a container
//! may use, as cgroup v1 `devices.allow` lines and as a cgroup v2 device
//! program (`BPF_PROG_TYPE_CGROUP_DEVICE`), hand-assembled here.

use crate::sys::bpf::BpfInsn;

/// One allowed character device: major, and minor or any (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allowed {
    pub major: u32,
    pub minor: Option<u32>,
}

/// null, zero, full, random, urandom, tty, console, ptmx and every pts slave,
/// for read, write and mknod. Nothing else, no block device.
pub(crate) const ALLOWED: [Allowed; 9] = [
    dev(1, 3),
    dev(1, 5),
    dev(1, 7),
    dev(1, 8),
    dev(1, 9),
    dev(5, 0),
    dev(5, 1),
    dev(5, 2),
    Allowed {
        major: 136,
        minor: None,
    },
];

const fn dev(major: u32, minor: u32) -> Allowed {
    Allowed {
        major,
        minor: Some(minor),
    }
}

/// What v1 takes: deny everything (`a` in devices.deny), then these lines,
/// one write each, in devices.allow.
pub(crate) fn v1_allow_lines() -> Vec<String> {
    ALLOWED
        .iter()
        .map(|a| match a.minor {
            Some(m) => format!("c {}:{m} rwm", a.major),
            None => format!("c {}:* rwm", a.major),
        })
        .collect()
}

/// `struct bpf_cgroup_dev_ctx`'s `access_type` low half: `BPF_DEVCG_DEV_CHAR`.
pub(crate) const DEV_CHAR: i32 = 2;

// Opcodes (class | size/op | source), from `include/uapi/linux/bpf.h`.
/// BPF_LDX | BPF_W | BPF_MEM: dst = *(u32 *)(src + off).
pub(crate) const LDX_W: u8 = 0x61;
/// BPF_ALU | BPF_AND | BPF_K: dst = (u32)dst & imm.
pub(crate) const AND32_K: u8 = 0x54;
/// BPF_JMP | BPF_JNE | BPF_K: if dst != imm, pc += off.
pub(crate) const JNE_K: u8 = 0x55;
/// BPF_ALU64 | BPF_MOV | BPF_K: dst = imm.
pub(crate) const MOV64_K: u8 = 0xb7;
/// BPF_JMP | BPF_EXIT: return r0.
pub(crate) const EXIT: u8 = 0x95;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;

fn imm(v: u32) -> i32 {
    // Device numbers are at most 32 bits; the kernel compares the immediate as
    // a sign-extended 64-bit value against a zero-extended u32 load, so values
    // above i32::MAX could never match. Majors are < 4096, minors < 2^20.
    i32::try_from(v).unwrap_or(-1)
}

fn jne(reg: u8, value: u32, off: i16) -> BpfInsn {
    BpfInsn::new(JNE_K, reg, 0, off, imm(value))
}

fn ret(v: i32) -> [BpfInsn; 2] {
    [
        BpfInsn::new(MOV64_K, R0, 0, 0, v),
        BpfInsn::new(EXIT, 0, 0, 0, 0),
    ]
}

/// The program: 1 (allow) for a character device in `allowed`, 0 (deny) for
/// anything else, whatever the access.
///
/// ```text
///     r2 = ctx->access_type; w2 &= 0xffff; r3 = ctx->major; r4 = ctx->minor
///     if r2 != CHAR goto deny
///     for each rule: if r3 != MAJOR goto next; [if r4 != MINOR goto next;] r0 = 1; exit
/// deny: r0 = 0; exit
/// ```
pub(crate) fn program(allowed: &[Allowed]) -> Vec<BpfInsn> {
    let mut rules = Vec::new();
    for a in allowed {
        // Each block ends with `r0 = 1; exit`; a mismatch skips to the next.
        match a.minor {
            Some(minor) => {
                rules.push(jne(R3, a.major, 3));
                rules.push(jne(R4, minor, 2));
            }
            None => rules.push(jne(R3, a.major, 2)),
        }
        rules.extend(ret(1));
    }
    let to_deny = i16::try_from(rules.len()).unwrap_or(i16::MAX);
    let mut prog = vec![
        BpfInsn::new(LDX_W, R2, R1, 0, 0),
        BpfInsn::new(AND32_K, R2, 0, 0, 0xffff),
        BpfInsn::new(LDX_W, R3, R1, 4, 0),
        BpfInsn::new(LDX_W, R4, R1, 8, 0),
        BpfInsn::new(JNE_K, R2, 0, to_deny, DEV_CHAR),
    ];
    prog.extend(rules);
    prog.extend(ret(0));
    prog
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the opcodes `program` uses against one device context.
    fn eval(prog: &[BpfInsn], access_type: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access_type, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..1000 {
            let i = prog[pc];
            let (d, s) = (usize::from(i.dst()), usize::from(i.src()));
            pc += 1;
            match i.code() {
                LDX_W => {
                    assert_eq!(s, 1, "loads only from ctx");
                    let off = usize::try_from(i.off()).unwrap();
                    assert_eq!(off % 4, 0);
                    r[d] = u64::from(ctx[off / 4]);
                }
                AND32_K => r[d] = u64::from((r[d] as u32) & (i.imm() as u32)),
                JNE_K => {
                    if r[d] != i.imm() as i64 as u64 {
                        pc = usize::try_from(pc as i64 + i64::from(i.off())).unwrap();
                    }
                }
                MOV64_K => r[d] = i.imm() as i64 as u64,
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        panic!("no exit")
    }

    const READ: u32 = 2 << 16;
    const MKNOD: u32 = 1 << 16;
    const BLOCK: u32 = 1;
    const CHAR: u32 = 2;

    #[test]
    fn program_allows_exactly_the_listed_char_devices() {
        let p = program(&ALLOWED);
        assert_eq!(p.len(), 5 + 8 * 4 + 3 + 2);
        for (maj, min) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert_eq!(eval(&p, READ | CHAR, maj, min), 1, "c {maj}:{min}");
            assert_eq!(eval(&p, MKNOD | CHAR, maj, min), 1, "mknod c {maj}:{min}");
        }
        assert_eq!(eval(&p, READ | CHAR, 136, 0), 1);
        assert_eq!(eval(&p, READ | CHAR, 136, 4711), 1);
        for (maj, min) in [
            (1, 1),
            (1, 4),
            (4, 1),
            (5, 3),
            (10, 200),
            (136 + 1, 0),
            (0, 3),
        ] {
            assert_eq!(eval(&p, READ | CHAR, maj, min), 0, "c {maj}:{min}");
        }
        for (maj, min) in [(7, 0), (8, 0), (1, 3), (136, 0), (259, 0)] {
            assert_eq!(eval(&p, READ | BLOCK, maj, min), 0, "b {maj}:{min}");
        }
    }

    #[test]
    fn an_empty_list_denies_everything() {
        let p = program(&[]);
        assert_eq!(p.len(), 7);
        assert_eq!(eval(&p, READ | CHAR, 1, 3), 0);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn program_encodes_as_the_kernel_expects() {
        let p = program(&[dev(1, 3)]);
        let bytes: Vec<[u8; 8]> = p.iter().map(|i| i.to_bytes()).collect();
        assert_eq!(
            bytes,
            [
                [0x61, 0x12, 0, 0, 0, 0, 0, 0],       // r2 = *(u32 *)(r1 + 0)
                [0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0], // w2 &= 0xffff
                [0x61, 0x13, 4, 0, 0, 0, 0, 0],       // r3 = *(u32 *)(r1 + 4)
                [0x61, 0x14, 8, 0, 0, 0, 0, 0],       // r4 = *(u32 *)(r1 + 8)
                [0x55, 0x02, 4, 0, 2, 0, 0, 0],       // if r2 != 2 goto +4
                [0x55, 0x03, 3, 0, 1, 0, 0, 0],       // if r3 != 1 goto +3
                [0x55, 0x04, 2, 0, 3, 0, 0, 0],       // if r4 != 3 goto +2
                [0xb7, 0x00, 0, 0, 1, 0, 0, 0],       // r0 = 1
                [0x95, 0, 0, 0, 0, 0, 0, 0],          // exit
                [0xb7, 0x00, 0, 0, 0, 0, 0, 0],       // r0 = 0
                [0x95, 0, 0, 0, 0, 0, 0, 0],          // exit
            ]
        );
    }

    #[test]
    fn v1_lines_match_the_list() {
        let l = v1_allow_lines();
        assert_eq!(l.len(), ALLOWED.len());
        assert_eq!(l[0], "c 1:3 rwm");
        assert_eq!(l[7], "c 5:2 rwm");
        assert_eq!(l[8], "c 136:* rwm");
    }
}
