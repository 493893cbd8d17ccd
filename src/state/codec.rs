//! The versioned binary encoding of an engine's state: a record per user and one clock record
//! per partition, as written to the changelog topic and to snapshot files.
//!
//! Every value starts with a version byte, a kind byte and the 8-byte id of the feature layout
//! it was written with, so a reader never applies state laid out for another model's spec. The
//! rest is compact because most of a user's cells are zero or close to their first event time:
//! window cells are run-length coded (runs of zeros, then literal varints), timestamps are
//! varint deltas from the user's first event, with a one-byte code for "never".
//!
//! Decoding takes untrusted bytes (a topic anyone may write to, a file on disk): it never
//! panics, and it allocates no more than the layout's fixed sizes and the input's own length.

use crate::engine::{ClockState, PendingOutcome, UserRecord, UserView, NO_DUE};
use crate::event::MAX_USER_ID_BYTES;
use crate::policy::Memory;
use crate::time::Millis;

pub const VERSION: u8 = 1;
const KIND_USER: u8 = b'U';
const KIND_CLOCK: u8 = b'C';
const KIND_END: u8 = b'E';

/// "Never" in a feature state's wide cells.
const NEVER: u64 = i64::MIN as u64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("record ends early")]
    Truncated,
    #[error("record version {0}, this build reads version {VERSION}")]
    Version(u8),
    #[error("record kind {0:#04x} where a {1} record was expected")]
    Kind(u8, &'static str),
    #[error("state written for feature layout {got:016x}, the model's is {want:016x}")]
    Layout { got: u64, want: u64 },
    #[error("{what}: {got} cells, the layout has {want}")]
    Cells { what: &'static str, got: u64, want: usize },
    #[error("a number does not fit its field")]
    Overflow,
    #[error("a string is not UTF-8")]
    Utf8,
    #[error("a string is longer than allowed")]
    TooLong,
    #[error("{0} bytes after the end of the record")]
    Trailing(usize),
}

/// What a decoder needs to know about the engine it restores into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub layout_id: u64,
    pub narrow: usize,
    pub wide: usize,
    /// The same spec's layout before slot counts were packed two to a word, still read (and
    /// repacked) so that upgrading churnguard does not throw a changelog away.
    pub unpacked: Option<Unpacked>,
}

/// A layout with a u32 cell per slot count: `ring_slots` slots of `n_types + 1` cells (the
/// counts, then the amount) where today's windows are packed, then the rest of the narrow cells
/// as they are today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub layout_id: u64,
    pub narrow: usize,
    pub n_types: usize,
    pub ring_slots: usize,
}

impl Shape {
    pub fn of(layout: &crate::features::Layout) -> Shape {
        let id = |tag: &str, narrow: usize| {
            let fingerprint = layout.spec().fingerprint();
            crate::hash::stable_u64(
                "churnguard.state.layout",
                &format!("{fingerprint}/{narrow}/{}{tag}", layout.wide_len()),
            )
        };
        // The packed windows are the shortest ones, so the first rings.
        let packed = || layout.rings().iter().filter(|r| r.packed());
        let ring_slots: usize = packed().map(|r| r.len() / r.slot_cells()).sum();
        let packed_cells: usize = packed().map(|r| r.len()).sum();
        let (n_types, narrow) = (layout.n_types(), layout.narrow_len());
        let unpacked_narrow = narrow - packed_cells + ring_slots * (n_types + 1);
        Shape {
            layout_id: id("/packed", narrow),
            narrow,
            wide: layout.wide_len(),
            unpacked: Some(Unpacked {
                layout_id: id("", unpacked_narrow),
                narrow: unpacked_narrow,
                n_types,
                ring_slots,
            }),
        }
    }
}

