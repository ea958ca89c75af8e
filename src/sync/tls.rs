//! The cluster CA, node certificates and the mutual-TLS configs of the sync
//! listener and client.
//!
//! Every node of a cluster holds a certificate signed by the cluster CA; the
//! sync listener accepts only clients presenting such a certificate, and the
//! sync client trusts only servers presenting one. A node certificate names
//! its node in the CN and in a SAN URI `outpost-node:<node_id>`
//! ([`peer_node_id`] reads it back from a peer's certificate).
//!
//! Keys are ECDSA P-256. All crypto comes from rustls's `ring` provider,
//! passed explicitly: nothing here depends on a process-wide default provider.
//! Files are written to a temporary name and then linked (or renamed, when
//! overwriting) into place, so a file that exists is complete; private keys
//! are created with mode 0600 and their directories with 0700.

use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

/// File names inside a CA dir and a node's `<data_dir>/tls/`.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node.key";

/// The SAN URI scheme naming a node: `outpost-node:<node_id>`.
pub const NODE_URI_PREFIX: &str = "outpost-node:";

/// The only ALPN protocol the sync listener and client speak.
const ALPN: &[u8] = b"http/1.1";
const DAY_SECS: i64 = 24 * 3600;
/// Validity of a node certificate (10 years, capped at the CA's expiry).
const NODE_VALIDITY_SECS: i64 = 3652 * DAY_SECS;
/// Validity of a cluster CA: longer than any node certificate it signs.
const CA_VALIDITY_SECS: i64 = 2 * 3652 * DAY_SECS;
/// Certificates start an hour in the past, for clocks a little behind.
const BACKDATE_SECS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{} already exists (and differs); refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("{} exists but {} does not; restore or remove it", present.display(), missing.display())]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("invalid host {host:?} for the node certificate: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("invalid node id {0:?}: expected 1 to 64 characters among A-Z a-z 0-9 . _ -")]
    InvalidNodeId(String),
    #[error("cannot generate the {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("TLS config from {} and {}: {source}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("client certificate verifier for the CA in {}: {source}", ca.display())]
    Verifier {
        ca: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
}

/// Creates a cluster CA (self-signed, CA:true, ECDSA P-256) in `dir` unless
/// ca.pem+ca.key exist there; returns whether it created one. ca.key is
/// written with mode 0600. An existing CA is checked (parses, is a CA, the key
/// matches); a CA dir holding only one of the two files is an error.
pub fn ensure_ca(dir: &Path) -> Result<bool, TlsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            load_ca(dir)?;
            return Ok(false);
        }
        (true, false) => return Err(incomplete(&cert_path, &key_path)),
        // Another `outpost init` may be creating this CA right now: it links
        // the key first, then the certificate.
        (false, true) => {
            wait_for(&cert_path).map_err(|()| incomplete(&key_path, &cert_path))?;
            load_ca(dir)?;
            return Ok(false);
        }
        (false, false) => {}
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        TlsError::Generate {
            what: "CA key",
            source,
        }
    })?;
    let mut params = CertificateParams::default();
    let tag: [u8; 4] = rand::random();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("outpost cluster CA {}", hex(&tag)),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "outpost");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial());
    let now = unix_now();
    set_validity(
        &mut params,
        now - BACKDATE_SECS,
        now + CA_VALIDITY_SECS,
        dir,
    )?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsError::Generate {
            what: "CA certificate",
            source,
        })?;

    create_dir(dir)?;
    match write_file(&key_path, key.serialize_pem().as_bytes(), true, false) {
        Ok(()) => {}
        Err(TlsError::Exists { .. }) => {
            // Lost a race with another process creating the same CA.
            wait_for(&cert_path).map_err(|()| incomplete(&key_path, &cert_path))?;
            load_ca(dir)?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    write_file(&cert_path, cert.pem().as_bytes(), false, false)?;
    Ok(true)
}

/// Issues a node certificate signed by the CA in `ca_dir`: CN = node_id, SAN
/// DNS "localhost" + each of `hosts` (IP literals become IP SANs; 127.0.0.1
/// and ::1 are always included), plus a SAN URI `outpost-node:<node_id>`;
/// extended key usages serverAuth and clientAuth; valid 10 years (at most
/// until the CA expires). Writes node.pem, node.key (0600) and a copy of
/// ca.pem into `out_dir`.
///
/// Without `force` it overwrites nothing: if node.pem and node.key both exist
/// it does nothing; if only one of them exists, or out_dir's ca.pem differs
/// from the CA's, it is an error.
pub fn issue_node_cert(
    ca_dir: &Path,
    out_dir: &Path,
    node_id: &str,
    hosts: &[String],
    force: bool,
) -> Result<(), TlsError> {
    let valid_id = !node_id.is_empty()
        && node_id.len() <= 64
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid_id {
        return Err(TlsError::InvalidNodeId(node_id.to_string()));
    }
    let sans = node_sans(node_id, hosts)?;

    let cert_path = out_dir.join(NODE_CERT_FILE);
    let key_path = out_dir.join(NODE_KEY_FILE);
    let ca_copy = out_dir.join(CA_CERT_FILE);
    if !force {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => return Ok(()),
            (true, false) => return Err(incomplete(&cert_path, &key_path)),
            (false, true) => return Err(incomplete(&key_path, &cert_path)),
            (false, false) => {}
        }
    }
    let ca = load_ca(ca_dir)?;
    if !force && ca_copy.exists() && read(&ca_copy)? != ca.cert_pem {
        return Err(TlsError::Exists { path: ca_copy });
    }

    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|source| TlsError::Generate {
        what: "node key",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node_id.to_string());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "outpost");
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    let now = unix_now();
    let not_after = (now + NODE_VALIDITY_SECS).min(ca.not_after);
    set_validity(&mut params, now - BACKDATE_SECS, not_after, out_dir)?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| TlsError::Generate {
            what: "node certificate",
            source,
        })?;

    create_dir(out_dir)?;
    // ca.pem may be the CA itself (ca_dir == out_dir): overwriting it with
    // identical bytes is harmless.
    write_file(&ca_copy, &ca.cert_pem, false, true)?;
    // node.pem last: once it exists, the set is complete.
    write_file(&key_path, key.serialize_pem().as_bytes(), true, force)?;
    write_file(&cert_path, cert.pem().as_bytes(), false, force)?;
    Ok(())
}

