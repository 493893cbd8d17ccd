//! What the fuzz targets share: the shapes state records are decoded against, the engines the
//! restore target builds, the framing that splits one fuzz input into records and events, and
//! the seeds of the committed corpus (see [`seeds`]).
//!
//! The framing is lenient on purpose: every byte string means something (a short frame takes
//! what is left), so libFuzzer's mutations rarely land on inputs that stop at the first byte.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use churnguard::engine::{ClockState, Engine, EngineConfig, PendingOutcome, TimeOfDay, UserRecord, WarmUp, NO_OUTCOME};
use churnguard::event::{ActivityEvent, MAX_TS, MIN_TS};
use churnguard::features::{FeatureSpec, Layout};
use churnguard::model::artifact::{ModelArtifact, TierThreshold};
use churnguard::policy::Memory;
use churnguard::policy::PolicyConfig;
use churnguard::state::codec::Shape;
use churnguard::time::{Millis, Span, HOUR_MS, MINUTE_MS};

/// The most one allocation may ask for (the same bound as libFuzzer's -malloc_limit_mb=512).
pub const MAX_ALLOC_BYTES: usize = 512 << 20;
/// The most the Rust heap may hold at once. Each run builds its own engine and drops it, so a
/// run that needs more than this is growing without bound.
pub const MAX_LIVE_BYTES: usize = 1 << 30;

/// The fuzz targets' allocator: the system one, refusing any allocation over
/// [`MAX_ALLOC_BYTES`] or one that would take the live heap past [`MAX_LIVE_BYTES`]. A refused
/// allocation returns null, which Rust turns into "memory allocation of N bytes failed" and an
/// abort: libFuzzer reports a crash and saves the input. libFuzzer's own -malloc_limit_mb needs
/// a sanitizer's malloc hooks, and scripts/fuzz.sh builds without a sanitizer (safe Rust gains
/// little from one, and the C dependencies do not configure under one); and -rss_limit_mb only
/// sees pages that were touched, not a huge zeroed allocation that was never written.
pub struct LimitedAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

fn reserve(bytes: usize) -> bool {
    if bytes > MAX_ALLOC_BYTES {
        return false;
    }
    let before = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
    if before.saturating_add(bytes) > MAX_LIVE_BYTES {
        LIVE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
        return false;
    }
    true
}

