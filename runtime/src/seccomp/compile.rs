//! Compiling a [`Plan`] with libseccomp, in the parent: the BPF comes back
//! as a plain [`BpfProgram`] the container process loads without allocating.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use rustix::fs::MemfdFlags;
use rustix::io::Errno;
use rustix::thread::CapabilitySet;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::names::{Action, Op};
use super::plan::{Host, Plan, Rule};
use super::profile::{Cond, SeccompProfile};
use super::SeccompError;

/// The most instructions the kernel accepts in one filter (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

/// One classic BPF instruction, laid out like the kernel's (and libc's)
/// `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const _: () =
    assert!(std::mem::size_of::<SockFilter>() == std::mem::size_of::<libc::sock_filter>());
const _: () =
    assert!(std::mem::align_of::<SockFilter>() == std::mem::align_of::<libc::sock_filter>());

/// A compiled seccomp filter, ready for [`BpfProgram::load`]. Never empty
/// and at most 4096 instructions long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfProgram(Vec<SockFilter>);

impl BpfProgram {
    /// The number of instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a compiled program.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn instructions(&self) -> &[SockFilter] {
        &self.0
    }

    /// Installs the filter on the calling thread with
    /// `seccomp(SECCOMP_SET_MODE_FILTER)`. Child side: allocates nothing. The
    /// kernel refuses it (`EACCES`) unless no_new_privs is set (see
    /// [`super::set_no_new_privs`]) or the thread has CAP_SYS_ADMIN.
    pub fn load(&self) -> Result<(), Errno> {
        crate::sys::seccomp::load_filter(self)
    }

    /// Decodes libseccomp's export: native-endian 8-byte instructions.
    fn from_bytes(bytes: &[u8]) -> Result<Self, SeccompError> {
        const SIZE: usize = std::mem::size_of::<SockFilter>();
        let count = bytes.len() / SIZE;
        if !bytes.len().is_multiple_of(SIZE) || count == 0 || count > MAX_INSNS {
            return Err(SeccompError::ProgramSize { bytes: bytes.len() });
        }
        Ok(BpfProgram(
            bytes
                .chunks_exact(SIZE)
                .map(|c| SockFilter {
                    code: u16::from_ne_bytes([c[0], c[1]]),
                    jt: c[2],
                    jf: c[3],
                    k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect(),
        ))
    }
}

impl SeccompProfile {
    /// Compiles the profile for a container that keeps `caps` (the rules'
    /// `includes.caps`/`excludes.caps` are evaluated against them), on this
    /// machine's architecture and kernel. Call it in the parent.
    pub fn compile(&self, caps: CapabilitySet) -> Result<BpfProgram, SeccompError> {
        compile(&self.plan(caps, &Host::current()?))
    }
}

/// [`compile`], through a cache directory: the program for the same plan
/// (rules, architectures and kernel-dependent choices), berth and libseccomp
/// versions is read back instead of compiled again. Each entry ends with the
/// SHA-256 of its key and program, so a torn write or another plan's program
/// under a colliding name is compiled again, never loaded. A cache that
/// cannot be read or written only costs the compile.
pub(crate) fn compile_cached(plan: &Plan, dir: &Path) -> Result<BpfProgram, SeccompError> {
    let version = ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    let key = format!("{}|{version}|{plan:?}", env!("CARGO_PKG_VERSION"));
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let path = dir.join(format!("{hash:016x}.bpf"));
    let digest = |program: &[u8]| {
        Sha256::new()
            .chain_update(&key)
            .chain_update(program)
            .finalize()
    };
    if let Ok(bytes) = std::fs::read(&path) {
        if let Some((program, sum)) = bytes.split_last_chunk::<DIGEST_LEN>() {
            if digest(program)[..] == sum[..] {
                if let Ok(prog) = BpfProgram::from_bytes(program) {
                    return Ok(prog);
                }
            }
        }
        debug!(path = %path.display(), "seccomp cache entry does not check out; compiling");
    }
    let prog = compile(plan)?;
    let mut bytes: Vec<u8> = prog
        .0
        .iter()
        .flat_map(|f| {
            let mut b = [0u8; 8];
            b[..2].copy_from_slice(&f.code.to_ne_bytes());
            b[2] = f.jt;
            b[3] = f.jf;
            b[4..].copy_from_slice(&f.k.to_ne_bytes());
            b
        })
        .collect();
    let sum = digest(&bytes);
    bytes.extend_from_slice(&sum);
    // Written aside and renamed: a reader never sees half a program.
    let tmp = dir.join(format!(".{hash:016x}.{}", std::process::id()));
    let stored = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, &bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(error) = stored {
        let _ = std::fs::remove_file(&tmp);
        debug!(%error, dir = %dir.display(), "seccomp cache not written");
    }
    Ok(prog)
}

/// The length of a cache entry's SHA-256.
const DIGEST_LEN: usize = 32;

pub(crate) fn compile(plan: &Plan) -> Result<BpfProgram, SeccompError> {
    let mut ctx = ScmpFilterContext::new(scmp_action(plan.default))
        .map_err(|source| SeccompError::InitFilter { source })?;
    ctx.set_act_badarch(ScmpAction::KillProcess)
        .map_err(|source| SeccompError::InitFilter { source })?;
    for &arch in &plan.arches {
        add_arch(&mut ctx, arch)?;
    }
    for rule in &plan.rules {
        add_rule(&mut ctx, rule)?;
    }
    export(&ctx)
}

fn add_arch(ctx: &mut ScmpFilterContext, arch: ScmpArch) -> Result<(), SeccompError> {
    let fail = |source| SeccompError::AddArch {
        arch: format!("{arch:?}"),
        source,
    };
    if !ctx.is_arch_present(arch).map_err(fail)? {
        ctx.add_arch(arch).map_err(fail)?;
    }
    Ok(())
}

fn add_rule(ctx: &mut ScmpFilterContext, rule: &Rule) -> Result<(), SeccompError> {
    // Resolved for the native ABI; libseccomp maps the name onto each
    // architecture in the filter and leaves out those that lack it.
    let Ok(syscall) = ScmpSyscall::from_name(&rule.name) else {
        debug!(
            syscall = rule.name,
            "syscall unknown to libseccomp, rule skipped"
        );
        return Ok(());
    };
    let args: Vec<ScmpArgCompare> = rule.args.iter().map(scmp_cond).collect();
    ctx.add_rule_conditional(scmp_action(rule.action), syscall, &args)
        .map_err(|source| SeccompError::AddRule {
            syscall: rule.name.clone(),
            source,
        })?;
    Ok(())
}

fn export(ctx: &ScmpFilterContext) -> Result<BpfProgram, SeccompError> {
    let read = |source| SeccompError::ReadBpf { source };
    let fd = rustix::fs::memfd_create("berth-seccomp", MemfdFlags::CLOEXEC)
        .map_err(|e| read(e.into()))?;
    ctx.export_bpf(&fd)
        .map_err(|source| SeccompError::ExportBpf { source })?;
    let mut file = std::fs::File::from(fd);
    file.seek(SeekFrom::Start(0)).map_err(read)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read)?;
    BpfProgram::from_bytes(&bytes)
}

