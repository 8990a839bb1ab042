//! The parsed capability set: comparison (approval), intersection (grant) and checks (agent).

use std::fmt;
use std::net::IpAddr;

use super::network::{NetTarget, PortRange, is_host_name, is_ip_literal, is_restricted};
use super::path::{AbsPath, covers_normalized, is_normalized};
use super::topic::{TopicPattern, check_bucket, check_component_name, check_env_name};
use super::{Capabilities, CapabilityError, FsAccess, MessagingAccess};

/// A directory prefix and what may be done below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathGrant {
    pub prefix: AbsPath,
    pub read: bool,
    pub write: bool,
}

/// A destination and its ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetGrant {
    pub target: NetTarget,
    pub ports: PortRange,
}

/// A bucket and what may be done with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketGrant {
    pub bucket: String,
    pub read: bool,
    pub write: bool,
}

/// A topic pattern and what may be done with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicGrant {
    pub pattern: TopicPattern,
    pub publish: bool,
    pub subscribe: bool,
}

/// A validated, normalized set of capabilities. Built only by [`CapabilitySet::parse`] (or as
/// the result of [`CapabilitySet::intersect`]), so every value in it is well-formed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilitySet {
    pub filesystem: Vec<PathGrant>,
    pub network: Vec<NetGrant>,
    pub storage: Vec<BucketGrant>,
    pub topics: Vec<TopicGrant>,
    /// Components that may receive direct messages and requests.
    pub send: Vec<String>,
    pub env: Vec<String>,
}

/// The two access bits shared by filesystem and storage entries.
fn read_write(
    kind: &'static str,
    entry: &str,
    access: &[FsAccess],
) -> Result<(bool, bool), CapabilityError> {
    let read = access.contains(&FsAccess::Read);
    let write = access.contains(&FsAccess::Write);
    if !read && !write {
        return Err(CapabilityError::NoAccess {
            kind,
            entry: entry.to_owned(),
            allowed: "read, write",
        });
    }
    Ok((read, write))
}

impl CapabilitySet {
    /// Parses and normalizes the API shape. The first malformed entry is the error.
    pub fn parse(caps: &Capabilities) -> Result<Self, CapabilityError> {
        let mut set = Self::default();
        for fs in &caps.filesystem {
            let prefix = AbsPath::parse(&fs.path)?;
            let (read, write) = read_write("filesystem", &fs.path, &fs.access)?;
            set.filesystem.push(PathGrant {
                prefix,
                read,
                write,
            });
        }
        for net in &caps.network {
            set.network.push(NetGrant {
                target: NetTarget::parse(&net.host)?,
                ports: PortRange::new(net.port, net.end_port)?,
            });
        }
        for kv in &caps.storage {
            check_bucket(&kv.bucket)?;
            let (read, write) = read_write("storage", &kv.bucket, &kv.access)?;
            set.storage.push(BucketGrant {
                bucket: kv.bucket.clone(),
                read,
                write,
            });
        }
        for msg in &caps.messaging {
            let has = |a| msg.access.contains(&a);
            match (&msg.topic, &msg.component) {
                (Some(topic), None) => {
                    if has(MessagingAccess::Send) {
                        return Err(CapabilityError::InvalidMessaging {
                            entry: topic.clone(),
                            reason: "topics take publish and subscribe; send is for a component",
                        });
                    }
                    let grant = TopicGrant {
                        pattern: TopicPattern::parse(topic)?,
                        publish: has(MessagingAccess::Publish),
                        subscribe: has(MessagingAccess::Subscribe),
                    };
                    if !grant.publish && !grant.subscribe {
                        return Err(CapabilityError::NoAccess {
                            kind: "messaging",
                            entry: topic.clone(),
                            allowed: "publish, subscribe",
                        });
                    }
                    set.topics.push(grant);
                }
                (None, Some(component)) => {
                    check_component_name(component)?;
                    if !has(MessagingAccess::Send) || msg.access.len() != 1 {
                        return Err(CapabilityError::InvalidMessaging {
                            entry: component.clone(),
                            reason: "a component entry takes exactly [send]",
                        });
                    }
                    set.send.push(component.clone());
                }
                _ => {
                    return Err(CapabilityError::InvalidMessaging {
                        entry: format!("{:?}", msg.access),
                        reason: "names exactly one of topic or component",
                    });
                }
            }
        }
        for env in &caps.env {
            check_env_name(&env.name)?;
            set.env.push(env.name.clone());
        }
        Ok(set)
    }

