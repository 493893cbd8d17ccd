//! Durable state on a real Apache Kafka: each partition's state goes to its compacted changelog
//! topic and comes back from it, across restarts, kills, input retention shorter than the
//! history, and instances joining and leaving the group.
//! Run with `bash scripts/test.sh` (see tests/common/mod.rs for the broker rule).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use churnguard::config::Config;
use churnguard::engine::{Engine, UserRecord};
use churnguard::event::parse_event;
use churnguard::model::artifact::ModelArtifact;
use churnguard::state::changelog::{topic_name, CLOCK_KEY, END_KEY, PREV_KEY};
use churnguard::state::codec::{self, Shape};
use churnguard::time::{format_rfc3339_ms, DAY_MS, HOUR_MS};
use common::service::*;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Delete every record of `topic`'s partitions `0..partitions`: retention that has removed the
/// whole history.
async fn delete_all_records(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = common::client_config(brokers).create().expect("admin client");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End).expect("tpl");
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let r = admin.delete_records(&tpl, &opts).await.expect("DeleteRecords");
    for e in r.elements() {
        assert!(e.error().is_ok(), "DeleteRecords {}/{}: {:?}", e.topic(), e.partition(), e.error());
    }
}

/// The latest value of every key of the changelog topic (`None`: a tombstone).
async fn changelog(brokers: &str, topic: &str) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let msgs = read_to_end(brokers, topic).await;
    let mut last = BTreeMap::new();
    let mut by_offset: Vec<_> = msgs.iter().map(|m| (m.partition(), m.offset(), m)).collect();
    by_offset.sort_by_key(|(p, o, _)| (*p, *o));
    for (_, _, m) in by_offset {
        last.insert(m.key().unwrap_or(&[]).to_vec(), m.payload().map(<[u8]>::to_vec));
    }
    last
}

/// Each user's feature state in the changelog equals the state an engine computes from the same
/// events in one pass (the windows depend on a user's own events only).
async fn assert_changelog_features_equal_replay(brokers: &str, h: &Harness, t: &Topics, events: &[(String, Vec<u8>)]) {
    let cfg = Config::load(&h.config).expect("the harness config loads");
    let model = ModelArtifact::load(&h.model).expect("model");
    let mut engine = Engine::new(&model, cfg.policy.clone(), cfg.engine.clone());
    for (_, e) in events {
        let ev = parse_event(e, 4096).expect("valid event");
        engine.ingest_decisions(&ev, &mut |_| {});
    }
    let shape = Shape::of(engine.store().layout());
    let log = changelog(brokers, &topic_name(&t.group, &t.events)).await;
    let mut rec = UserRecord::default();
    let mut seen = BTreeSet::new();
    for (k, v) in &log {
        if [PREV_KEY, CLOCK_KEY, END_KEY].contains(&k.as_slice()) {
            continue;
        }
        let Some(v) = v else { continue };
        codec::decode_user(k, v, &shape, &mut rec).expect("a changelog record decodes");
        let want = engine.user_state(&rec.user_id).unwrap_or_else(|| panic!("{} is not in replay", rec.user_id));
        assert_eq!((rec.narrow.as_slice(), rec.wide.as_slice()), (want.narrow, want.wide), "user {}", rec.user_id);
        seen.insert(rec.user_id.clone());
    }
    let mut all = BTreeSet::new();
    engine.for_each_user(|u| {
        all.insert(u.user_id.to_string());
    });
    assert_eq!(seen, all, "the changelog holds every user replay holds");
}

/// Fault tests 3 and 6: after a graceful restart with the input's whole history deleted, every
/// partition's state comes back from the changelog (no input is re-read), and the silent users
/// of a partition with no new input are still flagged.
#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_comes_back_from_the_changelog_when_the_input_history_is_deleted() {
    let brokers = common::brokers();
    let t = Topics::create(&brokers, "changelog", 2).await;
    let h = Harness::new(&brokers, &t, "");
    let first = quiet_partition_history();
    produce_to(&brokers, &t.events, &first).await;
    let child = h.start();
    let all_read = h.wait_consumed(first.len(), Duration::from_secs(60)).await;
    assert!(all_read, "first run did not read everything:\n{}", h.log());
    assert!(stop(child, "-TERM").success());
    delete_all_records(&brokers, &t.events, 2).await;

    let child = h.start();
    let later = quiet_partition_later();
    produce_to(&brokers, &t.events, &later).await;
    let flagged = quiet_users_flagged(&brokers, &t).await;
    let restored_users = h.metric_sum("churnguard_restored_users_total", "");
    let reread = h.metric_sum("churnguard_restored_events_total", "");
    let st = stop(child, "-TERM");
    assert_eq!(flagged.len(), 20, "silent users of the quiet partition flagged: {flagged:?}; log:\n{}", h.log());
    assert!(st.success());
    assert!(restored_users >= 24.0, "both partitions' users came from the changelog ({restored_users})");
    assert_eq!(reread, 0.0, "no input was re-read");
    assert!(h.log().contains("state restored from the changelog"), "{}", h.log());
}

