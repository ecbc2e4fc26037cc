//! The charts of `--out DIR`, drawn with plotters' SVG backend. That backend
//! writes labels as SVG `<text>` elements for the viewer to render, so no font
//! crate is needed: without the `ttf`/`ab_glyph` features plotters only estimates
//! text widths for its layout.

mod bars;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use bars::{labels, space_chart, BarChart};

use crate::error::{BenchError, Result};
use crate::model::{op, Measurement, Report, Suite, Unit};

const WIDTH: u32 = 900;
const MAX_WIDTH: u32 = 2000;
/// Horizontal pixels of a chart outside its plot: y labels and margins.
const PLOT_OVERHEAD: f64 = 96.0;
const SINGLE_HEIGHT: u32 = 500;
/// Charts with one panel per operation: each panel's height, plus the title's.
const PANEL_HEIGHT: u32 = 320;
const TITLE_HEIGHT: u32 = 50;
const LEGEND_HEIGHT: u32 = 30;
const FONT: &str = "sans-serif";
/// plotters writes `font-size` as these over 1.24: 26 becomes 21 px.
const TITLE_SIZE: f64 = 26.0;
const CAPTION_SIZE: f64 = 21.0;
const AXIS_SIZE: f64 = 18.0;
const LABEL_SIZE: f64 = 16.0;
const VALUE_SIZE: f64 = 14.0;

const BERTH: RGBColor = RGBColor(31, 119, 180);
const PRIMITIVE: RGBColor = RGBColor(255, 127, 14);
const REPORTED: RGBColor = RGBColor(44, 160, 44);
const MUTED: RGBColor = RGBColor(110, 110, 110);
/// One colour per backend on line charts.
const LINES: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// A backend and its pool: one group of bars, one line.
type Key = (String, String);

/// One chart file of the output directory.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File name, e.g. `clone.svg`.
    pub file: &'static str,
    pub title: String,
    pub svg: String,
}

/// Every chart the report has data for, in reading order.
pub fn charts(report: &Report) -> Result<Vec<Chart>> {
    let mut out = Vec::new();
    for (file, operation, title) in [
        ("clone.svg", op::SNAPSHOT_CLONE, "Snapshot clone latency"),
        ("copy.svg", op::COPY, "Full copy latency"),
    ] {
        let rows = rows_where(report, |m| {
            m.suite == Suite::Lifecycle && m.operation == operation
        });
        let chart = BarChart::time(&rows, title, "primitive (raw command)");
        out.extend(chart.render(file)?);
    }
    let rows = rows_where(report, |m| {
        m.suite == Suite::Lifecycle && m.operation == op::START
    });
    let start = BarChart::time(&rows, "Start to exit of /bin/true", "floor (primitive)");
    out.extend(start.render("start.svg")?);
    let rows = rows_where(report, |m| {
        m.suite == Suite::Image && m.operation == op::IMAGE_LATER
    });
    let image = BarChart::time(
        &rows,
        "Container #2..N from an image",
        "raw snapshot clone (primitive)",
    );
    out.extend(image.render("image.svg")?);
    out.extend(scale_chart(report)?);
    for (file, unit, title, y_desc) in [
        (
            "io.svg",
            Unit::MibPerSec,
            "fio throughput",
            "throughput (MiB/s), higher is better",
        ),
        ("iops.svg", Unit::Iops, "fio IOPS", "IOPS, higher is better"),
    ] {
        let rows = rows_where(report, |m| m.suite == Suite::Io && m.unit == unit);
        out.extend(BarChart::io(&rows, title, y_desc).render(file)?);
    }
    out.extend(space_chart(report).render("space.svg")?);
    Ok(out)
}

fn rows_where(report: &Report, keep: impl Fn(&Measurement) -> bool) -> Vec<&Measurement> {
    report.results.iter().filter(|m| keep(m)).collect()
}

/// Three significant digits, no trailing zeros: 0.0123, 1.5, 12.3, 1234.
fn significant(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = x.abs().log10().floor() as i32 + 1;
    let decimals = (3 - digits).clamp(0, 6) as usize;
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Snapshot clone time as clones of one container accumulate, a line per backend.
fn scale_chart(report: &Report) -> Result<Option<Chart>> {
    if report.scale.is_empty() {
        return Ok(None);
    }
    let mut lines: Vec<(Key, Vec<(i64, f64)>)> = Vec::new();
    for p in report.scale.iter().filter(|p| p.clone_ms.is_finite()) {
        let key = (p.backend.clone(), p.pool.clone());
        let point = (p.n as i64, p.clone_ms);
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some((_, points)) => points.push(point),
            None => lines.push((key, vec![point])),
        }
    }
    let keys: Vec<Key> = lines.iter().map(|(key, _)| key.clone()).collect();
    let labels = labels(&keys);
    let first = report.scale.iter().map(|p| p.n as i64).min().unwrap_or(1);
    let last = report.scale.iter().map(|p| p.n as i64).max().unwrap_or(1);
    let (first, last) = if first == last {
        (first - 1, last + 1)
    } else {
        (first, last)
    };
    let top = report
        .scale
        .iter()
        .map(|p| p.clone_ms)
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let title = "Snapshot clone time as clones accumulate";
    let svg = draw("scale.svg", (WIDTH, SINGLE_HEIGHT), |root| {
        let body = root.titled(title, (FONT, TITLE_SIZE))?;
        let (legend, body) = body.split_vertically(LEGEND_HEIGHT);
        let entries: Vec<(&str, RGBColor)> = labels
            .iter()
            .enumerate()
            .map(|(i, label)| (label.as_str(), LINES[i % LINES.len()]))
            .collect();
        draw_legend(&legend, Some("backend:"), &entries, Swatch::Line)?;
        let mut chart = ChartBuilder::on(&body)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(first..last, 0.0..top)?;
        let y_label = |y: &f64| significant(*y);
        chart
            .configure_mesh()
            .x_desc("N, the Nth snapshot clone of one container")
            .y_desc("clone time (ms)")
            .y_label_formatter(&y_label)
            .max_light_lines(1)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, AXIS_SIZE))
            .draw()?;
        for (i, (_, points)) in lines.iter().enumerate() {
            let color = LINES[i % LINES.len()];
            let line = LineSeries::new(points.iter().copied(), color.stroke_width(2));
            chart.draw_series(line)?;
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        Ok(())
    })?;
    Ok(Some(Chart {
        file: "scale.svg",
        title: title.to_owned(),
        svg,
    }))
}

