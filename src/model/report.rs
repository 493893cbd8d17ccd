//! Self-contained HTML evaluation report for a scored data set.
//!
//! The report is a single `index.html` with every plot inlined as SVG and all
//! styling in one `<style>` block, so it can be attached to a ticket, served
//! from object storage or opened offline without anything else alongside it.

use crate::html::palette::{self, FONT, GRID_BOLD, GRID_LIGHT, REFERENCE};
use crate::html::{escape, push_figure};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::metrics::{self, CalibrationBin, Metrics};

/// Keeps inline SVGs small for million-row evaluations while staying well
/// above what a ~500px wide plot can resolve.
const MAX_CURVE_POINTS: usize = 500;
const CALIBRATION_BINS: usize = 10;
const HISTOGRAM_BINS: usize = 20;
const TOP_COEFFICIENTS: usize = 25;
/// Longer feature names are cut so the label column cannot squeeze the bars.
const MAX_LABEL_CHARS: usize = 40;

const SQUARE_PLOT: (u32, u32) = (540, 500);
const COEFFICIENT_PLOT_WIDTH: u32 = 1080;

// Churn is red and retention blue everywhere, including the coefficient
// chart, so "raises churn risk" reads the same colour as "churned".
const CHURNED: RGBColor = palette::RED;
const RETAINED: RGBColor = palette::BLUE;
const MODEL: RGBColor = palette::NAVY;
const ACCENT: RGBColor = RGBColor(232, 138, 20);

/// Everything the report shows, borrowed from the caller.
pub struct ReportInput<'a> {
    /// Page heading, e.g. "churnguard model v3".
    pub title: &'a str,
    /// Free text under the heading: data range, cutoff, horizon.
    pub subtitle: &'a str,
    /// Predicted churn probabilities.
    pub scores: &'a [f64],
    /// `true` for users who churned; paired with `scores` by index.
    pub labels: &'a [bool],
    /// Feature name and standardised coefficient.
    pub coefficients: &'a [(String, f64)],
    /// Decision threshold in production: users with `score >= threshold`
    /// are flagged.
    pub threshold: f64,
    /// Key/value rows for the metadata table.
    pub extra: &'a [(String, String)],
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing report: {0}")]
    Io(#[from] std::io::Error),
    #[error("rendering plot: {0}")]
    Plot(String),
}

/// Writes `dir/index.html` (creating `dir` if needed) and returns its path.
///
/// The file is self-contained: plots are inline SVG and there are no external
/// scripts, fonts or stylesheets. Degenerate input (empty, one class, no
/// coefficients) still produces a report, with undefined metrics shown as
/// "n/a" and empty plots drawn with only their reference lines.
///
/// # Errors
///
/// [`ReportError::Io`] if the directory or file cannot be written, and
/// [`ReportError::Plot`] if plotters fails to lay out or render a chart.
pub fn write_report(dir: &Path, input: &ReportInput) -> Result<PathBuf, ReportError> {
    let html = render_html(input)?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("index.html");
    std::fs::write(&path, html)?;
    Ok(path)
}

/// Confusion counts when flagging `score >= threshold`.
#[derive(Debug, Clone, Copy, Default)]
struct Confusion {
    tp: u64,
    fp: u64,
    fn_: u64,
    tn: u64,
}

impl Confusion {
    fn at(scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let mut c = Confusion::default();
        for (&s, &l) in scores.iter().zip(labels) {
            match (s >= threshold, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp) as f64
    }

    fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_) as f64
    }

    fn fpr(&self) -> f64 {
        self.fp as f64 / (self.fp + self.tn) as f64
    }

    fn f1(&self) -> f64 {
        2.0 * self.tp as f64 / (2 * self.tp + self.fp + self.fn_) as f64
    }

    fn flagged_share(&self) -> f64 {
        (self.tp + self.fp) as f64 / (self.tp + self.fp + self.fn_ + self.tn) as f64
    }
}

