//! Helpers shared by the Kafka integration tests (`mod common;` in a test file).
//!
//! # The rule for tests that need a Kafka broker
//!
//! Such tests talk to a real Apache Kafka broker, whose address they read from
//! `CHURNGUARD_KAFKA_BROKERS` (e.g. `127.0.0.1:40123`). `bash scripts/test.sh`
//! starts one (Apache Kafka 4.x, single-node KRaft on loopback; see
//! `scripts/kafka.sh`), sets the variable and runs the tests with `--include-ignored`.
//!
//! * Every such test is marked
//!   `#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]`, so a plain
//!   `cargo test` reports it as ignored, honestly, instead of running it.
//! * When it does run (`--include-ignored`, `--ignored`) and
//!   `CHURNGUARD_KAFKA_BROKERS` is unset, it must **FAIL** with a message that says
//!   how to run it: [`brokers`] panics. It never passes without a broker.
//!
//! So every Kafka test starts with
//!
//! ```ignore
//! #[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn a_kafka_test() {
//!     let brokers = common::brokers();
//! ```
//!
//! `CHURNGUARD_KAFKA_PID` (also set by `scripts/test.sh`) is the broker's JVM:
//! `kill -STOP` freezes it to simulate an outage, `kill -CONT` resumes it.
//!
//! # The broker
//!
//! Apache Kafka 4.x (`scripts/kafka/pom.xml`) with one node: high watermarks,
//! consumer lag, log compaction and transactions work as in production. Settings
//! that differ from Kafka's defaults (see `scripts/kafka.sh`):
//! `group.initial.rebalance.delay.ms=0` (the first group join is not held back
//! 3 s), one partition and one replica for the internal topics, and
//! `auto.create.topics.enable=true`. Consumers here use `session.timeout.ms=6000`
//! (the broker's minimum, `group.min.session.timeout.ms`, is 6000).
//!
//! The broker is shared by all tests of a run, which run in parallel: give every
//! test its own topics and group ids ([`unique_topic`], [`unique_group`]).
#![allow(dead_code)] // each test binary uses its own subset of these helpers

pub mod service;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Where the broker is: `host:port[,host:port...]`.
pub const BROKERS_ENV: &str = "CHURNGUARD_KAFKA_BROKERS";
/// The pid of the broker's JVM (for `kill -STOP` / `kill -CONT`), set by `scripts/test.sh`.
pub const BROKER_PID_ENV: &str = "CHURNGUARD_KAFKA_PID";

/// The session timeout every consumer made here uses (ms).
pub const SESSION_TIMEOUT_MS: &str = "6000";

fn missing_message() -> String {
    format!(
        "{BROKERS_ENV} is not set: this test needs a real Kafka broker.\n\
         Run the tests with `bash scripts/test.sh` (it starts Apache Kafka on loopback, \
         sets {BROKERS_ENV} and passes --include-ignored), or start one yourself:\n    \
         bash scripts/kafka.sh start && eval \"$(bash scripts/kafka.sh env)\"\n    \
         cargo test --test '*' -- --include-ignored   # integration tests only"
    )
}

/// The broker list for a Kafka test, following the rule in the module docs:
/// panics with instructions when `CHURNGUARD_KAFKA_BROKERS` is unset or empty.
#[track_caller]
pub fn brokers() -> String {
    match std::env::var(BROKERS_ENV) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => panic!("{}", missing_message()),
    }
}

fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher(); // randomly keyed per call
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    format!("{:016x}", h.finish())
}

/// A topic name no other test (in this run or an earlier one against the same
/// broker) uses: `<prefix>-<16 hex digits>`. Valid Kafka topic characters only.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", random_suffix())
}

/// A consumer-group id no other test uses.
pub fn unique_group(prefix: &str) -> String {
    format!("{prefix}-group-{}", random_suffix())
}

/// Every topic's name on the broker.
pub fn topic_names(brokers: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = client_config(brokers).create().expect("a metadata client");
    let md = c.fetch_metadata(None, std::time::Duration::from_secs(10)).expect("broker metadata");
    md.topics().iter().map(|t| t.name().to_string()).collect()
}

