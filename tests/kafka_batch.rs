//! Reading a partition a batch at a time (`source::batch`), on the real broker: every record
//! comes back once, in order, with its key and payload (tombstones included), batches respect
//! their bound, the end of the partition is reported, and a partition's feed wakes its task
//! when a record arrives after it started waiting, even after an earlier feed of the same
//! partition was dropped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use churnguard::source::batch::{PartitionFeed, QueueBatch};
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// Produce `(key, payload)` to partition 0 of `topic`, in order; `None` is a tombstone.
async fn produce(producer: &FutureProducer, topic: &str, items: &[(String, Option<String>)]) {
    for (k, v) in items {
        let mut r = FutureRecord::to(topic).key(k.as_bytes()).partition(0);
        if let Some(v) = v {
            r = r.payload(v.as_bytes());
        }
        producer.send(r, Duration::from_secs(15)).await.unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }
}

fn records(n: usize) -> Vec<(String, Option<String>)> {
    (0..n).map(|i| (format!("u{i}"), (i % 7 != 3).then(|| format!("value of {i}")))).collect()
}

fn partition_0(topic: &str) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("partition list");
    tpl
}

#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_batch_returns_every_record_in_order_within_its_bound_then_the_end() {
    let brokers = common::brokers();
    let topic = common::unique_topic("batch-read");
    common::create_topic(&brokers, &topic, 1).await;
    let sent = records(1_500);
    produce(&common::producer(&brokers), &topic, &sent).await;

    let settings = churnguard::pipeline::restore::consumer_settings(&common::client_config(&brokers), "batch-read");
    let read = tokio::task::spawn_blocking(move || {
        let c = churnguard::pipeline::restore::restore_consumer(&settings).expect("consumer");
        c.assign(&partition_0(&topic)).expect("assign");
        let mut batch = QueueBatch::consumer_queue(&c, 100).expect("the consumer queue");
        let (mut got, mut sizes, mut eof) = (Vec::new(), Vec::new(), false);
        let mut empty_fills = 0;
        while !eof && empty_fills < 150 {
            // Every third fill takes at most 3: the bound of a single fill holds too.
            let bound = if sizes.len() % 3 == 2 { 3 } else { 100 };
            let n = batch.fill_up_to(bound, Duration::from_millis(200));
            if n == 0 {
                empty_fills += 1;
                continue;
            }
            assert!(n <= bound, "a fill bounded to {bound} took {n}");
            sizes.push(n);
            for m in batch.iter() {
                match m.error() {
                    None => got.push((
                        m.offset(),
                        String::from_utf8(m.key().expect("a key").to_vec()).expect("utf-8 key"),
                        m.payload().map(|p| String::from_utf8(p.to_vec()).expect("utf-8 payload")),
                    )),
                    Some(RDKafkaErrorCode::PartitionEOF) => eof = true,
                    Some(e) => panic!("read error {e:?}"),
                }
            }
        }
        (got, sizes, eof)
    })
    .await
    .expect("reader thread");
    let (got, sizes, eof) = read;
    assert!(eof, "the end of the partition was reported");
    let offsets: Vec<i64> = got.iter().map(|g| g.0).collect();
    assert_eq!(offsets, (0..sent.len() as i64).collect::<Vec<_>>(), "every offset once, in order");
    let kv: Vec<(String, Option<String>)> = got.into_iter().map(|(_, k, v)| (k, v)).collect();
    assert_eq!(kv, sent, "keys and payloads as produced, tombstones as no payload");
    assert!(sizes.iter().any(|&n| n > 1), "records were taken many at a time: {sizes:?}");
}

#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_feed_wakes_its_task_when_a_record_arrives_after_it_waits_even_after_an_earlier_feed_went() {
    let brokers = common::brokers();
    let topic = common::unique_topic("batch-feed");
    common::create_topic(&brokers, &topic, 1).await;
    let producer = common::producer(&brokers);
    let first = records(20);
    produce(&producer, &topic, &first).await;

    let consumer = Arc::new(common::consumer(&brokers, &common::unique_group("batch-feed"), &[]));
    consumer.assign(&partition_0(&topic)).expect("assign");
    // The partition's feed of an earlier assignment, dropped after the next one is made (as a
    // revoked partition's worker may end after the partition is assigned again): the new feed
    // must still be woken.
    let earlier = PartitionFeed::split(&consumer, &topic, 0, 8).expect("the partition's queue");
    let mut feed = PartitionFeed::split(&consumer, &topic, 0, 8).expect("the partition's queue");
    drop(earlier);

    // What was there before: taken in batches of at most 8, in order.
    let mut offsets = Vec::new();
    while offsets.len() < first.len() {
        let n = tokio::time::timeout(Duration::from_secs(30), feed.next(8))
            .await
            .unwrap_or_else(|_| panic!("no record after {} of {}", offsets.len(), first.len()));
        assert!((1..=8).contains(&n), "a batch of {n}");
        offsets.extend(feed.iter().map(|m| m.offset()));
    }
    assert_eq!(offsets, (0..first.len() as i64).collect::<Vec<_>>());

    // Now the queue is empty and the feed waits: only librdkafka's callback can wake it.
    let late = vec![("late".to_string(), Some("after the wait began".to_string()))];
    let n = {
        let next = feed.next(8);
        tokio::pin!(next);
        assert!(futures::poll!(next.as_mut()).is_pending(), "nothing left to take before the next record");
        produce(&producer, &topic, &late).await;
        tokio::time::timeout(Duration::from_secs(30), next).await.expect("the feed was woken by the new record")
    };
    assert_eq!(n, 1);
    let m = feed.iter().next().expect("the record");
    assert_eq!((m.offset(), m.key(), m.payload()), (20, Some(&b"late"[..]), Some(&b"after the wait began"[..])));
}
