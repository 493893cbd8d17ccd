//! Smoke tests against a real Kafka-protocol broker (tansu on loopback, started by
//! `bash scripts/test.sh`): the broker features churnguard relies on — keyed
//! partitioning and per-key order, consumer groups, committed offsets, headers
//! and create timestamps. They need `CHURNGUARD_KAFKA_BROKERS`; see the rule at
//! the top of `tests/common/mod.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, Timestamp, TopicPartitionList};

/// Enough for a group join (~3 s on tansu with a 6 s session timeout) plus the data.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

fn key_str(m: &OwnedMessage) -> String {
    String::from_utf8(m.key().expect("message has a key").to_vec()).expect("utf-8 key")
}

fn payload_str(m: &OwnedMessage) -> String {
    String::from_utf8(m.payload().expect("message has a payload").to_vec()).expect("utf-8 payload")
}

/// (a) 100 keyed messages through a 3-partition topic and back via a consumer group:
/// nothing lost or duplicated, each key on one partition, per-key order kept, and
/// every message where the producer's delivery report said it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_round_trip_through_a_consumer_group() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::unique_topic("smoke-keyed");
    common::create_topic(&brokers, &topic, 3).await;

    // 25 customers, 4 events each, interleaved: customer-07 gets seq 7, 32, 57, 82.
    let items: Vec<(String, String)> =
        (0..100).map(|i| (format!("customer-{:02}", i % 25), format!("event-{i:03}"))).collect();
    let producer = common::producer(&brokers);
    let reports = common::produce_all(&producer, &topic, &items).await;
    let sent: HashMap<String, (i32, i64)> =
        items.iter().zip(&reports).map(|((_, payload), &at)| (payload.clone(), at)).collect();

    let t0 = Instant::now();
    let got = common::consume_n(&brokers, &topic, &common::unique_group("smoke-keyed"), 100, RECV_TIMEOUT).await;
    eprintln!("consumed 100 messages in {:?} (including the group join)", t0.elapsed());

    let payloads: BTreeSet<String> = got.iter().map(payload_str).collect();
    assert_eq!(payloads.len(), 100, "duplicates among the 100 consumed messages");
    let expected: BTreeSet<String> = items.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(payloads, expected);

    let mut partition_of_key: BTreeMap<String, i32> = BTreeMap::new();
    let mut last_seq_of_key: HashMap<String, usize> = HashMap::new();
    let mut last_offset_of_partition: HashMap<i32, i64> = HashMap::new();
    for m in &got {
        let (key, payload) = (key_str(m), payload_str(m));
        assert_eq!(m.topic(), topic);
        assert_eq!(
            (m.partition(), m.offset()),
            sent[&payload],
            "{payload} consumed at another place than its delivery report said"
        );
        let p = *partition_of_key.entry(key.clone()).or_insert(m.partition());
        assert_eq!(p, m.partition(), "{key} seen on partitions {p} and {}", m.partition());
        let seq: usize = payload["event-".len()..].parse().unwrap();
        if let Some(prev) = last_seq_of_key.insert(key.clone(), seq) {
            assert!(prev < seq, "{key}: event {seq} consumed after event {prev}");
        }
        if let Some(prev) = last_offset_of_partition.insert(m.partition(), m.offset()) {
            assert!(prev < m.offset(), "partition {}: offset {} after {prev}", m.partition(), m.offset());
        }
    }
    let used: BTreeSet<i32> = partition_of_key.values().copied().collect();
    assert_eq!(used, BTreeSet::from([0, 1, 2]), "25 keys should hash onto all 3 partitions");
}

/// (b) A consumer commits after 10 of 20 messages and leaves; a new consumer in
/// the same group resumes at offset 10: nothing committed is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_group_member_resumes_after_the_committed_offset() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::unique_topic("smoke-resume");
    let group = common::unique_group("smoke-resume");
    common::create_topic(&brokers, &topic, 1).await;
    let items: Vec<(String, String)> = (0..20).map(|i| (format!("k{i:02}"), format!("m{i:02}"))).collect();
    let producer = common::producer(&brokers);
    common::produce_all(&producer, &topic, &items).await;

    {
        let first = common::consumer(&brokers, &group, &[]);
        first.subscribe(&[&topic]).unwrap();
        let t0 = Instant::now();
        let got = common::recv_n(&first, 10, RECV_TIMEOUT).await;
        eprintln!("first member: 10 messages in {:?} (including the group join)", t0.elapsed());
        let offsets: Vec<i64> = got.iter().map(|m| m.offset()).collect();
        assert_eq!(offsets, (0..10).collect::<Vec<_>>());

        // Commit "next to read = 10" explicitly (the consumer may have fetched more).
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(10)).unwrap();
        first.commit(&tpl, CommitMode::Sync).expect("sync commit");

        let committed =
            first.committed_offsets(tpl.clone(), Duration::from_secs(10)).expect("fetching committed offsets");
        let at = committed.find_partition(&topic, 0).expect("partition 0 in committed list");
        assert_eq!(at.offset(), Offset::Offset(10), "broker's committed offset");
    } // dropped: closes and leaves the group

    let second = common::consumer(&brokers, &group, &[]);
    second.subscribe(&[&topic]).unwrap();
    let t0 = Instant::now();
    let got = common::recv_n(&second, 10, RECV_TIMEOUT).await;
    eprintln!("second member: 10 messages in {:?} (including the group join)", t0.elapsed());
    let offsets: Vec<i64> = got.iter().map(|m| m.offset()).collect();
    assert_eq!(offsets, (10..20).collect::<Vec<_>>(), "resumed at the wrong place");
    let keys: Vec<String> = got.iter().map(key_str).collect();
    assert_eq!(keys, (10..20).map(|i| format!("k{i:02}")).collect::<Vec<_>>());
    let extra = common::recv_n(&second, 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "unexpected redelivery: offset {}", extra[0].offset());
}

