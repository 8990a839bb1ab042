//! The immutable, per-instance capability table: the hot-path form of a grant.
//!
//! [`GrantTable::compile`] runs once when an instance is set up and turns the granted
//! [`CapabilitySet`] (request ∩ approval, already parsed and validated by `airssys_crds`)
//! into sorted, de-duplicated arrays split by access mode, so every check is a binary search
//! or a short scan: no locks, no allocation (a non-normalized path is the one exception, see
//! [`GrantTable::check_path`]). Matching rules are the crds ones (`HostPattern::matches`,
//! `Cidr::reaches`, `TopicPattern::matches`, `classify`); this module only chooses the
//! shape. Tests compare every check with the `CapabilitySet::allows_*` oracle.
//!
//! The table only answers; the caller records the outcome (denials through
//! `audit::AuditSink::record`, grants through `audit::AuditSink::count_grant`).

use std::net::IpAddr;

use airssys_crds::capability::{
    AbsPath, AddrClass, CapabilitySet, Cidr, HostPattern, NetTarget, PortRange, TopicPattern,
    classify, covers_normalized, is_host_name, is_ip_literal, is_normalized,
};

/// Read or write, for files and buckets.
pub use airssys_crds::capability::FsAccess as Access;

/// What a capability check was about; the label of the denial and grant counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapabilityKind {
    Filesystem,
    Network,
    Storage,
    Publish,
    Subscribe,
    Send,
    Env,
}

impl CapabilityKind {
    /// Every kind, in counter-array order (`kind as usize`).
    pub const ALL: [CapabilityKind; 7] = [
        Self::Filesystem,
        Self::Network,
        Self::Storage,
        Self::Publish,
        Self::Subscribe,
        Self::Send,
        Self::Env,
    ];

    /// Stable lower-case name used in the audit log and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filesystem => "filesystem",
            Self::Network => "network",
            Self::Storage => "storage",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Send => "send",
            Self::Env => "env",
        }
    }
}

/// A directory the guest may open, for WASI preopens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsGrant {
    /// Normalized absolute guest path (no trailing slash except `/`).
    pub path: Box<str>,
    pub read: bool,
    pub write: bool,
}

impl FsGrant {
    #[inline]
    fn allows(&self, access: Access) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }
}

/// One network grant, flattened.
#[derive(Debug, Clone)]
struct HostRule {
    pattern: HostPattern,
    ports: PortRange,
}

#[derive(Debug, Clone)]
struct CidrRule {
    cidr: Cidr,
    ports: PortRange,
    /// Whether the rule reaches every address of its block, when that is the same for all
    /// of them (`Cidr::uniform_reach`): the connect path then skips `classify`.
    reach: Option<bool>,
}

impl CidrRule {
    /// `Cidr::reaches` for an address inside the block, classifying it (once per check,
    /// into `class`) only when the block's addresses differ.
    #[inline]
    fn reaches(&self, ip: IpAddr, class: &mut Option<AddrClass>) -> bool {
        match self.reach {
            Some(reach) => reach,
            None => self
                .cidr
                .reaches_class(class.get_or_insert_with(|| classify(ip))),
        }
    }
}

/// De-duplicated names sorted by (length, bytes): a lookup finds the run of names of the
/// right length by binary search on lengths, then compares only those.
#[derive(Debug, Clone, Default)]
struct NameSet(Box<[Box<str>]>);

impl NameSet {
    fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut v: Vec<Box<str>> = names.into_iter().map(Box::from).collect();
        v.sort_unstable_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        v.dedup();
        Self(v.into_boxed_slice())
    }

    #[inline]
    fn contains(&self, name: &str) -> bool {
        let first = self.0.partition_point(|n| n.len() < name.len());
        self.0[first..]
            .iter()
            .take_while(|n| n.len() == name.len())
            .any(|n| n.as_bytes() == name.as_bytes())
    }
}

/// Topic patterns for one direction: literal topics looked up in a [`NameSet`], wildcard
/// patterns scanned, each behind the literal tokens it starts with (`orders.` for
/// `orders.>`) so most non-matching patterns cost one `starts_with`.
#[derive(Debug, Clone, Default)]
struct TopicRules {
    literal: NameSet,
    wildcard: Box<[(Box<str>, TopicPattern)]>,
    /// Every pattern as granted, for the (once per subscription) pattern-in-pattern check.
    all: Box<[TopicPattern]>,
}

