//! HTTP components: the agent serves a component that exports `wasi:http/incoming-handler`
//! on its own listener, one fresh pooled instance per request.
//!
//! Per request, in order: the route (`host`, `pathPrefix`: 404 when it is not the
//! component's), the concurrency limit (503 with `Retry-After`, audited as the
//! `concurrency` quota), a declared body over `maxRequestBodyBytes` (413), then an instance
//! from the [`HttpPre`] built once per digest, in a `Store` with the component's memory
//! limit, CPU budget per request (epoch deadline) and fuel, and the wall-clock
//! `requestTimeout` around the whole exchange (504 before the response starts; after, the
//! response is cut off). A request body that grows past its limit fails the guest's read
//! (413 if the guest has not answered); a response body that grows past
//! `maxResponseBodyBytes` is cut off and the instance stopped. Outgoing HTTP goes through
//! the instance's [`crate::host::http::GrantedHttp`] like any instance's: ungranted hosts are
//! refused and audited. A trap, CPU exhaustion or timeout kills only that request's instance.
//!
//! Update: requests that started keep the revision they started with; new requests get the
//! new one (a new listening address is bound before the old listener closes). Stop and a
//! moved address drain: the listener closes, idle keep-alive connections close, requests in
//! flight finish (bounded by `requestTimeout`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use airssys_crds::http::{HttpLimits, HttpSpec};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{Error as HttpError, WasiBody, WasiHttpView};

use crate::actor::{ActorState, ActorStatus};
use crate::audit::InstanceIdentity;
use crate::context::{ComponentContext, InstanceScope};
use crate::engine::{AgentEngine, HttpPre};
use crate::error::Error;
use crate::instance::{Kill, arm, audit_kill, classify, new_store};
use crate::limits::Quota;

/// Where and how a component is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// The address to listen on (node mode: the advertised address and the Placement's
    /// `targetPort`; local mode: `--advertise-address` and `http.port`).
    pub listen: SocketAddr,
    /// The route and the limits as written.
    pub spec: HttpSpec,
    /// The limits, resolved.
    pub limits: HttpLimits,
}

/// Seconds a 503 tells the client to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// One revision of an HTTP component: what a request runs.
pub struct HttpRevision {
    pub ctx: Arc<ComponentContext>,
    pub pre: HttpPre,
    pub settings: HttpSettings,
    /// `maxConcurrentRequests`: a request holds a permit until its instance is gone.
    permits: Arc<Semaphore>,
    /// The component as a whole (instance 0): what refusals before any instance name.
    whole: InstanceScope,
}

impl std::fmt::Debug for HttpRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRevision")
            .field("component", &self.ctx.id)
            .field("digest", &self.ctx.digest)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl HttpRevision {
    pub fn new(ctx: Arc<ComponentContext>, pre: HttpPre, settings: HttpSettings) -> Self {
        let whole = InstanceScope {
            identity: InstanceIdentity::of(&ctx.identity, 0),
            ctx: ctx.clone(),
        };
        Self {
            permits: Arc::new(Semaphore::new(
                settings.limits.max_concurrent_requests as usize,
            )),
            ctx,
            pre,
            settings,
            whole,
        }
    }
}

/// What a component's listeners share: the current revision and the status node mode reads.
struct Shared {
    engine: AgentEngine,
    revision: RwLock<Arc<HttpRevision>>,
    status: Arc<ActorStatus>,
    /// Every request's instance task, of any revision, holds a receiver: a stop waits until
    /// none is left (`closed`).
    in_flight: watch::Sender<()>,
}

