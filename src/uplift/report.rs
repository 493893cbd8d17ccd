//! Self-contained HTML uplift report: retention by group with intervals, uplift per action, and
//! the cost-benefit waterfall, as inline SVG (plotters), in the style of the model report
//! (src/model/report.rs).

use crate::html::palette::{self, FONT, GRID_BOLD, GRID_LIGHT, REFERENCE};
use crate::html::{escape, push_figure};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::cost::{CostBenefit, Estimate};
use super::{GroupResult, UpliftResult};

const WIDTH: u32 = 1080;
const ROW_PX: u32 = 34;
const MAX_LABEL_CHARS: usize = 34;

const TREATED: RGBColor = palette::BLUE;
const CONTROL: RGBColor = RGBColor(120, 120, 120);
const POSITIVE: RGBColor = RGBColor(44, 140, 86);
const NEGATIVE: RGBColor = palette::RED;
const NEUTRAL: RGBColor = palette::NAVY;

type PlotResult = Result<(), Box<dyn StdError>>;
type RowChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Writes `dir/index.html` (creating `dir`) and returns its path.
pub fn write_report(dir: &Path, r: &UpliftResult) -> anyhow::Result<PathBuf> {
    let html = render_html(r)?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("index.html");
    std::fs::write(&path, html)?;
    Ok(path)
}

fn render_svg<F>(size: (u32, u32), draw: F) -> anyhow::Result<String>
where
    F: FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> PlotResult,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("rendering plot: {e}"))?;
        draw(&root).map_err(|e| anyhow::anyhow!("rendering plot: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("rendering plot: {e}"))?;
    }
    Ok(svg)
}

fn truncate_label(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL_CHARS {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(MAX_LABEL_CHARS - 1).collect();
        s.push('\u{2026}');
        s
    }
}

/// A chart with one labelled row per entry, the first entry in the top row, and a numeric x axis.
fn row_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    labels: &[String],
    x: std::ops::Range<f64>,
    x_desc: &str,
    x_fmt: &dyn Fn(&f64) -> String,
) -> Result<RowChart<'a, 'b>, Box<dyn StdError>> {
    let n = labels.len();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let label_area = (longest as f64 * 7.5 + 16.0).clamp(60.0, 300.0) as u32;
    let label_for = |y: &f64| {
        let row = y.round();
        if (y - row).abs() > 1e-6 || row < 0.0 || row >= n as f64 {
            return String::new();
        }
        labels[n - 1 - row as usize].clone()
    };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 20))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(label_area)
        .build_cartesian_2d(x, -0.5..(n as f64 - 0.5))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_max_light_lines(1)
        .y_labels(n)
        .y_label_formatter(&label_for)
        .x_label_formatter(x_fmt)
        .x_desc(x_desc)
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    Ok(chart)
}

fn row_y(n: usize, rank: usize) -> f64 {
    (n - 1 - rank) as f64
}

fn height(rows: usize) -> u32 {
    (130 + ROW_PX * rows as u32).max(200)
}

/// A horizontal interval with a centre dot.
fn interval_marker(chart: &mut RowChart, y: f64, (lo, mid, hi): (f64, f64, f64), color: RGBColor) -> PlotResult {
    let cap = 0.12;
    chart.draw_series([
        PathElement::new(vec![(lo, y), (hi, y)], color.stroke_width(2)),
        PathElement::new(vec![(lo, y - cap), (lo, y + cap)], color.stroke_width(2)),
        PathElement::new(vec![(hi, y - cap), (hi, y + cap)], color.stroke_width(2)),
    ])?;
    chart.draw_series(std::iter::once(Circle::new((mid, y), 5, color.filled())))?;
    Ok(())
}

