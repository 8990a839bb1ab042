//! The trust decision of DESIGN §2, as a pure function: (artifact facts, sources, request,
//! policy) → [`TrustDecision`].
//!
//! Rules, in order:
//! 0. **Integrity.** Component bytes that do not hash to their digest fail verification,
//!    whatever the sources say. Signatures that do not verify (garbage, tampered, made for
//!    another artifact, by an unknown key) are ignored, as cosign ignores them: they neither
//!    count nor block, and the message reports them. (A registry writer who can add a garbage
//!    signature can also delete the good ones; failing closed on it adds a lever, not safety.)
//! 1. **Deny wins.** Any applicable `Deny` source denies, whatever else matches. Then, with
//!    the policy `require_listed_registry`, an OCI artifact from a registry that no `Trust` or
//!    `DevMode` source names is denied (`RegistryNotListed`): the wall a name-based `Deny`
//!    cannot be against another DNS name of a registry.
//! 2. **Trusted** when an applicable `Trust` source approves the request:
//!    - a registry/signature match approves a request within the source's `capabilityCeiling`;
//!    - a pinned digest entry without components approves a request within the entry's
//!      `capabilities` (the source's ceiling when unset);
//!    - a manual approval (a digest entry naming this component) approves only this digest and a
//!      request within the capabilities approved with it: a narrower request stays approved, a
//!      wider one or a new digest goes back to `PendingApproval`.
//!
//!    A missing ceiling approves nothing beyond an empty request (fail closed).
//! 3. **DevMode** when the operator runs with dev mode enabled and an applicable `DevMode`
//!    source (which must select namespaces by a positive term) admits the request within its
//!    ceiling.
//! 4. Otherwise **Unknown**: `RequestExceedsCeiling` when a source vouches for the artifact but
//!    the request is too wide, else `PendingApproval`.
//!
//! A source applies when its `namespaceSelector` (if any) selects the component's namespace and
//! either its digest list holds the artifact's digest (for approvals: naming this component),
//! or it has registries and/or signers and the artifact meets all of them: repository matches a
//! glob (both in canonical spelling), and at least `minimumSignatures` distinct signers of the
//! source verified.
//!
//! Messages are bounded: each list is summarized ("and N more"), and only sources that concern
//! the component are named (one that matched it, or that matched its repository or some of its
//! signers); a tenant never learns the names of unrelated cluster-wide sources.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use airssys_crds::Digest;
use airssys_crds::capability::CapabilitySet;
use airssys_crds::component::TrustLevel;
use airssys_crds::condition::bounded;
use airssys_crds::trust_source::{Decision, canonical_registry};

use crate::artifact::Signer;
use crate::events::Reason;
use crate::source::{IndexedSource, PinnedDigest};

/// How many items of one list a message names before it counts the rest.
const LIST_LIMIT: usize = 3;
/// The most bytes one item (a problem found in a signature, an excess) takes in a message.
const ITEM_LIMIT: usize = 240;

/// Operator-wide switches the decision depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Whether `DevMode` sources may approve (Helm value `devMode.enabled`).
    pub dev_mode: bool,
    /// Whether an OCI artifact needs its registry named by a `Trust` or `DevMode` source.
    pub require_listed_registry: bool,
}

/// Everything the decision needs to know about one component and its artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentFacts {
    pub namespace: String,
    pub name: String,
    pub namespace_labels: BTreeMap<String, String>,
    /// `host[:port]/path` for OCI artifacts; `None` for HTTPS and ConfigMap artifacts.
    pub repository: Option<String>,
    /// The resolved digest (the manifest digest for OCI); `None` when the bytes failed their
    /// integrity check before a digest could be trusted.
    pub digest: Option<Digest>,
    /// Signers whose cosign signatures verified.
    pub signers: Vec<Signer>,
    /// Signatures that did not verify, one line each: ignored, and reported.
    pub unverifiable: Vec<String>,
    /// Why the component's own bytes failed their integrity check, if they did.
    pub integrity: Option<String>,
    /// The requested capabilities, parsed.
    pub request: CapabilitySet,
}

impl ComponentFacts {
    /// Facts about a component whose artifact resolved to `digest` with nothing else known.
    pub fn new(namespace: &str, name: &str, digest: Digest, request: CapabilitySet) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            namespace_labels: BTreeMap::new(),
            repository: None,
            digest: Some(digest),
            signers: Vec::new(),
            unverifiable: Vec::new(),
            integrity: None,
            request,
        }
    }
}

/// The outcome, ready for status (`trustLevel`, `matchedSources`, the `Approved` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDecision {
    pub level: TrustLevel,
    /// Whether the component may run.
    pub approved: bool,
    /// The `Approved` condition reason.
    pub reason: Reason,
    /// Sources that decided (approving, denying, or vouching but exceeded), sorted.
    pub matched_sources: Vec<String>,
    /// What the component gets: request ∩ approval; empty unless approved.
    pub grant: CapabilitySet,
    /// For people: why, and what to do next. Bounded.
    pub message: String,
}

