//! Network capability targets: host names (exact or `*.suffix`), IP literals and CIDRs, ports.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::CapabilityError;

/// Longest host name DNS allows.
pub const MAX_HOST_LEN: usize = 253;

/// What a network grant names: a host name pattern or a block of addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetTarget {
    /// A DNS name, matched after lower-casing and dropping a trailing dot.
    Host(HostPattern),
    /// An address block; an IP literal is a /32 (or /128) block.
    Cidr(Cidr),
}

impl NetTarget {
    /// Parses a host name, `*.suffix`, an IP literal or a CIDR.
    pub fn parse(raw: &str) -> Result<Self, CapabilityError> {
        if raw.contains('/') || raw.parse::<IpAddr>().is_ok() {
            Cidr::parse(raw).map(Self::Cidr)
        } else {
            HostPattern::parse(raw).map(Self::Host)
        }
    }

    /// Whether every address this target names is also named by `outer`.
    pub fn is_within(&self, outer: &NetTarget) -> bool {
        match (self, outer) {
            (Self::Host(inner), Self::Host(outer)) => inner.is_within(outer),
            (Self::Cidr(inner), Self::Cidr(outer)) => inner.is_within(outer),
            // A name can resolve anywhere and a block has no names: neither covers the other.
            _ => false,
        }
    }
}

impl fmt::Display for NetTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(host) => host.fmt(f),
            Self::Cidr(cidr) => cidr.fmt(f),
        }
    }
}

/// An exact host name or a `*.suffix` wildcard that matches on label boundaries only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Matches this name only.
    Exact(String),
    /// `*.example.com`: matches `a.example.com` and `a.b.example.com`, never `example.com`
    /// itself and never `evilexample.com`. Stored as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// Parses and lower-cases a host pattern.
    pub fn parse(raw: &str) -> Result<Self, CapabilityError> {
        let invalid = |reason: &'static str| CapabilityError::InvalidHost {
            host: raw.to_owned(),
            reason,
        };
        let lower = raw.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.is_empty() {
            return Err(invalid("is empty"));
        }
        if name.len() > MAX_HOST_LEN {
            return Err(invalid("is longer than 253 characters"));
        }
        if name.contains('*') {
            return Err(invalid(
                "a wildcard may only be the whole first label ('*.example.com')",
            ));
        }
        for label in name.split('.') {
            let valid_chars = label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if label.is_empty() || label.len() > 63 || !valid_chars {
                return Err(invalid(
                    "labels must be 1-63 characters of a-z, 0-9 and '-'",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("labels may not start or end with '-'"));
            }
        }
        if wildcard && !name.contains('.') {
            // `*.com` would grant a whole top-level domain.
            return Err(invalid(
                "a wildcard needs at least two labels after it ('*.example.com')",
            ));
        }
        Ok(if wildcard {
            Self::Suffix(format!(".{name}"))
        } else {
            Self::Exact(name.to_owned())
        })
    }

    /// Whether `host` (as the guest named it) matches. Case-insensitive, trailing dot ignored,
    /// without allocating: the pattern is stored lower-case, so this is one branch-free pass
    /// over the compared bytes. A non-ASCII byte never equals a pattern byte, so a cut in the
    /// middle of a UTF-8 character simply does not match.
    #[inline]
    pub fn matches(&self, host: &str) -> bool {
        let host = host.as_bytes();
        let host = match host.split_last() {
            Some((b'.', name)) => name,
            _ => host,
        };
        match self {
            Self::Exact(name) => host.len() == name.len() && eq_lowercase(host, name.as_bytes()),
            Self::Suffix(suffix) => {
                host.len() > suffix.len()
                    && eq_lowercase(&host[host.len() - suffix.len()..], suffix.as_bytes())
            }
        }
    }

    /// Whether every name `self` matches is also matched by `outer`.
    pub fn is_within(&self, outer: &HostPattern) -> bool {
        match (self, outer) {
            (Self::Exact(name), outer) => outer.matches(name),
            (Self::Suffix(inner), Self::Suffix(outer)) => inner.ends_with(outer.as_str()),
            (Self::Suffix(_), Self::Exact(_)) => false,
        }
    }
}

/// Whether `name` is a plain DNS host name as a guest may ask to resolve it: 1-253 bytes of
/// dot-separated labels of 1-63 ASCII letters, digits and `-` (not first or last), with an
/// optional trailing dot. Anything else (percent escapes, Unicode a resolver would map to
/// another name, empty labels, `*`) is refused before any DNS query, so the name a grant
/// matched is the name that is queried. Allocation-free.
pub fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            (1..=63).contains(&bytes.len())
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// Whether `name` is an IP address literal (`10.1.2.3`, `::1`, `[::1]`): a lookup of it is
/// answered without a DNS query.
pub fn is_ip_literal(name: &str) -> bool {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok()
}

/// Whether `guest`, ASCII-lower-cased, equals `lower` (already lower-case). Eight bytes at a
/// time; a length that is not a multiple of eight ends with an overlapping last word.
#[inline]
fn eq_lowercase(guest: &[u8], lower: &[u8]) -> bool {
    let len = guest.len();
    if len != lower.len() {
        return false;
    }
    if len < 8 {
        return guest.iter().zip(lower).fold(0u8, |diff, (&g, &l)| {
            // Sets the 0x20 bit of `A`-`Z` only; every other byte is kept.
            let g = g | (u8::from(g.wrapping_sub(b'A') < 26) << 5);
            diff | (g ^ l)
        }) == 0;
    }
    let mut diff = 0u64;
    let mut i = 0;
    while i + 8 <= len {
        diff |= lowercase_word(word_at(&guest[i..])) ^ word_at(&lower[i..]);
        i += 8;
    }
    if i < len {
        diff |= lowercase_word(word_at(&guest[len - 8..])) ^ word_at(&lower[len - 8..]);
    }
    diff == 0
}

