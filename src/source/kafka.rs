//! The Kafka source: a consumer-group member whose assigned partitions are each split onto a
//! queue of their own, so that every partition is read by its own task.
//!
//! The group's main queue is polled on a dedicated thread ([`spawn_poller`]). It carries no
//! messages (each partition's are forwarded to its queue the moment it is assigned), only the
//! rebalance, statistics and error callbacks. That thread may block in a revoke callback while
//! the revoked partitions drain, and the heartbeats and `max.poll.interval.ms` never depend on
//! how long a partition's processing or restore takes.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::pipeline::events::{ConsumerLag, OffsetsCommitted, PartitionAssigned, PartitionRevoked};
use crate::telemetry::Metrics;

/// A topic and partition, cheap to clone and to print as `topic/partition`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    topic: Arc<str>,
    partition: i32,
}

impl PartitionId {
    pub fn new(topic: &str, partition: i32) -> PartitionId {
        PartitionId { topic: Arc::from(topic), partition }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && &*self.topic == topic
    }

    pub fn list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        tpl
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

pub type GroupConsumer = StreamConsumer<SourceContext>;
/// A partition's own queue, read a batch at a time by its worker.
pub type PartitionQueue = super::batch::PartitionFeed;

/// Messages a worker takes from its partition's queue at once, at most.
pub const FEED_BATCH: usize = 512;

/// What the runtime does when the group changes this member's partitions. Called on the poller
/// thread, inside librdkafka's rebalance callback.
pub trait RebalanceListener: Send + Sync {
    /// `partition` is now ours, paused; its messages arrive on `queue`.
    fn assigned(&self, partition: PartitionId, queue: PartitionQueue, consumer: Arc<GroupConsumer>);
    /// `partitions` are being taken away. Stop their work, wait (bounded) for their outputs to
    /// be acknowledged, and return the offsets to commit before they go.
    fn revoking(&self, partitions: &[PartitionId]) -> Vec<(PartitionId, i64)>;
}

pub struct SourceContext {
    consumer: OnceLock<Weak<GroupConsumer>>,
    listener: Arc<dyn RebalanceListener>,
    metrics: Arc<Metrics>,
}

fn ids(list: &TopicPartitionList) -> Vec<PartitionId> {
    list.elements().iter().map(|e| PartitionId::new(e.topic(), e.partition())).collect()
}

impl ClientContext for SourceContext {
    fn stats(&self, s: Statistics) {
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    ConsumerLag { topic, partition: *p, messages: part.consumer_lag }.emit(&self.metrics);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = ids(list);
            for p in &revoked {
                PartitionRevoked { partition: p }.emit(&self.metrics);
            }
            // Drain before letting go, so the next owner starts as late as at-least-once allows.
            let positions = self.listener.revoking(&revoked);
            let mut tpl = TopicPartitionList::new();
            for (p, offset) in &positions {
                let _ = tpl.add_partition_offset(p.topic(), p.partition(), Offset::Offset(*offset));
            }
            if tpl.count() > 0 {
                let result = consumer.commit(&tpl, CommitMode::Sync);
                let error = result.as_ref().err().map(kafka_error_code);
                OffsetsCommitted { partitions: tpl.count(), error: error.as_deref() }.emit(&self.metrics);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let Some(group) = self.consumer.get().and_then(Weak::upgrade) else {
                    tracing::error!("assignment before the consumer was registered; partitions left unread");
                    return;
                };
                for p in ids(list) {
                    // Paused until its state is restored; polling and the other partitions go on.
                    if let Err(e) = consumer.pause(&p.list()) {
                        tracing::warn!(partition = %p, error = %kafka_error_code(&e), "cannot pause a newly assigned partition");
                    }
                    match super::batch::PartitionFeed::split(&group, p.topic(), p.partition(), FEED_BATCH) {
                        Some(queue) => {
                            PartitionAssigned { partition: &p }.emit(&self.metrics);
                            self.listener.assigned(p, queue, group.clone());
                        }
                        None => tracing::error!(partition = %p, "cannot split the partition's queue; left unread"),
                    }
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %kafka_error_code(e), "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A librdkafka error as its code only: error strings can quote broker-side detail.
pub fn kafka_error_code(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => match e {
            KafkaError::Canceled => "Canceled".into(),
            KafkaError::ClientConfig(..) => "ClientConfig".into(),
            KafkaError::ClientCreation(_) => "ClientCreation".into(),
            _ => "KafkaError".into(),
        },
    }
}

/// Create the group consumer and subscribe. `settings` is the `[kafka]` pass-through plus the
/// runtime's own keys.
pub fn subscribe(
    settings: ClientConfig,
    topics: &[String],
    listener: Arc<dyn RebalanceListener>,
    metrics: Arc<Metrics>,
) -> Result<Arc<GroupConsumer>, KafkaError> {
    let ctx = SourceContext { consumer: OnceLock::new(), listener, metrics };
    let consumer: Arc<GroupConsumer> = Arc::new(settings.create_with_context(ctx)?);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Poll the group's main queue on a dedicated thread until `stop` is set. Polling serves the
/// rebalance, statistics and error callbacks; no message should arrive there.
pub fn spawn_poller(
    consumer: Arc<GroupConsumer>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("churnguard-consumer".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the consumer poller");
                return;
            }
        };
        rt.block_on(async {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
                    Err(_) => {}
                    Ok(Ok(m)) => {
                        use rdkafka::Message;
                        tracing::error!(topic = m.topic(), partition = m.partition(), offset = m.offset(), "message on the group queue of a partition without a worker; it is read again after the next rebalance");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %kafka_error_code(&e), "consumer error"),
                }
            }
        });
    })
}

/// Ask the cluster for one topic's metadata: the cheapest proof that a broker answers.
pub fn probe(
    client: &rdkafka::client::Client<impl ClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<(), String> {
    client.fetch_metadata(Some(topic), timeout).map(|_| ()).map_err(|e| kafka_error_code(&e))
}
