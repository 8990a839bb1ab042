//! Messaging topics and topic patterns, and the names of buckets, components and env keys.
//!
//! Topics are `.`-separated tokens. In a pattern `*` matches exactly one token and `>`, only as
//! the last token, matches one or more tokens (`orders.>` matches `orders.eu` and
//! `orders.eu.new`, not `orders`).

use std::fmt;

use super::CapabilityError;

/// Longest topic or pattern.
pub const MAX_TOPIC_LEN: usize = 253;

/// One token of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Token {
    Literal(String),
    /// `*`
    One,
    /// `>`
    Rest,
}

/// A parsed topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    tokens: Vec<Token>,
}

impl TopicPattern {
    /// Parses a pattern such as `orders.*.created` or `audit.>`.
    pub fn parse(raw: &str) -> Result<Self, CapabilityError> {
        let invalid = |reason: &'static str| CapabilityError::InvalidTopic {
            topic: raw.to_owned(),
            reason,
        };
        if raw.is_empty() || raw.len() > MAX_TOPIC_LEN {
            return Err(invalid("must be 1-253 characters"));
        }
        let parts: Vec<&str> = raw.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => return Err(invalid("'>' may only be the last token")),
                literal => {
                    check_topic_token(literal).map_err(invalid)?;
                    Token::Literal(literal.to_owned())
                }
            };
            tokens.push(token);
        }
        Ok(Self { tokens })
    }

    /// Whether a concrete topic matches. Byte-level, does not allocate: the topic is walked
    /// once, token by token, as `topic.split('.')` would cut it (`rest` is the unsplit
    /// remainder, `None` once the last part is taken).
    pub fn matches(&self, topic: &str) -> bool {
        let mut rest: Option<&[u8]> = Some(topic.as_bytes());
        for token in &self.tokens {
            let Some(r) = rest else {
                return false;
            };
            match token {
                // One or more tokens: the next part exists and is not empty.
                Token::Rest => return r.first().is_some_and(|&b| b != b'.'),
                Token::Literal(lit) => {
                    // Literal tokens hold no `.`, so equality with the part is a prefix test
                    // plus a boundary check.
                    let lit = lit.as_bytes();
                    if r.len() < lit.len() || &r[..lit.len()] != lit {
                        return false;
                    }
                    rest = match r.get(lit.len()) {
                        None => None,
                        Some(b'.') => Some(&r[lit.len() + 1..]),
                        Some(_) => return false,
                    };
                }
                Token::One => match r.iter().position(|&b| b == b'.') {
                    Some(0) => return false,
                    Some(dot) => rest = Some(&r[dot + 1..]),
                    None if r.is_empty() => return false,
                    None => rest = None,
                },
            }
        }
        rest.is_none()
    }

    /// Whether every topic `self` matches is also matched by `outer`.
    pub fn is_within(&self, outer: &TopicPattern) -> bool {
        let mut inner = self.tokens.iter();
        for outer_token in &outer.tokens {
            let Some(inner_token) = inner.next() else {
                return false;
            };
            match (outer_token, inner_token) {
                // `>` covers whatever one-or-more tokens remain, and inner has at least one.
                (Token::Rest, _) => return true,
                (Token::One, Token::Literal(_) | Token::One) => {}
                (Token::Literal(a), Token::Literal(b)) if a == b => {}
                _ => return false,
            }
        }
        inner.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match token {
                Token::Literal(lit) => f.write_str(lit)?,
                Token::One => f.write_str("*")?,
                Token::Rest => f.write_str(">")?,
            }
        }
        Ok(())
    }
}

/// Checks a concrete topic a guest publishes to: tokens only, no wildcards.
pub fn check_topic(topic: &str) -> Result<(), CapabilityError> {
    let invalid = |reason: &'static str| CapabilityError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(invalid("must be 1-253 characters"));
    }
    topic
        .split('.')
        .try_for_each(check_topic_token)
        .map_err(invalid)
}

