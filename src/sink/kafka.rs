//! The Kafka sink of one partition's worker: encodes records, hands them to the shared producer,
//! and turns delivery reports into settled outputs.
//!
//! Producer errors are classified. A transient one (broker down, timeout, leader change) is
//! retried with backoff until the broker takes the record or the worker stops. A permanent one is
//! never retried forever: a dead letter too large for the producer or broker is sent again
//! truncated, with its original size in a header (it is never dropped and never blocks); any
//! other permanent refusal is reported as [`Settled::Failed`] so that the worker counts it,
//! surfaces it and moves on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;

use crate::event::Rejection;
use crate::pipeline::events::OutputKind;
use crate::source::kafka::{kafka_error_code, PartitionId};

/// Header names on dead-letter records.
pub mod dlq_headers {
    pub const REASON: &str = "churnguard.reason";
    pub const MESSAGE: &str = "churnguard.message";
    pub const SOURCE_TOPIC: &str = "churnguard.source.topic";
    pub const SOURCE_PARTITION: &str = "churnguard.source.partition";
    pub const SOURCE_OFFSET: &str = "churnguard.source.offset";
    /// `true` when the payload was cut to fit the broker's limit.
    pub const TRUNCATED: &str = "churnguard.truncated";
    /// The payload's size in bytes before truncation.
    pub const ORIGINAL_BYTES: &str = "churnguard.original.bytes";
}

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room left for the key, headers and record framing when a dead letter is sized to fit.
const RECORD_OVERHEAD: usize = 1024;
/// The smallest truncated dead letter tried before a size refusal counts as permanent.
const MIN_TRUNCATED: usize = 1024;

/// How a producer error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Sending again later may succeed.
    Transient,
    /// The record is too large: only a smaller record can succeed.
    TooLarge,
    /// The broker will never take this record.
    Permanent,
}

pub fn classify(e: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => ErrorClass::TooLarge,
        Some(
            C::InvalidMessage
            | C::InvalidTopic
            | C::InvalidRequiredAcks
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::PolicyViolation
            | C::UnsupportedCompressionType
            | C::InvalidRecord
            | C::InvalidArgument
            | C::Fatal,
        ) => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

/// What an output settles when the broker is done with it.
#[derive(Debug)]
pub struct Pending {
    /// The input offset it derives from; `None` for outputs of the idle clock.
    pub offset: Option<i64>,
    pub kind: OutputKind,
    /// Tier (interventions, control) or reason code (dead letters).
    pub label: Arc<str>,
    pub action: Arc<str>,
    /// The triggering message's timestamp, for the event-to-intervention latency.
    pub source_ts_ms: Option<i64>,
    /// Set when a dead letter had to be truncated: (original bytes, sent bytes).
    pub truncated: Option<(usize, usize)>,
}

#[derive(Debug)]
pub enum Settled {
    Acked(Pending),
    Failed(Pending, String),
    /// A transient error; the output was scheduled to be sent again.
    Retrying(OutputKind, String),
}

/// A record to send, borrowed: the producer copies it.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub headers: &'a OwnedHeaders,
}

impl OutRecord {
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef { topic: &self.topic, key: &self.key, payload: &self.payload, headers: &self.headers }
    }
}

/// Decisions encoded for sending, in one reused buffer: staging a decision allocates nothing once
/// the buffers have grown, and the producer copies each record out of it.
#[derive(Default)]
pub struct Staging {
    buf: Vec<u8>,
    items: Vec<Staged>,
    /// Tier and action names as metric labels, interned: a handful per model.
    labels: Vec<Arc<str>>,
}

struct Staged {
    key: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
    control: bool,
    caused_by_event: bool,
    tier: Arc<str>,
    action: Arc<str>,
}

