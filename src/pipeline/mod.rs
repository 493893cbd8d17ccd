//! The runtimes around the [`crate::engine::Engine`]: file replay, and the Kafka service with
//! its per-partition workers.

pub mod changelog;
pub mod events;
pub mod health;
pub mod http;
pub mod kafka;
pub mod offsets;
pub mod partition;
pub mod replay;
pub mod restore;
pub mod transaction;