impl Unpacked {
    /// Repack `cells` (of this layout's length) in place into the packed layout of `narrow`
    /// cells. A count above 16 bits reads as the packed slot's maximum, as counting it would have.
    fn repack(&self, cells: &mut Vec<u32>, narrow: usize) -> Result<(), CodecError> {
        let (old, new) = (self.n_types + 1, self.n_types.div_ceil(2) + 1);
        let tail = self.ring_slots * old;
        if self.n_types > crate::features::MAX_TYPES
            || cells.len() != self.narrow
            || self.narrow - tail + self.ring_slots * new != narrow
        {
            return Err(CodecError::Cells { what: "narrow", got: cells.len() as u64, want: narrow });
        }
        let mut slot = [0u32; crate::features::MAX_TYPES + 1];
        // Slot s moves from s * old to s * new, never later: reading it whole first lets the
        // packed cells overwrite it in place.
        for s in 0..self.ring_slots {
            slot[..old].copy_from_slice(&cells[s * old..(s + 1) * old]);
            let out = &mut cells[s * new..(s + 1) * new];
            out.fill(0);
            for (t, &c) in slot[..self.n_types].iter().enumerate() {
                out[t / 2] |= c.min(crate::features::SLOT_COUNT_MAX) << (16 * (t % 2));
            }
            out[new - 1] = slot[self.n_types];
        }
        cells.copy_within(tail.., self.ring_slots * new);
        cells.truncate(narrow);
        Ok(())
    }
}

/// The kind of a record, read from its header without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Clock,
    /// The end of a flush (see crate::state::changelog).
    End,
}

pub fn kind_of(value: &[u8]) -> Result<Kind, CodecError> {
    match value.get(..2) {
        None => Err(CodecError::Truncated),
        Some([v, _]) if *v != VERSION => Err(CodecError::Version(*v)),
        Some([_, KIND_USER]) => Ok(Kind::User),
        Some([_, KIND_CLOCK]) => Ok(Kind::Clock),
        Some([_, KIND_END]) => Ok(Kind::End),
        Some([_, k]) => Err(CodecError::Kind(*k, "user or clock")),
        Some(_) => Err(CodecError::Truncated),
    }
}

// ---- writing ----

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A time as a delta from `base`, with `sentinel` (a "never" value) coded as 0.
fn put_time(out: &mut Vec<u8>, v: i64, base: i64, sentinel: i64) {
    if v == sentinel {
        out.push(0);
    } else {
        put_varint(out, u128::from(zigzag(v.wrapping_sub(base))) + 1);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u128);
    out.extend_from_slice(s.as_bytes());
}

fn header(out: &mut Vec<u8>, kind: u8, shape: &Shape) {
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&shape.layout_id.to_le_bytes());
}

/// Append a user's state (without the user id: that is the record's key) to `out`.
pub fn encode_user(out: &mut Vec<u8>, shape: &Shape, u: &UserView<'_>) {
    header(out, KIND_USER, shape);
    put_varint(out, u.narrow.len() as u128);
    let mut i = 0;
    while i < u.narrow.len() {
        let zeros = u.narrow[i..].iter().take_while(|&&c| c == 0).count();
        i += zeros;
        let lits = u.narrow[i..].iter().take_while(|&&c| c != 0).count();
        put_varint(out, zeros as u128);
        put_varint(out, lits as u128);
        for &c in &u.narrow[i..i + lits] {
            put_varint(out, u128::from(c));
        }
        i += lits;
    }
    put_varint(out, u.wide.len() as u128);
    let base = u.wide.first().map_or(0, |&w| w as i64);
    if let Some(&first) = u.wide.first() {
        put_varint(out, u128::from(zigzag(first as i64)));
    }
    for &w in u.wide.iter().skip(1) {
        put_time(out, w as i64, base, NEVER as i64);
    }
    put_time(out, u.next_due, base, NO_DUE);
    put_time(out, u.memory.last_sent, base, Millis::MIN);
    out.push(u.memory.last_rank);
    let o = &u.outcome;
    put_time(out, o.due, base, NO_DUE);
    if o.due != NO_DUE {
        put_time(out, o.decided, base, Millis::MIN);
        put_varint(out, u128::from(o.cell));
        out.push(u8::from(o.retained));
        out.extend_from_slice(&o.spend.to_le_bytes());
    }
}

