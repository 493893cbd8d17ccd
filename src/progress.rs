//! Progress bars for long commands, drawn only when stderr is a terminal (never in logs or CI).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

fn attended() -> bool {
    std::io::stderr().is_terminal()
}

/// A bar over `total` bytes of input.
pub fn bytes(total: u64, what: &str) -> ProgressBar {
    if !attended() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// A spinner for a step of unknown length.
pub fn spinner(what: &str) -> ProgressBar {
    if !attended() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}
