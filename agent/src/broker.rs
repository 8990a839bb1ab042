//! Messages between actors on the node: topics (publish/subscribe), direct sends and
//! request/response.
//!
//! Every mailbox is bounded. A guest never waits for room: a full mailbox is an immediate
//! `quota-exceeded` answer (back-pressure), so a slow or stuck receiver cannot stall its
//! senders and a flood cannot grow memory. The agent itself (CLI, tests, benches) may wait
//! for room with [`Broker::send_wait`].
//!
//! Capability checks on both ends: the sender's grant is checked by the host function before
//! the broker is called; the broker checks each subscriber's grant for the concrete topic at
//! delivery, so a subscription can never deliver more than its owner may receive.
//!
//! Topics are namespace-scoped: a publish reaches only subscribers in the publisher's own
//! namespace, so two tenants granted the same topic never see each other's messages, and a
//! direct send or request always targets the sender's namespace (a grant names a component
//! of the same namespace; a `namespace/name` target is never granted). Nothing crosses a
//! namespace through the broker.
//!
//! Subscriptions are indexed per namespace by topic token (a trie), so a publish looks only
//! at the subscriptions that match it, and a component holds at most
//! [`MAX_SUBSCRIPTIONS_PER_COMPONENT`]: no component can slow every publish on the node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use airssys_crds::capability::TopicPattern;
use tokio::sync::{mpsc, oneshot};

use crate::grant::GrantTable;
use crate::id::ComponentId;

/// A reply to a request: the handler's bytes, or why there are none.
pub type Reply = Result<Vec<u8>, ReplyError>;

/// A handler's error answer, carried back to the requester. It mirrors the WIT `error`
/// variant case for case; the host converts between the two (`crate::host`), so the broker
/// needs no generated bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    AccessDenied(String),
    NotFound(String),
    InvalidInput(String),
    QuotaExceeded(String),
    Timeout(String),
    Internal(String),
}

impl std::fmt::Display for ReplyError {
    /// The same text the WIT error's own `Display` gives (`Error::NotFound("...")`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (case, message) = match self {
            Self::AccessDenied(m) => ("AccessDenied", m),
            Self::NotFound(m) => ("NotFound", m),
            Self::InvalidInput(m) => ("InvalidInput", m),
            Self::QuotaExceeded(m) => ("QuotaExceeded", m),
            Self::Timeout(m) => ("Timeout", m),
            Self::Internal(m) => ("Internal", m),
        };
        write!(f, "Error::{case}({message:?})")
    }
}

/// Who sent a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Published to `topic` by `publisher`.
    Topic {
        topic: String,
        publisher: ComponentId,
    },
    /// Sent directly by a component, or by the agent itself (`None`).
    Direct(Option<ComponentId>),
}

/// One message in a mailbox.
#[derive(Debug)]
pub struct Envelope {
    pub origin: Origin,
    /// Shared between the subscribers of one publish.
    pub payload: Arc<[u8]>,
    /// Present for a request: where the handler's answer goes.
    pub reply: Option<oneshot::Sender<Reply>>,
}

/// The sending half of an actor's mailbox, with the grant its owner runs under.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub tx: mpsc::Sender<Envelope>,
    pub grants: Arc<GrantTable>,
}

/// Why the broker did not deliver.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("component {0} is not running on this node")]
    NotFound(String),
    #[error("mailbox of {0} is full")]
    MailboxFull(String),
    #[error("{delivered} of {matched} subscribers got the message; the other mailboxes are full")]
    Partial { delivered: usize, matched: usize },
    #[error("no reply from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0} stopped before replying")]
    NoReply(String),
    #[error("a component cannot send a request to itself")]
    SelfRequest,
    #[error(
        "{0} already holds {MAX_SUBSCRIPTIONS_PER_COMPONENT} subscriptions, the most a component may hold"
    )]
    TooManySubscriptions(String),
    #[error("{0}")]
    Remote(ReplyError),
}

/// Most subscriptions one component may hold at once. Each costs the broker memory and
/// every publish on a matching topic a delivery check, so one component must not be able to
/// make every publish on the node slower; 256 leaves room for any real fan-in (a component
/// subscribes to a handful of patterns, usually one per topic family).
pub const MAX_SUBSCRIPTIONS_PER_COMPONENT: usize = 256;

