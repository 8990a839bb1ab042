//! Cosign public keys and trust-root certificate authorities, parsed once when a
//! `TrustSource` is indexed so a bad key is reported as `Accepted=False`, not discovered
//! while verifying a component.

use std::fmt;

use ring::signature::{self, UnparsedPublicKey};
use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

/// A key or certificate that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{what} is not PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{what} is a PEM {found:?} block, expected {expected:?}")]
    Label {
        what: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("{what} holds {count} PEM blocks, expected exactly one")]
    Count { what: &'static str, count: usize },
    #[error("public key does not parse: {0}")]
    Spki(String),
    #[error("unsupported key algorithm {0}: use ECDSA P-256 or Ed25519")]
    Algorithm(String),
    #[error("malformed {algorithm} public key: {reason}")]
    Malformed {
        algorithm: KeyAlgorithm,
        reason: &'static str,
    },
    #[error("certificate does not parse: {0}")]
    Certificate(String),
    #[error(
        "certificate {subject:?} is not a certificate authority (basicConstraints CA:TRUE missing)"
    )]
    NotCa { subject: String },
}

/// Signature algorithms a cosign key or a signing certificate may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 over SHA-256 (what `cosign generate-key-pair` makes).
    EcdsaP256,
    /// ECDSA on P-384 over SHA-384 (Fulcio-style CAs; accepted for certificates only).
    EcdsaP384,
    /// Ed25519 over the raw payload.
    Ed25519,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256 => "ECDSA P-256",
            Self::EcdsaP384 => "ECDSA P-384",
            Self::Ed25519 => "Ed25519",
        })
    }
}

