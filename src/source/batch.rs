//! Messages taken from a consumer's queue many at a time.
//!
//! rust-rdkafka's `poll` hands out one message per call, and each call pays for it: a lock and
//! a condition variable on librdkafka's queue, two clock reads for `max.poll.interval.ms`, an
//! event object and an `Arc` allocated and freed around the message, and rust-rdkafka's own
//! clock reads for the timeout. Reading a changelog back, that was about half a microsecond per
//! record, as much as decoding it. librdkafka's `rd_kafka_consume_batch_queue` pays those once
//! per batch, which rust-rdkafka 0.39 does not expose; this is the small unsafe wrapper around
//! it: [`QueueBatch`] for readers that own their consumer (the restore readers), and
//! [`PartitionFeed`] for a group member's partition, read by its worker task.
//!
//! Errors librdkafka reports to the consumer (a partition's end, a fetch error) come back in
//! the batch as messages with an error code, in order with the records, as `poll` returns them.
//! Other events (client errors, statistics, logs) go to the client context's callbacks.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::Notify;

/// One message of a batch, borrowed from librdkafka's buffers until the next fill.
#[derive(Clone, Copy)]
pub struct Msg<'a>(&'a rd::rd_kafka_message_t);

// SAFETY: a message is only read while it is in its batch, and nothing changes it meanwhile;
// librdkafka's messages may be read from any thread.
unsafe impl Send for Msg<'_> {}
unsafe impl Sync for Msg<'_> {}

/// A message librdkafka handed over, as librdkafka's array holds it (the batch owns it).
#[derive(Clone, Copy)]
#[repr(transparent)]
struct MsgPtr(*mut rd::rd_kafka_message_t);

// SAFETY: as for `Msg`; the batch destroys each message once, from whichever thread holds it.
unsafe impl Send for MsgPtr {}
unsafe impl Sync for MsgPtr {}

impl<'a> Msg<'a> {
    /// An error librdkafka reports to the consumer in place of a record; `PartitionEOF` is the
    /// end of what the broker holds.
    pub fn error(&self) -> Option<RDKafkaErrorCode> {
        (self.0.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| self.0.err.into())
    }

    pub fn partition(&self) -> i32 {
        self.0.partition
    }

    pub fn offset(&self) -> i64 {
        self.0.offset
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        // SAFETY: a message of the current batch (see `QueueBatch::iter`); librdkafka gives a
        // null pointer or `key_len` valid bytes.
        unsafe { bytes(self.0.key, self.0.key_len) }
    }

    /// `None`: a tombstone.
    pub fn payload(&self) -> Option<&'a [u8]> {
        // SAFETY: as for `key`.
        unsafe { bytes(self.0.payload, self.0.len) }
    }

    /// The record's timestamp in milliseconds (create or log-append time, as the topic says),
    /// `None` when it has none.
    pub fn timestamp(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message; librdkafka only reads it and writes `kind`.
        let ts = unsafe { rd::rd_kafka_message_timestamp(self.0, &mut kind) };
        (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(ts)
    }
}

/// A consumer's queue, read a batch at a time (see the module docs). Holds a reference to the
/// queue, released on drop; `'c` ties it to the consumer, which must outlive every message.
pub struct QueueBatch<'c> {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// Messages of the current batch: owned (each destroyed on the next fill or on drop).
    msgs: Vec<MsgPtr>,
    len: usize,
    _consumer: PhantomData<&'c ()>,
}

impl<'c> QueueBatch<'c> {
    /// The queue that `consumer`'s fetched messages arrive on (the consumer queue: every
    /// consumer here has a `group.id`, so rust-rdkafka forwards the main queue to it too).
    /// `capacity`: the most messages a batch holds. `None` when librdkafka has no such queue.
    pub fn consumer_queue<C: ConsumerContext>(consumer: &'c BaseConsumer<C>, capacity: usize) -> Option<Self> {
        // SAFETY: the client pointer is valid while `consumer` is, which `'c` guarantees; the
        // call returns a new reference to the queue (or null), released in `drop`.
        let q = unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        NonNull::new(q).map(|queue| QueueBatch::with_queue(queue, capacity))
    }