impl Staging {
    /// Encode `d` as its record (key: user id; value: `churnguard.intervention.v1` JSON).
    pub fn push(&mut self, d: &crate::decision::Decision<'_>, emitted_at: crate::time::Millis) {
        let start = self.buf.len();
        self.buf.extend_from_slice(d.user_id.as_bytes());
        let key = start..self.buf.len();
        d.write_json(emitted_at, &mut self.buf);
        let payload = key.end..self.buf.len();
        let tier = self.intern(d.tier);
        let action = self.intern(d.action);
        self.items.push(Staged {
            key,
            payload,
            control: d.control,
            caused_by_event: d.trigger == crate::intervention::Trigger::Event,
            tier,
            action,
        });
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(l) = self.labels.iter().find(|l| &***l == s) {
            return l.clone();
        }
        let l: Arc<str> = Arc::from(s);
        self.labels.push(l.clone());
        l
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The `i`th staged record: (control, key, payload) and what it settles.
    pub fn get(&self, i: usize, offset: Option<i64>, source_ts_ms: Option<i64>) -> (bool, &[u8], &[u8], Pending) {
        let it = &self.items[i];
        let pending = Pending {
            offset,
            kind: if it.control { OutputKind::Control } else { OutputKind::Intervention },
            label: it.tier.clone(),
            action: it.action.clone(),
            source_ts_ms: if it.caused_by_event { source_ts_ms } else { None },
            truncated: None,
        };
        (it.control, &self.buf[it.key.clone()], &self.buf[it.payload.clone()], pending)
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }
}

/// A record ready for the producer.
pub struct OutRecord {
    pub topic: Arc<str>,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// The topics a sink writes to.
#[derive(Debug, Clone)]
pub struct Topics {
    pub interventions: Arc<str>,
    pub control: Arc<str>,
    pub dead_letter: Arc<str>,
}

/// A delivery's outcome: the broker's error and the record back, or `None` when the producer went away.
type Delivery = Pin<Box<dyn Future<Output = (Pending, Result<(), Option<(KafkaError, OwnedMessage)>>)> + Send>>;

pub struct KafkaSink {
    producer: FutureProducer,
    topics: Topics,
    schema_headers: OwnedHeaders,
    deliveries: FuturesUnordered<Delivery>,
    /// The largest dead-letter payload sent whole.
    max_payload: usize,
    retry_backoff: Duration,
}

impl KafkaSink {
    pub fn new(producer: FutureProducer, topics: Topics, message_max_bytes: usize) -> KafkaSink {
        KafkaSink {
            producer,
            topics,
            schema_headers: OwnedHeaders::new()
                .insert(Header { key: "churnguard.schema", value: Some(crate::intervention::SCHEMA) }),
            deliveries: FuturesUnordered::new(),
            max_payload: message_max_bytes.saturating_sub(RECORD_OVERHEAD).max(MIN_TRUNCATED),
            retry_backoff: Duration::from_millis(500),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.deliveries.len()
    }

    /// The rejected message byte for byte (cut to fit if it is larger than the producer takes),
    /// with the reason and its origin in headers.
    pub fn dead_letter(
        &self,
        source: &PartitionId,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        r: &Rejection,
    ) -> (OutRecord, Pending) {
        let partition = source.partition().to_string();
        let offset_text = offset.to_string();
        let detail: String = r.detail.chars().take(512).collect();
        let headers = OwnedHeaders::new()
            .insert(Header { key: dlq_headers::REASON, value: Some(r.reason.code()) })
            .insert(Header { key: dlq_headers::MESSAGE, value: Some(detail.as_str()) })
            .insert(Header { key: dlq_headers::SOURCE_TOPIC, value: Some(source.topic()) })
            .insert(Header { key: dlq_headers::SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: dlq_headers::SOURCE_OFFSET, value: Some(offset_text.as_str()) });
        let mut record = OutRecord {
            topic: self.topics.dead_letter.clone(),
            key: key.unwrap_or_default().to_vec(),
            payload: Vec::new(),
            headers,
        };
        let mut pending = Pending {
            offset: Some(offset),
            kind: OutputKind::DeadLetter,
            label: Arc::from(r.reason.code()),
            action: Arc::from(""),
            source_ts_ms: None,
            truncated: None,
        };
        if payload.len() > self.max_payload {
            record.payload = payload[..self.max_payload].to_vec();
            record.headers = truncation_headers(record.headers, payload.len());
            pending.truncated = Some((payload.len(), self.max_payload));
        } else {
            record.payload = payload.to_vec();
        }
        (record, pending)
    }

    /// Hand a record to the producer (librdkafka copies it). `Err` gives `pending` back when the
    /// producer's queue is full: wait for [`KafkaSink::next`] and try again.
    pub fn try_send(&mut self, record: RecordRef<'_>, pending: Pending) -> Result<(), Pending> {
        self.send_parts(record.topic, record.key, record.payload, record.headers.clone(), pending)
    }

    /// A changelog record to an explicit partition; `value: None` is a tombstone (a null value,
    /// which compaction removes the key for).
    pub fn try_send_state(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        pending: Pending,
    ) -> Result<(), Pending> {
        let mut fr = FutureRecord::<[u8], [u8]>::to(topic).key(key).partition(partition);
        if let Some(v) = value {
            fr = fr.payload(v);
        }
        self.send_record(fr, pending)
    }

    /// As [`KafkaSink::try_send`], for a staged decision (see [`Staging::get`]).
    pub fn try_send_decision(
        &mut self,
        control: bool,
        key: &[u8],
        payload: &[u8],
        pending: Pending,
    ) -> Result<(), Pending> {
        let topic = if control { self.topics.control.clone() } else { self.topics.interventions.clone() };
        // librdkafka takes ownership of a record's headers: each record needs its own.
        let headers = self.schema_headers.clone();
        self.send_parts(&topic, key, payload, headers, pending)
    }

    fn send_parts(
        &mut self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
        pending: Pending,
    ) -> Result<(), Pending> {
        self.send_record(FutureRecord::to(topic).key(key).payload(payload).headers(headers), pending)
    }

    fn send_record(&mut self, fr: FutureRecord<'_, [u8], [u8]>, pending: Pending) -> Result<(), Pending> {
        let topic = fr.topic;
        match self.producer.send_result(fr) {
            Ok(delivery) => {
                self.deliveries.push(Box::pin(async move {
                    let r = match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, m))) => Err(Some((e, m))),
                        // The producer was dropped (shutting down): nothing left to send with.
                        Err(_cancelled) => Err(None),
                    };
                    (pending, r)
                }));
                Ok(())
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(pending),
            Err((e, fr)) => {
                // Refused before it reached the queue (e.g. larger than message.max.bytes): the
                // same handling as a refusal by the broker.
                let msg = OwnedMessage::new(
                    fr.payload.map(<[u8]>::to_vec),
                    fr.key.map(<[u8]>::to_vec),
                    topic.to_string(),
                    rdkafka::Timestamp::NotAvailable,
                    fr.partition.unwrap_or(0),
                    0,
                    fr.headers,
                );
                self.deliveries.push(Box::pin(async move { (pending, Err(Some((e, msg)))) }));
                Ok(())
            }
        }
    }