fn render_html(input: &ReportInput) -> Result<String, ReportError> {
    let m = metrics::evaluate(input.scores, input.labels);
    let at_threshold = Confusion::at(input.scores, input.labels, input.threshold);
    let calibration = metrics::calibration_table(input.scores, input.labels, CALIBRATION_BINS);
    let roc = metrics::roc_curve(input.scores, input.labels);
    let pr = metrics::pr_curve(input.scores, input.labels);

    let operating_roc = finite_point(at_threshold.fpr(), at_threshold.recall());
    let operating_pr = finite_point(at_threshold.recall(), at_threshold.precision());

    let roc_svg = roc_plot(&roc, m.roc_auc, operating_roc)?;
    let pr_svg = pr_plot(&pr, m.pr_auc, m.churn_rate, operating_pr)?;
    let calibration_svg = calibration_plot(&calibration)?;
    let histogram_svg = histogram_plot(input.scores, input.labels, input.threshold)?;
    let coefficients = top_coefficients(input.coefficients);
    let coefficient_svg = coefficient_plot(&coefficients)?;

    let mut html = String::with_capacity(64 * 1024);
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(html, "<title>{}</title>", escape(input.title));
    let _ = writeln!(html, "<style>{CSS}</style>\n</head>\n<body>\n<main>");
    let _ = writeln!(html, "<header><h1>{}</h1>", escape(input.title));
    if !input.subtitle.is_empty() {
        let _ = write!(html, "<p class=\"subtitle\">{}</p>", escape(input.subtitle));
    }
    html.push_str("</header>\n");

    html.push_str("<section>\n<h2>Summary</h2>\n");
    html.push_str(&summary_table(&m, &at_threshold, input));
    html.push_str("</section>\n");

    html.push_str("<section>\n<h2>Discrimination</h2>\n<div class=\"grid\">\n");
    push_figure(
        &mut html,
        &roc_svg,
        &format!(
            "ROC curve, AUC = {}. Dashed: chance. Orange dot: the operating point at threshold {}.",
            fmt_num(m.roc_auc, 4),
            fmt_num(input.threshold, 3)
        ),
    );
    push_figure(
        &mut html,
        &pr_svg,
        &format!(
            "Precision-recall curve, average precision = {}. Dashed: base rate {} \
             (a random ranking's precision).",
            fmt_num(m.pr_auc, 4),
            fmt_num(m.churn_rate, 4)
        ),
    );
    html.push_str("</div>\n</section>\n");

    html.push_str("<section>\n<h2>Calibration and score distribution</h2>\n<div class=\"grid\">\n");
    push_figure(
        &mut html,
        &calibration_svg,
        &format!(
            "Observed churn rate against mean predicted probability in {CALIBRATION_BINS} \
             equal-width bins; point area grows with the bin's user count (labelled). \
             Points above the diagonal are under-predicted."
        ),
    );
    push_figure(
        &mut html,
        &histogram_svg,
        "Score distribution per class, each normalised to sum to 100%. \
         Dashed: the decision threshold.",
    );
    html.push_str("</div>\n</section>\n");

    html.push_str("<section>\n<h2>Coefficients</h2>\n");
    match coefficient_svg {
        Some(svg) => push_figure(
            &mut html,
            &svg,
            &format!(
                "Standardised coefficients, the {} largest by absolute value \
                 (of {} finite). Red raises churn risk, blue lowers it.",
                coefficients.len(),
                input.coefficients.iter().filter(|(_, c)| c.is_finite()).count()
            ),
        ),
        None => html.push_str("<p class=\"note\">No finite coefficients were provided.</p>\n"),
    }
    html.push_str("</section>\n");

    html.push_str("<section>\n<h2>Calibration table</h2>\n");
    html.push_str(&calibration_html(&calibration));
    html.push_str("</section>\n");

    if !input.extra.is_empty() {
        html.push_str("<section>\n<h2>Metadata</h2>\n<table class=\"kv\">\n<tbody>\n");
        for (key, value) in input.extra {
            let _ = writeln!(html, "<tr><th scope=\"row\">{}</th><td>{}</td></tr>", escape(key), escape(value));
        }
        html.push_str("</tbody>\n</table>\n</section>\n");
    }

    html.push_str("<footer>Generated by churnguard.</footer>\n</main>\n</body>\n</html>\n");
    Ok(html)
}

