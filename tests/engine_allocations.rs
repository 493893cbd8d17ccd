//! Deciding allocates nothing: the engine hands out typed decisions borrowed from its state, and
//! the sink encodes them into a reused buffer. Counted with a global allocator that counts this
//! thread's allocations only (the test harness allocates on other threads).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use churnguard::engine::{Engine, EngineConfig, WarmUp};
use churnguard::event::parse_event;
use churnguard::features::spec::FeatureSpec;
use churnguard::model::artifact::{ModelArtifact, TierThreshold};
use churnguard::policy::PolicyConfig;
use churnguard::sink::kafka::Staging;
use churnguard::time::{Span, DAY_MS};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCS.with(Cell::get))
}

const T0: i64 = 1_767_225_600_000;

fn engine() -> Engine {
    let spec = FeatureSpec { event_types: vec!["login".into()], ..FeatureSpec::default() };
    let tiers = vec![
        TierThreshold { name: "high".into(), min_score: 0.9 },
        TierThreshold { name: "medium".into(), min_score: 0.5 },
    ];
    let model = ModelArtifact::from_weights(spec, "alloc-1", &[("recency", 2.0)], -4.0, tiers).expect("model");
    let policy = PolicyConfig { control_fraction: 0.5, cooldown: Span::days(2), ..PolicyConfig::default() };
    Engine::new(&model, policy, EngineConfig { warm_up: WarmUp::Off, ..EngineConfig::default() })
}

/// 200 users active for three days, then silent: each is flagged as the clock moves on.
fn history(engine: &mut Engine) {
    for d in 0..3 {
        for u in 0..200 {
            let line = format!(r#"{{"user_id":"user-{u:04}","event_type":"login","ts":{}}}"#, T0 + d * DAY_MS + u);
            let ev = parse_event(line.as_bytes(), 4096).expect("valid event");
            engine.ingest_decisions(&ev, &mut |_| {});
        }
    }
}

#[test]
fn typed_decisions_and_their_encoding_allocate_nothing_per_decision() {
    // What allocates here is the timer wheel growing into buckets of new days (amortised, not
    // per decision); one allocation per decision anywhere on the path would be 200 or more.
    let mut e = engine();
    history(&mut e);
    let mut staging = Staging::default();
    // Grow the reused buffers once, as a running partition has long since done.
    e.advance_watermark_decisions(T0 + 20 * DAY_MS, &mut |d| staging.push(d, T0));
    assert!(staging.len() >= 200, "the warm-up round decided for every user ({})", staging.len());
    let grown = staging.len();
    let mut decisions = 0u64;
    let (_, allocs) = counted(|| {
        for day in 21..60 {
            staging.clear();
            e.advance_watermark_decisions(T0 + day * DAY_MS, &mut |d| {
                decisions += 1;
                staging.push(d, T0 + day * DAY_MS);
            });
        }
    });
    assert!(decisions >= 200, "silent users were decided again after the cooldown ({decisions})");
    assert!(staging.len() <= grown * 2, "staging reused");
    eprintln!("typed path: {allocs} allocations for {decisions} decisions");
    assert!(allocs * 4 < decisions, "{allocs} allocations for {decisions} decisions");
}

#[test]
fn owned_records_cost_allocations_that_the_typed_path_avoids() {
    // The contrast that shows the counter works: building the owned record allocates per decision.
    let mut e = engine();
    history(&mut e);
    let mut n = 0u64;
    let (_, allocs) = counted(|| e.advance_watermark(T0 + 20 * DAY_MS, &mut |_iv| n += 1));
    assert!(n >= 200);
    eprintln!("owned records: {allocs} allocations for {n} decisions");
    assert!(allocs >= 10 * n, "{allocs} allocations for {n} owned records");
}