/// Why a source applies.
#[derive(Debug, Clone)]
enum Basis<'s> {
    /// A digest entry naming this component.
    Approval(&'s PinnedDigest),
    /// A digest entry without components.
    Pinned(&'s PinnedDigest),
    /// Repository and/or signers.
    Vouched {
        repository: bool,
        signers: Vec<String>,
    },
}

impl Basis<'_> {
    fn describe(&self, facts: &ComponentFacts) -> String {
        let text = match self {
            Self::Approval(e) => match &e.approved_by {
                Some(who) => format!("approval of digest {} by {who}", e.digest),
                None => format!("approval of digest {}", e.digest),
            },
            Self::Pinned(e) => match &e.reason {
                Some(why) => format!("digest {} is listed: {why}", e.digest),
                None => format!("digest {} is listed", e.digest),
            },
            Self::Vouched {
                repository,
                signers,
            } => {
                let mut parts = Vec::new();
                if *repository && let Some(repo) = &facts.repository {
                    parts.push(format!("repository {repo} matches"));
                }
                if !signers.is_empty() {
                    parts.push(format!("signed by {}", summarize(signers)));
                }
                parts.join(", ")
            }
        };
        bounded(text, ITEM_LIMIT * 2)
    }
}

/// One applicable source.
struct Match<'s> {
    source: &'s IndexedSource,
    basis: Basis<'s>,
}

impl<'s> Match<'s> {
    /// The set the request must fit: the approval's or entry's capabilities, else the ceiling,
    /// else nothing.
    fn allowance(&self) -> &'s CapabilitySet {
        static NOTHING: std::sync::OnceLock<CapabilitySet> = std::sync::OnceLock::new();
        let entry_caps = match self.basis {
            Basis::Approval(e) | Basis::Pinned(e) => e.capabilities.as_ref(),
            Basis::Vouched { .. } => None,
        };
        entry_caps
            .or(self.source.ceiling.as_ref())
            .unwrap_or_else(|| NOTHING.get_or_init(CapabilitySet::default))
    }
}

/// What the evaluation of the sources noticed besides matches, for the message. Only sources
/// that concern the component land here.
#[derive(Default)]
struct Notes {
    /// Sources that matched the repository or some signers, but had too few signatures.
    short_of_signatures: Vec<String>,
    /// Approvals naming this component for another digest.
    stale_approvals: Vec<String>,
    /// DevMode sources ignored because dev mode is off.
    dev_mode_off: Vec<String>,
    /// Whether a `Trust` or `DevMode` source names the component's registry.
    registry_listed: bool,
}

/// Which sources apply, and notes on near misses.
fn matches<'s>(
    facts: &ComponentFacts,
    repository: Option<&str>,
    sources: impl IntoIterator<Item = &'s IndexedSource>,
    policy: Policy,
) -> (Vec<Match<'s>>, Notes) {
    let mut out = Vec::new();
    let mut notes = Notes::default();
    let registry = repository
        .and_then(|r| r.split_once('/'))
        .map(|(host, _)| host);
    for source in sources {
        if source.decision != Decision::Deny
            && let Some(registry) = registry
            && source.registries.iter().any(|g| g.registry() == registry)
        {
            notes.registry_listed = true;
        }
        let selected = match &source.namespace_selector {
            // A DevMode source applies only through a selector that names namespaces (the
            // index rejects any other; this holds even for a source built in code).
            Some(selector) => {
                (source.decision != Decision::DevMode || selector.names_namespaces())
                    && selector.matches(&facts.namespace_labels)
            }
            None => source.decision != Decision::DevMode,
        };
        if !selected {
            continue;
        }
        let mut bases = Vec::new();
        for entry in &source.digests {
            let same = facts.digest.as_ref() == Some(&entry.digest);
            if entry.is_approval() {
                if entry.names(&facts.namespace, &facts.name) {
                    if same {
                        bases.push(Basis::Approval(entry));
                    } else if source.decision != Decision::Deny {
                        notes.stale_approvals.push(format!(
                            "the approval in TrustSource {} is for digest {}, but the artifact now resolves to {}",
                            source.name,
                            entry.digest,
                            facts.digest.as_ref().map_or("no trusted digest", Digest::as_str)
                        ));
                    }
                }
            } else if same {
                bases.push(Basis::Pinned(entry));
            }
        }
        if !source.registries.is_empty() || source.has_signers() {
            let repository_matches = source.registries.is_empty()
                || repository.is_some_and(|r| source.registries.iter().any(|g| g.matches(r)));
            let signers = if source.has_signers() {
                source.matching_signers(&facts.signers)
            } else {
                Vec::new()
            };
            let enough = !source.has_signers() || signers.len() >= source.minimum_signatures;
            // A key-only source concerns this component only if some of its signers signed it.
            let concerns = !signers.is_empty() || !source.registries.is_empty();
            if repository_matches && enough {
                bases.push(Basis::Vouched {
                    repository: !source.registries.is_empty(),
                    signers,
                });
            } else if repository_matches && concerns && source.decision != Decision::Deny {
                notes.short_of_signatures.push(format!(
                    "TrustSource {} needs {} signature(s) from its keys and identities, found {}{}",
                    source.name,
                    source.minimum_signatures,
                    signers.len(),
                    if signers.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", summarize(&signers))
                    }
                ));
            }
        }
        if source.decision == Decision::DevMode && !policy.dev_mode {
            if !bases.is_empty() {
                notes.dev_mode_off.push(source.name.clone());
            }
            continue;
        }
        out.extend(bases.into_iter().map(|basis| Match { source, basis }));
    }
    (out, notes)
}

/// Decides trust for one component. Pure: same inputs, same decision.
pub fn decide<'s>(
    facts: &ComponentFacts,
    sources: impl IntoIterator<Item = &'s IndexedSource>,
    policy: Policy,
) -> TrustDecision {
    let mut decision = decide_unbounded(facts, sources, policy);
    decision.message = bounded(decision.message, airssys_crds::condition::MESSAGE_LIMIT);
    decision
}

