//! Resource limits of one component instance, and their resolution to concrete numbers.

use std::time::Duration;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

const QUANTITY_RULE: &str = "self.matches('^[0-9]+(Ki|Mi|Gi|k|M|G)?$')";
const DURATION_RULE: &str = "self.matches('^([0-9]+(ms|s|m|h))+$')";

/// Per-instance limits as written in `spec.limits`. Every field is optional; see
/// [`ResolvedLimits`] for the defaults and bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Linear memory plus tables of one instance (default 64Mi, at most 4Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(QUANTITY_RULE).message("memory must be a whole number of bytes with an optional suffix Ki, Mi, Gi, k, M or G (e.g. 64Mi)"))]
    #[schemars(length(max = 32))]
    pub memory: Option<String>,
    /// Wasm fuel per message; unset means CPU time alone bounds a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub fuel_per_message: Option<i64>,
    /// CPU time one message may use before the instance is interrupted (default 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message("cpuTimePerMessage must be a duration such as 250ms, 5s or 1m30s"))]
    #[schemars(length(max = 32))]
    pub cpu_time_per_message: Option<String>,
    /// Wall-clock time one message may take, host calls included (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message("timeout must be a duration such as 250ms, 5s or 1m30s"))]
    #[schemars(length(max = 32))]
    pub timeout: Option<String>,
    /// Messages the component handles at once on a node (default 1, at most 64): the agent
    /// runs up to this many instances of it, each handling one message at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_messages: Option<i32>,
    /// Messages waiting in the mailbox before senders get back-pressure (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub mailbox_size: Option<i32>,
    /// Bytes the component may keep in the node's key-value store (default 10Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(QUANTITY_RULE).message("storage must be a whole number of bytes with an optional suffix Ki, Mi, Gi, k, M or G (e.g. 64Mi)"))]
    #[schemars(length(max = 32))]
    pub storage: Option<String>,
    /// Messages per second the component may send (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub message_rate: Option<i32>,
    /// Largest message the component may send or receive (default 1Mi, at most 64Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(QUANTITY_RULE).message("maxMessageSize must be a whole number of bytes with an optional suffix Ki, Mi, Gi, k, M or G (e.g. 64Mi)"))]
    #[schemars(length(max = 32))]
    pub max_message_size: Option<String>,
}

/// Concrete limits with defaults applied and bounds checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedLimits {
    pub memory_bytes: u64,
    pub fuel_per_message: Option<u64>,
    pub cpu_time_per_message: Duration,
    pub timeout: Duration,
    pub max_concurrent_messages: u32,
    pub mailbox_capacity: u32,
    pub storage_bytes: u64,
    pub messages_per_second: u32,
    pub max_message_bytes: u32,
}

impl Default for ResolvedLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            fuel_per_message: None,
            cpu_time_per_message: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            max_concurrent_messages: 1,
            mailbox_capacity: 64,
            storage_bytes: 10 << 20,
            messages_per_second: 1000,
            max_message_bytes: 1 << 20,
        }
    }
}

/// A limit that does not parse or is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{field} {value:?} is invalid: {reason}")]
pub struct LimitsError {
    pub field: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// wasm32 cannot address more than 4 GiB.
const MAX_MEMORY: u64 = 4 << 30;
/// Instances of one component a node runs at once; each takes a slot of the node's instance
/// pool, so one component must not be able to take them all. The schema's bound says the same.
pub const MAX_CONCURRENT_MESSAGES: u32 = 64;
const MAX_STORAGE: u64 = 1 << 40;
const MAX_MESSAGE: u64 = 64 << 20;
const MAX_DURATION: Duration = Duration::from_secs(3600);

impl Limits {
    /// Applies defaults and checks bounds.
    pub fn resolve(&self) -> Result<ResolvedLimits, LimitsError> {
        let d = ResolvedLimits::default();
        let count = |field, value: Option<i32>, default: u32| match value {
            None => Ok(default),
            Some(v) => u32::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or(LimitsError {
                    field,
                    value: v.to_string(),
                    reason: "must be at least 1",
                }),
        };
        let fuel = match self.fuel_per_message {
            None => None,
            Some(f) => Some(
                u64::try_from(f)
                    .ok()
                    .filter(|f| *f >= 1)
                    .ok_or(LimitsError {
                        field: "fuelPerMessage",
                        value: f.to_string(),
                        reason: "must be at least 1",
                    })?,
            ),
        };
        let max_message = bytes(
            "maxMessageSize",
            self.max_message_size.as_deref(),
            d.max_message_bytes.into(),
            MAX_MESSAGE,
        )?;
        Ok(ResolvedLimits {
            memory_bytes: bytes("memory", self.memory.as_deref(), d.memory_bytes, MAX_MEMORY)?,
            fuel_per_message: fuel,
            cpu_time_per_message: duration(
                "cpuTimePerMessage",
                self.cpu_time_per_message.as_deref(),
                d.cpu_time_per_message,
            )?,
            timeout: duration("timeout", self.timeout.as_deref(), d.timeout)?,
            max_concurrent_messages: match count(
                "maxConcurrentMessages",
                self.max_concurrent_messages,
                d.max_concurrent_messages,
            )? {
                n if n > MAX_CONCURRENT_MESSAGES => {
                    return Err(LimitsError {
                        field: "maxConcurrentMessages",
                        value: n.to_string(),
                        reason: "must be at most 64",
                    });
                }
                n => n,
            },
            mailbox_capacity: count("mailboxSize", self.mailbox_size, d.mailbox_capacity)?,
            storage_bytes: bytes(
                "storage",
                self.storage.as_deref(),
                d.storage_bytes,
                MAX_STORAGE,
            )?,
            messages_per_second: count("messageRate", self.message_rate, d.messages_per_second)?,
            max_message_bytes: u32::try_from(max_message).unwrap_or(u32::MAX),
        })
    }
}

fn bytes(
    field: &'static str,
    raw: Option<&str>,
    default: u64,
    max: u64,
) -> Result<u64, LimitsError> {
    let Some(raw) = raw else { return Ok(default) };
    let err = |reason| LimitsError {
        field,
        value: raw.to_owned(),
        reason,
    };
    let value = parse_quantity(raw).ok_or_else(|| {
        err("expected a whole number with an optional suffix Ki, Mi, Gi, k, M or G")
    })?;
    if value == 0 {
        return Err(err("must be greater than zero"));
    }
    if value > max {
        return Err(err("is above the maximum allowed"));
    }
    Ok(value)
}

fn duration(
    field: &'static str,
    raw: Option<&str>,
    default: Duration,
) -> Result<Duration, LimitsError> {
    let Some(raw) = raw else { return Ok(default) };
    let err = |reason| LimitsError {
        field,
        value: raw.to_owned(),
        reason,
    };
    let value =
        parse_duration(raw).ok_or_else(|| err("expected a duration such as 250ms, 5s or 1m30s"))?;
    if value.is_zero() {
        return Err(err("must be greater than zero"));
    }
    if value > MAX_DURATION {
        return Err(err("is above the maximum of 1h"));
    }
    Ok(value)
}

/// Parses `64Mi`, `1G`, `512`. Kubernetes quantities, restricted to whole bytes.
pub fn parse_quantity(raw: &str) -> Option<u64> {
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, suffix) = raw.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(multiplier)
}

