//! Filesystem capability paths: absolute, normalized, matched component by component.

use std::fmt;

use super::CapabilityError;

/// Longest path we accept; real mount points are far shorter, and a bound keeps CEL cheap.
pub const MAX_PATH_LEN: usize = 1024;

/// An absolute, normalized path: starts with `/`, no empty, `.` or `..` components, no
/// trailing slash (except the root itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbsPath(String);

impl AbsPath {
    /// Parses and normalizes `raw`. `..` is rejected rather than resolved: a capability that
    /// needs `..` to say where it points is a mistake or an attack.
    pub fn parse(raw: &str) -> Result<Self, CapabilityError> {
        let invalid = |reason: &'static str| CapabilityError::InvalidPath {
            path: raw.to_owned(),
            reason,
        };
        if raw.len() > MAX_PATH_LEN {
            return Err(invalid("longer than 1024 bytes"));
        }
        if !raw.starts_with('/') {
            return Err(invalid("must be absolute (start with '/')"));
        }
        if raw.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        if raw.contains('\\') {
            return Err(invalid("contains a backslash"));
        }
        let mut normalized = String::with_capacity(raw.len());
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(invalid("contains a '..' component")),
                part => {
                    normalized.push('/');
                    normalized.push_str(part);
                }
            }
        }
        if normalized.is_empty() {
            normalized.push('/');
        }
        Ok(Self(normalized))
    }

    /// The normalized path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self`, as a grant prefix, covers `other`: equal, or `other` continues past a `/`.
    /// `/app` covers `/app` and `/app/x`, never `/application`.
    pub fn covers(&self, other: &AbsPath) -> bool {
        covers_normalized(&self.0, &other.0)
    }

    /// Like [`AbsPath::covers`] on a raw, not yet normalized path. Fails closed: anything that
    /// does not parse (relative, `..`, NUL) is not covered. An already normalized path is
    /// decided without allocating.
    pub fn covers_raw(&self, raw: &str) -> bool {
        if is_normalized(raw) {
            return covers_normalized(&self.0, raw);
        }
        match AbsPath::parse(raw) {
            Ok(path) => self.covers(&path),
            Err(_) => false,
        }
    }
}

/// Component-wise prefix test on two normalized paths (the [`AbsPath::covers`] rule on
/// plain strings, for compiled tables): equal, or `path` continues past a `/`; the root
/// covers everything. Only meaningful when both are normalized ([`is_normalized`]).
#[inline]
pub fn covers_normalized(prefix: &str, path: &str) -> bool {
    let (prefix, path) = (prefix.as_bytes(), path.as_bytes());
    if prefix == b"/" {
        return true;
    }
    path.len() >= prefix.len()
        && &path[..prefix.len()] == prefix
        && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

const LOW_BITS: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The high bit of every byte of `word` equal to `byte`; exact (no borrow between bytes).
#[inline(always)]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let diff = word ^ (u64::from(byte) * 0x0101_0101_0101_0101);
    !(((diff & LOW_BITS) + LOW_BITS) | diff) & HIGH_BITS
}

