//! churnguard: real-time churn prediction over activity event streams.
//!
//! Data flows one way: source -> features -> model -> policy -> sink. The same
//! [`features`] code computes the vectors a model is trained on and the vectors it serves.

pub mod bench;
pub mod cli;
pub mod config;
pub mod decision;
pub mod demo;
pub mod engine;
pub mod event;
pub mod features;
pub mod hash;
pub mod html;
pub mod intervention;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod population;
pub mod progress;
pub mod service;
pub mod sim;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod term;
pub mod time;
pub mod timers;
pub mod uplift;
