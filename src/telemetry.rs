//! Prometheus metrics (docs/METRICS.md). The engine counts in plain integers on the hot path;
//! the pipeline flushes deltas here once per batch, so no event touches an atomic or a lock.

use prometheus::{
    exponential_buckets, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::engine::EngineCounters;

mod score_histogram;
pub use score_histogram::ScoreHistogram;

pub struct Metrics {
    pub registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_invalid: IntCounterVec,
    pub events_late: IntCounter,
    pub events_out_of_order: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub interventions: IntCounterVec,
    pub control: IntCounterVec,
    pub suppressed: IntCounterVec,
    pub scored: IntCounterVec,
    pub users_created: IntCounter,
    pub held_warm_up: IntCounter,
    pub users_evicted: IntCounter,
    pub users_tracked: IntGauge,
    pub users_by_stage: IntGaugeVec,
    pub active_users: IntGaugeVec,
    pub cohort_retention: GaugeVec,
    pub cohort_users: IntGaugeVec,
    pub model_reloads: IntCounterVec,
    pub state_bytes: IntGauge,
    pub watermark: GaugeVec,
    pub event_time_lag: GaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub producer_queue: IntGauge,
    pub in_flight: IntGauge,
    pub rebalances: IntCounterVec,
    pub backpressure_pauses: IntCounter,
    pub commits: IntCounterVec,
    pub restored_events: IntCounter,
    pub restored_users: IntCounter,
    pub changelog_records: IntCounter,
    pub changelog_bytes: IntCounter,
    pub transactions: IntCounterVec,
    pub key_mismatches: IntCounterVec,
    pub repartitioned: IntCounter,
    pub restoring_partitions: IntGauge,
    pub restore_seconds: Histogram,
    pub outputs_failed: IntCounterVec,
    pub output_retries: IntCounterVec,
    pub dead_letters_truncated: IntCounter,
    pub broker_reachable: IntGauge,
    pub partitions_assigned: IntGauge,
    pub workers: IntGauge,
    pub processing_seconds: Histogram,
    pub scoring_seconds: Histogram,
    pub event_to_intervention_seconds: HistogramVec,
    pub risk_score: ScoreHistogram,
    pub shadow_risk_score: ScoreHistogram,
    pub shadow_agreement: IntCounterVec,
    pub uplift_outcomes: IntCounterVec,
    pub uplift_spend: CounterVec,
    pub model_info: IntGaugeVec,
    pub model_loaded: IntGauge,
    pub ready: IntGauge,
    pub uptime: Gauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Registration fails only on a duplicate name, which is a programming error caught by tests.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(r, IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric(name)))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(r, IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric(name)))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(r, IntGauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name)))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(r, IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric(name)))
}

fn fgauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    reg(r, GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric(name)))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    reg(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn score_histogram(r: &Registry, name: &str, help: &str) -> ScoreHistogram {
    reg(r, ScoreHistogram::new(name, help).unwrap_or_else(|_| unreachable_metric(name)))
}

/// Metric constructors fail only for invalid names or label sets, which are constants here.
fn unreachable_metric(name: &str) -> ! {
    panic!("invalid metric definition {name}")
}

/// Bucket bounds of `churnguard_event_to_intervention_seconds`: 10 ms apart from 10 to 60 ms,
/// where latency objectives are usually set, so that a p99 near 50 ms is read to within a bucket
/// of that width rather than interpolated across one from 32 to 64 ms (doubling buckets did).
pub const EVENT_TO_INTERVENTION_BUCKETS: [f64; 22] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0,
];

impl Metrics {
    /// Series whose label values are known up front start at zero, so dashboards and alerts see
    /// "0" rather than "no data" before the first occurrence.
    fn with_known_series(self) -> Metrics {
        for r in crate::event::RejectReason::ALL {
            self.events_invalid.with_label_values(&[r.code()]);
            self.dead_lettered.with_label_values(&[r.code()]);
        }
        for reason in ["cooldown", "already_sent"] {
            self.suppressed.with_label_values(&[reason]);
        }
        for trigger in ["event", "silence"] {
            self.scored.with_label_values(&[trigger]);
        }
        for result in ["ok", "rejected"] {
            self.model_reloads.with_label_values(&[result]);
        }
        for result in ["agree", "disagree"] {
            self.shadow_agreement.with_label_values(&[result]);
        }
        for result in ["ok", "error"] {
            self.commits.with_label_values(&[result]);
        }
        for kind in ["assign", "revoke"] {
            self.rebalances.with_label_values(&[kind]);
        }
        for output in ["intervention", "control", "dead_letter"] {
            self.output_retries.with_label_values(&[output]);
        }
        self
    }

