//! OCI images of the workspace's binaries, built without a container engine (the
//! `airssys-image` binary behind `cargo run -p xtask -- image`).
//!
//! An image is one layer holding the binary (at `/usr/local/bin/<name>`) and exactly the
//! shared libraries `ldd` lists for it, copied from the build host: there is no musl target on
//! the build machines, so the glibc the binary was linked against travels with it. The build
//! host's CA bundle goes to [`CA_BUNDLE`]: the operator's registry client (reqwest's platform
//! verifier) will not start without system CAs. Nothing else is in the image (no shell, no
//! package manager).
//!
//! Builds are reproducible: entries sorted, owned by uid/gid 0, every mtime the build's fixed
//! `created` time, gzip without a timestamp or file name, JSON with a fixed key order. The same
//! binary and inputs give the same digests on any machine with the same libraries.
//!
//! The pure parts ([`parse_ldd`], [`layer_tar`], [`config_json`], [`manifest_json`]) are apart
//! from the I/O ([`build`] reads files and runs `ldd`; [`push`] talks to a registry).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::Error;

/// Where the image holds the CA bundle: the path Debian's (and distroless's) is at, which
/// rustls-native-certs reads.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where build hosts keep theirs: Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine.
const HOST_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The user the image runs as (distroless's `nonroot`): the chart's `runAsUser` is the same.
pub const USER: &str = "65532:65532";
/// Where the binary goes in the image.
pub const BIN_DIR: &str = "/usr/local/bin";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The binary on the build host.
    pub binary: PathBuf,
    /// Its name in the image (`/usr/local/bin/<name>`) and the image title.
    pub name: String,
    /// `org.opencontainers.image.version`.
    pub version: String,
    /// `org.opencontainers.image.revision`: the source commit.
    pub revision: String,
    /// `org.opencontainers.image.source`: the repository URL.
    pub source: String,
    /// `org.opencontainers.image.licenses` (SPDX).
    pub licenses: String,
    /// Seconds since the Unix epoch: the config's `created`, the label and every mtime in the
    /// layer. Fixed (e.g. the commit's time or `SOURCE_DATE_EPOCH`) for reproducible digests.
    pub created: i64,
}

/// A built image: its blobs and their digests.
#[derive(Debug, Clone)]
pub struct Image {
    /// The gzip-compressed layer.
    pub layer: Vec<u8>,
    pub layer_digest: String,
    /// Digest of the uncompressed layer (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    /// The manifest's digest: the image's digest.
    pub digest: String,
    /// The regular files in the layer (absolute paths in the image), sorted.
    pub files: Vec<String>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex_lower(&Sha256::digest(bytes)))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the image of `spec.binary`: runs `ldd` on it, reads it and its libraries.
pub fn build(spec: &ImageSpec) -> Result<Image, Error> {
    let libraries = shared_libraries(&spec.binary)?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(libraries.len() + 1);
    let binary = std::fs::read(&spec.binary)
        .map_err(Error::io(format!("reading {}", spec.binary.display())))?;
    files.push((format!("{BIN_DIR}/{}", spec.name), binary));
    for library in libraries {
        // Read through symlinks: the image holds the file at the path the loader asks for.
        let bytes =
            std::fs::read(&library).map_err(Error::io(format!("reading {}", library.display())))?;
        files.push((library.display().to_string(), bytes));
    }
    let bundle = HOST_CA_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no CA bundle on this machine (looked at {}); install ca-certificates",
                HOST_CA_BUNDLES.join(", ")
            ))
        })?;
    let bytes =
        std::fs::read(bundle).map_err(Error::io(format!("reading {}", bundle.display())))?;
    files.push((CA_BUNDLE.to_owned(), bytes));
    let tar = layer_tar(&files, spec.created)?;
    let diff_id = sha256_digest(&tar);
    let layer = gzip(&tar)?;
    let layer_digest = sha256_digest(&layer);
    let config = config_json(spec, &diff_id, std::env::consts::ARCH)?;
    let config_digest = sha256_digest(&config);
    let manifest = manifest_json(&config_digest, config.len(), &layer_digest, layer.len())?;
    let digest = sha256_digest(&manifest);
    let mut paths: Vec<String> = files.into_iter().map(|(path, _)| path).collect();
    paths.sort();
    Ok(Image {
        layer,
        layer_digest,
        diff_id,
        config,
        config_digest,
        manifest,
        digest,
        files: paths,
    })
}

/// The shared libraries `ldd` lists for `binary` (the loader included), as absolute paths.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(Error::io("running ldd (from glibc's libc-bin)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A static binary: ldd says so and exits 1; it needs no libraries.
    if stdout.contains("statically linked") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "ldd {} failed ({}): {stderr}",
            binary.display(),
            out.status
        )));
    }
    parse_ldd(&stdout).map_err(|why| Error::Invalid(format!("ldd {}: {why}", binary.display())))
}