impl TopicRules {
    fn new<'a>(patterns: impl IntoIterator<Item = &'a TopicPattern>) -> Self {
        let mut literal = Vec::new();
        let mut wildcard: Vec<(Box<str>, TopicPattern)> = Vec::new();
        let mut all: Vec<TopicPattern> = Vec::new();
        for p in patterns {
            if !all.contains(p) {
                all.push(p.clone());
            }
            // The canonical text of a pattern without `*` or `>` tokens is the one topic it
            // matches; keep only those as strings.
            let text = p.to_string();
            let tokens: Vec<&str> = text.split('.').collect();
            let literal_tokens = tokens
                .iter()
                .take_while(|t| **t != "*" && **t != ">")
                .count();
            if literal_tokens == tokens.len() {
                literal.push(text);
            } else if !wildcard.iter().any(|(_, w)| w == p) {
                // A wildcard token needs a non-empty token in its place, so a match always
                // continues past a `.` after the literal tokens.
                let prefix = if literal_tokens == 0 {
                    String::new()
                } else {
                    format!("{}.", tokens[..literal_tokens].join("."))
                };
                wildcard.push((prefix.into(), p.clone()));
            }
        }
        Self {
            literal: NameSet::new(literal.iter().map(String::as_str)),
            wildcard: wildcard.into_boxed_slice(),
            all: all.into_boxed_slice(),
        }
    }

    /// Whether everything `pattern` matches is within one of these patterns.
    fn covers(&self, pattern: &TopicPattern) -> bool {
        self.all.iter().any(|g| pattern.is_within(g))
    }

    #[inline]
    fn allows(&self, topic: &str) -> bool {
        self.literal.contains(topic)
            || self
                .wildcard
                .iter()
                .any(|(prefix, p)| topic.starts_with(&**prefix) && p.matches(topic))
    }
}

/// The compiled grant of one instance. `Send + Sync`; share it in an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct GrantTable {
    /// Sorted by path; duplicates merged (modes OR-ed).
    filesystem: Box<[FsGrant]>,
    /// Per filesystem grant, its first (up to) eight bytes and their mask: one compare
    /// rejects most grants that do not cover a path before any `memcmp`.
    fs_heads: Box<[(u64, u64)]>,
    /// Address grants: reached by address; the only way to special-purpose addresses.
    cidrs: Box<[CidrRule]>,
    /// Host-name grants: the only way to resolve and reach a name.
    hosts: Box<[HostRule]>,
    buckets_read: NameSet,
    buckets_write: NameSet,
    publish: TopicRules,
    subscribe: TopicRules,
    send: NameSet,
    env: NameSet,
}