    /// Whether nothing at all is granted.
    pub fn is_empty(&self) -> bool {
        self.filesystem.is_empty()
            && self.network.is_empty()
            && self.storage.is_empty()
            && self.topics.is_empty()
            && self.send.is_empty()
            && self.env.is_empty()
    }

    /// Whether everything `self` asks for is covered by `outer` (a ceiling or an approval).
    /// Each entry must fit inside one entry of `outer`, access bits included.
    pub fn is_within(&self, outer: &CapabilitySet) -> bool {
        self.excess_items(outer).next().is_none()
    }

    /// The entries of `self` that `outer` does not cover, as readable strings for conditions
    /// and `kubectl wasm explain` (for example `filesystem /data (write)`).
    pub fn excess(&self, outer: &CapabilitySet) -> Vec<String> {
        self.excess_items(outer).collect()
    }

    fn excess_items<'a>(&'a self, outer: &'a CapabilitySet) -> impl Iterator<Item = String> + 'a {
        let fs = self.filesystem.iter().filter_map(move |g| {
            let read = !g.read
                || outer
                    .filesystem
                    .iter()
                    .any(|o| o.read && o.prefix.covers(&g.prefix));
            let write = !g.write
                || outer
                    .filesystem
                    .iter()
                    .any(|o| o.write && o.prefix.covers(&g.prefix));
            missing("filesystem", &g.prefix, &[(read, "read"), (write, "write")])
        });
        let net = self.network.iter().filter_map(move |g| {
            let covered = outer
                .network
                .iter()
                .any(|o| g.target.is_within(&o.target) && g.ports.is_within(&o.ports));
            (!covered).then(|| format!("network {g}"))
        });
        let kv = self.storage.iter().filter_map(move |g| {
            let read = !g.read || outer.storage.iter().any(|o| o.read && o.bucket == g.bucket);
            let write = !g.write
                || outer
                    .storage
                    .iter()
                    .any(|o| o.write && o.bucket == g.bucket);
            missing("storage", &g.bucket, &[(read, "read"), (write, "write")])
        });
        let topics = self.topics.iter().filter_map(move |g| {
            let within = |o: &&TopicGrant| g.pattern.is_within(&o.pattern);
            let publish = !g.publish || outer.topics.iter().filter(within).any(|o| o.publish);
            let subscribe = !g.subscribe || outer.topics.iter().filter(within).any(|o| o.subscribe);
            missing(
                "messaging topic",
                &g.pattern,
                &[(publish, "publish"), (subscribe, "subscribe")],
            )
        });
        let send = self
            .send
            .iter()
            .filter(move |c| !outer.send.contains(c))
            .map(|c| format!("messaging component {c} (send)"));
        let env = self
            .env
            .iter()
            .filter(move |e| !outer.env.contains(e))
            .map(|e| format!("env {e}"));
        fs.chain(net).chain(kv).chain(topics).chain(send).chain(env)
    }