/// Eight bytes as a little-endian word.
#[inline(always)]
fn word_at(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// ASCII-lower-cases the eight bytes of `word` (`A`-`Z` only; bytes of 0x80 and above are
/// kept as they are).
#[inline(always)]
fn lowercase_word(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = word & !HIGH;
    // High bit of a byte set when its low seven bits are >= 'A', and when they are > 'Z'.
    let at_least_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let above_z = low7 + (0x80 - u64::from(b'Z') - 1) * ONES;
    let upper = at_least_a & !above_z & !word & HIGH;
    word | (upper >> 2)
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A block of IP addresses, stored with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a bare IP literal (a single address). Host bits set
    /// in the address are rejected: `10.1.2.3/8` is almost always a typo for something else.
    pub fn parse(raw: &str) -> Result<Self, CapabilityError> {
        let invalid = |reason: &'static str| CapabilityError::InvalidHost {
            host: raw.to_owned(),
            reason,
        };
        let (addr, prefix) = match raw.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid("is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| invalid("has a prefix length out of range"))?,
        };
        let cidr = Self {
            network: mask(addr, prefix),
            prefix,
        };
        if cidr.network != addr {
            return Err(invalid("has host bits set after the prefix"));
        }
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: mapped addresses are matched as IPv4, so a
        // grant written in the mapped form must be IPv4 too or it would match nothing.
        Ok(match cidr.network {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Self {
                    network: IpAddr::V4(v4),
                    prefix: prefix - 96,
                },
                None => cidr,
            },
            _ => cidr,
        })
    }

    /// The block of exactly one address.
    pub fn single(ip: IpAddr) -> Self {
        let ip = canonical(ip);
        Self {
            network: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    /// Whether `ip` is inside the block (as a set of addresses; what a grant of the block
    /// reaches is [`Cidr::reaches`]). IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }

    /// Whether a grant of this block lets the guest reach `ip`: it contains `ip`, and `ip`
    /// is public or the grant names its special range ([`classify`]): lies inside it, or
    /// is exactly the address. So `0.0.0.0/0` reaches every public IPv4 address but not
    /// loopback, private, link-local or metadata ones; `10.0.0.0/8` reaches `10.1.2.3`.
    pub fn reaches(&self, ip: IpAddr) -> bool {
        self.contains(ip) && self.reaches_class(&classify(ip))
    }

    /// [`Cidr::reaches`] for an address already known to be inside the block, with its
    /// class computed once by the caller.
    #[inline]
    pub fn reaches_class(&self, class: &AddrClass) -> bool {
        class.public || self.is_inside(&class.block)
    }

    /// [`Cidr::reaches`] decided once for the whole block, when every address inside it
    /// gets the same answer: `Some(reached)`, or `None` when the answer depends on the
    /// address. A block qualifies when no registry row lies strictly inside it and the most
    /// specific row containing it does not judge by an embedded IPv4 address (so every
    /// address in it classifies alike); a single address always qualifies. `10.0.0.0/8`
    /// and `8.8.8.0/24` do, `0.0.0.0/0` does not. Lets a compiled grant skip [`classify`]
    /// for such blocks on the connect path.
    pub fn uniform_reach(&self) -> Option<bool> {
        let max = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            return Some(self.reaches_class(&classify(self.network)));
        }
        let class = match self.network {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let own = v4_mask(self.prefix);
                if SPECIAL_V4
                    .iter()
                    .any(|row| row.prefix > self.prefix && row.network & own == bits)
                {
                    return None;
                }
                match most_specific(SPECIAL_V4, |row| v4_covers(row, bits, self.prefix)) {
                    Some(row) => row_class(row, |n| IpAddr::V4(Ipv4Addr::from(n))),
                    None => return Some(true),
                }
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let own = v6_mask(self.prefix);
                if SPECIAL_V6
                    .iter()
                    .any(|row| row.prefix > self.prefix && row.network & own == bits)
                {
                    return None;
                }
                let row = most_specific(SPECIAL_V6, |row| v6_covers(row, bits, self.prefix))?;
                if row.embeds.is_some() {
                    return None;
                }
                row_class(row, |n| IpAddr::V6(Ipv6Addr::from(n)))
            }
        };
        Some(self.reaches_class(&class))
    }

    /// Plain set containment of blocks.
    fn is_inside(&self, outer: &Cidr) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.network)
    }

    /// The special range whose addresses a grant of this block reaches, if any: for one
    /// address its class's block; for a wider block the most specific non-public registry
    /// range containing all of it (a wider block reaches no address that is special only
    /// through an embedded IPv4 address: those need the exact address).
    fn special_range(&self) -> Option<Cidr> {
        let max = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            let class = classify(self.network);
            return (!class.public).then_some(class.block);
        }
        match self.network {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let row = most_specific(SPECIAL_V4, |row| v4_covers(row, bits, self.prefix))?;
                (!row.global).then(|| Cidr {
                    network: IpAddr::V4(Ipv4Addr::from(row.network)),
                    prefix: row.prefix,
                })
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let row = most_specific(SPECIAL_V6, |row| v6_covers(row, bits, self.prefix))?;
                (!row.global && row.embeds.is_none()).then(|| Cidr {
                    network: IpAddr::V6(Ipv6Addr::from(row.network)),
                    prefix: row.prefix,
                })
            }
        }
    }

    /// Whether everything a grant of this block reaches, a grant of `outer` reaches too:
    /// the block lies inside `outer`, and if it names a special range (loopback, private,
    /// link-local, metadata, ...), `outer` names that range as well. A broad block such as
    /// `0.0.0.0/0` therefore does not cover `127.0.0.1` or `10.0.0.0/8`.
    pub fn is_within(&self, outer: &Cidr) -> bool {
        self.is_inside(outer)
            && self
                .special_range()
                .is_none_or(|range| outer.is_inside(&range))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

/// What the special-purpose registries say about an address, as far as grants care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrClass {
    /// The registry entry that decided (the most specific one), e.g. `"Loopback"`; for an
    /// address embedding an IPv4 one, the entry of that IPv4 address.
    pub entry: &'static str,
    /// Globally reachable: a host-name grant or any address block containing it reaches it.
    pub public: bool,
    /// For a non-public address, the range a grant must lie within to name it: the registry
    /// block (`127.0.0.0/8` for loopback), or the address itself when it is only special
    /// through the IPv4 address it embeds (6to4, Teredo, NAT64, ...).
    pub block: Cidr,
}

/// How an IPv6 block carries an IPv4 address (judged by that address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embeds {
    /// Bits 96-127: IPv4-compatible `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64.
    Low32,
    /// 6to4 `2002:AABB:CCDD::/48`: bits 16-47.
    SixToFour,
    /// Teredo: the client's address is bits 96-127, inverted.
    Teredo,
}

/// One row of the IANA IPv4 / IPv6 special-purpose address registries (plus the few other
/// blocks that are not on the public internet: multicast, deprecated site-local, cloud
/// metadata endpoints). `reach` is the registry's "Globally Reachable" column; `None` with
/// `embeds` set means "judge by the embedded IPv4 address".
struct Special<T> {
    entry: &'static str,
    network: T,
    /// The prefix as a bit mask, precomputed for the connect path.
    mask: T,
    prefix: u8,
    global: bool,
    embeds: Option<Embeds>,
}

const fn v4(entry: &'static str, n: [u8; 4], prefix: u8, global: bool) -> Special<u32> {
    Special {
        entry,
        network: u32::from_be_bytes(n),
        mask: v4_mask(prefix),
        prefix,
        global,
        embeds: None,
    }
}

const fn v4_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

const fn v6_mask(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    }
}

const fn v6(entry: &'static str, n: u128, prefix: u8, global: bool) -> Special<u128> {
    Special {
        entry,
        network: n,
        mask: v6_mask(prefix),
        prefix,
        global,
        embeds: None,
    }
}

const fn v6_embeds(entry: &'static str, n: u128, prefix: u8, embeds: Embeds) -> Special<u128> {
    Special {
        entry,
        network: n,
        mask: v6_mask(prefix),
        prefix,
        global: false,
        embeds: Some(embeds),
    }
}

/// IANA IPv4 Special-Purpose Address Registry (RFC 6890 and updates), multicast, and the
/// cloud metadata addresses (named on their own so a link-local or shared-space grant does
/// not reach them: only a grant of the exact address does).
#[rustfmt::skip]
const SPECIAL_V4: &[Special<u32>] = &[
    v4("This network", [0, 0, 0, 0], 8, false),
    v4("This host on this network", [0, 0, 0, 0], 32, false),
    v4("Private-Use", [10, 0, 0, 0], 8, false),
    v4("Shared Address Space", [100, 64, 0, 0], 10, false),
    v4("Cloud metadata (Alibaba)", [100, 100, 100, 200], 32, false),
    v4("Loopback", [127, 0, 0, 0], 8, false),
    v4("Link Local", [169, 254, 0, 0], 16, false),
    v4("Cloud metadata", [169, 254, 169, 254], 32, false),
    v4("Cloud metadata (AWS ECS)", [169, 254, 170, 2], 32, false),
    v4("Private-Use", [172, 16, 0, 0], 12, false),
    v4("IETF Protocol Assignments", [192, 0, 0, 0], 24, false),
    v4("IPv4 Service Continuity Prefix", [192, 0, 0, 0], 29, false),
    v4("IPv4 dummy address", [192, 0, 0, 8], 32, false),
    v4("Port Control Protocol Anycast", [192, 0, 0, 9], 32, true),
    v4("Traversal Using Relays around NAT Anycast", [192, 0, 0, 10], 32, true),
    v4("NAT64/DNS64 Discovery", [192, 0, 0, 170], 32, false),
    v4("NAT64/DNS64 Discovery", [192, 0, 0, 171], 32, false),
    v4("Documentation (TEST-NET-1)", [192, 0, 2, 0], 24, false),
    v4("AS112-v4", [192, 31, 196, 0], 24, true),
    v4("AMT", [192, 52, 193, 0], 24, true),
    v4("Deprecated (6to4 Relay Anycast)", [192, 88, 99, 0], 24, false),
    v4("Private-Use", [192, 168, 0, 0], 16, false),
    v4("Direct Delegation AS112 Service", [192, 175, 48, 0], 24, true),
    v4("Benchmarking", [198, 18, 0, 0], 15, false),
    v4("Documentation (TEST-NET-2)", [198, 51, 100, 0], 24, false),
    v4("Documentation (TEST-NET-3)", [203, 0, 113, 0], 24, false),
    v4("Multicast", [224, 0, 0, 0], 4, false),
    v4("Reserved", [240, 0, 0, 0], 4, false),
    v4("Limited Broadcast", [255, 255, 255, 255], 32, false),
];

