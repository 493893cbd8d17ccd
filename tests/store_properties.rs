//! The feature store's user table (interned ids, hash bits in the table, reused indices) against
//! a plain model: a `HashMap` from id to index, a LIFO free list, and each user's last cells.

use std::collections::HashMap;

use churnguard::features::{FeatureSpec, FeatureStore, Layout};
use churnguard::time::DAY_MS;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    GetOrInsert(String),
    Put(String, u32),
    /// Evict the n-th live user (by index), if any.
    Evict(usize),
    /// Evict an index that is free (a no-op), if any.
    EvictFree(usize),
    Get(String),
}

fn id() -> impl Strategy<Value = String> {
    // Few enough ids that users come back after eviction; lengths that match (in-place reuse of
    // an evicted id's bytes) and differ (appended), multi-byte characters.
    prop_oneof!["u[0-9]{1,2}", "[a-c\u{e9}\u{4e2d}]{0,3}", "[a-f0-9]{8}-[a-f0-9]{4}-4[a-f0-9]{3}",]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => id().prop_map(Op::GetOrInsert),
        3 => (id(), any::<u32>()).prop_map(|(s, k)| Op::Put(s, k)),
        3 => any::<usize>().prop_map(Op::Evict),
        1 => any::<usize>().prop_map(Op::EvictFree),
        2 => id().prop_map(Op::Get),
    ]
}

#[derive(Default)]
struct Model {
    users: HashMap<String, u32>,
    free: Vec<u32>,
    next: u32,
    /// Cells last written by `put` (users created by `get_or_insert` have the layout's own).
    cells: HashMap<u32, (Vec<u32>, Vec<u64>)>,
}

impl Model {
    /// The index a new or known user gets, and whether they are new.
    fn admit(&mut self, id: &str) -> (u32, bool) {
        if let Some(&i) = self.users.get(id) {
            return (i, false);
        }
        let i = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.users.insert(id.to_string(), i);
        (i, true)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_store_tracks_users_as_a_map_with_a_free_list(ops in proptest::collection::vec(op(), 1..250)) {
        let layout = Layout::new(&FeatureSpec::default(), 30 * DAY_MS);
        let (n, w) = (layout.narrow_len(), layout.wide_len());
        let mut st = FeatureStore::new(layout);
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::GetOrInsert(id) => {
                    let want = m.admit(&id);
                    prop_assert_eq!(st.get_or_insert(&id, 1_767_225_600_000), want);
                    if want.1 {
                        m.cells.remove(&want.0);
                    }
                }
                Op::Put(id, k) => {
                    let narrow: Vec<u32> = (0..n as u32).map(|c| c ^ k).collect();
                    let wide = vec![u64::from(k); w];
                    let want = m.admit(&id);
                    prop_assert_eq!(st.put(&id, &narrow, &wide), Some(want));
                    m.cells.insert(want.0, (narrow, wide));
                }
                Op::Evict(k) => {
                    let mut live: Vec<u32> = m.users.values().copied().collect();
                    live.sort_unstable();
                    if let Some(&idx) = live.get(k % live.len().max(1)) {
                        st.evict(idx);
                        m.users.retain(|_, &mut i| i != idx);
                        m.free.push(idx);
                        m.cells.remove(&idx);
                    }
                }
                Op::EvictFree(k) => {
                    if let Some(&idx) = m.free.get(k % m.free.len().max(1)) {
                        st.evict(idx);
                    }
                }
                Op::Get(id) => prop_assert_eq!(st.get(&id), m.users.get(&id).copied()),
            }
            prop_assert_eq!(st.len(), m.users.len());
            prop_assert_eq!(st.capacity_index(), m.next as usize);
            for (id, &idx) in &m.users {
                prop_assert_eq!(st.get(id), Some(idx));
                prop_assert_eq!(st.user_id(idx), id.as_str());
            }
            for (&idx, (narrow, wide)) in &m.cells {
                prop_assert_eq!(st.user(idx).narrow, &narrow[..]);
                prop_assert_eq!(st.user(idx).wide, &wide[..]);
            }
            let mut got: Vec<u32> = st.indices().collect();
            got.sort_unstable();
            let mut want: Vec<u32> = m.users.values().copied().collect();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }
    }
}
