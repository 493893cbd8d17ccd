//! Rebuild a newly assigned partition's state before it is processed.
//!
//! The partition is re-read from its first retained offset up to the group's committed offset
//! with outputs suppressed: decisions are deterministic, so the rebuilt state and cooldown memory
//! are those the previous owner had. It runs on a blocking thread with a consumer of its own
//! (assigned, not subscribed), so the group member keeps polling and heartbeating however long it
//! takes, and it stops as soon as the partition is revoked or the service shuts down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::SourceConfig;
use crate::engine::Engine;
use crate::event::{parse_event, FutureGuard};
use crate::source::batch::QueueBatch;
use crate::source::kafka::{kafka_error_code, GroupConsumer, PartitionId};
use crate::state::pipelined::{ApplierGone, BatchWriter};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cancelled")]
    Cancelled,
    #[error("broker error {0}")]
    Kafka(String),
    #[error("no progress for {0:?} (broker unreachable?)")]
    Stalled(Duration),
    #[error("changelog restore: {0}")]
    Applier(#[from] ApplierGone),
}

impl From<KafkaError> for RestoreError {
    fn from(e: KafkaError) -> Self {
        RestoreError::Kafka(kafka_error_code(&e))
    }
}

/// The offsets to re-read: `[from, until)`; records the broker no longer holds are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreRange {
    pub from: i64,
    pub until: i64,
}

/// What to re-read for `partition`: from its first retained record up to the group's committed
/// offset (the end of the partition, if earlier, ends it too). `None` when nothing was committed:
/// consumption starts per `auto.offset.reset` and the live stream itself builds the state.
pub fn plan(
    consumer: &GroupConsumer,
    partition: &PartitionId,
    timeout: Duration,
) -> Result<Option<RestoreRange>, RestoreError> {
    let committed = consumer.committed_offsets(partition.list(), timeout)?;
    match committed.find_partition(partition.topic(), partition.partition()).map(|e| e.offset()) {
        Some(Offset::Offset(until)) if until > 0 => Ok(Some(RestoreRange { from: 0, until })),
        _ => Ok(None),
    }
}

/// The restore consumers' context. Reaching a partition's end (asked for with
/// `enable.partition.eof`: it ends a read whose last offsets hold no record, such as a
/// transaction marker or records compacted away) comes to the poll, where the readers handle
/// it, and to the client-wide error callback too, which rust-rdkafka's default context logs at
/// ERROR as a "Global error" (rust-rdkafka issue #820). That report alone is dropped here;
/// every other error is logged as the default context logs it.
pub struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_eof(&error) {
            tracing::error!(target: "rdkafka::client", "librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// The end of a partition, as the poll or the error callback reports it.
fn is_partition_eof(e: &KafkaError) -> bool {
    matches!(e, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF))
}

/// A consumer for reading a partition back, with [`RestoreContext`].
pub fn restore_consumer(settings: &ClientConfig) -> Result<BaseConsumer<RestoreContext>, RestoreError> {
    Ok(settings.create_with_context(RestoreContext)?)
}

/// Settings of the restore consumer: the `[kafka]` pass-through plus its own.
pub fn consumer_settings(base: &ClientConfig, group_id: &str) -> ClientConfig {
    let mut c = base.clone();
    // Never joins the group (it is assigned, not subscribed); the id only satisfies librdkafka.
    c.set("group.id", format!("{group_id}-restore"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    c
}

/// Re-read `range` of `partition` into `engine` with outputs suppressed. `progress` receives the
/// events read since its last call, about every 64k events. Returns the number of messages read.
pub fn restore(
    settings: &ClientConfig,
    partition: &PartitionId,
    range: RestoreRange,
    engine: &mut Engine,
    source: &SourceConfig,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, RestoreError> {
    const REPORT_EVERY: u64 = 65_536;
    let c = restore_consumer(settings)?;
    let mut tpl = TopicPartitionList::new();
    let start = if range.from > 0 { Offset::Offset(range.from) } else { Offset::Beginning };
    tpl.add_partition_offset(partition.topic(), partition.partition(), start)?;
    c.assign(&tpl)?;
    let mut n = 0u64;
    let mut reported = 0u64;
    let mut discard = |_| {};
    let mut batch = queue_of(&c)?;
    // The same test as live processing, so that what it dead-lettered stays out of the state.
    let mut future = FutureGuard::new(source.max_future);
    let wall = || chrono::Utc::now().timestamp_millis();
    'read: loop {
        next_batch(&mut batch, cancel, &mut || Ok(()))?;
        for m in batch.iter() {
            match m.error() {
                None => {
                    if m.offset() >= range.until {
                        break 'read;
                    }
                    if let Ok(ev) = parse_event(m.payload().unwrap_or(&[]), source.max_event_bytes) {
                        if future.check(ev.ts, m.timestamp(), wall).is_ok() {
                            engine.ingest(&ev, &mut discard);
                        }
                    }
                    n += 1;
                    if n - reported >= REPORT_EVERY {
                        progress(n - reported);
                        reported = n;
                    }
                    if m.offset() + 1 >= range.until {
                        break 'read;
                    }
                }
                // The end of what the broker holds: records up to `until` may have been removed.
                Some(RDKafkaErrorCode::PartitionEOF) => break 'read,
                Some(code) => {
                    tracing::warn!(partition = %partition, error = ?code, "restore read error; continuing");
                }
            }
        }
    }
    progress(n - reported);
    // Restored decisions were made (and acknowledged) by the previous owner.
    engine.counters = Default::default();
    Ok(n)
}

/// Create the repartition topic (`partitions` partitions, deletion after `retention_ms`) unless
/// it exists. Blocking.
pub fn ensure_repartition_topic(
    settings: &ClientConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), RestoreError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut settings = settings.clone();
    settings.set("allow.auto.create.topics", "false");
    let admin: AdminClient<DefaultClientContext> = settings.create()?;
    // A week: the events only pass through, but a stopped service must find its backlog there.
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)).set("retention.ms", "604800000");
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    for r in futures::executor::block_on(admin.create_topics([&new], &opts))? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(RestoreError::Kafka(format!("cannot create repartition topic {topic}: {code}")))
            }
        }
    }
    Ok(())
}