fn scmp_action(action: Action) -> ScmpAction {
    match action {
        Action::Allow => ScmpAction::Allow,
        Action::Errno(e) => ScmpAction::Errno(i32::from(e)),
        Action::KillThread => ScmpAction::KillThread,
        Action::KillProcess => ScmpAction::KillProcess,
        Action::Trap => ScmpAction::Trap,
        Action::Trace(v) => ScmpAction::Trace(v),
        Action::Log => ScmpAction::Log,
    }
}

fn scmp_cond(c: &Cond) -> ScmpArgCompare {
    let (op, datum) = match c.op {
        Op::Ne => (ScmpCompareOp::NotEqual, c.value),
        Op::Lt => (ScmpCompareOp::Less, c.value),
        Op::Le => (ScmpCompareOp::LessOrEqual, c.value),
        Op::Eq => (ScmpCompareOp::Equal, c.value),
        Op::Ge => (ScmpCompareOp::GreaterEqual, c.value),
        Op::Gt => (ScmpCompareOp::Greater, c.value),
        Op::MaskedEq => (ScmpCompareOp::MaskedEqual(c.value), c.value_two),
    };
    ScmpArgCompare::new(c.index, op, datum)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn cached_programs_are_the_compiled_ones_and_bad_entries_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let plan = SeccompProfile::default_profile()
            .unwrap()
            .plan(crate::DEFAULT_CAPS, &Host::current().unwrap());
        let fresh = compile(&plan).unwrap();
        assert_eq!(compile_cached(&plan, dir.path()).unwrap(), fresh);
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1, "one program, no temp file left");
        let entry = entries[0].path();
        assert_eq!(compile_cached(&plan, dir.path()).unwrap(), fresh);
        let good = std::fs::read(&entry).unwrap();
        assert_eq!(good.len(), fresh.len() * 8 + DIGEST_LEN);
        // Junk, a torn entry (its last instruction lost) and one whose digest
        // does not match are compiled again and rewritten.
        let torn = [
            &good[..good.len() - DIGEST_LEN - 8],
            &good[good.len() - DIGEST_LEN..],
        ]
        .concat();
        let mut flipped = good.clone();
        flipped[0] ^= 1;
        for bad in [b"junk".to_vec(), torn, flipped] {
            std::fs::write(&entry, &bad).unwrap();
            assert_eq!(compile_cached(&plan, dir.path()).unwrap(), fresh);
            assert_eq!(std::fs::read(&entry).unwrap(), good);
        }
        // Other capabilities are another program.
        let other = SeccompProfile::default_profile()
            .unwrap()
            .plan(CapabilitySet::all(), &Host::current().unwrap());
        let other_prog = compile_cached(&other, dir.path()).unwrap();
        assert_ne!(other_prog, fresh);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // Another plan's entry under this plan's name (a colliding hash) is
        // not loaded for it.
        let others_entry = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| *p != entry)
            .unwrap();
        std::fs::copy(&others_entry, &entry).unwrap();
        assert_eq!(compile_cached(&plan, dir.path()).unwrap(), fresh);
        assert_eq!(std::fs::read(&entry).unwrap(), good);
    }

    /// `BPF_JMP | BPF_JEQ | BPF_K`: how the filter compares the arch word.
    const JEQ_K: u16 = 0x15;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    /// `BPF_RET | BPF_K`.
    const RET_K: u16 = 0x06;
    const RET_ERRNO: u32 = 0x0005_0000;

    fn compares(prog: &BpfProgram, k: u32) -> bool {
        prog.instructions()
            .iter()
            .any(|i| i.code == JEQ_K && i.k == k)
    }

    fn returns(prog: &BpfProgram, k: u32) -> bool {
        prog.instructions()
            .iter()
            .any(|i| i.code == RET_K && i.k == k)
    }

    #[test]
    fn default_profile_compiles_for_every_abi() {
        let profile = SeccompProfile::default_profile().unwrap();
        let prog = profile.compile(crate::DEFAULT_CAPS).unwrap();
        assert!(!prog.is_empty());
        assert!(prog.len() < MAX_INSNS);
        #[cfg(target_arch = "x86_64")]
        {
            assert!(compares(&prog, AUDIT_ARCH_X86_64));
            assert!(compares(&prog, AUDIT_ARCH_I386));
            // x32 shares x86_64's arch word; its syscalls carry bit 30.
            assert!(prog.instructions().iter().any(|i| i.k == 0x4000_0000));
        }
        assert!(returns(&prog, RET_ERRNO | 1), "EPERM rules");
        assert!(returns(&prog, RET_ERRNO | 38), "clone3 ENOSYS");
    }

    #[test]
    fn caps_shrink_the_default_filter() {
        let profile = SeccompProfile::default_profile().unwrap();
        let all = CapabilitySet::all();
        let wide = profile.compile(crate::DEFAULT_CAPS).unwrap();
        let narrow = profile.compile(all).unwrap();
        assert!(narrow.len() < wide.len());
        // With every cap only the unconditional groups are left: no ENOSYS.
        assert!(!returns(&narrow, RET_ERRNO | 38));
    }

    #[test]
    fn unknown_syscall_names_are_skipped() {
        let profile = SeccompProfile::from_json(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["no_such_syscall", "getcwd"], "action": "SCMP_ACT_ERRNO",
                 "errnoRet": 1}]}"#,
            Path::new("t.json"),
        )
        .unwrap();
        let prog = profile.compile(CapabilitySet::empty()).unwrap();
        assert!(returns(&prog, RET_ERRNO | 1));
    }

    #[test]
    fn bpf_bytes_decode_and_reject_bad_sizes() {
        let one = [0x06, 0x00, 0x01, 0x02, 0x00, 0x00, 0xff, 0x7f];
        let prog = BpfProgram::from_bytes(&one).unwrap();
        assert_eq!(prog.len(), 1);
        assert_eq!(prog.instructions()[0].code, u16::from_ne_bytes([6, 0]));
        assert_eq!(
            (prog.instructions()[0].jt, prog.instructions()[0].jf),
            (1, 2)
        );
        assert!(matches!(
            BpfProgram::from_bytes(&one[..7]),
            Err(SeccompError::ProgramSize { bytes: 7 })
        ));
        assert!(BpfProgram::from_bytes(&[]).is_err());
    }
}
