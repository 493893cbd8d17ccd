//! File event sources: `.jsonl` and `.jsonl.gz`, line by line, with rejected lines counted by
//! reason (never a crash, never silently skipped).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::event::{parse_event, ActivityEvent, FutureGuard, RejectReason, Rejection, DEFAULT_MAX_FUTURE};

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
/// skipped; bad lines are tallied, and so are events stamped more than [`DEFAULT_MAX_FUTURE`]
/// after the start of the read (one such event would move a replay's clock years ahead). Returns the number of non-blank lines read.
pub fn for_each_event(
    path: &Path,
    max_event_bytes: usize,
    tally: &mut RejectTally,
    mut on_event: impl FnMut(ActivityEvent<'_>),
) -> Result<u64, SourceError> {
    for_each_event_ahead(path, max_event_bytes, tally, |ev, _| on_event(ev))
}

/// Lines read and parsed at a time, so that a consumer can see events ahead of their turn.
const BATCH_LINES: usize = 64;

/// [`for_each_event`], with each event handed over together with the events that follow it in
/// the same batch of [`BATCH_LINES`] lines: time for a consumer to ask for the memory those will
/// need while it handles this one.
pub fn for_each_event_ahead(
    path: &Path,
    max_event_bytes: usize,
    tally: &mut RejectTally,
    mut on_event: impl FnMut(ActivityEvent<'_>, &[ActivityEvent<'_>]),
) -> Result<u64, SourceError> {
    let mut reader = open(path)?;
    let mut block = Vec::with_capacity(BATCH_LINES * 256);
    let mut ends: Vec<(usize, u64)> = Vec::with_capacity(BATCH_LINES);
    let (mut line_no, mut lines) = (0u64, 0u64);
    let mut at_end = false;
    // The present is the start of the read: a whole file is judged against one instant.
    let future = FutureGuard::new(DEFAULT_MAX_FUTURE);
    let latest = future.latest(chrono::Utc::now().timestamp_millis());
    while !at_end {
        block.clear();
        ends.clear();
        while ends.len() < BATCH_LINES {
            let n = reader
                .read_until(b'\n', &mut block)
                .map_err(|source| SourceError::Io { path: path.display().to_string(), source })?;
            if n == 0 {
                at_end = true;
                break;
            }
            line_no += 1;
            ends.push((block.len(), line_no));
        }
        let mut events = Vec::with_capacity(ends.len());
        let mut start = 0;
        for &(end, no) in &ends {
            let line = trim_line(&block[start..end]);
            start = end;
            if line.is_empty() {
                continue;
            }
            lines += 1;
            match parse_event(line, max_event_bytes) {
                Ok(ev) if ev.ts <= latest => events.push(ev),
                Ok(_) => tally.record(no, future.rejection()),
                Err(r) => tally.record(no, r),
            }
        }
        let mut events = events.into_iter();
        while let Some(ev) = events.next() {
            on_event(ev, events.as_slice());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Across batch boundaries, with blank and bad lines mixed in: every valid event once, in
    /// file order, each with the events after it in its batch, and bad lines tallied by number.
    #[test]
    fn events_come_in_order_with_the_rest_of_their_batch_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let mut f = std::fs::File::create(&path).expect("file");
        let mut expected = Vec::new();
        let mut bad_lines = Vec::new();
        for n in 1..=(3 * BATCH_LINES as u64 + 7) {
            if n % 11 == 0 {
                writeln!(f).expect("write");
            } else if n % 13 == 0 {
                writeln!(f, "{{not json").expect("write");
                bad_lines.push(n);
            } else {
                let user = format!("u{n}");
                writeln!(f, r#"{{"user_id":"{user}","event_type":"login","ts":"2026-01-01T00:00:00Z"}}"#)
                    .expect("write");
                expected.push(user);
            }
        }
        drop(f);
        let (mut seen, mut aheads) = (Vec::new(), Vec::new());
        let mut tally = RejectTally::default();
        let lines = for_each_event_ahead(&path, 4096, &mut tally, |ev, ahead| {
            seen.push(ev.user_id.to_string());
            aheads.push(ahead.iter().map(|e| e.user_id.to_string()).collect::<Vec<_>>());
        })
        .expect("read");
        assert_eq!(seen, expected);
        for (k, ahead) in aheads.iter().enumerate() {
            assert_eq!(ahead[..], expected[k + 1..k + 1 + ahead.len()], "event {k}: not the events after it");
        }
        assert!(aheads.iter().filter(|a| a.is_empty()).count() >= 3, "a batch's last event sees nothing ahead");
        assert!(aheads.iter().any(|a| a.len() >= BATCH_LINES / 2), "events are seen ahead");
        assert_eq!(tally.examples.iter().map(|(n, _)| *n).collect::<Vec<_>>(), bad_lines[..bad_lines.len().min(5)]);
        assert_eq!(tally.total(), bad_lines.len() as u64);
        assert_eq!(lines, 3 * BATCH_LINES as u64 + 7 - (3 * BATCH_LINES as u64 + 7) / 11);
    }

    /// An event stamped after the present is tallied as `bad_timestamp`, and the events around
    /// it still come through: a file's clock cannot be moved years ahead by one line.
    #[test]
    fn an_event_from_the_future_is_tallied_not_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let now = chrono::Utc::now().timestamp_millis();
        let line = |user: &str, ts: i64| format!(r#"{{"user_id":"{user}","event_type":"login","ts":{ts}}}"#);
        let hour = crate::time::HOUR_MS;
        let text =
            [line("past", now - 24 * hour), line("far", now + 50 * 365 * 24 * hour), line("near", now + hour / 12)];
        std::fs::write(&path, text.join("\n")).expect("write");
        let mut tally = RejectTally::default();
        let mut seen = Vec::new();
        for_each_event(&path, 4096, &mut tally, |ev| seen.push(ev.user_id.to_string())).expect("read");
        assert_eq!(seen, ["past", "near"], "within the margin of the present is accepted");
        assert_eq!(tally.by_reason.get(&RejectReason::BadTimestamp), Some(&1));
        assert_eq!(tally.examples[0].0, 2, "reported at its line");
    }
}