/// The sync listener's config: presents the node certificate, REQUIRES a
/// client certificate chaining to the CA, ALPN `http/1.1`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let roots = root_store(ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            ca: ca.to_path_buf(),
            source,
        })?;
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let config_err = |source| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private)
        .map_err(config_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The sync client's config: presents the node certificate as client auth,
/// trusts ONLY the CA for the server (no webpki roots), ALPN `http/1.1`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let roots = root_store(ca)?;
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let config_err = |source| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private)
        .map_err(config_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The node id in a peer's end-entity certificate (DER): from the
/// `outpost-node:` SAN URI, else the subject CN; None if absent or if the
/// certificate does not parse.
pub fn peer_node_id(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
                    if !id.is_empty() {
                        return Some(id.to_string());
                    }
                }
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_string);
    cn
}

// ---------------------------------------------------------------------------

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA loaded from a CA dir, ready to sign.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: Vec<u8>,
    /// Unix seconds.
    not_after: i64,
}

fn load_ca(dir: &Path) -> Result<Ca, TlsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let cert_pem = read(&cert_path)?;
    let der = load_certs_from(&cert_path, &cert_pem)?.swap_remove(0);
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| invalid(&cert_path, format!("not a valid X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(invalid(
            &cert_path,
            "not a CA certificate (basicConstraints CA:true is missing)".into(),
        ));
    }
    let not_after = x509.validity().not_after.timestamp();
    let key_pem = String::from_utf8(read(&key_path)?)
        .map_err(|_| invalid(&key_path, "not a PEM file (not UTF-8)".into()))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| invalid(&key_path, format!("not a usable private key: {e}")))?;
    if key.der_bytes() != &x509.public_key().subject_public_key.data[..] {
        return Err(invalid(
            &key_path,
            format!("does not match the CA certificate {}", cert_path.display()),
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| invalid(&cert_path, format!("cannot sign with this CA: {e}")))?;
    Ok(Ca {
        issuer,
        cert_pem,
        not_after,
    })
}

/// The SANs of a node certificate: DNS localhost, IPs 127.0.0.1 and ::1, the
/// `hosts` (IP literals as IP SANs), the node URI; no duplicates.
fn node_sans(node_id: &str, hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    let mut sans: Vec<SanType> = Vec::new();
    let mut push = |san: SanType| {
        if !sans.contains(&san) {
            sans.push(san);
        }
    };
    let dns = |name: &str| -> Result<SanType, String> {
        DnsName::try_from(name).map_err(|e| e.to_string())?;
        Ia5String::try_from(name)
            .map(SanType::DnsName)
            .map_err(|e| e.to_string())
    };
    push(dns("localhost").expect("localhost is a DNS name"));
    push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    push(SanType::IpAddress(IpAddr::from([
        0u16, 0, 0, 0, 0, 0, 0, 1,
    ])));
    for host in hosts {
        let bare = host.trim();
        let unbracketed = bare
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(bare);
        let san = match unbracketed.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => dns(bare).map_err(|reason| TlsError::InvalidHost {
                host: host.clone(),
                reason: format!("neither an IP address nor a valid DNS name ({reason})"),
            })?,
        };
        push(san);
    }
    let uri = Ia5String::try_from(format!("{NODE_URI_PREFIX}{node_id}"))
        .map_err(|_| TlsError::InvalidNodeId(node_id.to_string()))?;
    push(SanType::URI(uri));
    Ok(sans)
}

