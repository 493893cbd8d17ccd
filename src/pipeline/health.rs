//! What `/readyz` answers: ready means progress is possible right now.
//!
//! Written by the runtime (assignment, restores, broker probe, permanent output failures), read
//! by the HTTP handler. Plain atomics and one small mutex: nothing here is on the per-event path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Health {
    model_loaded: AtomicBool,
    /// The last broker probe got an answer.
    broker_reachable: AtomicBool,
    /// Why the last probe failed (no user content; a librdkafka error code).
    broker_error: Mutex<String>,
    assigned: AtomicI64,
    stopping: AtomicBool,
    /// Partitions being restored, with events read so far.
    restoring: Mutex<BTreeMap<String, u64>>,
    /// The last output the broker refused for good: (topic kind, error code). Reported, not
    /// blocking: a permanent failure does not stop progress.
    last_permanent_failure: Mutex<Option<String>>,
}

/// The verdict and the lines of `/readyz`'s body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub lines: Vec<String>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    pub fn set_model_loaded(&self, v: bool) {
        self.model_loaded.store(v, Ordering::SeqCst);
    }

    pub fn set_broker(&self, reachable: Result<(), String>) {
        match reachable {
            Ok(()) => self.broker_reachable.store(true, Ordering::SeqCst),
            Err(e) => {
                self.broker_reachable.store(false, Ordering::SeqCst);
                if let Ok(mut g) = self.broker_error.lock() {
                    *g = e;
                }
            }
        }
    }

    pub fn broker_reachable(&self) -> bool {
        self.broker_reachable.load(Ordering::SeqCst)
    }

    pub fn set_assigned(&self, n: usize) {
        self.assigned.store(n as i64, Ordering::SeqCst);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn restore_progress(&self, partition: &str, events: u64) {
        if let Ok(mut r) = self.restoring.lock() {
            r.insert(partition.to_string(), events);
        }
    }

    pub fn restore_done(&self, partition: &str) {
        if let Ok(mut r) = self.restoring.lock() {
            r.remove(partition);
        }
    }

    pub fn permanent_failure(&self, what: String) {
        if let Ok(mut g) = self.last_permanent_failure.lock() {
            *g = Some(what);
        }
    }

    pub fn readiness(&self) -> Readiness {
        let mut lines = Vec::new();
        let mut ready = true;
        if self.stopping.load(Ordering::SeqCst) {
            ready = false;
            lines.push("not ready: shutting down".to_string());
        }
        if !self.model_loaded.load(Ordering::SeqCst) {
            ready = false;
            lines.push("not ready: no model loaded".to_string());
        }
        if !self.broker_reachable() {
            ready = false;
            let why = self.broker_error.lock().map(|g| g.clone()).unwrap_or_default();
            lines.push(format!("not ready: no broker answers ({why})"));
        }
        let assigned = self.assigned.load(Ordering::SeqCst);
        if assigned == 0 {
            ready = false;
            lines.push("not ready: this instance holds no partitions".to_string());
        } else {
            lines.push(format!("partitions assigned: {assigned}"));
        }
        if let Ok(r) = self.restoring.lock() {
            for (p, n) in r.iter() {
                lines.push(format!("restoring {p}: {n} events read"));
            }
        }
        if let Ok(g) = self.last_permanent_failure.lock() {
            if let Some(f) = g.as_ref() {
                lines.push(format!("warning: last output refused for good: {f}"));
            }
        }
        if ready {
            lines.insert(0, "ready".to_string());
        }
        Readiness { ready, lines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Health {
        let h = Health::new();
        h.set_model_loaded(true);
        h.set_broker(Ok(()));
        h.set_assigned(2);
        h
    }

    #[test]
    fn ready_only_with_model_broker_and_partitions() {
        let h = healthy();
        assert!(h.readiness().ready);
        h.set_assigned(0);
        let r = h.readiness();
        assert!(!r.ready);
        assert!(r.lines.iter().any(|l| l.contains("no partitions")), "{r:?}");
    }

    #[test]
    fn an_unreachable_broker_is_not_ready_and_says_why() {
        let h = healthy();
        h.set_broker(Err("BrokerTransportFailure".into()));
        let r = h.readiness();
        assert!(!r.ready);
        assert!(r.lines.iter().any(|l| l.contains("BrokerTransportFailure")), "{r:?}");
        h.set_broker(Ok(()));
        assert!(h.readiness().ready);
    }

    #[test]
    fn restores_and_permanent_failures_show_in_the_body_without_blocking() {
        let h = healthy();
        h.restore_progress("events/3", 1200);
        h.permanent_failure("intervention: MessageSizeTooLarge".into());
        let r = h.readiness();
        assert!(r.ready, "{r:?}");
        assert!(r.lines.iter().any(|l| l.contains("restoring events/3: 1200")), "{r:?}");
        assert!(r.lines.iter().any(|l| l.contains("MessageSizeTooLarge")), "{r:?}");
        h.restore_done("events/3");
        assert!(!h.readiness().lines.iter().any(|l| l.contains("restoring")));
    }

    #[test]
    fn shutting_down_is_not_ready() {
        let h = healthy();
        h.set_stopping();
        assert!(!h.readiness().ready);
    }
}