struct Subscription {
    subscriber: ComponentId,
    mailbox: Mailbox,
}

/// One level of the subscription index: a trie over topic tokens, as NATS keeps its
/// sublist. A publish walks only the branches its topic's tokens name (plus the `*` branch
/// of each level), so its cost grows with the topic's depth and the matching
/// subscriptions, never with the number of subscriptions on the node.
#[derive(Default)]
struct Node {
    /// Branches for a literal next token.
    literal: HashMap<String, Node>,
    /// The branch for `*` (exactly one token).
    one: Option<Box<Node>>,
    /// Patterns that end here.
    here: Vec<Arc<Subscription>>,
    /// Patterns that end with `>` after this level (one or more further tokens).
    rest: Vec<Arc<Subscription>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.one.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }

    /// Adds `sub` under the pattern's `tokens` (a valid pattern: `>` only last).
    fn insert(&mut self, mut tokens: std::str::Split<'_, char>, sub: Arc<Subscription>) {
        match tokens.next() {
            None => self.here.push(sub),
            Some(">") => self.rest.push(sub),
            Some("*") => self.one.get_or_insert_default().insert(tokens, sub),
            Some(literal) => self
                .literal
                .entry(literal.to_owned())
                .or_default()
                .insert(tokens, sub),
        }
    }

    /// Removes `subscriber`'s subscription under `tokens`, pruning emptied levels.
    fn remove(&mut self, mut tokens: std::str::Split<'_, char>, subscriber: &ComponentId) {
        let owned = |s: &Arc<Subscription>| s.subscriber != *subscriber;
        match tokens.next() {
            None => self.here.retain(owned),
            Some(">") => self.rest.retain(owned),
            Some("*") => {
                if let Some(child) = self.one.as_mut() {
                    child.remove(tokens, subscriber);
                    if child.is_empty() {
                        self.one = None;
                    }
                }
            }
            Some(literal) => {
                if let Some(child) = self.literal.get_mut(literal) {
                    child.remove(tokens, subscriber);
                    if child.is_empty() {
                        self.literal.remove(literal);
                    }
                }
            }
        }
    }

    /// Calls `found` for every subscription whose pattern matches the topic remainder
    /// `rest` (`None` once every token is taken). Mirrors [`TopicPattern::matches`]: `*`
    /// and `>` never match an empty token.
    fn visit(&self, rest: Option<&str>, found: &mut impl FnMut(&Subscription)) {
        let Some(r) = rest else {
            self.here.iter().for_each(|s| found(s));
            return;
        };
        if !r.is_empty() && !r.starts_with('.') {
            self.rest.iter().for_each(|s| found(s));
        }
        let (token, next) = match r.split_once('.') {
            Some((token, next)) => (token, Some(next)),
            None => (r, None),
        };
        if let Some(child) = self.literal.get(token) {
            child.visit(next, found);
        }
        if let Some(child) = self.one.as_deref()
            && !token.is_empty()
        {
            child.visit(next, found);
        }
    }
}

/// Every subscription on the node: one trie per namespace, which the publishes of that
/// namespace walk, and each subscriber's patterns (for the cap, idempotence and removal
/// without a scan).
#[derive(Default)]
struct Subscriptions {
    /// namespace → the trie of its subscriptions.
    roots: HashMap<String, Node>,
    /// Subscriber → its patterns in canonical text form.
    owners: HashMap<ComponentId, HashSet<String>>,
}

/// A component's subscriptions, out of the index (see [`Broker::take_subscriptions`]).
#[derive(Debug)]
pub struct SavedSubscriptions {
    subscriber: ComponentId,
    patterns: Vec<String>,
}

/// Counters the metrics endpoint and tests read.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub delivered: AtomicU64,
    pub rejected_full: AtomicU64,
    pub denied_at_delivery: AtomicU64,
}

/// The node's message broker. Cheap to clone.
#[derive(Clone, Default)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// namespace → name → mailbox; nested so lookups by `&str` allocate nothing.
    mailboxes: RwLock<HashMap<String, HashMap<String, Mailbox>>>,
    subscriptions: RwLock<Subscriptions>,
    stats: BrokerStats,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("stats", &self.inner.stats)
            .finish_non_exhaustive()
    }
}

