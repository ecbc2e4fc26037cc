//! Parsing of `lvs`/`vgs --reportformat json` and `dumpe2fs -h` output, and the
//! kernel's device-mapper check: pure functions, tested on captured text.

use berth_bdev::{BdevError, Result};
use serde::Deserialize;

/// One row of `lvs -o lv_name,vg_name,lv_size,data_percent,origin,pool_lv,lv_attr
/// --units b --nosuffix --reportformat json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LvInfo {
    pub name: String,
    pub vg: String,
    pub size: u64,
    /// Thin volumes and pools: share of the data space mapped; classic snapshots:
    /// share of the COW space used. `None` for plain LVs.
    pub data_percent: Option<f64>,
    pub origin: Option<String>,
    pub pool_lv: Option<String>,
    pub attr: String,
}

impl LvInfo {
    fn kind(&self) -> char {
        self.attr.chars().next().unwrap_or('-')
    }

    pub fn is_thin_pool(&self) -> bool {
        self.kind() == 't'
    }

    /// A classic (COW) snapshot, valid or invalidated.
    pub fn is_classic_snapshot(&self) -> bool {
        matches!(self.kind(), 's' | 'S')
    }

    /// A classic snapshot that overflowed its COW space and can no longer be read.
    pub fn is_invalid_snapshot(&self) -> bool {
        self.kind() == 'S'
    }

    pub fn is_thin_volume(&self) -> bool {
        self.kind() == 'V'
    }

    /// Bytes the volume holds: mapped thin blocks, or used COW space.
    pub fn allocated(&self) -> Option<u64> {
        let pct = self.data_percent?;
        Some(((self.size as f64) * pct / 100.0).round() as u64)
    }
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}

#[derive(Deserialize)]
struct LvSection {
    #[serde(default)]
    lv: Vec<RawLv>,
}

#[derive(Deserialize)]
struct VgSection {
    #[serde(default)]
    vg: Vec<RawVg>,
}

#[derive(Deserialize)]
struct RawVg {
    vg_name: String,
}

#[derive(Deserialize)]
struct RawLv {
    lv_name: String,
    vg_name: String,
    lv_size: String,
    #[serde(default)]
    data_percent: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    pool_lv: String,
    lv_attr: String,
}

fn bad(what: &'static str, reason: impl std::fmt::Display) -> BdevError {
    BdevError::Parse {
        what,
        reason: reason.to_string(),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Parses `lvs … --reportformat json` output.
pub fn parse_lvs(json: &str) -> Result<Vec<LvInfo>> {
    let r: Report<LvSection> = serde_json::from_str(json).map_err(|e| bad("lvs output", e))?;
    let mut out = Vec::new();
    for raw in r.report.into_iter().flat_map(|s| s.lv) {
        let size = raw
            .lv_size
            .trim()
            .parse::<u64>()
            .map_err(|e| bad("lvs lv_size", format!("{:?}: {e}", raw.lv_size)))?;
        let data_percent = match raw.data_percent.trim() {
            "" => None,
            p => Some(
                p.parse::<f64>()
                    .map_err(|e| bad("lvs data_percent", format!("{p:?}: {e}")))?,
            ),
        };
        out.push(LvInfo {
            name: raw.lv_name,
            vg: raw.vg_name,
            size,
            data_percent,
            origin: non_empty(raw.origin),
            pool_lv: non_empty(raw.pool_lv),
            attr: raw.lv_attr,
        });
    }
    Ok(out)
}

/// Volume group names in `vgs -o vg_name --reportformat json` output.
pub fn parse_vgs(json: &str) -> Result<Vec<String>> {
    let r: Report<VgSection> = serde_json::from_str(json).map_err(|e| bad("vgs output", e))?;
    Ok(r.report
        .into_iter()
        .flat_map(|s| s.vg)
        .map(|v| v.vg_name)
        .collect())
}

/// Free bytes of the one volume group in `vgs -o vg_free --units b --nosuffix
/// --reportformat json VG` output.
pub fn parse_vg_free(json: &str) -> Result<u64> {
    #[derive(Deserialize)]
    struct Section {
        #[serde(default)]
        vg: Vec<Free>,
    }
    #[derive(Deserialize)]
    struct Free {
        vg_free: String,
    }
    let r: Report<Section> = serde_json::from_str(json).map_err(|e| bad("vgs output", e))?;
    let free = r
        .report
        .into_iter()
        .flat_map(|s| s.vg)
        .next()
        .ok_or_else(|| bad("vgs output", "no volume group"))?
        .vg_free;
    free.trim()
        .parse()
        .map_err(|e| bad("vgs vg_free", format!("{free:?}: {e}")))
}

/// Bytes in use in an ext2/3/4 filesystem, from `dumpe2fs -h` (superblock counters).
pub fn parse_dumpe2fs_used(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    let count = field("Block count")?;
    let free = field("Free blocks")?;
    let bsize = field("Block size")?;
    Some(count.saturating_sub(free) * bsize)
}

/// Whether /proc/misc lists the device-mapper control device.
pub fn misc_has_device_mapper(proc_misc: &str) -> bool {
    proc_misc
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from lvm2 2.03.16 (Debian 12) inside the test VM.
    const LVS: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pool", "vg_name":"vg0", "lv_size":"1073741824", "data_percent":"1.52", "origin":"", "pool_lv":"", "lv_attr":"twi-aotz--"},
                  {"lv_name":"c1", "vg_name":"vg0", "lv_size":"268435456", "data_percent":"6.09", "origin":"", "pool_lv":"pool", "lv_attr":"Vwi-a-tz--"},
                  {"lv_name":"c1+s1", "vg_name":"vg0", "lv_size":"268435456", "data_percent":"6.09", "origin":"c1", "pool_lv":"pool", "lv_attr":"Vwi-a-tz-k"},
                  {"lv_name":"plain", "vg_name":"vg0", "lv_size":"268435456", "data_percent":"", "origin":"", "pool_lv":"", "lv_attr":"owi-a-s---"},
                  {"lv_name":"plain+s", "vg_name":"vg0", "lv_size":"268435456", "data_percent":"0.01", "origin":"plain", "pool_lv":"", "lv_attr":"swi-a-s---"}
              ]
          }
      ]
  }
