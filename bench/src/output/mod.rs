//! What `berth bench --out DIR` writes: the report as JSON, a CSV per suite,
//! the scale points, SVG charts and an `index.html` that shows them together.

pub mod html;
pub mod svg;

#[cfg(test)]
mod sample;

use std::path::{Path, PathBuf};

use crate::error::{BenchError, Result};
use crate::model::{Report, Suite};

const CSV_HEADER: [&str; 14] = [
    "backend",
    "pool",
    "operation",
    "unit",
    "berth_median",
    "berth_min",
    "berth_max",
    "runs",
    "primitive",
    "primitive_median",
    "ratio",
    "reported",
    "note",
    "error",
];

/// One suite's measurements as CSV, a header row first. Empty cells are
/// figures that do not exist (failed rows, no primitive).
pub fn csv(report: &Report, suite: Suite) -> String {
    let mut out = csv_line(CSV_HEADER.iter().map(|h| h.to_string()));
    for m in report.results.iter().filter(|m| m.suite == suite) {
        let number = |x: Option<f64>| x.map(|x| x.to_string()).unwrap_or_default();
        out += &csv_line([
            m.backend.clone(),
            m.pool.clone(),
            m.operation.clone(),
            m.unit.label().to_owned(),
            number(m.berth.map(|s| s.median)),
            number(m.berth.map(|s| s.min)),
            number(m.berth.map(|s| s.max)),
            m.berth.map(|s| s.runs.to_string()).unwrap_or_default(),
            m.primitive
                .as_ref()
                .map(|p| p.command.clone())
                .unwrap_or_default(),
            number(m.primitive.as_ref().map(|p| p.value.median)),
            number(m.ratio),
            m.reported.map(|r| r.to_string()).unwrap_or_default(),
            m.note.clone().unwrap_or_default(),
            m.error.clone().unwrap_or_default(),
        ]);
    }
    out
}

/// The scale suite's points: the time of each snapshot clone as N grows.
pub fn scale_csv(report: &Report) -> String {
    let mut out = csv_line(["backend", "pool", "n", "clone_ms"].map(String::from));
    for p in &report.scale {
        out += &csv_line([
            p.backend.clone(),
            p.pool.clone(),
            p.n.to_string(),
            p.clone_ms.to_string(),
        ]);
    }
    out
}

fn csv_line(fields: impl IntoIterator<Item = String>) -> String {
    let fields: Vec<String> = fields.into_iter().map(|f| csv_field(&f)).collect();
    fields.join(",") + "\n"
}

