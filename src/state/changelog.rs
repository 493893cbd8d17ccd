//! The changelog protocol: how one partition's state is written to its compacted changelog
//! partition, flush by flush, and read back.
//!
//! A flush at input offset `Y` (the state reflects every message before `Y`) writes, in order:
//! 1. `PREV`: the previous complete flush's clock record (absent before the first flush);
//! 2. `CLOCK`: the engine's clock and `Y`;
//! 3. one record per user changed since the previous flush (a tombstone for an evicted user);
//! 4. `END`: `Y` again.
//!
//! The meta keys start with byte 0xFF, which no UTF-8 user id can, and compaction keeps the
//! latest of each. A flush is only started once the previous one is acknowledged, so reading the
//! partition back, the latest `END` either matches the latest `CLOCK` (the last flush is whole)
//! or is the previous flush's (the writer died mid-flush). In the second case the users written
//! after the latest `CLOCK` are already at `Y`, everyone else at the previous flush: the reader
//! resumes from the previous flush's offset and skips, for those users only, the messages
//! before `Y` that their state already holds.

use std::collections::HashSet;
use std::ops::Range;

use super::batch::{Decoded, DecodedBatch, Record};
use super::codec::{self, CodecError, Shape};
use crate::engine::{Engine, UserRecord};

pub const PREV_KEY: &[u8] = b"\xffchurnguard.prev";
pub const CLOCK_KEY: &[u8] = b"\xffchurnguard.clock";
pub const END_KEY: &[u8] = b"\xffchurnguard.end";

/// The kind of a meta record (see the module docs), by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    Prev,
    Clock,
    End,
}

impl Meta {
    /// `None`: a user id (or a key that is not a meta key).
    pub fn of(key: &[u8]) -> Option<Meta> {
        match key {
            PREV_KEY => Some(Meta::Prev),
            CLOCK_KEY => Some(Meta::Clock),
            END_KEY => Some(Meta::End),
            _ => None,
        }
    }
}

/// The changelog topic of `input_topic`'s state for consumer group `group`.
pub fn topic_name(group: &str, input_topic: &str) -> String {
    format!("{group}-{input_topic}-changelog")
}

/// One flush's records, encoded into one buffer, possibly a few users at a time
/// ([`Flush::begin`], [`Flush::extend`]): records already encoded may be sent while the rest are.
#[derive(Debug, Default)]
pub struct Flush {
    /// The input offset the state reflects.
    pub offset: i64,
    data: Vec<u8>,
    items: Vec<(Range<usize>, Option<Range<usize>>)>,
    clock: Range<usize>,
    users: usize,
    /// Every user is in and `END` written.
    complete: bool,
}

impl Flush {
    /// Take the engine's changes since the last flush (or, with `full`, every user: after a
    /// failed flush, or when the changelog held another layout's state), all at once.
    pub fn build(engine: &mut Engine, shape: &Shape, offset: i64, prev: Option<&[u8]>, full: bool) -> Flush {
        let mut f = Flush::begin(engine, shape, offset, prev, full);
        f.extend(engine, shape, usize::MAX);
        f
    }

    /// Start a flush of the engine's state as it is now: `PREV`, `CLOCK` and the deletions.
    /// The users follow through [`Flush::extend`], as they were now, however the engine has
    /// changed in between (see crate::engine's snapshot).
    pub fn begin(engine: &mut Engine, shape: &Shape, offset: i64, prev: Option<&[u8]>, full: bool) -> Flush {
        let mut f = Flush { offset, ..Flush::default() };
        if let Some(prev) = prev {
            f.push(PREV_KEY, Some(|out: &mut Vec<u8>| out.extend_from_slice(prev)));
        }
        let clock = engine.clock_state();
        let start = f.data.len() + CLOCK_KEY.len();
        f.push(CLOCK_KEY, Some(|out: &mut Vec<u8>| codec::encode_clock(out, shape, &clock, offset)));
        f.clock = start..f.data.len();
        let mut deleted = 0;
        engine.begin_snapshot(full, |id| {
            deleted += 1;
            f.push(id.as_bytes(), None::<fn(&mut Vec<u8>)>);
        });
        f.users = deleted;
        f
    }