#[derive(Clone, Copy)]
enum Swatch {
    Box,
    Line,
}

/// A legend on one line, centred in `area` (a strip under the title) rather than
/// inside the plot, where it would hide bars and lines.
fn draw_legend(
    area: &DrawingArea<SVGBackend, Shift>,
    heading: Option<&str>,
    entries: &[(&str, RGBColor)],
    swatch: Swatch,
) -> Drawn {
    let text_width = |text: &str| text_pixels(text, LABEL_SIZE).ceil() as i32;
    let heading_width = heading.map_or(0, |h| text_width(h) + 12);
    let entry_widths: Vec<i32> = entries
        .iter()
        .map(|(name, _)| 24 + text_width(name) + 24)
        .collect();
    let total = heading_width + entry_widths.iter().sum::<i32>();
    let (width, height) = area.dim_in_pixel();
    let mut x = ((width as i32 - total) / 2).max(4);
    let y = height as i32 / 2;
    let style =
        TextStyle::from((FONT, LABEL_SIZE).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    if let Some(heading) = heading {
        area.draw(&Text::new(heading.to_owned(), (x, y), style.clone()))?;
        x += heading_width;
    }
    for ((name, color), entry_width) in entries.iter().zip(entry_widths) {
        match swatch {
            Swatch::Box => area.draw(&Rectangle::new(
                [(x, y - 7), (x + 14, y + 7)],
                color.filled(),
            ))?,
            Swatch::Line => area.draw(&PathElement::new(
                vec![(x, y), (x + 18, y)],
                color.stroke_width(3),
            ))?,
        }
        area.draw(&Text::new((*name).to_owned(), (x + 24, y), style.clone()))?;
        x += entry_width;
    }
    Ok(())
}

/// About how wide `text` is drawn at `size`: a character is about 0.55 em, and
/// plotters writes sizes over 1.24.
fn text_pixels(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * 0.55 * size / 1.24
}

type Drawn = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Runs `paint` on a white SVG canvas and returns the document.
fn draw(
    file: &str,
    size: (u32, u32),
    paint: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Drawn,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .and_then(|()| paint(&root))
            .and_then(|()| root.present());
        drawn.map_err(|e| BenchError::Invalid(format!("drawing {file}: {e}")))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Measurement;
    use crate::output::sample;

    fn chart<'a>(charts: &'a [Chart], file: &str) -> &'a Chart {
        charts
            .iter()
            .find(|c| c.file == file)
            .unwrap_or_else(|| panic!("no {file}"))
    }

    #[test]
    fn a_failed_row_gets_no_bar_but_keeps_its_backend() {
        let charts = charts(&sample::report()).expect("charts");
        let clone = &chart(&charts, "clone.svg").svg;
        // btrfs, lvm-thin and dir measured, zfs failed; the fifth is the legend's.
        let berth_rects = clone.matches("fill=\"#1F77B4\"").count();
        assert_eq!(berth_rects, 4, "{clone}");
        let texts = sample::texts(clone);
        assert!(texts.iter().any(|t| t == "zfs"), "{texts:?}");
        assert!(texts.iter().any(|t| t == "failed"), "{texts:?}");
        assert!(texts.iter().any(|t| t == "time (ms), lower is better"));
    }

    #[test]
    fn only_charts_with_data_are_drawn() {
        let mut report = sample::report();
        report.results.retain(|m| m.suite == Suite::Lifecycle);
        for m in &mut report.results {
            if m.operation == op::COPY {
                *m = Measurement::new(m.suite, &m.backend, &m.pool, &m.operation, m.unit);
                m.error = Some("no space".to_owned());
            }
        }
        report.scale.clear();
        let files: Vec<&str> = charts(&report)
            .expect("charts")
            .iter()
            .map(|c| c.file)
            .collect();
        assert_eq!(files, ["clone.svg", "start.svg"]);
        report.results.clear();
        assert!(charts(&report).expect("charts").is_empty());
    }

    #[test]
    fn names_are_escaped_in_the_svg() {
        let mut report = sample::report();
        for m in &mut report.results {
            m.backend = format!("{}<&\"'>", m.backend);
        }
        for p in &mut report.scale {
            p.backend = format!("{}<&>", p.backend);
        }
        for c in charts(&report).expect("charts") {
            sample::check_well_formed(&c.svg).unwrap_or_else(|e| panic!("{}: {e}", c.file));
        }
    }

    #[test]
    fn figures_read_short() {
        assert_eq!(significant(0.0123456), "0.0123");
        assert_eq!(significant(12.5), "12.5");
        assert_eq!(significant(210.0), "210");
        assert_eq!(significant(52_000.4), "52000");
        assert_eq!(significant(0.0), "0");
        assert_eq!(bars::human_bytes(16384.0), "16 KiB");
        assert_eq!(bars::human_bytes(52_428_800.0), "50 MiB");
        assert_eq!(bars::human_bytes(512.0), "512 B");
    }
}