fn legend_keys(root: &DrawingArea<SVGBackend<'_>, Shift>, keys: &[(&str, RGBColor)]) -> PlotResult {
    let style = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut x = WIDTH as i32 - 20 - 130 * keys.len() as i32;
    for (label, color) in keys {
        root.draw(&Circle::new((x, 46), 5, color.filled()))?;
        root.draw(&Text::new(label.to_string(), (x + 10, 46), style.clone()))?;
        x += 130;
    }
    Ok(())
}

/// Retention of treated and control, with Wilson intervals, per action (overall first).
fn retention_plot(groups: &[&GroupResult]) -> anyhow::Result<String> {
    let labels: Vec<String> = groups.iter().map(|g| truncate_label(&g.group)).collect();
    let n = labels.len();
    render_svg((WIDTH, height(n)), |root| {
        let mut chart = row_chart(
            root,
            "Retention by group (95% Wilson intervals)",
            &labels,
            0.0..1.0,
            "Retained share in the horizon",
            &|v| format!("{:.0}%", v * 100.0),
        )?;
        for (rank, g) in groups.iter().enumerate() {
            let y = row_y(n, rank);
            for (arm, dy, color) in [(&g.treated, 0.16, TREATED), (&g.control, -0.16, CONTROL)] {
                if let Some(p) = arm.retention {
                    interval_marker(&mut chart, y + dy, (arm.retention_ci.0, p, arm.retention_ci.1), color)?;
                }
            }
        }
        legend_keys(root, &[("treated", TREATED), ("control", CONTROL)])
    })
}

/// Uplift (treated minus control retention) per action with its Newcombe interval.
fn uplift_plot(groups: &[&GroupResult]) -> anyhow::Result<String> {
    let rows: Vec<&GroupResult> = groups.iter().copied().filter(|g| g.uplift.is_some()).collect();
    let labels: Vec<String> = rows.iter().map(|g| truncate_label(&g.group)).collect();
    let n = labels.len().max(1);
    let reach =
        rows.iter().filter_map(|g| g.uplift).map(|d| d.lower.abs().max(d.upper.abs())).fold(0.05, f64::max).min(1.0)
            * 1.1;
    render_svg((WIDTH, height(n)), |root| {
        let mut chart = row_chart(
            root,
            "Uplift in retention, treated \u{2212} control (95% Newcombe intervals)",
            &labels,
            -reach..reach,
            "Percentage points",
            &|v| if v.abs() < 1e-9 { "0".into() } else { format!("{:+.0}", v * 100.0) },
        )?;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, -0.5), (0.0, n as f64 - 0.5)],
            6,
            5,
            REFERENCE.stroke_width(2),
        ))?;
        for (rank, g) in rows.iter().enumerate() {
            let d = g.uplift.expect("filtered");
            let color = if d.lower > 0.0 {
                POSITIVE
            } else if d.upper < 0.0 {
                NEGATIVE
            } else {
                NEUTRAL
            };
            interval_marker(&mut chart, row_y(n, rank), (d.lower, d.estimate, d.upper), color)?;
        }
        legend_keys(root, &[("above zero", POSITIVE), ("covers zero", NEUTRAL), ("below zero", NEGATIVE)])
    })
}

