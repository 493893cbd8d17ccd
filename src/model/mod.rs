//! Model training, scoring, evaluation metrics and reports.

pub mod artifact;
pub mod dataset;
pub mod export;
pub mod leadtime;
pub mod metrics;
pub mod newton;
pub mod reload;
pub mod report;
pub mod score;
pub mod train;

pub use artifact::ModelArtifact;
pub use score::Scorer;