fn check_topic_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("tokens may not be empty");
    }
    let ok = token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err("tokens use only letters, digits, '-' and '_' ('*' and '>' as whole tokens)")
    }
}

/// Checks a storage bucket name: 1-63 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn check_bucket(bucket: &str) -> Result<(), CapabilityError> {
    check_name(bucket, 63, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_')
    })
    .map_err(|reason| CapabilityError::InvalidBucket {
        bucket: bucket.to_owned(),
        reason,
    })
}

/// Checks the name of a component a guest may send to: a Kubernetes object name (DNS subdomain).
pub fn check_component_name(name: &str) -> Result<(), CapabilityError> {
    check_name(name, 253, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.')
    })
    .and_then(|()| {
        if name.ends_with(['-', '.']) {
            Err("must end with a letter or digit")
        } else {
            Ok(())
        }
    })
    .map_err(|reason| CapabilityError::InvalidComponent {
        component: name.to_owned(),
        reason,
    })
}

/// Checks an environment/config key name: a C identifier, as shells and WASI expect.
pub fn check_env_name(name: &str) -> Result<(), CapabilityError> {
    let starts_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let ok = starts_ok
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CapabilityError::InvalidEnv {
            name: name.to_owned(),
            reason: "must be a letter or '_' followed by letters, digits or '_'",
        })
    }
}

