//! HTTP components: `WasmComponent.spec.http` ([`HttpSpec`]) and its copy on a Placement
//! ([`PlacementHttp`]), and their resolution to concrete limits ([`HttpLimits`]).
//!
//! A component that exports `wasi:http/incoming-handler` is served by the agents of the nodes
//! it is placed on: the operator gives it a cluster-unique `targetPort`, and every agent
//! running it listens on `<its advertised address>:<targetPort>` (the address is the agent
//! Lease's [`crate::agent::ADDRESS_ANNOTATION`]). A `Service` named after the component
//! forwards its `port` there. Each request runs in a fresh instance from the agent's pool,
//! under the component's `spec.limits` (memory, CPU time per request) and the limits below.

use std::time::Duration;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::limits::{parse_duration, parse_quantity};

const QUANTITY_RULE: &str = "self.matches('^[0-9]+(Ki|Mi|Gi|k|M|G)?$')";
const DURATION_RULE: &str = "self.matches('^([0-9]+(ms|s|m|h))+$')";
/// A path prefix: absolute, no `..`, no whitespace or control characters.
pub const PATH_PREFIX_RULE: &str = "self.startsWith('/') && !self.contains('..') && !self.matches('[\\\\s\\\\x00-\\\\x1f\\\\x7f]')";
const PATH_PREFIX_MESSAGE: &str =
    "pathPrefix must start with '/' and hold no '..', whitespace or control characters (e.g. /api)";
/// A host: a DNS-1123 subdomain, optionally with a leading `*.` wildcard label.
pub const HOST_RULE: &str = "self.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
const HOST_MESSAGE: &str =
    "host must be a lower-case DNS name such as shop.example.com, optionally starting with '*.'";

/// Most requests one component may have in flight on one node (each holds a pooled instance).
pub const MAX_CONCURRENT_REQUESTS: u32 = 1000;
/// Largest request or response body a component may be allowed.
pub const MAX_BODY_BYTES: u64 = 1 << 30;
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// `spec.http`: the component is an HTTP handler (it exports `wasi:http/incoming-handler`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSpec {
    /// The port of the component's Service, the one clients call (default 80).
    #[serde(default = "default_port")]
    #[schemars(with = "i32", range(min = 1, max = 65535))]
    pub port: u16,
    /// Only requests whose path is this prefix or below it (`/api` takes `/api` and
    /// `/api/x`, not `/apix`); others get 404. Default: every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(PATH_PREFIX_RULE).message(PATH_PREFIX_MESSAGE))]
    #[schemars(length(min = 1, max = 1024))]
    pub path_prefix: Option<String>,
    /// Only requests for this host (`Host` header, port ignored); `*.example.com` takes
    /// every name under example.com. Default: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(HOST_RULE).message(HOST_MESSAGE))]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
    /// Requests in flight at once on one node (default 64, at most 1000); more get 503 with
    /// `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i32>", range(min = 1, max = MAX_CONCURRENT_REQUESTS))]
    pub max_concurrent_requests: Option<u32>,
    /// Wall-clock time one request may take, until its response body is written (default
    /// 30s, at most 1h); a request over it gets 504, or its response is cut off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message("requestTimeout must be a duration such as 250ms, 5s or 1m30s"))]
    #[schemars(length(max = 32))]
    pub request_timeout: Option<String>,
    /// Largest request body (default 1Mi, at most 1Gi); a larger one gets 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(QUANTITY_RULE).message("maxRequestBodyBytes must be a whole number of bytes with an optional suffix Ki, Mi, Gi, k, M or G (e.g. 1Mi)"))]
    #[schemars(length(max = 32))]
    pub max_request_body_bytes: Option<String>,
    /// Largest response body (default 16Mi, at most 1Gi); a response growing past it is cut
    /// off (the connection is closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(QUANTITY_RULE).message("maxResponseBodyBytes must be a whole number of bytes with an optional suffix Ki, Mi, Gi, k, M or G (e.g. 16Mi)"))]
    #[schemars(length(max = 32))]
    pub max_response_body_bytes: Option<String>,
}

fn default_port() -> u16 {
    80
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            port: default_port(),
            path_prefix: None,
            host: None,
            max_concurrent_requests: None,
            request_timeout: None,
            max_request_body_bytes: None,
            max_response_body_bytes: None,
        }
    }
}

/// `Placement.spec.http`: the component's [`HttpSpec`] plus the port the operator allocated
/// for it; the agent needs nothing else to serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementHttp {
    /// The port the agent listens on, on its advertised address (unique in the cluster).
    #[schemars(with = "i32", range(min = 1, max = 65535))]
    pub target_port: u16,
    /// The component's `spec.http`, copied.
    pub spec: HttpSpec,
}