/// IANA IPv6 Special-Purpose Address Registry (RFC 6890 and updates), the deprecated
/// IPv4-compatible, IPv4-translated and site-local forms, multicast, the AWS metadata
/// address, and everything outside global unicast `2000::/3` (reserved by the IETF).
#[rustfmt::skip]
const SPECIAL_V6: &[Special<u128>] = &[
    v6("Reserved by IETF (outside 2000::/3)", 0, 0, false),
    v6("Global Unicast", 0x2000 << 112, 3, true),
    v6("Unspecified Address", 0, 128, false),
    v6("Loopback Address", 1, 128, false),
    v6_embeds("IPv4-compatible (deprecated)", 0, 96, Embeds::Low32),
    v6_embeds("IPv4-mapped Address", 0xffff << 32, 96, Embeds::Low32),
    v6_embeds("IPv4-translated (SIIT)", 0xffff << 48, 96, Embeds::Low32),
    v6_embeds("IPv4-IPv6 Translation (NAT64)", 0x0064_ff9b << 96, 96, Embeds::Low32),
    // Operators choose the prefix length inside it, so where the IPv4 address sits is unknown.
    v6("IPv4-IPv6 Translation (local use)", 0x0064_ff9b_0001 << 80, 48, false),
    v6("Discard-Only Address Block", 0x0100 << 112, 64, false),
    v6("Dummy IPv6 Prefix", (0x0100 << 112) | (1 << 64), 64, false),
    v6("IETF Protocol Assignments", 0x2001 << 112, 23, false),
    v6_embeds("TEREDO", 0x2001 << 112, 32, Embeds::Teredo),
    v6("Port Control Protocol Anycast", (0x2001_0001 << 96) | 1, 128, true),
    v6("Traversal Using Relays around NAT Anycast", (0x2001_0001 << 96) | 2, 128, true),
    v6("DNS-SD Service Registration Protocol Anycast", (0x2001_0001 << 96) | 3, 128, true),
    v6("Benchmarking", 0x2001_0002_0000 << 80, 48, false),
    v6("AMT", 0x2001_0003 << 96, 32, true),
    v6("AS112-v6", 0x2001_0004_0112 << 80, 48, true),
    v6("Deprecated (previously ORCHID)", 0x2001_0010 << 96, 28, false),
    v6("ORCHIDv2", 0x2001_0020 << 96, 28, true),
    v6("Drone Remote ID Protocol Entity Tags (DETs) Prefix", 0x2001_0030 << 96, 28, true),
    v6("Documentation", 0x2001_0db8 << 96, 32, false),
    v6_embeds("6to4", 0x2002 << 112, 16, Embeds::SixToFour),
    v6("Direct Delegation AS112 Service", 0x2620_004f_8000 << 80, 48, true),
    v6("Documentation", 0x3fff << 112, 20, false),
    v6("Segment Routing (SRv6) SIDs", 0x5f00 << 112, 16, false),
    v6("Unique-Local", 0xfc00 << 112, 7, false),
    v6("Cloud metadata (AWS)", (0xfd00_0ec2 << 96) | 0x254, 128, false),
    v6("Site-Local (deprecated)", 0xfec0 << 112, 10, false),
    v6("Link-Local Unicast", 0xfe80 << 112, 10, false),
    v6("Multicast", 0xff00 << 112, 8, false),
];

