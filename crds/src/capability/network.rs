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
        Ok(cidr)
    }

    /// Whether `ip` is inside the block. IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }

    /// Whether the whole block lies inside `outer`.
    pub fn is_within(&self, outer: &Cidr) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.network)
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

/// Whether an address is loopback, private, link-local or otherwise not on the public
/// internet. Reaching one of these through a host-name grant is how SSRF to cloud metadata
/// and cluster services happens, so they need an explicit address grant.
pub fn is_restricted(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first == 0x64 && v6.segments()[1] == 0xff9b) // NAT64 can reach anything
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
        }
    }
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
    fn restricted_ranges() {
        let cases: &[(&str, &str, bool)] = &[
            ("public v4", "93.184.216.34", false),
            ("public v6", "2606:2800:220:1::1", false),
            ("loopback", "127.0.0.1", true),
            ("loopback anywhere in /8", "127.200.0.1", true),
            ("rfc1918 10/8", "10.0.0.1", true),
            ("rfc1918 172.16/12", "172.31.255.255", true),
            ("just outside 172.16/12", "172.32.0.1", false),
            ("rfc1918 192.168/16", "192.168.1.1", true),
            ("cloud metadata (link-local)", "169.254.169.254", true),
            ("carrier-grade NAT", "100.64.0.1", true),
            ("unspecified", "0.0.0.0", true),
            ("broadcast", "255.255.255.255", true),
            ("v6 loopback", "::1", true),
            ("v6 unique local", "fd00::1", true),
            ("v6 link-local", "fe80::1", true),
            ("v4-mapped loopback", "::ffff:127.0.0.1", true),
            ("v4-mapped public", "::ffff:93.184.216.34", false),
            ("NAT64 prefix", "64:ff9b::a00:1", true),
        ];
        for (rule, addr, want) in cases {
            assert_eq!(is_restricted(ip(addr)), *want, "{rule}: {addr}");
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
