//! Grouped bar charts: backends on the x axis, berth's figure next to the
//! primitive's (or to what `berth info` reports), one panel per operation.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    draw, draw_legend, rows_where, significant, text_pixels, Chart, Drawn, Key, Swatch, AXIS_SIZE,
    BERTH, CAPTION_SIZE, FONT, LABEL_SIZE, LEGEND_HEIGHT, MAX_WIDTH, MUTED, PANEL_HEIGHT,
    PLOT_OVERHEAD, PRIMITIVE, REPORTED, SINGLE_HEIGHT, TITLE_HEIGHT, TITLE_SIZE, VALUE_SIZE, WIDTH,
};
use crate::error::Result;
use crate::model::{Measurement, Report, Suite, Unit};

/// One bar's figures, already in the axis unit.
#[derive(Debug, Clone, Copy)]
struct Bar {
    value: f64,
    /// The min–max whisker, when the figure is a median of several runs.
    spread: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    /// No row for this backend: nothing drawn.
    Missing,
    /// The row exists but the operation failed: "failed" instead of a bar.
    Failed,
    /// The backend has no such operation (the row's note says why): "n/a".
    NotApplicable,
    Bar(Bar),
}

struct Series {
    name: String,
    color: RGBColor,
    /// One slot per category (backend).
    slots: Vec<Slot>,
}

struct Panel {
    caption: Option<String>,
    series: Vec<Series>,
}

/// Grouped bars: backends on the x axis, one bar per series in each group,
/// one panel per operation.
pub(super) struct BarChart {
    title: String,
    y_desc: String,
    categories: Vec<String>,
    panels: Vec<Panel>,
    /// Values are divided by this before plotting (KiB, MiB...).
    divisor: f64,
    /// Text over a bar, from the undivided value.
    value_text: fn(f64) -> String,
}

impl BarChart {
    /// One panel of berth's time next to the primitive's.
    pub(super) fn time(rows: &[&Measurement], title: &str, primitive_name: &str) -> BarChart {
        let keys = keys(rows);
        let categories = labels(&keys);
        let series = compare_series(rows, &keys, primitive_name);
        BarChart {
            title: format!("{title} per backend (median; whiskers: min–max)"),
            y_desc: "time (ms), lower is better".to_owned(),
            categories,
            panels: vec![Panel {
                caption: None,
                series,
            }],
            divisor: 1.0,
            value_text: significant,
        }
    }

    /// fio figures, a panel per operation: berth next to the primitive.
    pub(super) fn io(rows: &[&Measurement], title: &str, y_desc: &str) -> BarChart {
        BarChart::per_operation(rows, title, y_desc.to_owned(), |rows, keys| {
            compare_series(rows, keys, "primitive")
        })
    }

    /// One panel per operation, in the order operations first appear.
    fn per_operation(
        rows: &[&Measurement],
        title: &str,
        y_desc: String,
        series_of: impl Fn(&[&Measurement], &[Key]) -> Vec<Series>,
    ) -> BarChart {
        let keys = keys(rows);
        let panels = operations(rows)
            .into_iter()
            .map(|operation| {
                let of_op: Vec<&Measurement> = rows
                    .iter()
                    .copied()
                    .filter(|m| m.operation == operation)
                    .collect();
                Panel {
                    series: series_of(&of_op, &keys),
                    caption: Some(operation),
                }
            })
            .collect();
        BarChart {
            title: format!("{title} per backend (median; whiskers: min–max)"),
            y_desc,
            categories: labels(&keys),
            panels,
            divisor: 1.0,
            value_text: significant,
        }
    }

    fn has_data(&self) -> bool {
        self.panels.iter().any(|p| {
            p.series
                .iter()
                .any(|s| s.slots.iter().any(|slot| matches!(slot, Slot::Bar(_))))
        })
    }

    /// `None` when no bar has a figure.
    pub(super) fn render(&self, file: &'static str) -> Result<Option<Chart>> {
        if !self.has_data() {
            return Ok(None);
        }
        let height = match self.panels.len() {
            1 => SINGLE_HEIGHT,
            n => TITLE_HEIGHT + PANEL_HEIGHT * n as u32,
        };
        // Widen the chart rather than let backend names run into each other.
        let widest = self
            .categories
            .iter()
            .map(|c| text_pixels(c, LABEL_SIZE))
            .fold(0.0, f64::max);
        let needed = PLOT_OVERHEAD + (widest + 16.0) * self.categories.len() as f64;
        let width = (needed.ceil() as u32).clamp(WIDTH, MAX_WIDTH);
        let svg = draw(file, (width, height), |root| {
            let body = root.titled(&self.title, (FONT, TITLE_SIZE))?;
            let (legend, body) = body.split_vertically(LEGEND_HEIGHT);
            let entries: Vec<(&str, RGBColor)> = self.panels[0]
                .series
                .iter()
                .map(|s| (s.name.as_str(), s.color))
                .collect();
            draw_legend(&legend, None, &entries, Swatch::Box)?;
            let areas = body.split_evenly((self.panels.len(), 1));
            for (panel, area) in self.panels.iter().zip(&areas) {
                self.draw_panel(panel, area)?;
            }
            Ok(())
        })?;
        Ok(Some(Chart {
            file,
            title: self.title.clone(),
            svg,
        }))
    }

