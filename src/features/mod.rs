//! Per-user sliding-window features in event time: one code path for training and serving.

pub mod bound;
mod ids;
pub(crate) mod prefault;
pub(crate) mod prefetch;
pub mod spec;
pub mod state;
pub mod store;
pub mod window;

pub use spec::{FeatureSpec, Transform};
pub use state::{Applied, Layout, UserRef};
pub use store::FeatureStore;
pub use window::SLOT_COUNT_MAX;

/// The most windows a spec may list (bounded so the vector is built on the stack).
pub const MAX_WINDOWS: usize = 8;
/// The most type buckets (listed types plus `other`).
pub const MAX_TYPES: usize = 33;