/// The library paths in `ldd` output: `name => /path (0x...)` and `/path (0x...)` lines.
/// The vDSO (no file) is skipped; a library ldd cannot find is an error.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = BTreeSet::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "statically linked" {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                target
            }
            None => line,
        };
        // "/lib/x86_64-linux-gnu/libc.so.6 (0x00007f...)": the path is the first word.
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            paths.insert(PathBuf::from(path));
        } else if !target.starts_with('(') && !line.starts_with("linux-vdso") {
            return Err(format!("cannot read ldd line {line:?}"));
        }
    }
    Ok(paths.into_iter().collect())
}

/// A tar (ustar) of `files` (absolute image paths and contents) and their parent directories:
/// sorted by path, uid/gid 0 with no owner names, mode 0755, every mtime `mtime`.
pub fn layer_tar(files: &[(String, Vec<u8>)], mtime: i64) -> Result<Vec<u8>, Error> {
    let mtime = u64::try_from(mtime)
        .map_err(|_| Error::Invalid(format!("mtime {mtime} is before 1970")))?;
    let mut entries: Vec<(String, Option<&[u8]>)> = Vec::new();
    let mut dirs = BTreeSet::new();
    for (path, bytes) in files {
        let relative = path.trim_start_matches('/');
        if relative.is_empty() || relative.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(Error::Invalid(format!("{path:?} is not a file path")));
        }
        let mut parent = String::new();
        for component in relative.split('/').take(relative.split('/').count() - 1) {
            parent.push_str(component);
            parent.push('/');
            dirs.insert(parent.clone());
        }
        entries.push((relative.to_owned(), Some(bytes.as_slice())));
    }
    entries.extend(dirs.into_iter().map(|d| (d, None)));
    // Byte order puts every directory ("usr/") before what it holds ("usr/local/").
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::Invalid(format!(
            "{} is in the layer twice",
            pair[0].0
        )));
    }
    let mut tar = Vec::new();
    for (path, bytes) in entries {
        tar.extend_from_slice(&ustar_header(&path, bytes.map_or(0, <[u8]>::len), mtime)?);
        if let Some(bytes) = bytes {
            tar.extend_from_slice(bytes);
            tar.resize(tar.len().next_multiple_of(512), 0);
        }
    }
    // The end of the archive: two zero blocks.
    tar.resize(tar.len() + 1024, 0);
    Ok(tar)
}

/// One 512-byte ustar header: a directory when `path` ends in `/`, else a regular file.
fn ustar_header(path: &str, size: usize, mtime: u64) -> Result<[u8; 512], Error> {
    let mut h = [0u8; 512];
    if path.len() > 100 {
        return Err(Error::Invalid(format!(
            "{path:?} is longer than a ustar name (100 bytes)"
        )));
    }
    let directory = path.ends_with('/');
    h[..path.len()].copy_from_slice(path.as_bytes());
    let octal = |field: &mut [u8], value: u64| -> Result<(), Error> {
        let digits = field.len() - 1;
        let text = format!("{value:0digits$o}");
        if text.len() > digits {
            return Err(Error::Invalid(format!(
                "{value} does not fit a tar header field"
            )));
        }
        field[..digits].copy_from_slice(text.as_bytes());
        Ok(())
    };
    octal(&mut h[100..108], 0o755)?; // mode
    octal(&mut h[108..116], 0)?; // uid
    octal(&mut h[116..124], 0)?; // gid
    octal(&mut h[124..136], if directory { 0 } else { size as u64 })?;
    octal(&mut h[136..148], mtime)?;
    h[156] = if directory { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0)?; // devmajor
    octal(&mut h[337..345], 0)?; // devminor
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// gzip without a timestamp, file name or OS-specific header fields.
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(bytes)
        .map_err(Error::io("compressing the layer"))?;
    encoder.finish().map_err(Error::io("compressing the layer"))
}

/// The image config: user, entrypoint, working directory, OCI labels, the layer's diff id.
/// `arch` is Rust's name for the architecture (`x86_64`, `aarch64`).
pub fn config_json(spec: &ImageSpec, diff_id: &str, arch: &str) -> Result<Vec<u8>, Error> {
    let created = rfc3339(spec.created);
    let architecture = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": {
            "User": USER,
            "Entrypoint": [format!("{BIN_DIR}/{}", spec.name)],
            "Cmd": ["run"],
            "WorkingDir": "/",
            "Env": ["PATH=/usr/local/bin"],
            "Labels": {
                "org.opencontainers.image.title": spec.name,
                "org.opencontainers.image.version": spec.version,
                "org.opencontainers.image.revision": spec.revision,
                "org.opencontainers.image.source": spec.source,
                "org.opencontainers.image.licenses": spec.licenses,
                "org.opencontainers.image.created": created,
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": created,
            "created_by": format!("airssys-image: {} and the shared libraries ldd lists", spec.name),
        }],
    });
    canonical_json(&config, "the image config")
}