/// Eight bytes as a little-endian word.
#[inline(always)]
fn word_at(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// One little-endian word of a path: (bytes that are NUL or `\\`, `/` followed by `/` or
/// `.`, whether the last byte is a `/` for the next word). `carry` says the byte before the
/// word was a `/`.
#[inline(always)]
fn screen(word: u64, carry: u64) -> (u64, u64, u64) {
    let slash = bytes_equal(word, b'/');
    let bad = bytes_equal(word, 0) | bytes_equal(word, b'\\');
    let after_slash = (slash << 8) | carry;
    let sus = after_slash & (slash | bytes_equal(word, b'.'));
    (bad, sus, (slash >> 56) & 0x80)
}

/// Whether `raw` is already in the form [`AbsPath::parse`] produces, so parsing would return
/// it unchanged: absolute, at most [`MAX_PATH_LEN`] bytes, no NUL or backslash, no empty, `.`
/// or `..` components, no trailing slash except the root. Does not allocate; a `false` means
/// "parse it" (it may still normalize into a valid path, or be invalid).
pub fn is_normalized(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.len() > MAX_PATH_LEN {
        return false;
    }
    if bytes.len() == 1 {
        return true;
    }
    if bytes.ends_with(b"/") {
        return false;
    }
    // Fast screen, eight bytes at a time: no NUL or backslash, and no `/` followed by `/`
    // or `.`. A path passing it has only non-empty components that do not start with a
    // dot, so it is normalized.
    let (mut bad, mut suspicious) = (0u64, 0u64);
    if bytes.len() < 8 {
        // Short: one word, padded with a byte that is none of the interesting ones.
        let mut word = [b'a'; 8];
        for (w, b) in word.iter_mut().zip(bytes) {
            *w = *b;
        }
        (bad, suspicious, _) = screen(u64::from_le_bytes(word), 0);
    } else {
        let mut carry = 0u64;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in chunks.by_ref() {
            let (b, s, next) = screen(word_at(chunk), carry);
            (bad, suspicious, carry) = (bad | b, suspicious | s, next);
        }
        // The last eight bytes, overlapping what was screened: checking a pair twice is
        // harmless, and it needs no copy of a short tail.
        let rest = chunks.remainder().len();
        if rest > 0 {
            let start = bytes.len() - 8;
            let carry = if bytes[start - 1] == b'/' { 0x80 } else { 0 };
            let (b, s, _) = screen(word_at(&bytes[start..]), carry);
            (bad, suspicious) = (bad | b, suspicious | s);
        }
    }
    if bad != 0 {
        return false;
    }
    if suspicious == 0 {
        return true;
    }
    // Exact pass for paths with dot-files or doubled slashes: every component non-empty and
    // not `.` or `..`.
    let bad = |len: usize, dots: usize| len == 0 || (len == dots && dots <= 2);
    let (mut len, mut dots) = (0usize, 0usize);
    for &c in &bytes[1..] {
        match c {
            b'/' => {
                if bad(len, dots) {
                    return false;
                }
                (len, dots) = (0, 0);
            }
            b'.' => (len, dots) = (len + 1, dots + 1),
            _ => len += 1,
        }
    }
    !bad(len, dots)
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_or_rejects() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("plain absolute path is kept", "/data", Some("/data")),
            ("root is kept", "/", Some("/")),
            ("trailing slash is dropped", "/data/", Some("/data")),
            (
                "doubled slashes collapse",
                "//data//logs",
                Some("/data/logs"),
            ),
            (
                "dot components vanish",
                "/data/./logs/.",
                Some("/data/logs"),
            ),
            (
                "dots inside names are names",
                "/data/..hidden/a..b",
                Some("/data/..hidden/a..b"),
            ),
            ("relative path is rejected", "data", None),
            ("empty path is rejected", "", None),
            ("dot-relative path is rejected", "./data", None),
            ("parent component is rejected", "/data/../etc", None),
            ("trailing parent is rejected", "/data/..", None),
            ("leading parent is rejected", "/../etc", None),
            ("NUL byte is rejected", "/data\0/x", None),
            ("backslash is rejected", "/data\\..\\etc", None),
        ];
        for (rule, raw, want) in cases {
            let got = AbsPath::parse(raw).ok();
            assert_eq!(got.as_ref().map(AbsPath::as_str), *want, "{rule}: {raw:?}");
        }
    }

    #[test]
    fn is_normalized_is_exactly_what_parse_leaves_unchanged() {
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        for raw in [
            "/",
            "/a",
            "/a/b",
            "//a",
            "/a/",
            "/a/./b",
            "/a/../b",
            "a",
            "",
            "/a\\b",
            "/.",
            "/..",
            "/a/.hidden",
            "/a/..b",
            "/a//b",
            "/...",
            "/a/...",
            "/a/.",
            "/a/..",
            "/a/b/",
            "/a\0b",
            "/.a",
            "/a.",
            "/a..",
            "/data/..hidden/a..b",
            "./data",
            long.as_str(),
        ] {
            let parsed = AbsPath::parse(raw).ok();
            let identity = parsed.as_ref().is_some_and(|p| p.as_str() == raw);
            assert_eq!(is_normalized(raw), identity, "{raw:?}");
        }
    }

    #[test]
    fn is_normalized_agrees_with_parse_on_every_short_path_and_many_long_ones() {
        let alphabet = [b'/', b'.', b'a', b'\\', 0];
        let check = |bytes: &[u8]| {
            let raw = std::str::from_utf8(bytes).expect("ascii");
            let identity = AbsPath::parse(raw).is_ok_and(|p| p.as_str() == raw);
            assert_eq!(is_normalized(raw), identity, "{raw:?}");
        };
        // Every path of up to 7 bytes over the interesting bytes.
        for len in 0..=7u32 {
            for n in 0..5usize.pow(len) {
                let mut k = n;
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[k % 5];
                        k /= 5;
                        b
                    })
                    .collect();
                check(&bytes);
            }
        }
        // Longer paths across the 8-byte words, mostly well-formed, from a fixed LCG.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let len = 8 + (state >> 58) as usize;
            let bytes: Vec<u8> = std::iter::once(b'/')
                .chain((1..len).map(|i| {
                    let r = (state >> (i % 56)) as usize % 16;
                    match r {
                        0 | 1 => b'/',
                        2 => b'.',
                        3 if i % 7 == 0 => b'\\',
                        _ => b'a',
                    }
                }))
                .collect();
            check(&bytes);
        }
    }

    #[test]
    fn overlong_path_is_rejected() {
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert!(AbsPath::parse(&long).is_err());
    }

    #[test]
    fn covers_matches_whole_components() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("same path", "/app", "/app", true),
            ("child path", "/app", "/app/config.toml", true),
            ("deep child path", "/app", "/app/a/b/c", true),
            (
                "sibling with same prefix is not covered",
                "/app",
                "/application",
                false,
            ),
            (
                "sibling with dash suffix is not covered",
                "/app",
                "/app-data/x",
                false,
            ),
            (
                "parent is not covered by child grant",
                "/app/data",
                "/app",
                false,
            ),
            ("root covers everything", "/", "/etc/passwd", true),
            ("unrelated path", "/app", "/etc/passwd", false),
            (
                "trailing slash in request is normalized",
                "/app",
                "/app/",
                true,
            ),
            (
                "escape through parent is rejected",
                "/app",
                "/app/../etc/passwd",
                false,
            ),
            ("relative request is rejected", "/app", "app/x", false),
            ("doubled slashes still match", "/app", "//app//x", true),
        ];
        for (rule, grant, request, want) in cases {
            let grant = AbsPath::parse(grant).expect("grant parses");
            assert_eq!(
                grant.covers_raw(request),
                *want,
                "{rule}: {grant} vs {request:?}"
            );
            // The string form for compiled tables agrees on every normalized request.
            if is_normalized(request) {
                assert_eq!(
                    covers_normalized(grant.as_str(), request),
                    *want,
                    "{rule}: covers_normalized"
                );
            }
        }
    }
}
