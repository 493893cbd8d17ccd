//! `churnguard bench state`: the durable-state figures of issue #8.
//!
//! Default mode: build many users' state, encode it as one full changelog flush, and time its
//! restore into a fresh engine, in process (decode + restore) and, with `--brokers`, through a
//! real broker with the service's own reader (`restore_changelog`).
//!
//! `--idle`: stream events for many users of whom most go silent, with a short TTL so eviction
//! runs within the run; sample RSS and live users over event time, and measure what a changelog
//! would write per flush.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{min_median, peak_rss_bytes, reset_peak_rss};
use crate::engine::{Engine, EngineConfig, WarmUp};
use crate::event::ActivityEvent;
use crate::model::ModelArtifact;
use crate::policy::PolicyConfig;
use crate::state::changelog::{Flush, Replayer};
use crate::state::codec::{self, Shape};
use crate::time::{Span, DAY_MS, HOUR_MS};

/// 2026-01-01T00:00:00Z: where synthetic event time starts.
const T0: i64 = 1_767_225_600_000;

pub struct StateBenchOptions {
    pub users: u64,
    pub events_per_user: u32,
    pub repeat: usize,
    pub model: PathBuf,
    pub brokers: Option<String>,
    pub partitions: i32,
    /// Restore the partitions at once, a thread each (as the service does), not one after another.
    pub parallel: bool,
    /// The broker's `log.dirs`, to read the changelog topic's size on disk (optional).
    pub broker_data_dir: Option<PathBuf>,
    pub idle: Option<IdleOptions>,
}

pub struct IdleOptions {
    /// Event time covered by the run.
    pub days: u32,
    pub ttl_days: u32,
    /// Share of users who come back every 1-4 days for a TTL after their burst (the rest go
    /// silent after it).
    pub active_share: f64,
    /// Event time between two changelog flushes (as the service would flush).
    pub flush_every: Span,
    /// Event time between two RSS samples.
    pub sample_every: Span,
}

const KINDS: [&str; 3] = ["login", "page_view", "purchase"];

fn event(id: &str, kind: usize, ts: i64) -> ActivityEvent<'_> {
    let k = KINDS[kind % KINDS.len()];
    ActivityEvent {
        user_id: Cow::Borrowed(id),
        event_type: Cow::Borrowed(k),
        ts,
        amount: (k == "purchase").then_some(9.99),
    }
}

fn user_id(buf: &mut String, i: u64) -> &str {
    buf.clear();
    // Writing to a String cannot fail.
    let _ = write!(buf, "u{i:08}");
    buf
}

/// Resident set size in bytes from the text of /proc/self/status (`VmRSS`), or `None` if the
/// line is missing or malformed.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// Current resident memory (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_vm_rss).unwrap_or(0)
}

fn mb(b: f64) -> f64 {
    b / 1e6
}

/// Engines (one per partition) holding `n` users with a few events each, spread over the days
/// before the flush, users split across partitions by index.
fn build(o: &StateBenchOptions, art: &ModelArtifact) -> (Vec<Engine>, u64) {
    let cfg = EngineConfig { warm_up: WarmUp::Off, ..EngineConfig::default() };
    let parts = o.partitions.max(1) as u64;
    let mut engines: Vec<Engine> = (0..parts)
        .map(|_| {
            let mut e = Engine::new(art, PolicyConfig::default(), cfg.clone());
            e.track_changes(true);
            e
        })
        .collect();
    let mut id = String::new();
    let mut events = 0u64;
    let n = o.users.max(1);
    for round in 0..u64::from(o.events_per_user.max(1)) {
        for i in 0..n {
            // Time moves forward across the whole stream, so no event is late.
            let ts = T0 + (round as i64) * DAY_MS + (i as i64) * DAY_MS / n as i64;
            let uid = user_id(&mut id, i);
            let ev = event(uid, (i + round) as usize, ts);
            engines[(i % parts) as usize].ingest_decisions(&ev, &mut |_| {});
            events += 1;
        }
    }
    (engines, events)
}

struct Restore {
    secs: f64,
    /// Of `secs`, in `Replayer::finish` (clock, timers, population figures).
    finish_secs: f64,
    /// CPU seconds of this thread: on a shared machine, wall time also counts other work.
    cpu_secs: f64,
    users: u64,
}

