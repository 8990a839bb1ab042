//! Why a connection to a registry or an HTTPS server failed, in words: the root cause found in
//! the error chain (refused, DNS, timeout, reset, certificate, not TLS) and what to do about
//! it. Client libraries put the cause several sources deep behind a generic "error sending
//! request"; a person reading a condition needs the cause. Pure: reads errors, does no I/O.

use std::error::Error as StdError;
use std::fmt;
use std::io::ErrorKind;

/// The root cause of a failed connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkCause {
    /// Nothing accepts connections at the address.
    Refused,
    /// The host name does not resolve; the resolver's words.
    Dns(String),
    /// No route to the host or its network.
    Unreachable,
    /// Connecting or waiting for an answer took too long.
    Timeout,
    /// The connection was reset or closed before the answer was complete.
    Reset,
    /// The server's certificate is not accepted; why, in words.
    Certificate(String),
    /// The server at this address does not speak TLS (a plain-HTTP server).
    NotTls,
    /// Another TLS failure; rustls's words.
    Tls(String),
    /// Something else; the innermost error's words.
    Other(String),
}

impl NetworkCause {
    /// Finds the root cause behind `err`, looking through every source (and through
    /// `io::Error`s, whose `source()` skips the error they wrap).
    pub fn of(err: &(dyn StdError + 'static)) -> Self {
        let chain = chain(err);
        for e in &chain {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Self::from_tls(tls);
            }
        }
        for e in &chain {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    ErrorKind::ConnectionRefused => return Self::Refused,
                    ErrorKind::TimedOut => return Self::Timeout,
                    ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof => return Self::Reset,
                    ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                        return Self::Unreachable;
                    }
                    _ => {}
                }
            }
            if let Some(hyper) = e.downcast_ref::<hyper::Error>()
                && (hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled())
            {
                return Self::Reset;
            }
            if let Some(reqwest) = e.downcast_ref::<reqwest::Error>()
                && reqwest.is_timeout()
            {
                return Self::Timeout;
            }
        }
        // hyper-util names a failed lookup "dns error" (its error type is private); the
        // resolver's own words are the innermost source.
        if chain.iter().any(|e| e.to_string() == "dns error") {
            let detail = chain
                .last()
                .map(ToString::to_string)
                .filter(|d| d != "dns error")
                .unwrap_or_default();
            return Self::Dns(detail);
        }
        // reqwest's timer error (private type) is only recognizable by its words.
        if chain.iter().any(|e| e.to_string() == "operation timed out") {
            return Self::Timeout;
        }
        let innermost = chain.last().map(ToString::to_string).unwrap_or_default();
        Self::Other(innermost)
    }

    fn from_tls(e: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidMessage(_) => Self::NotTls,
            rustls::Error::InvalidCertificate(cert) => Self::Certificate(match cert {
                C::UnknownIssuer => {
                    "not issued by a certificate authority the operator trusts".to_owned()
                }
                C::Expired | C::ExpiredContext { .. } => "expired".to_owned(),
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "not valid yet (check the clocks)".to_owned()
                }
                C::NotValidForName => "not valid for this host name".to_owned(),
                C::NotValidForNameContext { .. } => cert.to_string(),
                C::Revoked => "revoked".to_owned(),
                C::BadSignature => "its signature does not verify".to_owned(),
                other => other.to_string(),
            }),
            other => Self::Tls(other.to_string()),
        }
    }

    /// What to do about it, for `host` (`host[:port]`); empty when nothing specific helps.
    /// The caller says that it retries.
    pub fn advice(&self, host: &str) -> String {
        match self {
            Self::Refused => {
                format!("check that the server runs and that {host} is its host and port")
            }
            Self::Dns(_) => {
                format!("check the spelling of {host} and that the operator's DNS resolves it")
            }
            Self::Unreachable => format!("check the network path from the operator to {host}"),
            Self::Timeout => format!(
                "{host} is slow, or a firewall drops the traffic: check that the operator may reach it"
            ),
            Self::Reset => format!("{host}, or a proxy in between, dropped the connection"),
            Self::Certificate(_) => format!(
                "give {host} a certificate for its name from a certificate authority the operator trusts, or add that authority to the operator's trusted CAs (system store or SSL_CERT_FILE)"
            ),
            Self::NotTls => format!(
                "for a development registry on loopback, set insecure: true and start the operator with --insecure-registry {host}"
            ),
            Self::Tls(_) => format!("check the TLS setup of {host}"),
            Self::Other(_) => String::new(),
        }
    }
}

impl fmt::Display for NetworkCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused => f.write_str("connection refused"),
            Self::Dns(detail) if detail.is_empty() => f.write_str("the host name does not resolve"),
            Self::Dns(detail) => write!(f, "the host name does not resolve ({detail})"),
            Self::Unreachable => f.write_str("no route to the host"),
            Self::Timeout => f.write_str("timed out"),
            Self::Reset => f.write_str("the connection was closed before the answer was complete"),
            Self::Certificate(why) => write!(f, "the TLS certificate is refused ({why})"),
            Self::NotTls => f.write_str("the server answers plain HTTP, not TLS"),
            Self::Tls(detail) => write!(f, "TLS failed: {detail}"),
            Self::Other(detail) => f.write_str(detail),
        }
    }
}

/// `err` and its sources, innermost last; an `io::Error` is followed by the error it wraps.
fn chain<'e>(err: &'e (dyn StdError + 'static)) -> Vec<&'e (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        out.push(e);
        // Bounded: a cycle in a hand-written source() must not hang the controller.
        if out.len() > 32 {
            break;
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    out
}

/// One line about a failed request to `host`: the cause, then what to do.
pub fn explain(err: &(dyn StdError + 'static), host: &str) -> String {
    let cause = NetworkCause::of(err);
    let advice = cause.advice(host);
    if advice.is_empty() {
        cause.to_string()
    } else {
        format!("{cause}; {advice}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `inner` as a client library hands it over: inside an `io::Error` inside another error.
    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("error sending request")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    fn wrapped(inner: impl Into<Box<dyn StdError + Send + Sync>>) -> Wrapper {
        Wrapper(std::io::Error::other(inner))
    }

    #[test]
    fn causes_spec() {
        use rustls::CertificateError as C;
        let tls = |e: rustls::Error| wrapped(e);
        // (rule, error, cause)
        let cases: Vec<(&str, Wrapper, NetworkCause)> = vec![
            (
                "refused, found through the wrapping",
                Wrapper(std::io::ErrorKind::ConnectionRefused.into()),
                NetworkCause::Refused,
            ),
            (
                "an expired certificate",
                tls(rustls::Error::InvalidCertificate(C::Expired)),
                NetworkCause::Certificate("expired".into()),
            ),
            (
                "a certificate for another name",
                tls(rustls::Error::InvalidCertificate(C::NotValidForName)),
                NetworkCause::Certificate("not valid for this host name".into()),
            ),
            (
                "a plain-HTTP answer to a TLS hello",
                tls(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                NetworkCause::NotTls,
            ),
            (
                "a TLS alert",
                tls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::HandshakeFailure,
                )),
                NetworkCause::Tls("received fatal alert: HandshakeFailure".into()),
            ),
            (
                "anything else: the innermost words, not the wrapper's",
                wrapped("the proxy said no"),
                NetworkCause::Other("the proxy said no".into()),
            ),
        ];
        for (rule, err, want) in cases {
            assert_eq!(NetworkCause::of(&err), want, "{rule}");
            let line = explain(&err, "r.io");
            assert!(!line.contains("error sending request"), "{rule}: {line}");
        }
    }
}
