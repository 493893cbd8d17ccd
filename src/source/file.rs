//! File event sources: `.jsonl` and `.jsonl.gz`, line by line, with rejected lines counted by
//! reason (never a crash, never silently skipped).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::event::{parse_event, ActivityEvent, RejectReason, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read events from {path}")]
    Io { path: String, source: std::io::Error },
}

/// Rejected lines by reason, with the first few examples for the end-of-run report.
#[derive(Debug, Default, Clone)]
pub struct RejectTally {
    pub by_reason: BTreeMap<RejectReason, u64>,
    pub examples: Vec<(u64, Rejection)>,
}

impl RejectTally {
    const MAX_EXAMPLES: usize = 5;

    pub fn record(&mut self, line_no: u64, r: Rejection) {
        *self.by_reason.entry(r.reason).or_default() += 1;
        if self.examples.len() < Self::MAX_EXAMPLES {
            self.examples.push((line_no, r));
        }
    }

    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }

    /// Multi-line human report; empty when nothing was rejected.
    pub fn report(&self) -> String {
        if self.total() == 0 {
            return String::new();
        }
        let mut s = format!("rejected {} line(s):", self.total());
        for (r, n) in &self.by_reason {
            s.push_str(&format!(" {r}={n}"));
        }
        for (line, r) in &self.examples {
            s.push_str(&format!("\n  line {line}: {r}"));
        }
        s
    }
}

/// Open a `.jsonl` or `.jsonl.gz` (by magic bytes, not name) for buffered reading.
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, SourceError> {
    let err = |source| SourceError::Io { path: path.display().to_string(), source };
    let mut f = File::open(path).map_err(err)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(err)?;
    let f = File::open(path).map_err(err)?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // Progress is counted on the file's bytes (compressed, for .gz), only on a terminal.
    let f = crate::progress::bytes(len, &path.display().to_string()).wrap_read(f);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, f)),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }
}

/// Read every line, parse it, and hand valid events to `on_event` in file order. Blank lines are
/// skipped; bad lines are tallied. Returns the number of non-blank lines read.
pub fn for_each_event(
    path: &Path,
    max_event_bytes: usize,
    tally: &mut RejectTally,
    mut on_event: impl FnMut(ActivityEvent<'_>),
) -> Result<u64, SourceError> {
    let mut reader = open(path)?;
    let mut buf = Vec::with_capacity(4096);
    let (mut line_no, mut lines) = (0u64, 0u64);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| SourceError::Io { path: path.display().to_string(), source })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let line = trim_line(&buf);
        if line.is_empty() {
            continue;
        }
        lines += 1;
        match parse_event(line, max_event_bytes) {
            Ok(ev) => on_event(ev),
            Err(r) => tally.record(line_no, r),
        }
    }
    Ok(lines)
}

fn trim_line(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && matches!(b[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &b[..end]
}
