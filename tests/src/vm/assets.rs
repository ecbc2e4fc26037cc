//! The VM's parts: fetched from Debian with checked hashes and unpacked, never
//! installed.

use super::*;

/// One line of `apt-get download --print-uris`: `'URI' FILE SIZE SHA256:HEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebUri {
    pub uri: String,
    pub file: String,
    pub hash: String,
}

pub fn parse_print_uris(text: &str) -> Vec<DebUri> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let uri = f.next()?.trim_matches('\'').to_owned();
            let file = f.next()?.to_owned();
            let _size = f.next()?;
            let hash = f.next()?.to_owned();
            Some(DebUri { uri, file, hash })
        })
        .collect()
}

/// The kernel package `linux-image-cloud-amd64` depends on.
pub fn parse_kernel_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
}

/// Sonames `ldd` could not find.
pub fn parse_ldd_missing(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("=> not found"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Library paths `ldd` resolved (the loader included).
pub fn parse_ldd_paths(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect()
}

/// The Debian package that ships `soname` by the library packaging policy:
/// `libfoo.so.4` → `libfoo4`, `libnl-3.so.200` → `libnl-3-200`.
pub fn package_of_soname(soname: &str) -> Option<String> {
    let (name, ver) = soname.split_once(".so.")?;
    let sep = if name.ends_with(|c: char| c.is_ascii_digit()) {
        "-"
    } else {
        ""
    };
    Some(format!("{name}{sep}{ver}").to_lowercase().replace('_', "-"))
}

/// The `depends=` field of a kernel module's `.modinfo` section.
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    ko.windows(needle.len())
        .position(|w| w == needle)
        .map(|at| {
            let rest = &ko[at + needle.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// FNV-1a, stable across Rust versions (unlike `DefaultHasher`).
fn fnv(items: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in items.iter().flat_map(|s| s.bytes().chain([0])) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The unpacked kernel, qemu and lvm2.
#[derive(Debug, Clone)]
pub struct Assets {
    pub root: PathBuf,
    pub kernel: PathBuf,
    pub modules: PathBuf,
}

impl Assets {
    pub(super) fn lib_path(&self) -> String {
        format!(
            "{}:{}",
            self.root.join(MULTIARCH).display(),
            self.root.join("usr").join(MULTIARCH).display()
        )
    }

    pub(super) fn qemu(&self) -> PathBuf {
        self.root.join("usr/bin/qemu-system-x86_64")
    }
}

fn fetch(cache: &Path, uris: &[DebUri]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(cache).map_err(|e| format!("mkdir {cache:?}: {e}"))?;
    let mut out = Vec::new();
    for d in uris {
        let dest = cache.join(&d.file);
        if !dest.exists() {
            let tmp = cache.join(format!("{}.part", d.file));
            let tmp_s = tmp.to_string_lossy().into_owned();
            run(
                "/usr/lib/apt/apt-helper",
                &["download-file", &d.uri, &tmp_s, &d.hash],
            )
            .map_err(|e| format!("download {}: {e}", d.uri))?;
            std::fs::rename(&tmp, &dest).map_err(|e| format!("rename {tmp:?}: {e}"))?;
        }
        out.push(dest);
    }
    Ok(out)
}

fn print_uris(pkgs: &[String]) -> Result<Vec<DebUri>, String> {
    let mut args = vec!["download", "--print-uris"];
    args.extend(pkgs.iter().map(String::as_str));
    let uris = parse_print_uris(&run("apt-get", &args)?);
    if uris.len() != pkgs.len() {
        return Err(format!(
            "apt-get download --print-uris {pkgs:?} gave {} URIs; run `apt-get update`?",
            uris.len()
        ));
    }
    Ok(uris)
}

fn unpack(debs: &[PathBuf], root: &Path) -> Result<(), String> {
    let root_s = root.to_string_lossy().into_owned();
    for deb in debs {
        run("dpkg-deb", &["-x", &deb.to_string_lossy(), &root_s])?;
    }
    Ok(())
}

pub(super) fn ldd(file: &Path, lib_path: &str) -> Result<String, String> {
    let env = format!("LD_LIBRARY_PATH={lib_path}");
    run("env", &[&env, "ldd", &file.to_string_lossy()])
}

/// Fetches and unpacks everything the VM needs, once per set of package versions.
pub fn assets() -> Result<Assets, String> {
    let depends = run("apt-cache", &["depends", KERNEL_META])?;
    let kernel_pkg = parse_kernel_depends(&depends)
        .ok_or_else(|| format!("{KERNEL_META} depends on no linux-image package"))?;
    let mut pkgs: Vec<String> = PACKAGES.iter().map(|s| (*s).to_owned()).collect();
    pkgs.push(kernel_pkg.clone());
    let uris = print_uris(&pkgs)?;
    let mut files: Vec<String> = uris.iter().map(|u| u.file.clone()).collect();
    files.sort();
    let base = target_dir()?.join("berth-vm");
    let dir = base.join(fnv(&files));
    let root = dir.join("root");
    let ready = dir.join("ready");
    let version = kernel_pkg
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_pkg)
        .to_owned();
    let a = Assets {
        kernel: root.join(format!("boot/vmlinuz-{version}")),
        modules: root.join(format!("lib/modules/{version}")),
        root: root.clone(),
    };
    if ready.exists() {
        return Ok(a);
    }
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(|e| format!("clear {root:?}: {e}"))?;
    }
    // Trees of older package versions are dead weight (~180 MB each).
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_key = name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit());
            if is_key && e.path() != dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("mkdir {root:?}: {e}"))?;
    let debs = fetch(&base.join("debs"), &uris)?;
    unpack(&debs, &root)?;
    // qemu links libraries the host may lack; fetch their packages until ldd is
    // satisfied.
    for _ in 0..4 {
        let missing = parse_ldd_missing(&ldd(&a.qemu(), &a.lib_path())?);
        if missing.is_empty() {
            break;
        }
        let pkgs: BTreeSet<String> = missing
            .iter()
            .filter_map(|s| package_of_soname(s))
            .collect();
        let pkgs: Vec<String> = pkgs.into_iter().collect();
        let debs = fetch(&base.join("debs"), &print_uris(&pkgs)?)?;
        unpack(&debs, &root)?;
    }
    let missing = parse_ldd_missing(&ldd(&a.qemu(), &a.lib_path())?);
    if !missing.is_empty() {
        return Err(format!("qemu still lacks libraries: {missing:?}"));
    }
    std::fs::write(&ready, files.join("\n")).map_err(|e| format!("write {ready:?}: {e}"))?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_and_ldd_output() {
        let u = parse_print_uris(
            "'http://deb.debian.org/debian/pool/main/l/lvm2/lvm2_2.03.16-2_amd64.deb' lvm2_2.03.16-2_amd64.deb 1228616 SHA256:608a\n",
        );
        assert_eq!(u[0].file, "lvm2_2.03.16-2_amd64.deb");
        assert_eq!(u[0].hash, "SHA256:608a");
        assert!(u[0].uri.starts_with("http://"));
        assert_eq!(
            parse_kernel_depends(
                "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
            ),
            Some("linux-image-6.1.0-56-cloud-amd64".to_owned())
        );
        let ldd = "\tlinux-vdso.so.1 (0x00007f)\n\tlibfdt.so.1 => not found\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(parse_ldd_missing(ldd), vec!["libfdt.so.1".to_owned()]);
        assert_eq!(
            parse_ldd_paths(ldd),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn sonames_map_to_debian_packages() {
        assert_eq!(
            package_of_soname("libcapstone.so.4").as_deref(),
            Some("libcapstone4")
        );
        assert_eq!(
            package_of_soname("libnl-route-3.so.200").as_deref(),
            Some("libnl-route-3-200")
        );
        assert_eq!(
            package_of_soname("libvdeplug.so.2").as_deref(),
            Some("libvdeplug2")
        );
        assert_eq!(package_of_soname("weird"), None);
    }

    #[test]
    fn module_depends_are_read_from_modinfo() {
        let ko = b"\x7fELF...license=GPL\0depends=dm-bufio,dm-persistent-data\0intree=Y\0";
        assert_eq!(module_depends(ko), vec!["dm-bufio", "dm-persistent-data"]);
        assert!(module_depends(b"depends=\0").is_empty());
    }
}