fn summary_table(m: &Metrics, at: &Confusion, input: &ReportInput) -> String {
    // The log loss of always predicting the base rate is the yardstick a
    // reader needs to judge the model's log loss; likewise p(1-p) for Brier.
    let p = m.churn_rate;
    let baseline_log_loss = if p > 0.0 && p < 1.0 { -(p * p.ln() + (1.0 - p) * (1.0 - p).ln()) } else { f64::NAN };
    let baseline_brier = p * (1.0 - p);
    let (best_t, best_f1, _, _) = metrics::best_f1_threshold(input.scores, input.labels);

    let rows: [(&str, String, String); 12] = [
        // Training at several cutoffs gives a user one row per cutoff: these are row counts.
        ("Rows", m.n_rows.to_string(), "one per user and cutoff".to_owned()),
        ("Churn rate", fmt_pct(m.churn_rate), String::new()),
        ("ROC AUC", fmt_num(m.roc_auc, 4), "0.5 = random ranking".to_owned()),
        ("Average precision (PR AUC)", fmt_num(m.pr_auc, 4), format!("base rate {}", fmt_num(m.churn_rate, 4))),
        ("Log loss", fmt_num(m.log_loss, 4), format!("base-rate predictor {}", fmt_num(baseline_log_loss, 4))),
        ("Brier score", fmt_num(m.brier, 4), format!("base-rate predictor {}", fmt_num(baseline_brier, 4))),
        ("Decision threshold", fmt_num(input.threshold, 4), "flag rows with score \u{2265} threshold".to_owned()),
        ("Flagged at threshold", fmt_pct(at.flagged_share()), format!("{} rows", at.tp + at.fp)),
        ("Precision at threshold", fmt_num(at.precision(), 4), format!("{} true / {} false positives", at.tp, at.fp)),
        ("Recall at threshold", fmt_num(at.recall(), 4), format!("{} churned rows missed", at.fn_)),
        ("F1 at threshold", fmt_num(at.f1(), 4), String::new()),
        ("Best F1 (in-sample)", fmt_num(best_f1, 4), format!("at threshold {}", fmt_num(best_t, 4))),
    ];

    let mut out = String::from(
        "<table class=\"summary\">\n<thead><tr><th>Metric</th><th>Value</th><th>Context</th></tr></thead>\n<tbody>\n",
    );
    for (name, value, context) in rows {
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"context\">{}</td></tr>",
            escape(name),
            escape(&value),
            escape(&context)
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

fn calibration_html(bins: &[CalibrationBin]) -> String {
    if bins.is_empty() {
        return "<p class=\"note\">No scored rows.</p>\n".to_owned();
    }
    let mut out = String::from(
        "<table class=\"calibration\">\n<thead><tr><th>Bin</th><th>Rows</th>\
         <th>Mean predicted</th><th>Observed rate</th><th>Observed \u{2212} predicted</th></tr></thead>\n<tbody>\n",
    );
    for b in bins {
        let close = if b.upper >= 1.0 { ']' } else { ')' };
        let _ = writeln!(
            out,
            "<tr><td>[{:.2}, {:.2}{close}</td><td class=\"num\">{}</td><td class=\"num\">{:.4}</td>\
             <td class=\"num\">{:.4}</td><td class=\"num\">{:+.4}</td></tr>",
            b.lower,
            b.upper,
            b.count,
            b.mean_predicted,
            b.observed_rate,
            b.observed_rate - b.mean_predicted
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

fn fmt_num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "n/a".to_owned()
    }
}

fn fmt_pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}%", 100.0 * x)
    } else {
        "n/a".to_owned()
    }
}

fn finite_point(x: f64, y: f64) -> Option<(f64, f64)> {
    (x.is_finite() && y.is_finite()).then_some((x, y))
}

/// Thins a curve to at most about `max` points, spacing the kept points
/// evenly along its L1 path length. Unlike taking every k-th point this keeps
/// sparse but visually important stretches (a ROC curve's steep start) while
/// thinning the dense ones. The first and last points are always kept.
fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0).abs() + (b.1 - a.1).abs();
    let total: f64 = points.windows(2).map(|w| step(w[0], w[1])).sum();
    let spacing = total / (max - 1) as f64;
    if spacing.is_nan() || spacing <= 0.0 || spacing.is_infinite() {
        // A curve with no length (all points equal) or non-finite points:
        // its ends are all that can be drawn meaningfully.
        return [points[0], points[points.len() - 1]].to_vec();
    }
    let mut out = Vec::with_capacity(max + 1);
    let mut since_kept = 0.0;
    out.push(points[0]);
    for w in points.windows(2) {
        since_kept += step(w[0], w[1]);
        if since_kept >= spacing {
            out.push(w[1]);
            since_kept = 0.0;
        }
    }
    if let (Some(&last), Some(&kept)) = (points.last(), out.last()) {
        if kept != last {
            out.push(last);
        }
    }
    out
}

type PlotResult = Result<(), Box<dyn StdError>>;
type UnitChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Runs `draw` on a fresh white SVG canvas and returns the SVG markup.
fn render_svg<F>(size: (u32, u32), draw: F) -> Result<String, ReportError>
where
    F: FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> PlotResult,
{
    let plot_err = |e: &dyn std::fmt::Display| ReportError::Plot(e.to_string());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        draw(&root).map_err(|e| plot_err(&e))?;
        root.present().map_err(|e| plot_err(&e))?;
    }
    Ok(svg)
}