impl GrantTable {
    /// Compiles the granted set. Never fails: the set is already validated.
    pub fn compile(grant: &CapabilitySet) -> Self {
        let mut filesystem: Vec<FsGrant> = Vec::with_capacity(grant.filesystem.len());
        for g in &grant.filesystem {
            let path = g.prefix.as_str();
            match filesystem.iter_mut().find(|f| &*f.path == path) {
                Some(f) => {
                    f.read |= g.read;
                    f.write |= g.write;
                }
                None => filesystem.push(FsGrant {
                    path: path.into(),
                    read: g.read,
                    write: g.write,
                }),
            }
        }
        filesystem.sort_unstable_by(|a, b| a.path.cmp(&b.path));

        let mut cidrs = Vec::new();
        let mut hosts = Vec::new();
        for g in &grant.network {
            match &g.target {
                NetTarget::Cidr(cidr) => cidrs.push(CidrRule {
                    cidr: *cidr,
                    ports: g.ports,
                    reach: cidr.uniform_reach(),
                }),
                NetTarget::Host(pattern) => hosts.push(HostRule {
                    pattern: pattern.clone(),
                    ports: g.ports,
                }),
            }
        }

        let buckets = |write: bool| {
            NameSet::new(
                grant
                    .storage
                    .iter()
                    .filter(|b| if write { b.write } else { b.read })
                    .map(|b| b.bucket.as_str()),
            )
        };
        let fs_heads = filesystem
            .iter()
            .map(|g| {
                let n = g.path.len().min(8);
                let mask = if n == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * n)) - 1
                };
                (head_word(g.path.as_bytes()) & mask, mask)
            })
            .collect();
        Self {
            filesystem: filesystem.into_boxed_slice(),
            fs_heads,
            cidrs: cidrs.into_boxed_slice(),
            hosts: hosts.into_boxed_slice(),
            buckets_read: buckets(false),
            buckets_write: buckets(true),
            publish: TopicRules::new(
                grant
                    .topics
                    .iter()
                    .filter(|t| t.publish)
                    .map(|t| &t.pattern),
            ),
            subscribe: TopicRules::new(
                grant
                    .topics
                    .iter()
                    .filter(|t| t.subscribe)
                    .map(|t| &t.pattern),
            ),
            send: NameSet::new(grant.send.iter().map(String::as_str)),
            env: NameSet::new(grant.env.iter().map(String::as_str)),
        }
    }

    /// The directories to preopen, sorted by guest path, one entry per path.
    pub fn filesystem_grants(&self) -> &[FsGrant] {
        &self.filesystem
    }

    /// Whether the guest may use `path` with `access`. Component-wise prefix match
    /// (`/app` covers `/app/x`, never `/application`); relative paths and `..` are denied.
    /// The usual case, an already normalized path, is one screening pass plus a prefix scan,
    /// without allocating; any other form is decided on the form `AbsPath::parse`
    /// normalizes it to. Both rules are the crds ones (`is_normalized`, `covers_normalized`).
    pub fn check_path(&self, path: &str, access: Access) -> bool {
        if is_normalized(path) {
            let head = head_word(path.as_bytes());
            return self
                .filesystem
                .iter()
                .zip(&*self.fs_heads)
                .any(|(g, &(want, mask))| {
                    g.allows(access) && head & mask == want && covers_normalized(&g.path, path)
                });
        }
        // Not normalized: decide on the normalized form (allocates; unusual paths only).
        let Ok(path) = AbsPath::parse(path) else {
            return false;
        };
        self.filesystem
            .iter()
            .any(|g| g.allows(access) && covers_normalized(&g.path, path.as_str()))
    }

    /// Whether the guest may connect to `ip:port`, reached through the name `host` if it used
    /// one. Call it with the resolved address, after DNS. A name must be granted as a name
    /// (on this port); an address (CIDR) grant is reached by address, never through a name.
    /// The address must pass as well: a public one needs nothing more, a special-purpose
    /// one (loopback, private, link-local, metadata, ...) an address grant that names its
    /// range (`Cidr::reaches`). The crds rule is `CapabilitySet::allows_connect`.
    pub fn check_connect(&self, host: Option<&str>, ip: IpAddr, port: u16) -> bool {
        // Classified at most once per check, and only when the answer is needed.
        let mut class = None;
        match host {
            None => self.by_address(ip, port, &mut class),
            Some(host) => {
                self.name_granted(host, port)
                    && (class.get_or_insert_with(|| classify(ip)).public
                        || self.by_address(ip, port, &mut class))
            }
        }
    }

    /// Whether an address (CIDR) grant reaches `ip:port`.
    #[inline]
    fn by_address(&self, ip: IpAddr, port: u16, class: &mut Option<AddrClass>) -> bool {
        self.cidrs
            .iter()
            .any(|r| r.ports.contains(port) && r.cidr.contains(ip) && r.reaches(ip, class))
    }

    /// Whether a host-name grant matches `host` on `port`.
    #[inline]
    fn name_granted(&self, host: &str, port: u16) -> bool {
        self.hosts
            .iter()
            .any(|r| r.ports.contains(port) && r.pattern.matches(host))
    }

    /// Whether the guest may look `host` up to connect to it on `port` (outgoing HTTP): it is
    /// a plain host name (`is_host_name`) and a host-name grant matches it on that port.
    /// Address grants never let a name be resolved, so a DNS query leaves the node only for
    /// a name the grant names; the resolved address still goes through
    /// [`GrantTable::check_connect`]. The crds rule is `CapabilitySet::allows_resolve`.
    pub fn may_resolve(&self, host: &str, port: u16) -> bool {
        is_host_name(host) && self.name_granted(host, port)
    }

    /// Whether the guest may resolve `name` (`wasi:sockets` name lookup, any port): an IP
    /// literal (answered without a query), or a plain host name some host-name grant matches.
    /// Address grants do not count: with only `10.0.0.0/8` granted, no name resolves, so DNS
    /// queries cannot carry data out. The crds rule is `CapabilitySet::allows_lookup`.
    pub fn check_lookup(&self, name: &str) -> bool {
        is_ip_literal(name)
            || (is_host_name(name) && self.hosts.iter().any(|r| r.pattern.matches(name)))
    }

    /// Whether any network grant exists (sockets and name lookup are enabled only then).
    pub fn has_network(&self) -> bool {
        !self.cidrs.is_empty() || !self.hosts.is_empty()
    }

    /// What the guest may do in the granted directory `path` (read, write): every grant
    /// covering it counts, because wasi-libc opens through the longest matching preopen, so
    /// `/data/in` must not lose the read a `/data` grant gives it.
    pub fn dir_access(&self, path: &str) -> (bool, bool) {
        self.filesystem
            .iter()
            .filter(|g| covers_normalized(&g.path, path))
            .fold((false, false), |(read, write), g| {
                (read || g.read, write || g.write)
            })
    }

    /// Whether the guest may subscribe with `pattern`: everything it matches must be within
    /// one subscribe grant.
    pub fn check_subscribe_pattern(&self, pattern: &TopicPattern) -> bool {
        self.subscribe.covers(pattern)
    }

    /// Whether the guest may use `bucket` with `access`.
    #[inline]
    pub fn check_bucket(&self, bucket: &str, access: Access) -> bool {
        match access {
            Access::Read => self.buckets_read.contains(bucket),
            Access::Write => self.buckets_write.contains(bucket),
        }
    }

    /// Whether the guest may publish to `topic` (a concrete topic, no wildcards).
    #[inline]
    pub fn check_publish(&self, topic: &str) -> bool {
        self.publish.allows(topic)
    }

    /// Whether the guest may subscribe to, and so receive messages on, `topic`.
    #[inline]
    pub fn check_subscribe(&self, topic: &str) -> bool {
        self.subscribe.allows(topic)
    }

    /// Whether the guest may send directly to (or request from) the component `name`.
    #[inline]
    pub fn check_send(&self, name: &str) -> bool {
        self.send.contains(name)
    }

    /// Whether the config key `name` is exposed to the guest.
    #[inline]
    pub fn check_env(&self, name: &str) -> bool {
        self.env.contains(name)
    }
}

