//! Micro-benchmarks of the hot path: parsing an event, updating a user's window state, building
//! a feature vector and scoring it, and the whole engine over a batch of simulator events.
//!
//! `cargo bench --bench engine` (about half a minute); `cargo bench --bench engine -- --test`
//! runs each benchmark once as a smoke test.

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use churnguard::engine::{Engine, EngineConfig, WarmUp};
use churnguard::event::{parse_event, parse_event_reference, ActivityEvent, DEFAULT_MAX_EVENT_BYTES};
use churnguard::features::spec::FeatureSpec;
use churnguard::features::{FeatureStore, Layout};
use churnguard::model::artifact::{ModelArtifact, TierThreshold};
use churnguard::model::Scorer;
use churnguard::policy::PolicyConfig;
use churnguard::sim::{self, EventKind, SimConfig, SimEvent};
use churnguard::time::{Millis, DAY_MS, MINUTE_MS};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const T0: Millis = sim::DEFAULT_START_MS;
const BATCH: usize = 100_000;

/// The simulator's event types, as a spec derived from its data would list them.
fn spec() -> FeatureSpec {
    FeatureSpec {
        event_types: EventKind::ALL.iter().map(|k| k.as_str().to_string()).collect(),
        ..FeatureSpec::default()
    }
}

/// A model with a non-zero coefficient on every feature (so scoring does all the work a trained
/// model's does): silence, friction and cancels raise risk, activity and tenure lower it.
fn model() -> ModelArtifact {
    let spec = spec();
    let defs = spec.features();
    let coefficients: Vec<f64> = defs
        .iter()
        .map(|d| {
            let n = d.name.as_str();
            if n == "recency" {
                0.9
            } else if n.contains("cancel") || n.contains("payment_failed") || n.contains("support_ticket") {
                0.3
            } else if n.starts_with("count.") || n.starts_with("active_days.") || n.starts_with("trend.") {
                -0.15
            } else if n == "tenure" || n.starts_with("lifetime.") {
                -0.05
            } else {
                0.05
            }
        })
        .collect();
    let weights: Vec<(&str, f64)> = defs.iter().map(|d| d.name.as_str()).zip(coefficients).collect();
    let tiers = vec![
        TierThreshold { name: "high".into(), min_score: 0.8 },
        TierThreshold { name: "medium".into(), min_score: 0.5 },
    ];
    ModelArtifact::from_weights(spec.clone(), "bench-1", &weights, -3.0, tiers).expect("bench model validates")
}

fn owned(ev: &SimEvent) -> ActivityEvent<'static> {
    ActivityEvent {
        user_id: Cow::Owned(sim::user_id_string(ev.user_id)),
        event_type: Cow::Borrowed(ev.event_type.as_str()),
        ts: ev.ts,
        amount: ev.amount,
    }
}

/// The first 100k events of a simulated log (2,500 users over 120 days), in stream order.
/// Through [`model`] with the default policy they cause about 0.6 silence rescores and 0.18
/// interventions (control records included) per event.
fn batch() -> &'static [ActivityEvent<'static>] {
    static BATCH_EVENTS: OnceLock<Vec<ActivityEvent<'static>>> = OnceLock::new();
    BATCH_EVENTS.get_or_init(|| {
        let cfg = SimConfig { users: 2_500, days: 120, seed: 7, start_ms: T0 };
        let mut out = Vec::with_capacity(BATCH);
        sim::generate(&cfg, |e| {
            if out.len() < BATCH {
                out.push(owned(e));
            }
        })
        .expect("simulate");
        assert_eq!(out.len(), BATCH, "the simulated log must hold {BATCH} events");
        out
    })
}

/// A store holding one user with 60 days of history: 400 events of mixed types.
fn store_with_history() -> (FeatureStore, u32, Millis) {
    let spec = spec();
    let mut store = FeatureStore::new(Layout::new(&spec, 30 * DAY_MS));
    let (idx, _) = store.get_or_insert("u0000042", T0);
    let mut ts = T0;
    for i in 0..400u32 {
        ts += (i64::from(i % 13) + 1) * 17 * MINUTE_MS;
        let ty = (i % spec.n_types() as u32) as usize;
        let amount = if i % 9 == 0 { 12.5 } else { 0.0 };
        store.apply(idx, ts, ty, amount);
    }
    (store, idx, ts)
}

fn bench_parse_event(c: &mut Criterion) {
    let mut line = Vec::new();
    sim::write_event_json(
        &mut line,
        &SimEvent {
            user_id: 123_456,
            event_type: EventKind::Purchase,
            ts: T0 + 37 * DAY_MS + 12_345_678,
            amount: Some(23.99),
        },
    );
    let line = line.strip_suffix(b"\n").unwrap_or(&line).to_vec();
    let mut g = c.benchmark_group("parse_event");
    g.throughput(Throughput::Bytes(line.len() as u64));
    g.bench_function("simulator_purchase_line", |b| {
        b.iter(|| parse_event(black_box(&line), DEFAULT_MAX_EVENT_BYTES).expect("valid"))
    });
    g.finish();
}

