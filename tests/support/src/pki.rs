//! A throwaway PKI for one control plane: a CA, the API server's serving certificate, client
//! certificates (the CN is the user, each O a group) and the service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// Names the serving certificate answers to: loopback for the tests, the in-cluster service
/// names for anything that resolves `kubernetes.default.svc`.
const SERVING_NAMES: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.96.0.1",
];

#[derive(Debug)]
pub(crate) struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

/// Paths of one certificate and its key.
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// Creates the CA, the serving certificate (for [`SERVING_NAMES`] and `extra_names`) and
    /// the service-account key in `dir`.
    pub fn create(dir: &Path, extra_names: &[String]) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("airssys-test-ca", None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&dir.join("ca.crt"), &cert.pem())?;
        write(&dir.join("ca.key"), &key.serialize_pem())?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca: Issuer::new(params, key),
        };

        let mut serving_names: Vec<String> = SERVING_NAMES.iter().map(|s| s.to_string()).collect();
        serving_names.extend(extra_names.iter().cloned());
        pki.issue(
            "apiserver",
            name("kube-apiserver", None),
            serving_names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        // ECDSA P-256: the API server signs service-account tokens with ES256.
        let sa = KeyPair::generate()?;
        write(&dir.join("sa.key"), &sa.serialize_pem())?;
        write(&dir.join("sa.pub"), &sa.public_key_pem())?;
        Ok(pki)
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    pub fn sa_public_key(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    pub fn serving(&self) -> CertFiles {
        self.files("apiserver")
    }

    /// A client certificate for `user` (in `group`, if any), written as `<file_stem>.crt/.key`.
    pub fn client(
        &self,
        file_stem: &str,
        user: &str,
        group: Option<&str>,
    ) -> Result<CertFiles, Error> {
        self.issue(
            file_stem,
            name(user, group),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn files(&self, stem: &str) -> CertFiles {
        CertFiles {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        }
    }

    fn issue(
        &self,
        stem: &str,
        subject: DistinguishedName,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles, Error> {
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = subject;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let files = self.files(stem);
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

/// rcgen keeps one value per attribute type, so a certificate carries at most one group.
fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(Error::io(format!("writing {}", path.display())))
}
