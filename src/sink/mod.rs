//! Where decisions go: Kafka topics in `run` (interventions, control, dead letters); `replay`
//! writes JSONL files (crate::pipeline::replay).

pub mod kafka;