/// CPU seconds (user + system) of the whole process so far, threads that have ended included
/// (Linux /proc; clock ticks of 10 ms).
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (get(11) + get(12)) as f64 / 100.0
}

/// How the bench replays a flush in process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// `Replayer::apply` of each record on this thread.
    OneThread,
    /// `state::pipelined::replay`: decoded on a reader thread, applied on this one (the
    /// service's changelog restore).
    Pipelined,
}

/// One partition's flush into a fresh engine: (seconds in all, of which in `finish`, users).
fn restore_flush(f: &Flush, art: &ModelArtifact, how: Replay) -> Result<(f64, f64, u64, Engine)> {
    let cfg = EngineConfig { warm_up: WarmUp::Off, ..EngineConfig::default() };
    let mut engine = Engine::new(art, PolicyConfig::default(), cfg);
    let t = Instant::now();
    let mut r = Replayer::new(&mut engine);
    match how {
        Replay::OneThread => {
            for i in 0..f.len() {
                let (k, v) = f.get(i);
                r.apply(k, v);
            }
        }
        Replay::Pipelined => crate::state::pipelined::replay(
            &mut r,
            |w| {
                for i in 0..f.len() {
                    let (k, v) = f.get(i);
                    w.push(k, v)?;
                }
                Ok::<(), crate::state::pipelined::ApplierGone>(())
            },
            |_| {},
        )?,
    }
    if r.corrupt + r.other_layout > 0 {
        anyhow::bail!("{} corrupt and {} other-layout records in the bench's own flush", r.corrupt, r.other_layout);
    }
    let tf = Instant::now();
    let restored = r.finish()?.context("the flush restored nothing")?;
    let finish_secs = tf.elapsed().as_secs_f64();
    Ok((t.elapsed().as_secs_f64(), finish_secs, restored.users, engine))
}

/// Every partition's flush, one after another or (`parallel`) at once, a thread each as the
/// service restores its assigned partitions. Returns the last partition's engine.
fn restore_in_process(
    flushes: &[Flush],
    art: &ModelArtifact,
    how: Replay,
    parallel: bool,
) -> Result<(Restore, Engine)> {
    // The restoring thread's own CPU time, unless other threads work too.
    let one_thread = how == Replay::OneThread && !parallel;
    let cpu_now = || if one_thread { super::cpu_seconds(None) } else { process_cpu_seconds() };
    let cpu = cpu_now();
    let t = Instant::now();
    let done: Vec<Result<(f64, f64, u64, Engine)>> = if parallel {
        std::thread::scope(|s| {
            let jobs: Vec<_> = flushes.iter().map(|f| s.spawn(move || restore_flush(f, art, how))).collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a restore thread panicked"))))
                .collect()
        })
    } else {
        flushes.iter().map(|f| restore_flush(f, art, how)).collect()
    };
    let wall = t.elapsed().as_secs_f64();
    let (mut secs, mut finish_secs, mut users, mut last) = (0.0, 0.0f64, 0, None);
    for d in done {
        let (s, f, u, e) = d?;
        secs += s;
        // At once, the partitions' `finish` overlap too: the longest stands for them.
        finish_secs = if parallel { finish_secs.max(f) } else { finish_secs + f };
        users += u;
        last = Some(e);
    }
    let engine = last.context("no partitions")?;
    let secs = if parallel { wall } else { secs };
    Ok((Restore { secs, finish_secs, cpu_secs: cpu_now() - cpu, users }, engine))
}

/// Decoding alone, into one reused record: the share of restore time spent in the codec.
fn decode_only(flushes: &[Flush], shape: &Shape) -> f64 {
    let mut rec = crate::engine::UserRecord::default();
    let t = Instant::now();
    let mut ok = 0u64;
    for f in flushes {
        for i in 0..f.len() {
            let (k, v) = f.get(i);
            if let Some(v) = v {
                ok += u64::from(codec::decode_user(k, v, shape, &mut rec).is_ok());
            }
        }
    }
    std::hint::black_box(ok);
    t.elapsed().as_secs_f64()
}