/// Waterfall: incremental value, minus each action's cost, to the net value (all actions).
fn waterfall_plot(cb: &CostBenefit) -> anyhow::Result<Option<String>> {
    let Some(all) = cb.lines.iter().find(|l| l.group == "all actions") else { return Ok(None) };
    let actions: Vec<_> = cb.lines.iter().filter(|l| l.group != "all actions" && l.cost.estimate > 0.0).collect();
    // (label, from, to, colour, interval of the end point)
    let mut steps: Vec<(String, f64, f64, RGBColor, Option<&Estimate>)> = Vec::new();
    let v = all.incremental_value.estimate;
    steps.push((
        "incremental value".into(),
        0.0,
        v,
        if v >= 0.0 { POSITIVE } else { NEGATIVE },
        Some(&all.incremental_value),
    ));
    let mut level = v;
    for a in &actions {
        steps.push((format!("cost: {}", a.group), level, level - a.cost.estimate, NEGATIVE, None));
        level -= a.cost.estimate;
    }
    let net = all.net_value.estimate;
    steps.push(("net value".into(), 0.0, net, if net >= 0.0 { POSITIVE } else { NEGATIVE }, Some(&all.net_value)));
    let mut lo = 0.0f64;
    let mut hi = 0.0f64;
    for (_, a, b, _, e) in &steps {
        lo = lo.min(*a).min(*b);
        hi = hi.max(*a).max(*b);
        if let Some(e) = e {
            lo = lo.min(e.lower);
            hi = hi.max(e.upper);
        }
    }
    let pad = (hi - lo).max(1.0) * 0.14;
    let labels: Vec<String> = steps.iter().map(|s| truncate_label(&s.0)).collect();
    let n = labels.len();
    let svg = render_svg((WIDTH, height(n)), |root| {
        let mut chart = row_chart(
            root,
            "Cost-benefit waterfall, all actions (bootstrap 95% intervals on value and net)",
            &labels,
            (lo - pad)..(hi + pad),
            "Value (currency of the amounts)",
            &|v| format!("{v:.0}"),
        )?;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, -0.5), (0.0, n as f64 - 0.5)],
            6,
            5,
            REFERENCE.stroke_width(2),
        ))?;
        for (rank, (_, a, b, color, e)) in steps.iter().enumerate() {
            let y = row_y(n, rank);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(*a, y - 0.3), (*b, y + 0.3)],
                color.mix(0.8).filled(),
            )))?;
            if rank + 1 < n {
                // Connector to the next step's start.
                let next_y = row_y(n, rank + 1);
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(*b, y - 0.3), (*b, next_y + 0.3)],
                    REFERENCE.stroke_width(1),
                )))?;
            }
            if let Some(e) = e {
                interval_marker(&mut chart, y, (e.lower, e.estimate, e.upper), RGBColor(40, 40, 40))?;
            }
            // The step's size, beyond the end the bar (or its interval) reaches.
            let down = b < a;
            let x = match e {
                Some(e) if down => e.lower.min(*b),
                Some(e) => e.upper.max(*b),
                None => *b,
            };
            let (dx, anchor) = if down { (-6, HPos::Right) } else { (6, HPos::Left) };
            let style = TextStyle::from((FONT, 12).into_font())
                .color(&RGBColor(60, 60, 60))
                .pos(Pos::new(anchor, VPos::Center));
            chart.draw_series(std::iter::once(
                EmptyElement::at((x, y)) + Text::new(format!("{:+.0}", b - a), (dx, 0), style),
            ))?;
        }
        Ok(())
    })?;
    Ok(Some(svg))
}

fn pct(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn groups_table(groups: &[GroupResult]) -> String {
    let mut s = String::from(
        "<table>\n<thead><tr><th>By</th><th>Group</th><th>Treated</th><th>Control</th><th>Retention T</th><th>Retention C</th><th>Uplift (pp)</th><th>95% CI (pp)</th><th>p</th><th>More records needed (T / C)</th></tr></thead>\n<tbody>\n",
    );
    for g in groups {
        let (u, ci) = match g.uplift {
            Some(d) => {
                (format!("{:+.1}", 100.0 * d.estimate), format!("{:+.1} .. {:+.1}", 100.0 * d.lower, 100.0 * d.upper))
            }
            None => ("n/a".into(), "n/a".into()),
        };
        let p = match (g.p_value, g.test) {
            (Some(p), Some(super::stats::Test::Fisher)) => format!("{p:.3} (Fisher)"),
            (Some(p), _) if p < 0.001 => "&lt;0.001".into(),
            (Some(p), _) => format!("{p:.3}"),
            _ => "n/a".into(),
        };
        let more = if g.significant {
            "significant".to_string()
        } else if g.control.n == 0 || g.treated.n == 0 {
            format!("no {} records", if g.control.n == 0 { "control" } else { "treated" })
        } else {
            g.extra_needed.map_or("no difference observed".into(), |(a, b)| format!("+{a} / +{b}"))
        };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            if g.dimension.starts_with("overall") { "overall" } else { g.dimension.as_str() },
            escape(&g.group),
            g.treated.n,
            g.control.n,
            pct(g.treated.retention),
            pct(g.control.retention),
            u,
            ci,
            p,
            more
        );
    }
    s.push_str("</tbody>\n</table>\n");
    s
}