/// The first eight bytes of `bytes` as a little-endian word, zero-padded when shorter.
#[inline]
fn head_word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    if bytes.len() >= 8 {
        // A fixed-size copy: one load, no `memcpy` call.
        word.copy_from_slice(&bytes[..8]);
    } else {
        for (w, b) in word.iter_mut().zip(bytes) {
            *w = *b;
        }
    }
    u64::from_le_bytes(word)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use airssys_crds::capability::Capabilities;

    fn set(yaml: &str) -> CapabilitySet {
        let api: Capabilities = serde_yaml::from_str(yaml).expect("test YAML");
        CapabilitySet::parse(&api).expect("test capabilities parse")
    }

    const GRANT: &str = r#"
filesystem:
  - { path: /data, access: [read, write] }
  - { path: /etc/app, access: [read] }
  - { path: /etc/app, access: [write] }
  - { path: /srv/ro/, access: [read] }
network:
  - { host: "*.example.com", port: 443 }
  - { host: API.Partner.io, port: 8000, endPort: 8100 }
  - { host: 10.0.0.0/8, port: 5432 }
  - { host: "::1", port: 9000 }
storage:
  - { bucket: counters, access: [read, write] }
  - { bucket: cache, access: [read] }
  - { bucket: inbox, access: [write] }
messaging:
  - { topic: "orders.>", access: [publish, subscribe] }
  - { topic: "audit.*", access: [subscribe] }
  - { topic: "events.login", access: [publish] }
  - { topic: "events.login", access: [subscribe] }
  - { topic: "*.health", access: [subscribe] }
  - { component: billing, access: [send] }
