//! Property tests for the window maths: the bucketed engine against a naive recomputation
//! from the raw event list, feature by feature, by name.

use churnguard::features::spec::{Aggregates, FeatureSpec};
use churnguard::features::{FeatureStore, Layout};
use churnguard::time::{Span, DAY_MS, HOUR_MS};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Ev {
    ts: i64,
    ty: usize,
    amount: f64,
}

const BASE: i64 = 1_767_225_600_000;

/// The feature at time `t` by its definition in docs/FEATURES.md, from raw events (all `ts <= t`).
fn naive(spec: &FeatureSpec, evs: &[Ev], t: i64, name: &str) -> f64 {
    let k = i64::from(spec.slots_per_window);
    let days = |ms: i64| ms as f64 / DAY_MS as f64;
    let cap = spec.recency_cap_days();
    let window_of = |w: &str| -> Span { w.parse().unwrap() };
    let in_window = |w: Span, ts: i64| {
        let slot = w.ms() / k;
        let (s, q) = (ts.div_euclid(slot), t.div_euclid(slot));
        s > q - k && s <= q
    };
    let type_of = |name: &str| (0..spec.n_types()).find(|&i| spec.type_name(i) == name).unwrap();
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["count", ty, w] => {
            let (ty, w) = (type_of(ty), window_of(w));
            evs.iter().filter(|e| e.ty == ty && in_window(w, e.ts)).count() as f64
        }
        ["amount", w] => {
            let w = window_of(w);
            evs.iter().filter(|e| in_window(w, e.ts)).map(|e| e.amount).sum()
        }
        ["active_days", w] => {
            // Complete UTC days before t's day: [today - wd, today - 1].
            let wd = window_of(w).ms() / DAY_MS;
            let today = t.div_euclid(DAY_MS);
            let mut ds: Vec<i64> =
                evs.iter().map(|e| e.ts.div_euclid(DAY_MS)).filter(|d| *d >= today - wd && *d < today).collect();
            ds.sort_unstable();
            ds.dedup();
            ds.len() as f64
        }
        ["recency"] => days(t - evs.iter().map(|e| e.ts).max().unwrap()).min(cap),
        ["recency", ty] => {
            let ty = type_of(ty);
            evs.iter().filter(|e| e.ty == ty).map(|e| e.ts).max().map_or(cap, |last| days(t - last).min(cap))
        }
        ["tenure"] => days(t - evs.iter().map(|e| e.ts).min().unwrap()),
        ["lifetime", "count", ty] => {
            let ty = type_of(ty);
            evs.iter().filter(|e| e.ty == ty).count() as f64
        }
        ["lifetime", "amount"] => evs.iter().map(|e| e.amount).sum(),
        ["trend", pair] => {
            let (s, l) = pair.split_once('_').unwrap();
            let (s, l) = (window_of(s), window_of(l));
            let cs = evs.iter().filter(|e| in_window(s, e.ts)).count() as f64;
            let cl = evs.iter().filter(|e| in_window(l, e.ts)).count() as f64;
            (cs * (l.ms() as f64 / s.ms() as f64) + 1.0) / (cl + 1.0)
        }
        _ => panic!("naive: no definition for {name}"),
    }
}

fn spec_strategy() -> impl Strategy<Value = FeatureSpec> {
    let windows = prop::sample::subsequence(vec![1i64, 2, 3, 7, 14, 30, 60, 90], 1..=4);
    (windows, prop::sample::select(vec![2u32, 3, 4, 6]), 1usize..=4, any::<bool>()).prop_map(
        |(ws, k, n_types, hourly)| FeatureSpec {
            event_types: ["a", "b", "c", "d"][..n_types].iter().map(|s| s.to_string()).collect(),
            windows: ws
                .into_iter()
                .map(|d| if hourly && d <= 3 { Span(d * 12 * HOUR_MS) } else { Span::days(d) })
                .collect(),
            slots_per_window: k,
            recency_cap: None,
            aggregates: Aggregates::default(),
        },
    )
}

fn events_strategy(n_types: usize) -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((0i64..200 * DAY_MS, 0..=n_types, prop::option::of(-50.0f64..500.0)), 1..120).prop_map(|v| {
        v.into_iter()
            .map(|(off, ty, amount)| Ev {
                ts: BASE + off,
                ty,
                amount: amount.map_or(0.0, |a| (a * 100.0).round() / 100.0),
            })
            .collect()
    })
}

fn engine_vector(spec: &FeatureSpec, evs: &[Ev], t: i64) -> Vec<f64> {
    let mut store = FeatureStore::new(Layout::new(spec, 30 * DAY_MS));
    for e in evs {
        let (idx, _) = store.get_or_insert("user", e.ts);
        store.apply(idx, e.ts, e.ty, e.amount);
    }
    let idx = store.get("user").unwrap();
    let mut out = vec![f64::NAN; store.layout().n_features()];
    store.vector_at(idx, t, &mut out);
    out
}

fn close(a: f64, b: f64) -> bool {
    // Amounts are summed exactly in cents; only the final division by 100 rounds.
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Point-in-time: the vector at T from only the events with ts <= T, fed in any order,
    /// equals the naive recomputation at T, for every feature.
    #[test]
    fn vector_at_t_matches_naive_recomputation(
        (spec, evs, cut, shuffle_seed, later) in spec_strategy().prop_flat_map(|s| {
            let n = s.n_types() - 1;
            (Just(s), events_strategy(n), 0i64..200 * DAY_MS, any::<u64>(), 0i64..120 * DAY_MS)
        })
    ) {
        let t_cut = BASE + cut;
        let mut past: Vec<Ev> = evs.into_iter().filter(|e| e.ts <= t_cut).collect();
        prop_assume!(!past.is_empty());
        // Deterministic shuffle: arrival order must not matter.
        let mut s = shuffle_seed | 1;
        for i in (1..past.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            past.swap(i, (s % (i as u64 + 1)) as usize);
        }
        // Query at the cut and later (silence grows recency and empties windows).
        let names = spec.feature_names();
        prop_assert!(!names.is_empty());
        for t in [t_cut, t_cut + later] {
            let got = engine_vector(&spec, &past, t);
            prop_assert_eq!(got.len(), names.len());
            for (i, name) in names.iter().enumerate() {
                let want = naive(&spec, &past, t, name);
                prop_assert!(close(got[i], want), "{name} at t={t}: engine {} naive {want}", got[i]);
            }
        }
    }

    /// Events after T leave the vector at T untouched only if they are not fed: the engine never
    /// needs them, and the vector depends on T (recency grows while the user is silent).
    #[test]
    fn recency_grows_while_silent(evs in events_strategy(2), gap in 1i64..60) {
        let spec = FeatureSpec { event_types: vec!["a".into(), "b".into()], ..FeatureSpec::default() };
        let last = evs.iter().map(|e| e.ts).max().unwrap();
        let names = spec.feature_names();
        let r = names.iter().position(|n| n == "recency").unwrap();
        let v1 = engine_vector(&spec, &evs, last);
        let v2 = engine_vector(&spec, &evs, last + gap * DAY_MS);
        prop_assert_eq!(v1[r], 0.0);
        prop_assert!(v2[r] > v1[r]);
    }
}
