//! The initramfs: busybox, lvm2, e2fsprogs and their libraries, the dm modules,
//! the payload and `/init`, written as a newc cpio archive.

use super::*;

/// A newc cpio archive, built in memory.
#[derive(Default)]
pub struct Cpio {
    entries: BTreeMap<String, (u32, Vec<u8>)>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Cpio {
    fn dirs_of(&mut self, path: &str) {
        let mut p = String::new();
        for part in path.split('/').filter(|s| !s.is_empty()) {
            if !p.is_empty() {
                self.entries
                    .entry(p.clone())
                    .or_insert((S_IFDIR | 0o755, Vec::new()));
                p.push('/');
            }
            p.push_str(part);
        }
    }

    pub fn dir(&mut self, path: &str) {
        let path = path.trim_start_matches('/');
        self.dirs_of(path);
        self.entries
            .insert(path.to_owned(), (S_IFDIR | 0o755, Vec::new()));
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = path.trim_start_matches('/');
        self.dirs_of(path);
        self.entries
            .insert(path.to_owned(), (S_IFREG | (mode & 0o7777), data));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_start_matches('/');
        self.dirs_of(path);
        self.entries.insert(
            path.to_owned(),
            (S_IFLNK | 0o777, target.as_bytes().to_vec()),
        );
    }

    /// Copies the host file `src` (following symlinks) to `path`.
    pub fn copy(&mut self, path: &str, src: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(src).map_err(|e| format!("read {src:?}: {e}"))?;
        let mode = std::fs::metadata(src)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o755);
        self.file(path, mode, data);
        Ok(())
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// The archive bytes (parents sort before children in the map).
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ino = 1u32;
        let mut push = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
            let hdr = format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            );
            ino += 1;
            out.extend_from_slice(hdr.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
            out.extend_from_slice(data);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        };
        for (name, (mode, data)) in &self.entries {
            push(&mut out, name, *mode, data);
        }
        push(&mut out, "TRAILER!!!", 0, &[]);
        out
    }
}

/// Copies `elf` to `path` in the archive, with every library it needs.
fn add_elf(c: &mut Cpio, path: &str, elf: &Path, lib_path: &str) -> Result<(), String> {
    c.copy(path, elf)?;
    let out = ldd(elf, lib_path)?;
    let missing = parse_ldd_missing(&out);
    if !missing.is_empty() {
        return Err(format!("{elf:?} needs libraries nobody has: {missing:?}"));
    }
    for lib in parse_ldd_paths(&out) {
        let Some(name) = lib.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let at = if name.starts_with("ld-linux") {
            format!("lib64/{name}")
        } else {
            format!("{MULTIARCH}/{name}")
        };
        if !c.contains(&at) {
            c.copy(&at, &lib)?;
        }
    }
    Ok(())
}

