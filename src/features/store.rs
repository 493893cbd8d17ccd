//! All tracked users' feature state: interned user ids and two flat arenas.
//!
//! Users are addressed by a dense `u32` index. Ids are interned end to end in one string
//! ([`IdArena`]), with no allocation per user; the hash table holds only indices (and hash
//! bits), so a lookup by `&str` allocates nothing. Evicted indices are reused.

use hashbrown::HashTable;

use super::ids::IdArena;
use super::prefault::Ahead;
use super::state::{Applied, Layout, UserMut, UserRef};
use crate::time::Millis;

pub type UserIdx = u32;

/// A user table entry: the index, and 32 bits of its id's hash. Keeping the hash here means
/// growing the table rehashes from the entries alone (without it every entry's id is read and
/// hashed again: a cache miss per user, 15% of a restore's applying thread), and a probe reads
/// an id only when its hash matches too, which is almost only the user looked for.
#[derive(Clone, Copy)]
struct Entry {
    idx: UserIdx,
    tag: u32,
}

/// The 32 bits of an id's hash an [`Entry`] keeps: the upper half, the better mixed.
fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// The table's hash of an entry, from its tag alone. hashbrown takes the bucket from the low bits
/// and a 7-bit filter from the top ones: multiplying by an odd constant spreads the tag over all
/// 64 bits, so the two stay independent.
fn table_hash(tag: u32) -> u64 {
    u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

pub struct FeatureStore {
    layout: Layout,
    hasher: ahash::RandomState,
    table: HashTable<Entry>,
    ids: IdArena,
    narrow: Vec<u32>,
    wide: Vec<u64>,
    /// The arenas' spare capacity mapped ahead of new users (see [`super::prefault`]).
    narrow_ahead: Ahead,
    wide_ahead: Ahead,
    free: Vec<UserIdx>,
    live: usize,
}

impl FeatureStore {
    pub fn new(layout: Layout) -> FeatureStore {
        FeatureStore {
            layout,
            // Fixed keys: the table's iteration order never leaks into results, but fixed keys keep
            // runs repeatable byte for byte when debugging.
            hasher: ahash::RandomState::with_seeds(0x51, 0x7e, 0xc4, 0x19),
            table: HashTable::new(),
            ids: IdArena::default(),
            narrow: Vec::new(),
            wide: Vec::new(),
            narrow_ahead: Ahead::default(),
            wide_ahead: Ahead::default(),
            free: Vec::new(),
            live: 0,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Users currently tracked.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Upper bound of indices handed out so far (live or free).
    pub fn capacity_index(&self) -> usize {
        self.ids.len()
    }

    pub fn get(&self, user_id: &str) -> Option<UserIdx> {
        self.find(tag_of(self.hasher.hash_one(user_id)), user_id)
    }

    fn find(&self, tag: u32, user_id: &str) -> Option<UserIdx> {
        let ids = &self.ids;
        self.table.find(table_hash(tag), |e| e.tag == tag && ids.get(e.idx as usize) == user_id).map(|e| e.idx)
    }

    fn insert(&mut self, tag: u32, idx: UserIdx) {
        self.table.insert_unique(table_hash(tag), Entry { idx, tag }, |e| table_hash(e.tag));
    }

    /// The user's index, creating fresh state (first event at `ts`) if they are new.
    /// Returns `(index, created)`.
    pub fn get_or_insert(&mut self, user_id: &str, ts: Millis) -> (UserIdx, bool) {
        let tag = tag_of(self.hasher.hash_one(user_id));
        if let Some(i) = self.find(tag, user_id) {
            return (i, false);
        }
        let idx = match self.free.pop() {
            Some(i) => {
                self.ids.set(i as usize, user_id);
                i
            }
            None => {
                let i = self.ids.len() as UserIdx;
                self.ids.push(user_id);
                self.narrow.resize(self.narrow.len() + self.layout.narrow_len(), 0);
                self.wide.resize(self.wide.len() + self.layout.wide_len(), 0);
                self.narrow_ahead.grew(&self.narrow);
                self.wide_ahead.grew(&self.wide);
                i
            }
        };
        self.insert(tag, idx);
        let (n, w) = (self.layout.narrow_len(), self.layout.wide_len());
        let i = idx as usize;
        self.layout.init(
            UserMut { narrow: &mut self.narrow[i * n..(i + 1) * n], wide: &mut self.wide[i * w..(i + 1) * w] },
            ts,
        );
        self.live += 1;
        (idx, true)
    }

    pub fn user(&self, idx: UserIdx) -> UserRef<'_> {
        let (n, w) = (self.layout.narrow_len(), self.layout.wide_len());
        let i = idx as usize;
        UserRef { narrow: &self.narrow[i * n..(i + 1) * n], wide: &self.wide[i * w..(i + 1) * w] }
    }

    /// Ask the CPU for `idx`'s cells ahead of reading them ([`super::prefetch`]).
    #[inline]
    pub fn prefetch(&self, idx: UserIdx) {
        let (n, w) = (self.layout.narrow_len(), self.layout.wide_len());
        let i = idx as usize;
        if let (Some(narrow), Some(wide)) = (self.narrow.get(i * n..(i + 1) * n), self.wide.get(i * w..(i + 1) * w)) {
            super::prefetch::slice(narrow);
            super::prefetch::slice(wide);
        }
    }

    /// Ask the CPU for what looking up `user_id` and updating their cells will read, and return
    /// the index that was asked for. The table is probed by hash bits alone, reading no id: the
    /// index is a likely answer, good for a hint and never for a lookup ([`FeatureStore::get`]).
    #[inline]
    pub fn prefetch_user(&self, user_id: &str) -> Option<UserIdx> {
        let tag = tag_of(self.hasher.hash_one(user_id));
        let idx = self.table.find(table_hash(tag), |e| e.tag == tag)?.idx;
        self.ids.prefetch(idx as usize);
        self.prefetch(idx);
        Some(idx)
    }

    pub fn user_id(&self, idx: UserIdx) -> &str {
        self.ids.get(idx as usize)
    }

    #[inline]
    pub fn apply(&mut self, idx: UserIdx, ts: Millis, type_idx: usize, amount: f64) -> Applied {
        let (n, w) = (self.layout.narrow_len(), self.layout.wide_len());
        let i = idx as usize;
        let u = UserMut { narrow: &mut self.narrow[i * n..(i + 1) * n], wide: &mut self.wide[i * w..(i + 1) * w] };
        self.layout.apply(u, ts, type_idx, amount)
    }

    #[inline]
    pub fn vector_at(&self, idx: UserIdx, at: Millis, out: &mut [f64]) {
        self.layout.vector_at(self.user(idx), at, out);
    }

    /// Set a user's whole state (a restore), creating them if new. `narrow` and `wide` must have
    /// the layout's lengths; returns `None` (and changes nothing) if they do not.
    pub fn put(&mut self, user_id: &str, narrow: &[u32], wide: &[u64]) -> Option<(UserIdx, bool)> {
        let (n, w) = (self.layout.narrow_len(), self.layout.wide_len());
        if narrow.len() != n || wide.len() != w {
            return None;
        }
        let tag = tag_of(self.hasher.hash_one(user_id));
        // One probe finds the user or the slot a new one takes: in a restore the probe is a
        // cache miss into a table of a million entries, and a second one cost 6 % of it.
        let ids = &self.ids;
        let entry = self.table.entry(
            table_hash(tag),
            |e| e.tag == tag && ids.get(e.idx as usize) == user_id,
            |e| table_hash(e.tag),
        );
        let vacant = match entry {
            hashbrown::hash_table::Entry::Occupied(e) => {
                let i = e.get().idx as usize;
                self.narrow[i * n..(i + 1) * n].copy_from_slice(narrow);
                self.wide[i * w..(i + 1) * w].copy_from_slice(wide);
                return Some((i as UserIdx, false));
            }
            hashbrown::hash_table::Entry::Vacant(v) => v,
        };
        let idx = match self.free.pop() {
            Some(idx) => {
                let i = idx as usize;
                self.narrow[i * n..(i + 1) * n].copy_from_slice(narrow);
                self.wide[i * w..(i + 1) * w].copy_from_slice(wide);
                self.ids.set(i, user_id);
                idx
            }
            None => {
                // A restore fills an empty store: appending the cells writes them once, where
                // `get_or_insert` would zero, initialise and then overwrite them.
                self.narrow.extend_from_slice(narrow);
                self.wide.extend_from_slice(wide);
                self.narrow_ahead.grew(&self.narrow);
                self.wide_ahead.grew(&self.wide);
                self.ids.push(user_id);
                (self.ids.len() - 1) as UserIdx
            }
        };
        vacant.insert(Entry { idx, tag });
        self.live += 1;
        Some((idx, true))
    }

    /// Forget a user; their index is reused by the next new user.
    pub fn evict(&mut self, idx: UserIdx) {
        let tag = tag_of(self.hasher.hash_one(self.ids.get(idx as usize)));
        if let Ok(entry) = self.table.find_entry(table_hash(tag), |e| e.idx == idx) {
            entry.remove();
            // The id stays in the arena: the index's next user may write theirs over it.
            self.free.push(idx);
            self.live -= 1;
        }
    }

    /// Live user indices (in the user table's order, not index order).
    pub fn indices(&self) -> impl Iterator<Item = UserIdx> + '_ {
        self.table.iter().map(|e| e.idx)
    }

    /// Approximate heap bytes held, for the state-size gauge and the benchmark.
    pub fn heap_bytes(&self) -> usize {
        self.ids.heap_bytes()
            + self.narrow.capacity() * 4
            + self.wide.capacity() * 8
            + self.table.capacity() * (std::mem::size_of::<Entry>() + 1)
            + self.free.capacity() * 4
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSpec;

    #[test]
    fn put_creates_replaces_and_reuses_evicted_slots() {
        let mut st = FeatureStore::new(Layout::new(&FeatureSpec::default(), 30 * crate::time::DAY_MS));
        let (n, w) = (st.layout().narrow_len(), st.layout().wide_len());
        let cells = |k: u32| ((0..n as u32).map(|c| c + k).collect::<Vec<u32>>(), vec![u64::from(k); w]);
        let (a, b) = (cells(1), cells(2));
        assert_eq!(st.put("a", &a.0, &a.1), Some((0, true)));
        assert_eq!(st.put("b", &b.0, &b.1), Some((1, true)));
        assert_eq!((st.user(1).narrow, st.user(1).wide), (&b.0[..], &b.1[..]));
        assert_eq!(st.put("a", &b.0, &b.1), Some((0, false)));
        assert_eq!(st.user(0).narrow, &b.0[..]);
        st.evict(0);
        let c = cells(3);
        assert_eq!(st.put("c", &c.0, &c.1), Some((0, true)));
        assert_eq!((st.get("c"), st.get("a"), st.get("b"), st.len()), (Some(0), None, Some(1), 2));
        assert_eq!((st.user(0).narrow, st.user(0).wide), (&c.0[..], &c.1[..]));
        assert_eq!(st.put("d", &c.0[1..], &c.1), None);
        assert_eq!(st.len(), 2);
    }
}