fn check_name(name: &str, max: usize, allowed: impl Fn(u8) -> bool) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > max {
        return Err("has the wrong length");
    }
    if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return Err("must start with a letter or digit");
    }
    if !name.bytes().all(allowed) {
        return Err("contains a character that is not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_parse() {
        let cases: &[(&str, &str, bool)] = &[
            ("literal topic", "orders.created", true),
            ("single-token wildcard", "orders.*.created", true),
            ("tail wildcard", "orders.>", true),
            ("bare tail wildcard", ">", true),
            (
                "tail wildcard in the middle is rejected",
                "orders.>.created",
                false,
            ),
            ("empty token is rejected", "orders..created", false),
            ("leading dot is rejected", ".orders", false),
            ("partial wildcard is rejected", "orders.cre*", false),
            ("space is rejected", "orders created", false),
            ("empty is rejected", "", false),
        ];
        for (rule, raw, ok) in cases {
            assert_eq!(TopicPattern::parse(raw).is_ok(), *ok, "{rule}: {raw:?}");
        }
    }

    #[test]
    fn topic_patterns_match() {
        let cases: &[(&str, &str, &str, bool)] = &[
            (
                "literal matches itself",
                "orders.created",
                "orders.created",
                true,
            ),
            (
                "literal does not match a prefix",
                "orders",
                "orders.created",
                false,
            ),
            (
                "literal does not match longer literal",
                "orders.created",
                "orders",
                false,
            ),
            ("star matches one token", "orders.*", "orders.eu", true),
            (
                "star does not match two tokens",
                "orders.*",
                "orders.eu.new",
                false,
            ),
            (
                "star does not match zero tokens",
                "orders.*",
                "orders",
                false,
            ),
            (
                "star does not match an empty token",
                "orders.*",
                "orders.",
                false,
            ),
            ("tail matches one token", "orders.>", "orders.eu", true),
            (
                "tail matches many tokens",
                "orders.>",
                "orders.eu.new",
                true,
            ),
            (
                "tail does not match zero tokens",
                "orders.>",
                "orders",
                false,
            ),
            (
                "tail does not match lookalike prefix",
                "orders.>",
                "ordersx.eu",
                false,
            ),
            ("star in the middle", "orders.*.new", "orders.eu.new", true),
            (
                "literal with a trailing dot",
                "orders.created",
                "orders.created.",
                false,
            ),
            ("literal with a leading dot", "orders", ".orders", false),
            ("bare tail matches one token", ">", "x", true),
            ("bare tail does not match an empty topic", ">", "", false),
            (
                "tail needs a non-empty next token",
                "orders.>",
                "orders..x",
                false,
            ),
            (
                "star then literal, empty star token",
                "*.health",
                ".health",
                false,
            ),
            (
                "star at the end, trailing dot",
                "orders.*",
                "orders.eu.",
                false,
            ),
            (
                "star in the middle needs the rest",
                "orders.*.new",
                "orders.eu.old",
                false,
            ),
        ];
        for (rule, pattern, topic, want) in cases {
            let pattern = TopicPattern::parse(pattern).expect("pattern parses");
            assert_eq!(
                pattern.matches(topic),
                *want,
                "{rule}: {pattern} vs {topic:?}"
            );
        }
    }

    /// The plain split-based rule the byte-level matcher replaces.
    fn matches_by_split(p: &TopicPattern, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for token in &p.tokens {
            match (token, parts.next()) {
                (Token::Rest, Some(part)) => return !part.is_empty(),
                (Token::One, Some(part)) if !part.is_empty() => {}
                (Token::Literal(lit), Some(part)) if lit == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }

    #[test]
    fn byte_level_matching_agrees_with_the_split_rule() {
        let patterns = [
            "a", "a.b", "a.*", "a.>", "*", ">", "*.b", "a.*.c", "*.*", "a.b.>", "ab", "a.bc",
        ];
        let topics = [
            "", ".", "..", "a", "a.", ".a", "a.b", "a.b.", "a..b", "a.b.c", "a.bc", "ab", "ab.c",
            "b", "x.b", "a.x.c", "a.x.y", "a.b.c.d", "a.bc.d", "a.b.x", "é.b", "a.é",
        ];
        for p in patterns {
            let pattern = TopicPattern::parse(p).expect("pattern parses");
            for t in topics {
                assert_eq!(
                    pattern.matches(t),
                    matches_by_split(&pattern, t),
                    "{p} vs {t:?}"
                );
            }
        }
    }

    #[test]
    fn topic_pattern_containment() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("literal within same literal", "a.b", "a.b", true),
            ("literal within star", "a.b", "a.*", true),
            ("literal within tail", "a.b.c", "a.>", true),
            ("star within star", "a.*", "a.*", true),
            ("star within tail", "a.*", "a.>", true),
            ("tail within tail", "a.b.>", "a.>", true),
            ("tail not within star", "a.>", "a.*", false),
            ("star not within literal", "a.*", "a.b", false),
            ("tail not within longer tail", "a.>", "a.b.>", false),
            ("shorter not within longer", "a", "a.*", false),
            ("longer not within shorter", "a.b.c", "a.*", false),
            ("different literal not within", "a.c", "a.b", false),
            ("everything within bare tail", "x.y.z", ">", true),
        ];
        for (rule, inner, outer, want) in cases {
            let inner = TopicPattern::parse(inner).expect("inner parses");
            let outer = TopicPattern::parse(outer).expect("outer parses");
            assert_eq!(
                inner.is_within(&outer),
                *want,
                "{rule}: {inner} within {outer}"
            );
        }
    }

    #[test]
    fn names() {
        assert!(check_topic("orders.created").is_ok());
        assert!(
            check_topic("orders.*").is_err(),
            "guests publish to concrete topics"
        );
        assert!(check_bucket("counters").is_ok());
        for bad in ["", "Counters", "-x", "a/b", "a.b", &"a".repeat(64)] {
            assert!(check_bucket(bad).is_err(), "bucket {bad:?}");
        }
        assert!(check_component_name("billing").is_ok());
        assert!(check_component_name("billing.v2").is_ok());
        for bad in ["", "Billing", "billing-", "-billing", "a/b", "a_b"] {
            assert!(check_component_name(bad).is_err(), "component {bad:?}");
        }
        assert!(check_env_name("LOG_LEVEL").is_ok());
        assert!(check_env_name("_x1").is_ok());
        for bad in ["", "1X", "A-B", "A B", "A=B"] {
            assert!(check_env_name(bad).is_err(), "env {bad:?}");
        }
    }
}