    /// The next settled output, or notice of a retry. Truncations happen inside; pending forever
    /// when nothing is in flight.
    pub async fn next(&mut self) -> Settled {
        loop {
            let Some((mut pending, result)) = self.deliveries.next().await else {
                return std::future::pending().await;
            };
            let (err, msg) = match result {
                Ok(()) => return Settled::Acked(pending),
                Err(Some(e)) => e,
                Err(None) => return Settled::Failed(pending, "Canceled".into()),
            };
            let code = kafka_error_code(&err);
            match classify(&err) {
                ErrorClass::TooLarge if pending.kind == OutputKind::DeadLetter => {
                    let now = msg.payload().map_or(0, <[u8]>::len);
                    let original = pending.truncated.map_or(now, |(o, _)| o);
                    let smaller = (now / 2).max(MIN_TRUNCATED);
                    if now <= MIN_TRUNCATED {
                        return Settled::Failed(pending, code);
                    }
                    let mut retry = from_message(&msg, pending.kind);
                    retry.record.payload.truncate(smaller);
                    if pending.truncated.is_none() {
                        retry.record.headers = truncation_headers(retry.record.headers, original);
                    }
                    pending.truncated = Some((original, smaller));
                    self.push_retry(retry, pending, Duration::ZERO);
                }
                ErrorClass::TooLarge | ErrorClass::Permanent => return Settled::Failed(pending, code),
                ErrorClass::Transient => {
                    let kind = pending.kind;
                    self.push_retry(from_message(&msg, kind), pending, self.retry_backoff);
                    return Settled::Retrying(kind, code);
                }
            }
        }
    }

    fn push_retry(&mut self, retry: Retry, pending: Pending, after: Duration) {
        let producer = self.producer.clone();
        self.deliveries.push(Box::pin(async move {
            tokio::time::sleep(after).await;
            let Retry { record, partition, null } = retry;
            let mut fr = FutureRecord::to(&record.topic).key(&record.key).headers(record.headers.clone());
            if !null {
                fr = fr.payload(&record.payload);
            }
            if let Some(p) = partition {
                fr = fr.partition(p);
            }
            let r = match producer.send(fr, Timeout::After(Duration::from_secs(5))).await {
                Ok(_) => Ok(()),
                Err((e, m)) => Err(Some((e, m))),
            };
            (pending, r)
        }));
    }
}

