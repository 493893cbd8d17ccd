//! Model training, scoring, evaluation metrics and reports.

pub mod metrics;
pub mod report;
