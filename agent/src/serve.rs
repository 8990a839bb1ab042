//! The agent's HTTP endpoint: `/metrics` (the [`Metrics`] registry as OpenMetrics text) for
//! the scraper, `/healthz` (the process answers) and `/readyz` (the agent runs what it was
//! given: a [`Readiness`] the run mode sets) for the kubelet's probes: `airssys-probe`, the
//! endpoint the operator serves too.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::Error;
use crate::metrics::Metrics;

/// Whether the agent is ready. Manifest mode sets it once the manifest's components run;
/// node mode once it has converged on its first list of Placements, and clears it when it
/// stops (so a stopping agent leaves the Service's endpoints before it exits).
pub use airssys_probe::Readiness;

/// Binds `addr` and returns the bound address (useful with port 0) and the future that
/// serves `/metrics`, `/healthz` and `/readyz` until it is dropped (spawn it).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send + 'static), Error> {
    let probe = airssys_probe::Probe::new(
        move || metrics.encode(),
        readiness,
        "the agent has not started its components yet",
    );
    airssys_probe::serve(addr, probe)
        .await
        .map_err(|source| Error::Io {
            what: format!("serve metrics on {addr}"),
            source,
        })
}

/// Binds `addr`, serves on a spawned task for the rest of the process, logs and returns the
/// bound address.
pub async fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
) -> Result<SocketAddr, Error> {
    let (bound, serving) = serve(addr, metrics, readiness).await?;
    tokio::spawn(serving);
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}
