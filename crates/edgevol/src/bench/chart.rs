//! The SVG chart: for every job (and scenario), median IOPS and median
//! p99.9 latency per target, side by side. Uses plotters' SVG backend with
//! its built-in text layout, so no system fonts are needed.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::stats::Row;
use super::targets::Target;

/// One row of the chart: a title and bars (label, IOPS, p99.9 µs).
pub struct Group {
    /// Job or scenario name.
    pub title: String,
    /// Bars: label, median IOPS, median p99.9 latency (µs).
    pub bars: Vec<(String, Option<f64>, Option<f64>)>,
}

/// Chart groups from summary rows: one per job, then one per scenario.
pub fn groups(rows: &[Row]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for r in rows {
        // A scenario's fill (1 MiB writes) would dwarf its 4 KiB variants.
        if r.scenario.is_some() && r.job == super::jobs::FILL.name {
            continue;
        }
        let (title, label) = match &r.scenario {
            None => (r.job.clone(), r.target.clone()),
            Some(s) => (format!("scenario {s}"), r.job.clone()),
        };
        let bar = (label, r.iops, r.lat_p999_us);
        match out.iter_mut().find(|g| g.title == title) {
            Some(g) => g.bars.push(bar),
            None => out.push(Group {
                title,
                bars: vec![bar],
            }),
        }
    }
    out
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
    RGBColor(0xda, 0x8b, 0xc3),
    RGBColor(0x8c, 0x8c, 0x8c),
];

/// Compact axis numbers: 950, 12k, 3.4M.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Draw `groups` into an SVG file at `path`.
pub fn write_svg(path: &Path, title: &str, groups: &[Group]) -> Result<()> {
    const PANEL_H: u32 = 230;
    const TITLE_H: u32 = 40;
    const W: u32 = 1200;
    let h = TITLE_H + PANEL_H * groups.len().max(1) as u32;
    let root = SVGBackend::new(path, (W, h)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("chart: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (head, body) = root.split_vertically(TITLE_H);
    head.draw(&Text::new(
        title.to_string(),
        (12, 12),
        ("sans-serif", 18).into_font(),
    ))
    .map_err(|e| err(&e))?;
    let panels = body.split_evenly((groups.len().max(1), 2));
    for (gi, g) in groups.iter().enumerate() {
        for (col, (metric, pick)) in [
            ("IOPS (median)", 0usize),
            ("p99.9 latency, µs (median)", 1usize),
        ]
        .iter()
        .enumerate()
        {
            let Some(area) = panels.get(gi * 2 + col) else {
                continue;
            };
            let vals: Vec<(usize, f64)> = g
                .bars
                .iter()
                .enumerate()
                .filter_map(|(i, b)| if *pick == 0 { b.1 } else { b.2 }.map(|v| (i, v)))
                .collect();
            let max = vals.iter().map(|v| v.1).fold(0.0, f64::max);
            let top = if max > 0.0 { max * 1.18 } else { 1.0 };
            // At least 4 slots, so a lone bar is not as wide as the panel.
            let n = g.bars.len().max(4);
            let labels: Vec<String> = g.bars.iter().map(|b| b.0.clone()).collect();
            // A target keeps its color in every panel; scenario variants
            // are colored by position.
            let colors: Vec<RGBColor> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| COLORS[Target::from_name(l).map_or(i, |t| t as usize) % COLORS.len()])
                .collect();
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{} — {metric}", g.title), ("sans-serif", 14))
                .margin(8)
                .x_label_area_size(24)
                .y_label_area_size(56)
                // Integer ranges are inclusive in plotters: 0..=n-1.
                .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n)
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                        labels.get(*i).cloned().unwrap_or_default()
                    }
                    SegmentValue::Last => String::new(),
                })
                .y_labels(5)
                .y_label_formatter(&|v| short(*v))
                .label_style(("sans-serif", 11))
                .draw()
                .map_err(|e| err(&e))?;
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .margin(12)
                        .style_func(|x, _| {
                            let i = match x {
                                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => *i,
                                SegmentValue::Last => 0,
                            };
                            colors.get(i).copied().unwrap_or(COLORS[0]).filled()
                        })
                        .data(vals.iter().copied()),
                )
                .map_err(|e| err(&e))?;
            chart
                .draw_series(vals.iter().map(|&(i, v)| {
                    Text::new(
                        short(v),
                        (SegmentValue::CenterOf(i), v + top * 0.07),
                        ("sans-serif", 11).into_font(),
                    )
                }))
                .map_err(|e| err(&e))?;
            let missing = g
                .bars
                .iter()
                .enumerate()
                .filter(|(_, b)| if *pick == 0 { b.1 } else { b.2 }.is_none());
            chart
                .draw_series(missing.map(|(i, _)| {
                    Text::new(
                        "failed",
                        (SegmentValue::CenterOf(i), top * 0.05),
                        ("sans-serif", 11).into_font().color(&RED),
                    )
                }))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(3.25), "3.2");
        assert_eq!(short(950.0), "950");
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(42_000.0), "42k");
        assert_eq!(short(3_400_000.0), "3.4M");
    }

    #[test]
    fn svg_is_written() {
        let rows = vec![
            Row {
                job: "randwrite-4k-qd1".into(),
                target: "native".into(),
                iops: Some(12000.0),
                lat_p999_us: Some(300.0),
                ..Row::default()
            },
            Row {
                job: "randwrite-4k-qd1".into(),
                target: "edgevol".into(),
                iops: None,
                ..Row::default()
            },
            Row {
                scenario: Some("snapshot".into()),
                job: "before".into(),
                target: "edgevol".into(),
                iops: Some(5000.0),
                lat_p999_us: Some(900.0),
                ..Row::default()
            },
        ];
        let mut rows = rows;
        rows.push(Row {
            scenario: Some("snapshot".into()),
            job: "fill-seq-1m-qd8".into(),
            target: "edgevol".into(),
            iops: Some(100.0),
            ..Row::default()
        });
        rows.push(Row {
            scenario: Some("one".into()),
            job: "only".into(),
            target: "edgevol".into(),
            iops: Some(7.0),
            ..Row::default()
        });
        let g = groups(&rows);
        assert_eq!(g.len(), 3);
        assert_eq!(g[1].bars.len(), 1, "scenario fills are left out");
        assert_eq!(g[0].bars.len(), 2);
        assert_eq!(g[1].title, "scenario snapshot");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.svg");
        write_svg(&p, "test", &g).expect("svg");
        let s = std::fs::read_to_string(&p).expect("read");
        assert!(s.starts_with("<svg"), "{}", &s[..40.min(s.len())]);
        assert!(s.contains("edgevol") && s.contains("12k") && s.contains("failed"));
    }
}
