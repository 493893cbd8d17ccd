//! The long-running service: model, metrics endpoint and the Kafka pipeline, wired together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::model::ModelArtifact;
use crate::pipeline::events::ServiceStarting;
use crate::pipeline::health::Health;
use crate::pipeline::http::{self, HttpState};
use crate::pipeline::kafka::{RunSummary, Service};
use crate::telemetry::Metrics;

/// Load the model and start `/metrics` (failing fast on either), then consume until `shutdown`.
/// `on_listening` receives the bound HTTP address.
pub async fn run(
    cfg: Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<RunSummary> {
    let model =
        ModelArtifact::load(&cfg.model.path).with_context(|| format!("model.path = {}", cfg.model.path.display()))?;
    ServiceStarting {
        model_version: &model.model_version,
        trained_at: &model.created_at,
        features: model.feature_names.len(),
        workers: cfg.runtime.worker_threads(),
    }
    .emit(&metrics);
    let health = Arc::new(Health::new());
    health.set_model_loaded(true);
    let addr: SocketAddr = cfg.http.listen.parse().context("http.listen")?;
    let state = HttpState { metrics: metrics.clone(), health: health.clone() };
    let (bound, server) =
        http::bind(addr, state).await.with_context(|| format!("http.listen = {addr}: cannot bind"))?;
    on_listening(bound);
    tracing::info!(config = %cfg.redacted_toml().replace('\n', "; "), "starting");
    let shadow = match &cfg.model.shadow_path {
        Some(p) => Some(ModelArtifact::load(p).with_context(|| format!("model.shadow_path = {}", p.display()))?),
        None => None,
    };
    let mut service = Service::new(cfg, model, metrics, health);
    if let Some(s) = shadow {
        tracing::info!(shadow = %s.model_version, "shadow scoring on");
        service = service.with_shadow(s).map_err(anyhow::Error::msg)?;
    }
    let summary = service.run(shutdown).await?;
    server.abort();
    Ok(summary)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