/// Parses Go-style durations restricted to `h`, `m`, `s`, `ms` (`1m30s`, `250ms`).
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = raw;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit())?;
        let (digits, tail) = rest.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = next;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let cases: &[(&str, Option<u64>)] = &[
            ("512", Some(512)),
            ("64Mi", Some(64 << 20)),
            ("1Gi", Some(1 << 30)),
            ("2k", Some(2000)),
            ("3M", Some(3_000_000)),
            ("", None),
            ("Mi", None),
            ("1.5Gi", None),
            ("-1", None),
            ("10Ti", None),
            ("99999999999999999999Gi", None),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_quantity(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("250ms", Some(Duration::from_millis(250))),
            ("5s", Some(Duration::from_secs(5))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("2h", Some(Duration::from_secs(7200))),
            ("", None),
            ("5", None),
            ("s", None),
            ("5x", None),
            ("1.5s", None),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_duration(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn resolve_applies_defaults_and_bounds() {
        assert_eq!(Limits::default().resolve(), Ok(ResolvedLimits::default()));
        let limits = Limits {
            memory: Some("16Mi".into()),
            fuel_per_message: Some(1_000_000),
            timeout: Some("1s".into()),
            mailbox_size: Some(8),
            ..Limits::default()
        };
        let r = limits.resolve().expect("valid limits");
        assert_eq!(r.memory_bytes, 16 << 20);
        assert_eq!(r.fuel_per_message, Some(1_000_000));
        assert_eq!(r.timeout, Duration::from_secs(1));
        assert_eq!(r.mailbox_capacity, 8);
        assert_eq!(r.max_concurrent_messages, 1, "default kept");
        let most = Limits {
            max_concurrent_messages: Some(64),
            ..Limits::default()
        };
        assert_eq!(
            most.resolve()
                .expect("64 is allowed")
                .max_concurrent_messages,
            MAX_CONCURRENT_MESSAGES
        );

        let bad: &[(Limits, &str)] = &[
            (
                Limits {
                    memory: Some("8Gi".into()),
                    ..Limits::default()
                },
                "memory",
            ),
            (
                Limits {
                    memory: Some("0".into()),
                    ..Limits::default()
                },
                "memory",
            ),
            (
                Limits {
                    timeout: Some("2h".into()),
                    ..Limits::default()
                },
                "timeout",
            ),
            (
                Limits {
                    mailbox_size: Some(0),
                    ..Limits::default()
                },
                "mailboxSize",
            ),
            (
                Limits {
                    max_concurrent_messages: Some(65),
                    ..Limits::default()
                },
                "maxConcurrentMessages",
            ),
            (
                Limits {
                    max_concurrent_messages: Some(0),
                    ..Limits::default()
                },
                "maxConcurrentMessages",
            ),
            (
                Limits {
                    fuel_per_message: Some(-5),
                    ..Limits::default()
                },
                "fuelPerMessage",
            ),
            (
                Limits {
                    max_message_size: Some("1Gi".into()),
                    ..Limits::default()
                },
                "maxMessageSize",
            ),
        ];
        for (limits, field) in bad {
            let err = limits.resolve().expect_err("out of bounds");
            assert_eq!(err.field, *field, "{err}");
        }
    }
}