/// The image manifest naming one config and one layer.
pub fn manifest_json(
    config_digest: &str,
    config_size: usize,
    layer_digest: &str,
    layer_size: usize,
) -> Result<Vec<u8>, Error> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer_size }],
    });
    canonical_json(&manifest, "the image manifest")
}

/// JSON with object keys sorted, whatever serde_json's map type, so bytes never depend on a
/// feature flag somewhere in the dependency graph.
fn canonical_json(value: &serde_json::Value, what: &str) -> Result<Vec<u8>, Error> {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for key in keys {
                    out.insert(key.clone(), sorted(&map[key]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sorted(value)).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC; proleptic Gregorian calendar).
pub fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let time = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// Writes `image` as an OCI image layout in `dir` (for `oras cp --from-oci-layout`, skopeo,
/// crane, or `docker load` through one of them), tagged `tag`.
pub fn write_layout(image: &Image, dir: &Path, tag: &str) -> Result<(), Error> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(Error::io(format!("creating {}", blobs.display())))?;
    for (digest, bytes) in [
        (&image.layer_digest, &image.layer),
        (&image.config_digest, &image.config),
        (&image.digest, &image.manifest),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        let path = blobs.join(hex);
        std::fs::write(&path, bytes).map_err(Error::io(format!("writing {}", path.display())))?;
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.digest,
            "size": image.manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    let write = |name: &str, bytes: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(Error::io(format!("writing {}", path.display())))
    };
    write("index.json", canonical_json(&index, "the layout index")?)?;
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())
}

/// How [`push`] reaches a registry.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Plain HTTP (a loopback test registry).
    pub plain_http: bool,
    /// User name and password; anonymous when `None`.
    pub credentials: Option<(String, String)>,
}