/// RFC 4180: a field with a comma, quote or line break is quoted, its quotes doubled.
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// Writes the whole report into `dir` (created if needed), each file replaced
/// atomically, and returns the paths written: `report.json`, `SUITE.csv` for
/// each suite with rows, `scale-points.csv`, the charts, `index.html`.
pub fn write_dir(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(BenchError::io("creating", dir))?;
    let mut files: Vec<(String, String)> = Vec::new();
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| BenchError::Invalid(format!("encoding the report as JSON: {e}")))?;
    files.push(("report.json".to_owned(), json + "\n"));
    for suite in Suite::ALL {
        if report.results.iter().any(|m| m.suite == suite) {
            files.push((format!("{}.csv", suite.name()), csv(report, suite)));
        }
    }
    if !report.scale.is_empty() {
        files.push(("scale-points.csv".to_owned(), scale_csv(report)));
    }
    let charts = svg::charts(report)?;
    let data_files: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let index = html::index(report, &charts, &data_files);
    for chart in charts {
        files.push((chart.file.to_owned(), chart.svg));
    }
    files.push(("index.html".to_owned(), index));

    let mut written = Vec::with_capacity(files.len());
    for (name, contents) in files {
        let path = dir.join(name);
        berth_bdev::fsutil::atomic_write(&path, contents.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_the_header_and_quotes_what_needs_it() {
        let report = sample::report();
        let text = csv(&report, Suite::Lifecycle);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "backend,pool,operation,unit,berth_median,berth_min,berth_max,runs,\
                 primitive,primitive_median,ratio,reported,note,error"
            )
        );
        assert!(text.contains(
            "btrfs,/pools/bt,snapshot clone,ms,12.5,11,14.25,5,\
             btrfs subvolume snapshot SRC DST,10,1.25,,,\n"
        ));
        // A comma, quotes and a line break in one field: one quoted field.
        assert!(
            text.contains("\"cold, \"\"dropped\"\" caches\nthen ran\""),
            "{text}"
        );
        // The failed row: no figures, the error kept.
        assert!(text.contains("zfs,tank/berth,snapshot clone,ms,,,,,,,,,,dataset busy\n"));
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
    }

    #[test]
    fn every_record_has_every_column() {
        let report = sample::report();
        for suite in Suite::ALL {
            let text = csv(&report, suite);
            for record in sample::parse_csv(&text) {
                assert_eq!(record.len(), CSV_HEADER.len(), "{suite:?}: {record:?}");
            }
        }
        let records = sample::parse_csv(&csv(&report, Suite::Lifecycle));
        let quoted = records.iter().find(|r| r[0] == "dir").expect("the dir row");
        assert_eq!(quoted[12], "cold, \"dropped\" caches\nthen ran");
    }

    #[test]
    fn scale_csv_lists_every_point() {
        let report = sample::report();
        let records = sample::parse_csv(&scale_csv(&report));
        assert_eq!(records[0], ["backend", "pool", "n", "clone_ms"]);
        assert_eq!(records.len(), report.scale.len() + 1);
        assert_eq!(records[1], ["btrfs", "/pools/bt", "1", "10.5"]);
    }

    #[test]
    fn write_dir_writes_json_csvs_charts_and_a_page() {
        let report = sample::report();
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("out");
        let written = write_dir(&report, &dir).expect("write_dir");
        let names: Vec<String> = written
            .iter()
            .map(|p| {
                assert_eq!(p.parent(), Some(dir.as_path()));
                p.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let expected = [
            "report.json",
            "lifecycle.csv",
            "io.csv",
            "space.csv",
            "scale-points.csv",
            "clone.svg",
            "copy.svg",
            "start.svg",
            "scale.svg",
            "io.svg",
            "iops.svg",
            "space.svg",
            "index.html",
        ];
        assert_eq!(names, expected);
        // Nothing else: no temporary files left behind.
        let mut present: Vec<String> = std::fs::read_dir(&dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(present, sorted);

        let json = std::fs::read_to_string(dir.join("report.json")).expect("json");
        assert_eq!(
            json,
            serde_json::to_string_pretty(&report).expect("json") + "\n"
        );
        let back: Report = serde_json::from_str(&json).expect("parses back");
        assert_eq!(back.results.len(), report.results.len());

        for name in names.iter().filter(|n| n.ends_with(".svg")) {
            let svg = std::fs::read_to_string(dir.join(name)).expect("svg");
            let root = sample::check_well_formed(&svg).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(root, "svg", "{name}");
            assert!(svg.trim_end().ends_with("</svg>"), "{name}");
            let texts = sample::texts(&svg);
            let has = |needle: &str| texts.iter().any(|t| t.contains(needle));
            if name == "scale.svg" {
                assert!(has("clone time (ms)") && has("N, the Nth snapshot clone"));
                assert!(has("backend:") && has("btrfs") && has("lvm-thin"));
            } else {
                assert!(has("backend"), "{name}: no x axis description in {texts:?}");
                assert!(has("btrfs"), "{name}: no backend name in {texts:?}");
            }
            let unit = match name.as_str() {
                "io.svg" => "MiB/s",
                "iops.svg" => "IOPS",
                "space.svg" => "MiB",
                _ => "ms",
            };
            assert!(has(unit), "{name}: no unit {unit} in {texts:?}");
        }

        let page = std::fs::read_to_string(dir.join("index.html")).expect("html");
        for name in names.iter().filter(|n| n.ends_with(".svg")) {
            assert!(page.contains(&format!("<img src=\"{name}\"")), "{name}");
        }
        for name in ["report.json", "lifecycle.csv", "scale-points.csv"] {
            assert!(page.contains(&format!("href=\"{name}\"")), "{name}");
        }
        assert!(!page.contains("<script"), "hostile note not escaped");
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
    }

    #[test]
    fn write_dir_replaces_earlier_files_and_skips_empty_suites() {
        let mut report = sample::report();
        let tmp = tempfile::tempdir().expect("tempdir");
        write_dir(&report, tmp.path()).expect("first write");
        report.results.retain(|m| m.suite == Suite::Lifecycle);
        report.scale.clear();
        let written = write_dir(&report, tmp.path()).expect("second write");
        let names: Vec<_> = written
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "report.json",
                "lifecycle.csv",
                "clone.svg",
                "copy.svg",
                "start.svg",
                "index.html"
            ]
        );
        let json = std::fs::read_to_string(tmp.path().join("report.json")).expect("json");
        let back: Report = serde_json::from_str(&json).expect("parses back");
        assert_eq!(
            back.results.len(),
            report.results.len(),
            "report.json replaced"
        );
    }
}