/// Fault test 1: two instances split the partitions; one is killed mid-stream and the survivor
/// takes its partitions over, restoring their state from the changelog. Nothing replay decides
/// is lost, every duplicate repeats an intervention id, and the users' features in the
/// changelog are replay's.
#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_takes_over_a_killed_instances_partitions_from_the_changelog() {
    takeover("takeover", false).await;
}

/// Fault test 1 with exactly once: the same takeover, and a `read_committed` reader of the
/// outputs sees every decision exactly once (the survivor's transactional producers fence the
/// dead instance's open transactions).
#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_a_survivor_takes_over_and_nothing_is_doubled() {
    takeover("eos-takeover", true).await;
}

async fn takeover(name: &str, exactly_once: bool) {
    let brokers = common::brokers();
    let t = Topics::create(&brokers, name, 4).await;
    // Flushing every second, so A's state is in the changelog well before it is killed.
    let a = Harness::new(&brokers, &t, "[state]\nflush_interval = \"1s\"");
    let b = Harness::new(&brokers, &t, "[state]\nflush_interval = \"1s\"");
    if exactly_once {
        a.sink_setting("processing_guarantee", "\"exactly_once\"");
        b.sink_setting("processing_guarantee", "\"exactly_once\"");
    }
    let evs = mixed_stream(120, 50);
    let expected = a.replay(&evs);
    assert!(expected.len() > 50, "the stream must produce interventions ({})", expected.len());
    let producer = common::producer(&brokers);
    // The first part ends between two time steps (`step_slices`): it is read, then every
    // partition waits for the rest, idle, with the idle clock moving event time on, and the
    // rest of a step cut in two would arrive behind it (late, so dropped, unlike in replay).
    let half = step_slices(&evs, 2)[0].end;
    common::produce_all(&producer, &t.events, &evs[..half]).await;
    let child_a = a.start();
    let child_b = b.start();
    let split = wait_for(Duration::from_secs(60), || {
        (a.metric_sum("churnguard_partitions_assigned", "") == 2.0
            && b.metric_sum("churnguard_partitions_assigned", "") == 2.0)
            .then_some(())
    })
    .await;
    assert!(split.is_some(), "the two instances did not split 4 partitions:\n{}\n{}", a.log(), b.log());
    let flushed = wait_for(Duration::from_secs(30), || {
        (a.metric_sum("churnguard_changelog_records_total", "") > 0.0).then_some(())
    })
    .await;
    assert!(flushed.is_some(), "A never flushed its state to the changelog:\n{}", a.log());
    // The rest arrives live; A dies partway through it.
    let p = producer.clone();
    let topic = t.events.clone();
    let rest = evs[half..].to_vec();
    let send = tokio::spawn(async move { common::produce_all(&p, &topic, &rest).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!stop(child_a, "-KILL").success());
    send.await.expect("producing the rest");
    let took_over =
        wait_for(Duration::from_secs(60), || (b.metric_sum("churnguard_partitions_assigned", "") == 4.0).then_some(()))
            .await;
    assert!(took_over.is_some(), "the survivor did not take all partitions:\n{}", b.log());
    // The survivor restores and catches up on a loaded machine at its own pace.
    let until = T0 + 49 * DAY_MS;
    let got = read_decisions(&brokers, &t, &expected, until).await;
    let late = b.metric_sum("churnguard_events_late_total", "");
    assert!(stop(child_b, "-TERM").success(), "{}", b.log());
    eprintln!("{name}: events late in the survivor: {late}");
    assert!(
        b.log().contains("state restored from the changelog"),
        "the survivor restored from the changelog:\n{}",
        b.log()
    );
    if exactly_once {
        assert_nothing_doubled(&got);
    }
    // Features first: when they differ, events were dropped, and lost decisions follow from that.
    assert_changelog_features_equal_replay(&brokers, &b, &t, &evs).await;
    assert_same_decisions_at_least_once(&expected, &got, until);
}

/// Fault test 5: instances join and leave the group repeatedly (gracefully and killed) while the
/// input streams in. Afterwards every user's features in the changelog are replay's, and no
/// decision replay makes is lost.
#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_storm_leaves_every_users_features_as_replay_computes_them() {
    let brokers = common::brokers();
    let t = Topics::create(&brokers, "storm", 4).await;
    let a = Harness::new(&brokers, &t, "");
    let b = Harness::new(&brokers, &t, "");
    let evs = mixed_stream(100, 40);
    let expected = a.replay(&evs);
    let producer = common::producer(&brokers);
    let child_a = a.start();
    const ROUNDS: usize = 4;
    // Slices end between time steps (see `step_slices`).
    let slices = step_slices(&evs, ROUNDS);
    // Events counted late by B in each round, just before it stops: none is late in this stream,
    // and a count says a partition was taken for idle before its backlog was read.
    let mut late_b = Vec::new();
    for (r, part) in slices.iter().enumerate() {
        let child_b = b.start();
        common::produce_all(&producer, &t.events, &evs[part.clone()]).await;
        // B joins (a rebalance), works a little, and leaves (another).
        let joined = wait_for(Duration::from_secs(60), || {
            (b.metric_sum("churnguard_partitions_assigned", "") > 0.0).then_some(())
        })
        .await;
        assert!(joined.is_some(), "round {r}: B got no partitions:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(800)).await;
        let signal = if r % 2 == 0 { "-TERM" } else { "-KILL" };
        late_b.push(b.metric_sum("churnguard_events_late_total", ""));
        stop(child_b, signal);
    }
    let all =
        wait_for(Duration::from_secs(90), || (a.metric_sum("churnguard_partitions_assigned", "") == 4.0).then_some(()))
            .await;
    assert!(all.is_some(), "A holds every partition after the storm:\n{}", a.log());
    // A restores what B left and catches up at its own pace.
    let until = T0 + 39 * DAY_MS;
    let got = read_decisions(&brokers, &t, &expected, until).await;
    let late_a = a.metric_sum("churnguard_events_late_total", "");
    assert!(stop(child_a, "-TERM").success(), "{}", a.log());
    // A loss here was seen in CI (silence decisions of days 25 to 30, never published) and not
    // reproduced locally: say what the service decided for those users and what both instances
    // warned of, then check the features first, which tells dropped events (features differ)
    // from lost decisions (features equal).
    let cut = format_rfc3339_ms(until);
    let have: BTreeSet<&str> = got.iter().map(|i| i.intervention_id.as_str()).collect();
    let lost: BTreeSet<&str> = expected
        .iter()
        .filter(|i| i.event_time <= cut && !have.contains(i.intervention_id.as_str()))
        .map(|i| i.user_id.as_str())
        .collect();
    eprintln!("storm: events late: A {late_a}, B by round {late_b:?}");
    if !lost.is_empty() {
        eprintln!("users with lost decisions: {lost:?}\n{}", lost_report(&got, &lost, &[("A", &a), ("B", &b)]));
    }
    assert_changelog_features_equal_replay(&brokers, &a, &t, &evs).await;
    assert_same_decisions_at_least_once(&expected, &got, until);
}

/// A partition taken away and given back to the same instance while its new owner hung, with a
/// backlog that owner never read, on a broker slow to answer fetches: librdkafka still held the
/// partition's end from before the revoke, so the returning worker took itself for caught up,
/// went idle before its first fetch, moved its clock to the other partition's, and counted the
/// backlog late (the storm test's CI failures fit this). It must read the backlog first: nothing
/// late, every user's features as replay computes them.
#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_given_back_with_a_backlog_is_read_before_it_goes_idle_on_a_slow_broker() {
    let brokers = common::brokers();
    let t = Topics::create(&brokers, "giveback", 2).await;
    let a = Harness::new(&brokers, &t, "");
    let b = Harness::new(&brokers, &t, "");
    for h in [&a, &b] {
        // A first fetch slower than the idle timeout is the case at hand: the broker holds every
        // fetch for a second (it waits for more bytes than there are), against 100 ms.
        let text = std::fs::read_to_string(&h.config).expect("config");
        std::fs::write(&h.config, text.replacen("idle_timeout = \"1s\"", "idle_timeout = \"100ms\"", 1))
            .expect("config");
        h.kafka_setting("fetch.min.bytes", "50000000");
        h.kafka_setting("fetch.wait.max.ms", "1000");
    }
    // Ten users per partition, an event every four hours each, from `from` to `to` (days).
    let span = |p: i32, from: i64, to: i64| -> Vec<(i32, String, Vec<u8>)> {
        let mut evs = Vec::new();
        for h in (from * 24..to * 24).step_by(4) {
            for u in 0..10 {
                let (k, v) = event(&format!("p{p}u{u}"), "login", T0 + h * HOUR_MS + u);
                evs.push((p, k, v));
            }
        }
        evs
    };
    let mut first = span(0, 0, 5);
    first.extend(span(1, 0, 5));
    produce_to(&brokers, &t.events, &first).await;
    let child_a = a.start();
    let consumed = |h: &Harness, n: usize| h.metric_sum("churnguard_events_consumed_total", "") == n as f64;
    assert!(
        wait_for(Duration::from_secs(60), || consumed(&a, first.len()).then_some(())).await.is_some(),
        "{}",
        a.log()
    );
    // B joins and takes one partition; which one, its watermark gauge says once it is restored.
    let child_b = b.start();
    let theirs = wait_for(Duration::from_secs(60), || {
        let m = b.metrics();
        let line = m.lines().find(|l| l.starts_with("churnguard_watermark_seconds{"))?;
        if line.contains("partition=\"0\"") {
            Some(0)
        } else {
            line.contains("partition=\"1\"").then_some(1)
        }
    })
    .await
    .unwrap_or_else(|| panic!("B restored no partition:\n{}", b.log()));
    let ours = 1 - theirs;
    // B hangs; its partition gets ten days of backlog, A's own twenty.
    signal(&child_b, "-STOP");
    let backlog = span(theirs, 5, 15);
    let ahead = span(ours, 5, 25);
    produce_to(&brokers, &t.events, &[backlog.clone(), ahead.clone()].concat()).await;
    // The group drops B after its session timeout and gives its partition back to A.
    let total = first.len() + backlog.len() + ahead.len();
    let caught_up = wait_for(Duration::from_secs(90), || consumed(&a, total).then_some(())).await;
    let late = a.metric_sum("churnguard_events_late_total", "");
    stop(child_b, "-KILL");
    assert!(caught_up.is_some(), "A did not read everything back:\n{}", a.log());
    assert!(stop(child_a, "-TERM").success(), "{}", a.log());
    assert_eq!(late, 0.0, "events counted late:\n{}", a.log());
    // Replay reads one stream in time order.
    let mut all: Vec<(String, Vec<u8>)> =
        [first, backlog, ahead].concat().into_iter().map(|(_, k, v)| (k, v)).collect();
    all.sort_by_key(|(_, v)| parse_event(v, 4096).expect("valid event").ts);
    assert_changelog_features_equal_replay(&brokers, &a, &t, &all).await;
}

