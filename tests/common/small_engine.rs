//! A small engine for property tests: two event types, windows up to 30 days, a 3-day warm-up,
//! short TTL, rescoring and outcome horizon, so random streams of a few hundred events reach
//! every path (decisions, cooldowns, evictions, outcome closes). Included by path, so a test
//! that needs only this does not build the Kafka harness.

use churnguard::engine::{Engine, EngineConfig, WarmUp};
use churnguard::features::spec::FeatureSpec;
use churnguard::model::artifact::{ModelArtifact, TierThreshold};
use churnguard::policy::PolicyConfig;
use churnguard::time::Span;

/// The first event time of the streams these tests build.
pub const T0: i64 = 1_767_225_600_000;

pub fn engine() -> Engine {
    let spec = FeatureSpec {
        event_types: vec!["login".into(), "purchase".into()],
        windows: vec![Span::days(1), Span::days(7), Span::days(30)],
        ..FeatureSpec::default()
    };
    let tiers = vec![
        TierThreshold { name: "high".into(), min_score: 0.8 },
        TierThreshold { name: "medium".into(), min_score: 0.45 },
    ];
    let model =
        ModelArtifact::from_weights(spec, "small-1", &[("recency", 1.2), ("count.login.7d", -0.4)], -2.0, tiers)
            .expect("model");
    let cfg = EngineConfig {
        warm_up: WarmUp::For(Span::days(3)),
        allowed_lateness: Span::hours(6),
        state_ttl: Span::days(40),
        rescore_interval: Span::hours(12),
        outcome_horizon: Span::days(5),
        ..EngineConfig::default()
    };
    let policy = PolicyConfig { cooldown: Span::days(2), ..PolicyConfig::default() };
    Engine::new(&model, policy, cfg)
}