    fn draw_panel(&self, panel: &Panel, area: &DrawingArea<SVGBackend, Shift>) -> Drawn {
        let groups = self.categories.len();
        let bars = panel.series.iter().flat_map(|s| &s.slots);
        let top = bars
            .filter_map(|slot| match slot {
                Slot::Bar(b) => Some(b.spread.map_or(b.value, |(_, hi)| hi.max(b.value))),
                _ => None,
            })
            .fold(0.0_f64, f64::max)
            / self.divisor;
        // Room above the tallest bar for its label.
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut builder = ChartBuilder::on(area);
        if let Some(caption) = &panel.caption {
            builder.caption(caption, (FONT, CAPTION_SIZE));
        }
        let mut chart = builder
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(Groups(groups), 0.0..top)?;
        let x_label = |x: &f64| {
            let i = x.floor() as usize;
            self.categories.get(i).cloned().unwrap_or_default()
        };
        let y_label = |y: &f64| significant(*y);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("backend")
            .y_desc(self.y_desc.as_str())
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .max_light_lines(1)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, AXIS_SIZE))
            .draw()?;

        let slot_width = 0.8 / panel.series.len().max(1) as f64;
        let pixels = f64::from(area.dim_in_pixel().0) - PLOT_OVERHEAD;
        // Labels only where they fit over the bar.
        let bar_pixels = pixels / groups.max(1) as f64 * slot_width;
        let fits = |text: &str| text_pixels(text, VALUE_SIZE) <= bar_pixels + 6.0;
        let small = TextStyle::from((FONT, VALUE_SIZE).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for (s, series) in panel.series.iter().enumerate() {
            let left = |group: usize| group as f64 + 0.1 + s as f64 * slot_width;
            let mut rects = Vec::new();
            let mut whiskers = Vec::new();
            let mut texts = Vec::new();
            for (group, slot) in series.slots.iter().enumerate() {
                let (x0, x1) = (
                    left(group) + slot_width * 0.05,
                    left(group) + slot_width * 0.95,
                );
                let centre = (x0 + x1) / 2.0;
                match slot {
                    Slot::Missing => {}
                    Slot::Failed => texts.push(("failed".to_owned(), centre, 0.0, &MUTED)),
                    Slot::NotApplicable => texts.push(("n/a".to_owned(), centre, 0.0, &MUTED)),
                    Slot::Bar(bar) => {
                        let value = bar.value / self.divisor;
                        rects.push(Rectangle::new(
                            [(x0, 0.0), (x1, value)],
                            series.color.filled(),
                        ));
                        let mut label_at = value;
                        if let Some((lo, hi)) = bar.spread {
                            let (lo, hi) = (lo / self.divisor, hi / self.divisor);
                            let cap = (x1 - x0) / 4.0;
                            whiskers.push(vec![(centre, lo), (centre, hi)]);
                            whiskers.push(vec![(centre - cap, hi), (centre + cap, hi)]);
                            whiskers.push(vec![(centre - cap, lo), (centre + cap, lo)]);
                            label_at = label_at.max(hi);
                        }
                        let text = (self.value_text)(bar.value);
                        texts.push((text, centre, label_at, &BLACK));
                    }
                }
            }
            chart.draw_series(rects)?;
            chart.draw_series(
                whiskers
                    .into_iter()
                    .map(|points| PathElement::new(points, BLACK.stroke_width(1))),
            )?;
            chart.draw_series(texts.into_iter().filter(|t| fits(&t.0)).map(
                |(text, x, y, color)| {
                    EmptyElement::at((x, y)) + Text::new(text, (0, -3), small.color(color))
                },
            ))?;
        }
        Ok(())
    }
}

/// An x axis of `n` groups, group `i` spanning `i..i + 1`, with a tick (and so a
/// label) at each group's centre rather than at round numbers.
struct Groups(usize);

impl Ranged for Groups {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (start, end): (i32, i32)) -> i32 {
        let span = f64::from(end - start);
        start + (span * value / self.0.max(1) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only major ticks: light mesh lines between groups would read as bars.
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.0 as f64
    }
}

