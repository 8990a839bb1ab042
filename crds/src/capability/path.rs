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
        covers_str(&self.0, &other.0)
    }

    /// Like [`AbsPath::covers`] on a raw, not yet normalized path. Fails closed: anything that
    /// does not parse (relative, `..`, NUL) is not covered.
    pub fn covers_raw(&self, raw: &str) -> bool {
        match AbsPath::parse(raw) {
            Ok(path) => self.covers(&path),
            Err(_) => false,
        }
    }
}

/// Component-wise prefix test on two normalized paths.
fn covers_str(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
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
        }
    }
}