/// A public key that can verify cosign signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    /// The raw key: an uncompressed EC point or 32 Ed25519 bytes.
    key: Vec<u8>,
    /// `sha256:<hex>` of the DER SubjectPublicKeyInfo; how signatures name the key they matched.
    fingerprint: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm, self.fingerprint)
    }
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` block holding an ECDSA P-256 or Ed25519 key (cosign's keys).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let block = single_pem("publicKey", pem, "PUBLIC KEY")?;
        let key = Self::from_spki_der(&block.contents)?;
        if key.algorithm == KeyAlgorithm::EcdsaP384 {
            return Err(KeyError::Algorithm("ECDSA P-384".to_owned()));
        }
        Ok(key)
    }

    /// Parses a DER SubjectPublicKeyInfo (P-256, P-384 or Ed25519).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| KeyError::Spki(e.to_string()))?;
        if !rest.is_empty() {
            return Err(KeyError::Spki("trailing bytes after the key".to_owned()));
        }
        Self::from_spki(&spki)
    }

    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, KeyError> {
        let oid = spki.algorithm.algorithm.to_id_string();
        let key = spki.subject_public_key.data.to_vec();
        let algorithm = match oid.as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    OID_P256 => KeyAlgorithm::EcdsaP256,
                    OID_P384 => KeyAlgorithm::EcdsaP384,
                    other => return Err(KeyError::Algorithm(format!("ECDSA on curve {other:?}"))),
                }
            }
            OID_ED25519 => KeyAlgorithm::Ed25519,
            other => return Err(KeyError::Algorithm(other.to_owned())),
        };
        let (len, reason) = match algorithm {
            KeyAlgorithm::EcdsaP256 => (65, "expected an uncompressed 65-byte point"),
            KeyAlgorithm::EcdsaP384 => (97, "expected an uncompressed 97-byte point"),
            KeyAlgorithm::Ed25519 => (32, "expected 32 bytes"),
        };
        let uncompressed = algorithm == KeyAlgorithm::Ed25519 || key.first() == Some(&4);
        if key.len() != len || !uncompressed {
            return Err(KeyError::Malformed { algorithm, reason });
        }
        Ok(Self {
            algorithm,
            key,
            fingerprint: sha256_hex(spki.raw),
        })
    }

    /// Whether `signature` is this key's signature over exactly `message`. ECDSA signatures are
    /// ASN.1 DER over the SHA-256 (P-256) or SHA-384 (P-384) of the message, as cosign makes
    /// them; Ed25519 signs the message itself.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.algorithm {
            KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
            KeyAlgorithm::Ed25519 => &signature::ED25519,
        };
        UnparsedPublicKey::new(alg, &self.key)
            .verify(message, signature)
            .is_ok()
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// `sha256:<hex>` of the DER SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// A certificate authority keyless signatures must chain to.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertificate {
    der: Vec<u8>,
    fingerprint: String,
    subject: String,
}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCertificate({:?} {})", self.subject, self.fingerprint)
    }
}

impl CaCertificate {
    /// Parses one PEM `CERTIFICATE` that must be a CA with a key we can verify with.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let block = single_pem("certificate", pem, "CERTIFICATE")?;
        Self::from_der(block.contents)
    }

    pub fn from_der(der: Vec<u8>) -> Result<Self, KeyError> {
        let (subject, fingerprint) = {
            let cert = parse_certificate(&der)?;
            let subject = cert.subject().to_string();
            if !cert.is_ca() {
                return Err(KeyError::NotCa { subject });
            }
            PublicKey::from_spki(cert.public_key())?;
            (subject, sha256_hex(&der))
        };
        Ok(Self {
            der,
            fingerprint,
            subject,
        })
    }

    /// The parsed certificate (zero-copy over the stored DER).
    pub fn certificate(&self) -> Result<X509Certificate<'_>, KeyError> {
        parse_certificate(&self.der)
    }

    /// `sha256:<hex>` of the DER certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Parses a DER certificate with nothing after it.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, KeyError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| KeyError::Certificate(e.to_string()))?;
    if rest.is_empty() {
        Ok(cert)
    } else {
        Err(KeyError::Certificate(
            "trailing bytes after the certificate".to_owned(),
        ))
    }
}

/// Every PEM block in `pem` with the given label (a certificate chain).
pub(crate) fn pem_blocks(
    what: &'static str,
    pem: &str,
    label: &'static str,
) -> Result<Vec<Vec<u8>>, KeyError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.trim().as_bytes()) {
        let block = block.map_err(|e| KeyError::Pem {
            what,
            reason: e.to_string(),
        })?;
        if block.label != label {
            return Err(KeyError::Label {
                what,
                found: block.label,
                expected: label,
            });
        }
        out.push(block.contents);
    }
    Ok(out)
}

fn single_pem(what: &'static str, pem: &str, label: &'static str) -> Result<Pem, KeyError> {
    let mut blocks = pem_blocks(what, pem, label)?;
    if blocks.len() != 1 {
        return Err(KeyError::Count {
            what,
            count: blocks.len(),
        });
    }
    let contents = blocks.pop().unwrap_or_default();
    Ok(Pem {
        label: label.to_owned(),
        contents,
    })
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
pub(crate) mod testkeys {
    //! Keys made in the test, in the formats cosign writes.
    use base64::Engine as _;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    /// SubjectPublicKeyInfo prefixes for the two key types (RFC 5480, RFC 8410).
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    const ED25519_SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];

    /// A PEM block indented to sit under `publicKey: |` in a TrustSource's key list.
    pub fn indent_pem(pem: &str) -> String {
        pem.lines()
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A `decision: Trust` TrustSource spec listing `keys` as (name, key).
    pub fn trust_keys_yaml(minimum_signatures: Option<u32>, keys: &[(&str, &TestKey)]) -> String {
        let mut yaml = String::from("decision: Trust\n");
        if let Some(n) = minimum_signatures {
            yaml.push_str(&format!("minimumSignatures: {n}\n"));
        }
        yaml.push_str("keys:");
        for (name, key) in keys {
            yaml.push_str(&format!(
                "\n  - name: {name}\n    publicKey: |\n{}",
                indent_pem(&key.public_pem())
            ));
        }
        yaml
    }

    pub fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// A signing key and its public half as PEM.
    pub enum TestKey {
        P256(EcdsaKeyPair),
        Ed25519(Ed25519KeyPair),
    }

    impl TestKey {
        pub fn p256() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            Self::P256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            )
        }

        pub fn ed25519() -> Self {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            Self::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
        }

        pub fn public_pem(&self) -> String {
            let der = match self {
                Self::P256(k) => [&P256_SPKI_PREFIX[..], k.public_key().as_ref()].concat(),
                Self::Ed25519(k) => [&ED25519_SPKI_PREFIX[..], k.public_key().as_ref()].concat(),
            };
            pem("PUBLIC KEY", &der)
        }

        pub fn sign(&self, message: &[u8]) -> Vec<u8> {
            match self {
                Self::P256(k) => k
                    .sign(&SystemRandom::new(), message)
                    .unwrap()
                    .as_ref()
                    .to_vec(),
                Self::Ed25519(k) => k.sign(message).as_ref().to_vec(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkeys::{TestKey, pem};
    use super::*;

    #[test]
    fn keys_verify_their_own_signatures_only() {
        for (name, key, other) in [
            ("p256", TestKey::p256(), TestKey::p256()),
            ("ed25519", TestKey::ed25519(), TestKey::ed25519()),
        ] {
            let public =
                PublicKey::from_pem(&key.public_pem()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let sig = key.sign(b"payload");
            assert!(public.verify(b"payload", &sig), "{name}: own signature");
            assert!(!public.verify(b"payload!", &sig), "{name}: other message");
            assert!(
                !public.verify(b"payload", &other.sign(b"payload")),
                "{name}: other key"
            );
            assert!(public.fingerprint().starts_with("sha256:"));
        }
    }

    #[test]
    fn example_keys_parse() {
        // The keys in examples/trustsource-release-signers.yaml.
        let p256 = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEHY5gE9Kg+DlMtFNxnekoezhrxCb\n4M3EeRo6lHKwX3FeVeMo2djKs7kD3BCuFXS/BBF6iNWPHJjWaZBGTsdlNg==\n-----END PUBLIC KEY-----\n";
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJLQ2wc9PC78WPZ0HcNwq22xLN68fdME9vIcetS9n/LQ=\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            PublicKey::from_pem(p256).unwrap().algorithm(),
            KeyAlgorithm::EcdsaP256
        );
        assert_eq!(
            PublicKey::from_pem(ed).unwrap().algorithm(),
            KeyAlgorithm::Ed25519
        );
    }

    #[test]
    fn bad_keys_say_why() {
        let good = TestKey::p256().public_pem();
        let cases: Vec<(&str, String, &str)> = vec![
            ("not pem", "hello".to_owned(), "expected exactly one"),
            (
                "garbage base64",
                "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n".to_owned(),
                "not PEM",
            ),
            (
                "private key label",
                good.replace("PUBLIC KEY", "PRIVATE KEY"),
                "expected \"PUBLIC KEY\"",
            ),
            ("two keys", format!("{good}{good}"), "2 PEM blocks"),
            (
                "not a key",
                pem("PUBLIC KEY", b"\x30\x03\x02\x01\x01"),
                "does not parse",
            ),
            (
                "truncated point",
                {
                    let der = [
                        &[
                            0x30, 0x39, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
                            0x01, 0x06, 0x08,
                        ][..],
                        &[
                            0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x22, 0x00, 0x04,
                        ][..],
                        &[7u8; 32][..],
                    ]
                    .concat();
                    pem("PUBLIC KEY", &der)
                },
                "malformed ECDSA P-256",
            ),
        ];
        for (rule, input, want) in cases {
            let err = PublicKey::from_pem(&input).expect_err(rule).to_string();
            assert!(err.contains(want), "{rule}: {err}");
        }
    }

    #[test]
    fn ca_certificates() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let parsed = CaCertificate::from_pem(&ca.pem()).unwrap();
        assert!(parsed.fingerprint().starts_with("sha256:"));

        let leaf_params = rcgen::CertificateParams::new(vec!["leaf.example".to_owned()]).unwrap();
        let leaf = leaf_params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let err = CaCertificate::from_pem(&leaf.pem()).unwrap_err();
        assert!(matches!(err, KeyError::NotCa { .. }), "{err}");
        let err = CaCertificate::from_pem(&TestKey::p256().public_pem()).unwrap_err();
        assert!(matches!(err, KeyError::Label { .. }), "{err}");
    }
}
