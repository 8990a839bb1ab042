//! Registry credentials from `kubernetes.io/dockerconfigjson` Secrets (`pullSecrets`), parsed
//! from the Secret's `.dockerconfigjson` bytes. The caller reads the Secrets.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

/// The key of a `kubernetes.io/dockerconfigjson` Secret holding the config.
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never log the password.
        write!(f, "RegistryCredentials({:?}, <redacted>)", self.username)
    }
}

/// A pull secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "pull secret {secret} is not a docker config ({reason}); it must be a kubernetes.io/dockerconfigjson Secret, e.g. made with kubectl create secret docker-registry"
    )]
    Json { secret: String, reason: String },
    #[error(
        "pull secret {secret}, entry {registry}: {reason}; make it again, e.g. with kubectl create secret docker-registry"
    )]
    Entry {
        secret: String,
        registry: String,
        reason: &'static str,
    },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Finds credentials for `registry` (`host[:port]`) in the given Secrets' `.dockerconfigjson`
/// bytes, first Secret first, as the kubelet does. `None` means pull anonymously.
pub fn credentials_for(
    secrets: &[(&str, &[u8])],
    registry: &str,
) -> Result<Option<RegistryCredentials>, CredentialsError> {
    for (secret, bytes) in secrets {
        let config: DockerConfig =
            serde_json::from_slice(bytes).map_err(|e| CredentialsError::Json {
                secret: (*secret).to_owned(),
                reason: e.to_string(),
            })?;
        let Some((key, entry)) = config
            .auths
            .iter()
            .find(|(key, _)| host_of(key).eq_ignore_ascii_case(registry))
        else {
            continue;
        };
        let err = |reason| CredentialsError::Entry {
            secret: (*secret).to_owned(),
            registry: key.clone(),
            reason,
        };
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Some(RegistryCredentials {
                username: username.clone(),
                password: password.clone(),
            }));
        }
        let auth = entry
            .auth
            .as_deref()
            .ok_or_else(|| err("needs auth or username and password"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| err("auth is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| err("auth is not UTF-8"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| err("auth is not user:password"))?;
        return Ok(Some(RegistryCredentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    Ok(None)
}

/// The `host[:port]` of a docker config key, which may be a bare host or a URL
/// (`https://index.docker.io/v1/`).
fn host_of(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn lookup_spec() {
        let team = format!(
            r#"{{"auths":{{"registry.example.com":{{"auth":"{}"}}}}}}"#,
            b64("robot:s3cret")
        );
        let url_key = format!(
            r#"{{"auths":{{"https://localhost:5000/v1/":{{"auth":"{}"}}}}}}"#,
            b64("u:p:with:colons")
        );
        let fields = r#"{"auths":{"ghcr.io":{"username":"bot","password":"tok"}}}"#;
        let secrets: Vec<(&str, &[u8])> = vec![
            ("team", team.as_bytes()),
            ("url", url_key.as_bytes()),
            ("fields", fields.as_bytes()),
        ];
        let creds = |u: &str, p: &str| {
            Some(RegistryCredentials {
                username: u.into(),
                password: p.into(),
            })
        };
        let cases = [
            (
                "auth field",
                "registry.example.com",
                creds("robot", "s3cret"),
            ),
            (
                "host is case-insensitive",
                "Registry.Example.com",
                creds("robot", "s3cret"),
            ),
            (
                "url key with port, password keeps colons",
                "localhost:5000",
                creds("u", "p:with:colons"),
            ),
            (
                "username and password fields",
                "ghcr.io",
                creds("bot", "tok"),
            ),
            ("no entry pulls anonymously", "quay.io", None),
            ("port must match", "localhost:5001", None),
        ];
        for (rule, registry, want) in cases {
            assert_eq!(credentials_for(&secrets, registry).unwrap(), want, "{rule}");
        }
    }

    #[test]
    fn first_secret_wins() {
        let a = format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("a:1"));
        let b = format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("b:2"));
        let got = credentials_for(&[("a", a.as_bytes()), ("b", b.as_bytes())], "r.io")
            .unwrap()
            .unwrap();
        assert_eq!(got.username, "a");
    }

    #[test]
    fn broken_secrets_say_which() {
        let cases: Vec<(&str, String, &str)> = vec![
            ("not json", "nope".into(), "not a docker config"),
            (
                "auth not base64",
                r#"{"auths":{"r.io":{"auth":"%%%"}}}"#.into(),
                "not base64",
            ),
            (
                "auth without colon",
                format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("justuser")),
                "user:password",
            ),
            (
                "empty entry",
                r#"{"auths":{"r.io":{}}}"#.into(),
                "needs auth",
            ),
        ];
        for (rule, json, want) in cases {
            let err = credentials_for(&[("pull", json.as_bytes())], "r.io")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want) && err.contains("pull"), "{rule}: {err}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = RegistryCredentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