    /// Encode up to `max` more users; then, once all are in, `END`. Returns whether the flush
    /// is complete.
    pub fn extend(&mut self, engine: &mut Engine, shape: &Shape, max: usize) -> bool {
        if self.complete {
            return true;
        }
        let mut users = 0;
        let done = engine.snapshot_step(max, |u| {
            users += 1;
            self.push(u.user_id.as_bytes(), Some(|out: &mut Vec<u8>| codec::encode_user(out, shape, &u)));
        });
        self.users += users;
        if done {
            let offset = self.offset;
            self.push(END_KEY, Some(|out: &mut Vec<u8>| codec::encode_end(out, shape, offset)));
            self.complete = true;
        }
        done
    }

    /// Every user is encoded and `END` is the last record.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    fn push(&mut self, key: &[u8], value: Option<impl FnOnce(&mut Vec<u8>)>) {
        let k = self.data.len()..self.data.len() + key.len();
        self.data.extend_from_slice(key);
        let v = value.map(|write| {
            let start = self.data.len();
            write(&mut self.data);
            start..self.data.len()
        });
        self.items.push((k, v));
    }

    /// Records to send, in order.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Record `i`: key, and value (`None`: a tombstone).
    pub fn get(&self, i: usize) -> (&[u8], Option<&[u8]>) {
        let (k, v) = &self.items[i];
        (&self.data[k.clone()], v.as_ref().map(|v| &self.data[v.clone()]))
    }

    /// This flush's clock record: the next flush's `PREV`.
    pub fn clock_record(&self) -> &[u8] {
        &self.data[self.clock.clone()]
    }

    /// User records (and tombstones) in this flush.
    pub fn users(&self) -> usize {
        self.users
    }

    /// Bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Messages whose effect a restored user's state already holds (see the module docs).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Skip {
    pub users: HashSet<Box<str>>,
    /// Messages at this offset and later are new to everyone.
    pub until: i64,
}

impl Skip {
    pub fn applies(&self, offset: i64, user_id: &str) -> bool {
        offset < self.until && self.users.contains(user_id)
    }
}

/// Where a restored partition resumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The next input offset to read.
    pub resume: i64,
    pub skip: Option<Skip>,
    /// The clock record of the flush the state stands at: the next flush's `PREV`.
    pub clock_record: Vec<u8>,
    pub users: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplayError {
    #[error("the changelog's clock record is unreadable: {0}")]
    Clock(CodecError),
    #[error("the last flush is incomplete and no earlier one is recorded")]
    NoCompleteFlush,
    #[error("the changelog's records do not fit together: {0}")]
    Restore(#[from] crate::engine::RestoreError),
}

/// The ids laid end to end in `ids`, each ending at its offset in `ends`.
fn split_ids(ids: &str, ends: &[usize]) -> HashSet<Box<str>> {
    let mut start = 0;
    let mut set = HashSet::with_capacity(ends.len());
    for &end in ends {
        // Offsets were taken after whole UTF-8 ids were pushed: always char boundaries.
        if let Some(id) = ids.get(start..end) {
            set.insert(id.into());
        }
        start = end;
    }
    set
}

/// Applies a changelog partition's records, in log order, to a fresh engine.
pub struct Replayer<'e> {
    engine: &'e mut Engine,
    shape: Shape,
    rec: UserRecord,
    prev: Option<Vec<u8>>,
    clock: Option<Vec<u8>>,
    end: Option<i64>,
    /// Ids of the users read since the latest `CLOCK`, end to end, with their end offsets: only
    /// needed when the last flush turns out to be cut short, so the set is built in `finish`
    /// then, and a whole restore allocates nothing per record for it.
    after_clock: String,
    after_clock_ends: Vec<usize>,
    /// Records read: users (including tombstones), unreadable ones (skipped), ones written
    /// for another feature layout (skipped).
    pub users: u64,
    pub corrupt: u64,
    pub other_layout: u64,
}

