//! `index.html`: one static page with the host, the settings, a table per
//! suite and the charts. No scripts and nothing fetched from elsewhere, so it
//! opens from the output directory as it is.

use std::fmt::Write as _;

use crate::model::{Measurement, Report, Suite, Unit};
use crate::output::svg::Chart;
use crate::stats::Summary;

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1000px;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.num{text-align:right;white-space:nowrap}\
.error{color:#b00020}.muted{color:#777}code{font-size:0.9em}\
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}";

/// The page for `report`; `charts` and `data_files` are the other files of the
/// output directory, shown and linked.
pub fn index(report: &Report, charts: &[Chart], data_files: &[&str]) -> String {
    let mut page = String::new();
    let started = utc_date(report.started);
    page += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\" />\n";
    let _ = writeln!(page, "<title>berth bench, {}</title>", escape(&started));
    let _ = writeln!(page, "<style>{STYLE}</style>\n</head>\n<body>");
    page += "<h1>berth bench</h1>\n";
    let _ = writeln!(
        page,
        "<p>berth {}, started {}, ran {:.0} s. Figures are medians [min–max] over the runs; \
         the ratio is berth's median over the primitive's (for times, 1 means berth costs \
         nothing over the raw command).</p>",
        escape(&report.berth_version),
        escape(&started),
        report.seconds
    );
    host(&mut page, report);
    settings(&mut page, report);
    skipped(&mut page, report);
    for suite in Suite::ALL {
        let rows: Vec<&Measurement> = report.results.iter().filter(|m| m.suite == suite).collect();
        if !rows.is_empty() {
            suite_table(&mut page, suite, &rows);
        }
    }
    if !charts.is_empty() {
        page += "<h2>Charts</h2>\n";
        for chart in charts {
            let (file, title) = (escape(chart.file), escape(&chart.title));
            let _ = writeln!(
                page,
                "<figure><img src=\"{file}\" alt=\"{title}\" /><figcaption>{title}</figcaption></figure>"
            );
        }
    }
    if !data_files.is_empty() {
        page += "<h2>Data</h2>\n<ul>\n";
        for file in data_files {
            let file = escape(file);
            let _ = writeln!(page, "<li><a href=\"{file}\">{file}</a></li>");
        }
        page += "</ul>\n";
    }
    page += "</body>\n</html>\n";
    page
}

fn host(page: &mut String, report: &Report) {
    let h = &report.host;
    *page += "<h2>Host</h2>\n<table>\n";
    let memory = bytes_text(h.memory_bytes as f64);
    for (key, value) in [
        ("kernel", h.kernel.clone()),
        ("CPUs", h.cpus.to_string()),
        ("CPU model", h.cpu_model.clone()),
        ("memory", memory),
    ] {
        let _ = writeln!(page, "<tr><th>{key}</th><td>{}</td></tr>", escape(&value));
    }
    *page += "</table>\n";
    if !h.filesystems.is_empty() {
        *page += "<h3>Filesystems under each pool</h3>\n<table>\n\
                  <tr><th>backend</th><th>pool</th><th>filesystem</th></tr>\n";
        for fs in &h.filesystems {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                escape(&fs.backend),
                escape(&fs.pool),
                escape(&fs.under)
            );
        }
        *page += "</table>\n";
    }
}

fn settings(page: &mut String, report: &Report) {
    let (r, s) = (&report.rootfs, &report.settings);
    let suites: Vec<&str> = s.suites.iter().map(|x| x.name()).collect();
    *page += "<h2>Rootfs and settings</h2>\n<table>\n";
    for (key, value) in [
        ("rootfs", r.source.clone()),
        (
            "rootfs size",
            format!("{} files, {}", r.files, bytes_text(r.bytes as f64)),
        ),
        ("suites", suites.join(", ")),
        ("runs per figure", s.runs.to_string()),
        (
            "page cache",
            if s.cold {
                "dropped before each run"
            } else {
                "warm"
            }
            .to_owned(),
        ),
        ("clones (scale suite)", s.clones.to_string()),
    ] {
        let _ = writeln!(page, "<tr><th>{key}</th><td>{}</td></tr>", escape(&value));
    }
    *page += "</table>\n";
}

fn skipped(page: &mut String, report: &Report) {
    *page += "<h2>Skipped backends</h2>\n";
    if report.skipped.is_empty() {
        *page += "<p>None: every backend was measured.</p>\n";
        return;
    }
    *page += "<table>\n<tr><th>backend</th><th>why</th></tr>\n";
    for s in &report.skipped {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&s.backend),
            escape(&s.reason)
        );
    }
    *page += "</table>\n";
}

