//! Usage from btrfs quota groups, when the filesystem has quotas enabled.

use std::ffi::OsStr;
use std::path::Path;

use berth_bdev::cmd::{CmdError, Runner};
use berth_bdev::{BdevError, Result};

/// One subvolume's qgroup figures, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Qgroup {
    pub referenced: u64,
    pub exclusive: u64,
    pub max_referenced: Option<u64>,
    pub max_exclusive: Option<u64>,
}

/// What `btrfs qgroup show` said about a subvolume.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum QgroupAnswer {
    /// Quotas are off on this filesystem.
    Disabled,
    /// The figures, with any warning the tool printed (a rescan in progress).
    Figures(Qgroup, Option<String>),
}

/// Asks `btrfs qgroup show` for the qgroup `0/ID` of the subvolume at `path`.
pub(super) fn query(runner: &dyn Runner, path: &Path, id: u64) -> Result<QgroupAnswer> {
    let args = [
        OsStr::new("qgroup"),
        OsStr::new("show"),
        OsStr::new("--raw"),
        OsStr::new("-re"),
        OsStr::new("-f"),
        path.as_os_str(),
    ];
    match runner.run("btrfs", &args) {
        Ok(out) => {
            let q = parse_show(&out.stdout, id).ok_or_else(|| BdevError::Parse {
                what: "btrfs qgroup show output",
                reason: format!("no row for qgroup 0/{id} in {:?}", out.stdout),
            })?;
            let warning = out
                .stderr
                .lines()
                .find(|l| l.contains("WARNING"))
                .map(|l| l.trim().to_owned());
            Ok(QgroupAnswer::Figures(q, warning))
        }
        Err(e @ CmdError::Failed { .. }) if quotas_disabled(e.stderr()) => {
            Ok(QgroupAnswer::Disabled)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a failed `btrfs qgroup show` failed because quotas are off.
pub(super) fn quotas_disabled(stderr: &str) -> bool {
    stderr.contains("quotas not enabled")
}

/// Parses `btrfs qgroup show --raw -re` output (columns: qgroupid, referenced,
/// exclusive, max referenced, max exclusive, then a path on newer versions) and
/// returns the row of qgroup `0/ID`.
pub(super) fn parse_show(text: &str, id: u64) -> Option<Qgroup> {
    let want = format!("0/{id}");
    let limit = |s: &str| -> Option<Option<u64>> {
        match s {
            "none" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&want.as_str()) {
            return None;
        }
        Some(Qgroup {
            referenced: f.get(1)?.parse().ok()?,
            exclusive: f.get(2)?.parse().ok()?,
            max_referenced: limit(f.get(3)?)?,
            max_exclusive: limit(f.get(4)?)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    /// Captured from btrfs-progs v6.2 after `btrfs quota enable`.
    const SHOW_ALL: &str = "\
Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path 
--------    ----------    ---------  --------------  -------------   ---- 
0/5              16384        16384            none           none   <toplevel>
0/256        209747968        16384            none           none   pool/base
0/257        209747968        32768       536870912           none   pool/clone
";

    /// btrfs-progs before 6.0 has no path column.
    const SHOW_OLD: &str = "\
qgroupid         rfer         excl     max_rfer     max_excl 
--------         ----         ----     --------     -------- 
0/258           16384        16384         none    268435456 
";

    #[test]
    fn rows_are_found_by_qgroup_id() {
        assert_eq!(
            parse_show(SHOW_ALL, 256),
            Some(Qgroup {
                referenced: 209_747_968,
                exclusive: 16384,
                max_referenced: None,
                max_exclusive: None
            })
        );
        let c = parse_show(SHOW_ALL, 257).unwrap();
        assert_eq!(c.exclusive, 32768);
        assert_eq!(c.max_referenced, Some(536_870_912));
        assert_eq!(parse_show(SHOW_ALL, 25), None);
        assert_eq!(
            parse_show(SHOW_OLD, 258).unwrap().max_exclusive,
            Some(268_435_456)
        );
        assert_eq!(parse_show("0/259 12 x none none", 259), None);
    }

    #[test]
    fn disabled_quotas_are_recognised() {
        let r = ScriptedRunner::new().fail(
            "btrfs qgroup show",
            "ERROR: can't list qgroups: quotas not enabled",
        );
        assert_eq!(
            query(&r, Path::new("/p/v"), 256).unwrap(),
            QgroupAnswer::Disabled
        );
        let r = ScriptedRunner::new().fail("btrfs qgroup show", "ERROR: cannot access '/p/v'");
        assert!(query(&r, Path::new("/p/v"), 256).is_err());
    }

    #[test]
    fn figures_come_with_the_rescan_warning() {
        let r = ScriptedRunner::new().expect("btrfs qgroup show --raw -re -f /p/base", SHOW_ALL);
        match query(&r, Path::new("/p/base"), 256).unwrap() {
            QgroupAnswer::Figures(q, None) => assert_eq!(q.exclusive, 16384),
            other => panic!("{other:?}"),
        }
    }
}