/// Append a partition's clock record: the engine's clock and outcome keys, and the input offset
/// the state reflects (the next offset to read).
pub fn encode_clock(out: &mut Vec<u8>, shape: &Shape, c: &ClockState, input_offset: i64) {
    header(out, KIND_CLOCK, shape);
    put_varint(out, u128::from(zigzag(input_offset)));
    for t in [c.max_ts, c.watermark, c.warm_until, c.timer_base, c.outcome_base] {
        put_time(out, t, 0, Millis::MIN);
    }
    put_varint(out, c.outcome_keys.len() as u128);
    for (control, tier, action) in &c.outcome_keys {
        out.push(u8::from(*control));
        put_str(out, tier);
        put_str(out, action);
    }
}

/// Append a flush's end marker: the input offset its flush's clock record gave.
pub fn encode_end(out: &mut Vec<u8>, shape: &Shape, input_offset: i64) {
    header(out, KIND_END, shape);
    put_varint(out, u128::from(zigzag(input_offset)));
}

// ---- reading ----

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u128, CodecError> {
        // Most cells and time deltas take one or two bytes: read those without the general
        // loop's 128-bit shifts and checks (a restore decodes about 170 varints per user).
        if let Some(&[a, b]) = self.buf.get(self.pos..self.pos + 2) {
            if a < 0x80 {
                self.pos += 1;
                return Ok(u128::from(a));
            }
            if b < 0x80 {
                self.pos += 2;
                return Ok(u128::from(a & 0x7f) | u128::from(b) << 7);
            }
        }
        let mut v: u128 = 0;
        for shift in (0..).step_by(7) {
            let b = self.byte()?;
            if shift >= 126 && b > 0x03 {
                return Err(CodecError::Overflow);
            }
            v |= u128::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        unreachable!("the loop returns or fails within 19 bytes")
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        u64::try_from(self.varint()?).map_err(|_| CodecError::Overflow)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.varint()?).map_err(|_| CodecError::Overflow)
    }

    fn time(&mut self, base: i64, sentinel: i64) -> Result<i64, CodecError> {
        match self.varint()? {
            0 => Ok(sentinel),
            v => {
                let z = u64::try_from(v - 1).map_err(|_| CodecError::Overflow)?;
                Ok(base.wrapping_add(unzigzag(z)))
            }
        }
    }

    fn str(&mut self, max: usize) -> Result<&'a str, CodecError> {
        let n = self.u64()?;
        if n > max as u64 {
            return Err(CodecError::TooLong);
        }
        std::str::from_utf8(self.bytes(n as usize)?).map_err(|_| CodecError::Utf8)
    }

    /// Read a header; `Some` when the record has the unpacked layout of `shape`.
    fn header(&mut self, kind: u8, what: &'static str, shape: &Shape) -> Result<Option<Unpacked>, CodecError> {
        let v = self.byte()?;
        if v != VERSION {
            return Err(CodecError::Version(v));
        }
        let k = self.byte()?;
        if k != kind {
            return Err(CodecError::Kind(k, what));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(self.bytes(8)?);
        let got = u64::from_le_bytes(id);
        match shape.unpacked {
            _ if got == shape.layout_id => Ok(None),
            Some(u) if got == u.layout_id => Ok(Some(u)),
            _ => Err(CodecError::Layout { got, want: shape.layout_id }),
        }
    }

    fn end(&self) -> Result<(), CodecError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

/// Decode a user record into `into` (its buffers are reused). `key` is the record's key, the
/// user id.
pub fn decode_user(key: &[u8], value: &[u8], shape: &Shape, into: &mut UserRecord) -> Result<(), CodecError> {
    if key.is_empty() || key.len() > MAX_USER_ID_BYTES {
        return Err(CodecError::TooLong);
    }
    let id = std::str::from_utf8(key).map_err(|_| CodecError::Utf8)?;
    let mut r = Reader { buf: value, pos: 0 };
    let unpacked = r.header(KIND_USER, "user", shape)?;
    let cells = unpacked.map_or(shape.narrow, |u| u.narrow);
    let n = r.u64()?;
    if n != cells as u64 {
        return Err(CodecError::Cells { what: "narrow", got: n, want: cells });
    }
    into.narrow.clear();
    into.narrow.resize(cells, 0);
    let mut i = 0usize;
    while i < cells {
        let zeros = r.u64()?;
        let lits = r.u64()?;
        let end = (i as u64).saturating_add(zeros).saturating_add(lits);
        if end > cells as u64 || zeros.saturating_add(lits) == 0 {
            return Err(CodecError::Cells { what: "narrow", got: end, want: cells });
        }
        i += zeros as usize;
        for _ in 0..lits {
            into.narrow[i] = r.u32()?;
            i += 1;
        }
    }
    if let Some(u) = unpacked {
        u.repack(&mut into.narrow, shape.narrow)?;
    }
    let w = r.u64()?;
    if w != shape.wide as u64 {
        return Err(CodecError::Cells { what: "wide", got: w, want: shape.wide });
    }
    into.wide.clear();
    let base = if shape.wide > 0 {
        let first = unzigzag(r.u64()?);
        into.wide.push(first as u64);
        first
    } else {
        0
    };
    for _ in 1..shape.wide {
        into.wide.push(r.time(base, NEVER as i64)? as u64);
    }
    into.next_due = r.time(base, NO_DUE)?;
    into.memory = Memory { last_sent: r.time(base, Millis::MIN)?, last_rank: r.byte()? };
    let due = r.time(base, NO_DUE)?;
    into.outcome = if due == NO_DUE {
        crate::engine::NO_OUTCOME
    } else {
        let decided = r.time(base, Millis::MIN)?;
        let cell = r.u32()?;
        let retained = r.byte()? != 0;
        let mut f = [0u8; 8];
        f.copy_from_slice(r.bytes(8)?);
        PendingOutcome { due, decided, cell, retained, spend: f64::from_le_bytes(f) }
    };
    r.end()?;
    into.user_id.clear();
    into.user_id.push_str(id);
    Ok(())
}

/// Decode a clock record: the engine's clock state and the input offset it reflects.
pub fn decode_clock(value: &[u8], shape: &Shape) -> Result<(ClockState, i64), CodecError> {
    let mut r = Reader { buf: value, pos: 0 };
    r.header(KIND_CLOCK, "clock", shape)?;
    let offset = unzigzag(r.u64()?);
    let max_ts = r.time(0, Millis::MIN)?;
    let watermark = r.time(0, Millis::MIN)?;
    let warm_until = r.time(0, Millis::MIN)?;
    let timer_base = r.time(0, Millis::MIN)?;
    let outcome_base = r.time(0, Millis::MIN)?;
    let n = r.u64()?;
    // Each key takes at least 3 bytes: no allocation beyond what the input could hold.
    if n > (value.len() / 3) as u64 {
        return Err(CodecError::Truncated);
    }
    let mut keys = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let control = r.byte()? != 0;
        let tier = r.str(1024)?.to_string();
        let action = r.str(1024)?.to_string();
        keys.push((control, tier, action));
    }
    r.end()?;
    Ok((ClockState { max_ts, watermark, warm_until, timer_base, outcome_base, outcome_keys: keys }, offset))
}