/// The (backend, pool) pairs of `rows`, in order of appearance.
fn keys(rows: &[&Measurement]) -> Vec<Key> {
    let mut keys: Vec<Key> = Vec::new();
    for m in rows {
        let key = (m.backend.clone(), m.pool.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// Axis labels: the backend, with the pool when a backend ran on several pools.
pub(super) fn labels(keys: &[Key]) -> Vec<String> {
    keys.iter()
        .map(|(backend, pool)| {
            if keys.iter().filter(|(b, _)| b == backend).count() > 1 {
                format!("{backend} ({pool})")
            } else {
                backend.clone()
            }
        })
        .collect()
}

fn operations(rows: &[&Measurement]) -> Vec<String> {
    let mut ops: Vec<String> = Vec::new();
    for m in rows {
        if !ops.contains(&m.operation) {
            ops.push(m.operation.clone());
        }
    }
    ops
}

/// A row without berth's figure: failed, or not something the backend does.
fn no_figure(m: &Measurement) -> Slot {
    if m.error.is_some() {
        Slot::Failed
    } else {
        Slot::NotApplicable
    }
}

/// For each category, the first row of that backend and pool.
fn slots(rows: &[&Measurement], keys: &[Key], slot_of: impl Fn(&Measurement) -> Slot) -> Vec<Slot> {
    keys.iter()
        .map(|(backend, pool)| {
            rows.iter()
                .find(|m| &m.backend == backend && &m.pool == pool)
                .map_or(Slot::Missing, |m| slot_of(m))
        })
        .collect()
}

/// berth's figure next to the raw primitive's.
fn compare_series(rows: &[&Measurement], keys: &[Key], primitive_name: &str) -> Vec<Series> {
    let summary_bar = |s: &crate::stats::Summary| {
        Slot::Bar(Bar {
            value: s.median,
            spread: (s.runs > 1).then_some((s.min, s.max)),
        })
    };
    let berth = slots(rows, keys, |m| {
        m.berth.as_ref().map_or(no_figure(m), summary_bar)
    });
    let primitive = slots(rows, keys, |m| {
        m.primitive
            .as_ref()
            .map_or(Slot::Missing, |p| summary_bar(&p.value))
    });
    vec![
        Series {
            name: "berth".to_owned(),
            color: BERTH,
            slots: berth,
        },
        Series {
            name: primitive_name.to_owned(),
            color: PRIMITIVE,
            slots: primitive,
        },
    ]
}

/// Bytes measured on disk next to what `berth info` reports.
fn space_series(rows: &[&Measurement], keys: &[Key]) -> Vec<Series> {
    let measured = slots(rows, keys, |m| {
        m.berth.as_ref().map_or(no_figure(m), |s| {
            Slot::Bar(Bar {
                value: s.median,
                spread: (s.runs > 1).then_some((s.min, s.max)),
            })
        })
    });
    let reported = slots(rows, keys, |m| {
        m.reported.map_or(Slot::Missing, |r| {
            Slot::Bar(Bar {
                value: r as f64,
                spread: None,
            })
        })
    });
    vec![
        Series {
            name: "measured on disk".to_owned(),
            color: BERTH,
            slots: measured,
        },
        Series {
            name: "reported by berth info".to_owned(),
            color: REPORTED,
            slots: reported,
        },
    ]
}

/// Space rows on a linear axis in the unit that suits the largest figure; each
/// bar is labelled with its own size, so a small one stays readable next to a
/// full copy.
pub(super) fn space_chart(report: &Report) -> BarChart {
    let rows = rows_where(report, |m| m.suite == Suite::Space && m.unit == Unit::Bytes);
    let largest = rows
        .iter()
        .flat_map(|m| [m.berth.map(|s| s.max), m.reported.map(|r| r as f64)])
        .flatten()
        .fold(0.0_f64, f64::max);
    let (divisor, unit) = byte_unit(largest);
    let y_desc = format!("disk space added ({unit})");
    let mut chart = BarChart::per_operation(&rows, "", y_desc, space_series);
    chart.title = "Disk space added per backend: measured vs what berth info reports".to_owned();
    chart.divisor = divisor;
    chart.value_text = human_bytes;
    chart
}

fn byte_unit(bytes: f64) -> (f64, &'static str) {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut divisor = 1.0;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= divisor * 1024.0 {
        divisor *= 1024.0;
        unit += 1;
    }
    (divisor, UNITS[unit])
}

pub(super) fn human_bytes(bytes: f64) -> String {
    match byte_unit(bytes) {
        (_, "bytes") => format!("{bytes} B"),
        (divisor, unit) => format!("{} {unit}", significant(bytes / divisor)),
    }
}