pub fn state_bench(o: &StateBenchOptions) -> Result<String> {
    let art = ModelArtifact::load(&o.model)?;
    if let Some(idle) = &o.idle {
        return idle_bench(o, idle, &art);
    }
    let mut out = String::new();
    let t = Instant::now();
    let (mut engines, events) = build(o, &art);
    let build_secs = t.elapsed().as_secs_f64();
    let live_heap: usize = engines.iter().map(|e| e.store().heap_bytes()).sum();
    let shape = Shape::of(engines[0].store().layout());
    let flushes: Vec<Flush> = engines.iter_mut().map(|e| Flush::build(e, &shape, events as i64, None, true)).collect();
    drop(engines);
    let users: usize = flushes.iter().map(Flush::users).sum();
    let bytes: usize = flushes.iter().map(Flush::bytes).sum();
    let records: usize = flushes.iter().map(Flush::len).sum();
    let n = users.max(1) as f64;
    writeln!(
        out,
        "state: {users} users, {events} synthetic events ({} per user) in {build_secs:.1}s; model {} ({} narrow + {} wide cells)",
        o.events_per_user, art.model_version, shape.narrow, shape.wide
    )?;
    writeln!(
        out,
        "changelog (one full flush, {} partition(s)): {records} records, {:.1} MB keys+values, {:.1} bytes per user",
        o.partitions.max(1),
        mb(bytes as f64),
        bytes as f64 / n
    )?;
    writeln!(out, "live engine feature store: {:.1} bytes per user (FeatureStore::heap_bytes)", live_heap as f64 / n)?;
    writeln!(out)?;

    #[derive(Default)]
    struct Rates {
        wall: Vec<f64>,
        per_cpu: Vec<f64>,
        apply: Vec<f64>,
        finish: Vec<f64>,
    }
    let mut rates = [Rates::default(), Rates::default()];
    let mut decode = Vec::new();
    let mut restored_heap = 0usize;
    let mut peak = 0u64;
    for _ in 0..o.repeat.max(1) {
        // Both ways in each round, so a change in the machine's load hits both alike.
        for (how, rates) in [Replay::Pipelined, Replay::OneThread].into_iter().zip(rates.iter_mut()) {
            reset_peak_rss();
            let (r, engine) = restore_in_process(&flushes, &art, how, o.parallel)?;
            peak = peak.max(peak_rss_bytes());
            if r.users != users as u64 {
                anyhow::bail!("restored {} users of {users}", r.users);
            }
            rates.wall.push(r.users as f64 / r.secs);
            rates.per_cpu.push(r.users as f64 / r.cpu_secs);
            rates.apply.push(r.users as f64 / (r.secs - r.finish_secs));
            rates.finish.push(r.users as f64 / r.finish_secs);
            restored_heap = engine.store().heap_bytes();
        }
        decode.push(users as f64 / decode_only(&flushes, &shape));
    }
    let restored_users_last = flushes.last().map_or(0, Flush::users).max(1);
    writeln!(out, "| measurement ({} rounds) | min | median |", o.repeat.max(1))?;
    writeln!(out, "|---|---|---|")?;
    let row = |out: &mut String, what: &str, v: &[f64]| {
        let (mn, md) = min_median(v);
        writeln!(out, "| {what} | {mn:.0} | {md:.0} |")
    };
    let [piped, one] = &rates;
    row(
        &mut out,
        "in-process restore, pipelined: reader thread decodes, this one applies, + finish (users/s)",
        &piped.wall,
    )?;
    let cpu_of = if o.parallel { "the whole process" } else { "both threads" };
    row(&mut out, &format!("... users per CPU second ({cpu_of})"), &piped.per_cpu)?;
    row(&mut out, "... records read and applied, without finish (users/s)", &piped.apply)?;
    row(
        &mut out,
        "in-process restore, one thread: Replayer::apply (decode + restore_user) + finish (users/s)",
        &one.wall,
    )?;
    let cpu_of = if o.parallel { "of the whole process" } else { "of the restoring thread" };
    row(&mut out, &format!("... users per CPU second {cpu_of}"), &one.per_cpu)?;
    row(&mut out, "... Replayer::apply of every record alone (users/s)", &one.apply)?;
    let finish: Vec<f64> = piped.finish.iter().chain(&one.finish).copied().collect();
    row(&mut out, "... Replayer::finish alone, both ways (users/s)", &finish)?;
    row(&mut out, "... decode alone (users/s)", &decode)?;
    let (mn, md) = min_median(&piped.wall);
    writeln!(
        out,
        "| MB/s of changelog (in process, pipelined) | {:.0} | {:.0} |",
        mn * bytes as f64 / n / 1e6,
        md * bytes as f64 / n / 1e6
    )?;

    if let Some(brokers) = &o.brokers {
        let rows = broker_restore(o, brokers, &flushes, &art, users as u64, bytes)?;
        out.push_str(&rows);
    }
    writeln!(out)?;
    writeln!(
        out,
        "restored engine (last partition): {:.1} bytes per user (FeatureStore::heap_bytes); peak RSS during restore {:.0} MB, with the encoded flush ({:.0} MB) held",
        restored_heap as f64 / restored_users_last as f64,
        mb(peak as f64),
        mb(bytes as f64)
    )?;
    Ok(out)
}