    /// The grant: what `self` (a request) asks for, cut down to what `approved` covers.
    /// An entry survives with only the access bits some approved entry covers.
    pub fn intersect(&self, approved: &CapabilitySet) -> CapabilitySet {
        let filesystem = self
            .filesystem
            .iter()
            .filter_map(|g| {
                let covers = |o: &&PathGrant| o.prefix.covers(&g.prefix);
                let read = g.read && approved.filesystem.iter().filter(covers).any(|o| o.read);
                let write = g.write && approved.filesystem.iter().filter(covers).any(|o| o.write);
                (read || write).then(|| PathGrant {
                    prefix: g.prefix.clone(),
                    read,
                    write,
                })
            })
            .collect();
        let network = self
            .network
            .iter()
            .filter(|g| {
                approved
                    .network
                    .iter()
                    .any(|o| g.target.is_within(&o.target) && g.ports.is_within(&o.ports))
            })
            .cloned()
            .collect();
        let storage = self
            .storage
            .iter()
            .filter_map(|g| {
                let same = |o: &&BucketGrant| o.bucket == g.bucket;
                let read = g.read && approved.storage.iter().filter(same).any(|o| o.read);
                let write = g.write && approved.storage.iter().filter(same).any(|o| o.write);
                (read || write).then(|| BucketGrant {
                    bucket: g.bucket.clone(),
                    read,
                    write,
                })
            })
            .collect();
        let topics = self
            .topics
            .iter()
            .filter_map(|g| {
                let within = |o: &&TopicGrant| g.pattern.is_within(&o.pattern);
                let publish = g.publish && approved.topics.iter().filter(within).any(|o| o.publish);
                let subscribe =
                    g.subscribe && approved.topics.iter().filter(within).any(|o| o.subscribe);
                (publish || subscribe).then(|| TopicGrant {
                    pattern: g.pattern.clone(),
                    publish,
                    subscribe,
                })
            })
            .collect();
        CapabilitySet {
            filesystem,
            network,
            storage,
            topics,
            send: self
                .send
                .iter()
                .filter(|c| approved.send.contains(c))
                .cloned()
                .collect(),
            env: self
                .env
                .iter()
                .filter(|e| approved.env.contains(e))
                .cloned()
                .collect(),
        }
    }

    /// Whether the guest may use `path` with `access`. Unparseable paths (relative, `..`) are
    /// denied.
    pub fn allows_path(&self, path: &str, access: FsAccess) -> bool {
        let mode = |g: &PathGrant| match access {
            FsAccess::Read => g.read,
            FsAccess::Write => g.write,
        };
        if is_normalized(path) {
            // Already in parsed form: no allocation.
            return self
                .filesystem
                .iter()
                .any(|g| mode(g) && covers_normalized(g.prefix.as_str(), path));
        }
        let Ok(path) = AbsPath::parse(path) else {
            return false;
        };
        self.filesystem
            .iter()
            .any(|g| mode(g) && g.prefix.covers(&path))
    }

    /// Whether the guest may connect to `ip:port`, reached by the name `host` if it used one.
    /// A name must be granted as a name ([`CapabilitySet::allows_resolve`]): an address
    /// (CIDR) grant is reached by address literal, never by whatever name resolves into it.
    /// The address must pass too: a public one is reached by the name grant alone; a
    /// loopback, private, link-local or metadata address needs, besides, an address grant
    /// naming that address's range ([`super::Cidr::reaches`]: `0.0.0.0/0` does not reach
    /// loopback).
    pub fn allows_connect(&self, host: Option<&str>, ip: IpAddr, port: u16) -> bool {
        let by_address = self.network.iter().any(|g| {
            g.ports.contains(port) && matches!(&g.target, NetTarget::Cidr(cidr) if cidr.reaches(ip))
        });
        match host {
            None => by_address,
            Some(host) => self.allows_resolve(host, port) && (!is_restricted(ip) || by_address),
        }
    }

    /// Whether a connection to `host:port` by name may look `host` up: a host-name grant
    /// matches it on that port. Address (CIDR) grants never let a name be resolved, so DNS
    /// queries carry only names a grant names.
    pub fn allows_resolve(&self, host: &str, port: u16) -> bool {
        is_host_name(host)
            && self.network.iter().any(|g| {
                g.ports.contains(port)
                    && matches!(&g.target, NetTarget::Host(pattern) if pattern.matches(host))
            })
    }

    /// Whether a `wasi:sockets` lookup of `name` (no port) may run: an IP literal (answered
    /// without a query), or a host name some host-name grant matches on any port.
    pub fn allows_lookup(&self, name: &str) -> bool {
        is_ip_literal(name)
            || (is_host_name(name)
                && self.network.iter().any(
                    |g| matches!(&g.target, NetTarget::Host(pattern) if pattern.matches(name)),
                ))
    }

