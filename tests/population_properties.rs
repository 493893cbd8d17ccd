//! The population figures the engine keeps incrementally (crate::population) equal a scan over
//! every tracked user, at any point of any stream: gaps, out-of-order events within the lateness,
//! clock jumps, reactivations and TTL evictions included.

use churnguard::engine::{Engine, EngineConfig, WarmUp};
use churnguard::event::parse_event;
use churnguard::features::spec::FeatureSpec;
use churnguard::model::artifact::{ModelArtifact, TierThreshold};
use churnguard::policy::PolicyConfig;
use churnguard::time::{Span, DAY_MS, HOUR_MS};
use proptest::prelude::*;

const T0: i64 = 1_767_225_600_000;

fn engine() -> Engine {
    let spec = FeatureSpec { event_types: vec!["login".into()], ..FeatureSpec::default() };
    let tiers = vec![TierThreshold { name: "high".into(), min_score: 0.9 }];
    let model = ModelArtifact::from_weights(spec, "pop-1", &[("recency", 2.0)], -4.0, tiers).expect("model");
    let cfg = EngineConfig {
        warm_up: WarmUp::Off,
        allowed_lateness: Span::hours(6),
        state_ttl: Span::days(45),
        ..EngineConfig::default()
    };
    Engine::new(&model, PolicyConfig::default(), cfg)
}

#[derive(Debug, Clone)]
enum Step {
    /// An event of user `u`, `gap` after the newest event time, or `back` before it.
    Event { u: u8, gap_hours: u32, back_hours: u8 },
    /// The clock jumps (an idle partition following wall time).
    Jump { hours: u32 },
    /// The gauges are read.
    Read,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..25, prop_oneof![3 => 0u32..30, 1 => 0u32..(60 * 24)], 0u8..8)
            .prop_map(|(u, gap_hours, back_hours)| Step::Event { u, gap_hours, back_hours }),
        1 => (1u32..(50 * 24)).prop_map(|hours| Step::Jump { hours }),
        2 => Just(Step::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn incremental_population_equals_a_scan(steps in proptest::collection::vec(step(), 1..400)) {
        let mut e = engine();
        let mut newest = T0;
        let mut reads = 0;
        for s in steps {
            match s {
                Step::Event { u, gap_hours, back_hours } => {
                    newest += i64::from(gap_hours) * HOUR_MS;
                    let ts = newest - i64::from(back_hours) * HOUR_MS;
                    let line = format!(r#"{{"user_id":"u{u}","event_type":"login","ts":{ts}}}"#);
                    let ev = parse_event(line.as_bytes(), 4096).expect("valid event");
                    e.ingest_decisions(&ev, &mut |_| {});
                }
                Step::Jump { hours } => {
                    let to = e.watermark().max(T0) + i64::from(hours) * HOUR_MS;
                    newest = newest.max(to);
                    e.advance_watermark_decisions(to, &mut |_| {});
                }
                Step::Read => {
                    reads += 1;
                    let scan = e.population_by_scan();
                    prop_assert_eq!(e.population(), scan, "at watermark {}", e.watermark());
                }
            }
        }
        let scan = e.population_by_scan();
        prop_assert_eq!(e.population(), scan);
        let _ = (reads, DAY_MS);
    }
}
