//! Where events come from: files (`replay`, `train`, `evaluate`) and Kafka (`run`).

pub mod batch;
mod file;
pub mod kafka;

pub use file::*;