    fn with_queue(queue: NonNull<rd::rd_kafka_queue_t>, capacity: usize) -> Self {
        QueueBatch { queue, msgs: vec![MsgPtr(std::ptr::null_mut()); capacity.max(1)], len: 0, _consumer: PhantomData }
    }

    /// Release the previous batch and take the next: whatever is already fetched, up to the
    /// capacity, waiting at most `wait` when nothing is. Returns the messages taken.
    pub fn fill(&mut self, wait: Duration) -> usize {
        self.fill_up_to(usize::MAX, wait)
    }

    /// [`QueueBatch::fill`], taking at most `max` messages (at least one).
    pub fn fill_up_to(&mut self, max: usize, wait: Duration) -> usize {
        self.release();
        let cap = self.msgs.len().min(max.max(1));
        let mut n = self.consume(0, 0, cap);
        if n == 0 && !wait.is_zero() {
            // librdkafka waits for a full batch when given a timeout: wait for one message
            // only, then take whatever else has arrived with it.
            let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
            n = self.consume(ms, 0, 1);
            if n == 1 {
                n += self.consume(0, 1, cap - 1);
            }
        }
        self.len = n;
        n
    }

    fn consume(&mut self, timeout_ms: i32, at: usize, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        // SAFETY: `at + max <= msgs.len()`, so librdkafka writes only inside the vector; the
        // queue reference is live until `drop`.
        let got = unsafe {
            let out = self.msgs.as_mut_ptr().add(at).cast::<*mut rd::rd_kafka_message_t>();
            rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), timeout_ms, out, max)
        };
        // A negative count is an invalid argument, which these arguments are not.
        usize::try_from(got).unwrap_or(0).min(max)
    }

    /// The current batch, in queue order.
    pub fn iter(&self) -> impl Iterator<Item = Msg<'_>> + '_ {
        // SAFETY: the first `len` pointers are messages librdkafka returned in the last fill,
        // not yet destroyed; they live until `release`, which needs `&mut self`.
        self.msgs[..self.len].iter().map(|m| Msg(unsafe { &*m.0 }))
    }

    fn release(&mut self) {
        for m in &mut self.msgs[..self.len] {
            // SAFETY: each was returned by librdkafka in the last fill and is destroyed once.
            unsafe { rd::rd_kafka_message_destroy(m.0) };
            m.0 = std::ptr::null_mut();
        }
        self.len = 0;
    }
}

/// A librdkafka buffer as a slice: `None` for a null pointer (no key, a tombstone).
///
/// # Safety
/// `p` is null or points to `len` bytes valid for `'a`.
unsafe fn bytes<'a>(p: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
    }
}

// SAFETY: librdkafka's queues may be used from any thread; `&self` only reads messages, which
// nothing else changes while they are in the batch.
unsafe impl Send for QueueBatch<'_> {}
unsafe impl Sync for QueueBatch<'_> {}