fn cost_table(cb: &CostBenefit) -> String {
    let e = |x: &Estimate, d: usize| {
        format!("{:.d$}<br><span class=\"ci\">[{:.d$}, {:.d$}]</span>", x.estimate, x.lower, x.upper)
    };
    let mut s = String::from(
        "<table>\n<thead><tr><th>Action</th><th>Treated</th><th>Control</th><th>Incremental retained</th><th>Incremental value</th><th>Cost</th><th>Net value</th><th>ROI</th></tr></thead>\n<tbody>\n",
    );
    for l in &cb.lines {
        let _ = writeln!(
            s,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&if l.few_control_users { format!("{} *", l.group) } else { l.group.clone() }),
            l.n_treated,
            l.n_control,
            e(&l.incremental_retained, 1),
            e(&l.incremental_value, 0),
            e(&l.cost, 0),
            e(&l.net_value, 0),
            l.roi.as_ref().map_or("n/a (no cost)".into(), |r| e(r, 2)),
        );
    }
    s.push_str("</tbody>\n</table>\n");
    s
}

fn render_html(r: &UpliftResult) -> anyhow::Result<String> {
    let pick = |dim: &str| r.groups.iter().filter(|g| g.dimension == dim).collect::<Vec<_>>();
    let mut by_action: Vec<&GroupResult> = r.groups.iter().filter(|g| g.dimension.starts_with("overall")).collect();
    by_action.extend(pick("action"));
    let retention_svg = retention_plot(&by_action)?;
    let uplift_svg = uplift_plot(&by_action)?;
    let tier_svg = uplift_plot(&pick("tier").into_iter().chain(pick("stage")).collect::<Vec<_>>())?;
    let waterfall = r.cost_benefit.as_ref().map(waterfall_plot).transpose()?.flatten();

    let title = "churnguard uplift report";
    let mut html = String::with_capacity(128 * 1024);
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(html, "<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>");
    let _ = writeln!(
        html,
        "<header><h1>{title}</h1><p class=\"subtitle\">{}</p></header>",
        escape(&format!(
            "Events {} .. {} ({} events); horizon {}: retained = any event in (t, t + {}] after the record's event time t. {} treated and {} control records; censored (horizon past the data's end, excluded): {} treated, {} control.",
            r.data_from, r.data_to, r.events, r.horizon, r.horizon, r.records_treated, r.records_control, r.censored_treated, r.censored_control
        ))
    );
    html.push_str("<section>\n<h2>Retention and uplift per action</h2>\n");
    push_figure(
        &mut html,
        &retention_svg,
        "Share of records whose user was active in the horizon, treated (blue) and control (grey), with 95% Wilson intervals. 'all records' counts every record; 'first record per user' only each user's first.",
    );
    push_figure(
        &mut html,
        &uplift_svg,
        &format!("Treated minus control retention, in percentage points. Interval: {}.", r.interval_method),
    );
    html.push_str("</section>\n<section>\n<h2>Uplift per tier and lifecycle stage</h2>\n");
    push_figure(&mut html, &tier_svg, "Tiers first, then lifecycle stages at the decision.");
    html.push_str("</section>\n");
    if let Some(cb) = &r.cost_benefit {
        html.push_str("<section>\n<h2>Cost-benefit</h2>\n");
        if let Some(svg) = &waterfall {
            push_figure(
                &mut html,
                svg,
                &format!(
                    "From the incremental value of all treated records, each action's cost is taken away, leaving the net value. Value of a retained user: {}. Black: point estimate and {}.",
                    cb.value_basis, cb.interval_method
                ),
            );
        }
        html.push_str(&cost_table(cb));
        let _ = writeln!(
            html,
            "<p class=\"note\">Incremental retained = (treated retention \u{2212} control retention) \u{00d7} treated records. Incremental value = treated records \u{00d7} (mean value kept per treated record \u{2212} the same per control record). ROI = net value / cost. Intervals: {}. *: fewer than 30 users in the control arm; the bootstrap cannot show how uncertain such a small arm is, so its intervals are too narrow.</p>",
            escape(&cb.interval_method)
        );
        html.push_str("</section>\n");
    }
    html.push_str("<section>\n<h2>All groups</h2>\n");
    html.push_str(&groups_table(&r.groups));
    let _ = writeln!(
        html,
        "<p class=\"note\">Interval: {}. p-value: {}. More records needed: extra records per arm for 80% power at alpha 0.05 at the observed rates and the current treated:control allocation. Many groups are tested at once: expect about one in twenty to look significant by chance. How to read this: docs/INTERVENTIONS.md, \u{201c}Reading an uplift result\u{201d}.</p>",
        escape(r.interval_method),
        escape(r.test_method)
    );
    html.push_str("</section>\n<footer>Generated by churnguard uplift.</footer>\n</main>\n</body>\n</html>\n");
    Ok(html)
}

