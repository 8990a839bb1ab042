//! Cosign signatures, verified offline.
//!
//! Cosign stores the signatures of `repo@sha256:<hex>` as an OCI manifest tagged
//! `sha256-<hex>.sig` in the same repository. Each layer is a simple-signing JSON payload
//! (media type `application/vnd.dev.cosign.simplesigning.v1+json`) whose
//! `critical.image.docker-manifest-digest` names the signed artifact; the base64 signature over
//! the exact payload bytes is the layer annotation `dev.cosignproject.cosign/signature`. A
//! keyless signature adds the signing certificate (`dev.sigstore.cosign/certificate`) and its
//! chain (`dev.sigstore.cosign/chain`).
//!
//! What is checked: the payload names this digest and is a cosign container image signature;
//! the signature verifies over the payload with a configured public key, or with the leaf
//! certificate's key where the leaf chains to a configured CA (all certificates valid now), has
//! no extended key usage other than code signing, and names an OIDC issuer (Fulcio extension
//! 1.3.6.1.4.1.57264.1.8, or the older .1.1) and a subject (SAN email or URI).
//!
//! A layer that no configured key or CA vouches for (another signer's, an expired Fulcio
//! certificate) simply does not count. A layer that is broken — a payload that is no cosign
//! payload or names another artifact, a signature that is not base64 or no signature encoding
//! at all, a signature that fails under a certificate the trust root vouches for, a payload blob
//! changed at rest — is listed in [`Verification::broken`]: that is what tampering or
//! corruption looks like. It does not count either (as in cosign, only verified signatures
//! count toward `minimumSignatures`); the caller reports it with a Warning Event. A
//! well-formed key signature that verifies with no configured key cannot be told apart from
//! another signer's and only does not count.
//!
//! What is not: no Rekor or other transparency-log lookup and no timestamp authority, so
//! verification works without network; in exchange a signing certificate must still be valid
//! at verification time (public Fulcio's 10-minute certificates will not verify — use a CA
//! with longer-lived signing certificates, or keys).

use std::collections::BTreeSet;
use std::fmt;

use airssys_crds::Digest;
use base64::Engine as _;
use serde::Deserialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use super::keys::{CaCertificate, PublicKey, parse_certificate, pem_blocks};

/// Media type of a cosign signature layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Layer annotation holding the PEM signing certificate (keyless).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// Layer annotation holding the PEM chain above the signing certificate (keyless).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// `critical.type` of a cosign payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Fulcio's OIDC issuer extension, DER UTF8String (current).
const OID_FULCIO_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
/// Fulcio's OIDC issuer extension, raw string (deprecated, still issued).
const OID_FULCIO_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
/// How many intermediates a chain may have.
const MAX_CHAIN: usize = 4;

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// One signature layer, as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The exact payload bytes (the layer blob).
    pub payload: Vec<u8>,
    /// Base64 signature from [`SIGNATURE_ANNOTATION`].
    pub signature: String,
    /// PEM leaf certificate from [`CERTIFICATE_ANNOTATION`], for keyless signatures.
    pub certificate: Option<String>,
    /// PEM chain from [`CHAIN_ANNOTATION`].
    pub chain: Option<String>,
    /// Why the payload blob is not what the signature manifest says (its bytes do not hash
    /// to the layer digest): the signature is unverifiable, and is ignored as such.
    pub tampered: Option<String>,
}

/// Who verifiably signed the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signer {
    /// A public key, by [`PublicKey::fingerprint`].
    Key { fingerprint: String },
    /// A certificate identity, with the fingerprints of the configured CAs it chains to.
    Certificate {
        issuer: String,
        subject: String,
        roots: Vec<String>,
    },
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key { fingerprint } => write!(f, "key {fingerprint}"),
            Self::Certificate {
                issuer, subject, ..
            } => write!(f, "identity {subject} (issuer {issuer})"),
        }
    }
}