fn broker_restore(
    o: &StateBenchOptions,
    brokers: &str,
    flushes: &[Flush],
    art: &ModelArtifact,
    users: u64,
    bytes: usize,
) -> Result<String> {
    use rdkafka::config::ClientConfig;
    let records: usize = flushes.iter().map(Flush::len).sum();
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let mut out = String::new();
    let parts = o.partitions.max(1);
    let topic = format!("bench-state-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    let mut base = ClientConfig::new();
    // The service's default for every client (pipeline/kafka.rs): librdkafka's 1 s would stall
    // the restore consumer each time its local queue fills.
    base.set("bootstrap.servers", brokers).set("fetch.queue.backoff.ms", "10");
    crate::pipeline::restore::ensure_changelog(&base, &topic, parts, 1, Duration::from_secs(30))?;
    let producer: ThreadedProducer<DefaultProducerContext> = base
        .clone()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("acks", "all")
        .create()?;
    let t = Instant::now();
    for (p, f) in flushes.iter().enumerate() {
        for i in 0..f.len() {
            let (k, v) = f.get(i);
            loop {
                let mut rec = BaseRecord::<[u8], [u8]>::to(&topic).key(k).partition(p as i32);
                if let Some(v) = v {
                    rec = rec.payload(v);
                }
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        _,
                    )) => std::thread::sleep(Duration::from_millis(5)),
                    Err((e, _)) => return Err(e).context("producing the changelog"),
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let produce_secs = t.elapsed().as_secs_f64();
    drop(producer);

    let settings = crate::pipeline::restore::consumer_settings(&base, "bench-state");
    let cfg = EngineConfig { warm_up: WarmUp::Off, ..EngineConfig::default() };
    let cancel = AtomicBool::new(false);
    // The engine is handed back, so that freeing it (a gigabyte for 1M users, which the service
    // never does after a restore) falls outside the timed part, as in process.
    let restore_one = |p: i32| -> Result<(u64, Engine)> {
        let mut engine = Engine::new(art, PolicyConfig::default(), cfg.clone());
        let read =
            crate::pipeline::restore::restore_changelog(&settings, &topic, p, &mut engine, &cancel, &mut |_| {})?;
        Ok((read.restored.map_or(0, |r| r.users), engine))
    };
    let mut rates = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..o.repeat.max(1) {
        // The service's reader, then a bare consumer, in each round: a change in the machine's
        // load hits both alike.
        let t = Instant::now();
        let restored = each_partition(parts, o.parallel, &restore_one)?;
        let secs = t.elapsed().as_secs_f64();
        let got: u64 = restored.iter().map(|(users, _)| users).sum();
        drop(restored);
        if got != users {
            anyhow::bail!("restored {got} users of {users} from {topic}");
        }
        rates.push(users as f64 / secs);
        let t = Instant::now();
        let got: u64 = each_partition(parts, o.parallel, &|p| bare_read(&settings, &topic, p))?.into_iter().sum();
        if got != records as u64 {
            anyhow::bail!("read {got} records of {records} from {topic}");
        }
        bare.push(got as f64 / t.elapsed().as_secs_f64());
    }
    let (mn, md) = min_median(&rates);
    let how = if o.parallel { "at once, a thread each" } else { "one after another" };
    writeln!(out, "| broker restore: restore_changelog, {parts} partition(s) {how} (users/s) | {mn:.0} | {md:.0} |")?;
    let (bmn, bmd) = min_median(&bare);
    writeln!(
        out,
        "| ... a bare consumer reading the same records (poll, nothing else; records/s), the broker path's ceiling | {bmn:.0} | {bmd:.0} |"
    )?;
    let per_user = bytes as f64 / users.max(1) as f64;
    writeln!(out, "| ... MB/s of changelog (keys+values) | {:.0} | {:.0} |", mn * per_user / 1e6, md * per_user / 1e6)?;
    writeln!(out, "| produce (setup, one run, users/s) | {:.0} | |", users as f64 / produce_secs)?;
    if let Some(dir) = &o.broker_data_dir {
        let on_disk = topic_log_bytes(dir, &topic);
        writeln!(
            out,
            "| topic on the broker's disk (.log segments) | {:.1} MB, {:.1} bytes per user | |",
            mb(on_disk as f64),
            on_disk as f64 / users.max(1) as f64
        )?;
    }
    delete_topic(&base, &topic);
    Ok(out)
}

/// `f` of every partition, one after another or (`parallel`) at once, a thread each.
fn each_partition<T: Send>(parts: i32, parallel: bool, f: &(dyn Fn(i32) -> Result<T> + Sync)) -> Result<Vec<T>> {
    if !parallel {
        return (0..parts).map(f).collect();
    }
    std::thread::scope(|s| {
        let jobs: Vec<_> = (0..parts).map(|p| s.spawn(move || f(p))).collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a restore thread panicked"))))
            .collect()
    })
}

/// Read every record of `topic`/`partition` with the restore consumer's settings and do nothing
/// with them: how fast librdkafka and the broker deliver. Taken a batch at a time, as the
/// service's changelog reader takes them. Returns the records read.
fn bare_read(settings: &rdkafka::config::ClientConfig, topic: &str, partition: i32) -> Result<u64> {
    use crate::source::batch::QueueBatch;
    use rdkafka::consumer::Consumer;
    let c = crate::pipeline::restore::restore_consumer(settings)?;
    let (_, high) = c.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)?;
    c.assign(&tpl)?;
    let mut batch = QueueBatch::consumer_queue(&c, crate::state::pipelined::BATCH_RECORDS)
        .context("the bare consumer has no queue")?;
    let mut n = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        batch.fill(Duration::from_millis(200));
        for m in batch.iter() {
            match m.error() {
                None => {
                    n += 1;
                    std::hint::black_box(m.payload());
                    if m.offset() + 1 >= high {
                        return Ok(n);
                    }
                }
                Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => return Ok(n),
                Some(code) => anyhow::bail!("bare read: {code:?}"),
            }
        }
    }
    anyhow::bail!("bare read of {topic}/{partition}: {n} records in 120 s, not done")
}