impl PlacementHttp {
    /// What the operator writes into a Placement for a component with `spec` served on
    /// `target_port`.
    pub fn new(spec: &HttpSpec, target_port: u16) -> Self {
        Self {
            target_port,
            spec: spec.clone(),
        }
    }
}

/// A `spec.http` field that does not parse or is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http.{field} {value:?} is invalid: {reason}")]
pub struct HttpSpecError {
    pub field: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Concrete per-request limits with defaults applied and bounds checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_concurrent_requests: u32,
    pub request_timeout: Duration,
    pub max_request_body_bytes: u64,
    pub max_response_body_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 64,
            request_timeout: Duration::from_secs(30),
            max_request_body_bytes: 1 << 20,
            max_response_body_bytes: 16 << 20,
        }
    }
}

impl HttpSpec {
    /// Applies defaults and checks bounds (the schema says the same; this is what the
    /// operator and the agent trust).
    pub fn limits(&self) -> Result<HttpLimits, HttpSpecError> {
        let d = HttpLimits::default();
        if self.port == 0 {
            return Err(HttpSpecError {
                field: "port",
                value: "0".into(),
                reason: "must be between 1 and 65535",
            });
        }
        let max_concurrent_requests = match self.max_concurrent_requests {
            None => d.max_concurrent_requests,
            Some(n) if (1..=MAX_CONCURRENT_REQUESTS).contains(&n) => n,
            Some(n) => {
                return Err(HttpSpecError {
                    field: "maxConcurrentRequests",
                    value: n.to_string(),
                    reason: "must be between 1 and 1000",
                });
            }
        };
        let request_timeout = match self.request_timeout.as_deref() {
            None => d.request_timeout,
            Some(raw) => {
                let err = |reason| HttpSpecError {
                    field: "requestTimeout",
                    value: raw.to_owned(),
                    reason,
                };
                match parse_duration(raw) {
                    None => return Err(err("expected a duration such as 250ms, 5s or 1m30s")),
                    Some(t) if t.is_zero() => return Err(err("must be greater than zero")),
                    Some(t) if t > MAX_REQUEST_TIMEOUT => {
                        return Err(err("is above the maximum of 1h"));
                    }
                    Some(t) => t,
                }
            }
        };
        Ok(HttpLimits {
            max_concurrent_requests,
            request_timeout,
            max_request_body_bytes: body(
                "maxRequestBodyBytes",
                self.max_request_body_bytes.as_deref(),
                d.max_request_body_bytes,
            )?,
            max_response_body_bytes: body(
                "maxResponseBodyBytes",
                self.max_response_body_bytes.as_deref(),
                d.max_response_body_bytes,
            )?,
        })
    }

    /// Whether a request for `host` (the `Host` header or URI authority, port allowed) and
    /// `path` is this component's. Host names compare case-insensitively; a wildcard takes
    /// names below its suffix, not the suffix itself. A path matches the prefix on segment
    /// boundaries.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        self.host_matches(host) && self.path_matches(path)
    }

    fn host_matches(&self, host: Option<&str>) -> bool {
        let Some(want) = self.host.as_deref() else {
            return true;
        };
        let Some(host) = host else { return false };
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        match want.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .and_then(|label| label.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            None => name == want,
        }
    }

    fn path_matches(&self, path: &str) -> bool {
        let Some(prefix) = self.path_prefix.as_deref() else {
            return true;
        };
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return true;
        }
        match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
            None => false,
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: `[::1]:8080`.
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