fn truncation_headers(headers: OwnedHeaders, original: usize) -> OwnedHeaders {
    let original = original.to_string();
    headers
        .insert(Header { key: dlq_headers::TRUNCATED, value: Some("true") })
        .insert(Header { key: dlq_headers::ORIGINAL_BYTES, value: Some(original.as_str()) })
}

/// A refused record to send again, as it was: a changelog record to its own partition (its
/// key would hash to another) and a tombstone with no value (an empty one is no tombstone).
struct Retry {
    record: OutRecord,
    partition: Option<i32>,
    null: bool,
}

fn from_message(m: &OwnedMessage, kind: OutputKind) -> Retry {
    let headers = match m.headers() {
        Some(h) => {
            let mut out = OwnedHeaders::new_with_capacity(h.count());
            for hd in h.iter() {
                out = out.insert(Header { key: hd.key, value: hd.value });
            }
            out
        }
        None => OwnedHeaders::new(),
    };
    let record = OutRecord {
        topic: Arc::from(m.topic()),
        key: m.key().unwrap_or_default().to_vec(),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
    };
    let explicit = kind == OutputKind::Changelog;
    Retry { record, partition: explicit.then(|| m.partition()), null: explicit && m.payload().is_none() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_refusals_are_told_apart_from_outages() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)), ErrorClass::TooLarge);
        assert_eq!(classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)), ErrorClass::Permanent);
        assert_eq!(classify(&e(RDKafkaErrorCode::MessageTimedOut)), ErrorClass::Transient);
        assert_eq!(classify(&e(RDKafkaErrorCode::AllBrokersDown)), ErrorClass::Transient);
        assert_eq!(classify(&KafkaError::Canceled), ErrorClass::Transient);
    }

    fn sink(max: usize) -> KafkaSink {
        let producer: FutureProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .expect("a producer needs no broker to be created");
        let topics = Topics { interventions: "i".into(), control: "c".into(), dead_letter: "d".into() };
        KafkaSink::new(producer, topics, max)
    }

    #[test]
    fn a_changelog_record_is_retried_to_its_partition_and_a_tombstone_stays_one() {
        let msg = |payload: Option<Vec<u8>>| {
            OwnedMessage::new(payload, Some(b"user".to_vec()), "t".into(), rdkafka::Timestamp::NotAvailable, 3, 0, None)
        };
        let tomb = from_message(&msg(None), OutputKind::Changelog);
        assert_eq!((tomb.partition, tomb.null), (Some(3), true));
        let put = from_message(&msg(Some(b"state".to_vec())), OutputKind::Changelog);
        assert_eq!((put.partition, put.null, put.record.payload.as_slice()), (Some(3), false, &b"state"[..]));
        // Outputs go where the partitioner puts their key, as they did the first time.
        let out = from_message(&msg(Some(b"{}".to_vec())), OutputKind::Intervention);
        assert_eq!((out.partition, out.null), (None, false));
    }

    #[test]
    fn an_oversized_dead_letter_is_cut_to_fit_and_says_so() {
        let s = sink(10_000);
        let payload = vec![b'x'; 50_000];
        let r = crate::event::parse_event(&payload, 100).expect_err("too large");
        let (rec, pending) = s.dead_letter(&PartitionId::new("t", 0), 7, Some(b"k"), &payload, &r);
        assert_eq!(rec.payload.len(), 10_000 - RECORD_OVERHEAD);
        assert_eq!(pending.truncated, Some((50_000, 10_000 - RECORD_OVERHEAD)));
        let headers: Vec<(String, String)> = rec
            .headers
            .iter()
            .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
            .collect();
        assert!(headers.contains(&(dlq_headers::TRUNCATED.into(), "true".into())), "{headers:?}");
        assert!(headers.contains(&(dlq_headers::ORIGINAL_BYTES.into(), "50000".into())), "{headers:?}");
        assert!(headers.contains(&(dlq_headers::SOURCE_OFFSET.into(), "7".into())), "{headers:?}");
    }

    #[test]
    fn a_dead_letter_that_fits_is_sent_byte_for_byte() {
        let s = sink(DEFAULT_MESSAGE_MAX_BYTES);
        let payload = b"{not json".to_vec();
        let r = crate::event::parse_event(&payload, 1000).expect_err("not json");
        let (rec, pending) = s.dead_letter(&PartitionId::new("t", 0), 1, None, &payload, &r);
        assert_eq!(rec.payload, payload);
        assert_eq!(pending.truncated, None);
        assert!(!rec.headers.iter().any(|h| h.key == dlq_headers::TRUNCATED));
    }
}