/// The outcome of checking every signature layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Distinct verified signers, sorted.
    pub signers: Vec<Signer>,
    /// Why layers did not count, one line each, for the `Verified` condition message.
    pub problems: Vec<String>,
    /// Layers whose data is broken or was tampered with, one line each: these signatures are
    /// not what their signer produced. They count for nothing, like `problems`.
    pub broken: Vec<String>,
}

/// Why one layer did not count.
struct Rejected {
    reason: String,
    /// Broken or tampered, rather than merely not vouched for.
    broken: bool,
}

impl Rejected {
    fn broken(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            broken: true,
        }
    }

    fn unvouched(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            broken: false,
        }
    }
}

/// The keys and CAs to check against (every accepted source's, from the index).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrustMaterial<'a> {
    pub keys: &'a [&'a PublicKey],
    pub roots: &'a [&'a CaCertificate],
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    type_: String,
    image: Image,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Verifies every layer against `material` for artifact `digest`, at unix time `now`. Layers
/// that verify with nothing configured are not errors (someone else may have signed too);
/// they are listed in [`Verification::problems`].
pub fn verify(
    digest: &Digest,
    layers: &[SignatureLayer],
    material: TrustMaterial<'_>,
    now: i64,
) -> Verification {
    let mut signers = BTreeSet::new();
    let mut problems = Vec::new();
    let mut broken = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        match verify_layer(digest, layer, material, now) {
            Ok(found) if found.is_empty() => {
                problems.push(format!(
                    "signature {}: matches no key of an accepted TrustSource",
                    i + 1
                ));
            }
            Ok(found) => signers.extend(found),
            Err(Rejected {
                reason,
                broken: true,
            }) => broken.push(format!("signature {}: {reason}", i + 1)),
            Err(Rejected { reason, .. }) => problems.push(format!("signature {}: {reason}", i + 1)),
        }
    }
    Verification {
        signers: signers.into_iter().collect(),
        problems,
        broken,
    }
}

fn verify_layer(
    digest: &Digest,
    layer: &SignatureLayer,
    material: TrustMaterial<'_>,
    now: i64,
) -> Result<Vec<Signer>, Rejected> {
    if let Some(problem) = &layer.tampered {
        return Err(Rejected::broken(problem.clone()));
    }
    let payload: Payload = serde_json::from_slice(&layer.payload)
        .map_err(|e| Rejected::broken(format!("payload is not a cosign payload: {e}")))?;
    if payload.critical.type_ != PAYLOAD_TYPE {
        return Err(Rejected::broken(format!(
            "payload type is {:?}, expected {PAYLOAD_TYPE:?}",
            payload.critical.type_
        )));
    }
    if payload.critical.image.docker_manifest_digest != digest.as_str() {
        return Err(Rejected::broken(format!(
            "payload signs {}, not this artifact ({digest})",
            payload.critical.image.docker_manifest_digest
        )));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(layer.signature.trim())
        .map_err(|e| Rejected::broken(format!("signature is not base64: {e}")))?;
    if !is_signature_encoding(&signature) {
        return Err(Rejected::broken(format!(
            "signature does not verify: its {} bytes are no ECDSA, ed25519 or RSA signature (corrupted or tampered)",
            signature.len()
        )));
    }
    match &layer.certificate {
        None => Ok(material
            .keys
            .iter()
            .filter(|key| key.verify(&layer.payload, &signature))
            .map(|key| Signer::Key {
                fingerprint: key.fingerprint().to_owned(),
            })
            .collect()),
        Some(pem) => verify_keyless(layer, pem, &signature, material.roots, now).map(|s| vec![s]),
    }
}

/// Whether `sig` is shaped like a signature some key could have made: a DER ECDSA signature
/// (`SEQUENCE { INTEGER r, INTEGER s }`), a raw 64-byte ed25519 (or r‖s) signature, or an RSA
/// signature of a common modulus size. Anything else cannot verify under any key.
fn is_signature_encoding(sig: &[u8]) -> bool {
    /// One DER element of tag `tag` at the start of `der`: (contents, rest).
    fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = der.split_first()?;
        let (&len0, rest) = rest.split_first()?;
        let (len, rest) = match len0 {
            0..=0x7f => (usize::from(len0), rest),
            0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
            _ => return None,
        };
        (t == tag && rest.len() >= len).then(|| rest.split_at(len))
    }
    let der_ecdsa = || {
        let (body, rest) = element(sig, 0x30)?;
        let (r, body) = element(body, 0x02)?;
        let (s, body) = element(body, 0x02)?;
        (rest.is_empty() && body.is_empty() && !r.is_empty() && !s.is_empty()).then_some(())
    };
    matches!(sig.len(), 64 | 256 | 384 | 512) || der_ecdsa().is_some()
}