fn release(bytes: usize) {
    LIVE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` with the caller's arguments unchanged, or returns null
// (allowed: it reports an allocation failure); the byte count only gates and is kept in step.
unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            release(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            release(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        System.dealloc(ptr, layout);
        release(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && (new_size > MAX_ALLOC_BYTES || !reserve(new_size - old)) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            // The old block is still allocated: undo only the growth.
            if new_size > old {
                release(new_size - old);
            }
        } else if new_size < old {
            release(old - new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;

/// 2026-01-01T00:00:00Z: where event times start when the restored engine has no clock.
pub const T0: Millis = 1_767_225_600_000;

/// A shape made by hand, as in the codec's own tests: not tied to any feature spec.
pub const HAND_SHAPE: Shape = Shape { layout_id: 0x1234_5678_9abc_def0, narrow: 40, wide: 7, unpacked: None };
/// No cells at all: the decoder's `wide == 0` path (no base time).
pub const EMPTY_SHAPE: Shape = Shape { layout_id: 0x0fed_cba9_8765_4321, narrow: 0, wide: 0, unpacked: None };

/// The small spec of tests/state_properties.rs: two types, three windows.
pub fn small_spec() -> FeatureSpec {
    FeatureSpec {
        event_types: vec!["login".into(), "purchase".into()],
        windows: vec![Span::days(1), Span::days(7), Span::days(30)],
        ..FeatureSpec::default()
    }
}

fn policy() -> PolicyConfig {
    PolicyConfig { cooldown: Span::days(2), ..PolicyConfig::default() }
}

/// The shapes a decode target picks from with its first byte: [`HAND_SHAPE`], the default
/// feature spec's, the small spec's and [`EMPTY_SHAPE`].
pub fn shapes() -> &'static [Shape; 4] {
    static SHAPES: OnceLock<[Shape; 4]> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let churned_after = policy().lifecycle.churned_after.ms();
        let of = |spec: &FeatureSpec| Shape::of(&Layout::new(spec, churned_after));
        [HAND_SHAPE, of(&FeatureSpec::default()), of(&small_spec()), EMPTY_SHAPE]
    })
}

pub fn shape(selector: u8) -> Shape {
    shapes()[usize::from(selector) % 4]
}

fn models() -> &'static [ModelArtifact; 2] {
    static MODELS: OnceLock<[ModelArtifact; 2]> = OnceLock::new();
    MODELS.get_or_init(|| {
        let tiers = || {
            vec![
                TierThreshold { name: "high".into(), min_score: 0.8 },
                TierThreshold { name: "medium".into(), min_score: 0.45 },
            ]
        };
        // Weights that put silent users over the tiers within days: decisions, outcomes and
        // cooldowns all get exercised.
        let weights = [("recency", 1.2), ("count.login.7d", -0.4)];
        let build = |spec: FeatureSpec, version: &str| match ModelArtifact::from_weights(
            spec,
            version,
            &weights,
            -2.0,
            tiers(),
        ) {
            Ok(m) => m,
            Err(e) => panic!("the fuzz model must build: {e}"),
        };
        [build(small_spec(), "fuzz-small"), build(FeatureSpec::default(), "fuzz-default")]
    })
}

/// The engine a restore input asks for with its first byte: bit 0 the default feature spec
/// (else the small one), bit 1 the daily cadence, bit 2 no warm-up.
pub fn engine(variant: u8) -> Engine {
    let model = &models()[usize::from(variant & 1)];
    let cfg = EngineConfig {
        warm_up: if variant & 4 != 0 { WarmUp::Off } else { WarmUp::For(Span::days(3)) },
        allowed_lateness: Span::hours(6),
        state_ttl: Span::days(40),
        rescore_interval: Span::hours(12),
        outcome_horizon: Span::days(5),
        score_at: (variant & 2 != 0).then_some(TimeOfDay(6 * HOUR_MS)),
        exhaustive_polling: false,
    };
    Engine::new(model, policy(), cfg)
}

/// Reads a fuzz input front to back; past the end every read gives zeros or empty slices.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from(b.first().copied().unwrap_or(0)) | u16::from(b.get(1).copied().unwrap_or(0)) << 8
    }

    /// Up to `n` bytes: fewer when the input ends first.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// The frames of a restore input, after its variant byte. A frame's tag is taken modulo 5.
pub const TAG_USER: u8 = 0;
pub const TAG_DELETE: u8 = 1;
pub const TAG_CLOCK: u8 = 2;
pub const TAG_USER_FIELDS: u8 = 3;
pub const TAG_CLOCK_FIELDS: u8 = 4;

#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// A user record: key (1-byte length), value (2-byte little-endian length).
    User { key: &'a [u8], value: &'a [u8] },
    /// A deletion (tombstone): key (1-byte length).
    Delete { key: &'a [u8] },
    /// The clock record (2-byte length): it ends the records; what follows are [`Op`]s.
    Clock { value: &'a [u8] },
    /// A user state given field by field (see [`user_from_fields`]; 2-byte length), for the
    /// harness to encode: reaches states whose encoding mutations rarely hit.
    UserFields { key: &'a [u8], fields: &'a [u8] },
    /// A clock consistent with the restored users (see [`clock_from_fields`]), for the harness to
    /// encode; it ends the records like [`Frame::Clock`].
    ClockFields { fields: &'a [u8] },
}

pub fn next_frame<'a>(input: &mut Input<'a>) -> Option<Frame<'a>> {
    if input.is_empty() {
        return None;
    }
    Some(match input.byte() % 5 {
        TAG_USER => {
            let n = input.byte();
            let key = input.take(n.into());
            let n = input.u16();
            Frame::User { key, value: input.take(n.into()) }
        }
        TAG_DELETE => {
            let n = input.byte();
            Frame::Delete { key: input.take(n.into()) }
        }
        TAG_CLOCK => {
            let n = input.u16();
            Frame::Clock { value: input.take(n.into()) }
        }
        TAG_USER_FIELDS => {
            let n = input.byte();
            let key = input.take(n.into());
            let n = input.u16();
            Frame::UserFields { key, fields: input.take(n.into()) }
        }
        _ => {
            let n = input.u16();
            Frame::ClockFields { fields: input.take(n.into()) }
        }
    })
}

/// A time for a field-built state: a sentinel, any i64, or one near [`T0`] (hours or minutes
/// away), by a selector byte.
fn time_field(f: &mut Input<'_>) -> Millis {
    match f.byte() % 5 {
        0 => Millis::MIN,
        1 => Millis::MAX,
        2 => {
            let mut b = [0u8; 8];
            let raw = f.take(8);
            b[..raw.len()].copy_from_slice(raw);
            i64::from_le_bytes(b)
        }
        3 => T0 + i64::from(f.u16() as i16) * HOUR_MS,
        _ => T0 + i64::from(i32::from(f.u16()) | i32::from(f.u16() as i16) << 16) * MINUTE_MS,
    }
}

/// Fill `out` with a user's state for `shape` from `fields`: sparse narrow cells (a count, then
/// index and 4-byte value pairs), each wide cell, the due time, the policy memory and an open
/// outcome or none. Every combination is representable: the decoder accepts any of them.
pub fn user_from_fields(key: &str, fields: &[u8], shape: &Shape, out: &mut UserRecord) {
    let mut f = Input::new(fields);
    out.user_id.clear();
    out.user_id.push_str(key);
    out.narrow.clear();
    out.narrow.resize(shape.narrow, 0);
    for _ in 0..f.byte() {
        let i = usize::from(f.byte());
        let v = u32::from(f.u16()) | u32::from(f.u16()) << 16;
        if let Some(c) = out.narrow.get_mut(i % shape.narrow.max(1)) {
            *c = v;
        }
    }
    out.wide.clear();
    for _ in 0..shape.wide {
        out.wide.push(time_field(&mut f) as u64);
    }
    out.next_due = time_field(&mut f);
    out.memory = Memory { last_sent: time_field(&mut f), last_rank: f.byte() };
    out.outcome = if f.byte() % 2 == 0 {
        NO_OUTCOME
    } else {
        PendingOutcome {
            due: time_field(&mut f),
            decided: time_field(&mut f),
            cell: u32::from(f.byte() % 4),
            retained: f.byte() % 2 == 1,
            spend: f64::from(f.u16() as i16) * 0.25,
        }
    };
}

/// A clock for `e`'s restored users: the newest event time is their latest (what restore_clock
/// requires), the watermark the allowed lateness (6 h in [`engine`]) behind it or, by a
/// selector byte, further; up to 4 outcome keys; each timer wheel unset or starting up to
/// 32767 buckets from the watermark's (a wheel with entries needs a start).
pub fn clock_from_fields(fields: &[u8], e: &Engine) -> ClockState {
    let mut f = Input::new(fields);
    let max_ts = e.store().indices().map(|i| e.store().user(i).last_ts()).max().unwrap_or(Millis::MIN);
    let behind = match f.byte() % 3 {
        0 => 6 * HOUR_MS,
        1 => i64::from(f.u16()) * HOUR_MS,
        _ => 0,
    };
    let watermark = if max_ts == Millis::MIN { Millis::MIN } else { max_ts.saturating_sub(behind) };
    let keys = (0..f.byte() % 5)
        .map(|i| (i % 2 == 1, ["high", "medium"][usize::from(i / 2)].to_string(), "email".to_string()))
        .collect();
    let warm_until = time_field(&mut f);
    // The wheels' bucket widths in [`engine`]: a 24th of the rescore interval (12 h) and of the
    // outcome horizon (5 days).
    let mut base = |granularity: Millis| match f.byte() % 2 {
        0 => Millis::MIN,
        _ => watermark.div_euclid(granularity).saturating_add(i64::from(f.u16() as i16)),
    };
    let timer_base = base(HOUR_MS / 2);
    let outcome_base = base(5 * HOUR_MS);
    ClockState { max_ts, watermark, warm_until, timer_base, outcome_base, outcome_keys: keys }
}

/// Write a frame in the form [`next_frame`] reads (for seeds).
pub fn put_frame(out: &mut Vec<u8>, f: &Frame<'_>) {
    let key = |out: &mut Vec<u8>, k: &[u8]| {
        out.push(u8::try_from(k.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&k[..k.len().min(255)]);
    };
    let value = |out: &mut Vec<u8>, v: &[u8]| {
        out.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(&v[..v.len().min(usize::from(u16::MAX))]);
    };
    match f {
        Frame::User { key: k, value: v } => {
            out.push(TAG_USER);
            key(out, k);
            value(out, v);
        }
        Frame::Delete { key: k } => {
            out.push(TAG_DELETE);
            key(out, k);
        }
        Frame::Clock { value: v } => {
            out.push(TAG_CLOCK);
            value(out, v);
        }
        Frame::UserFields { key: k, fields } => {
            out.push(TAG_USER_FIELDS);
            key(out, k);
            value(out, fields);
        }
        Frame::ClockFields { fields } => {
            out.push(TAG_CLOCK_FIELDS);
            value(out, fields);
        }
    }
}

/// What the restore target does after a successful restore, 4 bytes each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// An event of type `kind` (0 login, 1 purchase, 2 a type the spec does not list) for user
    /// `user` (below 128: one of the restored users, if any; else one of 16 new ones), at
    /// `offset` × 10 minutes from the engine's newest event time.
    Event { kind: u8, user: u8, offset: i16 },
    /// Move the watermark `hours` past its current place (an idle partition, a file's end).
    Advance { hours: u16 },
}

pub fn next_op(input: &mut Input<'_>) -> Option<Op> {
    if input.is_empty() {
        return None;
    }
    let tag = input.byte();
    let user = input.byte();
    let arg = input.u16();
    Some(match tag % 4 {
        3 => Op::Advance { hours: arg },
        kind => Op::Event { kind, user, offset: arg as i16 },
    })
}

pub fn put_op(out: &mut Vec<u8>, op: Op) {
    match op {
        Op::Event { kind, user, offset } => {
            out.extend_from_slice(&[kind % 3, user]);
            out.extend_from_slice(&offset.to_le_bytes());
        }
        Op::Advance { hours } => {
            out.extend_from_slice(&[3, 0]);
            out.extend_from_slice(&hours.to_le_bytes());
        }
    }
}

/// Where event times of the ops are anchored: the engine's newest event time, kept inside the
/// range [`churnguard::event::parse_event`] accepts.
pub fn anchor(max_ts: Millis) -> Millis {
    if max_ts == Millis::MIN {
        T0
    } else {
        max_ts.clamp(MIN_TS, MAX_TS - 1)
    }
}

/// An event as the parser could have produced it: its time within [MIN_TS, MAX_TS), its
/// strings within their limits and its amount finite.
pub fn event<'a>(kind: u8, user_id: &'a str, offset: i16, max_ts: Millis) -> ActivityEvent<'a> {
    let ts = anchor(max_ts).saturating_add(i64::from(offset) * 10 * MINUTE_MS).clamp(MIN_TS, MAX_TS - 1);
    let (event_type, amount) = match kind % 3 {
        0 => ("login", None),
        // A refund now and then: amounts may be negative.
        1 => ("purchase", Some(f64::from(offset % 200) * 1.25)),
        _ => ("support_ticket", None),
    };
    ActivityEvent { user_id: user_id.into(), event_type: event_type.into(), ts, amount }
}

/// Where an `Advance` op moves the watermark: a plausible time (a wall clock, a file's last
/// event), never past [`MAX_TS`].
pub fn advance_to(watermark: Millis, max_ts: Millis, hours: u16) -> Millis {
    let from = if watermark == Millis::MIN { anchor(max_ts) } else { watermark.clamp(MIN_TS, MAX_TS) };
    from.saturating_add(i64::from(hours) * HOUR_MS).min(MAX_TS)
}

/// Compare two records field by field, the spend by its bits.
pub fn same_record(a: &UserRecord, b: &UserRecord) -> bool {
    a.identical(b)
}

pub mod seeds;