fn body(field: &'static str, raw: Option<&str>, default: u64) -> Result<u64, HttpSpecError> {
    let Some(raw) = raw else { return Ok(default) };
    let err = |reason| HttpSpecError {
        field,
        value: raw.to_owned(),
        reason,
    };
    match parse_quantity(raw) {
        None => Err(err(
            "expected a whole number with an optional suffix Ki, Mi, Gi, k, M or G",
        )),
        Some(0) => Err(err("must be greater than zero")),
        Some(n) if n > MAX_BODY_BYTES => Err(err("is above the maximum of 1Gi")),
        Some(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn route(host: Option<&str>, prefix: Option<&str>) -> HttpSpec {
        HttpSpec {
            host: host.map(str::to_owned),
            path_prefix: prefix.map(str::to_owned),
            ..HttpSpec::default()
        }
    }

    #[test]
    fn routing_rules() {
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            bool,
        );
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // rule, route host, route prefix, request host, request path, matches
            ("no route takes everything", None, None, None, "/x", true),
            ("exact host", Some("shop.example.com"), None, Some("shop.example.com"), "/", true),
            ("host ignores the port", Some("shop.example.com"), None, Some("shop.example.com:8080"), "/", true),
            ("host is case-insensitive", Some("shop.example.com"), None, Some("Shop.Example.COM"), "/", true),
            ("another host is not taken", Some("shop.example.com"), None, Some("evil.example.com"), "/", false),
            ("a host route needs a host", Some("shop.example.com"), None, None, "/", false),
            ("wildcard takes a subdomain", Some("*.example.com"), None, Some("a.example.com"), "/", true),
            ("wildcard takes deeper names", Some("*.example.com"), None, Some("a.b.example.com"), "/", true),
            ("wildcard does not take its suffix", Some("*.example.com"), None, Some("example.com"), "/", false),
            ("wildcard needs a label boundary", Some("*.example.com"), None, Some("badexample.com"), "/", false),
            ("prefix itself", None, Some("/api"), None, "/api", true),
            ("below the prefix", None, Some("/api"), None, "/api/users", true),
            ("prefix with a query", None, Some("/api"), None, "/api?x=1", true),
            ("prefix on segment boundaries", None, Some("/api"), None, "/apix", false),
            ("prefix with a trailing slash", None, Some("/api/"), None, "/api/v1", true),
            ("outside the prefix", None, Some("/api"), None, "/", false),
            ("root prefix takes all", None, Some("/"), None, "/anything", true),
            ("host and prefix both needed", Some("a.example.com"), Some("/api"), Some("a.example.com"), "/other", false),
        ];
        for (rule, host, prefix, req_host, path, want) in rows {
            assert_eq!(
                route(*host, *prefix).matches(*req_host, path),
                *want,
                "{rule}"
            );
        }
    }

    #[test]
    fn limits_apply_defaults_and_bounds() {
        assert_eq!(HttpSpec::default().limits(), Ok(HttpLimits::default()));
        let set = HttpSpec {
            max_concurrent_requests: Some(8),
            request_timeout: Some("2s".into()),
            max_request_body_bytes: Some("4Ki".into()),
            max_response_body_bytes: Some("1Mi".into()),
            ..HttpSpec::default()
        };
        assert_eq!(
            set.limits(),
            Ok(HttpLimits {
                max_concurrent_requests: 8,
                request_timeout: Duration::from_secs(2),
                max_request_body_bytes: 4 << 10,
                max_response_body_bytes: 1 << 20,
            })
        );
        let bad: &[(HttpSpec, &str)] = &[
            (
                HttpSpec {
                    max_concurrent_requests: Some(0),
                    ..HttpSpec::default()
                },
                "maxConcurrentRequests",
            ),
            (
                HttpSpec {
                    max_concurrent_requests: Some(1001),
                    ..HttpSpec::default()
                },
                "maxConcurrentRequests",
            ),
            (
                HttpSpec {
                    request_timeout: Some("0s".into()),
                    ..HttpSpec::default()
                },
                "requestTimeout",
            ),
            (
                HttpSpec {
                    request_timeout: Some("2h".into()),
                    ..HttpSpec::default()
                },
                "requestTimeout",
            ),
            (
                HttpSpec {
                    max_request_body_bytes: Some("2Gi".into()),
                    ..HttpSpec::default()
                },
                "maxRequestBodyBytes",
            ),
            (
                HttpSpec {
                    max_response_body_bytes: Some("lots".into()),
                    ..HttpSpec::default()
                },
                "maxResponseBodyBytes",
            ),
        ];
        for (route, field) in bad {
            assert_eq!(route.limits().expect_err(field).field, *field);
        }
    }

    #[test]
    fn spec_defaults_and_placement_copy() {
        let spec: HttpSpec = serde_json::from_value(serde_json::json!({
            "pathPrefix": "/api", "maxConcurrentRequests": 4
        }))
        .unwrap();
        assert_eq!(spec.port, 80, "default Service port");
        let placed = PlacementHttp::new(&spec, 31000);
        assert_eq!(placed.target_port, 31000);
        assert_eq!(placed.spec, spec);
        let json = serde_json::to_value(&placed).unwrap();
        assert_eq!(json["targetPort"], 31000);
        assert_eq!(json["spec"]["pathPrefix"], "/api");
        assert_eq!(
            serde_json::from_value::<PlacementHttp>(json).unwrap(),
            placed
        );
        assert!(
            serde_json::from_value::<HttpSpec>(serde_json::json!({"port": 0})).is_ok(),
            "0 is caught by the schema's range, not by serde"
        );
        assert!(
            serde_json::from_value::<HttpSpec>(serde_json::json!({"port": 70000})).is_err(),
            "not a u16"
        );
    }
}