    /// Whether the guest may use `bucket` with `access`.
    pub fn allows_bucket(&self, bucket: &str, access: FsAccess) -> bool {
        self.storage.iter().any(|g| {
            g.bucket == bucket
                && match access {
                    FsAccess::Read => g.read,
                    FsAccess::Write => g.write,
                }
        })
    }

    /// Whether the guest may publish to `topic`.
    pub fn allows_publish(&self, topic: &str) -> bool {
        self.topics
            .iter()
            .any(|g| g.publish && g.pattern.matches(topic))
    }

    /// Whether the guest may subscribe to (receive from) `topic`.
    pub fn allows_subscribe(&self, topic: &str) -> bool {
        self.topics
            .iter()
            .any(|g| g.subscribe && g.pattern.matches(topic))
    }

    /// Whether the guest may send directly to `component`.
    pub fn allows_send(&self, component: &str) -> bool {
        self.send.iter().any(|c| c == component)
    }

    /// Whether the guest may read config key `name`.
    pub fn allows_env(&self, name: &str) -> bool {
        self.env.iter().any(|e| e == name)
    }
}

/// `Some("kind entry (mode, mode)")` naming the modes not covered, or `None` when all are.
fn missing(kind: &str, entry: &dyn fmt::Display, modes: &[(bool, &str)]) -> Option<String> {
    let lacking: Vec<&str> = modes
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, m)| *m)
        .collect();
    (!lacking.is_empty()).then(|| format!("{kind} {entry} ({})", lacking.join(", ")))
}

impl fmt::Display for NetGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.target, self.ports)
    }
}

