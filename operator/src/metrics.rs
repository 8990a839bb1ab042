//! Prometheus metrics of the controllers, and the operator's HTTP endpoint: `/metrics` for the
//! scraper, `/healthz` (the process answers) and `/readyz` (the controllers run, or with
//! leader election this replica serves and stands by) for the kubelet's probes. Served by hyper, which the operator already links through kube.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
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

/// Whether the operator is ready: set while its controllers run (with leader election, also
/// while a standby waits), cleared when they stop (so a shutting-down operator leaves the
/// Service's endpoints before it exits).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request head slower than this is dropped (a stalled client must not hold a connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// The answer to one request: which path serves what.
pub fn respond<B>(
    request: &Request<B>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "use GET\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/metrics" => text(StatusCode::OK, OPENMETRICS, metrics.render()),
        "/healthz" => text(StatusCode::OK, plain, "ok\n".to_owned()),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, plain, "ok\n".to_owned()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            plain,
            "the controllers are not running\n".to_owned(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            plain,
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
/// Returns the bound address (useful with port 0) and the serving future.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
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
                    // Out of file descriptors, usually: wait instead of spinning.
                    warn!(error = %e, "metrics endpoint: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (metrics, readiness) = (metrics.clone(), readiness.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&request, &metrics, &readiness);
                    async move { Ok::<_, Infallible>(response) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    debug!(%peer, error = %e, "metrics endpoint: connection failed");
                }
            });
        }
    };
    Ok((bound, serving))
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

    /// GETs `path` from `addr` over a real HTTP/1.1 connection.
    async fn get(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, String) {
        use http_body_util::{BodyExt as _, Empty};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics.decision("Denied");
        let readiness = Readiness::default();
        let (addr, serving) = serve("127.0.0.1:0".parse().unwrap(), metrics, readiness.clone())
            .await
            .unwrap();
        let task = tokio::spawn(serving);

        let (status, page) = get(addr, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("reason=\"Denied\"} 1"), "{page}");
        assert!(page.ends_with("# EOF\n"), "{page}");
        assert_eq!(
            get(addr, Method::GET, "/healthz").await,
            (StatusCode::OK, "ok\n".to_owned())
        );

        // Not ready until the controllers run, and not ready again once they stop.
        let (status, _) = get(addr, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        readiness.set(true);
        assert_eq!(
            get(addr, Method::GET, "/readyz").await,
            (StatusCode::OK, "ok\n".to_owned())
        );
        readiness.set(false);
        let (status, _) = get(addr, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        let (status, body) = get(addr, Method::GET, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("/metrics"), "{body}");
        let (status, _) = get(addr, Method::POST, "/metrics").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        task.abort();
    }
}
