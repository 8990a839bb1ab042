//! `airssys:component/messaging`: publish, subscribe, send, request.
//!
//! Order of checks: the caller's grant (a malformed target — a wildcard publish, a name
//! with a `/` — is never granted: audited as a denial like any other) → size and rate
//! quotas → the broker (which checks the receiving end). Every reply, ok or error, is held
//! to the message-size limit of its sender and of its receiver ([`HostState::check_size`],
//! the one size rule).

use std::sync::Arc;
use std::time::Duration;

use airssys_crds::capability::{TopicPattern, check_component_name, check_topic};

use super::HostState;
use crate::bindings::WitError;
use crate::bindings::airssys::component::messaging::Host;
use crate::broker::{BrokerError, Reply, ReplyError};
use crate::grant::CapabilityKind;
use crate::limits::Quota;

/// Bytes a reply makes its receiver hold: the payload, or the error's text.
pub fn reply_len(reply: &Reply) -> usize {
    match reply {
        Ok(bytes) => bytes.len(),
        Err(
            ReplyError::AccessDenied(m)
            | ReplyError::NotFound(m)
            | ReplyError::InvalidInput(m)
            | ReplyError::QuotaExceeded(m)
            | ReplyError::Timeout(m)
            | ReplyError::Internal(m),
        ) => m.len(),
    }
}

impl HostState {
    /// Audits a denial of `kind` on `target` and builds the guest's answer. Every refusal
    /// of a messaging or storage call goes through here.
    pub(super) fn deny(&self, kind: CapabilityKind, target: &str) -> WitError {
        self.scope.denied(kind, target);
        WitError::AccessDenied(format!(
            "{} {target} is not granted to {}",
            kind.as_str(),
            self.scope.id
        ))
    }

    /// A target that is not well formed can be in no grant: a wildcard publish (`a.>`), a
    /// component name with a `/` or a bucket named `../x` is a probe for more than the grant
    /// gives, so it is audited as a denial, not waved off as bad input.
    pub(super) fn deny_malformed(
        &self,
        kind: CapabilityKind,
        target: &str,
        why: impl std::fmt::Display,
    ) -> WitError {
        self.scope.denied(kind, target);
        WitError::AccessDenied(format!("{} is never granted: {why}", kind.as_str()))
    }

    /// Checks a direct send/request to `component` and the payload; on success the caller
    /// may enqueue.
    fn admit_direct(&mut self, component: &str, len: usize) -> Result<(), WitError> {
        if let Err(e) = check_component_name(component) {
            return Err(self.deny_malformed(CapabilityKind::Send, component, e));
        }
        if !self.scope.grants.check_send(component) {
            return Err(self.deny(CapabilityKind::Send, component));
        }
        self.scope.granted(CapabilityKind::Send);
        self.check_size(len)?;
        self.take_rate_token()
    }

    /// Holds a reply this instance sends (the guest's answer to a request) to the
    /// instance's own message-size limit: a reply is a message like any other, so a
    /// responder cannot hand its requester (or the agent) more than it may send. Over the
    /// limit, the receiver gets a short error instead.
    pub(crate) fn bound_reply(&self, reply: Reply) -> Reply {
        self.check_size(reply_len(&reply))?;
        reply
    }

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
        if let Err(e) = check_topic(&topic) {
            return Err(self.deny_malformed(CapabilityKind::Publish, &topic, e));
        }
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
        let parsed = match TopicPattern::parse(&pattern) {
            Ok(p) => p,
            Err(e) => return Err(self.deny_malformed(CapabilityKind::Subscribe, &pattern, e)),
        };
        // A pattern is allowed when everything it matches is within one subscribe grant.
        if !self.scope.grants.check_subscribe_pattern(&parsed) {
            return Err(self.deny(CapabilityKind::Subscribe, &pattern));
        }
        self.scope.granted(CapabilityKind::Subscribe);
        // A subscription costs the broker like a message does: a loop of subscribes is
        // held to the message rate (and to the broker's per-component cap).
        self.take_rate_token()?;
        self.scope
            .broker
            .subscribe(&self.scope.id, parsed, self.scope.mailbox.clone())
            .map_err(|e| {
                // No quota kind names subscriptions; the refused pattern goes on record as
                // a denial, the guest gets `quota-exceeded`.
                self.scope.denied(CapabilityKind::Subscribe, &pattern);
                WitError::from(e)
            })
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
        let reply = match ctx
            .broker
            .request(
                Some(&ctx.id),
                &ctx.id.namespace,
                &component,
                Arc::from(payload),
                timeout,
            )
            .await
        {
            Ok(bytes) => Ok(bytes),
            // The responder's own error (or a host error about it) is a reply like any
            // other: its text is held to this component's limit below.
            Err(BrokerError::Remote(e)) => Err(e),
            Err(e) => return Err(self.broker_error(e)),
        };
        // Before the reply reaches this guest's memory: a reply over this component's
        // limit, ok or error, would make it hold more than it agreed to receive.
        self.check_size(reply_len(&reply))?;
        reply.map_err(WitError::from)
    }
}
