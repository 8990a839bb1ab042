//! `airssys:component/messaging`: publish, subscribe, send, request.
//!
//! Order of checks: input shape → the caller's grant (denial audited) → size and rate
//! quotas → the broker (which checks the receiving end).

use std::sync::Arc;
use std::time::Duration;

use airssys_crds::capability::{TopicPattern, check_component_name, check_topic};

use super::HostState;
use crate::bindings::WitError;
use crate::bindings::airssys::component::messaging::Host;
use crate::broker::BrokerError;
use crate::grant::CapabilityKind;
use crate::limits::Quota;

fn invalid(e: impl std::fmt::Display) -> WitError {
    WitError::InvalidInput(e.to_string())
}

impl HostState {
    fn deny(&self, kind: CapabilityKind, target: &str) -> WitError {
        self.scope.denied(kind, target);
        WitError::AccessDenied(format!(
            "{} {target} is not granted to {}",
            kind.as_str(),
            self.scope.id
        ))
    }

    /// Checks a direct send/request to `component` and the payload; on success the caller
    /// may enqueue.
    fn admit_direct(&mut self, component: &str, len: usize) -> Result<(), WitError> {
        check_component_name(component).map_err(invalid)?;
        if !self.scope.grants.check_send(component) {
            return Err(self.deny(CapabilityKind::Send, component));
        }
        self.scope.granted(CapabilityKind::Send);
        self.check_size(len)?;
        self.take_rate_token()
    }
}

impl HostState {
    /// Converts a broker refusal, auditing back-pressure against this (sending) component.
    fn broker_error(&self, e: BrokerError) -> WitError {
        if matches!(e, BrokerError::MailboxFull(_) | BrokerError::Partial { .. }) {
            self.scope.quota_exceeded(Quota::Mailbox);
        }
        WitError::from(e)
    }
}

impl Host for HostState {
    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), WitError> {
        check_topic(&topic).map_err(invalid)?;
        if !self.scope.grants.check_publish(&topic) {
            return Err(self.deny(CapabilityKind::Publish, &topic));
        }
        self.scope.granted(CapabilityKind::Publish);
        self.check_size(payload.len())?;
        self.take_rate_token()?;
        self.scope
            .broker
            .publish(&self.scope.id, &topic, Arc::from(payload))
            .map(drop)
            .map_err(|e| self.broker_error(e))
    }

    async fn subscribe(&mut self, pattern: String) -> Result<(), WitError> {
        let parsed = TopicPattern::parse(&pattern).map_err(invalid)?;
        // A pattern is allowed when everything it matches is within one subscribe grant
        // (subscribe happens once per instance, so the parsed set is fine here).
        let allowed = self
            .scope
            .grant
            .topics
            .iter()
            .any(|g| g.subscribe && parsed.is_within(&g.pattern));
        if !allowed {
            return Err(self.deny(CapabilityKind::Subscribe, &pattern));
        }
        self.scope.granted(CapabilityKind::Subscribe);
        self.scope
            .broker
            .subscribe(&self.scope.id, parsed, self.scope.mailbox.clone());
        Ok(())
    }

    async fn send(&mut self, component: String, payload: Vec<u8>) -> Result<(), WitError> {
        self.admit_direct(&component, payload.len())?;
        let ns = self.scope.id.namespace.clone();
        self.scope
            .broker
            .send(Some(&self.scope.id), &ns, &component, Arc::from(payload))
            .map_err(|e| self.broker_error(e))
    }

    async fn request(
        &mut self,
        component: String,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, WitError> {
        self.admit_direct(&component, payload.len())?;
        // Never wait longer than this component's own per-message timeout.
        let timeout = Duration::from_millis(u64::from(timeout_ms)).min(self.scope.quotas.timeout);
        let ctx = self.scope.ctx.clone();
        let reply = ctx
            .broker
            .request(
                Some(&ctx.id),
                &ctx.id.namespace,
                &component,
                Arc::from(payload),
                timeout,
            )
            .await
            .map_err(|e| self.broker_error(e))?;
        self.check_size(reply.len())?;
        Ok(reply)
    }
}