/// Base client config: the brokers plus settings that keep test failures quick
/// and the librdkafka log readable.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers).set("socket.timeout.ms", "10000").set("log_level", "4"); // warnings and worse
    cfg
}

/// Creates `name` with `partitions` partitions (replication 1) and waits until
/// the broker's metadata lists it with all its partitions. Panics after 30 s.
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers).create().expect("creating the Kafka admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin.create_topics([&topic], &opts).await.unwrap_or_else(|e| panic!("CreateTopics {name}: {e}"));
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => panic!("CreateTopics {t}: {code}"),
        }
    }

    // Wait until metadata shows the topic with every partition (fetch_metadata
    // blocks, so poll from a blocking thread).
    let cfg = client_config(brokers);
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = cfg.create().expect("creating a metadata client");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match probe.fetch_metadata(Some(&name), Duration::from_secs(5)) {
                Ok(md) => {
                    if let Some(t) = md.topics().iter().find(|t| t.name() == name) {
                        if t.error().is_none() && t.partitions().len() == partitions as usize {
                            return;
                        }
                        last = format!("error {:?}, {} of {partitions} partitions", t.error(), t.partitions().len());
                    } else {
                        last = "topic not listed".into();
                    }
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("topic {name} not in metadata after 30 s: {last}");
    })
    .await
    .expect("metadata wait task");
}

/// A producer that waits for the broker's acknowledgement of every message.
pub fn producer(brokers: &str) -> FutureProducer {
    client_config(brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "15000")
        .create()
        .expect("creating the Kafka producer")
}

/// Produces every `(key, payload)` to `topic` (partition chosen by key hash;
/// keys and payloads: `&str`, `String`, `&[u8]`, `Vec<u8>`, ...),
/// awaiting each delivery report. Returns `(partition, offset)` per item, in order.
/// All messages are enqueued before the first wait, so they batch.
pub async fn produce_all<K, P>(producer: &FutureProducer, topic: &str, items: &[(K, P)]) -> Vec<(i32, i64)>
where
    K: AsRef<[u8]>,
    P: AsRef<[u8]>,
{
    let mut pending = Vec::with_capacity(items.len());
    for (key, payload) in items {
        let mut record = FutureRecord::to(topic).key(key.as_ref()).payload(payload.as_ref());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((e, _)) => panic!("enqueueing a message for {topic}: {e}"),
            }
        }
    }
    let mut out = Vec::with_capacity(pending.len());
    for delivery in pending {
        match delivery.await {
            Ok(Ok(d)) => out.push((d.partition, d.offset)),
            Ok(Err((e, _))) => panic!("delivery to {topic} failed: {e}"),
            Err(_) => panic!("delivery to {topic}: producer dropped the report"),
        }
    }
    out
}

/// A group consumer with the test settings (`auto.offset.reset=earliest`,
/// `session.timeout.ms=6000`, no auto commit), not yet subscribed. `extra`
/// overrides or adds settings.
pub fn consumer(brokers: &str, group: &str, extra: &[(&str, &str)]) -> StreamConsumer {
    let mut cfg = client_config(brokers);
    cfg.set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("heartbeat.interval.ms", "1000")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    cfg.create().expect("creating the Kafka consumer")
}

/// Receives up to `n` messages from `consumer` (already subscribed or assigned),
/// giving up after `timeout` in all. Returns what arrived, detached.
pub async fn recv_n(consumer: &StreamConsumer, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break, // overall timeout
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("consumer error after {} messages: {e}", out.len()),
        }
    }
    out
}

/// Joins consumer group `group` on `topic` from the earliest offset and returns
/// the first `n` messages. Panics if fewer than `n` arrive within `timeout`
/// (which must cover the group join, a few seconds). Commits nothing.
pub async fn consume_n(brokers: &str, topic: &str, group: &str, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let c = consumer(brokers, group, &[]);
    c.subscribe(&[topic]).unwrap_or_else(|e| panic!("subscribing to {topic}: {e}"));
    let started = Instant::now();
    let got = recv_n(&c, n, timeout).await;
    assert_eq!(
        got.len(),
        n,
        "got {} of {n} messages from {topic} (group {group}) in {:?}",
        got.len(),
        started.elapsed()
    );
    got
}
