//! Changelog records decoded ahead of being applied: a [`DecodedBatch`] holds a run of records,
//! in log order, with every user record already decoded, so a restore can decode on one thread
//! while another applies to the engine (see [`crate::state::pipelined`]).
//!
//! [`DecodedBatch::push`] classifies and decodes a record exactly as
//! [`crate::state::changelog::Replayer::apply`] does; [`crate::state::changelog::Replayer::apply_batch`]
//! then does the rest of `apply`'s work, in the same order. Everything that depends on the
//! records before it (which flush a user belongs to, deletions) is left to the applier.
//!
//! A batch keeps its buffers when cleared: reused, it allocates nothing per record.

use std::ops::Range;

use super::changelog::Meta;
use super::codec::{self, CodecError, Shape};
use crate::engine::UserRecord;

/// A user record's value, decoded.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// No value: the user was deleted (evicted).
    Tombstone,
    State(&'a UserRecord),
    Failed(&'a CodecError),
}

#[derive(Debug)]
enum Item {
    Meta(Meta, Option<Range<usize>>),
    /// A key that is neither a meta key nor UTF-8.
    BadKey,
    /// `state`: `None` for a tombstone, else the index of its record, or why it failed.
    User {
        id: Range<usize>,
        state: Option<Result<usize, CodecError>>,
    },
}

/// One record of a batch, as [`crate::state::changelog::Replayer::apply_batch`] reads it.
#[derive(Debug)]
pub enum Record<'a> {
    Meta(Meta, Option<&'a [u8]>),
    BadKey,
    User(&'a str, Decoded<'a>),
}

/// A run of decoded records (see the module docs).
#[derive(Debug, Default)]
pub struct DecodedBatch {
    items: Vec<Item>,
    /// User ids, end to end.
    ids: String,
    /// Meta records' values, end to end.
    meta: Vec<u8>,
    /// Decoded user states: the first `used` belong to this batch, the rest are spare buffers.
    recs: Vec<UserRecord>,
    used: usize,
}

impl DecodedBatch {
    /// Records held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Forget the records, keeping the buffers.
    pub fn clear(&mut self) {
        self.items.clear();
        self.ids.clear();
        self.meta.clear();
        self.used = 0;
    }

    /// Append a record: classify its key and decode its value for an engine of shape `shape`.
    pub fn push(&mut self, shape: &Shape, key: &[u8], value: Option<&[u8]>) {
        if let Some(meta) = Meta::of(key) {
            let v = value.map(|v| {
                let start = self.meta.len();
                self.meta.extend_from_slice(v);
                start..self.meta.len()
            });
            self.items.push(Item::Meta(meta, v));
            return;
        }
        let Ok(id) = std::str::from_utf8(key) else {
            self.items.push(Item::BadKey);
            return;
        };
        let start = self.ids.len();
        self.ids.push_str(id);
        let id = start..self.ids.len();
        let state = value.map(|v| {
            if self.used == self.recs.len() {
                self.recs.push(UserRecord::default());
            }
            let slot = self.used;
            codec::decode_user(key, v, shape, &mut self.recs[slot]).map(|()| {
                self.used += 1;
                slot
            })
        });
        self.items.push(Item::User { id, state });
    }

    /// The records, in the order they were pushed.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        self.items.iter().map(|item| match item {
            Item::Meta(m, v) => Record::Meta(*m, v.as_ref().map(|r| &self.meta[r.clone()])),
            Item::BadKey => Record::BadKey,
            Item::User { id, state } => {
                let decoded = match state {
                    None => Decoded::Tombstone,
                    Some(Ok(slot)) => Decoded::State(&self.recs[*slot]),
                    Some(Err(e)) => Decoded::Failed(e),
                };
                Record::User(&self.ids[id.clone()], decoded)
            }
        })
    }
}
