//! Outgoing HTTP: [`GrantedHttp`] checks host and port before DNS, resolves, checks the
//! resolved address (private and loopback ranges need an explicit grant), and connects to
//! exactly the address it checked ([`send_to`]), for HTTPS too: TLS runs over that
//! connection with the original host name for SNI and certificate verification, so a
//! second DNS answer (rebinding) never gets a say.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::resources;
use crate::context::InstanceScope;
use crate::grant::CapabilityKind;

/// `wasi:http` hooks that enforce the network grant on every outgoing request of one
/// instance.
#[derive(Debug)]
pub struct GrantedHttp {
    scope: InstanceScope,
    /// Outgoing connections this instance holds open (each is a host descriptor until its
    /// connection task ends).
    connections: Arc<AtomicUsize>,
}

impl GrantedHttp {
    pub fn new(scope: InstanceScope) -> Self {
        Self {
            scope,
            connections: Arc::default(),
        }
    }
}

/// One open outgoing connection, counted while it lives.
struct Connection(Arc<AtomicUsize>);

impl Connection {
    fn open(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for GrantedHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>>
            + Send,
    > {
        let _ = fut;
        let ctx = self.scope.clone();
        let connections = self.connections.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let host = uri
                .host()
                .ok_or(HttpError::HttpRequestUriInvalid)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let target = format!("{host}:{port}");
            let literal: Option<IpAddr> = host.parse().ok();
            let addrs: Vec<IpAddr> = match literal {
                Some(ip) => vec![ip],
                None => {
                    if !ctx.grants.may_resolve(&host, port) {
                        ctx.denied(CapabilityKind::Network, &target);
                        return Err(HttpError::HttpRequestDenied);
                    }
                    tokio::net::lookup_host((host.as_str(), port))
                        .await
                        .map_err(|_| HttpError::DnsError {
                            rcode: None,
                            info_code: None,
                        })?
                        .map(|a| a.ip())
                        .collect()
                }
            };
            let name = literal.is_none().then_some(host.as_str());
            let Some(ip) = addrs
                .iter()
                .copied()
                .find(|ip| ctx.grants.check_connect(name, *ip, port))
            else {
                let resolved: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                ctx.denied(
                    CapabilityKind::Network,
                    &format!("{target} (resolved: {})", resolved.join(",")),
                );
                return Err(HttpError::HttpRequestDenied);
            };
            ctx.granted(CapabilityKind::Network);
            // Each connection holds a descriptor while it lives: bounded per instance and by
            // the node budget like files and sockets, so requests left in flight cannot use up
            // the agent's descriptors.
            // Counted before the check, so requests racing each other cannot all pass it.
            let connection = Connection::open(&connections);
            let others = connections.load(Ordering::Relaxed).saturating_sub(1);
            if !resources::may_open(others) {
                ctx.quota_exceeded(resources::QUOTA);
                return Err(HttpError::ConnectionLimitReached);
            }
            // Connect to the address we checked, never to a second lookup's answer (DNS
            // rebinding); the URI and Host header keep the name, TLS verifies it.
            let (response, io) =
                send_to(request, SocketAddr::new(ip, port), &web_pki_tls()?, options).await?;
            let io = async move {
                let _connection = connection;
                Box::into_pin(io).await
            };
            Ok((response, Box::new(io) as IoFuture))
        })
    }
}

/// TLS client settings for outgoing HTTPS with `roots` as the trust store (ring, the
/// provider the rest of the agent uses).
pub fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HttpError::InternalError(Some(e.to_string())))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The trust store guests get: the Mozilla web PKI roots, as wasmtime-wasi-http's own
/// `default_send_request` uses. Built once per process.
pub fn web_pki_tls() -> Result<Arc<rustls::ClientConfig>, HttpError> {
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = TLS.get() {
        return Ok(config.clone());
    }
    let config = tls_config(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })?;
    Ok(TLS.get_or_init(|| config).clone())
}

/// A stream hyper can drive: plain TCP or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T> Stream for T where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static
{
}

/// Sends `request` over one HTTP/1.1 connection to exactly `addr`: no name resolution
/// happens here. For `https` the TLS handshake uses the URI's host (name or IP literal) for
/// SNI and certificate verification against `tls`'s roots. Otherwise it behaves as
/// wasmtime-wasi-http 48's `default_send_request` (same timeouts and defaults, same error
/// values), whose connection code this follows.
pub async fn send_to<B>(
    mut request: http::Request<B>,
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError>
where
    B: http_body::Body<Data = Bytes, Error = HttpError> + Send + 'static,
{
    let uri = request.uri().clone();
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let default = Duration::from_secs(600);
    let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(default);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(default);
    let between_bytes_timeout = options
        .and_then(|o| o.between_bytes_timeout)
        .unwrap_or(default)
        // tokio panics on a zero interval.
        .max(Duration::from_nanos(1));

    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    let stream: Box<dyn Stream> = if https {
        let host = uri
            .host()
            .ok_or(HttpError::HttpRequestUriInvalid)?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = match host.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => rustls::pki_types::ServerName::try_from(host.to_owned())?,
        };
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let tls_stream = tokio::time::timeout(connect_timeout, connector.connect(server_name, tcp))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Tls)?;
        Box::new(tls_stream)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;

    // Origin form on the wire: scheme and authority only go to a proxy.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;

    let send = async move {
        let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)??;
        let mut timeout = tokio::time::interval(between_bytes_timeout);
        timeout.reset();
        Ok::<_, HttpError>(response.map(|incoming| TimedBody { incoming, timeout }))
    };
    let mut send = std::pin::pin!(send);
    let mut conn = Some(conn);
    // Wait for the response while driving the connection.
    let response = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result),
        Poll::Pending => {
            let Some(c) = conn.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(c).poll(cx));
            conn = None;
            match done {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(HttpError::from(e))),
            }
        }
    })
    .await?;
    let io = async move {
        match conn {
            None => Ok(()),
            Some(conn) => conn.await.map_err(|e| {
                if e.is_timeout() {
                    HttpError::HttpResponseTimeout
                } else {
                    HttpError::from(e)
                }
            }),
        }
    };
    Ok((
        response.map(BodyExt::boxed_unsync),
        Box::new(io) as IoFuture,
    ))
}

/// A response body that fails when no frame arrives for the between-bytes timeout.
struct TimedBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}