impl<'e> Replayer<'e> {
    pub fn new(engine: &'e mut Engine) -> Replayer<'e> {
        let shape = Shape::of(engine.store().layout());
        Replayer {
            engine,
            shape,
            rec: UserRecord::default(),
            prev: None,
            clock: None,
            end: None,
            after_clock: String::new(),
            after_clock_ends: Vec::new(),
            users: 0,
            corrupt: 0,
            other_layout: 0,
        }
    }

    /// The shape of the engine restored into: what [`DecodedBatch::push`] decodes for.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Apply the next record of the changelog partition.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        if let Some(meta) = Meta::of(key) {
            self.apply_meta(meta, value);
            return;
        }
        let Ok(id) = std::str::from_utf8(key) else {
            self.corrupt += 1;
            return;
        };
        // The record buffer is taken for the call and put back: reused, it allocates nothing.
        let mut rec = std::mem::take(&mut self.rec);
        let result = value.map(|v| codec::decode_user(key, v, &self.shape, &mut rec));
        let decoded = match &result {
            None => Decoded::Tombstone,
            Some(Ok(())) => Decoded::State(&rec),
            Some(Err(e)) => Decoded::Failed(e),
        };
        self.apply_user(id, decoded);
        self.rec = rec;
    }

    /// Apply the next records, decoded ahead (possibly on another thread): the same as
    /// [`Replayer::apply`] of each record in turn.
    pub fn apply_batch(&mut self, batch: &DecodedBatch) {
        for record in batch.records() {
            match record {
                Record::Meta(meta, value) => self.apply_meta(meta, value),
                Record::BadKey => self.corrupt += 1,
                Record::User(id, decoded) => self.apply_user(id, decoded),
            }
        }
    }

    fn apply_meta(&mut self, meta: Meta, value: Option<&[u8]>) {
        match meta {
            Meta::Prev => self.prev = value.map(<[u8]>::to_vec),
            Meta::Clock => {
                self.clock = value.map(<[u8]>::to_vec);
                self.after_clock.clear();
                self.after_clock_ends.clear();
            }
            Meta::End => self.end = value.and_then(|v| codec::decode_end(v, &self.shape).ok()),
        }
    }

    fn apply_user(&mut self, id: &str, decoded: Decoded<'_>) {
        self.users += 1;
        if self.clock.is_some() {
            self.after_clock.push_str(id);
            self.after_clock_ends.push(self.after_clock.len());
        }
        match decoded {
            Decoded::Tombstone => self.engine.restore_delete(id),
            Decoded::State(rec) => {
                if self.engine.restore_user(&rec.view()).is_err() {
                    self.corrupt += 1;
                }
            }
            Decoded::Failed(CodecError::Layout { .. }) => self.other_layout += 1,
            Decoded::Failed(_) => self.corrupt += 1,
        }
    }

    /// Set the clock from the last whole flush. `Ok(None)`: the changelog holds no flush of this
    /// layout (empty, or written for another model's features): rebuild from the input instead.
    pub fn finish(self) -> Result<Option<Restored>, ReplayError> {
        let Some(clock) = self.clock else { return Ok(None) };
        let (state, offset) = match codec::decode_clock(&clock, &self.shape) {
            Ok(c) => c,
            Err(CodecError::Layout { .. }) => return Ok(None),
            Err(e) => return Err(ReplayError::Clock(e)),
        };
        if self.end == Some(offset) {
            self.engine.restore_clock(&state)?;
            return Ok(Some(Restored { resume: offset, skip: None, clock_record: clock, users: self.users }));
        }
        let Some(prev) = self.prev else { return Err(ReplayError::NoCompleteFlush) };
        let (mut prev_state, prev_offset) = codec::decode_clock(&prev, &self.shape).map_err(ReplayError::Clock)?;
        // Users already at `offset` may name outcome keys interned since the previous flush;
        // keys are only ever appended, so the later list extends the earlier one.
        if state.outcome_keys.starts_with(&prev_state.outcome_keys) {
            prev_state.outcome_keys = state.outcome_keys;
        }
        self.engine.restore_clock_behind(&prev_state, state.max_ts)?;
        Ok(Some(Restored {
            resume: prev_offset,
            skip: Some(Skip { users: split_ids(&self.after_clock, &self.after_clock_ends), until: offset }),
            clock_record: prev,
            users: self.users,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_ids_gives_back_each_id() {
        let mut ids = String::new();
        let mut ends = Vec::new();
        for id in ["u1", "\u{e9}t\u{e9}", "u1", "a-long-user-id"] {
            ids.push_str(id);
            ends.push(ids.len());
        }
        let set = split_ids(&ids, &ends);
        let mut got: Vec<&str> = set.iter().map(|s| &**s).collect();
        got.sort_unstable();
        assert_eq!(got, ["a-long-user-id", "u1", "\u{e9}t\u{e9}"]);
        assert!(split_ids("", &[]).is_empty());
    }
}
