//! Sources and sinks around the [`crate::engine::Engine`]: file replay now, Kafka in `run`.

pub mod http;
pub mod kafka;
pub mod replay;