/// Simulator events written the ways producers write them, in rotation: the simulator's own line
/// (RFC3339 with milliseconds), epoch-ms `ts` with a nested `properties` object, fields in
/// another order with escaped and non-ASCII strings in extra fields, RFC3339 without
/// milliseconds with `amount: null` and whitespace; and one in 50 with an escaped `user_id`.
fn realistic_lines() -> &'static [Vec<u8>] {
    static LINES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let cfg = SimConfig { users: 500, days: 30, seed: 11, start_ms: T0 };
        let mut out = Vec::with_capacity(PARSE_LINES);
        sim::generate(&cfg, |e| {
            if out.len() >= PARSE_LINES {
                return;
            }
            let i = out.len();
            let uid = sim::user_id_string(e.user_id);
            let ty = e.event_type.as_str();
            let mut rfc = Vec::new();
            churnguard::time::write_rfc3339_ms(&mut rfc, e.ts);
            let rfc = String::from_utf8_lossy(&rfc).into_owned();
            let amount = e.amount.map_or("null".to_string(), |a| ryu::Buffer::new().format_finite(a).to_string());
            let line = if i % 50 == 49 {
                format!(r#"{{"user_id":"{}\u0041","event_type":"{ty}","ts":{},"amount":{amount}}}"#, uid, e.ts)
            } else {
                match i % 4 {
                    0 => {
                        let mut l = Vec::new();
                        sim::write_event_json(&mut l, e);
                        String::from_utf8_lossy(l.strip_suffix(b"\n").unwrap_or(&l)).into_owned()
                    }
                    1 => format!(
                        r#"{{"user_id":"{uid}","event_type":"{ty}","ts":{},"amount":{amount},"properties":{{"sku":"SKU-{i}","tags":["promo","mobile"],"price":{{"value":19.99,"currency":"EUR"}},"qty":2}}}}"#,
                        e.ts
                    ),
                    2 => format!(
                        r#"{{"ts":"{rfc}","session":"s-{i} \"quoted\" caf\u00e9","event_type":"{ty}","app":{{"version":"4.2.1","beta":false,"locale":"fr-FR ünïcödé"}},"user_id":"{uid}"}}"#
                    ),
                    _ => format!(
                        "{{ \"user_id\": \"{uid}\", \"event_type\": \"{ty}\", \"ts\": \"{}Z\", \"amount\": null, \"source\": \"web\" }}",
                        &rfc[..19]
                    ),
                }
            };
            out.push(line.into_bytes());
        })
        .expect("simulate");
        assert_eq!(out.len(), PARSE_LINES);
        for l in &out {
            assert!(parse_event_reference(l, DEFAULT_MAX_EVENT_BYTES).is_ok(), "{}", String::from_utf8_lossy(l));
        }
        out
    })
}

const PARSE_LINES: usize = 1_000;

/// Both parsers on the same lines, one iteration parsing all of them: time per iteration / 1000
/// is ns per event.
fn bench_parse(c: &mut Criterion) {
    let lines = realistic_lines();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    type Parser = for<'a> fn(&'a [u8], usize) -> Result<ActivityEvent<'a>, churnguard::event::Rejection>;
    for (name, parse) in
        [("reference_serde_1000", parse_event_reference as Parser), ("parse_event_1000", parse_event as Parser)]
    {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut ok = 0usize;
                for l in lines {
                    ok += usize::from(parse(black_box(l), DEFAULT_MAX_EVENT_BYTES).is_ok());
                }
                ok
            })
        });
    }
    g.finish();
}

fn bench_feature_update(c: &mut Criterion) {
    let mut g = c.benchmark_group("feature_update");
    g.throughput(Throughput::Elements(1));
    let n_types = spec().n_types();
    g.bench_function("apply_newest", |b| {
        let (mut store, idx, mut ts) = store_with_history();
        let mut i = 0usize;
        b.iter(|| {
            // Sessions minutes apart: most events stay in the head slot, some advance the rings.
            i += 1;
            ts += (i as i64 % 7) * 3 * MINUTE_MS;
            store.apply(idx, black_box(ts), i % n_types, if i % 11 == 0 { 9.99 } else { 0.0 })
        })
    });
    g.bench_function("apply_out_of_order", |b| {
        let (mut store, idx, ts) = store_with_history();
        let mut i = 0usize;
        b.iter(|| {
            i += 1;
            store.apply(idx, black_box(ts - 40 * MINUTE_MS), i % n_types, 0.0)
        })
    });
    g.finish();
}

fn bench_vector_and_score(c: &mut Criterion) {
    let model = model();
    let scorer = Scorer::new(&model);
    let (store, idx, last) = store_with_history();
    let at = last + 5 * 3_600_000;
    let mut v = vec![0.0; store.layout().n_features()];
    let mut g = c.benchmark_group("vector_and_score");
    g.throughput(Throughput::Elements(1));
    g.bench_function("vector_at", |b| {
        b.iter(|| {
            store.vector_at(idx, black_box(at), &mut v);
            v[0]
        })
    });
    store.vector_at(idx, at, &mut v);
    g.bench_function("score", |b| b.iter(|| scorer.score(black_box(&v))));
    g.bench_function("vector_at_and_score", |b| {
        b.iter(|| {
            store.vector_at(idx, black_box(at), &mut v);
            scorer.score(&v)
        })
    });
    g.finish();
}

fn bench_engine_ingest(c: &mut Criterion) {
    let model = model();
    let mut g = c.benchmark_group("engine_ingest");
    g.throughput(Throughput::Elements(BATCH as u64));
    // One iteration is ~0.2 s: 20 samples need a little more than the default 3 s.
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("simulator_100k", |b| {
        let events = batch();
        b.iter_batched(
            // Without warm-up, decisions are built and emitted from the first event, as measured in
            // docs/PERFORMANCE.md.
            || {
                Engine::new(
                    &model,
                    PolicyConfig::default(),
                    EngineConfig { warm_up: WarmUp::Off, ..EngineConfig::default() },
                )
            },
            |mut engine| {
                let mut sent = 0u64;
                for e in events {
                    engine.ingest(e, &mut |iv| {
                        sent += 1;
                        black_box(iv);
                    });
                }
                black_box(sent);
                // Returned, so dropping the state is not timed.
                engine
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench_parse_event, bench_parse, bench_feature_update, bench_vector_and_score, bench_engine_ingest
}
criterion_main!(benches);