fn unit_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
) -> Result<UnitChart<'a, 'b>, Box<dyn StdError>> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 20))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(62)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .max_light_lines(1)
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    Ok(chart)
}

fn draw_legend<'a, 'b: 'a>(chart: &mut UnitChart<'a, 'b>, position: SeriesLabelPosition) -> PlotResult {
    chart
        .configure_series_labels()
        .position(position)
        .margin(12)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(GRID_BOLD)
        .draw()?;
    Ok(())
}

fn line_key(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
}

type Px = (i32, i32);
type DashKey<DB> = ComposedElement<Px, DB, PathElement<Px>, PathElement<Px>>;

/// Legend key matching a `DashedLineSeries`, so dashed lines are not keyed
/// as solid ones.
fn dashed_key<DB: DrawingBackend>((x, y): Px, color: RGBColor) -> DashKey<DB> {
    let style = color.stroke_width(2);
    EmptyElement::at((x, y))
        + PathElement::new(vec![(0, 0), (8, 0)], style)
        + PathElement::new(vec![(13, 0), (21, 0)], style)
}

fn dashed_reference<'a, 'b: 'a>(
    chart: &mut UnitChart<'a, 'b>,
    from: (f64, f64),
    to: (f64, f64),
    label: &str,
) -> PlotResult {
    chart
        .draw_series(DashedLineSeries::new([from, to], 6, 5, REFERENCE.stroke_width(2)))?
        .label(label)
        .legend(|at| dashed_key(at, REFERENCE));
    Ok(())
}

fn operating_point(chart: &mut UnitChart, point: Option<(f64, f64)>) -> PlotResult {
    if let Some(p) = point {
        chart
            .draw_series(std::iter::once(Circle::new(p, 6, ACCENT.filled())))?
            .label("at threshold")
            .legend(|(x, y)| Circle::new((x + 11, y), 5, ACCENT.filled()));
    }
    Ok(())
}