const CSS: &str = r#"
:root { --fg: #1f2933; --muted: #616e7c; --line: #e4e7eb; --accent: #223e6e; --bg: #f7f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 32px 24px 48px; }
header { border-bottom: 3px solid var(--accent); margin-bottom: 24px; padding-bottom: 12px; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { font-size: 19px; margin: 32px 0 12px; color: var(--accent); }
.subtitle { margin: 0; color: var(--muted); }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 4px 20px 20px; margin-bottom: 20px; overflow-x: auto; }
figure { margin: 0 0 16px; }
figure svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; text-align: center; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 14px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { font-size: 12px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); border-bottom: 2px solid var(--line); }
tbody th { font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: nowrap; }
.ci { color: var(--muted); }
.note { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
"#;

#[cfg(test)]
mod tests {
    use super::super::outcome::{Outcome, Outcomes, UserEvents};
    use super::*;
    use crate::policy::Stage;

    #[test]
    fn report_is_self_contained_html_with_three_plots() {
        let mut recs = Vec::new();
        for i in 0..200u32 {
            for (action, tier) in [("coupon", "high"), ("reminder_email", "medium")] {
                recs.push(Outcome {
                    user_id: format!("u{i}"),
                    tier: tier.into(),
                    action: action.into(),
                    stage: Stage::Dormant,
                    control: i % 10 == 0,
                    event_time: i64::from(i),
                    retained: i % 3 != 0,
                    spend: 1.0,
                    trailing_spend: 10.0,
                });
            }
        }
        let outcomes = Outcomes { records: recs, ..Outcomes::default() };
        let cfg = super::super::cost::CostConfig { default_cost: 1.0, ..Default::default() };
        let cb = super::super::cost::cost_benefit(&outcomes.records, &cfg);
        let ev = UserEvents::from_events([("u0", 0, 0.0), ("u0", 10, 0.0)]);
        let r = super::super::build_result(&ev, &outcomes, crate::time::Span::days(30), Some(cb));
        let dir = tempfile::tempdir().unwrap();
        let path = write_report(dir.path(), &r).unwrap();
        let html = std::fs::read_to_string(path).unwrap();
        assert_eq!(html.matches("<svg").count(), 4, "retention, uplift per action, per tier/stage, waterfall");
        assert!(!html.contains("<script") && !html.contains("href=\"http") && !html.contains("<link"));
        assert!(html.contains("Newcombe") && html.contains("bootstrap"));
    }
}