/// The most specific row of `table` containing `bits` (rows are few; a linear scan with no
/// allocation, on the connect path).
#[inline]
fn most_specific<T, F>(table: &'static [Special<T>], covers: F) -> Option<&'static Special<T>>
where
    F: Fn(&Special<T>) -> bool,
{
    table
        .iter()
        .filter(|row| covers(row))
        .max_by_key(|row| row.prefix)
}

#[inline]
fn v4_covers(row: &Special<u32>, bits: u32, prefix: u8) -> bool {
    prefix >= row.prefix && bits & row.mask == row.network
}

#[inline]
fn v6_covers(row: &Special<u128>, bits: u128, prefix: u8) -> bool {
    prefix >= row.prefix && bits & row.mask == row.network
}

/// The class every address of `row` gets, for a row that does not embed IPv4.
fn row_class<T: Copy>(row: &Special<T>, addr: impl Fn(T) -> IpAddr) -> AddrClass {
    AddrClass {
        entry: row.entry,
        public: row.global,
        block: Cidr {
            network: addr(row.network),
            prefix: row.prefix,
        },
    }
}

/// Classifies an IPv4 address by scanning [`SPECIAL_V4`]: the reference the fast path
/// ([`V4_BY_OCTET`]) must agree with.
#[cold]
#[inline(never)]
fn class_v4_by_table(v4: Ipv4Addr) -> AddrClass {
    let bits = u32::from(v4);
    match most_specific(SPECIAL_V4, |row| v4_covers(row, bits, 32)) {
        Some(row) => row_class(row, |n| IpAddr::V4(Ipv4Addr::from(n))),
        None => AddrClass {
            entry: "Global",
            public: true,
            block: Cidr::single(IpAddr::V4(v4)),
        },
    }
}

/// [`V4_BY_OCTET`]: no registry row touches the /8, every address in it is global.
const OCTET_PUBLIC: u8 = u8::MAX - 1;
/// [`V4_BY_OCTET`]: rows lie inside the /8, so its addresses differ; scan the table.
const OCTET_MIXED: u8 = u8::MAX;
const _: () = assert!(SPECIAL_V4.len() < OCTET_PUBLIC as usize);

/// Per first octet of an IPv4 address, what decides its class: [`OCTET_PUBLIC`],
/// [`OCTET_MIXED`], or the index of the [`SPECIAL_V4`] row that classifies every address
/// of the /8 (the most specific row containing it, when none lies strictly inside it).
/// Built from the table at compile time, so the two cannot drift apart.
static V4_BY_OCTET: [u8; 256] = v4_by_octet();

const fn v4_by_octet() -> [u8; 256] {
    let mut out = [OCTET_PUBLIC; 256];
    let mut octet = 0usize;
    while octet < 256 {
        let block = (octet as u32) << 24;
        let mut best = OCTET_PUBLIC;
        let mut i = 0;
        while i < SPECIAL_V4.len() {
            let row = &SPECIAL_V4[i];
            if row.prefix > 8 {
                if row.network & 0xff00_0000 == block {
                    best = OCTET_MIXED;
                    break;
                }
            } else if block & row.mask == row.network
                // Ties go to the later row, as `most_specific` does.
                && (best == OCTET_PUBLIC || SPECIAL_V4[best as usize].prefix <= row.prefix)
            {
                best = i as u8;
            }
            i += 1;
        }
        out[octet] = best;
        octet += 1;
    }
    out
}

fn class_v4(v4: Ipv4Addr) -> AddrClass {
    match V4_BY_OCTET[usize::from(v4.octets()[0])] {
        OCTET_PUBLIC => AddrClass {
            entry: "Global",
            public: true,
            block: Cidr::single(IpAddr::V4(v4)),
        },
        OCTET_MIXED => class_v4_by_table(v4),
        row => row_class(&SPECIAL_V4[usize::from(row)], |n| {
            IpAddr::V4(Ipv4Addr::from(n))
        }),
    }
}

/// The IPv4 address an embedding form carries.
fn embedded(embeds: Embeds, bits: u128) -> Ipv4Addr {
    // Truncating casts pick the bit fields out of the address.
    match embeds {
        Embeds::Low32 => Ipv4Addr::from(bits as u32),
        Embeds::SixToFour => Ipv4Addr::from((bits >> 80) as u32),
        Embeds::Teredo => Ipv4Addr::from(!(bits as u32)),
    }
}

/// The class an IPv6 address gets from `row`, the most specific row containing it.
fn class_v6_row(row: &Special<u128>, ip: Ipv6Addr) -> AddrClass {
    match row.embeds {
        None => row_class(row, |n| IpAddr::V6(Ipv6Addr::from(n))),
        Some(embeds) => {
            let inner = class_v4(embedded(embeds, u128::from(ip)));
            AddrClass {
                entry: if inner.public { row.entry } else { inner.entry },
                public: inner.public,
                block: Cidr::single(IpAddr::V6(ip)),
            }
        }
    }
}

/// Classifies an IPv6 address (not IPv4-mapped) by scanning [`SPECIAL_V6`]: the reference
/// the fast path must agree with.
#[cold]
#[inline(never)]
fn class_v6_by_table(v6: Ipv6Addr) -> AddrClass {
    let bits = u128::from(v6);
    match most_specific(SPECIAL_V6, |row| v6_covers(row, bits, 128)) {
        Some(row) => class_v6_row(row, v6),
        // Unreachable: the `::/0` row covers everything; fail closed anyway.
        None => AddrClass {
            entry: "Reserved",
            public: false,
            block: Cidr::single(IpAddr::V6(v6)),
        },
    }
}

/// First hextets (`2001` of `2001:db8::`) that a registry row longer than /16 lies in, as a
/// 65,536-bit set. An address whose first hextet is not in it is classified by the rows of
/// /16 or shorter alone, which a hextet decides.
static V6_DEEP_HEXTETS: [u64; 1024] = v6_deep_hextets();

const fn v6_deep_hextets() -> [u64; 1024] {
    let mut out = [0u64; 1024];
    let mut i = 0;
    while i < SPECIAL_V6.len() {
        let row = &SPECIAL_V6[i];
        if row.prefix > 16 {
            let hextet = (row.network >> 112) as usize;
            out[hextet / 64] |= 1u64 << (hextet % 64);
        }
        i += 1;
    }
    out
}

/// The [`SPECIAL_V6`] rows of /16 or shorter, in table order, as (first hextet, its mask,
/// prefix, row index) so the fast path compares 16-bit words; the count after.
static V6_SHALLOW: ([(u16, u16, u8, u8); SPECIAL_V6.len()], usize) = v6_shallow();

const fn v6_shallow() -> ([(u16, u16, u8, u8); SPECIAL_V6.len()], usize) {
    let mut out = [(0u16, 0u16, 0u8, 0u8); SPECIAL_V6.len()];
    let mut n = 0;
    let mut i = 0;
    while i < SPECIAL_V6.len() {
        let row = &SPECIAL_V6[i];
        if row.prefix <= 16 {
            out[n] = (
                (row.network >> 112) as u16,
                (row.mask >> 112) as u16,
                row.prefix,
                i as u8,
            );
            n += 1;
        }
        i += 1;
    }
    (out, n)
}

/// Per first byte of an IPv6 address, the [`SPECIAL_V6`] row of /8 or shorter that decides
/// the class of an address no longer row contains (the most specific one containing the
/// byte's /8), or [`OCTET_MIXED`] when a row of /9 to /16 lies in it (`2002::/16`,
/// `fe80::/10`...). Built from the table at compile time.
static V6_BY_BYTE: [u8; 256] = v6_by_byte();
const _: () = assert!(SPECIAL_V6.len() < OCTET_PUBLIC as usize);

const fn v6_by_byte() -> [u8; 256] {
    let mut out = [OCTET_MIXED; 256];
    let mut byte = 0usize;
    while byte < 256 {
        let block = (byte as u128) << 120;
        let mut best = OCTET_PUBLIC;
        let mut i = 0;
        while i < SPECIAL_V6.len() {
            let row = &SPECIAL_V6[i];
            if row.prefix > 8 {
                if row.prefix <= 16 && row.network >> 120 == byte as u128 {
                    best = OCTET_MIXED;
                    break;
                }
            } else if block & row.mask == row.network
                && (best == OCTET_PUBLIC || SPECIAL_V6[best as usize].prefix <= row.prefix)
            {
                best = i as u8;
            }
            i += 1;
        }
        // `::/0` contains every byte, so `best` is a row or mixed, never public.
        out[byte] = best;
        byte += 1;
    }
    out
}

fn class_v6(v6: Ipv6Addr) -> AddrClass {
    // The first hextet alone: the whole address is read only on the slower paths.
    let hextet = v6.segments()[0];
    let h = usize::from(hextet);
    if V6_DEEP_HEXTETS[h / 64] & (1u64 << (h % 64)) == 0 {
        // Only rows of /16 or shorter contain it; most first bytes hold none longer than
        // /8, and the byte decides.
        let row = V6_BY_BYTE[h >> 8];
        if row < OCTET_PUBLIC {
            return class_v6_row(&SPECIAL_V6[usize::from(row)], v6);
        }
        // The most specific row containing its first hextet decides (ties to the later
        // row, as `most_specific`).
        let (rows, n) = &V6_SHALLOW;
        let mut best: Option<(u8, u8)> = None;
        for &(network, mask, prefix, i) in &rows[..*n] {
            if hextet & mask == network && best.is_none_or(|(p, _)| prefix >= p) {
                best = Some((prefix, i));
            }
        }
        if let Some((_, i)) = best {
            return class_v6_row(&SPECIAL_V6[usize::from(i)], v6);
        }
    }
    class_v6_by_table(v6)
}

/// Classifies an address by the special-purpose registries. An IPv4-mapped address is its
/// IPv4 address; other forms that carry an IPv4 address (IPv4-compatible, IPv4-translated,
/// NAT64, 6to4, Teredo's client) are public only when that IPv4 address is, and otherwise
/// special under their own IPv6 address. Allocation-free; most addresses are decided by
/// their first octet or hextet without scanning the registry tables.
pub fn classify(ip: IpAddr) -> AddrClass {
    match canonical(ip) {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => class_v6(v6),
    }
}

/// [`classify`] by scanning the tables only (the reference for the fast paths' tests).
#[cfg(test)]
fn classify_by_table(ip: IpAddr) -> AddrClass {
    match canonical(ip) {
        IpAddr::V4(v4) => class_v4_by_table(v4),
        IpAddr::V6(v6) => class_v6_by_table(v6),
    }
}

/// Whether an address is loopback, private, link-local or otherwise not on the public
/// internet (see [`classify`]). Reaching one of these through a host-name grant is how SSRF
/// to cloud metadata and cluster services happens, so they need a grant that names them.
pub fn is_restricted(ip: IpAddr) -> bool {
    !classify(ip).public
}

/// An inclusive port range; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port, at least 1.
    pub first: u16,
    /// Last port, at least `first`.
    pub last: u16,
}