/// Fault test 2 in exactly-once mode: ten SIGKILLs at random points while catching up and live.
/// A `read_committed` reader of the outputs sees every decision replay makes, and none twice.
#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_kills_lose_nothing_and_double_nothing() {
    let brokers = common::brokers();
    let t = Topics::create(&brokers, "eos", 3).await;
    let h = Harness::new(&brokers, &t, "");
    h.sink_setting("processing_guarantee", "\"exactly_once\"");
    let evs = mixed_stream(120, 50);
    let expected = h.replay(&evs);
    assert!(expected.len() > 50, "the stream must produce interventions ({})", expected.len());
    // Transactions need time to commit between kills: each run lives at least half a second.
    kill_loop(&brokers, &h, &t, &evs, 10, 500, 2000).await;
    let child = h.start();
    let got = read_decisions(&brokers, &t, &expected, T0 + 49 * DAY_MS).await;
    let committed = h.metric_sum("churnguard_transactions_total", "result=\"committed\"");
    assert!(stop(child, "-TERM").success(), "{}", h.log());
    assert!(committed > 0.0, "transactions were committed:\n{}", h.log());
    assert_nothing_doubled(&got);
    let have: BTreeSet<&str> = got.iter().map(|i| i.intervention_id.as_str()).collect();
    let until = format_rfc3339_ms(T0 + 49 * DAY_MS);
    let missing: Vec<String> = expected
        .iter()
        .filter(|i| i.event_time <= until && !have.contains(i.intervention_id.as_str()))
        .map(|i| format!("{} {} {} {:?} control={}", i.user_id, i.event_time, i.tier, i.trigger, i.control))
        .collect();
    let lost_users: BTreeSet<&str> = missing.iter().filter_map(|m| m.split(' ').next()).collect();
    assert!(missing.is_empty(), "lost: {missing:#?}\n{}", lost_report(&got, &lost_users, &[("the service", &h)]));
    assert_same_decisions_at_least_once(&expected, &got, T0 + 49 * DAY_MS);
}

