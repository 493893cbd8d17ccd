//! User ids interned end to end in one string, a span of it per user index: no heap allocation
//! per user (issue #9), and 16 bytes per user besides the id itself, where a boxed id cost 16
//! plus an allocation of its own (32 bytes at least with glibc's malloc).
//!
//! An index freed by an eviction keeps its span: the next user given that index writes their id
//! over it if it has the same length (a service's ids mostly do: all UUIDs, all numbers of one
//! width), else the id is appended and the old span becomes garbage. Once garbage outweighs the
//! ids in use (and a floor, so that a small store does not rewrite itself for a few bytes), the
//! string is rewritten without it. Each rewrite copies no more bytes than the garbage that
//! triggered it, so ids cost a constant number of bytes copied each, amortised, and the string
//! never holds more than about twice the bytes of its ids.

/// Garbage below this is left in place (see the module docs).
const MIN_RECLAIM: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    len: usize,
}

#[derive(Debug)]
pub struct IdArena {
    text: String,
    spans: Vec<Span>,
    /// Bytes of `text` that no span covers.
    garbage: usize,
    min_reclaim: usize,
}

impl Default for IdArena {
    fn default() -> Self {
        IdArena::with_min_reclaim(MIN_RECLAIM)
    }
}

impl IdArena {
    /// An arena that reclaims garbage once it passes `min_reclaim` bytes (and the ids in use):
    /// the tests set a small floor to exercise the rewrite.
    pub fn with_min_reclaim(min_reclaim: usize) -> IdArena {
        IdArena { text: String::new(), spans: Vec::new(), garbage: 0, min_reclaim }
    }

    /// Indices handed out so far.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The id last given to index `idx` (a freed index keeps its last id until it is reused).
    #[inline]
    pub fn get(&self, idx: usize) -> &str {
        let s = self.spans[idx];
        &self.text[s.start..s.start + s.len]
    }

    /// Ask the CPU for index `idx`'s id ahead of comparing it ([`super::prefetch`]).
    #[inline]
    pub fn prefetch(&self, idx: usize) {
        if let Some(s) = self.spans.get(idx) {
            if let Some(id) = self.text.as_bytes().get(s.start..s.start + s.len) {
                super::prefetch::slice(id);
            }
        }
    }

    /// Give the next index (`len()`) the id `id`.
    pub fn push(&mut self, id: &str) {
        let start = self.text.len();
        self.text.push_str(id);
        self.spans.push(Span { start, len: id.len() });
    }

    /// Give index `idx`, already handed out, the id `id` in place of its last one.
    pub fn set(&mut self, idx: usize, id: &str) {
        let old = self.spans[idx];
        if old.len == id.len() {
            // Both ids are whole strings of the same length: the span's ends are character
            // boundaries before and after, and nothing else moves.
            self.text.replace_range(old.start..old.start + old.len, id);
            return;
        }
        self.garbage += old.len;
        let start = self.text.len();
        self.text.push_str(id);
        self.spans[idx] = Span { start, len: id.len() };
        if self.garbage > self.min_reclaim && self.garbage > self.text.len() - self.garbage {
            self.reclaim();
        }
    }

    /// Rewrite the string without its garbage.
    fn reclaim(&mut self) {
        let mut text = String::with_capacity(self.text.len() - self.garbage);
        for s in &mut self.spans {
            let start = text.len();
            text.push_str(&self.text[s.start..s.start + s.len]);
            s.start = start;
        }
        self.text = text;
        self.garbage = 0;
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.spans.capacity() * std::mem::size_of::<Span>()
    }

    /// Bytes of the string that hold no current id.
    #[cfg(test)]
    fn garbage(&self) -> usize {
        self.garbage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(String),
        Set(usize, String),
    }

    fn id() -> impl Strategy<Value = String> {
        // Short and long ids, equal lengths often (in-place reuse), multi-byte characters.
        prop_oneof![
            "u[0-9]{3}",
            "[a-z\u{e9}\u{4e2d}]{0,12}",
            "[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}",
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![id().prop_map(Op::Push), (any::<usize>(), id()).prop_map(|(i, s)| Op::Set(i, s))]
    }

    proptest! {
        #[test]
        fn every_index_gives_back_its_last_id(ops in proptest::collection::vec(op(), 1..300), floor in 0usize..64) {
            let mut arena = IdArena::with_min_reclaim(floor);
            let mut model: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(s) => {
                        arena.push(&s);
                        model.push(s);
                    }
                    Op::Set(i, s) => {
                        if model.is_empty() {
                            continue;
                        }
                        let i = i % model.len();
                        arena.set(i, &s);
                        model[i] = s;
                    }
                }
                prop_assert_eq!(arena.len(), model.len());
                for (i, s) in model.iter().enumerate() {
                    prop_assert_eq!(arena.get(i), s.as_str());
                }
                let live: usize = model.iter().map(String::len).sum();
                prop_assert_eq!(arena.text.len(), live + arena.garbage());
                // The bound the module promises: garbage never outweighs the ids past the floor.
                prop_assert!(arena.garbage() <= floor.max(live), "garbage {} live {live}", arena.garbage());
            }
        }
    }

    #[test]
    fn same_length_ids_reuse_their_span() {
        let mut a = IdArena::default();
        a.push("u001");
        a.push("\u{e9}t\u{e9}");
        a.set(0, "u002");
        a.set(1, "abcde");
        assert_eq!((a.get(0), a.get(1), a.garbage()), ("u002", "abcde", 0));
        a.set(1, "ab");
        assert_eq!((a.get(0), a.get(1), a.garbage()), ("u002", "ab", 5));
    }
}
