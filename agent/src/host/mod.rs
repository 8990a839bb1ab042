//! The host side of the `airssys:component` WIT package plus the WASI 0.2 context.
//!
//! One module per interface: [`messaging`], [`storage`], [`logging`]; [`wasi`] builds the
//! per-instance WASI context from the grant, with the checked parts of WASI beside it:
//! [`filesystem`] (shadowed `wasi:filesystem`), [`sockets`], [`http`] (outgoing requests).
//! Every
//! capability check happens in these modules, against the instance's immutable
//! [`crate::grant::GrantTable`]; a denial is a WIT `access-denied` value, never a trap.

pub mod filesystem;
pub mod http;
pub mod logging;
pub mod messaging;
pub mod resources;
pub mod sockets;
pub mod storage;
pub mod wasi;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::WitError;
use crate::broker::{BrokerError, ReplyError};
use crate::context::InstanceScope;
use crate::error::Error;
use crate::limits::{CpuBudget, InstanceLimiter, Quota};

/// Everything one instance's host functions can reach. Lives in the instance's `Store`.
pub struct HostState {
    /// This instance: its component's context (shared across restarts) and the identity
    /// its audit events carry.
    pub scope: InstanceScope,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_hooks: http::GrantedHttp,
    pub(crate) limiter: InstanceLimiter,
    pub(crate) cpu: CpuBudget,
    /// Quota that stopped the current call, if any (the trap that follows is reported as it).
    pub(crate) breach: Option<Quota>,
    /// What this instance may still make the agent log (its stdout and stderr share it).
    pub(crate) log_budget: logging::SharedLogBudget,
    /// Where each filesystem descriptor is (its grant and guest path), for the checks.
    pub(crate) fs_places: filesystem::Places,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("component", &self.scope.id)
            .field("instance", &self.scope.number())
            .field("cpu", &self.cpu)
            .field("breach", &self.breach)
            .finish_non_exhaustive()
    }
}

impl HostState {
    /// A fresh state for the new instance `scope`.
    pub fn new(scope: InstanceScope) -> Result<Self, Error> {
        let log_budget = logging::SharedLogBudget::default();
        let wasi = wasi::build_ctx(&scope, &log_budget)?;
        let quotas = &scope.quotas;
        let table = resources::table(quotas.memory_bytes);
        Ok(Self {
            limiter: InstanceLimiter::new(quotas.memory_bytes, quotas.table_elements),
            http_hooks: http::GrantedHttp::new(scope.clone()),
            scope,
            wasi,
            table,
            http: {
                let mut http = WasiHttpCtx::new();
                http.set_field_size_limit(resources::FIELD_SIZE_LIMIT);
                http
            },
            cpu: CpuBudget::default(),
            breach: None,
            log_budget,
            fs_places: filesystem::Places::default(),
        })
    }

    /// Takes one token from the outgoing-message rate limit; audits a refusal.
    pub(crate) fn take_rate_token(&mut self) -> Result<(), WitError> {
        let granted = self
            .scope
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_acquire(std::time::Instant::now());
        if granted {
            Ok(())
        } else {
            self.scope.quota_exceeded(Quota::MessageRate);
            Err(WitError::QuotaExceeded(format!(
                "more than {} messages per second",
                self.scope.quotas.messages_per_second
            )))
        }
    }

    /// Refuses payloads over the component's message size limit.
    pub(crate) fn check_size(&self, len: usize) -> Result<(), WitError> {
        self.scope.check_message_size(len)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl crate::bindings::airssys::component::types::Host for HostState {}

/// The linker every instance is created from: WASI 0.2 (with the audited filesystem
/// open), `wasi:http`, and the airssys interfaces. Built once per engine.
pub fn linker(engine: &Engine) -> Result<Linker<HostState>, Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(Error::wasm("link WASI"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(Error::wasm("link wasi:http"))?;
    filesystem::shadow_open_at(&mut linker)?;
    sockets::shadow_sockets(&mut linker)?;
    crate::bindings::Component::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(Error::wasm("link airssys interfaces"))?;
    Ok(linker)
}

impl From<BrokerError> for WitError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NotFound(_) => WitError::NotFound(e.to_string()),
            BrokerError::MailboxFull(_)
            | BrokerError::Partial { .. }
            | BrokerError::TooManySubscriptions(_) => WitError::QuotaExceeded(e.to_string()),
            BrokerError::Timeout(..) => WitError::Timeout(e.to_string()),
            BrokerError::NoReply(_) => WitError::Internal(e.to_string()),
            BrokerError::SelfRequest => WitError::InvalidInput(e.to_string()),
            BrokerError::Remote(inner) => inner.into(),
        }
    }
}

impl From<ReplyError> for WitError {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::AccessDenied(m) => WitError::AccessDenied(m),
            ReplyError::NotFound(m) => WitError::NotFound(m),
            ReplyError::InvalidInput(m) => WitError::InvalidInput(m),
            ReplyError::QuotaExceeded(m) => WitError::QuotaExceeded(m),
            ReplyError::Timeout(m) => WitError::Timeout(m),
            ReplyError::Internal(m) => WitError::Internal(m),
        }
    }
}

impl From<WitError> for ReplyError {
    fn from(e: WitError) -> Self {
        match e {
            WitError::AccessDenied(m) => ReplyError::AccessDenied(m),
            WitError::NotFound(m) => ReplyError::NotFound(m),
            WitError::InvalidInput(m) => ReplyError::InvalidInput(m),
            WitError::QuotaExceeded(m) => ReplyError::QuotaExceeded(m),
            WitError::Timeout(m) => ReplyError::Timeout(m),
            WitError::Internal(m) => ReplyError::Internal(m),
        }
    }
}
