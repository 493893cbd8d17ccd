//! The pieces of the self-contained HTML reports (`train --report`, `uplift --report`) that do
//! not depend on what a report shows.

use std::fmt::Write as _;

use plotters::style::RGBColor;

/// The reports' shared plot style: one font, one palette.
pub mod palette {
    use super::RGBColor;

    pub const FONT: &str = "sans-serif";
    /// Churn (and harm) is red, retention blue, in every report.
    pub const RED: RGBColor = RGBColor(200, 62, 52);
    pub const BLUE: RGBColor = RGBColor(44, 108, 176);
    pub const NAVY: RGBColor = RGBColor(34, 62, 110);
    pub const REFERENCE: RGBColor = RGBColor(140, 140, 140);
    pub const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);
    pub const GRID_BOLD: RGBColor = RGBColor(214, 214, 214);
}

/// Escapes text for element content and quoted attribute values alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// An inline SVG figure with its caption.
pub fn push_figure(html: &mut String, svg: &str, caption: &str) {
    let _ = writeln!(html, "<figure>\n{svg}<figcaption>{}</figcaption>\n</figure>", escape(caption));
}