impl fmt::Display for CapabilitySet {
    /// One line per entry, the same words [`CapabilitySet::excess`] uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = CapabilitySet::default();
        let mut first = true;
        for line in self.excess_items(&lines) {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            f.write_str(&line)?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a set from YAML in the API shape, as a user writes it.
    fn caps(yaml: &str) -> CapabilitySet {
        let api: Capabilities = serde_yaml::from_str(yaml).expect("test YAML is valid");
        CapabilitySet::parse(&api).expect("test capabilities parse")
    }

    fn parse_err(yaml: &str) -> CapabilityError {
        let api: Capabilities = serde_yaml::from_str(yaml).expect("test YAML is valid");
        CapabilitySet::parse(&api).expect_err("must be rejected")
    }

    const CEILING: &str = r#"
filesystem: [{ path: /data, access: [read, write] }, { path: /etc/app, access: [read] }]
network:
  - { host: "*.example.com", port: 443 }
  - { host: api.partner.io, port: 8000, endPort: 8100 }
  - { host: 10.0.0.0/8, port: 5432 }
storage: [{ bucket: counters, access: [read, write] }, { bucket: cache, access: [read] }]
messaging:
  - { topic: "orders.>", access: [publish, subscribe] }
  - { topic: "audit.*", access: [subscribe] }
  - { component: billing, access: [send] }
env: [{ name: LOG_LEVEL }]
"#;

    #[test]
    fn within_ceiling_spec() {
        let ceiling = caps(CEILING);
        let cases: &[(&str, &str, bool)] = &[
            ("empty request fits anything", "{}", true),
            ("the ceiling fits itself", CEILING, true),
            (
                "subdirectory with fewer modes fits",
                "filesystem: [{ path: /data/logs, access: [read] }]",
                true,
            ),
            (
                "write under read-only prefix exceeds",
                "filesystem: [{ path: /etc/app, access: [write] }]",
                false,
            ),
            (
                "prefix lookalike exceeds",
                "filesystem: [{ path: /database, access: [read] }]",
                false,
            ),
            (
                "parent of granted dir exceeds",
                "filesystem: [{ path: /, access: [read] }]",
                false,
            ),
            (
                "subdomain under suffix fits",
                "network: [{ host: a.b.example.com, port: 443 }]",
                true,
            ),
            (
                "apex under suffix exceeds",
                "network: [{ host: example.com, port: 443 }]",
                false,
            ),
            (
                "suffix lookalike exceeds",
                "network: [{ host: evilexample.com, port: 443 }]",
                false,
            ),
            (
                "other port exceeds",
                "network: [{ host: a.example.com, port: 80 }]",
                false,
            ),
            (
                "port inside range fits",
                "network: [{ host: api.partner.io, port: 8050 }]",
                true,
            ),
            (
                "sub-range fits",
                "network: [{ host: api.partner.io, port: 8001, endPort: 8099 }]",
                true,
            ),
            (
                "range overrunning exceeds",
                "network: [{ host: api.partner.io, port: 8050, endPort: 8200 }]",
                false,
            ),
            (
                "narrower cidr fits",
                "network: [{ host: 10.1.0.0/16, port: 5432 }]",
                true,
            ),
            (
                "ip literal inside cidr fits",
                "network: [{ host: 10.1.2.3, port: 5432 }]",
                true,
            ),
            (
                "wider cidr exceeds",
                "network: [{ host: 0.0.0.0/0, port: 5432 }]",
                false,
            ),
            (
                "bucket read fits",
                "storage: [{ bucket: counters, access: [read] }]",
                true,
            ),
            (
                "write to read-only bucket exceeds",
                "storage: [{ bucket: cache, access: [write] }]",
                false,
            ),
            (
                "unknown bucket exceeds",
                "storage: [{ bucket: secrets, access: [read] }]",
                false,
            ),
            (
                "topic under tail fits",
                "messaging: [{ topic: orders.eu.new, access: [publish] }]",
                true,
            ),
            (
                "star under tail fits",
                "messaging: [{ topic: \"orders.*\", access: [subscribe] }]",
                true,
            ),
            (
                "publish to subscribe-only exceeds",
                "messaging: [{ topic: audit.x, access: [publish] }]",
                false,
            ),
            (
                "tail over star exceeds",
                "messaging: [{ topic: \"audit.>\", access: [subscribe] }]",
                false,
            ),
            (
                "granted send fits",
                "messaging: [{ component: billing, access: [send] }]",
                true,
            ),
            (
                "other send exceeds",
                "messaging: [{ component: payroll, access: [send] }]",
                false,
            ),
            ("granted env fits", "env: [{ name: LOG_LEVEL }]", true),
            (
                "other env exceeds",
                "env: [{ name: AWS_SECRET_ACCESS_KEY }]",
                false,
            ),
        ];
        for (rule, request, want) in cases {
            let request = caps(request);
            assert_eq!(
                request.is_within(&ceiling),
                *want,
                "{rule}: excess {:?}",
                request.excess(&ceiling)
            );
            assert_eq!(
                request.excess(&ceiling).is_empty(),
                *want,
                "{rule}: excess agrees"
            );
        }
    }

    #[test]
    fn excess_names_the_missing_modes() {
        let ceiling = caps(CEILING);
        let request = caps(
            "filesystem: [{ path: /etc/app/x, access: [read, write] }]\n\
             network: [{ host: evil.io, port: 443 }]\n\
             messaging: [{ topic: audit.x, access: [publish, subscribe] }]",
        );
        assert_eq!(
            request.excess(&ceiling),
            vec![
                "filesystem /etc/app/x (write)".to_owned(),
                "network evil.io:443".to_owned(),
                "messaging topic audit.x (publish)".to_owned(),
            ]
        );
    }

    #[test]
    fn broad_address_ceiling_covers_only_public_addresses() {
        // A ceiling of "any host" written as the broadest address blocks.
        let ceiling = caps(
            "network: [{ host: 0.0.0.0/0, port: 1, endPort: 65535 }, \
             { host: \"::/0\", port: 1, endPort: 65535 }]",
        );
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool)] = &[
            ("a public address fits", "network: [{ host: 93.184.216.34, port: 443 }]", true),
            ("a public block fits", "network: [{ host: 8.8.8.0/24, port: 53 }]", true),
            ("the broad block itself fits", "network: [{ host: 0.0.0.0/0, port: 80 }]", true),
            ("loopback exceeds", "network: [{ host: 127.0.0.1, port: 80 }]", false),
            ("loopback block exceeds", "network: [{ host: 127.0.0.0/8, port: 80 }]", false),
            ("metadata exceeds", "network: [{ host: 169.254.169.254, port: 80 }]", false),
            ("link-local block exceeds", "network: [{ host: 169.254.0.0/16, port: 80 }]", false),
            ("private block exceeds", "network: [{ host: 10.0.0.0/8, port: 5432 }]", false),
            ("v6 loopback exceeds", "network: [{ host: \"::1\", port: 80 }]", false),
            ("mapped loopback exceeds", "network: [{ host: \"::ffff:127.0.0.1\", port: 80 }]", false),
            ("AWS v6 metadata exceeds", "network: [{ host: \"fd00:ec2::254\", port: 80 }]", false),
            ("NAT64 of loopback exceeds", "network: [{ host: \"64:ff9b::7f00:1\", port: 80 }]", false),
        ];
        for (rule, request, want) in cases {
            assert_eq!(caps(request).is_within(&ceiling), *want, "{rule}");
        }
        // And the agent-side check agrees: the broad grant reaches no loopback address.
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(ceiling.allows_connect(None, ip("93.184.216.34"), 443));
        assert!(!ceiling.allows_connect(None, ip("127.0.0.1"), 443));
        assert!(!ceiling.allows_connect(None, ip("::ffff:169.254.169.254"), 80));
    }

    #[test]
    fn intersect_keeps_only_covered_bits() {
        let approved = caps(CEILING);
        let request = caps(
            "filesystem: [{ path: /etc/app, access: [read, write] }, { path: /root, access: [read] }]\n\
             network: [{ host: a.example.com, port: 443 }, { host: a.example.com, port: 22 }]\n\
             storage: [{ bucket: cache, access: [read, write] }]\n\
             messaging: [{ topic: audit.x, access: [publish, subscribe] }, { component: payroll, access: [send] }]\n\
             env: [{ name: LOG_LEVEL }, { name: TOKEN }]",
        );
        let grant = request.intersect(&approved);
        assert_eq!(
            grant.to_string(),
            caps(
                "filesystem: [{ path: /etc/app, access: [read] }]\n\
             network: [{ host: a.example.com, port: 443 }]\n\
             storage: [{ bucket: cache, access: [read] }]\n\
             messaging: [{ topic: audit.x, access: [subscribe] }]\n\
             env: [{ name: LOG_LEVEL }]",
            )
            .to_string()
        );
        assert!(
            grant.is_within(&approved),
            "a grant never exceeds its approval"
        );
        assert!(
            grant.is_within(&request),
            "a grant never exceeds its request"
        );
        assert_eq!(
            request.intersect(&CapabilitySet::default()),
            CapabilitySet::default()
        );
    }

    #[test]
    fn allows_path_spec() {
        let grant = caps(CEILING);
        let cases: &[(&str, &str, FsAccess, bool)] = &[
            ("read inside rw dir", "/data/x", FsAccess::Read, true),
            ("write inside rw dir", "/data/x/y", FsAccess::Write, true),
            (
                "write inside read-only dir",
                "/etc/app/conf",
                FsAccess::Write,
                false,
            ),
            (
                "read inside read-only dir",
                "/etc/app/conf",
                FsAccess::Read,
                true,
            ),
            ("sibling lookalike", "/database", FsAccess::Read, false),
            (
                "traversal out of granted dir",
                "/data/../etc/passwd",
                FsAccess::Read,
                false,
            ),
            ("relative path", "data/x", FsAccess::Read, false),
            ("outside any grant", "/etc/passwd", FsAccess::Read, false),
        ];
        for (rule, path, access, want) in cases {
            assert_eq!(grant.allows_path(path, *access), *want, "{rule}");
        }
    }

    #[test]
    fn allows_connect_spec() {
        let grant = caps(CEILING);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let cases: &[(&str, Option<&str>, &str, u16, bool)] = &[
            (
                "granted name, public address",
                Some("api.example.com"),
                "93.184.216.34",
                443,
                true,
            ),
            (
                "granted name, wrong port",
                Some("api.example.com"),
                "93.184.216.34",
                80,
                false,
            ),
            (
                "lookalike name",
                Some("evilexample.com"),
                "93.184.216.34",
                443,
                false,
            ),
            (
                "granted name resolving to loopback",
                Some("api.example.com"),
                "127.0.0.1",
                443,
                false,
            ),
            (
                "granted name resolving to metadata",
                Some("api.example.com"),
                "169.254.169.254",
                443,
                false,
            ),
            (
                "granted name resolving to private",
                Some("api.example.com"),
                "192.168.1.5",
                443,
                false,
            ),
            (
                "granted cidr, private address",
                None,
                "10.2.3.4",
                5432,
                true,
            ),
            (
                "a cidr grant is not reached through a name it does not name",
                Some("db.internal"),
                "10.2.3.4",
                5432,
                false,
            ),
            ("granted cidr, wrong port", None, "10.2.3.4", 5433, false),
            (
                "bare public address without name",
                None,
                "93.184.216.34",
                443,
                false,
            ),
            (
                "v4-mapped private address in cidr",
                None,
                "::ffff:10.2.3.4",
                5432,
                true,
            ),
            (
                "port in granted range",
                Some("api.partner.io"),
                "93.184.216.35",
                8080,
                true,
            ),
        ];
        for (rule, host, addr, port, want) in cases {
            assert_eq!(
                grant.allows_connect(*host, ip(addr), *port),
                *want,
                "{rule}"
            );
        }
    }

    #[test]
    fn names_are_resolved_only_through_name_grants() {
        // To reach a name, grant the name; a private address behind it needs its block too.
        let both = caps(
            "network: [{ host: db.internal, port: 5432 }, { host: 10.0.0.0/8, port: 5432 }, \
             { host: \"*.example.com\", port: 443 }]",
        );
        let cidr_only =
            caps("network: [{ host: 10.0.0.0/8, port: 443 }, { host: 0.0.0.0/0, port: 443 }]");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // (rule, grant, name, resolved address, port, allowed)
        type Connect<'a> = (
            &'a str,
            &'a CapabilitySet,
            Option<&'a str>,
            &'a str,
            u16,
            bool,
        );
        #[rustfmt::skip]
        let connects: &[Connect] = &[
            ("name and block grant reach a private address by name", &both, Some("db.internal"), "10.2.3.4", 5432, true),
            ("name and block grant, address outside the block", &both, Some("db.internal"), "172.16.0.1", 5432, false),
            ("name grant alone does not reach a private address", &both, Some("api.example.com"), "10.2.3.4", 443, false),
            ("block grant, another name", &both, Some("other.internal"), "10.2.3.4", 5432, false),
            ("block grants reach no name", &cidr_only, Some("attacker.example"), "10.2.3.4", 443, false),
            ("broad block grant reaches no public name", &cidr_only, Some("attacker.example"), "93.184.216.34", 443, false),
            ("block grants still reach their address literals", &cidr_only, None, "10.2.3.4", 443, true),
        ];
        for (rule, set, host, addr, port, want) in connects {
            assert_eq!(set.allows_connect(*host, ip(addr), *port), *want, "{rule}");
        }
        #[rustfmt::skip]
        let lookups: &[(&str, &CapabilitySet, &str, Option<u16>, bool)] = &[
            ("a granted exact name", &both, "db.internal", Some(5432), true),
            ("a granted name on another port", &both, "db.internal", Some(443), false),
            ("a name under a suffix grant", &both, "a.example.com", Some(443), true),
            ("a name only block grants exist for", &cidr_only, "attacker.example", Some(443), false),
            ("exfiltration through a lookup under block grants", &cidr_only, "c2VjcmV0.attacker.example", None, false),
            ("an IP literal needs no query", &cidr_only, "10.1.2.3", None, true),
            ("a bracketed IPv6 literal", &cidr_only, "[::1]", None, true),
            ("percent escapes are not a host name", &both, "%61.example.com", None, false),
            ("unicode a resolver would map is not a host name", &both, "\u{ff41}.example.com", None, false),
            ("an empty label is not a host name", &both, "a..example.com", None, false),
            ("a wildcard is not a host name", &both, "*.example.com", None, false),
        ];
        for (rule, set, name, port, want) in lookups {
            match port {
                Some(port) => assert_eq!(set.allows_resolve(name, *port), *want, "{rule}"),
                None => assert_eq!(set.allows_lookup(name), *want, "{rule}"),
            }
        }
    }

    #[test]
    fn allows_messaging_storage_env() {
        let grant = caps(CEILING);
        assert!(grant.allows_publish("orders.eu"));
        assert!(!grant.allows_publish("orders"), "tail needs one more token");
        assert!(!grant.allows_publish("audit.x"), "subscribe-only topic");
        assert!(grant.allows_subscribe("audit.x"));
        assert!(!grant.allows_subscribe("audit.x.y"), "star is one token");
        assert!(grant.allows_send("billing"));
        assert!(!grant.allows_send("billing2"));
        assert!(grant.allows_bucket("counters", FsAccess::Write));
        assert!(!grant.allows_bucket("cache", FsAccess::Write));
        assert!(!grant.allows_bucket("counter", FsAccess::Read));
        assert!(grant.allows_env("LOG_LEVEL"));
        assert!(
            !grant.allows_env("log_level"),
            "env names are case-sensitive"
        );
        let nothing = CapabilitySet::default();
        assert!(nothing.is_empty());
        assert!(!nothing.allows_path("/", FsAccess::Read), "fail closed");
    }

    #[test]
    fn parse_rejects_bad_entries() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "traversal path",
                "filesystem: [{ path: /data/../etc, access: [read] }]",
                "'..'",
            ),
            (
                "relative path",
                "filesystem: [{ path: data, access: [read] }]",
                "absolute",
            ),
            (
                "no access",
                "filesystem: [{ path: /data, access: [] }]",
                "grants no access",
            ),
            (
                "wildcard TLD",
                "network: [{ host: \"*.com\", port: 443 }]",
                "two labels",
            ),
            (
                "host with port",
                "network: [{ host: \"a.io:443\", port: 443 }]",
                "labels must be",
            ),
            (
                "port zero",
                "network: [{ host: a.io, port: 0 }]",
                "between 1 and 65535",
            ),
            (
                "reversed range",
                "network: [{ host: a.io, port: 90, endPort: 80 }]",
                "endPort",
            ),
            (
                "cidr host bits",
                "network: [{ host: 10.1.2.3/8, port: 1 }]",
                "host bits",
            ),
            (
                "bad bucket",
                "storage: [{ bucket: Bad, access: [read] }]",
                "bucket",
            ),
            (
                "send on topic",
                "messaging: [{ topic: a, access: [send] }]",
                "send is for a component",
            ),
            (
                "publish to component",
                "messaging: [{ component: a, access: [publish] }]",
                "exactly [send]",
            ),
            (
                "topic and component",
                "messaging: [{ topic: a, component: b, access: [send] }]",
                "exactly one",
            ),
            (
                "middle tail",
                "messaging: [{ topic: a.>.b, access: [publish] }]",
                "last token",
            ),
            ("bad env", "env: [{ name: A-B }]", "env name"),
        ];
        for (rule, yaml, needle) in cases {
            let err = parse_err(yaml).to_string();
            assert!(
                err.contains(needle),
                "{rule}: {err:?} should mention {needle:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_yaml::from_str::<Capabilities>(
            "filesystem: [{ path: /a, access: [read], recursive: true }]",
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(serde_yaml::from_str::<Capabilities>("gpu: []").is_err());
    }
}
