//! Durable per-partition state: the engine's records in a versioned binary encoding, written to
//! a compacted changelog topic and, as a cache for fast restarts, to local snapshot files.

pub mod batch;
pub mod changelog;
pub mod codec;
pub mod pipelined;