impl Drop for QueueBatch<'_> {
    fn drop(&mut self) {
        self.release();
        // SAFETY: the reference taken in `consumer_queue`, released once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// A group member's partition, split onto a queue of its own and read a batch at a time by its
/// worker task: librdkafka calls back when the queue gets a message, which wakes the task.
pub struct PartitionFeed {
    // Fields drop in order: the batch (its messages and queue reference) before the consumer.
    batch: QueueBatch<'static>,
    notify: Arc<Notify>,
    _consumer: Arc<dyn Send + Sync>,
}

impl PartitionFeed {
    /// Take `topic`/`partition`'s messages off the consumer's queue onto one of their own
    /// (librdkafka forwards each assigned partition to the consumer queue: call this on every
    /// assignment, before the partition is read). `None` when librdkafka knows no such partition.
    pub fn split<C, K>(consumer: &Arc<K>, topic: &str, partition: i32, capacity: usize) -> Option<Self>
    where
        C: ConsumerContext,
        K: Consumer<C> + Send + Sync + 'static,
    {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` is, and the feed holds it; the
        // call returns a new reference to the partition's queue (or null).
        let q = unsafe { rd::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), partition) };
        let queue = NonNull::new(q)?;
        let notify = partition_notify(consumer.client().native_ptr() as usize, &topic, partition);
        // SAFETY: the queue reference is live; forwarding to null keeps its messages on it. The
        // callback's argument is the partition's `Notify`, which is never freed (see
        // `partition_notify`), so the callback may outlive this feed.
        unsafe {
            rd::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut());
            rd::rd_kafka_queue_cb_event_enable(queue.as_ptr(), Some(wake), Arc::as_ptr(&notify) as *mut c_void);
        }
        let keep: Arc<dyn Send + Sync> = consumer.clone();
        Some(PartitionFeed { batch: QueueBatch::with_queue(queue, capacity), notify, _consumer: keep })
    }

    /// Release the previous batch and wait for the next: at most `max` messages (at least one),
    /// taken as soon as any are there.
    ///
    /// Cancel-safe: messages are taken only in the poll that returns them.
    pub async fn next(&mut self, max: usize) -> usize {
        loop {
            // Registered before looking, so a message that arrives after the fill below wakes
            // this wait (librdkafka calls back when the empty queue gets one).
            let woken = self.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let n = self.batch.fill_up_to(max, Duration::ZERO);
            if n > 0 {
                return n;
            }
            woken.await;
        }
    }

    /// The current batch, in queue order.
    pub fn iter(&self) -> impl Iterator<Item = Msg<'_>> + '_ {
        self.batch.iter()
    }
}

/// The end of `topic`/`partition` as librdkafka last heard it from the broker: the high watermark
/// of its latest fetch response for the partition, read from the client's cache (no request).
/// `None` until a fetch response for it has come.
pub fn cached_end_offset<C, K>(consumer: &K, topic: &str, partition: i32) -> Option<i64>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` is borrowed; librdkafka reads the
    // topic name and writes the two offsets only.
    let err = unsafe {
        rd::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// The offset after the last message of `topic`/`partition` that this consumer's application
/// has been handed, as librdkafka tracks it (no request): `None` before the first one since the
/// partition was (re)assigned or sought. Unlike the offsets of the messages a worker sees, it
/// also steps over transaction markers, which librdkafka consumes without handing them out: a
/// transactional input's end is one past its last readable message.
pub fn app_position<C, K>(consumer: &K, topic: &str, partition: i32) -> Option<i64>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let mut tpl = rdkafka::TopicPartitionList::with_capacity(1);
    tpl.add_partition(topic, partition);
    // SAFETY: the client pointer is valid while `consumer` is borrowed; librdkafka writes the
    // partition's offset into the list, which `tpl` owns and frees.
    let err = unsafe { rd::rd_kafka_position(consumer.client().native_ptr(), tpl.ptr()) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return None;
    }
    match tpl.find_partition(topic, partition)?.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// The `Notify` that librdkafka's callback wakes for one client's partition: one per partition
/// for the life of the process, shared by its successive feeds.
///
/// A feed cannot remove its callback when it goes: the partition may be assigned again before
/// the old worker ends, and the queue's callback is then the new feed's (librdkafka keeps one per
/// queue). So the callback stays, and what it points to must stay too. Held here, it is one small
/// allocation per partition ever assigned to a client.
fn partition_notify(client: usize, topic: &CString, partition: i32) -> Arc<Notify> {
    type Key = (usize, CString, i32);
    static NOTIFIES: OnceLock<Mutex<HashMap<Key, Arc<Notify>>>> = OnceLock::new();
    let map = NOTIFIES.get_or_init(Default::default);
    // A poisoned lock only means another thread panicked while inserting: the map is whole.
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry((client, topic.clone(), partition)).or_insert_with(|| Arc::new(Notify::new())).clone()
}

/// librdkafka's callback when a feed's queue gets a message (on one of its threads).
unsafe extern "C" fn wake(_rk: *mut rd::rd_kafka_t, notify: *mut c_void) {
    // SAFETY: the `Notify` registered in `PartitionFeed::split`, which `partition_notify` never
    // frees.
    let notify = unsafe { &*(notify as *const Notify) };
    // Every waiter: a partition's previous feed may still hold the `Notify` (it wakes, finds
    // nothing and waits again, if it waits at all).
    notify.notify_waiters();
}