env: [{ name: LOG_LEVEL }, { name: REGION }]
"#;

    #[test]
    fn check_path_spec() {
        let set = set(GRANT);
        let t = GrantTable::compile(&set);
        #[rustfmt::skip]
        let cases: &[(&str, &str, Access, bool)] = &[
            ("read in rw dir", "/data/x", Access::Read, true),
            ("write in rw dir", "/data/x/y", Access::Write, true),
            ("the granted dir itself", "/data", Access::Read, true),
            ("merged duplicate grants OR their modes", "/etc/app/conf", Access::Write, true),
            ("read-only dir denies write", "/srv/ro/file", Access::Write, false),
            ("read-only dir allows read", "/srv/ro/file", Access::Read, true),
            ("prefix lookalike is not covered", "/database", Access::Read, false),
            ("parent of a grant is not covered", "/etc", Access::Read, false),
            ("root is not covered", "/", Access::Read, false),
            ("traversal out of a grant", "/data/../etc/passwd", Access::Read, false),
            ("traversal staying inside is still denied", "/data/x/../y", Access::Read, false),
            ("relative path", "data/x", Access::Read, false),
            ("empty path", "", Access::Read, false),
            ("doubled slashes normalize", "//data//x", Access::Read, true),
            ("dot components normalize", "/data/./x", Access::Write, true),
            ("trailing slash normalizes", "/data/", Access::Read, true),
            ("NUL byte", "/data/x\0y", Access::Read, false),
            ("backslash", "/data\\x", Access::Read, false),
            ("outside any grant", "/etc/passwd", Access::Read, false),
            ("granted prefix with traversal tail", "/data/..", Access::Read, false),
            ("granted prefix with dot tail", "/data/.", Access::Read, true),
            ("granted prefix with trailing slash tail", "/data/x/", Access::Write, true),
            ("granted prefix with doubled slash tail", "/data//x", Access::Read, true),
            ("dot-file under a grant", "/data/.env", Access::Read, true),
            ("unnormalized path into a read-only grant", "/srv//ro/./f", Access::Write, false),
            ("unnormalized path outside any grant", "//etc/passwd", Access::Read, false),
        ];
        for (rule, path, access, want) in cases {
            assert_eq!(t.check_path(path, *access), *want, "{rule}");
            assert_eq!(
                set.allows_path(path, *access),
                *want,
                "{rule}: crds oracle agrees"
            );
        }
    }

    #[test]
    fn root_grant_covers_everything_absolute() {
        let t = GrantTable::compile(&set("filesystem: [{ path: /, access: [read] }]"));
        assert!(t.check_path("/", Access::Read));
        assert!(t.check_path("/anything/at/all", Access::Read));
        assert!(!t.check_path("/anything", Access::Write));
        assert!(!t.check_path("relative", Access::Read));
    }

    #[test]
    fn check_connect_spec() {
        let set = set(GRANT);
        let t = GrantTable::compile(&set);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>, &str, u16, bool)] = &[
            ("suffix grant, public address", Some("api.example.com"), "93.184.216.34", 443, true),
            ("suffix grant, deeper name", Some("a.b.example.com"), "93.184.216.34", 443, true),
            ("suffix grant, upper-case name", Some("API.EXAMPLE.COM"), "93.184.216.34", 443, true),
            ("suffix grant, trailing dot", Some("api.example.com."), "93.184.216.34", 443, true),
            ("suffix grant never matches apex", Some("example.com"), "93.184.216.34", 443, false),
            ("suffix lookalike", Some("evilexample.com"), "93.184.216.34", 443, false),
            ("wrong port", Some("api.example.com"), "93.184.216.34", 80, false),
            ("exact grant, port in range", Some("api.partner.io"), "93.184.216.35", 8080, true),
            ("exact grant, range end", Some("api.partner.io"), "93.184.216.35", 8100, true),
            ("exact grant, past range", Some("api.partner.io"), "93.184.216.35", 8101, false),
            ("name resolving to loopback", Some("api.example.com"), "127.0.0.1", 443, false),
            ("name resolving to metadata", Some("api.example.com"), "169.254.169.254", 443, false),
            ("name resolving to private", Some("api.example.com"), "192.168.1.5", 443, false),
            ("name resolving to v6 ULA", Some("api.example.com"), "fd00::1", 443, false),
            ("name resolving to mapped loopback", Some("api.example.com"), "::ffff:127.0.0.1", 443, false),
            ("cidr grant, private address", None, "10.2.3.4", 5432, true),
            ("cidr grant is not reached through a name", Some("db.internal"), "10.2.3.4", 5432, false),
            ("cidr grant is not reached through a granted name on its port", Some("api.example.com"), "10.2.3.4", 443, false),
            ("cidr grant, wrong port", None, "10.2.3.4", 5433, false),
            ("cidr grant, v4-mapped address", None, "::ffff:10.2.3.4", 5432, true),
            ("v6 loopback literal grant", None, "::1", 9000, true),
            ("v4 loopback not granted", None, "127.0.0.1", 9000, false),
            ("bare public address without a name", None, "93.184.216.34", 443, false),
        ];
        for (rule, host, addr, port, want) in cases {
            assert_eq!(t.check_connect(*host, ip(addr), *port), *want, "{rule}");
            assert_eq!(
                set.allows_connect(*host, ip(addr), *port),
                *want,
                "{rule}: crds oracle agrees"
            );
        }
    }

    #[test]
    fn broad_address_grants_and_lookups_spec() {
        let set = set(
            "network: [{ host: 0.0.0.0/0, port: 80 }, { host: \"::/0\", port: 80 }, \
             { host: localhost, port: 443 }]",
        );
        let t = GrantTable::compile(&set);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool)] = &[
            ("broad grant reaches a public address", "93.184.216.34", true),
            ("broad grant does not reach loopback", "127.0.0.1", false),
            ("broad grant does not reach metadata", "169.254.169.254", false),
            ("broad grant does not reach mapped loopback", "::ffff:127.0.0.1", false),
            ("broad grant does not reach v6 loopback", "::1", false),
            ("broad grant does not reach this host", "0.0.0.0", false),
            ("broad grant does not reach NAT64 of loopback", "64:ff9b::7f00:1", false),
            ("broad grant does not reach 6to4 of metadata", "2002:a9fe:a9fe::1", false),
            ("broad grant does not reach AWS v6 metadata", "fd00:ec2::254", false),
        ];
        for (rule, addr, want) in cases {
            assert_eq!(t.check_connect(None, ip(addr), 80), *want, "{rule}");
            assert_eq!(
                set.allows_connect(None, ip(addr), 80),
                *want,
                "{rule}: oracle"
            );
        }
        let only_names = GrantTable::compile(&self::set(
            "network: [{ host: \"*.example.com\", port: 443 }]",
        ));
        #[rustfmt::skip]
        let lookups: &[(&str, &GrantTable, &str, bool)] = &[
            ("a name a host grant matches", &only_names, "api.example.com", true),
            ("a name no grant matches", &only_names, "secret.exfil.example.org", false),
            ("the apex of a suffix grant", &only_names, "example.com", false),
            ("an IP literal needs no query", &only_names, "10.1.2.3", true),
            ("a bracketed IPv6 literal", &only_names, "[::1]", true),
            ("no name where only address grants exist", &t, "db.internal", false),
            ("exfiltration in a name under address grants", &t, "c2VjcmV0.attacker.example", false),
            ("a granted name under address grants", &t, "localhost", true),
            ("an IP literal under address grants", &t, "10.1.2.3", true),
            ("percent escapes are not a name", &only_names, "%61pi.example.com", false),
            ("unicode a resolver maps is not a name", &only_names, "\u{ff41}pi.example.com", false),
        ];
        for (rule, table, name, want) in lookups {
            assert_eq!(table.check_lookup(name), *want, "{rule}");
        }
        let nothing = GrantTable::compile(&CapabilitySet::default());
        assert!(!nothing.check_lookup("example.com"), "no grant, no lookup");
    }

    #[test]
    fn bucket_messaging_env_spec() {
        let set = set(GRANT);
        let t = GrantTable::compile(&set);
        #[rustfmt::skip]
        let buckets: &[(&str, &str, Access, bool)] = &[
            ("rw bucket read", "counters", Access::Read, true),
            ("rw bucket write", "counters", Access::Write, true),
            ("read-only bucket write", "cache", Access::Write, false),
            ("write-only bucket read", "inbox", Access::Read, false),
            ("write-only bucket write", "inbox", Access::Write, true),
            ("name prefix is not the bucket", "counter", Access::Read, false),
            ("unknown bucket", "secrets", Access::Read, false),
        ];
        for (rule, bucket, access, want) in buckets {
            assert_eq!(t.check_bucket(bucket, *access), *want, "{rule}");
            assert_eq!(set.allows_bucket(bucket, *access), *want, "{rule}: oracle");
        }
        #[rustfmt::skip]
        let topics: &[(&str, &str, bool, bool)] = &[
            // (rule, topic, publish, subscribe)
            ("tail pattern, one more token", "orders.eu", true, true),
            ("tail pattern, many tokens", "orders.eu.new", true, true),
            ("tail needs at least one token", "orders", false, false),
            ("star is subscribe-only here", "audit.login", false, true),
            ("star is exactly one token", "audit.a.b", false, false),
            ("literal granted twice, once per mode", "events.login", true, true),
            ("literal does not match a longer topic", "events.login.x", false, false),
            ("empty token", "orders..x", false, false),
            ("unknown topic", "payments.eu", false, false),
            ("leading star", "db.health", false, true),
            ("leading star is one token", "db.x.health", false, false),
            ("literal prefix without its wildcard token", "orders.", false, false),
            ("prefix lookalike of a literal token", "ordersx.eu", false, false),
        ];
        for (rule, topic, publish, subscribe) in topics {
            assert_eq!(t.check_publish(topic), *publish, "{rule}: publish");
            assert_eq!(t.check_subscribe(topic), *subscribe, "{rule}: subscribe");
            assert_eq!(
                set.allows_publish(topic),
                *publish,
                "{rule}: publish oracle"
            );
            assert_eq!(
                set.allows_subscribe(topic),
                *subscribe,
                "{rule}: subscribe oracle"
            );
        }
        assert!(t.check_send("billing"));
        assert!(!t.check_send("billing2"));
        assert!(!t.check_send("Billing"));
        assert!(t.check_env("LOG_LEVEL"));
        assert!(t.check_env("REGION"));
        assert!(!t.check_env("log_level"));
        assert!(!t.check_env("AWS_SECRET_ACCESS_KEY"));
    }

    #[test]
    fn may_resolve_spec() {
        let set = set(GRANT);
        let t = GrantTable::compile(&set);
        #[rustfmt::skip]
        let cases: &[(&str, &str, u16, bool)] = &[
            ("host grant, matching name and port", "api.example.com", 443, true),
            ("host grant, wrong port", "api.example.com", 80, false),
            ("undeclared name is refused before DNS", "evil.test", 443, false),
            ("suffix grant never matches apex", "example.com", 443, false),
            ("exact grant, port in range", "api.partner.io", 8050, true),
            ("exact grant, other name in range", "api.partner.com", 8050, false),
            ("no name on a port only an address grant covers", "db.internal", 5432, false),
            ("no name on a v6 address grant's port", "anything", 9000, false),
            ("a name that is not a plain host name", "%61pi.example.com", 443, false),
        ];
        for (rule, host, port, want) in cases {
            assert_eq!(t.may_resolve(host, *port), *want, "{rule}");
            assert_eq!(
                set.allows_resolve(host, *port),
                *want,
                "{rule}: crds oracle agrees"
            );
        }
        assert!(t.has_network());
        assert!(!GrantTable::compile(&CapabilitySet::default()).has_network());
    }

    /// A small deterministic generator (xorshift64*), so the sampled addresses are the same
    /// on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn precomputed_block_reach_agrees_with_classifying_every_address() {
        // Blocks whose reach is decided once at compile time and blocks that need the
        // address's class, side by side; the table must answer as the crds set does.
        let blocks = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "8.8.8.0/24",
            "100.64.0.0/10",
            "100.100.100.0/24",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "169.254.169.254",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.168.0.0/16",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "255.255.255.255",
            "64.0.0.0/2",
            "93.184.216.34",
            "::/0",
            "2000::/3",
            "2001:db8::/32",
            "2002::/16",
            "2606:2800::/32",
            "fc00::/7",
            "fd00::/8",
            "fe80::/10",
            "ff00::/8",
            "::1",
            "64:ff9b::/96",
            "2001::/32",
            "fd00:ec2::254",
        ];
        let yaml: Vec<String> = blocks
            .iter()
            .map(|b| format!("{{ host: \"{b}\", port: 7 }}"))
            .collect();
        let set = set(&format!("network: [{}]", yaml.join(", ")));
        let t = GrantTable::compile(&set);
        let uniform = t.cidrs.iter().filter(|r| r.reach.is_some()).count();
        assert!(
            uniform >= 15,
            "most blocks are decided at compile time ({uniform})"
        );
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut addrs: Vec<IpAddr> = Vec::new();
        for octet in 0..=255u32 {
            for _ in 0..64 {
                let low = rng.next() as u32 & 0x00ff_ffff;
                addrs.push(IpAddr::from(std::net::Ipv4Addr::from((octet << 24) | low)));
            }
            addrs.push(IpAddr::from(std::net::Ipv4Addr::from(octet << 24)));
            addrs.push(IpAddr::from(std::net::Ipv4Addr::from(
                (octet << 24) | 0x00ff_ffff,
            )));
        }
        for _ in 0..20_000 {
            let bits = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            addrs.push(IpAddr::from(std::net::Ipv6Addr::from(bits)));
            // And inside the low, special end of the space and the blocks above.
            addrs.push(IpAddr::from(std::net::Ipv6Addr::from(bits >> 64)));
        }
        for b in blocks {
            let base: IpAddr = b.split('/').next().unwrap().parse().unwrap();
            addrs.push(base);
            if let IpAddr::V6(v6) = base {
                for _ in 0..64 {
                    let low = u128::from(rng.next());
                    addrs.push(IpAddr::from(std::net::Ipv6Addr::from(u128::from(v6) | low)));
                }
            }
        }
        for ip in addrs {
            let want = set.allows_connect(None, ip, 7);
            assert_eq!(t.check_connect(None, ip, 7), want, "{ip}");
        }
    }

    #[test]
    fn dir_access_spec() {
        let t = GrantTable::compile(&set(r#"
filesystem:
  - { path: /data, access: [read] }
  - { path: /data/in, access: [write] }
  - { path: /out, access: [write] }
  - { path: /rw, access: [read] }
  - { path: /rw, access: [write] }
"#));
        #[rustfmt::skip]
        let cases: &[(&str, &str, (bool, bool))] = &[
            ("read-only grant", "/data", (true, false)),
            ("write-only grant nested in a readable one stays readable", "/data/in", (true, true)),
            ("write-only grant", "/out", (false, true)),
            ("duplicate grants of one path merge", "/rw", (true, true)),
            ("no grant", "/etc", (false, false)),
            ("prefix lookalike is not covered", "/output", (false, false)),
        ];
        for (rule, path, want) in cases {
            assert_eq!(t.dir_access(path), *want, "{rule}");
        }
    }

    #[test]
    fn check_subscribe_pattern_spec() {
        let set = set(GRANT);
        let t = GrantTable::compile(&set);
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool)] = &[
            ("the granted tail pattern", "orders.>", true),
            ("narrower pattern under a tail grant", "orders.eu.*", true),
            ("literal under a tail grant", "orders.eu", true),
            ("the granted star pattern", "audit.*", true),
            ("wider than the star grant", "audit.>", false),
            ("everything", ">", false),
            ("literal subscribe grant", "events.login", true),
            ("star over a literal grant", "events.*", false),
            ("leading star grant", "*.health", true),
            ("publish-only grant does not cover", "events.logout", false),
        ];
        for (rule, pattern, want) in cases {
            let p = TopicPattern::parse(pattern).unwrap();
            assert_eq!(t.check_subscribe_pattern(&p), *want, "{rule}");
            let oracle = set
                .topics
                .iter()
                .any(|g| g.subscribe && p.is_within(&g.pattern));
            assert_eq!(oracle, *want, "{rule}: set oracle agrees");
        }
    }

    #[test]
    fn empty_grant_denies_everything() {
        let t = GrantTable::compile(&CapabilitySet::default());
        let ip: IpAddr = "93.184.216.34".parse().unwrap();
        assert!(!t.check_path("/", Access::Read));
        assert!(!t.check_connect(Some("example.com"), ip, 443));
        assert!(!t.check_bucket("b", Access::Read));
        assert!(!t.check_publish("a"));
        assert!(!t.check_subscribe("a"));
        assert!(!t.check_send("a"));
        assert!(!t.check_env("A"));
        assert!(t.filesystem_grants().is_empty());
    }

    #[test]
    fn filesystem_grants_are_sorted_and_merged_for_preopens() {
        let t = GrantTable::compile(&set(GRANT));
        let got: Vec<(&str, bool, bool)> = t
            .filesystem_grants()
            .iter()
            .map(|g| (&*g.path, g.read, g.write))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/data", true, true),
                ("/etc/app", true, true),
                ("/srv/ro", true, false)
            ]
        );
    }

    #[test]
    fn table_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GrantTable>();
    }
}