impl PortRange {
    /// Builds a range from the API's `port` and optional `endPort`.
    pub fn new(port: i32, end_port: Option<i32>) -> Result<Self, CapabilityError> {
        let in_range = |p: i32| u16::try_from(p).ok().filter(|p| *p >= 1);
        let first = in_range(port).ok_or(CapabilityError::InvalidPort {
            port,
            reason: "must be between 1 and 65535",
        })?;
        let last =
            match end_port {
                None => first,
                Some(end) => in_range(end).filter(|end| *end >= first).ok_or(
                    CapabilityError::InvalidPort {
                        port: end,
                        reason: "endPort must be between port and 65535",
                    },
                )?,
            };
        Ok(Self { first, last })
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Whether the whole range lies inside `outer`.
    pub fn is_within(&self, outer: &PortRange) -> bool {
        outer.first <= self.first && self.last <= outer.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP parses")
    }

    #[test]
    fn host_patterns_parse() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("exact name", "api.example.com", Some("api.example.com")),
            (
                "upper case is folded",
                "API.Example.COM",
                Some("api.example.com"),
            ),
            (
                "trailing dot is dropped",
                "api.example.com.",
                Some("api.example.com"),
            ),
            ("single label name", "localhost", Some("localhost")),
            ("wildcard suffix", "*.example.com", Some("*.example.com")),
            ("wildcard over a TLD is rejected", "*.com", None),
            ("bare star is rejected", "*", None),
            ("star inside a label is rejected", "api*.example.com", None),
            (
                "star in a later label is rejected",
                "api.*.example.com",
                None,
            ),
            ("empty is rejected", "", None),
            ("empty label is rejected", "api..example.com", None),
            ("underscore is rejected", "my_host.example.com", None),
            ("leading dash is rejected", "-api.example.com", None),
            ("scheme is rejected", "https://api.example.com", None),
            ("port is rejected", "api.example.com:443", None),
            ("over-long label is rejected", &"a".repeat(64), None),
        ];
        for (rule, raw, want) in cases {
            let got = HostPattern::parse(raw).ok().map(|h| h.to_string());
            assert_eq!(got.as_deref(), *want, "{rule}: {raw:?}");
        }
    }

    #[test]
    fn host_patterns_match_on_label_boundaries() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("exact match", "api.example.com", "api.example.com", true),
            (
                "exact is case-insensitive",
                "api.example.com",
                "API.EXAMPLE.com",
                true,
            ),
            (
                "exact ignores trailing dot",
                "api.example.com",
                "api.example.com.",
                true,
            ),
            (
                "exact does not match subdomain",
                "example.com",
                "api.example.com",
                false,
            ),
            (
                "exact does not match longer name",
                "api.example.com",
                "api.example.com.evil.io",
                false,
            ),
            (
                "suffix matches one label",
                "*.example.com",
                "api.example.com",
                true,
            ),
            (
                "suffix matches many labels",
                "*.example.com",
                "a.b.example.com",
                true,
            ),
            (
                "suffix does not match the apex",
                "*.example.com",
                "example.com",
                false,
            ),
            (
                "suffix needs a label boundary",
                "*.example.com",
                "evilexample.com",
                false,
            ),
            (
                "suffix does not match a lookalike",
                "*.example.com",
                "example.com.evil.io",
                false,
            ),
            (
                "suffix does not match a bare dot label",
                "*.example.com",
                ".example.com",
                false,
            ),
            (
                "suffix is case-insensitive",
                "*.example.com",
                "API.Example.Com",
                true,
            ),
            (
                "non-ascii host does not panic",
                "*.example.com",
                "é.example.co",
                false,
            ),
        ];
        for (rule, pattern, host, want) in cases {
            let pattern = HostPattern::parse(pattern).expect("pattern parses");
            assert_eq!(
                pattern.matches(host),
                *want,
                "{rule}: {pattern} vs {host:?}"
            );
        }
    }

    #[test]
    fn byte_level_host_matching_agrees_with_eq_ignore_ascii_case() {
        // The straightforward rule the byte-level matcher replaces.
        fn reference(p: &HostPattern, host: &str) -> bool {
            let host = host.strip_suffix('.').unwrap_or(host);
            match p {
                HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
                HostPattern::Suffix(suffix) => {
                    host.len() > suffix.len()
                        && host.is_char_boundary(host.len() - suffix.len())
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                }
            }
        }
        let patterns = [
            "api.example.com",
            "*.example.com",
            "a-1.b",
            "*.x-y.io",
            "localhost",
        ];
        let hosts = [
            "",
            ".",
            "api.example.com",
            "API.EXAMPLE.COM.",
            "api.example.com..",
            "x.example.com",
            "example.com",
            ".example.com",
            "evilexample.com",
            "a.b.EXAMPLE.com",
            "A-1.B",
            "a-1.b.",
            "a_1.b",
            "z.X-Y.IO",
            "LOCALHOST",
            "localhost.",
            "localhosts",
            "é.example.com",
            "api.examplé.com",
            "\u{212a}.example.com",
            "api@example.com",
            "api[example.com",
        ];
        for p in patterns {
            let pattern = HostPattern::parse(p).expect("pattern parses");
            for h in hosts {
                assert_eq!(pattern.matches(h), reference(&pattern, h), "{p} vs {h:?}");
            }
        }
    }

    #[test]
    fn host_pattern_containment() {
        let cases: &[(&str, &str, &str, bool)] = &[
            (
                "exact within same exact",
                "a.example.com",
                "a.example.com",
                true,
            ),
            (
                "exact within matching suffix",
                "a.example.com",
                "*.example.com",
                true,
            ),
            (
                "suffix within same suffix",
                "*.example.com",
                "*.example.com",
                true,
            ),
            (
                "narrower suffix within wider",
                "*.api.example.com",
                "*.example.com",
                true,
            ),
            (
                "wider suffix not within narrower",
                "*.example.com",
                "*.api.example.com",
                false,
            ),
            (
                "suffix not within exact",
                "*.example.com",
                "example.com",
                false,
            ),
            (
                "lookalike suffix not within",
                "*.evilexample.com",
                "*.example.com",
                false,
            ),
            (
                "apex not within suffix",
                "example.com",
                "*.example.com",
                false,
            ),
        ];
        for (rule, inner, outer, want) in cases {
            let inner = HostPattern::parse(inner).expect("inner parses");
            let outer = HostPattern::parse(outer).expect("outer parses");
            assert_eq!(inner.is_within(&outer), *want, "{rule}");
        }
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("v4 block contains member", "10.0.0.0/8", "10.200.1.1", true),
            (
                "v4 block excludes neighbour",
                "10.0.0.0/8",
                "11.0.0.1",
                false,
            ),
            ("single v4 address", "192.0.2.7", "192.0.2.7", true),
            (
                "single v4 address excludes next",
                "192.0.2.7",
                "192.0.2.8",
                false,
            ),
            ("zero prefix contains all v4", "0.0.0.0/0", "8.8.8.8", true),
            ("v6 block contains member", "fd00::/8", "fd12::1", true),
            ("v6 block excludes v4", "fd00::/8", "10.0.0.1", false),
            (
                "v4-mapped v6 counts as v4",
                "10.0.0.0/8",
                "::ffff:10.1.2.3",
                true,
            ),
            ("v4 block excludes v6", "10.0.0.0/8", "fd00::1", false),
        ];
        for (rule, cidr, addr, want) in cases {
            let cidr = Cidr::parse(cidr).expect("cidr parses");
            assert_eq!(cidr.contains(ip(addr)), *want, "{rule}");
        }
        for bad in [
            "10.0.0.0/33",
            "10.1.2.3/8",
            "10.0.0/8",
            "fd00::/129",
            "host/8",
            "10.0.0.0/x",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad} must be rejected");
        }
        let small = Cidr::parse("10.1.0.0/16").expect("parses");
        let big = Cidr::parse("10.0.0.0/8").expect("parses");
        assert!(small.is_within(&big));
        assert!(!big.is_within(&small));
    }

    #[test]
    fn classify_spec_one_row_per_registry_entry() {
        // (rule, address, public, the range a grant must lie within when not public)
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool, &str)] = &[
            ("public v4 is global", "93.184.216.34", true, ""),
            ("public v6 is global", "2606:2800:220:1::1", true, ""),
            // IANA IPv4 special-purpose registry
            ("0.0.0.0/8 this network", "0.1.2.3", false, "0.0.0.0/8"),
            ("0.0.0.0/32 this host", "0.0.0.0", false, "0.0.0.0/32"),
            ("10.0.0.0/8 private-use", "10.0.0.1", false, "10.0.0.0/8"),
            ("100.64.0.0/10 shared address space", "100.127.255.254", false, "100.64.0.0/10"),
            ("just outside shared address space", "100.128.0.1", true, ""),
            ("127.0.0.0/8 loopback", "127.200.0.1", false, "127.0.0.0/8"),
            ("169.254.0.0/16 link local", "169.254.1.1", false, "169.254.0.0/16"),
            ("172.16.0.0/12 private-use", "172.31.255.255", false, "172.16.0.0/12"),
            ("just outside 172.16.0.0/12", "172.32.0.1", true, ""),
            ("192.0.0.0/24 IETF protocol assignments", "192.0.0.200", false, "192.0.0.0/24"),
            ("192.0.0.0/29 service continuity", "192.0.0.1", false, "192.0.0.0/29"),
            ("192.0.0.8/32 dummy address", "192.0.0.8", false, "192.0.0.8/32"),
            ("192.0.0.9/32 PCP anycast is global", "192.0.0.9", true, ""),
            ("192.0.0.10/32 TURN anycast is global", "192.0.0.10", true, ""),
            ("192.0.0.170/32 NAT64 discovery", "192.0.0.170", false, "192.0.0.170/32"),
            ("192.0.0.171/32 NAT64 discovery", "192.0.0.171", false, "192.0.0.171/32"),
            ("192.0.2.0/24 TEST-NET-1", "192.0.2.7", false, "192.0.2.0/24"),
            ("192.31.196.0/24 AS112 is global", "192.31.196.1", true, ""),
            ("192.52.193.0/24 AMT is global", "192.52.193.1", true, ""),
            ("192.88.99.0/24 deprecated 6to4 relay", "192.88.99.1", false, "192.88.99.0/24"),
            ("192.168.0.0/16 private-use", "192.168.1.1", false, "192.168.0.0/16"),
            ("192.175.48.0/24 AS112 delegation is global", "192.175.48.1", true, ""),
            ("198.18.0.0/15 benchmarking", "198.19.255.1", false, "198.18.0.0/15"),
            ("198.51.100.0/24 TEST-NET-2", "198.51.100.1", false, "198.51.100.0/24"),
            ("203.0.113.0/24 TEST-NET-3", "203.0.113.1", false, "203.0.113.0/24"),
            ("224.0.0.0/4 multicast", "239.1.2.3", false, "224.0.0.0/4"),
            ("240.0.0.0/4 reserved", "240.0.0.1", false, "240.0.0.0/4"),
            ("255.255.255.255/32 limited broadcast", "255.255.255.255", false, "255.255.255.255/32"),
            // Cloud metadata: only the exact address names it
            ("metadata inside link local", "169.254.169.254", false, "169.254.169.254/32"),
            ("ECS task metadata", "169.254.170.2", false, "169.254.170.2/32"),
            ("Alibaba metadata inside shared space", "100.100.100.200", false, "100.100.100.200/32"),
            ("AWS IPv6 metadata inside ULA", "fd00:ec2::254", false, "fd00:ec2::254/128"),
            // IANA IPv6 special-purpose registry
            ("::1/128 loopback", "::1", false, "::1/128"),
            ("::/128 unspecified", "::", false, "::/128"),
            ("::ffff:0:0/96 mapped counts as its IPv4 (loopback)", "::ffff:127.0.0.1", false, "127.0.0.0/8"),
            ("::ffff:0:0/96 mapped counts as its IPv4 (metadata)", "::ffff:169.254.169.254", false, "169.254.169.254/32"),
            ("::ffff:0:0/96 mapped public", "::ffff:93.184.216.34", true, ""),
            ("64:ff9b::/96 NAT64 of loopback", "64:ff9b::127.0.0.1", false, "64:ff9b::7f00:1/128"),
            ("64:ff9b::/96 NAT64 of metadata", "64:ff9b::169.254.169.254", false, "64:ff9b::a9fe:a9fe/128"),
            ("64:ff9b::/96 NAT64 of a public address", "64:ff9b::93.184.216.34", true, ""),
            ("64:ff9b:1::/48 local-use translation", "64:ff9b:1::5db8:d822", false, "64:ff9b:1::/48"),
            ("100::/64 discard-only", "100::1", false, "100::/64"),
            ("100:0:0:1::/64 dummy prefix", "100:0:0:1::1", false, "100:0:0:1::/64"),
            ("2001::/23 IETF protocol assignments", "2001:100::1", false, "2001::/23"),
            ("2001::/32 Teredo, client loopback", "2001:0:4136:e378:8000:63bf:80ff:fffe", false, "2001:0:4136:e378:8000:63bf:80ff:fffe/128"),
            ("2001::/32 Teredo, client metadata", "2001:0:4136:e378::5601:5601", false, "2001:0:4136:e378::5601:5601/128"),
            ("2001::/32 Teredo, public client", "2001:0:4136:e378:8000:63bf:a247:2ddd", true, ""),
            ("2001:1::1/128 PCP anycast is global", "2001:1::1", true, ""),
            ("2001:1::2/128 TURN anycast is global", "2001:1::2", true, ""),
            ("2001:1::3/128 DNS-SD SRP anycast is global", "2001:1::3", true, ""),
            ("2001:2::/48 benchmarking", "2001:2::1", false, "2001:2::/48"),
            ("2001:3::/32 AMT is global", "2001:3::1", true, ""),
            ("2001:4:112::/48 AS112-v6 is global", "2001:4:112::1", true, ""),
            ("2001:10::/28 deprecated ORCHID", "2001:10::1", false, "2001:10::/28"),
            ("2001:20::/28 ORCHIDv2 is global", "2001:20::1", true, ""),
            ("2001:30::/28 drone remote ID is global", "2001:30::1", true, ""),
            ("2001:db8::/32 documentation", "2001:db8::1", false, "2001:db8::/32"),
            ("2002::/16 6to4 of loopback", "2002:7f00:1::1", false, "2002:7f00:1::1/128"),
            ("2002::/16 6to4 of private", "2002:a00:1::", false, "2002:a00:1::/128"),
            ("2002::/16 6to4 of metadata", "2002:a9fe:a9fe::1", false, "2002:a9fe:a9fe::1/128"),
            ("2002::/16 6to4 of a public address", "2002:5db8:d822::1", true, ""),
            ("2620:4f:8000::/48 AS112 delegation is global", "2620:4f:8000::1", true, ""),
            ("3fff::/20 documentation", "3fff::1", false, "3fff::/20"),
            ("5f00::/16 SRv6 SIDs", "5f00::1", false, "5f00::/16"),
            ("fc00::/7 unique local", "fd12::1", false, "fc00::/7"),
            ("fe80::/10 link-local", "fe80::1", false, "fe80::/10"),
            // Not in the registry but not public either
            ("::/96 IPv4-compatible of loopback", "::127.0.0.1", false, "::7f00:1/128"),
            ("::/96 IPv4-compatible of this network", "::2", false, "::2/128"),
            ("::/96 IPv4-compatible of a public address", "::93.184.216.34", true, ""),
            ("::ffff:0:0:0/96 IPv4-translated of loopback", "::ffff:0:127.0.0.1", false, "::ffff:0:7f00:1/128"),
            ("::ffff:0:0:0/96 IPv4-translated of a public address", "::ffff:0:93.184.216.34", true, ""),
            ("fec0::/10 site-local (deprecated)", "fec0::1", false, "fec0::/10"),
            ("ff00::/8 multicast", "ff02::1", false, "ff00::/8"),
            ("outside 2000::/3 is reserved", "4000::1", false, "::/0"),
        ];
        for (rule, addr, public, block) in cases {
            let class = classify(ip(addr));
            assert_eq!(class.public, *public, "{rule}: {addr} ({})", class.entry);
            assert_eq!(is_restricted(ip(addr)), !*public, "{rule}: is_restricted");
            if !public {
                let want = Cidr::parse(block).expect("block parses");
                assert_eq!(class.block, want, "{rule}: {addr} ({})", class.entry);
            }
        }
    }

    /// A small deterministic generator (xorshift64*): the same samples on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn v6(&mut self) -> u128 {
            (u128::from(self.next()) << 64) | u128::from(self.next())
        }
    }

    /// Addresses that probe every row's edges: its first and last address and their
    /// neighbours, and random ones inside it.
    fn row_edges(rng: &mut Rng) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for row in SPECIAL_V4 {
            let last = row.network | !row.mask;
            for bits in [
                row.network,
                last,
                row.network.wrapping_sub(1),
                last.wrapping_add(1),
            ] {
                out.push(IpAddr::V4(Ipv4Addr::from(bits)));
            }
            for _ in 0..32 {
                let bits = row.network | (rng.next() as u32 & !row.mask);
                out.push(IpAddr::V4(Ipv4Addr::from(bits)));
            }
        }
        for row in SPECIAL_V6 {
            let last = row.network | !row.mask;
            for bits in [
                row.network,
                last,
                row.network.wrapping_sub(1),
                last.wrapping_add(1),
            ] {
                out.push(IpAddr::V6(Ipv6Addr::from(bits)));
            }
            for _ in 0..256 {
                let bits = row.network | (rng.v6() & !row.mask);
                out.push(IpAddr::V6(Ipv6Addr::from(bits)));
                // The embedding forms carrying an address of each IPv4 row.
                if row.embeds.is_some() {
                    let v4 = &SPECIAL_V4[rng.next() as usize % SPECIAL_V4.len()];
                    let inner = u128::from(v4.network | (rng.next() as u32 & !v4.mask));
                    let shifted = match row.embeds {
                        Some(Embeds::SixToFour) => inner << 80,
                        Some(Embeds::Teredo) => u128::from(!(inner as u32)),
                        _ => inner,
                    };
                    let cleared = bits & !0xffff_ffff_u128 & !(0xffff_ffff_u128 << 80);
                    out.push(IpAddr::V6(Ipv6Addr::from(cleared | row.network | shifted)));
                }
            }
        }
        out
    }

    #[test]
    fn fast_classification_agrees_with_the_table_scan() {
        let mut rng = Rng(0x243f_6a88_85a3_08d3);
        let mut addrs = row_edges(&mut rng);
        // Every first octet, its edges and a sample inside.
        for octet in 0..=255u32 {
            let block = octet << 24;
            for bits in [block, block | 0x00ff_ffff] {
                addrs.push(IpAddr::V4(Ipv4Addr::from(bits)));
            }
            for _ in 0..512 {
                let bits = block | (rng.next() as u32 & 0x00ff_ffff);
                addrs.push(IpAddr::V4(Ipv4Addr::from(bits)));
            }
        }
        // Random IPv6, everywhere and in the low (special-dense) end, and every first hextet.
        for _ in 0..100_000 {
            let bits = rng.v6();
            addrs.push(IpAddr::V6(Ipv6Addr::from(bits)));
            addrs.push(IpAddr::V6(Ipv6Addr::from(bits >> 64)));
            addrs.push(IpAddr::V6(Ipv6Addr::from(bits >> 96)));
        }
        for hextet in 0..=u16::MAX {
            let bits = (u128::from(hextet) << 112) | (rng.v6() >> 16);
            addrs.push(IpAddr::V6(Ipv6Addr::from(bits)));
        }
        for ip in addrs {
            assert_eq!(classify(ip), classify_by_table(ip), "{ip}");
        }
        // The fast paths are taken: most first octets need no scan.
        let scanned = V4_BY_OCTET.iter().filter(|&&o| o == OCTET_MIXED).count();
        assert!(scanned <= 16, "{scanned} first octets still scan the table");
    }

    #[test]
    fn uniform_block_reach_agrees_with_every_address() {
        // (rule, block, decided once: Some(reach) / None)
        #[rustfmt::skip]
        let cases: &[(&str, &str, Option<bool>)] = &[
            ("a private block reaches all of itself", "10.0.0.0/8", Some(true)),
            ("inside a private block", "10.1.0.0/16", Some(true)),
            ("a public block", "8.8.8.0/24", Some(true)),
            ("a public /8", "93.0.0.0/8", Some(true)),
            ("a block holding loopback differs by address", "126.0.0.0/7", None),
            ("any-v4 differs by address", "0.0.0.0/0", None),
            ("link-local holds metadata", "169.254.0.0/16", None),
            ("shared space holds Alibaba metadata", "100.64.0.0/10", None),
            ("a block inside link-local beside metadata", "169.254.1.0/24", Some(true)),
            ("multicast", "224.0.0.0/4", Some(true)),
            ("a block inside multicast", "239.0.0.0/8", Some(true)),
            ("a public block holding private ones", "172.0.0.0/8", None),
            ("a single special address", "169.254.169.254", Some(true)),
            ("a single address in a special block", "127.0.0.1", Some(true)),
            ("any-v6", "::/0", None),
            ("global unicast holds special blocks", "2000::/3", None),
            ("a public v6 block", "2606:2800::/32", Some(true)),
            ("ULA holds AWS metadata", "fc00::/7", None),
            ("inside ULA beside metadata", "fd12::/16", Some(true)),
            ("6to4 judges by the embedded address", "2002::/16", None),
            ("NAT64 judges by the embedded address", "64:ff9b::/96", None),
            ("documentation", "2001:db8::/32", Some(true)),
            ("link-local v6", "fe80::/10", Some(true)),
            ("v6 loopback", "::1", Some(true)),
        ];
        let mut rng = Rng(0x1319_8a2e_0370_7344);
        for (rule, block, want) in cases {
            let cidr = Cidr::parse(block).expect("block parses");
            assert_eq!(cidr.uniform_reach(), *want, "{rule}");
        }
        // Every row's block, sampled: where the reach is decided once, every address agrees.
        let mut blocks: Vec<Cidr> = cases
            .iter()
            .map(|(_, b, _)| Cidr::parse(b).expect("parses"))
            .collect();
        for row in SPECIAL_V4 {
            let network = IpAddr::V4(Ipv4Addr::from(row.network));
            blocks.push(Cidr {
                network,
                prefix: row.prefix,
            });
        }
        for row in SPECIAL_V6 {
            let network = IpAddr::V6(Ipv6Addr::from(row.network));
            blocks.push(Cidr {
                network,
                prefix: row.prefix,
            });
        }
        for _ in 0..2_000 {
            let prefix = (rng.next() % 33) as u8;
            let network = mask(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)), prefix);
            blocks.push(Cidr { network, prefix });
            let prefix = (rng.next() % 129) as u8;
            let network = mask(
                IpAddr::V6(Ipv6Addr::from(rng.v6() >> (rng.next() % 64))),
                prefix,
            );
            blocks.push(Cidr { network, prefix });
        }
        for cidr in blocks {
            let Some(reach) = cidr.uniform_reach() else {
                continue;
            };
            let addrs: Vec<IpAddr> = match cidr.network {
                IpAddr::V4(v4) => {
                    let m = v4_mask(cidr.prefix);
                    let base = u32::from(v4);
                    let mut v = vec![base, base | !m];
                    v.extend((0..64).map(|_| base | (rng.next() as u32 & !m)));
                    v.into_iter()
                        .map(|b| IpAddr::V4(Ipv4Addr::from(b)))
                        .collect()
                }
                IpAddr::V6(v6) => {
                    let m = v6_mask(cidr.prefix);
                    let base = u128::from(v6);
                    let mut v = vec![base, base | !m];
                    v.extend((0..64).map(|_| base | (rng.v6() & !m)));
                    v.into_iter()
                        .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
                        .collect()
                }
            };
            for ip in addrs {
                if cidr.contains(ip) {
                    assert_eq!(cidr.reaches(ip), reach, "{cidr} vs {ip}");
                }
            }
        }
    }

    #[test]
    fn host_names_a_lookup_may_carry() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool)] = &[
            ("a plain name", "api.example.com", true),
            ("upper case", "API.Example.COM", true),
            ("a trailing dot", "api.example.com.", true),
            ("one label", "localhost", true),
            ("digits", "1.example.com", true),
            ("empty", "", false),
            ("only a dot", ".", false),
            ("an empty label", "a..example.com", false),
            ("a leading dot", ".example.com", false),
            ("a leading dash", "-a.example.com", false),
            ("a trailing dash", "a-.example.com", false),
            ("an underscore", "_srv.example.com", false),
            ("a wildcard", "*.example.com", false),
            ("percent escapes", "%61.example.com", false),
            ("full-width letters", "\u{ff41}.example.com", false),
            ("an ideographic full stop", "a\u{3002}example.com", false),
            ("a space", "a b.example.com", false),
            ("a NUL", "a\0.example.com", false),
            ("a 64-byte label", &format!("{}.example.com", "a".repeat(64)), false),
            ("253 bytes", &format!("{}com", "a.".repeat(125)), true),
            ("255 bytes", &format!("{}com", "a.".repeat(126)), false),
        ];
        for (rule, name, want) in cases {
            assert_eq!(is_host_name(name), *want, "{rule}: {name:?}");
        }
    }

    #[test]
    fn cidr_reach_spec() {
        // (rule, granted block, address, reached)
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, bool)] = &[
            ("any-v4 reaches a public address", "0.0.0.0/0", "93.184.216.34", true),
            ("any-v4 does not reach loopback", "0.0.0.0/0", "127.0.0.1", false),
            ("any-v4 does not reach metadata", "0.0.0.0/0", "169.254.169.254", false),
            ("any-v4 does not reach link-local", "0.0.0.0/0", "169.254.1.1", false),
            ("any-v4 does not reach private", "0.0.0.0/0", "10.1.2.3", false),
            ("any-v4 does not reach this host", "0.0.0.0/0", "0.0.0.0", false),
            ("any-v4 does not reach broadcast", "0.0.0.0/0", "255.255.255.255", false),
            ("any-v4 does not reach mapped loopback", "0.0.0.0/0", "::ffff:127.0.0.1", false),
            ("any-v6 reaches a public address", "::/0", "2606:2800:220:1::1", true),
            ("any-v6 does not reach loopback", "::/0", "::1", false),
            ("any-v6 does not reach unspecified", "::/0", "::", false),
            ("any-v6 does not reach ULA metadata", "::/0", "fd00:ec2::254", false),
            ("any-v6 does not reach NAT64 of loopback", "::/0", "64:ff9b::127.0.0.1", false),
            ("any-v6 reaches NAT64 of a public address", "::/0", "64:ff9b::93.184.216.34", true),
            ("any-v6 does not reach 6to4 of metadata", "::/0", "2002:a9fe:a9fe::1", false),
            ("any-v6 does not reach Teredo of loopback", "::/0", "2001:0:4136:e378:8000:63bf:80ff:fffe", false),
            ("any-v6 does not reach IPv4-compatible loopback", "::/0", "::127.0.0.1", false),
            ("any-v6 does not reach site-local", "::/0", "fec0::1", false),
            ("any-v6 does not reach discard-only", "::/0", "100::1", false),
            ("half of v4 does not reach loopback", "0.0.0.0/1", "127.0.0.1", false),
            ("a block just wider than loopback does not reach it", "126.0.0.0/7", "127.0.0.1", false),
            ("loopback block reaches loopback", "127.0.0.0/8", "127.0.0.1", true),
            ("a loopback address reaches itself", "127.0.0.1", "127.0.0.1", true),
            ("a loopback address reaches its mapped form", "127.0.0.1", "::ffff:127.0.0.1", true),
            ("a mapped-form grant is its IPv4 block", "::ffff:127.0.0.1", "127.0.0.1", true),
            ("private block reaches inside", "10.0.0.0/8", "10.1.2.3", true),
            ("narrower private block reaches inside", "10.1.0.0/16", "10.1.2.3", true),
            ("link-local block does not reach metadata", "169.254.0.0/16", "169.254.169.254", false),
            ("exact metadata address reaches it", "169.254.169.254", "169.254.169.254", true),
            ("ULA block does not reach AWS metadata", "fc00::/7", "fd00:ec2::254", false),
            ("exact AWS metadata address reaches it", "fd00:ec2::254", "fd00:ec2::254", true),
            ("6to4 block does not reach 6to4 of loopback", "2002::/16", "2002:7f00:1::1", false),
            ("exact 6to4 address of loopback reaches it", "2002:7f00:1::1", "2002:7f00:1::1", true),
            ("block outside the address", "10.0.0.0/8", "11.0.0.1", false),
        ];
        for (rule, block, addr, want) in cases {
            let cidr = Cidr::parse(block).expect("block parses");
            assert_eq!(cidr.reaches(ip(addr)), *want, "{rule}: {block} vs {addr}");
        }
    }

    #[test]
    fn cidr_within_spec() {
        // (rule, inner, outer, within): within = everything inner reaches, outer reaches.
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, bool)] = &[
            ("public block within any-v4", "8.8.8.0/24", "0.0.0.0/0", true),
            ("any-v4 within itself", "0.0.0.0/0", "0.0.0.0/0", true),
            ("loopback address not within any-v4", "127.0.0.1", "0.0.0.0/0", false),
            ("loopback block not within any-v4", "127.0.0.0/8", "0.0.0.0/0", false),
            ("metadata not within any-v4", "169.254.169.254", "0.0.0.0/0", false),
            ("link-local block not within any-v4", "169.254.0.0/16", "0.0.0.0/0", false),
            ("private block not within any-v4", "10.0.0.0/8", "0.0.0.0/0", false),
            ("private address not within a wider non-private block", "10.1.2.3", "8.0.0.0/5", false),
            ("private address within its private block", "10.1.2.3", "10.0.0.0/8", true),
            ("narrower private block within private block", "10.1.0.0/16", "10.0.0.0/8", true),
            ("loopback address within loopback block", "127.0.0.1", "127.0.0.0/8", true),
            ("metadata not within link-local block", "169.254.169.254", "169.254.0.0/16", false),
            ("metadata within itself", "169.254.169.254", "169.254.169.254", true),
            ("link-local block within itself", "169.254.0.0/16", "169.254.0.0/16", true),
            ("v6 loopback not within any-v6", "::1", "::/0", false),
            ("ULA block not within any-v6", "fd00::/8", "::/0", false),
            ("AWS metadata not within ULA", "fd00:ec2::254", "fc00::/7", false),
            ("6to4 of loopback not within 6to4 block", "2002:7f00:1::1", "2002::/16", false),
            ("6to4 block within any-v6 (reaches only public)", "2002::/16", "::/0", true),
            ("public v6 within any-v6", "2606:2800::/32", "::/0", true),
            ("wider block not within narrower", "10.0.0.0/8", "10.1.0.0/16", false),
        ];
        for (rule, inner, outer, want) in cases {
            let inner = Cidr::parse(inner).expect("inner parses");
            let outer = Cidr::parse(outer).expect("outer parses");
            assert_eq!(inner.is_within(&outer), *want, "{rule}: {inner} in {outer}");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            PortRange::new(443, None)
                .map(|r| r.to_string())
                .ok()
                .as_deref(),
            Some("443")
        );
        assert_eq!(
            PortRange::new(8000, Some(8100))
                .map(|r| r.to_string())
                .ok()
                .as_deref(),
            Some("8000-8100")
        );
        for (port, end) in [
            (0, None),
            (65536, None),
            (-1, None),
            (100, Some(99)),
            (1, Some(70000)),
        ] {
            assert!(
                PortRange::new(port, end).is_err(),
                "{port}..{end:?} must be rejected"
            );
        }
        let range = PortRange::new(8000, Some(8100)).expect("valid");
        assert!(range.contains(8000) && range.contains(8100) && !range.contains(8101));
        let inner = PortRange::new(8050, None).expect("valid");
        assert!(inner.is_within(&range) && !range.is_within(&inner));
    }
}
