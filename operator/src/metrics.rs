//! Prometheus metrics of the controllers, and a minimal HTTP endpoint for them.
//!
//! The endpoint speaks just enough HTTP/1.1 for a scraper and a liveness probe (`GET /metrics`,
//! `GET /healthz`), so the operator needs no web framework.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::Error;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<ControllerLabels, Counter>,
    duration: HistogramFamily,
    decisions: Family<ReasonLabels, Counter>,
    events: Family<ReasonLabels, Counter>,
    event_errors: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("airssys_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ControllerLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let decisions = Family::<ReasonLabels, Counter>::default();
        let events = Family::<ReasonLabels, Counter>::default();
        let event_errors = Counter::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciliations that returned an error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        registry.register(
            "decisions",
            "Trust decisions written, by Approved reason",
            decisions.clone(),
        );
        registry.register(
            "events",
            "Kubernetes Events published, by reason",
            events.clone(),
        );
        registry.register(
            "event_publish_failures",
            "Kubernetes Events the API server did not accept",
            event_errors.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            decisions,
            events,
            event_errors,
        }
    }
}

/// Measures one reconciliation; records its duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    fn labels(controller: &str) -> ControllerLabels {
        ControllerLabels {
            controller: controller.to_owned(),
        }
    }

    /// Counts a reconciliation and times it until the returned guard drops.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer {
        let labels = Self::labels(controller);
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.duration.get_or_create(&labels).clone(),
            start: Instant::now(),
        }
    }

    pub fn failure(&self, controller: &str) {
        self.failures.get_or_create(&Self::labels(controller)).inc();
    }

    pub fn decision(&self, reason: &str) {
        self.decisions
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn event(&self, reason: &str, published: bool) {
        self.events
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        if !published {
            self.event_errors.inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr` and serves `/metrics` and `/healthz` until the task is dropped. Returns the
/// bound address (useful with port 0) and the serving future.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<(SocketAddr, impl Future<Output = ()>), Error> {
    let io_err = |source| Error::Metrics {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(io_err)?;
    let bound = listener.local_addr().map_err(io_err)?;
    let serving = async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &metrics).await {
                    debug!(%peer, error = %e, "metrics: connection failed");
                }
            });
        }
    };
    Ok((bound, serving))
}

/// Reads one request head and answers it; the connection closes afterwards.
async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    // A bounded head: scrapers send a few hundred bytes.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = Metrics::default();
        drop(m.reconcile("component"));
        m.decision("PendingApproval");
        m.event("Denied", false);
        let text = m.render();
        assert!(
            text.contains("airssys_operator_reconciles_total{controller=\"component\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("airssys_operator_decisions_total{reason=\"PendingApproval\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("airssys_operator_event_publish_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "airssys_operator_reconcile_duration_seconds_count{controller=\"component\"} 1"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics.decision("Denied");
        let (addr, serving) = serve("127.0.0.1:0".parse().unwrap(), metrics)
            .await
            .unwrap();
        let task = tokio::spawn(serving);
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let metrics_page = get("/metrics").await;
        assert!(metrics_page.starts_with("HTTP/1.1 200"), "{metrics_page}");
        assert!(
            metrics_page.contains("reason=\"Denied\"} 1"),
            "{metrics_page}"
        );
        assert!(get("/healthz").await.ends_with("ok\n"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