fn root_store(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in load_certs(ca)? {
        roots.add(der).map_err(|e| TlsError::Invalid {
            path: ca.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// When the first certificate in `path` expires (Unix seconds).
pub(crate) fn not_after(path: &Path) -> Result<i64, TlsError> {
    let certs = load_certs(path)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&certs[0]).map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not an X.509 certificate: {e}"),
        })?;
    Ok(cert.validity().not_after.timestamp())
}

/// The PEM certificates in `path` (at least one).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_certs_from(path, &read(path)?)
}

fn load_certs_from(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_path_buf(),
            reason: "no PEM certificate (BEGIN CERTIFICATE) found".into(),
        });
    }
    Ok(certs)
}

/// The PEM private key in `path`.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    let invalid = |reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| invalid(format!("invalid PEM: {e}")))?
        .ok_or_else(|| invalid("no PEM private key found".into()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn incomplete(present: &Path, missing: &Path) -> TlsError {
    TlsError::Incomplete {
        present: present.to_path_buf(),
        missing: missing.to_path_buf(),
    }
}

/// Waits up to 2 s for `path` to appear (another process finishing a write).
fn wait_for(path: &Path) -> Result<(), ()> {
    for _ in 0..40 {
        if path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| TlsError::Io {
        op: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600 if
/// `private`), then moves it into place: replacing `path` if `overwrite`,
/// else only if `path` does not exist (hard link: atomic, exclusive);
/// identical bytes already in place count as written.
fn write_file(path: &Path, bytes: &[u8], private: bool, overwrite: bool) -> Result<(), TlsError> {
    let io = |op, source| TlsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        hex(&rand::random::<[u8; 4]>())
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", e));
    }
    let placed = if overwrite {
        std::fs::rename(&tmp, path)
    } else {
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return match std::fs::read(path) {
                    Ok(existing) if existing == bytes => Ok(()),
                    _ => Err(TlsError::Exists {
                        path: path.to_path_buf(),
                    }),
                };
            }
            other => other,
        }
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", e));
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Sets the validity of `params` (Unix seconds); `dir` names the directory
/// the certificate is for, in the (theoretical) out-of-range error.
fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
    dir: &Path,
) -> Result<(), TlsError> {
    let at = |secs| {
        x509_parser::time::ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|e| TlsError::Invalid {
                path: dir.to_path_buf(),
                reason: format!("certificate validity out of range: {e}"),
            })
    };
    params.not_before = at(not_before)?;
    params.not_after = at(not_after)?;
    Ok(())
}

/// A random positive serial number (RFC 5280: at most 20 octets).
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans_of(der: &[u8]) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::URI(u) => format!("uri:{u}"),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => format!("ip:{}", IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap())),
                    _ => format!("ip:{}", IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap())),
                },
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn node_der(dir: &Path) -> Vec<u8> {
        load_certs(&dir.join(NODE_CERT_FILE)).unwrap()[0].to_vec()
    }

    #[test]
    fn ensure_ca_creates_once_and_checks_what_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        assert!(ensure_ca(&ca).unwrap());
        let pem = std::fs::read(ca.join(CA_CERT_FILE)).unwrap();
        assert!(!ensure_ca(&ca).unwrap());
        assert_eq!(std::fs::read(ca.join(CA_CERT_FILE)).unwrap(), pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&ca.join(CA_KEY_FILE)), 0o600);
            assert_eq!(mode(&ca), 0o700);
        }
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(&ca).unwrap().count(), 2);

        std::fs::write(ca.join(CA_CERT_FILE), "garbage").unwrap();
        let err = ensure_ca(&ca).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("no PEM certificate"),
            "{err}"
        );

        std::fs::remove_file(ca.join(CA_KEY_FILE)).unwrap();
        let err = ensure_ca(&ca).unwrap_err();
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn a_ca_key_that_does_not_match_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        ensure_ca(&a).unwrap();
        ensure_ca(&b).unwrap();
        std::fs::copy(b.join(CA_KEY_FILE), a.join(CA_KEY_FILE)).unwrap();
        let err = ensure_ca(&a).unwrap_err().to_string();
        assert!(
            err.contains("ca.key") && err.contains("does not match"),
            "{err}"
        );
        let out = tmp.path().join("out");
        let err = issue_node_cert(&a, &out, "n1", &[], false).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(!out.exists(), "nothing written on error");
    }

    #[test]
    fn node_certificate_names_the_node() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, out) = (tmp.path().join("ca"), tmp.path().join("out"));
        ensure_ca(&ca).unwrap();
        let hosts = [
            "node1.example".to_string(),
            "10.1.2.3".to_string(),
            "[fd00::7]".to_string(),
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ];
        issue_node_cert(&ca, &out, "abc123", &hosts, false).unwrap();
        let der = node_der(&out);
        assert_eq!(
            sans_of(&der),
            [
                "dns:localhost",
                "ip:127.0.0.1",
                "ip:::1",
                "dns:node1.example",
                "ip:10.1.2.3",
                "ip:fd00::7",
                "uri:outpost-node:abc123",
            ]
        );
        assert_eq!(peer_node_id(&der).as_deref(), Some("abc123"));

        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "abc123");
        let years = (cert.validity().not_after.timestamp() - unix_now()) / (365 * DAY_SECS);
        assert_eq!(years, 10);
        assert_eq!(
            std::fs::read(out.join(CA_CERT_FILE)).unwrap(),
            std::fs::read(ca.join(CA_CERT_FILE)).unwrap()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(out.join(NODE_KEY_FILE)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn issuing_overwrites_nothing_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, other, out) = (
            tmp.path().join("ca"),
            tmp.path().join("other"),
            tmp.path().join("out"),
        );
        ensure_ca(&ca).unwrap();
        ensure_ca(&other).unwrap();
        issue_node_cert(&ca, &out, "n1", &[], false).unwrap();
        let first = std::fs::read(out.join(NODE_CERT_FILE)).unwrap();
        // Complete: nothing to do, even with another CA.
        issue_node_cert(&other, &out, "n1", &[], false).unwrap();
        assert_eq!(std::fs::read(out.join(NODE_CERT_FILE)).unwrap(), first);
        // Incomplete: an error naming both files.
        std::fs::remove_file(out.join(NODE_CERT_FILE)).unwrap();
        let err = issue_node_cert(&ca, &out, "n1", &[], false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("node.key") && msg.contains("node.pem"),
            "{msg}"
        );
        // A ca.pem from another CA is not replaced.
        std::fs::remove_file(out.join(NODE_KEY_FILE)).unwrap();
        let err = issue_node_cert(&other, &out, "n1", &[], false).unwrap_err();
        assert!(matches!(err, TlsError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        // With force: reissued by the other CA.
        issue_node_cert(&other, &out, "n1", &[], true).unwrap();
        assert_eq!(
            std::fs::read(out.join(CA_CERT_FILE)).unwrap(),
            std::fs::read(other.join(CA_CERT_FILE)).unwrap()
        );
        assert_ne!(std::fs::read(out.join(NODE_CERT_FILE)).unwrap(), first);
        // The CA dir may be the output dir.
        issue_node_cert(&ca, &ca, "n2", &[], false).unwrap();
        assert_eq!(peer_node_id(&node_der(&ca)).as_deref(), Some("n2"));
    }

    #[test]
    fn bad_hosts_and_node_ids_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, out) = (tmp.path().join("ca"), tmp.path().join("out"));
        ensure_ca(&ca).unwrap();
        for host in ["bad host", "", "exa mple.com", "ünïcode.example"] {
            let err = issue_node_cert(&ca, &out, "n1", &[host.to_string()], false).unwrap_err();
            assert!(matches!(err, TlsError::InvalidHost { .. }), "{host}: {err}");
        }
        for id in ["", "a b", "x/y", &"a".repeat(65)] {
            let err = issue_node_cert(&ca, &out, id, &[], false).unwrap_err();
            assert!(matches!(err, TlsError::InvalidNodeId(_)), "{id}: {err}");
        }
        assert!(!out.exists());
    }

    #[test]
    fn peer_node_id_falls_back_to_the_cn() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "cn-node");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(peer_node_id(cert.der()).as_deref(), Some("cn-node"));

        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(peer_node_id(cert.der()), None);
        assert_eq!(peer_node_id(b"not a certificate"), None);
    }

    #[test]
    fn configs_load_and_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, out) = (tmp.path().join("ca"), tmp.path().join("out"));
        ensure_ca(&ca).unwrap();
        issue_node_cert(&ca, &out, "n1", &[], false).unwrap();
        let (ca_pem, cert, key) = (
            out.join(CA_CERT_FILE),
            out.join(NODE_CERT_FILE),
            out.join(NODE_KEY_FILE),
        );
        let server = server_config(&ca_pem, &cert, &key).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let client = client_config(&ca_pem, &cert, &key).unwrap();
        assert_eq!(client.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let missing = out.join("missing.pem");
        let err = server_config(&missing, &cert, &key)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("missing.pem"),
            "{err}"
        );
        let err = client_config(&ca_pem, &cert, &cert)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node.pem") && err.contains("no PEM private key"),
            "{err}"
        );
        let err = client_config(&ca_pem, &key, &key).unwrap_err().to_string();
        assert!(
            err.contains("node.key") && err.contains("no PEM certificate"),
            "{err}"
        );
        // A key that is not the certificate's.
        let other = tmp.path().join("other");
        issue_node_cert(&ca, &other, "n2", &[], false).unwrap();
        let err = server_config(&ca_pem, &cert, &other.join(NODE_KEY_FILE));
        assert!(err.is_err(), "mismatched key accepted");
    }
}