    pub fn new() -> Metrics {
        let r = Registry::new();
        let latency = EVENT_TO_INTERVENTION_BUCKETS.to_vec();
        Metrics {
            events_consumed: counter_vec(&r, "churnguard_events_consumed_total", "Messages read from the event topics.", &["topic"]),
            events_invalid: counter_vec(&r, "churnguard_events_invalid_total", "Events that failed validation, by reason code.", &["reason"]),
            events_late: counter(&r, "churnguard_events_late_total", "Events older than the watermark; counted, not applied."),
            events_out_of_order: counter(&r, "churnguard_events_out_of_order_total", "Events older than their user's newest event but within the allowed lateness; applied exactly."),
            dead_lettered: counter_vec(&r, "churnguard_dead_lettered_total", "Records written to the dead-letter topic and acknowledged, by reason code.", &["reason"]),
            interventions: counter_vec(&r, "churnguard_interventions_total", "Interventions published, by tier and action.", &["tier", "action"]),
            control: counter_vec(&r, "churnguard_control_total", "Would-be interventions held back as the control group, by tier.", &["tier"]),
            suppressed: counter_vec(&r, "churnguard_suppressed_total", "Decisions not sent, by reason: cooldown (same or lower tier inside the cooldown) or already_sent (same or lower tier already sent and the user silent since).", &["reason"]),
            scored: counter_vec(&r, "churnguard_scored_total", "Risk scores computed, by trigger (event or silence).", &["trigger"]),
            users_created: counter(&r, "churnguard_users_created_total", "Users who started being tracked."),
            held_warm_up: counter(&r, "churnguard_warm_up_held_total", "Decisions that reached a tier during the engine warm-up and were held back (engine.warm_up)."),
            users_evicted: counter(&r, "churnguard_users_evicted_total", "Users forgotten after state_ttl of silence (counted as churned)."),
            users_tracked: gauge(&r, "churnguard_users_tracked", "Users with feature state in memory."),
            users_by_stage: gauge_vec(&r, "churnguard_users_by_stage", "Users by lifecycle stage at the watermark; churned includes users evicted after state_ttl.", &["stage"]),
            state_bytes: gauge(&r, "churnguard_state_bytes", "Heap bytes of per-user feature state."),
            active_users: gauge_vec(&r, "churnguard_active_users", "Users with an event in the last window of event time: DAU, WAU, MAU.", &["window"]),
            cohort_retention: fgauge_vec(&r, "churnguard_cohort_retention_ratio", "Day-N retention of new users first seen in the last 90 days (capped at state_ttl) whose day N has passed: share with an event on or after day N.", &["day"]),
            cohort_users: gauge_vec(&r, "churnguard_cohort_users", "Size of the new-user cohort behind churnguard_cohort_retention_ratio.", &["day"]),
            model_reloads: counter_vec(&r, "churnguard_model_reloads_total", "Model reload attempts (SIGHUP or a changed model file), by result: ok or rejected.", &["result"]),
            watermark: fgauge_vec(&r, "churnguard_watermark_seconds", "Event-time watermark per partition (Unix seconds).", &["topic", "partition"]),
            event_time_lag: fgauge_vec(&r, "churnguard_event_time_lag_seconds", "Wall clock minus watermark per partition.", &["topic", "partition"]),
            consumer_lag: gauge_vec(&r, "churnguard_consumer_lag_messages", "Consumer lag per partition from librdkafka statistics.", &["topic", "partition"]),
            producer_queue: gauge(&r, "churnguard_producer_queue_messages", "Messages in the producer's queue (librdkafka msg_cnt)."),
            in_flight: gauge(&r, "churnguard_outputs_in_flight", "Outputs sent but not yet acknowledged by the broker."),
            rebalances: counter_vec(&r, "churnguard_rebalances_total", "Consumer group rebalances, by kind (assign, revoke).", &["kind"]),
            backpressure_pauses: counter(&r, "churnguard_backpressure_pauses_total", "Times consumption paused because the producer was full."),
            commits: counter_vec(&r, "churnguard_offset_commits_total", "Offset commits, by result.", &["result"]),
            restored_events: counter(&r, "churnguard_restored_events_total", "Events re-read to rebuild state for an assigned partition."),
            restored_users: counter(&r, "churnguard_restored_users_total", "User state records read from changelog topics to restore assigned partitions."),
            changelog_records: counter(&r, "churnguard_changelog_records_total", "State records written to changelog topics and acknowledged."),
            changelog_bytes: counter(&r, "churnguard_changelog_bytes_total", "Bytes of state (keys and values) flushed to changelog topics."),
            transactions: counter_vec(&r, "churnguard_transactions_total", "Partition transactions (exactly once), by result.", &["result"]),
            key_mismatches: counter_vec(&r, "churnguard_key_mismatches_total", "Input messages whose key is not their event's user_id.", &["topic"]),
            repartitioned: counter(&r, "churnguard_repartitioned_total", "Valid events re-keyed by user id onto the repartition topic (source.keys = \"repartition\") and acknowledged."),
            restoring_partitions: gauge(&r, "churnguard_restoring_partitions", "Assigned partitions whose state is being restored (paused until done)."),
            restore_seconds: histogram(&r, "churnguard_restore_duration_seconds", "Time to restore one assigned partition's state.", exponential_buckets(0.01, 2.0, 16).unwrap_or_default()),
            outputs_failed: counter_vec(&r, "churnguard_outputs_failed_total", "Outputs the broker refused for good (not retried), by output (intervention, control, dead_letter) and error.", &["output", "error"]),
            output_retries: counter_vec(&r, "churnguard_output_retries_total", "Outputs sent again after a transient producer error, by output.", &["output"]),
            dead_letters_truncated: counter(&r, "churnguard_dead_letters_truncated_total", "Dead letters sent truncated because the original was larger than the producer or broker accepts."),
            broker_reachable: gauge(&r, "churnguard_broker_reachable", "1 when the last broker probe was answered."),
            partitions_assigned: gauge(&r, "churnguard_partitions_assigned", "Input partitions this instance holds."),
            workers: gauge(&r, "churnguard_workers", "Worker threads processing partitions (runtime.workers)."),
            processing_seconds: histogram(&r, "churnguard_processing_duration_seconds", "Time to process one consumed message (parse, features, score, policy).", exponential_buckets(0.000_001, 2.0, 20).unwrap_or_default()),
            scoring_seconds: histogram(&r, "churnguard_scoring_duration_seconds", "Time to compute one feature vector and score.", exponential_buckets(0.000_000_1, 2.0, 18).unwrap_or_default()),
            event_to_intervention_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("churnguard_event_to_intervention_seconds", "From the triggering message's Kafka timestamp to the intervention's acknowledgement.").buckets(latency),
                    &["tier"],
                )
                .unwrap_or_else(|_| unreachable_metric("churnguard_event_to_intervention_seconds")),
            ),
            risk_score: score_histogram(&r, "churnguard_risk_score", "Distribution of computed P(churn)."),
            shadow_risk_score: score_histogram(&r, "churnguard_shadow_risk_score", "Distribution of P(churn) from the shadow model, on the same vectors as churnguard_risk_score."),
            shadow_agreement: counter_vec(&r, "churnguard_shadow_agreement_total", "Scores where the shadow model is on the same (agree) or the other (disagree) side of the live model's lowest tier threshold.", &["result"]),
            uplift_outcomes: counter_vec(&r, "churnguard_uplift_outcomes_total", "Outcomes of interventions (group treated) and control records (group control) once uplift.horizon of event time has passed: retained (an event in the horizon) or churned.", &["group", "tier", "action", "outcome"]),
            uplift_spend: reg(&r, CounterVec::new(Opts::new("churnguard_uplift_spend_total", "Users' spend (sum of event amounts, currency units) in the horizon after an intervention or control record, counted when the outcome is decided."), &["group", "tier", "action"]).unwrap_or_else(|_| unreachable_metric("churnguard_uplift_spend_total"))),
            model_info: gauge_vec(&r, "churnguard_model_info", "The serving model (value 1).", &["model_version", "trained_at", "features"]),
            model_loaded: gauge(&r, "churnguard_model_loaded", "1 when a valid model is loaded."),
            ready: gauge(&r, "churnguard_ready", "1 when /readyz answers 200: model loaded, broker reachable, partitions assigned."),
            uptime: reg(&r, Gauge::new("churnguard_uptime_seconds", "Seconds since start.").unwrap_or_else(|_| unreachable_metric("churnguard_uptime_seconds"))),
            registry: {
                let build = gauge_vec(&r, "churnguard_build_info", "Build metadata (value 1).", &["version"]);
                build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
                r
            },
        }
        .with_known_series()
    }

    /// Add the difference between two snapshots of engine counters.
    pub fn add_engine_delta(&self, before: &EngineCounters, after: &EngineCounters) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        self.events_late.inc_by(d(before.events_late, after.events_late));
        self.events_out_of_order.inc_by(d(before.events_out_of_order, after.events_out_of_order));
        self.suppressed
            .with_label_values(&["cooldown"])
            .inc_by(d(before.suppressed_cooldown, after.suppressed_cooldown));
        self.suppressed
            .with_label_values(&["already_sent"])
            .inc_by(d(before.suppressed_already_sent, after.suppressed_already_sent));
        self.scored.with_label_values(&["event"]).inc_by(d(before.scored_on_event, after.scored_on_event));
        self.scored.with_label_values(&["silence"]).inc_by(d(before.scored_on_timer, after.scored_on_timer));
        self.users_created.inc_by(d(before.users_created, after.users_created));
        self.held_warm_up.inc_by(d(before.held_warm_up, after.held_warm_up));
        self.users_evicted.inc_by(d(before.users_evicted, after.users_evicted));
        self.risk_score.add_delta(&before.score_buckets, &after.score_buckets);
        self.shadow_risk_score.add_delta(&before.shadow_buckets, &after.shadow_buckets);
        self.shadow_agreement.with_label_values(&["agree"]).inc_by(d(before.shadow_agree, after.shadow_agree));
        self.shadow_agreement.with_label_values(&["disagree"]).inc_by(d(before.shadow_disagree, after.shadow_disagree));
        // Outcome cells are matched by key, not position: `before` may come from another engine
        // (a restored or restarted partition) whose cells were appended in another order.
        for a in &after.outcomes {
            let b = before.outcomes.iter().find(|b| b.same_key(a));
            let labels = [a.group(), &*a.tier, &*a.action];
            let (br, bc, bs) = b.map_or((0, 0, 0.0), |b| (b.retained, b.churned, b.spend));
            for (outcome, n) in [("retained", d(br, a.retained)), ("churned", d(bc, a.churned))] {
                let c = self.uplift_outcomes.with_label_values(&[labels[0], labels[1], labels[2], outcome]);
                // Both outcomes of a cell exist from its first decided outcome on, so a ratio of
                // them never lacks a series.
                c.inc_by(n);
            }
            let spend = a.spend - bs;
            let s = self.uplift_spend.with_label_values(&labels);
            if spend > 0.0 {
                s.inc_by(spend);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.events_consumed.with_label_values(&["t"]).inc();
        m.events_invalid.with_label_values(&["not_json"]).inc();
        m.dead_lettered.with_label_values(&["not_json"]).inc();
        m.interventions.with_label_values(&["high", "coupon"]).inc();
        m.control.with_label_values(&["high"]).inc();
        m.scored.with_label_values(&["event"]).inc();
        m.rebalances.with_label_values(&["assign"]).inc();
        m.commits.with_label_values(&["ok"]).inc();
        m.event_to_intervention_seconds.with_label_values(&["high"]).observe(0.1);
        m.users_by_stage.with_label_values(&["new"]).set(1);
        m.watermark.with_label_values(&["t", "0"]).set(1.0);
        m.event_time_lag.with_label_values(&["t", "0"]).set(1.0);
        m.consumer_lag.with_label_values(&["t", "0"]).set(1);
        m.model_info.with_label_values(&["v", "t", "3"]).set(1);
        for f in m.registry.gather() {
            let n = f.name();
            assert!(n.starts_with("churnguard_"), "{n}");
            let is_counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
            assert_eq!(is_counter, n.ends_with("_total"), "{n}: counters and only counters end in _total");
            for m in f.get_metric() {
                for l in m.get_label() {
                    assert!(!l.name().contains("user"), "{n} has a user label");
                }
            }
        }
    }
}