/// Bytes of `topic`'s log segments under a broker's `log.dirs` (index files are preallocated
/// and would overstate it).
fn topic_log_bytes(dir: &std::path::Path, topic: &str) -> u64 {
    let prefix = format!("{topic}-");
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(e.path()) else { continue };
        for f in files.flatten() {
            if f.path().extension().is_some_and(|x| x == "log") {
                total += f.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

/// Leave the shared broker as found; a failure only leaves a topic behind.
fn delete_topic(base: &rdkafka::config::ClientConfig, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let Ok(admin) = base.create::<AdminClient<rdkafka::client::DefaultClientContext>>() else { return };
    let _ = futures::executor::block_on(admin.delete_topics(&[topic], &AdminOptions::new()));
}

/// A cheap deterministic hash for per-user draws (splitmix64).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit(z: u64) -> f64 {
    (mix(z) >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    day: f64,
    wall: f64,
    rss: u64,
    live: usize,
    evicted: u64,
}

/// The first sample from which live users stay within 2% of their final count: eviction keeps
/// pace with arrivals from there on.
fn steady_from(samples: &[Sample]) -> Option<usize> {
    let last = samples.last()?.live as f64;
    let mut from = None;
    for (i, s) in samples.iter().enumerate().rev() {
        if (s.live as f64 - last).abs() > 0.02 * last {
            break;
        }
        from = Some(i);
    }
    from
}

fn idle_bench(o: &StateBenchOptions, io: &IdleOptions, art: &ModelArtifact) -> Result<String> {
    let mut policy = PolicyConfig::default();
    // A short TTL must exceed churned_after; shrink the lifecycle with it.
    policy.lifecycle.dormant_after = Span::days(i64::from(io.ttl_days.max(2)) / 3);
    policy.lifecycle.churned_after = Span::days(i64::from(io.ttl_days.max(2)) * 2 / 3);
    let cfg =
        EngineConfig { warm_up: WarmUp::Off, state_ttl: Span::days(i64::from(io.ttl_days)), ..EngineConfig::default() };
    cfg.validate(&policy).map_err(|e| anyhow::anyhow!("bench engine config: {e}"))?;
    let mut engine = Engine::new(art, policy, cfg);
    engine.track_changes(true);
    let shape = Shape::of(engine.store().layout());
    let n = o.users.max(1);
    let end = T0 + i64::from(io.days) * DAY_MS;
    // Arrivals run to the end: once the first arrivals pass the TTL, evictions balance them.
    let arrive_ms = i64::from(io.days.max(1)) * DAY_MS;
    let burst = u64::from(o.events_per_user.max(1));
    let ttl_ms = i64::from(io.ttl_days) * DAY_MS;
    // (due, user, events left in the burst); active users' later events too.
    let mut queue: BinaryHeap<Reverse<(i64, u32, u32)>> = BinaryHeap::new();
    let mut next_user = 0u64;
    let mut id = String::new();
    let mut events = 0u64;
    let mut samples = Vec::new();
    let mut next_sample = T0;
    let mut next_flush = T0 + io.flush_every.ms();
    let mut prev_clock: Option<Vec<u8>> = None;
    let (mut flushes, mut flush_users, mut flush_bytes) = (0u64, 0u64, 0u64);
    let mut flush_live = 0u64;
    let start = Instant::now();
    let baseline = rss_bytes();
    loop {
        let arrival = (next_user < n).then(|| T0 + (next_user as i64) * arrive_ms / n as i64);
        let queued = queue.peek().map(|Reverse((t, _, _))| *t);
        let (ts, user, left) = match arrival {
            Some(a) if queued.is_none_or(|q| a <= q) => {
                next_user += 1;
                (a, (next_user - 1) as u32, burst as u32)
            }
            _ => match queue.pop() {
                Some(Reverse(x)) => x,
                None => break,
            },
        };
        if ts >= end {
            break;
        }
        while ts >= next_flush {
            let f = Flush::build(&mut engine, &shape, events as i64, prev_clock.as_deref(), false);
            flushes += 1;
            flush_users += f.users() as u64;
            flush_bytes += f.bytes() as u64;
            flush_live += engine.store().len() as u64;
            prev_clock = Some(f.clock_record().to_vec());
            next_flush += io.flush_every.ms();
        }
        while ts >= next_sample {
            samples.push(Sample {
                day: (next_sample - T0) as f64 / DAY_MS as f64,
                wall: start.elapsed().as_secs_f64(),
                rss: rss_bytes(),
                live: engine.store().len(),
                evicted: engine.counters.users_evicted,
            });
            next_sample += io.sample_every.ms();
        }
        let uid = user_id(&mut id, u64::from(user));
        engine.ingest_decisions(&event(uid, (user as usize) + left as usize, ts), &mut |_| {});
        events += 1;
        let draw = unit((u64::from(user) << 20) ^ events);
        if left > 1 {
            // The rest of the burst: hours apart.
            queue.push(Reverse((ts + HOUR_MS + (draw * 23.0 * HOUR_MS as f64) as i64, user, left - 1)));
        } else if unit(u64::from(user)) < io.active_share {
            // An active user: back every one to four days for a TTL's length after arriving,
            // then silent too, so the live population stops growing once the first arrivals
            // have been through both stages.
            let arrived = T0 + i64::from(user) * arrive_ms / n as i64;
            let next = ts + DAY_MS + (draw * 3.0 * DAY_MS as f64) as i64;
            if next < arrived + ttl_ms {
                queue.push(Reverse((next, user, 1)));
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let live = engine.store().len().max(1);
    let heap = engine.store().heap_bytes();
    let evicted = engine.counters.users_evicted;

    let mut out = String::new();
    writeln!(
        out,
        "idle: {n} users arriving over {:.0} days, {} events each in a burst, {:.0}% then active every 1-4 days for a TTL; TTL {}d; {} days of event time; {events} events in {wall:.1}s wall",
        arrive_ms as f64 / DAY_MS as f64,
        burst,
        io.active_share * 100.0,
        io.ttl_days,
        io.days
    )?;
    writeln!(out, "RSS before the stream: {:.0} MB\n", mb(baseline as f64))?;
    writeln!(out, "| event day | wall s | live users | evicted (total) | RSS MB |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    for s in &samples {
        writeln!(out, "| {:.0} | {:.1} | {} | {} | {:.0} |", s.day, s.wall, s.live, s.evicted, mb(s.rss as f64))?;
    }
    writeln!(out)?;
    if let Some(i) = steady_from(&samples) {
        let tail = &samples[i..];
        let lo = tail.iter().map(|s| s.rss).min().unwrap_or(0);
        let hi = tail.iter().map(|s| s.rss).max().unwrap_or(0);
        let (d0, d1) = (tail[0], tail[tail.len() - 1]);
        let ev = (d1.evicted - d0.evicted) as f64;
        writeln!(
            out,
            "steady from day {:.0} (live users within 2% of the final {}): RSS {:.0}..{:.0} MB ({:+.1}% from the first steady sample to the last)",
            d0.day,
            d1.live,
            mb(lo as f64),
            mb(hi as f64),
            100.0 * (d1.rss as f64 - d0.rss as f64) / (d0.rss as f64).max(1.0)
        )?;
        if d1.day > d0.day && d1.wall > d0.wall {
            writeln!(
                out,
                "eviction while steady: {:.0} users per day of event time, {:.0} per wall second (with the stream's own work)",
                ev / (d1.day - d0.day),
                ev / (d1.wall - d0.wall)
            )?;
        }
    }
    writeln!(out, "evicted over the run: {evicted} users, {:.0} per wall second", evicted as f64 / wall)?;
    writeln!(
        out,
        "final: {} live users; feature store {:.1} bytes per user (heap_bytes); RSS {:.1} bytes per live user above the pre-stream baseline",
        engine.store().len(),
        heap as f64 / live as f64,
        (rss_bytes().saturating_sub(baseline)) as f64 / live as f64
    )?;
    let fl = flushes.max(1) as f64;
    writeln!(
        out,
        "changelog, a flush every {}: {flushes} flushes, {:.0} records and {:.1} kB per flush, {:.1} bytes per changed user (incl. PREV/CLOCK/END), {:.2}% of live users changed per flush",
        io.flush_every,
        flush_users as f64 / fl,
        flush_bytes as f64 / fl / 1e3,
        flush_bytes as f64 / (flush_users.max(1)) as f64,
        100.0 * flush_users as f64 / (flush_live.max(1)) as f64
    )?;
    writeln!(
        out,
        "changelog volume: {:.1} bytes per live user per day of event time",
        flush_bytes as f64 / (flush_live as f64 / fl).max(1.0) / (f64::from(io.days))
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tchurnguard\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(123_456 * 1024));
    }

    #[test]
    fn vm_rss_missing_or_malformed_is_none() {
        assert_eq!(parse_vm_rss("VmHWM:\t 12 kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t twelve kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t 12 MB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t 12\n"), None);
    }

    fn s(live: usize) -> Sample {
        Sample { day: 0.0, wall: 0.0, rss: 0, live, evicted: 0 }
    }

    #[test]
    fn steady_state_starts_where_live_users_settle() {
        let v: Vec<Sample> = [10, 50, 90, 101, 105, 99, 100].into_iter().map(s).collect();
        assert_eq!(steady_from(&v), Some(5));
        let v: Vec<Sample> = [10, 50, 98, 101, 102, 99, 100].into_iter().map(s).collect();
        assert_eq!(steady_from(&v), Some(2));
        // A dip back out of the band ends the steady stretch there.
        let v: Vec<Sample> = [100, 100, 50, 100, 100].into_iter().map(s).collect();
        assert_eq!(steady_from(&v), Some(3));
        assert_eq!(steady_from(&[]), None);
    }
}
