//! A consistent snapshot of the changed users, handed out a few at a time while the engine runs
//! on: how a changelog flush is written without stopping the partition.
//!
//! A flush at input offset `Y` must hold every listed user as they were at `Y`. Encoding them
//! all at once holds the partition's worker for as long as that takes (hundreds of milliseconds
//! for 100k users), and every event waiting behind it carries that delay. Instead, the users to
//! write are marked when the flush begins, and handed out in small steps. A marked user that is
//! about to change first has their state at `Y` copied aside ([`Engine::preserve`], called
//! before every change of a user's state), so whatever is handed out is the state at `Y`.

use super::persist::{UserRecord, UserView};
use super::Engine;

/// Copies kept for reuse after a snapshot.
const SAVED_POOL: usize = 1024;

/// The users of a snapshot still to hand out.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// Users marked when the snapshot began, in index order; `UserMeta::frozen` says which of
    /// them are still to be handed out from the live state.
    users: Vec<u32>,
    next: usize,
    /// Marked users copied before a change; `saved[..used]` are in use, `saved[..taken]` out.
    saved: Vec<UserRecord>,
    used: usize,
    taken: usize,
}

impl Snapshot {
    fn done(&self) -> bool {
        self.next == self.users.len() && self.taken == self.used
    }
}

impl Engine {
    /// Begin a snapshot of the users changed since the last snapshot or drain (`everyone`: of
    /// every tracked user). Users evicted since then are handed to `deleted` now; the users come
    /// out of [`Engine::snapshot_step`]. A snapshot still open is abandoned first.
    pub fn begin_snapshot(&mut self, everyone: bool, mut deleted: impl FnMut(&str)) {
        self.abandon_snapshot();
        for id in std::mem::take(&mut self.removed) {
            // Evicted and back since: only the new state is written (a reader that saw the
            // deletion but not the state after it would lose the user).
            if self.store.get(&id).is_none() {
                deleted(&id);
            }
        }
        let mut users = std::mem::take(&mut self.snapshot.users);
        users.clear();
        let mut dirty = std::mem::take(&mut self.dirty);
        if everyone {
            for &idx in &dirty {
                self.meta[idx as usize].dirty = false;
            }
            users.extend(self.store.indices());
        } else {
            users.extend(dirty.iter().copied().filter(|&i| self.meta[i as usize].dirty));
        }
        dirty.clear();
        self.dirty = dirty;
        // Index order walks the arenas sequentially; the dirty list may hold an index twice.
        users.sort_unstable();
        users.dedup();
        for &idx in &users {
            let m = &mut self.meta[idx as usize];
            m.dirty = false;
            m.frozen = true;
        }
        self.snapshot.users = users;
        self.snapshot.next = 0;
    }

    /// Hand out up to `max` users of the open snapshot, each as they were when it began.
    /// Returns true once every user has been handed out (or no snapshot is open).
    pub fn snapshot_step(&mut self, max: usize, mut f: impl FnMut(UserView<'_>)) -> bool {
        let mut n = 0;
        while n < max && self.snapshot.taken < self.snapshot.used {
            f(self.snapshot.saved[self.snapshot.taken].view());
            self.snapshot.taken += 1;
            n += 1;
        }
        while n < max && self.snapshot.next < self.snapshot.users.len() {
            let idx = self.snapshot.users[self.snapshot.next];
            self.snapshot.next += 1;
            let m = &mut self.meta[idx as usize];
            if m.frozen {
                m.frozen = false;
                f(self.user_view(idx));
                n += 1;
            }
        }
        let done = self.snapshot.done();
        if done {
            self.snapshot.users.clear();
            self.snapshot.next = 0;
            self.snapshot.used = 0;
            self.snapshot.taken = 0;
            // A busy flush can copy many users; keep a warm pool, not the peak.
            self.snapshot.saved.truncate(SAVED_POOL);
        }
        done
    }

    /// Whether a snapshot has users still to hand out.
    pub fn snapshot_open(&self) -> bool {
        !self.snapshot.done()
    }

    /// Give up the open snapshot (its flush will not be written): its users not yet handed out
    /// count as changed again, so the next snapshot writes them.
    pub fn abandon_snapshot(&mut self) {
        let users = std::mem::take(&mut self.snapshot.users);
        for &idx in &users[self.snapshot.next.min(users.len())..] {
            if std::mem::replace(&mut self.meta[idx as usize].frozen, false) {
                self.mark_changed(idx);
            }
        }
        // A copied user changed after the copy was made, so they are listed as changed already.
        self.snapshot.users = users;
        self.snapshot.users.clear();
        self.snapshot.next = 0;
        self.snapshot.used = 0;
        self.snapshot.taken = 0;
        self.snapshot.saved.truncate(SAVED_POOL);
    }

    /// Called before any change to a user's state: if the open snapshot has yet to hand them
    /// out, copy them aside first, as they were when it began.
    #[inline]
    pub(super) fn preserve(&mut self, idx: u32) {
        if self.meta[idx as usize].frozen {
            self.preserve_slow(idx);
        }
    }

    #[cold]
    fn preserve_slow(&mut self, idx: u32) {
        self.meta[idx as usize].frozen = false;
        let snap = &mut self.snapshot;
        if snap.used == snap.saved.len() {
            snap.saved.push(UserRecord::default());
        }
        let r = &mut snap.saved[snap.used];
        snap.used += 1;
        let u = self.store.user(idx);
        let m = &self.meta[idx as usize];
        // Into the pool's reused buffers: copying a user allocates nothing once the pool is warm.
        r.user_id.clear();
        r.user_id.push_str(self.store.user_id(idx));
        r.narrow.clear();
        r.narrow.extend_from_slice(u.narrow);
        r.wide.clear();
        r.wide.extend_from_slice(u.wide);
        r.next_due = m.next_due;
        r.memory = m.memory;
        r.outcome = m.outcome;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_users_meta_stays_within_a_cache_line() {
        // The snapshot's flag must not grow every user's metadata past one line.
        assert!(
            std::mem::size_of::<super::super::UserMeta>() <= 64,
            "{}",
            std::mem::size_of::<super::super::UserMeta>()
        );
    }
}