/// Decode a flush's end marker: the input offset of the flush it ends.
pub fn decode_end(value: &[u8], shape: &Shape) -> Result<i64, CodecError> {
    let mut r = Reader { buf: value, pos: 0 };
    r.header(KIND_END, "end", shape)?;
    let offset = unzigzag(r.u64()?);
    r.end()?;
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHAPE: Shape = Shape { layout_id: 0x1234_5678_9abc_def0, narrow: 40, wide: 7, unpacked: None };

    fn time() -> impl Strategy<Value = i64> {
        prop_oneof![Just(Millis::MIN), Just(Millis::MAX), any::<i64>(), 1_600_000_000_000i64..1_900_000_000_000,]
    }

    fn record() -> impl Strategy<Value = (String, UserRecord)> {
        let cells =
            prop::collection::vec(prop_oneof![3 => Just(0u32), 1 => any::<u32>(), 1 => 0u32..300], SHAPE.narrow);
        let wide = prop::collection::vec(
            prop_oneof![Just(NEVER), any::<u64>(), 1_700_000_000_000u64..1_800_000_000_000],
            SHAPE.wide,
        );
        (
            "[a-zA-Z0-9_\\-\u{e9}]{1,40}",
            cells,
            wide,
            time(),
            time(),
            any::<u8>(),
            (time(), time(), any::<u32>(), any::<bool>(), any::<f64>()),
        )
            .prop_map(
                |(id, narrow, wide, next_due, last_sent, last_rank, (due, decided, cell, retained, spend))| {
                    let outcome = if due == NO_DUE {
                        crate::engine::NO_OUTCOME
                    } else {
                        PendingOutcome { due, decided, cell, retained, spend }
                    };
                    (
                        id.clone(),
                        UserRecord {
                            user_id: id,
                            narrow,
                            wide,
                            next_due,
                            memory: Memory { last_sent, last_rank },
                            outcome,
                        },
                    )
                },
            )
    }

    proptest! {
        #[test]
        fn user_records_round_trip((id, rec) in record()) {
            let mut buf = Vec::new();
            encode_user(&mut buf, &SHAPE, &rec.view());
            prop_assert_eq!(kind_of(&buf), Ok(Kind::User));
            let mut back = UserRecord::default();
            decode_user(id.as_bytes(), &buf, &SHAPE, &mut back).unwrap();
            prop_assert!(rec.identical(&back), "{:?} != {:?}", rec, back);
        }

        #[test]
        fn clock_records_round_trip(
            offset in any::<i64>(), max_ts in time(), watermark in time(), warm_until in time(),
            timer_base in time(), outcome_base in time(),
            keys in prop::collection::vec((any::<bool>(), "[a-z_]{0,12}", "[a-z_\u{e9}]{0,20}"), 0..6),
        ) {
            let c = ClockState { max_ts, watermark, warm_until, timer_base, outcome_base, outcome_keys: keys };
            let mut buf = Vec::new();
            encode_clock(&mut buf, &SHAPE, &c, offset);
            prop_assert_eq!(kind_of(&buf), Ok(Kind::Clock));
            prop_assert_eq!(decode_clock(&buf, &SHAPE).unwrap(), (c, offset));
            let mut end = Vec::new();
            encode_end(&mut end, &SHAPE, offset);
            prop_assert_eq!(kind_of(&end), Ok(Kind::End));
            prop_assert_eq!(decode_end(&end, &SHAPE), Ok(offset));
        }

        #[test]
        fn decoding_any_bytes_fails_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut into = UserRecord::default();
            let _ = decode_user(b"u1", &bytes, &SHAPE, &mut into);
            let _ = decode_clock(&bytes, &SHAPE);
            let _ = decode_end(&bytes, &SHAPE);
            let _ = kind_of(&bytes);
        }

        #[test]
        fn every_truncation_of_a_record_is_an_error((id, rec) in record()) {
            let mut buf = Vec::new();
            encode_user(&mut buf, &SHAPE, &rec.view());
            let mut into = UserRecord::default();
            for cut in 0..buf.len() {
                prop_assert!(decode_user(id.as_bytes(), &buf[..cut], &SHAPE, &mut into).is_err(), "cut at {}", cut);
            }
        }
    }

    #[test]
    fn another_layout_or_version_is_refused() {
        let rec = UserRecord { user_id: "u".into(), narrow: vec![0; 40], wide: vec![5; 7], ..Default::default() };
        let mut buf = Vec::new();
        encode_user(&mut buf, &SHAPE, &rec.view());
        let other = Shape { layout_id: 1, ..SHAPE };
        let mut into = UserRecord::default();
        assert!(matches!(decode_user(b"u", &buf, &other, &mut into), Err(CodecError::Layout { .. })));
        buf[0] = 9;
        assert_eq!(decode_user(b"u", &buf, &SHAPE, &mut into), Err(CodecError::Version(9)));
        assert_eq!(kind_of(&buf), Err(CodecError::Version(9)));
    }

    /// Cells of a state written before slot counts were packed: a word per count.
    fn unpack(packed: &[u32], u: &Unpacked) -> Vec<u32> {
        let new = u.n_types.div_ceil(2) + 1;
        let mut old = Vec::new();
        for cells in packed[..u.ring_slots * new].chunks(new) {
            old.extend((0..u.n_types).map(|t| (cells[t / 2] >> (16 * (t % 2))) & 0xffff));
            old.push(cells[new - 1]);
        }
        old.extend_from_slice(&packed[u.ring_slots * new..]);
        old
    }

    proptest! {
        /// A changelog written by the previous layout is read into today's: the same counts,
        /// amounts and everything after the windows.
        #[test]
        fn state_with_a_word_per_count_is_read_and_repacked(
            n_named in 1usize..9,
            long in any::<bool>(),
            events in prop::collection::vec((0i64..2_000, 0usize..9, -500i32..5_000), 1..60),
        ) {
            use crate::features::{FeatureSpec, FeatureStore, Layout};
            use crate::time::{Span, DAY_MS, HOUR_MS};
            let mut spec = FeatureSpec { event_types: (0..n_named).map(|i| format!("t{i}")).collect(), ..FeatureSpec::default() };
            if long {
                // 30-day slots in the last window: a word per count there, in both layouts.
                spec.windows = vec![Span::days(7), Span::days(30), Span::days(180)];
            }
            let layout = Layout::new(&spec, 30 * DAY_MS);
            let shape = Shape::of(&layout);
            let u = shape.unpacked.unwrap();
            let mut store = FeatureStore::new(layout.clone());
            let t0 = 1_767_225_600_000;
            let (idx, _) = store.get_or_insert("u", t0);
            for (h, ty, cents) in &events {
                store.apply(idx, t0 + h * HOUR_MS, ty % layout.n_types(), f64::from(*cents) / 100.0);
            }
            let packed = store.user(idx).narrow.to_vec();
            let old = unpack(&packed, &u);
            prop_assert_eq!(old.len(), u.narrow);
            let rec = UserRecord { user_id: "u".into(), narrow: old, wide: store.user(idx).wide.to_vec(), ..Default::default() };
            let mut buf = Vec::new();
            encode_user(&mut buf, &Shape { layout_id: u.layout_id, narrow: u.narrow, unpacked: None, ..shape }, &rec.view());
            let mut into = UserRecord::default();
            decode_user(b"u", &buf, &shape, &mut into).unwrap();
            prop_assert_eq!(&into.narrow, &packed);
            prop_assert_eq!(&into.wide, &rec.wide);
        }
    }

    #[test]
    fn an_unpacked_count_beyond_16_bits_reads_as_the_slot_maximum() {
        let u = Unpacked { layout_id: 7, narrow: 2 * 4 + 3, n_types: 3, ring_slots: 2 };
        // Slot 0: counts 70000, 1, 2 and amount -5; slot 1: counts 0, 65535, 3 and amount 9.
        let mut cells = vec![70_000, 1, 2, -5i32 as u32, 0, 65_535, 3, 9, 41, 42, 43];
        u.repack(&mut cells, 2 * 3 + 3).unwrap();
        assert_eq!(cells, vec![0xffff | 1 << 16, 2, -5i32 as u32, 65_535 << 16, 3, 9, 41, 42, 43]);
        let mut short = vec![0; 10];
        assert!(u.repack(&mut short, 9).is_err(), "a length other than the layout's is refused");
    }

    #[test]
    fn a_typical_user_encodes_in_few_bytes() {
        // A user seen a few times: most window cells are zero, times are near the first event.
        let mut narrow = vec![0u32; 40];
        narrow[3] = 2;
        narrow[4] = 950;
        narrow[20] = 7;
        let t0 = 1_780_000_000_000u64;
        let wide = vec![t0, t0 + 86_400_000, 950, NEVER, t0 + 5_000, NEVER, t0 + 86_400_000];
        let rec = UserRecord {
            user_id: "u".into(),
            narrow,
            wide,
            next_due: (t0 + 2 * 86_400_000) as i64,
            ..Default::default()
        };
        let mut buf = Vec::new();
        encode_user(&mut buf, &SHAPE, &rec.view());
        let raw = 40 * 4 + 7 * 8;
        assert!(buf.len() * 3 < raw, "{} bytes against {raw} in memory", buf.len());
    }
}