fn verify_keyless(
    layer: &SignatureLayer,
    leaf_pem: &str,
    signature: &[u8],
    roots: &[&CaCertificate],
    now: i64,
) -> Result<Signer, Rejected> {
    let unvouched = |e: String| Rejected::unvouched(e);
    let broken = |e: String| Rejected::broken(e);
    let at = ASN1Time::from_timestamp(now).map_err(|e| unvouched(format!("bad clock: {e}")))?;
    let leaf_der =
        pem_blocks("certificate", leaf_pem, "CERTIFICATE").map_err(|e| broken(e.to_string()))?;
    let [leaf_der] = leaf_der.as_slice() else {
        return Err(broken(
            "certificate annotation must hold exactly one certificate".to_owned(),
        ));
    };
    let leaf = parse_certificate(leaf_der).map_err(|e| broken(e.to_string()))?;
    if !leaf.validity().is_valid_at(at) {
        return Err(unvouched(format!(
            "signing certificate is not valid now (valid {} to {})",
            leaf.validity().not_before,
            leaf.validity().not_after
        )));
    }
    if let Ok(Some(eku)) = leaf.extended_key_usage()
        && !eku.value.code_signing
    {
        return Err(unvouched(
            "signing certificate is not for code signing".to_owned(),
        ));
    }
    let chain_der = match &layer.chain {
        Some(pem) => pem_blocks("certificate chain", pem, "CERTIFICATE")
            .map_err(|e| broken(e.to_string()))?,
        None => Vec::new(),
    };
    let chain = chain_der
        .iter()
        .map(|der| parse_certificate(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| broken(format!("chain: {e}")))?;
    let roots_parsed = roots
        .iter()
        .map(|r| r.certificate().map(|c| (c, r.fingerprint())))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unvouched(e.to_string()))?;
    let matched_roots = chain_to_roots(&leaf, &chain, &roots_parsed, at).map_err(unvouched)?;

    let issuer = oidc_issuer(&leaf).ok_or_else(|| {
        unvouched("signing certificate names no OIDC issuer (Fulcio extension)".to_owned())
    })?;
    let subject = san_subject(&leaf).ok_or_else(|| {
        unvouched("signing certificate has no email or URI subject alternative name".to_owned())
    })?;
    let key = PublicKey::from_spki(leaf.public_key())
        .map_err(|e| unvouched(format!("signing certificate key: {e}")))?;
    if !key.verify(&layer.payload, signature) {
        // The trust root vouches for this certificate, so the signature itself is bad.
        return Err(broken(format!(
            "signature does not verify with the certificate of {subject} (corrupted or tampered)"
        )));
    }
    Ok(Signer::Certificate {
        issuer,
        subject,
        roots: matched_roots,
    })
}

