//! Whether a berth store adds up, checked from outside through the binary (as
//! a user would after a crash): `berth doctor` finds nothing, `berth ls` shows
//! every container stopped and usable, each one mounts and runs, files written
//! earlier read back unchanged, and nothing of berth's is left mounted,
//! attached, running as a helper daemon or in a cgroup. Each check returns
//! what it found wrong, so a test can count inconsistencies and go on.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cli::{leftover_cgroups, Store};
use crate::harness::{leaks_under, wait_for};

/// Helper daemons berth starts that must not outlive what they serve.
const HELPERS: &[&str] = &["qemu-storage-daemon", "unionfs"];

/// `berth doctor` (no repairs) must find nothing.
pub fn doctor_clean(s: &Store) -> Result<(), String> {
    let (code, out) = s.berth_status(&["doctor"]);
    if code == 0 && out.trim() == "nothing to repair" {
        return Ok(());
    }
    Err(format!("berth doctor (exit {code}): {}", out.trim()))
}

/// One line of `berth ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub state: String,
}

/// The containers `berth ls` lists, in its order.
pub fn listed(s: &Store) -> Result<Vec<Listed>, String> {
    let out = s
        .berth(&["ls"])
        .map_err(|f| format!("berth ls ({}): {}", f.status, f.stderr))?;
    Ok(parse_ls(&out))
}

/// The name and state columns of `berth ls`'s table.
pub fn parse_ls(out: &str) -> Vec<Listed> {
    out.lines()
        .skip_while(|l| !l.starts_with("NAME"))
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Listed {
                name: f.next()?.to_owned(),
                state: f.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// `berth run NAME -- ARGV…`: what the command printed.
pub fn run_in(s: &Store, name: &str, argv: &[&str]) -> Result<String, String> {
    let mut args = vec!["run", "--no-tty", name, "--"];
    args.extend_from_slice(argv);
    s.berth(&args).map_err(|f| {
        format!(
            "berth run {name} -- {argv:?} ({}): {}",
            f.status,
            f.stderr.trim()
        )
    })
}

/// Writes `content` to `rel` (relative to the container's root, a leading
/// `/` allowed) in container `name` through `berth mount`.
pub fn write_in(s: &Store, name: &str, rel: &str, content: &str) -> Result<(), String> {
    let at = mount(s, name)?;
    let path = at.join(rel.trim_start_matches('/'));
    let written = fs::write(&path, content).map_err(|e| format!("write {}: {e}", path.display()));
    let unmounted = s
        .berth(&["umount", name])
        .map(drop)
        .map_err(|f| format!("berth umount {name} ({}): {}", f.status, f.stderr.trim()));
    written.and(unmounted)
}

/// Reads `rel` in container `name` through `berth mount`.
pub fn read_in(s: &Store, name: &str, rel: &str) -> Result<String, String> {
    let at = mount(s, name)?;
    let path = at.join(rel.trim_start_matches('/'));
    let read = fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()));
    let unmounted = s
        .berth(&["umount", name])
        .map(drop)
        .map_err(|f| format!("berth umount {name} ({}): {}", f.status, f.stderr.trim()));
    unmounted.and(read)
}

fn mount(s: &Store, name: &str) -> Result<PathBuf, String> {
    let out = s
        .berth(&["mount", name])
        .map_err(|f| format!("berth mount {name} ({}): {}", f.status, f.stderr.trim()))?;
    Ok(PathBuf::from(out.lines().last().unwrap_or_default()))
}

/// Every container of the store: listed as stopped, and it runs `/bin/true`,
/// or, for those in `files` (name, path, content), `/bin/cat` prints the
/// content written earlier. A run leaves no cgroup behind.
pub fn containers_usable(s: &Store, files: &[(&str, &str, &str)]) -> Vec<String> {
    let mut bad = Vec::new();
    let all = match listed(s) {
        Ok(l) => l,
        Err(e) => return vec![e],
    };
    for c in &all {
        if c.state != "stopped" {
            bad.push(format!("berth ls shows {} as {:?}", c.name, c.state));
        }
        let file = files.iter().find(|(n, _, _)| *n == c.name);
        let got = match file {
            Some((_, path, _)) => run_in(s, &c.name, &["/bin/cat", path]),
            None => run_in(s, &c.name, &["/bin/true"]),
        };
        match (got, file) {
            (Err(e), _) => bad.push(e),
            (Ok(out), Some((n, path, want))) if out != *want => {
                bad.push(format!("{n}:{path} changed: {out:?}, was {want:?}"))
            }
            _ => {}
        }
        if !wait_for(|| leftover_cgroups(&c.name).is_empty()) {
            bad.push(format!(
                "cgroups left by a run of {}: {:?}",
                c.name,
                leftover_cgroups(&c.name)
            ));
        }
    }
    for (n, _, _) in files {
        if !all.iter().any(|c| c.name == *n) {
            bad.push(format!("container {n} is gone from berth ls"));
        }
    }
    bad
}

/// Mounts and loop devices under `dirs` (the store root, pool directories),
/// and helper daemons whose command line names one of them.
pub fn leaks(dirs: &[&Path]) -> Vec<String> {
    let found = || {
        let mut out: Vec<String> = dirs.iter().flat_map(|d| leaks_under(d)).collect();
        out.extend(
            helpers_under(dirs)
                .into_iter()
                .map(|(pid, l)| format!("process {pid}: {l}")),
        );
        out
    };
    // Something unmounted or stopped a moment ago may still be going.
    wait_for(|| found().is_empty());
    found()
}

/// Live helper daemons ([`HELPERS`]) whose command line names one of `dirs`:
/// (pid, command line).
pub fn helpers_under(dirs: &[&Path]) -> Vec<(u32, String)> {
    let needles: Vec<String> = dirs
        .iter()
        .map(|d| fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf()))
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        let prog = line.split(' ').next().unwrap_or("");
        let prog = Path::new(prog)
            .file_name()
            .map(|p| p.to_string_lossy().into_owned());
        let helper = prog.is_some_and(|p| HELPERS.contains(&p.as_str()));
        if helper && needles.iter().any(|n| line.contains(n.as_str())) && !zombie(&e.path()) {
            out.push((pid, line.trim_end().to_owned()));
        }
    }
    out
}

fn zombie(proc_dir: &Path) -> bool {
    fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// Everything at once: doctor clean, containers usable (see
/// [`containers_usable`]), no leaks under `dirs`.
pub fn check_store(s: &Store, files: &[(&str, &str, &str)], dirs: &[&Path]) -> Vec<String> {
    let mut bad = Vec::new();
    if let Err(e) = doctor_clean(s) {
        bad.push(e);
    }
    bad.extend(containers_usable(s, files));
    bad.extend(leaks(dirs).into_iter().map(|l| format!("leaked: {l}")));
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_table_is_parsed() {
        let out = "NAME  STATE    BACKEND  POOL  ORIGIN  SNAPSHOTS\n\
                   a     stopped  dir      d     -       0\n\
                   b     broken   btrfs    bt    a       1\n";
        let l = parse_ls(out);
        assert_eq!(l.len(), 2);
        assert_eq!((l[1].name.as_str(), l[1].state.as_str()), ("b", "broken"));
        assert!(parse_ls("NAME  STATE\n").is_empty());
    }
}
