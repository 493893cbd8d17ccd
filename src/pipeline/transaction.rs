//! Exactly once (`sink.processing_guarantee = "exactly_once"`): each partition worker owns a
//! transactional producer, and one transaction per commit interval carries everything the
//! partition produced (interventions, control records, dead letters, its changelog flush) with
//! the input offset that state reflects (`send_offsets_to_transaction`). A `read_committed`
//! consumer then sees each output exactly once, whatever crashes.
//!
//! The transactional id is stable per input partition, `<group>-<topic>-<partition>`: a new owner
//! initialising it fences the previous owner (a zombie's commit fails) and aborts what it left
//! open. One producer per partition is simpler to reason about than one shared transaction that
//! every worker would have to pause for; the cost is a client per assigned partition.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use crate::source::kafka::kafka_error_code;

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Another owner took the partition over (or the producer is unusable): stop, commit nothing.
    #[error("fenced or fatal: {0}")]
    Fatal(String),
    /// The transaction was aborted: its outputs are gone, and the state in memory is ahead of
    /// what is committed, so the partition must be restored again.
    #[error("aborted: {0}")]
    Aborted(String),
}

pub struct Transactions {
    producer: FutureProducer,
    timeout: Duration,
}

/// The transactional id of an input partition's producer.
pub fn transactional_id(group: &str, topic: &str, partition: i32) -> String {
    format!("{group}-{topic}-{partition}")
}

fn classify(e: &KafkaError) -> (bool, bool, bool) {
    match e {
        KafkaError::Transaction(t) => (t.is_retriable(), t.txn_requires_abort(), t.is_fatal()),
        _ => (false, false, true),
    }
}

impl Transactions {
    /// Create the producer, fence any previous owner and open the first transaction. Blocking.
    pub fn start(settings: &ClientConfig, id: &str, timeout: Duration) -> Result<Transactions, TxnError> {
        let mut c = settings.clone();
        c.set("transactional.id", id).set("enable.idempotence", "true");
        let producer: FutureProducer = c.create().map_err(|e| TxnError::Fatal(kafka_error_code(&e)))?;
        let mut attempts = 0;
        loop {
            match producer.init_transactions(timeout) {
                Ok(()) => break,
                Err(e) => {
                    let (retriable, _, _) = classify(&e);
                    attempts += 1;
                    if !retriable || attempts >= 5 {
                        return Err(TxnError::Fatal(kafka_error_code(&e)));
                    }
                }
            }
        }
        producer.begin_transaction().map_err(|e| TxnError::Fatal(kafka_error_code(&e)))?;
        Ok(Transactions { producer, timeout })
    }

    pub fn producer(&self) -> FutureProducer {
        self.producer.clone()
    }

    /// Commit the open transaction with `offsets` for `group`, then open the next. Blocking.
    /// Retriable errors (a broker briefly away) are retried up to the timeout's worth of tries.
    pub fn commit(&self, offsets: &TopicPartitionList, group: &ConsumerGroupMetadata) -> Result<(), TxnError> {
        let retry = |f: &dyn Fn() -> Result<(), KafkaError>| -> Result<(), TxnError> {
            let mut attempts = 0;
            loop {
                match f() {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        let (retriable, abort, fatal) = classify(&e);
                        attempts += 1;
                        if fatal {
                            return Err(TxnError::Fatal(kafka_error_code(&e)));
                        }
                        if abort || !retriable || attempts >= 10 {
                            return Err(self.abort(kafka_error_code(&e)));
                        }
                    }
                }
            }
        };
        retry(&|| self.producer.send_offsets_to_transaction(offsets, group, self.timeout))?;
        retry(&|| self.producer.commit_transaction(self.timeout))?;
        self.producer.begin_transaction().map_err(|e| TxnError::Fatal(kafka_error_code(&e)))
    }

    /// Abort the open transaction and open the next; `why` becomes the error.
    pub fn abort(&self, why: String) -> TxnError {
        if let Err(e) = self.producer.abort_transaction(self.timeout) {
            return TxnError::Fatal(format!("{why}; abort failed: {}", kafka_error_code(&e)));
        }
        match self.producer.begin_transaction() {
            Ok(()) => TxnError::Aborted(why),
            Err(e) => TxnError::Fatal(format!("{why}; {}", kafka_error_code(&e))),
        }
    }
}