"#;

    #[test]
    fn lvs_rows_are_typed() {
        let lvs = parse_lvs(LVS).unwrap();
        assert_eq!(lvs.len(), 5);
        assert!(lvs[0].is_thin_pool());
        assert!(lvs[1].is_thin_volume());
        assert_eq!(lvs[1].pool_lv.as_deref(), Some("pool"));
        assert_eq!(lvs[1].allocated(), Some(16347719));
        assert_eq!(lvs[2].origin.as_deref(), Some("c1"));
        assert_eq!(lvs[3].data_percent, None);
        assert_eq!(lvs[3].allocated(), None);
        assert_eq!(lvs[3].origin, None);
        assert!(lvs[4].is_classic_snapshot());
        assert!(!lvs[4].is_invalid_snapshot());
    }

    #[test]
    fn empty_and_broken_reports() {
        assert!(parse_lvs(r#"{"report":[{"lv":[]}]}"#).unwrap().is_empty());
        assert!(parse_lvs("").is_err());
        let e = parse_lvs(
            r#"{"report":[{"lv":[{"lv_name":"a","vg_name":"v","lv_size":"12.5m","lv_attr":"-wi-a-----"}]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("lv_size"), "{e}");
    }

    #[test]
    fn vg_free_bytes() {
        let j = r#"{"report":[{"vg":[{"vg_free":"125829120"}]}]}"#;
        assert_eq!(parse_vg_free(j).unwrap(), 125829120);
        assert!(parse_vg_free(r#"{"report":[{"vg":[]}]}"#).is_err());
        assert!(parse_vg_free(r#"{"report":[{"vg":[{"vg_free":"x"}]}]}"#).is_err());
    }

    #[test]
    fn vgs_names() {
        let j = r#"  {
      "report": [
          {
              "vg": [
                  {"vg_name":"berth0"}
              ]
          }
      ]
  }"#;
        assert_eq!(parse_vgs(j).unwrap(), vec!["berth0".to_owned()]);
        assert!(parse_vgs(r#"{"report":[{"vg":[]}]}"#).unwrap().is_empty());
    }

    #[test]
    fn dumpe2fs_used_blocks() {
        let t = "dumpe2fs 1.47.0 (5-Feb-2023)\nFilesystem volume name:   <none>\n\
                 Block count:              65536\nReserved block count:     3276\n\
                 Free blocks:              60000\nFree inodes:              16373\n\
                 Block size:               4096\n";
        assert_eq!(parse_dumpe2fs_used(t), Some(5536 * 4096));
        assert_eq!(parse_dumpe2fs_used("Block count: 1\n"), None);
    }

    #[test]
    fn device_mapper_in_proc_misc() {
        assert!(misc_has_device_mapper(
            "183 hw_random\n236 device-mapper\n237 loop-control\n"
        ));
        assert!(!misc_has_device_mapper("183 hw_random\n237 loop-control\n"));
    }
}