/// Rows grouped by operation, in the order operations first appear.
fn suite_table(page: &mut String, suite: Suite, rows: &[&Measurement]) {
    let mut rows = rows.to_vec();
    let first_seen = |op: &str| rows.iter().position(|m| m.operation == op);
    let order: Vec<Option<usize>> = rows.iter().map(|m| first_seen(&m.operation)).collect();
    let mut ordered: Vec<(Option<usize>, &Measurement)> =
        order.into_iter().zip(rows.drain(..)).collect();
    ordered.sort_by_key(|(first, _)| *first);
    let with_reported = ordered.iter().any(|(_, m)| m.reported.is_some());

    let _ = writeln!(page, "<h2>Suite: {}</h2>\n<table>", suite.name());
    *page += "<tr><th>operation</th><th>backend</th><th>berth median [min–max]</th>\
              <th>runs</th><th>primitive</th><th>primitive median</th><th>ratio</th>";
    if with_reported {
        *page += "<th>berth info reports</th>";
    }
    *page += "<th>note / error</th></tr>\n";
    for (_, m) in ordered {
        let berth = m.berth.map_or_else(
            || "<span class=\"error\">failed</span>".to_owned(),
            |s| escape(&spread(s, m.unit)),
        );
        let runs = m.berth.map(|s| s.runs.to_string()).unwrap_or_default();
        let (command, primitive) = m.primitive.as_ref().map_or_else(
            || {
                (
                    "<span class=\"muted\">none</span>".to_owned(),
                    String::new(),
                )
            },
            |p| {
                (
                    format!("<code>{}</code>", escape(&p.command)),
                    escape(&figure(p.value.median, m.unit)),
                )
            },
        );
        let ratio = m.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}<br /><small class=\"muted\">{}</small></td>\
             <td class=\"num\">{berth}</td><td class=\"num\">{runs}</td><td>{command}</td>\
             <td class=\"num\">{primitive}</td><td class=\"num\">{ratio}</td>",
            escape(&m.operation),
            escape(&m.backend),
            escape(&m.pool),
        );
        if with_reported {
            let reported = m.reported.map(|r| figure(r as f64, Unit::Bytes));
            let _ = write!(
                page,
                "<td class=\"num\">{}</td>",
                escape(&reported.unwrap_or_default())
            );
        }
        let mut remarks = Vec::new();
        if let Some(error) = &m.error {
            remarks.push(format!("<span class=\"error\">{}</span>", multiline(error)));
        }
        if let Some(note) = &m.note {
            remarks.push(multiline(note));
        }
        let _ = writeln!(page, "<td>{}</td></tr>", remarks.join("<br />"));
    }
    *page += "</table>\n";
}

/// `median [min–max] unit`; bytes each in the binary unit that suits them.
fn spread(s: Summary, unit: Unit) -> String {
    match unit {
        Unit::Bytes => format!(
            "{} [{}–{}]",
            bytes_text(s.median),
            bytes_text(s.min),
            bytes_text(s.max)
        ),
        unit => format!("{} [{}–{}] {}", s.median, s.min, s.max, unit.label()),
    }
}

/// A figure with its unit; bytes in the binary unit that suits them.
fn figure(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => bytes_text(value),
        unit => format!("{value} {}", unit.label()),
    }
}

fn bytes_text(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes.abs() < 1024.0 {
        return format!("{bytes} B");
    }
    let mut value = bytes / 1024.0;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `YYYY-MM-DD HH:MM UTC` from seconds since the epoch (days to a civil date
/// after Howard Hinnant's algorithm).
fn utc_date(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// Escaped, its line breaks kept (an error often carries a command's stderr).
fn multiline(text: &str) -> String {
    escape(text).replace('\n', "<br />")
}

/// Text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::sample;

    fn page() -> String {
        let report = sample::report();
        let charts = crate::output::svg::charts(&report).expect("charts");
        index(&report, &charts, &["report.json", "lifecycle.csv"])
    }

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(escape("a&b<c>d\"e'f"), "a&amp;b&lt;c&gt;d&quot;e&#39;f");
        let page = page();
        assert!(!page.contains(sample::HOSTILE_NOTE));
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
        assert!(page.contains("needs &lt;overlayfs&gt; &amp; a kernel that has it"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn shows_host_settings_rows_and_charts() {
        let page = page();
        // Void elements are written self-closed, so the page also reads as XML.
        assert_eq!(sample::check_well_formed(&page), Ok("html".to_owned()));
        for expected in [
            "6.8.0-31-generic",
            "AMD EPYC 7B13",
            "8.0 GiB",
            "btrfs on a loop-mounted image",
            "1234 files",
            "<h2>Suite: lifecycle</h2>",
            "<h2>Suite: io</h2>",
            "<h2>Suite: space</h2>",
            "12.5 [11–14.25] ms",
            "<code>btrfs subvolume snapshot SRC DST</code>",
            "1.25",
            "<span class=\"error\">dataset busy</span>",
            "16.0 KiB",
            "<img src=\"clone.svg\"",
            "<img src=\"scale.svg\"",
            "<a href=\"report.json\">",
            "2023-11-14 22:13 UTC",
        ] {
            assert!(page.contains(expected), "missing {expected}");
        }
        assert!(!page.contains("src=\"http"), "external resource");
        // The failed zfs clone is listed under its operation, next to the others.
        let clone_rows = page
            .find("snapshot clone</td><td>btrfs")
            .expect("btrfs clone row");
        let failed = page
            .find("snapshot clone</td><td>zfs")
            .expect("zfs clone row");
        let copy = page.find("<tr><td>copy</td>").expect("copy row");
        assert!(clone_rows < failed && failed < copy);
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
