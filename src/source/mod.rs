//! Where events come from: files (`replay`, `train`, `evaluate`) and Kafka (`run`).

mod file;
pub mod kafka;

pub use file::*;