/// `MODULES` and their dependencies, dependencies first, as paths below the
/// module tree.
fn module_order(modules_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut by_name = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| format!("read {d:?}: {e}"))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(OsStr::to_str) {
                if let Some(stem) = n.strip_suffix(".ko") {
                    // modinfo names use '_' where files may use '-'.
                    by_name.insert(stem.replace('-', "_"), p.clone());
                }
            }
        }
    }
    let mut order: Vec<PathBuf> = Vec::new();
    fn visit(
        name: &str,
        by_name: &BTreeMap<String, PathBuf>,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> Result<(), String> {
        let key = name.replace('-', "_");
        let path = by_name
            .get(&key)
            .ok_or_else(|| format!("kernel module {name} not found"))?;
        if order.contains(path) || depth > 16 {
            return Ok(());
        }
        let ko = std::fs::read(path).map_err(|e| format!("read {path:?}: {e}"))?;
        for dep in module_depends(&ko) {
            visit(&dep, by_name, order, depth + 1)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for m in MODULES {
        visit(m, &by_name, &mut order, 0)?;
    }
    Ok(order)
}

fn init_script(env: &[(String, String)], cfg: &GuestConfig) -> String {
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    let cgroup = if cfg.pure_cgroup2 {
        "mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo \"BERTH-VM: no cgroup2\"\n"
    } else {
        ""
    };
    format!(
        r#"#!/bin/busybox sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export LD_LIBRARY_PATH=/{MULTIARCH}
if [ ! -e /.stage2 ]; then
    # pivot_root(2) refuses the initramfs root, and containers need it: move
    # everything to a tmpfs and make that the root.
    /bin/busybox --install -s /bin
    mount -t tmpfs -o size=90% tmpfs /newroot
    for f in /*; do
        case "$f" in /newroot|/proc|/sys|/dev) ;; *) cp -a "$f" /newroot/ ;; esac
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/newroot
    touch /newroot/.stage2
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
{cgroup}mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
for m in $(cat /modules); do insmod "$m" || echo "BERTH-VM: insmod $m failed"; done
# Tests want a disk filesystem with user xattrs (tmpfs has none in 6.1): ext4 on
# a sparse image whose freed blocks go back to the tmpfs.
mkdir -p /scratch
mount -t tmpfs -o size=85% tmpfs /scratch
truncate -s 6G /scratch/var-tmp.img
/sbin/mke2fs -q -t ext4 -F /scratch/var-tmp.img
mount -o loop,discard /scratch/var-tmp.img /var/tmp || echo "BERTH-VM: no /var/tmp"
mount -t tmpfs tmpfs /tmp
{exports}export {IN_VM_ENV}=1
cd /var/tmp
echo BERTH-VM-START
/payload/test $(cat /payload/args)
echo "BERTH-VM-EXIT $?"
sync
poweroff -f
"#
    )
}

/// Builds the initramfs that runs `exe` with `args` in the guest.
pub fn initramfs(a: &Assets, exe: &Path, args: &[&str], out: &Path) -> Result<(), String> {
    initramfs_with(a, exe, args, out, &GuestConfig::default())
}

/// [`initramfs`] whose /init prepares what `cfg` asks for.
pub fn initramfs_with(
    a: &Assets,
    exe: &Path,
    args: &[&str],
    out: &Path,
    cfg: &GuestConfig,
) -> Result<(), String> {
    let lib_path = a.lib_path();
    let mut c = Cpio::default();
    for d in [
        "proc", "sys", "dev", "tmp", "run", "var/tmp", "etc/lvm", "newroot", "usr/bin",
    ] {
        c.dir(d);
    }
    c.copy("bin/busybox", Path::new("/bin/busybox"))?;
    add_elf(&mut c, "sbin/lvm", &a.root.join("sbin/lvm"), &lib_path)?;
    for cmd in [
        "lvs", "vgs", "pvs", "lvcreate", "lvremove", "lvchange", "lvextend", "pvcreate",
        "pvremove", "vgcreate", "vgremove", "vgchange",
    ] {
        c.symlink(&format!("sbin/{cmd}"), "lvm");
    }
    for tool in HOST_TOOLS {
        let p = Path::new(tool);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        add_elf(&mut c, &format!("sbin/{name}"), p, &lib_path)?;
    }
    c.symlink("sbin/mkfs.ext4", "mke2fs");
    // berth's templates run `ldd`, a bash script.
    add_elf(&mut c, "bin/bash", Path::new("/bin/bash"), &lib_path)?;
    c.copy("usr/bin/ldd", Path::new("/usr/bin/ldd"))?;
    if Path::new("/etc/mke2fs.conf").exists() {
        c.copy("etc/mke2fs.conf", Path::new("/etc/mke2fs.conf"))?;
    }
    c.file("etc/lvm/lvm.conf", 0o644, LVM_CONF.as_bytes().to_vec());
    c.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    );
    c.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    let mut list = String::new();
    for (i, ko) in module_order(&a.modules)?.iter().enumerate() {
        let at = format!("lib/modules/{i:02}.ko");
        c.copy(&at, ko)?;
        list.push_str(&format!("/{at}\n"));
    }
    c.file("modules", 0o644, list.into_bytes());
    add_elf(&mut c, "payload/test", exe, &lib_path)?;
    c.file("payload/args", 0o644, args.join(" ").into_bytes());
    let env: Vec<(String, String)> = ["CI", "RUST_BACKTRACE", "RUST_LOG"]
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), std::env::var(k).ok()?)))
        .filter(|(_, v)| !v.contains('\''))
        .collect();
    c.file("init", 0o755, init_script(&env, cfg).into_bytes());
    std::fs::write(out, c.bytes()).map_err(|e| format!("write {out:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_mounts_cgroup2_only_when_asked() {
        let plain = init_script(&[], &GuestConfig::default());
        assert!(!plain.contains("cgroup2"));
        let v2 = init_script(&[], &GuestConfig { pure_cgroup2: true });
        let at = |s: &str| v2.find(s).unwrap();
        assert!(at("mount -t sysfs") < at("mount -t cgroup2 cgroup2 /sys/fs/cgroup"));
        assert!(at("mount -t cgroup2") < at("/payload/test"));
        assert!(GuestConfig { pure_cgroup2: true }
            .kernel_args()
            .contains("cgroup_no_v1=all"));
        assert!(!GuestConfig::default()
            .kernel_args()
            .contains("cgroup_no_v1"));
    }

    #[test]
    fn cpio_is_newc_with_parents_and_trailer() {
        let mut c = Cpio::default();
        c.file("a/b/c", 0o644, b"hi".to_vec());
        c.symlink("a/l", "b");
        let b = c.bytes();
        assert!(b.starts_with(b"070701"));
        assert_eq!(b.len() % 4, 0);
        let s = String::from_utf8_lossy(&b);
        let (a, ab, abc) = (s.find("a\0"), s.find("a/b\0"), s.find("a/b/c\0"));
        assert!(a < ab && ab < abc, "parents first");
        assert!(s.contains("TRAILER!!!"));
    }
}