fn roc_plot(curve: &[(f64, f64)], auc: f64, at_threshold: Option<(f64, f64)>) -> Result<String, ReportError> {
    render_svg(SQUARE_PLOT, |root| {
        let caption = format!("ROC curve (AUC = {})", fmt_num(auc, 4));
        let mut chart = unit_chart(root, &caption, "False positive rate", "True positive rate")?;
        dashed_reference(&mut chart, (0.0, 0.0), (1.0, 1.0), "chance")?;
        if !curve.is_empty() {
            chart
                .draw_series(LineSeries::new(downsample(curve, MAX_CURVE_POINTS), MODEL.stroke_width(2)))?
                .label("model")
                .legend(line_key(MODEL));
            operating_point(&mut chart, at_threshold)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

fn pr_plot(
    curve: &[(f64, f64)],
    average_precision: f64,
    base_rate: f64,
    at_threshold: Option<(f64, f64)>,
) -> Result<String, ReportError> {
    render_svg(SQUARE_PLOT, |root| {
        let caption = format!("Precision-recall (AP = {})", fmt_num(average_precision, 4));
        let mut chart = unit_chart(root, &caption, "Recall", "Precision")?;
        if base_rate.is_finite() {
            let label = format!("base rate {}", fmt_num(base_rate, 3));
            dashed_reference(&mut chart, (0.0, base_rate), (1.0, base_rate), &label)?;
        }
        if !curve.is_empty() {
            chart
                .draw_series(LineSeries::new(downsample(curve, MAX_CURVE_POINTS), MODEL.stroke_width(2)))?
                .label("model")
                .legend(line_key(MODEL));
            operating_point(&mut chart, at_threshold)?;
        }
        // A PR curve starts top left and falls to the base rate at recall 1,
        // so the upper right is usually free; a very good model fills it, and
        // then the lower left (below its precision) is free instead.
        let upper_right_busy = curve.iter().any(|&(r, p)| r > 0.55 && p > 0.75);
        let corner = if upper_right_busy { SeriesLabelPosition::LowerLeft } else { SeriesLabelPosition::UpperRight };
        draw_legend(&mut chart, corner)
    })
}

fn calibration_plot(bins: &[CalibrationBin]) -> Result<String, ReportError> {
    render_svg(SQUARE_PLOT, |root| {
        let mut chart = unit_chart(root, "Calibration", "Mean predicted probability", "Observed churn rate")?;
        dashed_reference(&mut chart, (0.0, 0.0), (1.0, 1.0), "perfect calibration")?;
        let points: Vec<(f64, f64)> = bins.iter().map(|b| (b.mean_predicted, b.observed_rate)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), MODEL.stroke_width(2)))?
            .label("model")
            .legend(line_key(MODEL));

        let pixels: Vec<(i32, i32)> = points.iter().map(|p| chart.backend_coord(p)).collect();
        let bounds = chart.plotting_area().get_pixel_range();
        let max_count = bins.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
        let label_style =
            TextStyle::from((FONT, 12).into_font()).color(&MODEL).pos(Pos::new(HPos::Center, VPos::Center));
        chart.draw_series(bins.iter().enumerate().map(|(i, b)| {
            // Area, not radius, proportional to count, so a bin with 4x the
            // users looks 4x as heavy rather than 16x.
            let r = (3.0 + 9.0 * (b.count as f64 / max_count).sqrt()).round() as i32;
            let text = compact_count(b.count);
            let offset = count_label_offset(&pixels, i, r, text.len(), &bounds);
            EmptyElement::at(points[i])
                + Circle::new((0, 0), r, MODEL.mix(0.55).filled())
                + Circle::new((0, 0), r, MODEL.stroke_width(1))
                + Text::new(text, offset, label_style.clone())
        }))?;

        // Under-predicted bins sit in the upper left, over-predicted ones in
        // the lower right; put the legend in whichever corner is free.
        let upper_left_busy = points.iter().any(|&(x, y)| x < 0.45 && y > 0.75);
        let corner = if upper_left_busy { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperLeft };
        draw_legend(&mut chart, corner)
    })
}

/// User counts shortened so labels of neighbouring bins do not collide.
fn compact_count(count: usize) -> String {
    let c = count as f64;
    match count {
        0..=999 => count.to_string(),
        1_000..=9_999 => format!("{:.1}k", c / 1e3),
        10_000..=999_999 => format!("{:.0}k", c / 1e3),
        _ => format!("{:.1}M", c / 1e6),
    }
}

/// Pixel offset from bin `i`'s centre to the centre of its count label.
///
/// The label goes perpendicular to the calibration curve so it never sits on
/// the line, on the side away from the diagonal so it does not sit on that
/// either, unless that side would push it out of the plotting area.
fn count_label_offset(
    pixels: &[(i32, i32)],
    i: usize,
    radius: i32,
    chars: usize,
    bounds: &(std::ops::Range<i32>, std::ops::Range<i32>),
) -> (i32, i32) {
    let here = pixels[i];
    let prev = pixels[i.saturating_sub(1)];
    let next = pixels.get(i + 1).copied().unwrap_or(here);
    let (mut dx, mut dy) = (f64::from(next.0 - prev.0), f64::from(next.1 - prev.1));
    if dx.hypot(dy) < 1.0 {
        // A lone bin: pretend the curve follows the diagonal (up and right
        // on screen, where y grows downwards).
        (dx, dy) = (1.0, -1.0);
    }
    let len = dx.hypot(dy);
    let normal = (dy / len, -dx / len);
    let above_diagonal = {
        let (x, y) = (f64::from(here.0 - bounds.0.start), f64::from(bounds.1.end - here.1));
        let (w, h) =
            (f64::from(bounds.0.end - bounds.0.start).max(1.0), f64::from(bounds.1.end - bounds.1.start).max(1.0));
        y / h > x / w
    };
    // Moving by (nx, ny) screen pixels changes predicted - observed in
    // proportion to nx + ny (screen y is flipped), so a positive sum moves
    // away from the diagonal exactly when the bin lies below it.
    let away = if (normal.0 + normal.1 > 0.0) != above_diagonal { normal } else { (-normal.0, -normal.1) };
    let half_w = 3.4 * chars as f64;
    let half_h = 7.0;
    let place = |n: (f64, f64)| {
        let dist = f64::from(radius) + 4.0 + n.0.abs() * half_w + n.1.abs() * half_h;
        let off = ((n.0 * dist).round() as i32, (n.1 * dist).round() as i32);
        let (cx, cy) = (f64::from(here.0 + off.0), f64::from(here.1 + off.1));
        let fits = cx - half_w >= f64::from(bounds.0.start)
            && cx + half_w <= f64::from(bounds.0.end)
            && cy - half_h >= f64::from(bounds.1.start)
            && cy + half_h <= f64::from(bounds.1.end);
        (off, fits)
    };
    match place(away) {
        (off, true) => off,
        (fallback, false) => match place((-away.0, -away.1)) {
            (off, true) => off,
            _ => fallback,
        },
    }
}

/// Share of each class's users per equal-width score bin; scores are clamped
/// to `[0, 1]` and NaN scores skipped, as in the calibration table.
fn class_histograms(scores: &[f64], labels: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let mut churned = vec![0u64; HISTOGRAM_BINS];
    let mut retained = vec![0u64; HISTOGRAM_BINS];
    for (&s, &l) in scores.iter().zip(labels) {
        if s.is_nan() {
            continue;
        }
        let idx = ((s.clamp(0.0, 1.0) * HISTOGRAM_BINS as f64) as usize).min(HISTOGRAM_BINS - 1);
        if l {
            churned[idx] += 1;
        } else {
            retained[idx] += 1;
        }
    }
    let normalise = |counts: Vec<u64>| {
        let total = counts.iter().sum::<u64>().max(1) as f64;
        counts.into_iter().map(|c| c as f64 / total).collect()
    };
    (normalise(churned), normalise(retained))
}

fn histogram_plot(scores: &[f64], labels: &[bool], threshold: f64) -> Result<String, ReportError> {
    let (churned, retained) = class_histograms(scores, labels);
    let peak = churned.iter().chain(&retained).copied().fold(0.0, f64::max);
    // Headroom so the legend box fits above the tallest bar.
    let y_max = if peak > 0.0 { (peak * 1.35).min(1.0) } else { 1.0 };
    // The legend goes over whichever half of the axis has the lower bars.
    let half = HISTOGRAM_BINS / 2;
    let tallest = |range: std::ops::Range<usize>| {
        churned[range.clone()].iter().chain(&retained[range]).copied().fold(0.0, f64::max)
    };
    let corner = if tallest(0..half) < tallest(half..HISTOGRAM_BINS) {
        SeriesLabelPosition::UpperLeft
    } else {
        SeriesLabelPosition::UpperRight
    };
    let width = 1.0 / HISTOGRAM_BINS as f64;

    render_svg(SQUARE_PLOT, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Score distribution by outcome", (FONT, 20))
            .margin(18)
            .x_label_area_size(52)
            .y_label_area_size(62)
            .build_cartesian_2d(0f64..1f64, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("Predicted churn probability")
            .y_desc("Share of class")
            .x_labels(6)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .disable_x_mesh()
            .max_light_lines(1)
            .light_line_style(GRID_LIGHT)
            .bold_line_style(GRID_BOLD)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()?;

        // Side by side rather than overlaid: overlapping translucent bars
        // make the smaller class's shape hard to read.
        let bars = |shares: &[f64], offset: f64, color: RGBColor| {
            shares
                .iter()
                .enumerate()
                .map(move |(i, &share)| {
                    let x0 = i as f64 * width + offset;
                    Rectangle::new([(x0, 0.0), (x0 + 0.42 * width, share)], color.filled())
                })
                .collect::<Vec<_>>()
        };
        let key =
            |color: RGBColor| move |(x, y): (i32, i32)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled());
        chart.draw_series(bars(&churned, 0.08 * width, CHURNED))?.label("churned").legend(key(CHURNED));
        chart.draw_series(bars(&retained, 0.5 * width, RETAINED))?.label("retained").legend(key(RETAINED));
        if threshold.is_finite() && (0.0..=1.0).contains(&threshold) {
            chart
                .draw_series(DashedLineSeries::new(
                    [(threshold, 0.0), (threshold, y_max)],
                    6,
                    5,
                    ACCENT.stroke_width(2),
                ))?
                .label(format!("threshold {}", fmt_num(threshold, 3)))
                .legend(|at| dashed_key(at, ACCENT));
        }
        draw_legend(&mut chart, corner)
    })
}

/// The `TOP_COEFFICIENTS` finite coefficients with the largest magnitude,
/// largest first. Non-finite ones are left out because they cannot be drawn.
fn top_coefficients(coefficients: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut top: Vec<(String, f64)> = coefficients.iter().filter(|(_, c)| c.is_finite()).cloned().collect();
    top.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    top.truncate(TOP_COEFFICIENTS);
    top
}

fn truncate_label(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL_CHARS {
        name.to_owned()
    } else {
        let mut short: String = name.chars().take(MAX_LABEL_CHARS - 1).collect();
        short.push('\u{2026}');
        short
    }
}

fn coefficient_plot(top: &[(String, f64)]) -> Result<Option<String>, ReportError> {
    if top.is_empty() {
        return Ok(None);
    }
    let n = top.len();
    let labels: Vec<String> = top.iter().map(|(name, _)| truncate_label(name)).collect();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    // Plotters cannot measure text without a font backend, so size the label
    // column from a typical sans-serif advance of ~7.5px at 14px.
    let label_area = (longest as f64 * 7.5 + 16.0).clamp(60.0, 330.0) as u32;
    let magnitude = top.iter().map(|(_, c)| c.abs()).fold(0.0, f64::max);
    // Headroom on both sides for the value printed past each bar's end.
    let x_max = if magnitude > 0.0 { magnitude * 1.3 } else { 1.0 };
    let height = (120 + 28 * n as u32).max(180);

    // Rows sit at integer y, the largest coefficient in the top row. A plain
    // f64 axis rather than a segmented one, because plotters cannot map a
    // one-value discrete range.
    let row_of = |rank: usize| (n - 1 - rank) as f64;
    let label_for = |y: &f64| {
        let row = y.round();
        if (y - row).abs() > 1e-6 || row < 0.0 || row >= n as f64 {
            return String::new();
        }
        labels[n - 1 - row as usize].clone()
    };
    let y_range = -0.5..(n as f64 - 0.5);

    let svg = render_svg((COEFFICIENT_PLOT_WIDTH, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Top {n} coefficients by absolute value"), (FONT, 20))
            .margin(18)
            .x_label_area_size(52)
            .y_label_area_size(label_area)
            .build_cartesian_2d(-x_max..x_max, y_range.clone())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_max_light_lines(1)
            // With exactly n labels over n rows the only step plotters can
            // choose is 1, which puts a label on every row.
            .y_labels(n)
            .y_label_formatter(&label_for)
            .x_desc("Standardised coefficient (change in log-odds per SD)")
            .light_line_style(GRID_LIGHT)
            .bold_line_style(GRID_BOLD)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()?;

        chart.draw_series(top.iter().enumerate().map(|(rank, (_, c))| {
            let y = row_of(rank);
            let color = if *c >= 0.0 { CHURNED } else { RETAINED };
            Rectangle::new([(0.0, y - 0.32), (*c, y + 0.32)], color.filled())
        }))?;
        let value_style = |anchor: HPos| {
            TextStyle::from((FONT, 12).into_font()).color(&RGBColor(60, 60, 60)).pos(Pos::new(anchor, VPos::Center))
        };
        chart.draw_series(top.iter().enumerate().map(|(rank, (_, c))| {
            let (dx, anchor) = if *c >= 0.0 { (5, HPos::Left) } else { (-5, HPos::Right) };
            EmptyElement::at((*c, row_of(rank))) + Text::new(format!("{c:+.3}"), (dx, 0), value_style(anchor))
        }))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, y_range.start), (0.0, y_range.end)],
            RGBColor(90, 90, 90).stroke_width(1),
        )))?;

        // The key goes in the title band, top right: inside the plot any
        // corner can be covered by a bar when there are only a few rows.
        let key_style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        let x0 = COEFFICIENT_PLOT_WIDTH as i32 - 330;
        for (i, (color, text)) in
            [(CHURNED, "raises churn risk"), (RETAINED, "lowers churn risk")].into_iter().enumerate()
        {
            let x = x0 + 160 * i as i32;
            root.draw(&Rectangle::new([(x, 22), (x + 14, 34)], color.filled()))?;
            root.draw(&Text::new(text, (x + 20, 28), key_style.clone()))?;
        }
        Ok(())
    })?;
    Ok(Some(svg))
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
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 4px 20px 20px; margin-bottom: 20px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 20px; }
figure { margin: 0; }
figure svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; text-align: center; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 14px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { font-size: 13px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); border-bottom: 2px solid var(--line); }
tbody th { font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
td.context { color: var(--muted); }
table.kv td { word-break: break-word; }
.note { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic synthetic data: a latent risk drives both the score and
    /// the label, so the model is informative but imperfect.
    fn synthetic(n: usize) -> (Vec<f64>, Vec<bool>) {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut uniform = move || {
            // xorshift64*: good enough for test data, no extra dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut scores = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let risk = uniform();
            let score = (0.15 + 0.7 * risk + 0.25 * (uniform() - 0.5)).clamp(0.0, 1.0);
            scores.push(score);
            labels.push(uniform() < risk * risk);
        }
        (scores, labels)
    }

    fn coefficients() -> Vec<(String, f64)> {
        let mut coefs: Vec<(String, f64)> = (0..30)
            .map(|i| {
                let sign = if i % 3 == 0 { -1.0 } else { 1.0 };
                (format!("feature_{i:02}_sessions_7d"), sign * (30 - i) as f64 / 25.0)
            })
            .collect();
        coefs.push(("days<since>&\"login\"".to_owned(), 1.5));
        coefs.push(("broken".to_owned(), f64::NAN));
        coefs
    }

    #[test]
    fn report_is_self_contained_with_five_plots() -> Result<(), Box<dyn StdError>> {
        let (scores, labels) = synthetic(5_000);
        let coefs = coefficients();
        let extra =
            vec![("model".to_owned(), "logistic <l2>".to_owned()), ("horizon".to_owned(), "28 days".to_owned())];
        let input = ReportInput {
            title: "churnguard model v1 <test>",
            subtitle: "events 2024-01-01 .. 2024-03-31, cutoff 2024-03-01 & horizon 28d",
            scores: &scores,
            labels: &labels,
            coefficients: &coefs,
            threshold: 0.5,
            extra: &extra,
        };
        let dir = tempfile::tempdir()?;
        let out_dir = dir.path().join("nested").join("report");
        let path = write_report(&out_dir, &input)?;
        assert_eq!(path, out_dir.join("index.html"));
        let html = std::fs::read_to_string(&path)?;

        assert_eq!(html.matches("<svg").count(), 5);
        let auc = metrics::roc_auc(&scores, &labels);
        assert!(auc > 0.6 && auc < 0.95, "synthetic data should be informative: {auc}");
        assert!(html.contains(&format!("AUC = {auc:.4}")));

        assert!(html.contains("days&lt;since&gt;&amp;&quot;login&quot;"));
        assert!(!html.contains("days<since>"));
        assert!(html.contains("churnguard model v1 &lt;test&gt;"));
        assert!(html.contains("logistic &lt;l2&gt;"));
        assert!(!html.contains("<test>") && !html.contains("<l2>"));

        // Nothing is fetched when the file is opened.
        assert!(!html.contains("src=\"http") && !html.contains("<link"));
        assert!(!html.contains("NaN"));

        // Counts are rows (a user appears once per cutoff), and say so.
        assert!(html.contains("<th scope=\"row\">Rows</th><td class=\"num\">5000</td>"), "row count");
        assert!(html.contains(" rows</td>") && html.contains("churned rows missed"));
        assert!(!html.contains(">Users<") && !html.contains(" users</td>") && !html.contains("churners missed"));
        Ok(())
    }

    #[test]
    fn degenerate_inputs_still_render() -> Result<(), Box<dyn StdError>> {
        let dir = tempfile::tempdir()?;
        let cases: [(&[f64], &[bool]); 3] =
            [(&[], &[]), (&[0.2, 0.9, 0.4], &[false, false, false]), (&[0.5, 0.5], &[true, false])];
        for (i, (scores, labels)) in cases.into_iter().enumerate() {
            let input = ReportInput {
                title: "empty",
                subtitle: "",
                scores,
                labels,
                coefficients: &[],
                threshold: f64::NAN,
                extra: &[],
            };
            let path = write_report(&dir.path().join(i.to_string()), &input)?;
            let html = std::fs::read_to_string(path)?;
            // No coefficients, so no coefficient chart.
            assert_eq!(html.matches("<svg").count(), 4);
        }
        Ok(())
    }

    #[test]
    fn downsample_keeps_ends_and_bounds_size() {
        let curve: Vec<(f64, f64)> = (0..=10_000)
            .map(|i| {
                let x = f64::from(i) / 10_000.0;
                (x, x.sqrt())
            })
            .collect();
        let thin = downsample(&curve, 500);
        assert!(thin.len() <= 502, "{}", thin.len());
        assert!(thin.len() > 400, "{}", thin.len());
        assert_eq!(thin.first(), curve.first());
        assert_eq!(thin.last(), curve.last());
        let short = [(0.0, 0.0), (1.0, 1.0)];
        assert_eq!(downsample(&short, 500), short.to_vec());
    }

    #[test]
    fn escape_covers_markup_characters() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn top_coefficients_sorted_by_magnitude() {
        let coefs =
            vec![("a".to_owned(), 0.1), ("b".to_owned(), -2.0), ("c".to_owned(), f64::INFINITY), ("d".to_owned(), 1.0)];
        let names: Vec<String> = top_coefficients(&coefs).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "d", "a"]);
    }
}