/// The largest partition count among `topics` (0 when none is known yet). Blocking.
pub fn partition_count(settings: &ClientConfig, topics: &[String], timeout: Duration) -> Result<i32, RestoreError> {
    let c: BaseConsumer = settings.create()?;
    let mut most = 0;
    for t in topics {
        let md = c.fetch_metadata(Some(t), timeout)?;
        if let Some(m) = md.topics().iter().find(|m| m.name() == t) {
            most = most.max(m.partitions().len() as i32);
        }
    }
    Ok(most)
}

/// Create `topic` (compacted, `partitions` partitions) unless it exists. A changelog with fewer
/// partitions than its input cannot hold every partition's state: an error naming the fix.
pub fn ensure_changelog(
    settings: &ClientConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> Result<(), RestoreError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut settings = settings.clone();
    // A metadata request for a missing topic must not create it with the broker's defaults.
    settings.set("allow.auto.create.topics", "false");
    let admin: AdminClient<DefaultClientContext> = settings.create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact")
        // Tombstones (evicted users) are kept a day, so a restore that is a little behind still
        // sees them.
        .set("delete.retention.ms", "86400000");
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    // Created first, not looked up first: another instance (or partition) may race us to it.
    let results = futures::executor::block_on(admin.create_topics([&new], &opts))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(RestoreError::Kafka(format!("cannot create changelog topic {topic}: {code}")))
            }
        }
    }
    let md = admin.inner().fetch_metadata(Some(topic), timeout)?;
    let have = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32);
    if have < partitions {
        return Err(RestoreError::Kafka(format!(
            "changelog topic {topic} has {have} partitions, its input has {partitions}: if the input was given more partitions, users' events now land on other partitions than their state (docs/KAFKA.md, adding partitions to an input); else add partitions to the changelog (kafka-topics --alter --partitions {partitions})"
        )));
    }
    Ok(())
}

/// What a changelog restore found.
pub struct ChangelogRead {
    /// `None`: no usable state (empty, or another model's feature layout).
    pub restored: Option<crate::state::changelog::Restored>,
    pub corrupt: u64,
    pub other_layout: u64,
}