/// (b, across partitions) A member reads everything on 3 partitions, commits its
/// position and leaves; after 30 more messages a new member of the group gets
/// exactly the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_positions_hold_across_partitions() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::unique_topic("smoke-resume3");
    let group = common::unique_group("smoke-resume3");
    common::create_topic(&brokers, &topic, 3).await;
    let producer = common::producer(&brokers);
    let batch = |from: usize| -> Vec<(String, String)> {
        (from..from + 30).map(|i| (format!("c{}", i % 7), format!("b{i:03}"))).collect()
    };
    common::produce_all(&producer, &topic, &batch(0)).await;

    {
        let first = common::consumer(&brokers, &group, &[]);
        first.subscribe(&[&topic]).unwrap();
        let got = common::recv_n(&first, 30, RECV_TIMEOUT).await;
        assert_eq!(got.len(), 30);
        first.commit_consumer_state(CommitMode::Sync).expect("sync commit of the position");
    }

    common::produce_all(&producer, &topic, &batch(30)).await;
    let second = common::consumer(&brokers, &group, &[]);
    second.subscribe(&[&topic]).unwrap();
    let got = common::recv_n(&second, 30, RECV_TIMEOUT).await;
    let payloads: BTreeSet<String> = got.iter().map(payload_str).collect();
    let expected: BTreeSet<String> = batch(30).into_iter().map(|(_, p)| p).collect();
    assert_eq!(payloads, expected, "the second member should get exactly the second batch");
    let extra = common::recv_n(&second, 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "unexpected redelivery of {}", payload_str(&extra[0]));
}

/// (c) Headers round-trip in order, with binary and null values and a repeated
/// key (the dead-letter topic carries its reason and source in headers); a
/// message without headers stays without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::unique_topic("smoke-headers");
    common::create_topic(&brokers, &topic, 1).await;
    let binary: &[u8] = &[0x00, 0xff, 0x01, 0x80];
    let sent: Vec<(&str, Option<&[u8]>)> = vec![
        ("x-dlq-reason", Some(b"parse_error: expected value at line 1 column 7")),
        ("x-dlq-source-topic", Some(b"churn-events")),
        ("x-dlq-source-offset", Some(b"42")),
        ("x-binary", Some(binary)),
        ("x-null", None),
        ("x-repeated", Some(b"1")),
        ("x-repeated", Some(b"2")),
        ("x-empty", Some(b"")),
    ];
    let mut headers = OwnedHeaders::new();
    for (key, value) in &sent {
        headers = headers.insert(Header { key, value: *value });
    }
    let producer = common::producer(&brokers);
    producer
        .send(FutureRecord::to(&topic).key("with").payload("{not json").headers(headers), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("delivering the message with headers");
    producer
        .send(FutureRecord::to(&topic).key("without").payload("plain"), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("delivering the message without headers");

    let got = common::consume_n(&brokers, &topic, &common::unique_group("smoke-headers"), 2, RECV_TIMEOUT).await;
    let with = &got[0];
    assert_eq!(key_str(with), "with");
    assert_eq!(payload_str(with), "{not json");
    let hs = with.headers().expect("headers present");
    let received: Vec<(String, Option<Vec<u8>>)> =
        hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect();
    let expected: Vec<(String, Option<Vec<u8>>)> =
        sent.iter().map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec))).collect();
    assert_eq!(received, expected);

    let without = &got[1];
    assert_eq!(key_str(without), "without");
    assert!(without.headers().is_none_or(|h| h.count() == 0), "headers appeared on a message sent without any");
}

/// Producer-set create timestamps come back unchanged (event time may be carried
/// in the record timestamp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_timestamps_round_trip() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::unique_topic("smoke-ts");
    common::create_topic(&brokers, &topic, 1).await;
    let producer = common::producer(&brokers);
    // Out of order on purpose: the broker must not rewrite or sort them.
    let stamps: [i64; 3] = [1_767_225_600_123, 1_767_225_000_000, 1_767_312_000_999];
    for (i, ts) in stamps.iter().enumerate() {
        producer
            .send(FutureRecord::to(&topic).key("k").payload(&format!("p{i}")).timestamp(*ts), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("delivering a timestamped message");
    }
    let got = common::consume_n(&brokers, &topic, &common::unique_group("smoke-ts"), 3, RECV_TIMEOUT).await;
    let seen: Vec<Timestamp> = got.iter().map(|m| m.timestamp()).collect();
    let want: Vec<Timestamp> = stamps.iter().map(|&t| Timestamp::CreateTime(t)).collect();
    assert_eq!(seen, want);
}