fn decide_unbounded<'s>(
    facts: &ComponentFacts,
    sources: impl IntoIterator<Item = &'s IndexedSource>,
    policy: Policy,
) -> TrustDecision {
    // 0. Integrity of the component's own bytes.
    if let Some(problem) = &facts.integrity {
        return TrustDecision {
            level: TrustLevel::Unknown,
            approved: false,
            reason: Reason::VerificationFailed,
            matched_sources: Vec::new(),
            grant: CapabilitySet::default(),
            message: format!(
                "The artifact failed verification: {}. Publish a correct artifact or fix the reference; nothing is approved meanwhile.",
                bounded(problem.clone(), ITEM_LIMIT * 2)
            ),
        };
    }
    let canonical = facts
        .repository
        .as_deref()
        .map(airssys_crds::trust_source::canonical_repository);
    let (found, notes) = matches(facts, canonical.as_deref(), sources, policy);
    let who = format!("{}/{}", facts.namespace, facts.name);
    let approve_hint = format!("`kubectl wasm approve {who}`");
    let ignored = unverifiable_note(&facts.unverifiable);

    // 1. Deny wins.
    let denials: Vec<&Match<'_>> = found
        .iter()
        .filter(|m| m.source.decision == Decision::Deny)
        .collect();
    if !denials.is_empty() {
        let why: Vec<String> = denials
            .iter()
            .map(|m| {
                format!(
                    "TrustSource {} ({})",
                    m.source.name,
                    m.basis.describe(facts)
                )
            })
            .collect();
        return TrustDecision {
            level: TrustLevel::Denied,
            approved: false,
            reason: Reason::Denied,
            matched_sources: names(denials.iter().copied()),
            grant: CapabilitySet::default(),
            message: format!(
                "Denied by {}. Deny always wins: this artifact does not run while a Deny source matches it; use another artifact or ask the platform team to change the source.{ignored}",
                summarize_with(&why, "; ")
            ),
        };
    }

    // 1b. Listed registries only.
    if policy.require_listed_registry
        && let Some(repository) = &canonical
        && !notes.registry_listed
    {
        let registry = repository
            .split_once('/')
            .map_or(repository.as_str(), |(host, _)| host);
        return TrustDecision {
            level: TrustLevel::Denied,
            approved: false,
            reason: Reason::RegistryNotListed,
            matched_sources: Vec::new(),
            grant: CapabilitySet::default(),
            message: format!(
                "Registry {} is named by no Trust or DevMode TrustSource, and the operator runs components only from registries a source names. Use a listed registry, or ask the platform team to add one.",
                canonical_registry(registry)
            ),
        };
    }

    // 2. Trust, then 3. DevMode: the first kind with an approving match decides.
    let mut exceeded: Vec<(&Match<'_>, Vec<String>)> = Vec::new();
    for decision in [Decision::Trust, Decision::DevMode] {
        let mut approving: Vec<&Match<'_>> = Vec::new();
        for m in found.iter().filter(|m| m.source.decision == decision) {
            let excess = facts.request.excess(m.allowance());
            if excess.is_empty() {
                approving.push(m);
            } else {
                exceeded.push((m, excess));
            }
        }
        // Automatic matches first: they survive digest changes, so they are the better reason.
        approving.sort_by_key(|m| matches!(m.basis, Basis::Approval(_)));
        if let Some(first) = approving.first() {
            let grant = facts.request.intersect(first.allowance());
            let (level, reason) = match (decision, &first.basis) {
                (Decision::DevMode, _) => (TrustLevel::DevMode, Reason::DevModeBypass),
                (_, Basis::Approval(_)) => (TrustLevel::Trusted, Reason::ManuallyApproved),
                _ => (TrustLevel::Trusted, Reason::TrustSourceMatched),
            };
            let basis = format!(
                "TrustSource {} ({})",
                first.source.name,
                first.basis.describe(facts)
            );
            let shown_grant = bounded(grant.to_string(), ITEM_LIMIT * 4);
            let message = if decision == Decision::DevMode {
                format!(
                    "Approved without review under dev mode: {basis} selects namespace {}; its instances emit a Warning Event each time one starts. Granted: {shown_grant}.{ignored}",
                    facts.namespace
                )
            } else {
                format!("Approved by {basis}. Granted: {shown_grant}.{ignored}")
            };
            return TrustDecision {
                level,
                approved: true,
                reason,
                matched_sources: names(approving.into_iter()),
                grant,
                message,
            };
        }
    }

    // 4. Not approved: say why and what to do next.
    let automatic: Vec<&(&Match<'_>, Vec<String>)> = exceeded
        .iter()
        .filter(|(m, _)| !matches!(m.basis, Basis::Approval(_)))
        .collect();
    let approvals: Vec<&(&Match<'_>, Vec<String>)> = exceeded
        .iter()
        .filter(|(m, _)| matches!(m.basis, Basis::Approval(_)))
        .collect();
    let mut message = String::new();
    let reason = if automatic.is_empty() {
        Reason::PendingApproval
    } else {
        for (m, excess) in automatic.iter().take(LIST_LIMIT) {
            let _ = write!(
                message,
                "TrustSource {} vouches for this artifact ({}) but the request exceeds its ceiling: {}. ",
                m.source.name,
                m.basis.describe(facts),
                summarize_with(excess, "; ")
            );
        }
        if automatic.len() > LIST_LIMIT {
            let _ = write!(
                message,
                "{} more TrustSource(s) vouch for it with too low a ceiling. ",
                automatic.len() - LIST_LIMIT
            );
        }
        let _ = write!(
            message,
            "Narrow spec.capabilities, or ask an approver to run {approve_hint}."
        );
        Reason::RequestExceedsCeiling
    };
    for (m, excess) in approvals.iter().take(LIST_LIMIT) {
        let _ = write!(
            message,
            "{}The approval in TrustSource {} covers less than requested: {}. Approvals bind to a digest and a capability set; ask an approver to re-run {approve_hint}.",
            sep(&message),
            m.source.name,
            summarize_with(excess, "; ")
        );
    }
    if reason == Reason::PendingApproval && approvals.is_empty() {
        let from = canonical
            .as_deref()
            .map(|r| format!(" from {r}"))
            .unwrap_or_default();
        let digest = facts.digest.as_ref().map_or("", Digest::as_str);
        let _ = write!(
            message,
            "No TrustSource trusts digest {digest}{from}; it waits for an approver: {approve_hint}."
        );
    }
    for list in [&notes.stale_approvals, &notes.short_of_signatures] {
        if !list.is_empty() {
            let _ = write!(
                message,
                "{}{}.",
                sep(&message),
                capitalize(&summarize_with(list, "; "))
            );
        }
    }
    if !notes.dev_mode_off.is_empty() {
        let _ = write!(
            message,
            "{}TrustSource {} would allow dev mode here, but the operator runs with dev mode disabled.",
            sep(&message),
            summarize(&notes.dev_mode_off)
        );
    }
    message.push_str(&ignored);
    TrustDecision {
        level: TrustLevel::Unknown,
        approved: false,
        reason,
        matched_sources: names(exceeded.iter().map(|(m, _)| *m)),
        grant: CapabilitySet::default(),
        message,
    }
}

/// The message tail reporting signatures that were ignored; empty when there are none.
fn unverifiable_note(unverifiable: &[String]) -> String {
    if unverifiable.is_empty() {
        return String::new();
    }
    format!(
        " Ignored {} signature(s) that do not verify: {}.",
        unverifiable.len(),
        summarize_with(unverifiable, "; ")
    )
}

/// `a, b, c and 7 more`: at most [`LIST_LIMIT`] items, each at most [`ITEM_LIMIT`] bytes.
pub fn summarize(items: &[String]) -> String {
    summarize_with(items, ", ")
}

fn summarize_with(items: &[String], separator: &str) -> String {
    let mut out = items
        .iter()
        .take(LIST_LIMIT)
        .map(|item| bounded(item.clone(), ITEM_LIMIT))
        .collect::<Vec<_>>()
        .join(separator);
    if items.len() > LIST_LIMIT {
        let _ = write!(out, " and {} more", items.len() - LIST_LIMIT);
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

fn sep(message: &str) -> &'static str {
    if message.is_empty() { "" } else { " " }
}

fn names<'a, 's: 'a>(matches: impl Iterator<Item = &'a Match<'s>>) -> Vec<String> {
    let mut names: Vec<String> = matches.map(|m| m.source.name.clone()).collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
pub(crate) mod tests {
    use airssys_crds::trust_source::TrustSourceSpec;

    use super::*;
    use crate::artifact::keys::testkeys::{TestKey, trust_keys_yaml};
    use crate::artifact::{PublicKey, Signer};
    use crate::source::IndexedSource;

    pub(crate) fn spec(yaml: &str) -> TrustSourceSpec {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("test TrustSource YAML: {e}\n{yaml}"))
    }

    fn caps(yaml: &str) -> CapabilitySet {
        CapabilitySet::parse(&serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    fn digest(n: u8) -> Digest {
        Digest::from_sha256(&[n; 32])
    }

    /// A component in namespace `ns` with digest 1, no repository, no signers, empty request.
    pub(crate) fn facts(ns: &str, name: &str) -> ComponentFacts {
        ComponentFacts::new(ns, name, digest(1), CapabilitySet::default())
    }

    const NARROW: &str = "storage: [{ bucket: counters, access: [read] }]";
    const APPROVED: &str = "storage: [{ bucket: counters, access: [read, write] }]";
    const WIDER: &str =
        "storage: [{ bucket: counters, access: [read, write] }]\nenv: [{ name: SECRET }]";

    struct World {
        key: TestKey,
        key_pem: String,
    }

    impl World {
        fn new() -> Self {
            let key = TestKey::p256();
            let key_pem = key.public_pem();
            Self { key, key_pem }
        }

        fn signer(&self) -> Signer {
            Signer::Key {
                fingerprint: PublicKey::from_pem(&self.key_pem)
                    .unwrap()
                    .fingerprint()
                    .to_owned(),
            }
        }

        /// The sources of the spec table, by name.
        fn source(&self, name: &str) -> IndexedSource {
            let hex1 = digest(1).to_string();
            let hex2 = digest(2).to_string();
            let key = self
                .key_pem
                .lines()
                .map(|l| format!("      {l}"))
                .collect::<Vec<_>>()
                .join("\n");
            let yaml = match name {
                "platform" => format!(
                    "decision: Trust\nregistries: [{{ repository: 'r.io/platform/**' }}]\ncapabilityCeiling: {{ {} }}",
                    flow(APPROVED)
                ),
                "platform-no-ceiling" => {
                    "decision: Trust\nregistries: [{ repository: 'r.io/platform/**' }]".into()
                }
                "signed" => format!(
                    "decision: Trust\nkeys:\n  - name: release\n    publicKey: |\n{key}\ncapabilityCeiling: {{ {} }}",
                    flow(APPROVED)
                ),
                "signed-platform" => format!(
                    "decision: Trust\nregistries: [{{ repository: 'r.io/platform/**' }}]\nkeys:\n  - name: release\n    publicKey: |\n{key}\ncapabilityCeiling: {{ {} }}",
                    flow(APPROVED)
                ),
                "approval" => format!(
                    "decision: Trust\ndigests:\n  - digest: {hex1}\n    components: [{{ namespace: team, name: app }}]\n    capabilities: {{ {} }}\n    approvedBy: alice",
                    flow(APPROVED)
                ),
                "approval-other-digest" => format!(
                    "decision: Trust\ndigests:\n  - digest: {hex2}\n    components: [{{ namespace: team, name: app }}]\n    capabilities: {{ {} }}",
                    flow(APPROVED)
                ),
                "approval-other-component" => format!(
                    "decision: Trust\ndigests:\n  - digest: {hex1}\n    components: [{{ namespace: team, name: someone-else }}]\n    capabilities: {{ {} }}",
                    flow(APPROVED)
                ),
                "pinned" => format!(
                    "decision: Trust\ndigests: [{{ digest: {hex1} }}]\ncapabilityCeiling: {{ {} }}",
                    flow(APPROVED)
                ),
                "pinned-own-caps" => format!(
                    "decision: Trust\ndigests: [{{ digest: {hex1}, capabilities: {{ {} }} }}]",
                    flow(NARROW)
                ),
                "deny-digest" => {
                    format!("decision: Deny\ndigests: [{{ digest: {hex1}, reason: 'CVE-1' }}]")
                }
                "deny-repo" => {
                    "decision: Deny\nregistries: [{ repository: 'r.io/platform/quarantine/**' }]"
                        .into()
                }
                "deny-key" => {
                    format!("decision: Deny\nkeys:\n  - name: leaked\n    publicKey: |\n{key}")
                }
                "dev" => format!(
                    "decision: DevMode\nregistries: [{{ repository: 'localhost:5000/**' }}]\nnamespaceSelector: {{ matchLabels: {{ dev: 'on' }} }}\ncapabilityCeiling: {{ {} }}",
                    flow(APPROVED)
                ),
                "platform-team-only" => format!(
                    "decision: Trust\nregistries: [{{ repository: 'r.io/platform/**' }}]\nnamespaceSelector: {{ matchLabels: {{ team: platform }} }}\ncapabilityCeiling: {{ {} }}",
                    flow(APPROVED)
                ),
                other => panic!("no source {other}"),
            };
            IndexedSource::parse(name, Some(1), &spec(&yaml))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        }
    }

    /// YAML block → flow mapping body for embedding.
    fn flow(block: &str) -> String {
        block.lines().collect::<Vec<_>>().join(", ")
    }

    /// One row of the spec.
    struct Row {
        rule: &'static str,
        sources: &'static [&'static str],
        repository: Option<&'static str>,
        digest: u8,
        signed: bool,
        labels: &'static [(&'static str, &'static str)],
        request: &'static str,
        /// Signatures that did not verify.
        unverifiable: &'static [&'static str],
        /// The component's bytes failed their hash check.
        integrity: Option<&'static str>,
        dev_mode: bool,
        /// Policy `require_listed_registry`.
        listed: bool,
        level: TrustLevel,
        approved: bool,
        reason: Reason,
        matched: &'static [&'static str],
        message: &'static str,
        /// Words the message must not hold (names of sources that do not concern it).
        absent: &'static [&'static str],
    }

    const ROW: Row = Row {
        rule: "",
        sources: &[],
        repository: None,
        digest: 1,
        signed: false,
        labels: &[],
        request: "{}",
        unverifiable: &[],
        integrity: None,
        dev_mode: false,
        listed: false,
        level: TrustLevel::Unknown,
        approved: false,
        reason: Reason::PendingApproval,
        matched: &[],
        message: "",
        absent: &[],
    };

    const PLATFORM: Option<&str> = Some("r.io/platform/echo");

    #[test]
    fn decision_spec() {
        use Reason::*;
        use TrustLevel::{Denied as DeniedLevel, DevMode, Trusted};
        let rows = [
            Row {
                rule: "nothing matches: pending, says how to approve",
                message: "kubectl wasm approve team/app",
                ..ROW
            },
            // Trust by registry.
            Row {
                rule: "registry match within ceiling is trusted",
                sources: &["platform"],
                repository: PLATFORM,
                request: APPROVED,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["platform"],
                ..ROW
            },
            Row {
                rule: "registry match with narrower request is trusted",
                sources: &["platform"],
                repository: PLATFORM,
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["platform"],
                ..ROW
            },
            Row {
                rule: "registry match over the ceiling exceeds and lists the excess",
                sources: &["platform"],
                repository: PLATFORM,
                request: WIDER,
                reason: RequestExceedsCeiling,
                matched: &["platform"],
                message: "env SECRET",
                ..ROW
            },
            Row {
                rule: "no ceiling approves only an empty request",
                sources: &["platform-no-ceiling"],
                repository: PLATFORM,
                request: "{}",
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["platform-no-ceiling"],
                ..ROW
            },
            Row {
                rule: "no ceiling fails closed for any request",
                sources: &["platform-no-ceiling"],
                repository: PLATFORM,
                request: NARROW,
                reason: RequestExceedsCeiling,
                matched: &["platform-no-ceiling"],
                ..ROW
            },
            Row {
                rule: "other repository does not match",
                sources: &["platform"],
                repository: Some("r.io/team/echo"),
                request: NARROW,
                ..ROW
            },
            Row {
                rule: "https artifacts match no registry",
                sources: &["platform"],
                repository: None,
                request: NARROW,
                ..ROW
            },
            Row {
                rule: "namespace selector excludes other namespaces",
                sources: &["platform-team-only"],
                repository: PLATFORM,
                request: NARROW,
                ..ROW
            },
            Row {
                rule: "namespace selector admits its namespaces",
                sources: &["platform-team-only"],
                repository: PLATFORM,
                labels: &[("team", "platform")],
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["platform-team-only"],
                ..ROW
            },
            // Trust by signature.
            Row {
                rule: "signed by a trusted key is trusted",
                sources: &["signed"],
                signed: true,
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["signed"],
                message: "signed by key release",
                ..ROW
            },
            Row {
                rule: "unsigned does not match a key source, which is not named",
                sources: &["signed"],
                request: NARROW,
                absent: &["signed", "signature"],
                ..ROW
            },
            Row {
                rule: "unsigned from a source's registry: the source says it needs signatures",
                sources: &["signed-platform"],
                repository: PLATFORM,
                request: NARROW,
                message: "signed-platform needs 1 signature(s)",
                ..ROW
            },
            Row {
                rule: "a signature that does not verify is ignored; the good one counts",
                sources: &["signed"],
                signed: true,
                unverifiable: &["signature 2: its 70 bytes are no ECDSA, ed25519 or RSA signature"],
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["signed"],
                message: "Ignored 1 signature(s) that do not verify: signature 2",
                ..ROW
            },
            Row {
                rule: "only unverifiable signatures: pending, each reported",
                sources: &["signed"],
                unverifiable: &["signature 1: garbage", "signature 2: tampered"],
                request: NARROW,
                message: "Ignored 2 signature(s) that do not verify: signature 1: garbage; signature 2: tampered",
                ..ROW
            },
            // Integrity of the component's own bytes.
            Row {
                rule: "component bytes that fail their hash fail verification whatever trusts them",
                sources: &["platform", "pinned"],
                repository: PLATFORM,
                integrity: Some("component layer has digest sha256:1, expected sha256:2"),
                request: NARROW,
                reason: VerificationFailed,
                message: "failed verification: component layer has digest",
                ..ROW
            },
            Row {
                rule: "registry and key must both hold",
                sources: &["signed-platform"],
                repository: Some("r.io/team/echo"),
                signed: true,
                request: NARROW,
                ..ROW
            },
            Row {
                rule: "registry and key both holding is trusted",
                sources: &["signed-platform"],
                repository: PLATFORM,
                signed: true,
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["signed-platform"],
                ..ROW
            },
            // Pinned digests.
            Row {
                rule: "pinned digest within the source ceiling is trusted",
                sources: &["pinned"],
                request: APPROVED,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["pinned"],
                ..ROW
            },
            Row {
                rule: "pinned digest uses the entry's own capabilities",
                sources: &["pinned-own-caps"],
                request: APPROVED,
                reason: RequestExceedsCeiling,
                matched: &["pinned-own-caps"],
                message: "storage counters (write)",
                ..ROW
            },
            Row {
                rule: "pinned digest does not trust another digest",
                sources: &["pinned"],
                digest: 2,
                request: NARROW,
                ..ROW
            },
            // Manual approvals.
            Row {
                rule: "approval for this digest and request holds",
                sources: &["approval"],
                request: APPROVED,
                level: Trusted,
                approved: true,
                reason: ManuallyApproved,
                matched: &["approval"],
                message: "by alice",
                ..ROW
            },
            Row {
                rule: "approval holds for a narrower request",
                sources: &["approval"],
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: ManuallyApproved,
                matched: &["approval"],
                ..ROW
            },
            Row {
                rule: "approval lapses for a wider request",
                sources: &["approval"],
                request: WIDER,
                reason: PendingApproval,
                matched: &["approval"],
                message: "covers less than requested: env SECRET",
                ..ROW
            },
            Row {
                rule: "approval lapses for a new digest",
                sources: &["approval"],
                digest: 2,
                request: APPROVED,
                message: "now resolves to",
                ..ROW
            },
            Row {
                rule: "approval of an old digest does not carry over",
                sources: &["approval-other-digest"],
                request: APPROVED,
                message: "is for digest",
                ..ROW
            },
            Row {
                rule: "approval of another component does not apply",
                sources: &["approval-other-component"],
                request: APPROVED,
                ..ROW
            },
            Row {
                rule: "an automatic match is preferred over an approval",
                sources: &["approval", "platform"],
                repository: PLATFORM,
                request: APPROVED,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["approval", "platform"],
                ..ROW
            },
            Row {
                rule: "an approval rescues a request over the ceiling",
                sources: &["approval", "pinned-own-caps"],
                request: APPROVED,
                level: Trusted,
                approved: true,
                reason: ManuallyApproved,
                matched: &["approval"],
                ..ROW
            },
            // Deny wins.
            Row {
                rule: "deny by digest wins over a registry trust",
                sources: &["platform", "deny-digest"],
                repository: PLATFORM,
                request: NARROW,
                level: DeniedLevel,
                reason: Denied,
                matched: &["deny-digest"],
                message: "CVE-1",
                ..ROW
            },
            Row {
                rule: "deny wins over a manual approval",
                sources: &["approval", "deny-digest"],
                request: NARROW,
                level: DeniedLevel,
                reason: Denied,
                matched: &["deny-digest"],
                ..ROW
            },
            Row {
                rule: "deny by repository",
                sources: &["platform", "deny-repo"],
                repository: Some("r.io/platform/quarantine/x"),
                request: NARROW,
                level: DeniedLevel,
                reason: Denied,
                matched: &["deny-repo"],
                ..ROW
            },
            Row {
                rule: "deny by signing key wins over trust by the same key",
                sources: &["signed", "deny-key"],
                signed: true,
                request: NARROW,
                level: DeniedLevel,
                reason: Denied,
                matched: &["deny-key"],
                ..ROW
            },
            Row {
                rule: "deny wins over dev mode",
                sources: &["dev", "deny-digest"],
                repository: Some("localhost:5000/x"),
                labels: &[("dev", "on")],
                dev_mode: true,
                level: DeniedLevel,
                reason: Denied,
                matched: &["deny-digest"],
                ..ROW
            },
            Row {
                rule: "deny by repository holds for every spelling of the registry",
                sources: &["platform", "deny-repo"],
                repository: Some("R.IO.:0443/platform/quarantine/x"),
                request: NARROW,
                level: DeniedLevel,
                reason: Denied,
                matched: &["deny-repo"],
                ..ROW
            },
            Row {
                rule: "trust by repository holds for every spelling of the registry",
                sources: &["platform"],
                repository: Some("r.io:443/platform/echo"),
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["platform"],
                ..ROW
            },
            // Listed registries only.
            Row {
                rule: "listed-registry policy denies a registry no source names, approval or not",
                sources: &["approval"],
                repository: Some("alias.r.io/platform/echo"),
                request: APPROVED,
                listed: true,
                level: DeniedLevel,
                reason: RegistryNotListed,
                message: "Registry alias.r.io is named by no",
                absent: &["approval"],
                ..ROW
            },
            Row {
                rule: "listed-registry policy admits a registry a trust source names",
                sources: &["approval", "platform"],
                repository: Some("R.io:443/team/echo"),
                request: APPROVED,
                listed: true,
                level: Trusted,
                approved: true,
                reason: ManuallyApproved,
                matched: &["approval"],
                ..ROW
            },
            Row {
                rule: "a registry named only by a deny source is not listed",
                sources: &["approval", "deny-repo"],
                repository: Some("r.io/team/echo"),
                request: APPROVED,
                listed: true,
                level: DeniedLevel,
                reason: RegistryNotListed,
                ..ROW
            },
            Row {
                rule: "without the policy an approval holds from any registry",
                sources: &["approval"],
                repository: Some("alias.r.io/platform/echo"),
                request: APPROVED,
                level: Trusted,
                approved: true,
                reason: ManuallyApproved,
                matched: &["approval"],
                ..ROW
            },
            Row {
                rule: "the policy leaves artifacts without a registry to the sources",
                sources: &["approval"],
                request: APPROVED,
                listed: true,
                level: Trusted,
                approved: true,
                reason: ManuallyApproved,
                matched: &["approval"],
                ..ROW
            },
            Row {
                rule: "sources that do not concern the component are not named",
                sources: &["signed", "platform-team-only", "deny-repo", "pinned"],
                repository: Some("r.io/team/echo"),
                digest: 2,
                request: NARROW,
                message: "waits for an approver",
                absent: &["signed", "platform-team-only", "deny-repo", "pinned"],
                ..ROW
            },
            Row {
                rule: "deny that does not match leaves trust alone",
                sources: &["platform", "deny-repo"],
                repository: PLATFORM,
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["platform"],
                ..ROW
            },
            // Dev mode.
            Row {
                rule: "dev mode runs in a selected namespace when enabled",
                sources: &["dev"],
                repository: Some("localhost:5000/x"),
                labels: &[("dev", "on")],
                dev_mode: true,
                request: NARROW,
                level: DevMode,
                approved: true,
                reason: DevModeBypass,
                matched: &["dev"],
                message: "Warning Event",
                ..ROW
            },
            Row {
                rule: "dev mode needs the operator flag",
                sources: &["dev"],
                repository: Some("localhost:5000/x"),
                labels: &[("dev", "on")],
                request: NARROW,
                message: "dev mode disabled",
                ..ROW
            },
            Row {
                rule: "dev mode needs a selected namespace",
                sources: &["dev"],
                repository: Some("localhost:5000/x"),
                dev_mode: true,
                request: NARROW,
                ..ROW
            },
            Row {
                rule: "dev mode keeps its ceiling",
                sources: &["dev"],
                repository: Some("localhost:5000/x"),
                labels: &[("dev", "on")],
                dev_mode: true,
                request: WIDER,
                reason: RequestExceedsCeiling,
                matched: &["dev"],
                ..ROW
            },
            Row {
                rule: "trust is preferred over dev mode",
                sources: &["dev", "pinned"],
                repository: Some("localhost:5000/x"),
                labels: &[("dev", "on")],
                dev_mode: true,
                request: NARROW,
                level: Trusted,
                approved: true,
                reason: TrustSourceMatched,
                matched: &["pinned"],
                ..ROW
            },
            Row {
                rule: "dev mode runs what trust would refuse as too wide",
                sources: &["dev", "pinned-own-caps"],
                repository: Some("localhost:5000/x"),
                labels: &[("dev", "on")],
                dev_mode: true,
                request: APPROVED,
                level: DevMode,
                approved: true,
                reason: DevModeBypass,
                matched: &["dev"],
                ..ROW
            },
        ];
        let world = World::new();
        for row in rows {
            let sources: Vec<IndexedSource> = row.sources.iter().map(|s| world.source(s)).collect();
            let facts = ComponentFacts {
                namespace: "team".into(),
                name: "app".into(),
                namespace_labels: row
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                repository: row.repository.map(str::to_owned),
                digest: Some(digest(row.digest)),
                signers: if row.signed {
                    vec![world.signer()]
                } else {
                    Vec::new()
                },
                unverifiable: row.unverifiable.iter().map(|u| (*u).to_owned()).collect(),
                integrity: row.integrity.map(str::to_owned),
                request: caps(row.request),
            };
            let policy = Policy {
                dev_mode: row.dev_mode,
                require_listed_registry: row.listed,
            };
            let d = decide(&facts, &sources, policy);
            let rule = row.rule;
            assert_eq!(
                (d.level, d.approved, d.reason),
                (row.level, row.approved, row.reason),
                "{rule}: {}",
                d.message
            );
            assert_eq!(d.matched_sources, row.matched, "{rule}: matched sources");
            assert!(
                d.message.contains(row.message),
                "{rule}: message {:?} lacks {:?}",
                d.message,
                row.message
            );
            if d.approved {
                assert_eq!(
                    d.grant,
                    facts.request.intersect(&d.grant),
                    "{rule}: grant within request"
                );
                assert!(
                    facts.request.is_within(&d.grant),
                    "{rule}: an approved request is granted whole"
                );
            } else {
                assert!(
                    d.grant.is_empty(),
                    "{rule}: nothing granted unless approved"
                );
            }
            assert!(!d.message.is_empty(), "{rule}: a message is always given");
            for word in row.absent {
                assert!(
                    !d.message.contains(word),
                    "{rule}: message {:?} names {word:?}",
                    d.message
                );
            }
        }
        // Keep the key alive and used: signatures in the table come from this key.
        assert!(!world.key.sign(b"x").is_empty());
    }

    #[test]
    fn two_signatures_needed() {
        let a = TestKey::p256();
        let b = TestKey::ed25519();
        let yaml = trust_keys_yaml(Some(2), &[("a", &a), ("b", &b)]);
        let source = IndexedSource::parse("two", None, &spec(&yaml)).unwrap();
        let signer = |k: &TestKey| Signer::Key {
            fingerprint: PublicKey::from_pem(&k.public_pem())
                .unwrap()
                .fingerprint()
                .to_owned(),
        };
        let mut f = facts("ns", "c");
        let cases = [
            ("no signature", vec![], false),
            ("one of two", vec![signer(&a)], false),
            (
                "the same signer twice is one",
                vec![signer(&a), signer(&a)],
                false,
            ),
            ("both", vec![signer(&a), signer(&b)], true),
        ];
        for (rule, signers, approved) in cases {
            f.signers = signers;
            let some = !f.signers.is_empty();
            let d = decide(&f, [&source], Policy::default());
            assert_eq!(d.approved, approved, "{rule}: {}", d.message);
            if !approved && some {
                assert!(
                    d.message.contains("needs 2 signature(s)"),
                    "{rule}: {}",
                    d.message
                );
            }
        }
    }

    #[test]
    fn many_sources_keep_the_message_short_and_name_only_those_that_concern_it() {
        let world = World::new();
        let mut sources = Vec::new();
        for i in 0..500 {
            // Key-only sources of other teams: none concerns an unsigned component.
            let mut s = world.source("signed");
            s.name = format!("team-{i}-keys");
            sources.push(s);
            // Sources that vouch for the repository with too low a ceiling: they concern it.
            let mut p = world.source("pinned-own-caps");
            p.name = format!("narrow-{i}");
            sources.push(p);
        }
        let mut f = facts("team", "app");
        f.request = caps(APPROVED);
        f.unverifiable = (0..300)
            .map(|i| format!("signature {i}: {}", "x".repeat(5000)))
            .collect();
        let d = decide(&f, &sources, Policy::default());
        assert_eq!(d.reason, Reason::RequestExceedsCeiling, "{}", d.message);
        assert!(d.message.len() < 4096, "{} bytes", d.message.len());
        assert!(!d.message.contains("team-"), "{}", d.message);
        assert!(d.message.contains("497 more"), "{}", d.message);
        assert!(
            d.message.contains("Ignored 300 signature(s)"),
            "{}",
            d.message
        );
        assert!(d.message.contains("and 297 more"), "{}", d.message);
    }

    #[test]
    fn dev_mode_needs_a_selector_that_names_namespaces_even_if_built_in_code() {
        let world = World::new();
        let mut dev = world.source("dev");
        dev.namespace_selector = Some(airssys_crds::trust_source::LabelSelector::default());
        let mut f = facts("team", "app");
        f.repository = Some("localhost:5000/x".into());
        let policy = Policy {
            dev_mode: true,
            require_listed_registry: false,
        };
        let d = decide(&f, [&dev], policy);
        assert!(!d.approved, "{}", d.message);
    }
}