/// Read `partition` of changelog `topic` from its start to its end (the high watermark when the
/// read starts) into `engine`. The records are read and decoded on a thread of their own while
/// this one applies them (see [`crate::state::pipelined`]).
pub fn restore_changelog(
    settings: &ClientConfig,
    topic: &str,
    partition: i32,
    engine: &mut Engine,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<ChangelogRead, RestoreError> {
    const REPORT_EVERY: u64 = 65_536;
    let c = restore_consumer(settings)?;
    let (low, high) = c.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    let mut replayer = crate::state::changelog::Replayer::new(engine);
    if high > low {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
        c.assign(&tpl)?;
        let (mut n, mut reported) = (0u64, 0u64);
        crate::state::pipelined::replay(
            &mut replayer,
            move |w| read_changelog(&c, topic, partition, high, cancel, w),
            |applied| {
                n += applied;
                if n - reported >= REPORT_EVERY {
                    progress(n - reported);
                    reported = n;
                }
            },
        )?;
        progress(n - reported);
    }
    let (corrupt, other_layout) = (replayer.corrupt, replayer.other_layout);
    let restored = match replayer.finish() {
        Ok(r) => r,
        // A first flush cut short: nothing whole to start from; the input rebuilds it.
        Err(crate::state::changelog::ReplayError::NoCompleteFlush) => None,
        Err(e) => return Err(RestoreError::Kafka(format!("changelog {topic}/{partition}: {e}"))),
    };
    Ok(ChangelogRead { restored, corrupt, other_layout })
}

/// The reading side of [`restore_changelog`]: every record of the assigned changelog partition
/// before offset `high`, in order, into `w`. Records are taken from librdkafka a batch at a time
/// ([`QueueBatch`]): per record, `poll` cost as much as decoding.
fn read_changelog(
    c: &BaseConsumer<RestoreContext>,
    topic: &str,
    partition: i32,
    high: i64,
    cancel: &AtomicBool,
    w: &mut BatchWriter,
) -> Result<(), RestoreError> {
    let mut batch = queue_of(c)?;
    loop {
        // Only when librdkafka's queue is empty does the reader hand over a partial batch (the
        // applier would idle) and wait.
        next_batch(&mut batch, cancel, &mut || Ok(w.flush()?))?;
        for m in batch.iter() {
            match m.error() {
                None => {
                    w.push(m.key().unwrap_or(&[]), m.payload())?;
                    if m.offset() + 1 >= high {
                        return Ok(());
                    }
                }
                Some(RDKafkaErrorCode::PartitionEOF) => return Ok(()),
                Some(code) => {
                    tracing::warn!(topic, partition, error = ?code, "changelog read error; continuing");
                }
            }
        }
    }
}

/// The restore consumer's queue, read a batch at a time.
fn queue_of(c: &BaseConsumer<RestoreContext>) -> Result<QueueBatch<'_>, RestoreError> {
    QueueBatch::consumer_queue(c, crate::state::pipelined::BATCH_RECORDS)
        .ok_or_else(|| RestoreError::Kafka("the restore consumer has no queue".into()))
}

/// Take the next batch from the restore consumer's queue: at once when records are fetched;
/// else, after `idle` (the caller's chance to hand over what it holds), waiting up to 200 ms at a
/// time. Fails when cancelled, or when nothing comes for 30 s (the broker is unreachable).
fn next_batch(
    batch: &mut QueueBatch<'_>,
    cancel: &AtomicBool,
    idle: &mut dyn FnMut() -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    const STALL: Duration = Duration::from_secs(30);
    let waiting_since = Instant::now();
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(RestoreError::Cancelled);
        }
        if batch.fill(Duration::ZERO) > 0 {
            return Ok(());
        }
        idle()?;
        if batch.fill(Duration::from_millis(200)) > 0 {
            return Ok(());
        }
        if waiting_since.elapsed() >= STALL {
            return Err(RestoreError::Stalled(STALL));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_end_of_a_partition_is_silenced() {
        assert!(is_partition_eof(&KafkaError::Global(RDKafkaErrorCode::PartitionEOF)));
        assert!(is_partition_eof(&KafkaError::PartitionEOF(3)));
        assert!(!is_partition_eof(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)));
        assert!(!is_partition_eof(&KafkaError::Global(RDKafkaErrorCode::UnknownTopicOrPartition)));
        assert!(!is_partition_eof(&KafkaError::MessageConsumption(RDKafkaErrorCode::PartitionEOF)));
    }
}
