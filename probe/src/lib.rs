//! The HTTP endpoint the operator and the agent both serve: `/metrics` (OpenMetrics text the
//! binary renders) for the scraper, `/healthz` (the process answers) and `/readyz` (a
//! [`Readiness`] flag the binary sets) for the kubelet's probes. Served by hyper over tokio,
//! HTTP/1.1, with a bounded wait for request heads.

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

/// The content type of the `/metrics` answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";
/// A request head slower than this is dropped (a stalled client must not hold a connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the process is ready to be an endpoint; cleared again when it stops, so a stopping
/// process leaves its Service's endpoints before it exits.
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

/// What the endpoint answers with: the metrics, the readiness, and why `/readyz` fails.
#[derive(Clone)]
pub struct Probe {
    render: Arc<dyn Fn() -> String + Send + Sync>,
    readiness: Readiness,
    not_ready: &'static str,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("readiness", &self.readiness)
            .field("not_ready", &self.not_ready)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// `render` gives the OpenMetrics text; `not_ready` is `/readyz`'s answer while not ready
    /// (one line, without the newline).
    pub fn new(
        render: impl Fn() -> String + Send + Sync + 'static,
        readiness: Readiness,
        not_ready: &'static str,
    ) -> Self {
        Self {
            render: Arc::new(render),
            readiness,
            not_ready,
        }
    }

    /// The answer to one request.
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                PLAIN,
                "use GET\n".to_owned(),
            );
        }
        match request.uri().path() {
            "/metrics" => text(StatusCode::OK, OPENMETRICS, (self.render)()),
            "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".to_owned()),
            "/readyz" if self.readiness.is_ready() => {
                text(StatusCode::OK, PLAIN, "ok\n".to_owned())
            }
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("{}\n", self.not_ready),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "not found; try /metrics, /healthz or /readyz\n".to_owned(),
            ),
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Binds `addr` and returns the bound address (useful with port 0) and the future that serves
/// `probe` until it is dropped (spawn it).
pub async fn serve(
    addr: SocketAddr,
    probe: Probe,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
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
            let probe = probe.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = probe.respond(&request);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn probe(ready: &Readiness) -> Probe {
        Probe::new(
            || "m_total 1\n# EOF\n".to_owned(),
            ready.clone(),
            "not started yet",
        )
    }

    #[test]
    fn paths_answer_as_documented() {
        let ready = Readiness::default();
        let p = probe(&ready);
        // (path, method, ready, status)
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
            let request = Request::builder()
                .method(method.clone())
                .uri(path)
                .body(())
                .unwrap();
            let response = p.respond(&request);
            assert_eq!(
                response.status(),
                status,
                "{method} {path} ready={is_ready}"
            );
        }
        let request = Request::get("/metrics").body(()).unwrap();
        assert_eq!(
            p.respond(&request).headers()[header::CONTENT_TYPE],
            OPENMETRICS
        );
    }

    /// Sends one request over a real HTTP/1.1 connection.
    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
        use http_body_util::{BodyExt as _, Empty};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::get(path)
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_over_http_and_readiness_follows_the_flag() {
        let ready = Readiness::default();
        let (addr, serving) = serve("127.0.0.1:0".parse().unwrap(), probe(&ready))
            .await
            .unwrap();
        let task = tokio::spawn(serving);
        assert_eq!(
            get(addr, "/metrics").await,
            (StatusCode::OK, "m_total 1\n# EOF\n".to_owned())
        );
        assert_eq!(
            get(addr, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not started yet\n".to_owned()
            )
        );
        ready.set(true);
        assert_eq!(
            get(addr, "/readyz").await,
            (StatusCode::OK, "ok\n".to_owned())
        );
        task.abort();
    }
}