impl Shared {
    fn current(&self) -> Arc<HttpRevision> {
        self.revision
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One listener's accept loop.
struct Listener {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// An HTTP component served on this node.
pub struct HttpServer {
    shared: Arc<Shared>,
    listener: Listener,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("address", &self.listener.address)
            .field("revision", &self.shared.current())
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Binds the revision's address and starts serving; the status says Running once the
    /// listener is bound (node mode's Ready means "listening").
    pub async fn start(
        engine: AgentEngine,
        revision: HttpRevision,
        status: Arc<ActorStatus>,
    ) -> Result<Self, Error> {
        let listen = revision.settings.listen;
        let shared = Arc::new(Shared {
            engine,
            revision: RwLock::new(Arc::new(revision)),
            status,
            in_flight: watch::channel(()).0,
        });
        let listener = Listener::bind(listen, shared.clone()).await?;
        shared.status.set_state(ActorState::Running);
        tracing::info!(component = %shared.current().ctx.id, address = %listener.address, "serving HTTP");
        Ok(Self { shared, listener })
    }

    /// The address the component is served on.
    pub fn address(&self) -> SocketAddr {
        self.listener.address
    }

    /// Moves the component to `revision`: new requests run it, requests in flight finish on
    /// the one they started with. A new address is bound first (an error leaves the old
    /// revision serving); the old listener then drains in the background.
    pub async fn update(&mut self, revision: HttpRevision) -> Result<(), Error> {
        let listen = revision.settings.listen;
        let moved = listen != self.listener.address
            && !(listen.port() == 0 && listen.ip() == self.listener.address.ip());
        let new_listener = if moved {
            Some(Listener::bind(listen, self.shared.clone()).await?)
        } else {
            None
        };
        let old = std::mem::replace(
            &mut *self
                .shared
                .revision
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            Arc::new(revision),
        );
        if let Some(listener) = new_listener {
            let previous = std::mem::replace(&mut self.listener, listener);
            tracing::info!(component = %old.ctx.id, from = %previous.address, to = %self.listener.address, "HTTP address moved; draining the old one");
            tokio::spawn(previous.drain(old.settings.limits.request_timeout));
        }
        Ok(())
    }

    /// Stops serving: the listener closes, idle connections close, requests in flight
    /// finish (at most `requestTimeout` more). The returned future ends when they have.
    pub fn stop(self) -> impl Future<Output = ()> + Send + 'static {
        let bound = self.shared.current().settings.limits.request_timeout;
        let shared = self.shared;
        let drain = self.listener.drain(bound);
        async move {
            drain.await;
            // Requests whose client went away still run to their end or their deadline.
            let _ = tokio::time::timeout(bound + Duration::from_secs(1), shared.in_flight.closed())
                .await;
            shared.status.set_state(ActorState::Stopped);
        }
    }
}

impl Listener {
    async fn bind(address: SocketAddr, shared: Arc<Shared>) -> Result<Self, Error> {
        let socket = TcpListener::bind(address).await.map_err(|e| Error::Io {
            what: format!("listen on {address} for HTTP"),
            source: e,
        })?;
        let address = socket.local_addr().map_err(|e| Error::Io {
            what: "read the HTTP listener's address".into(),
            source: e,
        })?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(socket, shared, stopped));
        Ok(Self {
            address,
            stop,
            task,
        })
    }

    /// Closes the listener and lets its connections finish (bounded by `bound` plus a
    /// second); the future ends when they have.
    fn drain(self, bound: Duration) -> impl Future<Output = ()> + Send + 'static {
        let _ = self.stop.send(true);
        let mut task = self.task;
        async move {
            if tokio::time::timeout(bound + Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// Accepts connections until told to stop, then closes the listener and drains them.
async fn accept_loop(socket: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let max_connections = max_connections(&shared.current().settings.limits);
    loop {
        // At the cap, new connections wait in the kernel's backlog until one closes: idle
        // keep-alive connections cannot use up the agent's descriptors.
        let room = connections.len() < max_connections;
        let accepted = tokio::select! {
            accepted = socket.accept(), if room => accepted,
            _ = stop.changed() => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small writes (one per chunk) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        connections.spawn(serve_connection(stream, shared, stop));
    }
    // New connections are refused from here on.
    drop(socket);
    while connections.join_next().await.is_some() {}
}

/// Connections one listener holds open at once: a few per request slot (clients keep idle
/// connections), and never fewer than 64.
fn max_connections(limits: &HttpLimits) -> usize {
    (limits.max_concurrent_requests as usize)
        .saturating_mul(4)
        .max(64)
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let header_timeout = shared.current().settings.limits.request_timeout;
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle::<Incoming>(&shared, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        // A client that trickles its headers is cut off like one that trickles a body.
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// A response the agent writes itself.
fn plain(status: StatusCode, text: &'static str) -> Response<WasiBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// 503 with `Retry-After`.
fn busy(text: &'static str) -> Response<WasiBody> {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, text);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER_SECONDS),
    );
    response
}

/// A served component's request path without the network: what a connection calls per
/// request (benches and tools measure it alone).
#[derive(Clone)]
pub struct HttpHandle(Arc<Shared>);

impl std::fmt::Debug for HttpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HttpHandle")
            .field(&self.0.current())
            .finish()
    }
}

impl HttpHandle {
    /// Handles one request as if it had come in on the component's listener.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<WasiBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        handle(&self.0, request).await
    }
}

impl HttpServer {
    /// The component's request path, without the network.
    pub fn handle(&self) -> HttpHandle {
        HttpHandle(self.shared.clone())
    }
}

/// Handles one request end to end; every failure is an HTTP status, never a hyper error.
async fn handle<B>(shared: &Shared, request: Request<B>) -> Response<WasiBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<HttpError>,
{
    let started = Instant::now();
    let revision = shared.current();
    let settings = &revision.settings;
    let host = request.uri().authority().map(|a| a.as_str()).or_else(|| {
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    if !settings.spec.matches(host, request.uri().path()) {
        return plain(StatusCode::NOT_FOUND, "no such route\n");
    }
    let Ok(permit) = revision.permits.clone().try_acquire_owned() else {
        revision.whole.quota_exceeded(Quota::Concurrency);
        shared.status.failed.fetch_add(1, Ordering::Relaxed);
        return busy("too many requests in flight; retry later\n");
    };
    let max_request = settings.limits.max_request_body_bytes;
    // A declared length (`Content-Length`) over the limit is refused before any instance.
    if request.body().size_hint().lower() > max_request {
        revision.whole.quota_exceeded(Quota::RequestBody);
        shared.status.failed.fetch_add(1, Ordering::Relaxed);
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let deadline = started + settings.limits.request_timeout;
    let scope = revision.ctx.next_instance();
    let mut store = match new_store(&scope, &shared.engine) {
        Ok(store) => store,
        Err(kill) => {
            tracing::warn!(component = %scope.id, reason = %kill, "cannot set up an HTTP instance");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot start an instance\n",
            );
        }
    };
    let request_too_large = Arc::new(AtomicBool::new(false));
    let request = request.map(|incoming| {
        LimitedRequestBody {
            incoming,
            left: max_request,
            tripped: request_too_large.clone(),
            scope: scope.clone(),
        }
        .boxed_unsync()
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let setup = (|| -> wasmtime::Result<_> {
        let mut view = store.data_mut().http();
        let request = view.new_incoming_request(Scheme::Http, request)?;
        let out = view.new_response_outparam(tx)?;
        Ok((request, out))
    })();
    let (guest_request, out) = match setup {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(component = %scope.id, error = %e, "request refused before the handler");
            return plain(StatusCode::BAD_REQUEST, "malformed request\n");
        }
    };
    let outcome = Arc::new(Outcome::default());
    let guest = {
        let outcome = outcome.clone();
        let revision = revision.clone();
        let scope = scope.clone();
        let status = shared.status.clone();
        let in_flight = shared.in_flight.subscribe();
        async move {
            let _permit = permit;
            let _in_flight = in_flight;
            let run = async {
                arm(&mut store).map_err(GuestEnd::Killed)?;
                let proxy = revision
                    .pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| {
                        // The node's instance pool is full: the node is busy, not the guest
                        // at fault.
                        if e.chain()
                            .any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>())
                        {
                            GuestEnd::PoolFull
                        } else {
                            GuestEnd::Killed(classify(&store, &e))
                        }
                    })?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, guest_request, out)
                    .await
                    .map_err(|e| GuestEnd::Killed(classify(&store, &e)))
            };
            let end = tokio::select! {
                ran = tokio::time::timeout_at(deadline.into(), run) => match ran {
                    Ok(Ok(())) => None,
                    Ok(Err(end)) => Some(end),
                    Err(_) => Some(GuestEnd::Killed(Kill::Quota(Quota::Timeout))),
                },
                () = outcome.cancelled.notified() => Some(GuestEnd::Cut),
            };
            match end {
                None => {
                    outcome.set(OUTCOME_DONE);
                    status.handled.fetch_add(1, Ordering::Relaxed);
                }
                Some(GuestEnd::Killed(kill)) => {
                    outcome.set(OUTCOME_FAILED);
                    status.kills.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(component = %scope.id, instance = scope.number(), reason = %kill, "HTTP request instance killed");
                    audit_kill(&scope, &kill);
                }
                Some(GuestEnd::Cut) => {
                    outcome.set(OUTCOME_FAILED);
                    status.failed.fetch_add(1, Ordering::Relaxed);
                }
                Some(GuestEnd::PoolFull) => {
                    outcome.set(OUTCOME_POOL_FULL);
                    status.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The outcome is set before the store goes: a response body that ends because
            // the store dropped its sender reads it and aborts instead of ending cleanly.
            drop(store);
        }
    };
    let guest = tokio::spawn(guest);
    let response = match tokio::time::timeout_at(deadline.into(), rx).await {
        Ok(Ok(Ok(response))) => response,
        Ok(Ok(Err(code))) => {
            tracing::debug!(component = %scope.id, error = ?code, "handler answered with an error");
            shared.status.failed.fetch_add(1, Ordering::Relaxed);
            if request_too_large.load(Ordering::Relaxed) {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
            }
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "handler failed\n");
        }
        Ok(Err(_)) => {
            // The handler ended (or was killed) without answering.
            let _ = guest.await;
            if request_too_large.load(Ordering::Relaxed) {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
            }
            return match outcome.get() {
                OUTCOME_POOL_FULL => {
                    revision.whole.quota_exceeded(Quota::Concurrency);
                    busy("no instance slot free on this node; retry later\n")
                }
                OUTCOME_DONE => {
                    shared.status.failed.fetch_add(1, Ordering::Relaxed);
                    plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "handler set no response\n",
                    )
                }
                _ if Instant::now() >= deadline => {
                    plain(StatusCode::GATEWAY_TIMEOUT, "request timed out\n")
                }
                _ => plain(StatusCode::INTERNAL_SERVER_ERROR, "handler failed\n"),
            };
        }
        Err(_) => {
            // The guest task hits the same deadline and audits the timeout.
            return plain(StatusCode::GATEWAY_TIMEOUT, "request timed out\n");
        }
    };
    let max_response = settings.limits.max_response_body_bytes;
    response.map(|body| {
        GuardedResponseBody {
            body,
            left: max_response,
            outcome,
            scope,
        }
        .boxed_unsync()
    })
}

/// How a request's guest run ended badly.
enum GuestEnd {
    Killed(Kill),
    /// The agent cut the response (body over its limit).
    Cut,
    /// No instance slot was free in the node's pool.
    PoolFull,
}

const OUTCOME_RUNNING: u8 = 0;
const OUTCOME_DONE: u8 = 1;
const OUTCOME_FAILED: u8 = 2;
const OUTCOME_POOL_FULL: u8 = 3;

/// How a request's instance ended, shared with its response body; and the signal that stops
/// the instance when the body is cut off.
#[derive(Debug)]
struct Outcome {
    state: AtomicU8,
    cancelled: Notify,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(OUTCOME_RUNNING),
            cancelled: Notify::new(),
        }
    }
}

impl Outcome {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }

    fn get(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

/// The request body, failing once more than `left` bytes arrive (the guest's read fails; it
/// sees `HTTP-request-body-size`).
struct LimitedRequestBody<B> {
    incoming: B,
    left: u64,
    tripped: Arc<AtomicBool>,
    /// The instance reading it (what the breach is audited against).
    scope: InstanceScope,
}

impl<B> Body for LimitedRequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                match self.left.checked_sub(len) {
                    Some(left) => {
                        self.left = left;
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => {
                        if !self.tripped.swap(true, Ordering::Relaxed) {
                            self.scope.quota_exceeded(Quota::RequestBody);
                        }
                        Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(None))))
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// The guest's response body on its way out: cut off (an error frame, so hyper closes the
/// connection instead of ending the body cleanly) when it grows past its limit or when the
/// instance writing it was killed.
struct GuardedResponseBody {
    body: WasiBody,
    left: u64,
    outcome: Arc<Outcome>,
    scope: InstanceScope,
}

impl Body for GuardedResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                match self.left.checked_sub(len) {
                    Some(left) => {
                        self.left = left;
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => {
                        self.scope.quota_exceeded(Quota::ResponseBody);
                        self.outcome.cancelled.notify_one();
                        Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))))
                    }
                }
            }
            Poll::Ready(None) if self.outcome.get() == OUTCOME_FAILED => Poll::Ready(Some(Err(
                HttpError::InternalError(Some("the handler was stopped".into())),
            ))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream() && self.outcome.get() != OUTCOME_FAILED
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
