//! The agent's HTTP endpoint: `/metrics` (the [`Metrics`] registry as OpenMetrics text) for
//! the scraper, `/healthz` (the process answers) and `/readyz` (the agent runs what it was
//! given: a [`Readiness`] the run mode sets) for the kubelet's probes. Served by hyper over
//! tokio, as the operator serves its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::error::Error;
use crate::metrics::{CONTENT_TYPE, Metrics};

/// Whether the agent is ready. Manifest mode sets it once the manifest's components run;
/// node mode once it has converged on its first list of Placements, and clears it when it
/// stops (so a stopping agent leaves the Service's endpoints before it exits).
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

const PLAIN: &str = "text/plain; charset=utf-8";

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
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "use GET\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/metrics" => text(StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".to_owned()),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, PLAIN, "ok\n".to_owned()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "the agent has not started its components yet\n".to_owned(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// Binds `addr` and returns the bound address (useful with port 0) and the future that
/// serves `/metrics`, `/healthz` and `/readyz` until it is dropped (spawn it).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send + 'static), Error> {
    let io_err = |source| Error::Io {
        what: format!("serve metrics on {addr}"),
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
                    tracing::warn!(error = %e, "metrics endpoint: accepting a connection failed");
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
                    tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed");
                }
            });
        }
    };
    Ok((bound, serving))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn get(path: &str, method: Method) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    #[test]
    fn paths_answer_as_documented() {
        let metrics = Metrics::new();
        let ready = Readiness::default();
        // path, method, ready, status
        let table = [
            ("/metrics", Method::GET, false, StatusCode::OK),
            ("/metrics", Method::HEAD, false, StatusCode::OK),
            ("/healthz", Method::GET, false, StatusCode::OK),
            (
                "/readyz",
                Method::GET,
                false,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            ("/readyz", Method::GET, true, StatusCode::OK),
            ("/nope", Method::GET, true, StatusCode::NOT_FOUND),
            (
                "/metrics",
                Method::POST,
                true,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        ];
        for (path, method, is_ready, status) in table {
            ready.set(is_ready);
            let response = respond(&get(path, method.clone()), &metrics, &ready);
            assert_eq!(
                response.status(),
                status,
                "{method} {path} ready={is_ready}"
            );
        }
        let response = respond(&get("/metrics", Method::GET), &metrics, &ready);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    }
}
