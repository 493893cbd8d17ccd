//! Terminal output that behaves in pipelines: log setup (colour only on a terminal, `NO_COLOR`,
//! text or JSON lines) and line printing that never panics on a closed pipe.
//!
//! `println!` and `eprintln!` panic when the other end of the pipe is gone (exit status 101).
//! Here a closed stdout ends the process quietly with status 0, the way `head` expects of the
//! command before it; a closed stderr is ignored, so the command still finishes its work
//! (files, offsets) and exits with its own status.

use std::io::{IsTerminal, Write};

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    // Human-readable lines; coloured only when stderr is a terminal and `NO_COLOR` is unset.
    #[default]
    Text,
    // One JSON object per line, for log shippers.
    Json,
}

/// Colour is for people at a terminal: never in files or pipes, never with `NO_COLOR` set
/// (to any non-empty value, <https://no-color.org>).
pub fn colour_on_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// A warning for the person running the command: `warning: ...` on stderr, or a JSON log line at
/// level WARN with `--log-format json`.
pub fn warn(msg: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::warn!("{msg}"),
        _ => stderr_line(format_args!("warning: {msg}")),
    }
}

/// A message for the person running the command: a plain line on stderr, or a JSON log line at
/// level INFO with `--log-format json`.
pub fn note(msg: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::info!("{msg}"),
        _ => stderr_line(format_args!("{msg}")),
    }
}

/// Install the global tracing subscriber: `RUST_LOG` filter (default `info`), lines on stderr.
pub fn init_logging(format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Write errors (a closed stderr) are dropped: reporting them would write to stderr again.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    let result = match format {
        LogFormat::Text => builder.with_ansi(colour_on_stderr()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).flatten_event(true).with_current_span(false).try_init(),
    };
    // Already installed (tests calling twice): keep the first.
    drop(result);
}

/// Write one line to stdout. A closed stdout (EPIPE) ends the process with status 0: nobody
/// reads what follows. Other write errors are ignored.
pub fn stdout_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let r = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Write to stdout without a newline; same error handling as [`stdout_line`].
pub fn stdout_str(s: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Write one line to stderr, ignoring any error (a closed stderr must not stop the work).
pub fn stderr_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `println!` that does not panic on a closed stdout (see [`stdout_line`]).
#[macro_export]
macro_rules! outln {
    () => { $crate::term::stdout_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::term::stdout_line(format_args!($($arg)*)) };
}

/// `eprintln!` that does not panic on a closed stderr (see [`stderr_line`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::term::stderr_line(format_args!($($arg)*)) };
}