/// Walks from `leaf` through `chain` to the configured roots; returns the fingerprints of the
/// roots the last certificate verifies against.
fn chain_to_roots(
    leaf: &X509Certificate<'_>,
    chain: &[X509Certificate<'_>],
    roots: &[(X509Certificate<'_>, &str)],
    at: ASN1Time,
) -> Result<Vec<String>, String> {
    let signed_by = |child: &X509Certificate<'_>, parent: &X509Certificate<'_>| {
        child.issuer() == parent.subject()
            && parent.is_ca()
            && parent.validity().is_valid_at(at)
            && child.verify_signature(Some(parent.public_key())).is_ok()
    };
    let mut current = leaf;
    for _ in 0..=MAX_CHAIN {
        let found: Vec<String> = roots
            .iter()
            .filter(|(root, _)| signed_by(current, root))
            .map(|(_, fp)| (*fp).to_owned())
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
        match chain
            .iter()
            .find(|parent| !std::ptr::eq(*parent, current) && signed_by(current, parent))
        {
            Some(parent) => current = parent,
            None => break,
        }
    }
    Err(format!(
        "signing certificate (issuer {}) does not chain to a trustRoot certificate authority",
        leaf.issuer()
    ))
}

/// The OIDC issuer from Fulcio's extensions.
fn oidc_issuer(cert: &X509Certificate<'_>) -> Option<String> {
    let ext = |oid: &str| {
        cert.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
    };
    if let Some(v2) = ext(OID_FULCIO_ISSUER_V2) {
        return der_utf8_string(v2.value);
    }
    ext(OID_FULCIO_ISSUER_V1).and_then(|v1| String::from_utf8(v1.value.to_vec()).ok())
}

/// The first email or URI subject alternative name.
fn san_subject(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::RFC822Name(email) => Some((*email).to_owned()),
        GeneralName::URI(uri) => Some((*uri).to_owned()),
        _ => None,
    })
}

/// Decodes a DER UTF8String (tag 12) with nothing after it.
fn der_utf8_string(der: &[u8]) -> Option<String> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, body) = match len0 {
        0..=0x7f => (usize::from(len0), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    (body.len() == len).then(|| String::from_utf8(body.to_vec()).ok())?
}

#[cfg(test)]
pub(crate) mod testsig {
    //! Cosign-format signatures made in the test.
    use base64::Engine as _;

    use super::*;
    use crate::artifact::keys::testkeys::TestKey;

    pub fn payload(digest: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"localhost:5000/team/echo"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    pub fn layer(key: &TestKey, payload: Vec<u8>) -> SignatureLayer {
        let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
        SignatureLayer {
            payload,
            signature,
            certificate: None,
            chain: None,
            tampered: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyPair, SanType, SigningKey as _,
    };

    use super::testsig::{layer, payload};
    use super::*;
    use crate::artifact::keys::testkeys::TestKey;

    const NOW: i64 = 1_800_000_000; // 2027-01-15

    fn digest(n: u8) -> Digest {
        Digest::from_sha256(&[n; 32])
    }

    #[test]
    fn signature_tag_is_cosigns() {
        assert_eq!(
            signature_tag(&digest(0xab)),
            format!("sha256-{}.sig", "ab".repeat(32))
        );
    }

    #[test]
    fn key_signatures_spec() {
        let p256 = TestKey::p256();
        let ed = TestKey::ed25519();
        let stranger = TestKey::p256();
        let p256_pub = PublicKey::from_pem(&p256.public_pem()).unwrap();
        let ed_pub = PublicKey::from_pem(&ed.public_pem()).unwrap();
        let keys = [&p256_pub, &ed_pub];
        let material = TrustMaterial {
            keys: &keys,
            roots: &[],
        };
        let d = digest(1);
        let good = payload(d.as_str());

        let tampered = {
            let mut l = layer(&p256, good.clone());
            l.payload = payload(digest(2).as_str());
            l
        };
        let wrong_type = {
            let p = String::from_utf8(good.clone())
                .unwrap()
                .replace(PAYLOAD_TYPE, "something else");
            layer(&p256, p.into_bytes())
        };
        let cases: Vec<(&str, Vec<SignatureLayer>, Vec<&PublicKey>, &str)> = vec![
            (
                "p256 key signature counts",
                vec![layer(&p256, good.clone())],
                vec![&p256_pub],
                "",
            ),
            (
                "ed25519 key signature counts",
                vec![layer(&ed, good.clone())],
                vec![&ed_pub],
                "",
            ),
            (
                "two signers count twice",
                vec![layer(&p256, good.clone()), layer(&ed, good.clone())],
                vec![&p256_pub, &ed_pub],
                "",
            ),
            (
                "same signer twice counts once",
                vec![layer(&p256, good.clone()), layer(&p256, good.clone())],
                vec![&p256_pub],
                "",
            ),
            (
                "unknown key counts nothing",
                vec![layer(&stranger, good.clone())],
                vec![],
                "matches no key",
            ),
            (
                "signature for another digest counts nothing",
                vec![layer(&p256, payload(digest(2).as_str()))],
                vec![],
                "not this artifact",
            ),
            (
                "tampered payload counts nothing",
                vec![tampered],
                vec![],
                "not this artifact",
            ),
            (
                "payload of another type counts nothing",
                vec![wrong_type],
                vec![],
                "payload type",
            ),
            (
                "garbage payload counts nothing",
                vec![layer(&p256, b"{}".to_vec())],
                vec![],
                "not a cosign payload",
            ),
            (
                "bad base64 counts nothing",
                vec![SignatureLayer {
                    signature: "%%%".into(),
                    ..layer(&p256, good.clone())
                }],
                vec![],
                "not base64",
            ),
            (
                "garbage signature bytes are broken",
                vec![SignatureLayer {
                    signature: base64::engine::general_purpose::STANDARD.encode([0xa5; 71]),
                    ..layer(&p256, good.clone())
                }],
                vec![],
                "no ECDSA, ed25519 or RSA signature",
            ),
            (
                "a flipped bit inside a well-formed signature only matches no key",
                vec![{
                    let mut l = layer(&p256, good.clone());
                    let mut sig = base64::engine::general_purpose::STANDARD
                        .decode(&l.signature)
                        .unwrap();
                    let last = sig.len() - 1;
                    sig[last] ^= 1;
                    l.signature = base64::engine::general_purpose::STANDARD.encode(sig);
                    l
                }],
                vec![],
                "matches no key",
            ),
            (
                "a broken layer does not hide a good one",
                vec![
                    layer(&p256, good.clone()),
                    layer(&ed, payload(digest(2).as_str())),
                ],
                vec![&p256_pub],
                "not this artifact",
            ),
        ];
        // Rejections that mean broken or tampered data rather than an unknown signer.
        let broken_markers = [
            "not this artifact",
            "payload type",
            "not a cosign payload",
            "not base64",
            "no ECDSA",
        ];
        for (rule, layers, want, problem) in cases {
            let got = verify(&d, &layers, material, NOW);
            let want: Vec<Signer> = want
                .iter()
                .map(|k| Signer::Key {
                    fingerprint: k.fingerprint().to_owned(),
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(got.signers, want, "{rule}");
            if problem.is_empty() {
                assert!(got.problems.is_empty(), "{rule}: {:?}", got.problems);
                assert!(got.broken.is_empty(), "{rule}: {:?}", got.broken);
            } else if broken_markers.iter().any(|m| problem.contains(m)) {
                assert!(
                    got.broken.iter().any(|p| p.contains(problem)),
                    "{rule}: {got:?}"
                );
                assert!(got.problems.is_empty(), "{rule}: {got:?}");
            } else {
                assert!(
                    got.problems.iter().any(|p| p.contains(problem)),
                    "{rule}: {got:?}"
                );
                assert!(got.broken.is_empty(), "{rule}: {got:?}");
            }
        }
    }

    #[test]
    fn signature_encodings() {
        let p256 = TestKey::p256();
        let ed = TestKey::ed25519();
        assert!(is_signature_encoding(&p256.sign(b"m")), "DER ECDSA");
        assert!(is_signature_encoding(&ed.sign(b"m")), "ed25519");
        assert!(is_signature_encoding(&[7; 256]), "RSA 2048");
        for (rule, bytes) in [
            ("empty", Vec::new()),
            ("random", vec![0xa5; 71]),
            ("sequence with trailing bytes", {
                let mut der = p256.sign(b"m");
                der.push(0);
                der
            }),
            ("one integer", vec![0x30, 3, 0x02, 1, 1]),
            ("empty integers", vec![0x30, 4, 0x02, 0, 0x02, 0]),
        ] {
            assert!(!is_signature_encoding(&bytes), "{rule}");
        }
    }

    struct Pki {
        root: CaCertificate,
        root_params: CertificateParams,
        root_key: KeyPair,
    }

    fn ca(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            root: CaCertificate::from_pem(&cert.pem()).unwrap(),
            root_params: params,
            root_key: key,
        }
    }

    fn der_utf8(s: &str) -> Vec<u8> {
        let mut v = vec![0x0c, u8::try_from(s.len()).unwrap()];
        v.extend_from_slice(s.as_bytes());
        v
    }

    struct Leaf<'a> {
        issuer: Option<&'a str>,
        san: SanType,
        eku: Vec<ExtendedKeyUsagePurpose>,
        not_after: (i32, u8, u8),
    }

    fn leaf_layer(
        pki: &Pki,
        leaf: &Leaf<'_>,
        signed: &[u8],
        chain: Option<String>,
    ) -> SignatureLayer {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![leaf.san.clone()];
        params.extended_key_usages = leaf.eku.clone();
        params.not_after =
            rcgen::date_time_ymd(leaf.not_after.0, leaf.not_after.1, leaf.not_after.2);
        if let Some(issuer) = leaf.issuer {
            params.custom_extensions = vec![CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 57264, 1, 8],
                der_utf8(issuer),
            )];
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&pki.root_params, &pki.root_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        SignatureLayer {
            payload: signed.to_vec(),
            signature: base64::engine::general_purpose::STANDARD.encode(key.sign(signed).unwrap()),
            certificate: Some(cert.pem()),
            chain,
            tampered: None,
        }
    }

    #[test]
    fn keyless_signatures_spec() {
        let pki = ca("Example Signing CA");
        let other = ca("Someone Else CA");
        let d = digest(3);
        let good = payload(d.as_str());
        let uri = "https://git.example.com/platform/components/.pipeline/release.yaml@refs/tags/v1";
        let base = Leaf {
            issuer: Some("https://token.actions.example.com"),
            san: SanType::URI(uri.try_into().unwrap()),
            eku: vec![ExtendedKeyUsagePurpose::CodeSigning],
            not_after: (2030, 1, 1),
        };
        let roots = [&pki.root];
        let material = TrustMaterial {
            keys: &[],
            roots: &roots,
        };

        let got = verify(&d, &[leaf_layer(&pki, &base, &good, None)], material, NOW);
        assert_eq!(
            got.signers,
            vec![Signer::Certificate {
                issuer: "https://token.actions.example.com".into(),
                subject: uri.into(),
                roots: vec![pki.root.fingerprint().to_owned()],
            }],
            "{:?}",
            got.problems
        );

        let email = Leaf {
            san: SanType::Rfc822Name("dev@example.com".try_into().unwrap()),
            ..base
        };
        let got = verify(&d, &[leaf_layer(&pki, &email, &good, None)], material, NOW);
        assert!(
            matches!(&got.signers[..], [Signer::Certificate { subject, .. }] if subject == "dev@example.com"),
            "email SAN is the subject: {got:?}"
        );

        let failing: Vec<(&str, SignatureLayer, &str)> = vec![
            (
                "chain to an unknown CA fails",
                leaf_layer(&other, &email, &good, None),
                "does not chain",
            ),
            (
                "the unknown CA in the chain annotation does not help",
                leaf_layer(&other, &email, &good, Some(other_pem(&other))),
                "does not chain",
            ),
            (
                "expired certificate fails",
                leaf_layer(
                    &pki,
                    &Leaf {
                        not_after: (2026, 1, 1),
                        ..clone_leaf(&email)
                    },
                    &good,
                    None,
                ),
                "not valid now",
            ),
            (
                "no issuer extension fails",
                leaf_layer(
                    &pki,
                    &Leaf {
                        issuer: None,
                        ..clone_leaf(&email)
                    },
                    &good,
                    None,
                ),
                "no OIDC issuer",
            ),
            (
                "server certificate fails",
                leaf_layer(
                    &pki,
                    &Leaf {
                        eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
                        ..clone_leaf(&email)
                    },
                    &good,
                    None,
                ),
                "not for code signing",
            ),
            (
                "dns SAN is no identity",
                leaf_layer(
                    &pki,
                    &Leaf {
                        san: SanType::DnsName("x.example".try_into().unwrap()),
                        ..clone_leaf(&email)
                    },
                    &good,
                    None,
                ),
                "no email or URI",
            ),
            (
                "signature by another key fails",
                {
                    let mut l = leaf_layer(&pki, &email, &good, None);
                    l.signature = layer(&TestKey::p256(), good.clone()).signature;
                    l
                },
                "does not verify",
            ),
        ];
        for (rule, layer, problem) in failing {
            let got = verify(&d, &[layer], material, NOW);
            assert!(got.signers.is_empty(), "{rule}: {:?}", got.signers);
            // Only a bad signature under a vouched-for certificate is broken data; the rest
            // are certificates the trust root does not vouch for.
            let (hit, other) = if problem == "does not verify" {
                (&got.broken, &got.problems)
            } else {
                (&got.problems, &got.broken)
            };
            assert!(hit.iter().any(|p| p.contains(problem)), "{rule}: {got:?}");
            assert!(other.is_empty(), "{rule}: {got:?}");
        }
    }

    #[test]
    fn keyless_through_an_intermediate() {
        let pki = ca("Root CA");
        let mut inter_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        inter_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        inter_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Intermediate CA");
        let inter_key = KeyPair::generate().unwrap();
        let inter_cert = inter_params
            .signed_by(
                &inter_key,
                &Issuer::from_params(&pki.root_params, &pki.root_key),
            )
            .unwrap();
        let inter = Pki {
            root: CaCertificate::from_pem(&inter_cert.pem()).unwrap(),
            root_params: inter_params,
            root_key: inter_key,
        };
        let d = digest(4);
        let leaf = Leaf {
            issuer: Some("https://issuer.example"),
            san: SanType::Rfc822Name("ci@example.com".try_into().unwrap()),
            eku: vec![ExtendedKeyUsagePurpose::CodeSigning],
            not_after: (2030, 1, 1),
        };
        let roots = [&pki.root];
        let material = TrustMaterial {
            keys: &[],
            roots: &roots,
        };
        let with_chain = leaf_layer(&inter, &leaf, &payload(d.as_str()), Some(inter_cert.pem()));
        let got = verify(&d, &[with_chain], material, NOW);
        assert_eq!(got.signers.len(), 1, "{:?}", got.problems);
        let without_chain = leaf_layer(&inter, &leaf, &payload(d.as_str()), None);
        assert!(
            verify(&d, &[without_chain], material, NOW)
                .signers
                .is_empty(),
            "the intermediate is needed"
        );
    }

    fn clone_leaf<'a>(leaf: &Leaf<'a>) -> Leaf<'a> {
        Leaf {
            issuer: leaf.issuer,
            san: leaf.san.clone(),
            eku: leaf.eku.clone(),
            not_after: leaf.not_after,
        }
    }

    fn other_pem(pki: &Pki) -> String {
        pki.root_params.self_signed(&pki.root_key).unwrap().pem()
    }

    #[test]
    fn der_strings() {
        assert_eq!(der_utf8_string(&der_utf8("abc")).as_deref(), Some("abc"));
        let long = "x".repeat(200);
        let mut der = vec![0x0c, 0x81, 200];
        der.extend_from_slice(long.as_bytes());
        assert_eq!(der_utf8_string(&der), Some(long));
        assert_eq!(der_utf8_string(&[0x13, 1, b'a']), None, "not a UTF8String");
        assert_eq!(der_utf8_string(&[0x0c, 5, b'a']), None, "short");
    }
}
