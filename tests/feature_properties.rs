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
    let tenure = days(t - evs.iter().map(|e| e.ts).min().unwrap());
    let cap = if spec.aggregates.recency_to_tenure { tenure } else { spec.recency_cap_days() };
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
        ["tenure"] => tenure,
        ["rhythm", what] => {
            // Distinct active days from the last event's day back over the longest whole-day
            // window: gaps in days between them, and the silence over the mean gap.
            let held = spec.day_windows().map(|(_, w)| w.ms() / DAY_MS).max().unwrap() + 1;
            let last_ts = evs.iter().map(|e| e.ts).max().unwrap();
            let head = last_ts.div_euclid(DAY_MS);
            let mut ds: Vec<i64> = evs.iter().map(|e| head - e.ts.div_euclid(DAY_MS)).filter(|d| *d < held).collect();
            ds.sort_unstable();
            ds.dedup();
            let mean = if ds.len() >= 2 { *ds.last().unwrap() as f64 / (ds.len() - 1) as f64 } else { held as f64 };
            match *what {
                "mean_gap" => mean,
                "last_gap" => {
                    if ds.len() >= 2 {
                        ds[1] as f64
                    } else {
                        held as f64
                    }
                }
                "overdue" => days(t - last_ts) / mean,
                _ => panic!("naive: no definition for {name}"),
            }
        }
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
    (windows, prop::sample::select(vec![2u32, 3, 4, 6]), 1usize..=4, any::<bool>(), any::<bool>(), any::<bool>())
        .prop_map(|(ws, k, n_types, hourly, rhythm, recency_to_tenure)| {
            let mut spec = FeatureSpec {
                event_types: ["a", "b", "c", "d"][..n_types].iter().map(|s| s.to_string()).collect(),
                windows: ws
                    .into_iter()
                    .map(|d| if hourly && d <= 3 { Span(d * 12 * HOUR_MS) } else { Span::days(d) })
                    .collect(),
                slots_per_window: k,
                recency_cap: None,
                aggregates: Aggregates { recency_to_tenure, ..Aggregates::default() },
            };
            // Rhythm reads active days, so it needs a whole-day window (validate() insists).
            spec.aggregates.rhythm = rhythm && spec.day_windows().next().is_some();
            spec
        })
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

/// Rhythm features on a hand-worked example: active days 0, 3 and 10, read on day 17.
#[test]
fn rhythm_features_by_hand() {
    let spec = FeatureSpec {
        event_types: vec!["a".into()],
        aggregates: Aggregates { rhythm: true, recency_to_tenure: true, ..Aggregates::default() },
        ..FeatureSpec::default()
    };
    spec.validate().unwrap();
    let evs: Vec<Ev> =
        [0, 3, 3, 10].iter().map(|d| Ev { ts: BASE + d * DAY_MS + 5 * HOUR_MS, ty: 0, amount: 0.0 }).collect();
    let t = BASE + 17 * DAY_MS + 5 * HOUR_MS;
    let v = engine_vector(&spec, &evs, t);
    let names = spec.feature_names();
    let get = |n: &str| v[names.iter().position(|x| x == n).unwrap()];
    assert_eq!(get("rhythm.mean_gap"), 5.0, "10 days over two gaps");
    assert_eq!(get("rhythm.last_gap"), 7.0);
    assert_eq!(get("rhythm.overdue"), 7.0 / 5.0, "7 days silent against a 5-day rhythm");
    // Recency at tenure: 7 days silent; `b`... only `a` is listed, seen 7 days ago; no cap at 90d.
    assert_eq!(get("recency"), 7.0);
    let late = engine_vector(&spec, &evs, BASE + 200 * DAY_MS + 5 * HOUR_MS);
    let get_late = |n: &str| late[names.iter().position(|x| x == n).unwrap()];
    assert_eq!(get_late("recency"), 190.0, "beyond the 90-day window: not capped");
    // One active day only: the gaps read as the days the bitmap holds (90 + 1).
    let one = engine_vector(&spec, &evs[..1], t);
    assert_eq!(one[names.iter().position(|x| x == "rhythm.mean_gap").unwrap()], 91.0);
}

/// The options are on by default and written to the spec's JSON. An artifact written before they
/// existed (the 67-feature model shipped until issue 10, kept as a fixture) has no such keys: it
/// still loads, with its fingerprint matching and the options off, so it computes the features it
/// was trained on. The shipped model has them on.
#[test]
fn artifacts_from_before_the_options_load_with_them_off() {
    let json = serde_json::to_string(&FeatureSpec::default()).unwrap();
    assert!(json.contains("\"rhythm\":true") && json.contains("\"recency_to_tenure\":true"), "{json}");
    let load =
        |rel: &str| churnguard::model::ModelArtifact::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    let old = load("tests/fixtures/model-before-rhythm.json").expect("the pre-option artifact still loads");
    assert!(!old.spec.aggregates.rhythm && !old.spec.aggregates.recency_to_tenure);
    assert_eq!(old.spec_fingerprint, "f608322cb06a61fecaad3ff7a8c6027c");
    assert_eq!(old.feature_names.len(), 67);
    let shipped = load("models/default.json").expect("the shipped model loads");
    assert!(shipped.spec.aggregates.rhythm && shipped.spec.aggregates.recency_to_tenure);
    assert!(shipped.feature_names.iter().any(|n| n == "rhythm.overdue"));
    // Rhythm reads the activity-day bitmap `active_days` already keeps: the state does not grow
    // (docs/FEATURES.md, "State per user": 720 bytes for both).
    let bytes = |spec: &FeatureSpec| Layout::new(spec, 30 * DAY_MS).state_bytes();
    assert_eq!((bytes(&old.spec), bytes(&shipped.spec)), (720, 720));
    assert_eq!(shipped.feature_names.len(), 70);
    let hourly = FeatureSpec { windows: vec![Span(12 * HOUR_MS)], ..FeatureSpec::default() };
    assert!(hourly.validate().unwrap_err().to_string().contains("rhythm needs a whole-day window"));
}
