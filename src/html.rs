//! The pieces of the self-contained HTML reports (`train --report`, `uplift --report`) that do
//! not depend on what a report shows.

use std::fmt::Write as _;

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