impl Broker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> &BrokerStats {
        &self.inner.stats
    }

    /// Makes `id` reachable by direct sends.
    pub fn register(&self, id: &ComponentId, mailbox: Mailbox) {
        self.inner
            .mailboxes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.namespace.clone())
            .or_default()
            .insert(id.name.clone(), mailbox);
    }

    /// Removes `id` and all its subscriptions.
    pub fn unregister(&self, id: &ComponentId) {
        let mut boxes = self
            .inner
            .mailboxes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ns) = boxes.get_mut(&id.namespace) {
            ns.remove(&id.name);
            if ns.is_empty() {
                boxes.remove(&id.namespace);
            }
        }
        drop(boxes);
        self.unsubscribe_all(id);
    }

    /// Adds a subscription (idempotent per subscriber and pattern). The caller has checked
    /// the subscriber's grant for the pattern. A subscriber holds at most
    /// [`MAX_SUBSCRIPTIONS_PER_COMPONENT`]; adding costs the pattern's depth, whatever else
    /// is subscribed.
    pub fn subscribe(
        &self,
        subscriber: &ComponentId,
        pattern: TopicPattern,
        mailbox: Mailbox,
    ) -> Result<(), BrokerError> {
        let text = pattern.to_string();
        let mut subs = self
            .inner
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Subscriptions { roots, owners } = &mut *subs;
        let patterns = owners.entry(subscriber.clone()).or_default();
        if patterns.contains(&text) {
            return Ok(());
        }
        if patterns.len() >= MAX_SUBSCRIPTIONS_PER_COMPONENT {
            return Err(BrokerError::TooManySubscriptions(subscriber.to_string()));
        }
        let sub = Arc::new(Subscription {
            subscriber: subscriber.clone(),
            mailbox,
        });
        roots
            .entry(subscriber.namespace.clone())
            .or_default()
            .insert(text.split('.'), sub);
        patterns.insert(text);
        Ok(())
    }

    /// Drops every subscription of `subscriber` (a restarted instance subscribes again).
    pub fn unsubscribe_all(&self, subscriber: &ComponentId) {
        let mut subs = self
            .inner
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Subscriptions { roots, owners } = &mut *subs;
        let patterns = owners.remove(subscriber).unwrap_or_default();
        if let Some(root) = roots.get_mut(&subscriber.namespace) {
            for pattern in patterns {
                root.remove(pattern.split('.'), subscriber);
            }
            if root.is_empty() {
                roots.remove(&subscriber.namespace);
            }
        }
    }

    /// Takes every subscription of `subscriber` out of the index, to be put back with
    /// [`Broker::restore_subscriptions`] if the revision that was to replace them does not start.
    pub fn take_subscriptions(&self, subscriber: &ComponentId) -> SavedSubscriptions {
        let patterns = self
            .inner
            .subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .owners
            .get(subscriber)
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        self.unsubscribe_all(subscriber);
        SavedSubscriptions {
            subscriber: subscriber.clone(),
            patterns,
        }
    }

    /// Replaces whatever `saved`'s subscriber holds now with the saved subscriptions,
    /// delivered to `mailbox` (the revision they belonged to).
    pub fn restore_subscriptions(&self, saved: SavedSubscriptions, mailbox: &Mailbox) {
        self.unsubscribe_all(&saved.subscriber);
        let mut subs = self
            .inner
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Subscriptions { roots, owners } = &mut *subs;
        let root = roots.entry(saved.subscriber.namespace.clone()).or_default();
        let owned = owners.entry(saved.subscriber.clone()).or_default();
        for text in saved.patterns {
            root.insert(
                text.split('.'),
                Arc::new(Subscription {
                    subscriber: saved.subscriber.clone(),
                    mailbox: mailbox.clone(),
                }),
            );
            owned.insert(text);
        }
    }

    /// Number of subscriptions `subscriber` holds.
    pub fn subscription_count(&self, subscriber: &ComponentId) -> usize {
        self.inner
            .subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .owners
            .get(subscriber)
            .map_or(0, HashSet::len)
    }

    /// How many subscriptions a publish on `topic` in `namespace` looks at (tests: the
    /// index must not scan the subscriptions that cannot match).
    #[cfg(test)]
    fn visited(&self, namespace: &str, topic: &str) -> usize {
        let mut n = 0;
        if let Some(root) = self
            .inner
            .subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .roots
            .get(namespace)
        {
            root.visit(Some(topic), &mut |_| n += 1);
        }
        n
    }

    fn mailbox(&self, namespace: &str, name: &str) -> Option<Mailbox> {
        self.inner
            .mailboxes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .and_then(|ns| ns.get(name))
            .cloned()
    }

    /// Publishes to every subscriber in the publisher's namespace whose pattern matches and
    /// whose grant allows `topic`. Returns how many got it; a full mailbox is skipped and
    /// reported as [`BrokerError::Partial`].
    pub fn publish(
        &self,
        publisher: &ComponentId,
        topic: &str,
        payload: Arc<[u8]>,
    ) -> Result<usize, BrokerError> {
        let subs = self
            .inner
            .subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let stats = &self.inner.stats;
        let (mut matched, mut delivered) = (0usize, 0usize);
        let Some(root) = subs.roots.get(&publisher.namespace) else {
            return Ok(0);
        };
        root.visit(Some(topic), &mut |sub| {
            if !sub.mailbox.grants.check_subscribe(topic) {
                stats.denied_at_delivery.fetch_add(1, Ordering::Relaxed);
                return;
            }
            matched += 1;
            let envelope = Envelope {
                origin: Origin::Topic {
                    topic: topic.to_string(),
                    publisher: publisher.clone(),
                },
                payload: payload.clone(),
                reply: None,
            };
            if sub.mailbox.tx.try_send(envelope).is_ok() {
                delivered += 1;
            } else {
                stats.rejected_full.fetch_add(1, Ordering::Relaxed);
            }
        });
        stats
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        if delivered < matched {
            return Err(BrokerError::Partial { delivered, matched });
        }
        Ok(delivered)
    }

    /// One-way message to `namespace/name`; never waits.
    pub fn send(
        &self,
        from: Option<&ComponentId>,
        namespace: &str,
        name: &str,
        payload: Arc<[u8]>,
    ) -> Result<(), BrokerError> {
        let mailbox = self
            .mailbox(namespace, name)
            .ok_or_else(|| BrokerError::NotFound(format!("{namespace}/{name}")))?;
        self.try_enqueue(&mailbox, namespace, name, from, payload, None)
    }

    /// One-way message from the agent, waiting for room in the mailbox.
    pub async fn send_wait(
        &self,
        namespace: &str,
        name: &str,
        payload: Arc<[u8]>,
    ) -> Result<(), BrokerError> {
        let mailbox = self
            .mailbox(namespace, name)
            .ok_or_else(|| BrokerError::NotFound(format!("{namespace}/{name}")))?;
        mailbox
            .tx
            .send(Envelope {
                origin: Origin::Direct(None),
                payload,
                reply: None,
            })
            .await
            .map_err(|_| BrokerError::NotFound(format!("{namespace}/{name}")))?;
        self.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends and waits up to `timeout` for the handler's reply. `from == None` is the agent,
    /// which waits for mailbox room; a component never does.
    pub async fn request(
        &self,
        from: Option<&ComponentId>,
        namespace: &str,
        name: &str,
        payload: Arc<[u8]>,
        timeout: Duration,
    ) -> Result<Vec<u8>, BrokerError> {
        if from.is_some_and(|f| f.namespace == namespace && f.name == name) {
            return Err(BrokerError::SelfRequest);
        }
        let target = || format!("{namespace}/{name}");
        let mailbox = self
            .mailbox(namespace, name)
            .ok_or_else(|| BrokerError::NotFound(target()))?;
        let (tx, rx) = oneshot::channel();
        let work = async {
            match from {
                Some(_) => self.try_enqueue(&mailbox, namespace, name, from, payload, Some(tx))?,
                None => {
                    mailbox
                        .tx
                        .send(Envelope {
                            origin: Origin::Direct(None),
                            payload,
                            reply: Some(tx),
                        })
                        .await
                        .map_err(|_| BrokerError::NotFound(target()))?;
                    self.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            match rx.await {
                Ok(reply) => reply.map_err(BrokerError::Remote),
                Err(_) => Err(BrokerError::NoReply(target())),
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| BrokerError::Timeout(target(), timeout))?
    }

    fn try_enqueue(
        &self,
        mailbox: &Mailbox,
        namespace: &str,
        name: &str,
        from: Option<&ComponentId>,
        payload: Arc<[u8]>,
        reply: Option<oneshot::Sender<Reply>>,
    ) -> Result<(), BrokerError> {
        let envelope = Envelope {
            origin: Origin::Direct(from.cloned()),
            payload,
            reply,
        };
        match mailbox.tx.try_send(envelope) {
            Ok(()) => {
                self.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner
                    .stats
                    .rejected_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(BrokerError::MailboxFull(format!("{namespace}/{name}")))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(BrokerError::NotFound(format!("{namespace}/{name}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airssys_crds::capability::{
        Capabilities, CapabilitySet, MessagingAccess, MessagingCapability,
    };

    fn grants(topics: &[(&str, &[MessagingAccess])]) -> Arc<GrantTable> {
        let caps = Capabilities {
            messaging: topics
                .iter()
                .map(|(t, a)| MessagingCapability {
                    topic: Some((*t).to_string()),
                    component: None,
                    access: a.to_vec(),
                })
                .collect(),
            ..Capabilities::default()
        };
        Arc::new(GrantTable::compile(&CapabilitySet::parse(&caps).unwrap()))
    }

    fn mailbox(cap: usize, g: Arc<GrantTable>) -> (Mailbox, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel(cap);
        (Mailbox { tx, grants: g }, rx)
    }

    fn id(name: &str) -> ComponentId {
        ComponentId::new("ns", name)
    }

    #[tokio::test]
    async fn publish_reaches_matching_subscribers_only() {
        let broker = Broker::new();
        let g = grants(&[("events.>", &[MessagingAccess::Subscribe])]);
        let (a, mut ra) = mailbox(4, g.clone());
        let (b, mut rb) = mailbox(4, g);
        broker
            .subscribe(&id("a"), TopicPattern::parse("events.*").unwrap(), a)
            .unwrap();
        broker
            .subscribe(&id("b"), TopicPattern::parse("events.x.>").unwrap(), b)
            .unwrap();
        assert_eq!(
            broker
                .publish(&id("p"), "events.y", Arc::from(&b"1"[..]))
                .unwrap(),
            1
        );
        assert!(ra.try_recv().is_ok());
        assert!(rb.try_recv().is_err(), "events.x.> does not match events.y");
        assert_eq!(
            broker
                .publish(&id("p"), "other", Arc::from(&b"1"[..]))
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn topics_never_cross_namespaces() {
        // Two tenants, the same grant and the same pattern: each sees only its own.
        let broker = Broker::new();
        let g = grants(&[("orders.>", &[MessagingAccess::Subscribe])]);
        let (a, mut ra) = mailbox(4, g.clone());
        let (b, mut rb) = mailbox(4, g);
        let in_a = ComponentId::new("tenant-a", "sub");
        let in_b = ComponentId::new("tenant-b", "sub");
        let pattern = || TopicPattern::parse("orders.>").unwrap();
        broker.subscribe(&in_a, pattern(), a).unwrap();
        broker.subscribe(&in_b, pattern(), b).unwrap();
        let publisher = ComponentId::new("tenant-a", "pub");
        let payload = || Arc::from(&b"x"[..]);
        assert_eq!(
            broker.publish(&publisher, "orders.new", payload()).unwrap(),
            1
        );
        assert!(ra.try_recv().is_ok(), "same namespace delivers");
        assert!(rb.try_recv().is_err(), "another namespace never does");
        // A namespace with no subscriptions at all.
        let outsider = ComponentId::new("tenant-c", "pub");
        assert_eq!(
            broker.publish(&outsider, "orders.new", payload()).unwrap(),
            0
        );
        assert!(ra.try_recv().is_err() && rb.try_recv().is_err());
        assert_eq!(broker.visited("tenant-a", "orders.new"), 1);
        // Removing one tenant's subscriber leaves the other's.
        broker.unsubscribe_all(&in_a);
        assert_eq!(broker.visited("tenant-a", "orders.new"), 0);
        assert_eq!(broker.visited("tenant-b", "orders.new"), 1);
        // Direct sends name a component of the caller's namespace; the same name in
        // another namespace is another component.
        let (c, mut rc) = mailbox(4, grants(&[]));
        broker.register(&ComponentId::new("tenant-b", "billing"), c);
        assert!(matches!(
            broker.send(Some(&publisher), "tenant-a", "billing", payload()),
            Err(BrokerError::NotFound(t)) if t == "tenant-a/billing"
        ));
        assert!(rc.try_recv().is_err());
    }

    #[tokio::test]
    async fn delivery_checks_the_subscribers_grant() {
        let broker = Broker::new();
        let narrow = grants(&[("events.public", &[MessagingAccess::Subscribe])]);
        let (a, mut ra) = mailbox(4, narrow);
        // Even if a subscription slipped through with a wide pattern, delivery re-checks.
        broker
            .subscribe(&id("a"), TopicPattern::parse("events.>").unwrap(), a)
            .unwrap();
        assert_eq!(
            broker
                .publish(&id("p"), "events.secret", Arc::from(&b"s"[..]))
                .unwrap(),
            0
        );
        assert!(ra.try_recv().is_err());
        assert_eq!(
            broker
                .publish(&id("p"), "events.public", Arc::from(&b"p"[..]))
                .unwrap(),
            1
        );
        assert_eq!(broker.stats().denied_at_delivery.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn full_mailbox_pushes_back_instead_of_queueing() {
        let broker = Broker::new();
        let (a, _ra) = mailbox(1, grants(&[]));
        broker.register(&id("a"), a);
        assert!(broker.send(None, "ns", "a", Arc::from(&b"1"[..])).is_ok());
        assert!(matches!(
            broker.send(None, "ns", "a", Arc::from(&b"2"[..])),
            Err(BrokerError::MailboxFull(t)) if t == "ns/a"
        ));
        assert!(matches!(
            broker.send(None, "ns", "nobody", Arc::from(&b"2"[..])),
            Err(BrokerError::NotFound(t)) if t == "ns/nobody"
        ));
    }

    #[tokio::test]
    async fn request_gets_the_reply_or_times_out() {
        let broker = Broker::new();
        let (a, mut ra) = mailbox(4, grants(&[]));
        broker.register(&id("a"), a);
        let responder = tokio::spawn(async move {
            let env = ra.recv().await.unwrap();
            env.reply.unwrap().send(Ok(env.payload.to_vec())).unwrap();
            // Second request: never answered.
            let _held = ra.recv().await;
            std::future::pending::<()>().await;
        });
        let got = broker
            .request(
                Some(&id("b")),
                "ns",
                "a",
                Arc::from(&b"hi"[..]),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(got.unwrap(), b"hi".to_vec());
        let late = broker
            .request(
                Some(&id("b")),
                "ns",
                "a",
                Arc::from(&b"x"[..]),
                Duration::from_millis(50),
            )
            .await;
        assert!(matches!(late, Err(BrokerError::Timeout(..))), "{late:?}");
        let own = broker
            .request(
                Some(&id("a")),
                "ns",
                "a",
                Arc::from(&b"x"[..]),
                Duration::from_millis(50),
            )
            .await;
        assert!(matches!(own, Err(BrokerError::SelfRequest)));
        responder.abort();
    }

    #[test]
    fn unregister_drops_subscriptions() {
        let broker = Broker::new();
        let (a, _ra) = mailbox(1, grants(&[]));
        broker.register(&id("a"), a.clone());
        broker
            .subscribe(&id("a"), TopicPattern::parse("t").unwrap(), a.clone())
            .unwrap();
        broker
            .subscribe(&id("a"), TopicPattern::parse("t").unwrap(), a)
            .unwrap();
        assert_eq!(broker.subscription_count(&id("a")), 1, "idempotent");
        broker.unregister(&id("a"));
        assert_eq!(broker.subscription_count(&id("a")), 0);
    }

    #[test]
    fn the_index_matches_exactly_what_the_patterns_match() {
        // Oracle: `TopicPattern::matches`. Every pattern × topic pair, one subscriber per
        // pattern; a publish must reach exactly the subscribers whose pattern matches.
        let patterns = [
            "a", "a.b", "a.*", "a.>", "*", ">", "*.b", "*.*", "a.*.c", "a.b.>", "*.>", "b.>",
            "a.*.>", "x-y.z_1",
        ];
        let topics = [
            "a", "b", "a.b", "a.c", "a.b.c", "a.x.c", "b.b", "a.b.c.d", "x-y.z_1", "a..b", "a.",
            ".a", "ab", "a.bc",
        ];
        let broker = Broker::new();
        let g = grants(&[(">", &[MessagingAccess::Subscribe])]);
        let mut boxes = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let (m, rx) = mailbox(64, g.clone());
            broker
                .subscribe(&id(&format!("s{i}")), TopicPattern::parse(p).unwrap(), m)
                .unwrap();
            boxes.push(rx);
        }
        for topic in topics {
            broker
                .publish(&id("p"), topic, Arc::from(&b"x"[..]))
                .unwrap();
            for (p, rx) in patterns.iter().zip(boxes.iter_mut()) {
                let want = TopicPattern::parse(p).unwrap().matches(topic);
                assert_eq!(rx.try_recv().is_ok(), want, "{p} on {topic:?}");
                assert!(rx.try_recv().is_err(), "{p} on {topic:?}: delivered twice");
            }
        }
    }

    #[test]
    fn a_publish_visits_only_the_subscriptions_that_match() {
        // 100 components × 200 distinct patterns under one grant (`orders.>`): 20,000
        // subscriptions, the flood of the review. A publish looks at the matching ones only.
        let broker = Broker::new();
        let g = grants(&[("orders.>", &[MessagingAccess::Subscribe])]);
        let mut keep = Vec::new();
        for c in 0..100 {
            let (m, rx) = mailbox(4, g.clone());
            keep.push(rx);
            for p in 0..200 {
                let pattern = TopicPattern::parse(&format!("orders.c{c}-{p}.>")).unwrap();
                broker
                    .subscribe(&id(&format!("c{c}")), pattern, m.clone())
                    .unwrap();
            }
        }
        let (m, _rx) = mailbox(4, g);
        broker
            .subscribe(&id("all"), TopicPattern::parse("orders.>").unwrap(), m)
            .unwrap();
        assert_eq!(
            broker.visited("ns", "orders.c7-9.new"),
            2,
            "its own pattern and orders.>"
        );
        assert_eq!(broker.visited("ns", "orders.none.new"), 1, "only orders.>");
        assert_eq!(broker.visited("ns", "billing.x"), 0);
        // Removal takes only the removed component's subscriptions.
        broker.unsubscribe_all(&id("c7"));
        assert_eq!(broker.visited("ns", "orders.c7-9.new"), 1);
        assert_eq!(broker.subscription_count(&id("c8")), 200);
    }

    #[test]
    fn a_component_holds_at_most_the_subscription_limit() {
        let broker = Broker::new();
        let (m, _rx) = mailbox(4, grants(&[("t.>", &[MessagingAccess::Subscribe])]));
        let sub = |i: usize| {
            broker.subscribe(
                &id("greedy"),
                TopicPattern::parse(&format!("t.{i}")).unwrap(),
                m.clone(),
            )
        };
        for i in 0..MAX_SUBSCRIPTIONS_PER_COMPONENT {
            sub(i).unwrap();
        }
        assert!(matches!(
            sub(MAX_SUBSCRIPTIONS_PER_COMPONENT),
            Err(BrokerError::TooManySubscriptions(c)) if c == "ns/greedy"
        ));
        sub(0).expect("subscribing again to a held pattern is not a new subscription");
        assert_eq!(
            broker.subscription_count(&id("greedy")),
            MAX_SUBSCRIPTIONS_PER_COMPONENT
        );
        // Another component is not affected by this one's count.
        broker
            .subscribe(&id("other"), TopicPattern::parse("t.0").unwrap(), m.clone())
            .unwrap();
        // After removal the component may subscribe again.
        broker.unsubscribe_all(&id("greedy"));
        sub(MAX_SUBSCRIPTIONS_PER_COMPONENT).unwrap();
    }
}