/// Input keyed by something other than the user id, with `source.keys = "repartition"`: every
/// event is re-keyed by its user id through the internal repartition topic, so each user's state
/// lives in one place. The decisions are replay's, and so is every user's feature state.
#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_input_is_repartitioned_by_user_id_and_decides_as_replay() {
    let brokers = common::brokers();
    let t = Topics::create(&brokers, "repart", 3).await;
    let h = Harness::with(&brokers, &t, "keys = \"repartition\"", "");
    // Events reach the repartition topic from three input partitions at their own pace: a day of
    // lateness absorbs the reordering of the half-day slices produced below.
    h.lateness("1d");
    let evs = mixed_stream(90, 40);
    let expected = h.replay(&evs);
    assert!(expected.len() > 30, "the stream must produce interventions ({})", expected.len());
    let child = h.start();
    let joined =
        wait_for(Duration::from_secs(60), || (h.metric_sum("churnguard_partitions_assigned", "") == 6.0).then_some(()))
            .await;
    assert!(joined.is_some(), "3 input and 3 repartition partitions assigned:\n{}", h.log());
    let mut sent = 0usize;
    for (i, part) in step_slices(&evs, 80).into_iter().enumerate() {
        // Round-robin over partitions, with keys that are not user ids.
        let items: Vec<(i32, String, Vec<u8>)> = evs[part]
            .iter()
            .enumerate()
            .map(|(j, (_, v))| (((i + j) % 3) as i32, format!("k{}", (i + j) % 7), v.clone()))
            .collect();
        sent += items.len();
        produce_to(&brokers, &t.events, &items).await;
        let n = sent as f64;
        let forwarded = wait_for(Duration::from_secs(30), || {
            (h.metric_sum("churnguard_repartitioned_total", "") >= n).then_some(())
        })
        .await;
        assert!(forwarded.is_some(), "slice {i} was not re-keyed:\n{}", h.log());
    }
    // Replay decides to the end of the file; the service's watermark trails its newest event by
    // the day of lateness.
    let until = T0 + 38 * DAY_MS;
    let got = read_decisions(&brokers, &t, &expected, until).await;
    let mismatches = h.metric_sum("churnguard_key_mismatches_total", "");
    assert!(stop(child, "-TERM").success(), "{}", h.log());
    assert_eq!(mismatches, 0.0, "the scoring partitions read events keyed by user id");
    assert_same_decisions_at_least_once(&expected, &got, until);
    let scored = Topics {
        events: format!("{}-repartition", t.group),
        interventions: t.interventions.clone(),
        control: t.control.clone(),
        dlq: t.dlq.clone(),
        group: t.group.clone(),
    };
    assert_changelog_features_equal_replay(&brokers, &h, &scored, &evs).await;
}

/// With the input trusted to be keyed by user id (the default), a message keyed otherwise is
/// processed and counted.
#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keyed_by_something_else_are_counted() {
    let brokers = common::brokers();
    let t = Topics::create(&brokers, "keys", 1).await;
    let h = Harness::new(&brokers, &t, "");
    let items: Vec<(i32, String, Vec<u8>)> = (0..10)
        .map(|i| {
            let (user, v) = event(&format!("u{i}"), "login", T0 + i * 1000);
            (0, if i < 4 { user } else { format!("not-{user}") }, v)
        })
        .collect();
    produce_to(&brokers, &t.events, &items).await;
    let child = h.start();
    let counted = wait_for(Duration::from_secs(60), || {
        (h.metric_sum("churnguard_events_consumed_total", "") == 10.0
            && h.metric_sum("churnguard_key_mismatches_total", "") == 6.0)
            .then_some(())
    })
    .await;
    assert!(counted.is_some(), "6 mismatched keys counted:\n{}", h.metrics());
    assert!(stop(child, "-TERM").success());
}