/// Pushes `image` to `reference` (`registry/repository:tag`): the blobs the registry lacks,
/// then the manifest, byte for byte as built. Returns the pushed manifest's digest.
pub async fn push(image: &Image, reference: &str, options: &PushOptions) -> Result<String, Error> {
    use oci_client::client::{ClientConfig, ClientProtocol};
    use oci_client::errors::OciDistributionError;
    use oci_client::secrets::RegistryAuth;

    let registry_error = |what: &str, e: OciDistributionError| -> Error {
        Error::Invalid(format!("{what} for {reference}: {e}"))
    };
    // reqwest is built without a rustls provider (as in the operator): ring is it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let parsed: oci_client::Reference = reference
        .parse()
        .map_err(|e| Error::Invalid(format!("{reference:?} is not an image reference: {e}")))?;
    let client = oci_client::Client::try_from(ClientConfig {
        protocol: if options.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..ClientConfig::default()
    })
    .map_err(|e| registry_error("creating the registry client", e))?;
    let auth = match &options.credentials {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    client
        .auth(&parsed, &auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| registry_error("authenticating", e))?;
    for (digest, bytes) in [
        (&image.layer_digest, &image.layer),
        (&image.config_digest, &image.config),
    ] {
        let present = client
            .blob_exists(&parsed, digest)
            .await
            .map_err(|e| registry_error("checking a blob", e))?;
        if !present {
            match client.push_blob(&parsed, bytes.clone(), digest).await {
                Ok(_) => {}
                // Some registries (go-containerregistry's) answer the final PUT without the
                // Location the spec asks for: what counts is that the blob is there now.
                Err(OciDistributionError::RegistryNoLocationError)
                    if client
                        .blob_exists(&parsed, digest)
                        .await
                        .map_err(|e| registry_error("checking a pushed blob", e))? => {}
                Err(e) => return Err(registry_error("pushing a blob", e)),
            }
        }
    }
    match client
        .push_manifest_raw(
            &parsed,
            image.manifest.clone(),
            http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
        )
        .await
    {
        Ok(_) | Err(OciDistributionError::RegistryNoLocationError) => {}
        Err(e) => return Err(registry_error("pushing the manifest", e)),
    }
    // The registry must now serve the manifest under the digest built here.
    let served = client
        .fetch_manifest_digest(&parsed, &auth)
        .await
        .map_err(|e| registry_error("reading back the manifest digest", e))?;
    if served != image.digest {
        return Err(Error::Invalid(format!(
            "{reference} resolves to {served} after the push, not {}",
            image.digest
        )));
    }
    tracing::info!(%reference, digest = %image.digest, "pushed image");
    Ok(image.digest.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
    use super::*;

    #[test]
    fn ldd_output_becomes_library_paths() {
        // One row per kind of ldd line.
        type Row = (
            &'static str,
            &'static str,
            Result<Vec<&'static str>, &'static str>,
        );
        let cases: &[Row] = &[
            (
                "the vDSO has no file and is skipped",
                "\tlinux-vdso.so.1 (0x00007ffd)\n",
                Ok(vec![]),
            ),
            (
                "a named library gives the path after =>",
                "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n",
                Ok(vec!["/lib/x86_64-linux-gnu/libc.so.6"]),
            ),
            (
                "the loader is listed by path alone",
                "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n",
                Ok(vec!["/lib64/ld-linux-x86-64.so.2"]),
            ),
            (
                "a library ldd cannot find fails the build",
                "\tlibssl.so.3 => not found\n",
                Err("libssl.so.3 not found"),
            ),
            (
                "a static binary needs nothing",
                "\tstatically linked\n",
                Ok(vec![]),
            ),
            (
                "a library listed twice is copied once, paths sorted",
                "libm.so.6 => /lib/x/libm.so.6 (0x1)\nlibc.so.6 => /lib/x/libc.so.6 (0x2)\nlibm.so.6 => /lib/x/libm.so.6 (0x3)\n",
                Ok(vec!["/lib/x/libc.so.6", "/lib/x/libm.so.6"]),
            ),
        ];
        for (rule, input, want) in cases {
            let got = parse_ldd(input);
            let want = want
                .clone()
                .map(|v| v.into_iter().map(PathBuf::from).collect::<Vec<_>>())
                .map_err(str::to_owned);
            assert_eq!(got, want, "{rule}");
        }
    }

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("/usr/local/bin/tool".to_owned(), b"binary".to_vec()),
            ("/lib64/ld.so".to_owned(), vec![7; 700]),
            ("/lib/x/libc.so.6".to_owned(), vec![1; 512]),
        ]
    }

    #[test]
    fn the_layer_is_sorted_owned_by_root_and_timestamped_as_asked() {
        let tar = layer_tar(&files(), 1_700_000_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.tar");
        std::fs::write(&path, &tar).unwrap();
        // GNU tar reads it back: names in order, numeric owner 0/0, the fixed mtime.
        let out = Command::new("tar")
            .args([
                "--list",
                "--verbose",
                "--numeric-owner",
                "--full-time",
                "-f",
            ])
            .arg(&path)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "lib/",
                "lib/x/",
                "lib/x/libc.so.6",
                "lib64/",
                "lib64/ld.so",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/tool"
            ]
        );
        for line in listing.lines() {
            assert!(line.contains(" 0/0 "), "owner: {line}");
            assert!(line.contains("2023-11-14 22:13:20"), "mtime: {line}");
        }
        assert!(
            listing.contains("-rwxr-xr-x 0/0             700"),
            "{listing}"
        );
    }

    #[test]
    fn the_same_files_give_the_same_bytes_in_any_order() {
        let mut reversed = files();
        reversed.reverse();
        let a = gzip(&layer_tar(&files(), 0).unwrap()).unwrap();
        let b = gzip(&layer_tar(&reversed, 0).unwrap()).unwrap();
        assert_eq!(sha256_digest(&a), sha256_digest(&b));
        // The gzip header has no timestamp (bytes 4..8) and an unknown OS (byte 9).
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[9], 255);
    }

    #[test]
    fn paths_that_are_not_files_are_refused() {
        for bad in ["/", "/usr/../etc/passwd", "/usr//x"] {
            assert!(layer_tar(&[(bad.to_owned(), vec![])], 0).is_err(), "{bad}");
        }
        let twice = vec![("/a/b".to_owned(), vec![1]), ("a/b".to_owned(), vec![2])];
        assert!(layer_tar(&twice, 0).is_err(), "the same path twice");
    }

    #[test]
    fn config_says_who_runs_what_and_where_it_came_from() {
        let spec = ImageSpec {
            binary: PathBuf::from("/nowhere"),
            name: "airssys-agent".to_owned(),
            version: "0.1.0".to_owned(),
            revision: "abc123".to_owned(),
            source: "https://github.com/airsstack/airssys-wasm".to_owned(),
            licenses: "Apache-2.0".to_owned(),
            created: 0,
        };
        let config: serde_json::Value =
            serde_json::from_slice(&config_json(&spec, "sha256:00", "x86_64").unwrap()).unwrap();
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/usr/local/bin/airssys-agent"])
        );
        assert_eq!(config["config"]["WorkingDir"], "/");
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.revision"], "abc123");
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(config["rootfs"]["diff_ids"], json!(["sha256:00"]));
    }

    #[test]
    fn rfc3339_of_known_instants() {
        for (seconds, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(seconds), text, "{seconds}");
        }
    }
}
