//! Origin signatures: who wrote a log entry, provable on every node it
//! reaches.
//!
//! Each node signs the log entries it writes with the Ed25519 key of its
//! node certificate (`tls/node.key`, issued by the cluster CA). Relays send
//! entries on unchanged, signature included, so a node that receives an
//! entry of origin X through Y checks X's signature, not Y's word: a relay
//! or a compromised peer cannot forge or alter another node's writes.
//!
//! An entry names the key that signed it (`key_id`: the first 8 bytes of
//! the SHA-256 of the public key). Certificates travel on the sync links
//! (`Msg::Keys`, before the first entry a link sends under a key) and are
//! kept in `_outpost_keys`, so a node can verify, and relay with proof,
//! entries whose origin it never talked to. A certificate is believed only
//! if the cluster CA signed it; the origin a key may sign for is derived
//! from the node id in that certificate.
//!
//! Rotation: `outpost init --force-cert` issues a new key; entries signed
//! with the old one stay valid (their certificate is kept). Revocation:
//! `sync.revoked_nodes` (every key of a node) and `sync.revoked_keys` (one
//! key, e.g. a stolen one after rotation) refuse entries signed by them.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::db::capture::LogEntry;

/// The algorithm identifier of Ed25519 keys (RFC 8410).
const OID_ED25519: &str = "1.3.101.112";
/// Domain separation: a signature over an entry is never valid for anything else.
const ENTRY_CONTEXT: &[u8] = b"outpost log entry v1\0";

/// Most certificates a node keeps (one or a few per node of the fleet).
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// Why an entry's signature is not accepted (the quarantine reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `signature` or `revoked`.
    pub code: &'static str,
    pub message: String,
}

/// The 8-byte id of a public key.
pub fn key_id(public: &VerifyingKey) -> u64 {
    let hash = Sha256::digest(public.as_bytes());
    u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// The bytes an entry's signature covers: everything it says.
pub fn signed_bytes(entry: &LogEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_CONTEXT.len() + 48 + entry.size());
    out.extend_from_slice(ENTRY_CONTEXT);
    for n in [entry.origin, entry.seq, entry.hlc, entry.key_id] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&entry.schema_version.to_be_bytes());
    for part in [entry.table.as_bytes(), entry.key.as_bytes(), &entry.update] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A certificate the CA signed, for an Ed25519 key.
#[derive(Debug, Clone)]
pub struct KnownKey {
    pub node_id: String,
    pub origin: u64,
    pub key: VerifyingKey,
    /// The certificate (DER), to send to peers.
    pub cert: Arc<Vec<u8>>,
}

/// This node's signing key, the certificates it knows, and the revocations.
pub struct KeyRing {
    signing: SigningKey,
    own_id: u64,
    ca: Vec<u8>,
    known: RwLock<HashMap<u64, KnownKey>>,
    revoked_nodes: HashSet<String>,
    revoked_keys: HashSet<u64>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("own_id", &format_args!("{:016x}", self.own_id))
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the node's key and certificate and the CA certificate (the
    /// sync TLS files). None when the node has no key: it has no sync
    /// either (sync requires these files), so it neither signs nor verifies.
    pub fn load(config: &crate::config::Config) -> Result<Option<Arc<KeyRing>>, KeyError> {
        let (ca, cert, key) = config.sync.tls_paths(&config.node.data_dir);
        if !key.exists() {
            return Ok(None);
        }
        let file = |path: &Path, reason: String| KeyError::File {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read_to_string(&key).map_err(|e| file(&key, e.to_string()))?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            file(
                &key,
                format!(
                    "not an Ed25519 private key ({e}); log entries are signed with the node key, \
                     so node certificates must be Ed25519: reissue this node's with \
                     `outpost init --ca-dir <CA dir> --force-cert`"
                ),
            )
        })?;
        let ca_der = first_cert(&ca).map_err(|reason| file(&ca, reason))?;
        let own_der = first_cert(&cert).map_err(|reason| file(&cert, reason))?;
        let sync = &config.sync;
        let mut revoked_keys = HashSet::new();
        for id in &sync.revoked_keys {
            let parsed = u64::from_str_radix(id, 16).map_err(|_| KeyError::File {
                path: "sync.revoked_keys".into(),
                reason: format!(
                    "{id:?} is not a key id (16 hex digits, as `outpost status` shows)"
                ),
            })?;
            revoked_keys.insert(parsed);
        }
        let ring = KeyRing {
            own_id: key_id(&signing.verifying_key()),
            signing,
            ca: ca_der,
            known: RwLock::new(HashMap::new()),
            revoked_nodes: sync.revoked_nodes.iter().cloned().collect(),
            revoked_keys,
        };
        let own = ring.learn(&own_der).map_err(|reason| file(&cert, reason))?;
        if own != ring.own_id {
            return Err(file(
                &cert,
                format!("does not match the private key {}", key.display()),
            ));
        }
        Ok(Some(Arc::new(ring)))
    }

    /// The id of the key this node signs with.
    pub fn own_key_id(&self) -> u64 {
        self.own_id
    }

    /// This node's own key and the node its certificate names.
    pub fn own_origin(&self) -> KnownKey {
        self.known.read()[&self.own_id].clone()
    }

    /// Signs an entry this node wrote.
    pub fn sign(&self, entry: &mut LogEntry) {
        entry.key_id = self.own_id;
        entry.signature = self.signing.sign(&signed_bytes(entry)).to_bytes().to_vec();
    }

    /// Checks a certificate (DER) and remembers its key: issued by the
    /// cluster CA, for an Ed25519 key, naming a node. Returns the key id.
    pub fn learn(&self, der: &[u8]) -> Result<u64, String> {
        let known = self.check_certificate(der)?;
        let id = key_id(&known.key);
        let mut keys = self.known.write();
        if !keys.contains_key(&id) && keys.len() >= MAX_KEYS {
            return Err(format!("already {MAX_KEYS} keys known"));
        }
        keys.insert(id, known);
        Ok(id)
    }

    fn check_certificate(&self, der: &[u8]) -> Result<KnownKey, String> {
        let (_, ca) = x509_parser::parse_x509_certificate(&self.ca)
            .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the certificate".into());
        }
        if cert.issuer() != ca.subject() {
            return Err(format!("issued by {}, not the cluster CA", cert.issuer()));
        }
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|e| format!("not signed by the cluster CA: {e}"))?;
        node_key(&cert, der)
    }
}

/// A node certificate's key and node id, not checked against any CA (the
/// key ring checks certificates again when it loads `_outpost_keys`).
/// `backup::restore` keeps the certificates segments carry this way.
pub fn parse_certificate(der: &[u8]) -> Result<KnownKey, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    node_key(&cert, der)
}

fn node_key(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    der: &[u8],
) -> Result<KnownKey, String> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != OID_ED25519 {
        return Err("not an Ed25519 key".into());
    }
    let bytes: [u8; 32] = spki.subject_public_key.data[..]
        .try_into()
        .map_err(|_| "an Ed25519 key is 32 bytes".to_string())?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|e| format!("bad Ed25519 key: {e}"))?;
    let node_id = super::tls::peer_node_id(der).ok_or("the certificate names no node")?;
    Ok(KnownKey {
        origin: crate::crdt::client_id_of(&node_id),
        node_id,
        key,
        cert: Arc::new(der.to_vec()),
    })
}

impl KeyRing {
    /// The certificate of a key, if known.
    pub fn certificate(&self, key_id: u64) -> Option<Arc<Vec<u8>>> {
        self.known.read().get(&key_id).map(|k| Arc::clone(&k.cert))
    }

    /// Every known key (for `_outpost_keys` and the status).
    pub fn known(&self) -> Vec<(u64, KnownKey)> {
        let keys = self.known.read();
        keys.iter().map(|(id, k)| (*id, k.clone())).collect()
    }

    /// Whether a node id is revoked (its links are refused too).
    pub fn is_revoked_node(&self, node_id: &str) -> bool {
        self.revoked_nodes.contains(node_id)
    }

    /// Checks that `entry` is signed by a key certified for its origin, and
    /// that neither the key nor its node is revoked.
    pub fn verify(&self, entry: &LogEntry) -> Result<(), Refusal> {
        let refuse = |message: String| {
            Err(Refusal {
                code: "signature",
                message,
            })
        };
        let known = self.known.read();
        let Some(key) = known.get(&entry.key_id) else {
            return refuse(format!(
                "signed with key {:016x}, which no certificate from the cluster CA vouches for",
                entry.key_id
            ));
        };
        if key.origin != entry.origin {
            return refuse(format!(
                "signed with the key of node {} but claims origin {}",
                key.node_id, entry.origin
            ));
        }
        let Ok(signature) = Signature::from_slice(&entry.signature) else {
            return refuse(format!(
                "the signature is {} bytes, not 64",
                entry.signature.len()
            ));
        };
        if key.key.verify(&signed_bytes(entry), &signature).is_err() {
            return refuse(format!(
                "the signature of node {} does not match the entry (altered or forged)",
                key.node_id
            ));
        }
        if self.revoked_nodes.contains(&key.node_id) {
            return Err(Refusal {
                code: "revoked",
                message: format!("node {} is in sync.revoked_nodes", key.node_id),
            });
        }
        if self.revoked_keys.contains(&entry.key_id) {
            return Err(Refusal {
                code: "revoked",
                message: format!(
                    "key {:016x} of node {} is in sync.revoked_keys",
                    entry.key_id, key.node_id
                ),
            });
        }
        Ok(())
    }
}

/// The first PEM certificate in a file, as DER.
fn first_cert(path: &Path) -> Result<Vec<u8>, String> {
    let certs = super::tls::load_certs(path).map_err(|e| e.to_string())?;
    Ok(certs[0].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> LogEntry {
        LogEntry {
            origin: 7,
            seq: 1,
            hlc: 9,
            table: "t".into(),
            key: "1".into(),
            schema_version: 1,
            update: vec![1, 2, 3],
            ..LogEntry::default()
        }
    }

    #[test]
    fn every_field_is_covered_by_the_signature() {
        let base = signed_bytes(&entry());
        type Change = Box<dyn Fn(&mut LogEntry)>;
        let changes: Vec<Change> = vec![
            Box::new(|e| e.origin += 1),
            Box::new(|e| e.seq += 1),
            Box::new(|e| e.hlc += 1),
            Box::new(|e| e.key_id += 1),
            Box::new(|e| e.schema_version += 1),
            Box::new(|e| e.table.push('x')),
            Box::new(|e| e.key.push('x')),
            Box::new(|e| e.update.push(0)),
            // Moving a byte from one field to the next changes the bytes.
            Box::new(|e| {
                e.table = "t1".into();
                e.key = String::new();
            }),
        ];
        for change in changes {
            let mut e = entry();
            change(&mut e);
            assert_ne!(signed_bytes(&e), base, "{e:?}");
        }
    }

    /// A node's data dir with a certificate from the CA in `ca`, and its ring.
    fn node(
        ca: &Path,
        root: &Path,
        node_id: &str,
        tweak: impl FnOnce(&mut crate::config::Config),
    ) -> Arc<KeyRing> {
        let mut config = crate::config::Config::default();
        config.node.data_dir = root.join(node_id);
        super::super::tls::issue_node_cert(
            ca,
            &config.node.data_dir.join("tls"),
            node_id,
            &[],
            false,
        )
        .unwrap();
        tweak(&mut config);
        KeyRing::load(&config).unwrap().expect("a node key")
    }

    fn signed_by(ring: &KeyRing, node_id: &str) -> LogEntry {
        let mut e = LogEntry {
            origin: crate::crdt::client_id_of(node_id),
            ..entry()
        };
        ring.sign(&mut e);
        e
    }

    fn code(result: Result<(), Refusal>) -> &'static str {
        match result {
            Ok(()) => "ok",
            Err(r) => r.code,
        }
    }

    #[test]
    fn entries_verify_only_with_their_origins_certified_key() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        super::super::tls::ensure_ca(&ca).unwrap();
        let a = node(&ca, tmp.path(), "a", |_| {});
        let b = node(&ca, tmp.path(), "b", |c| {
            c.sync.revoked_nodes = vec!["r".into()]
        });
        let from_a = signed_by(&a, "a");
        // B has never seen A's certificate.
        assert!(b
            .verify(&from_a)
            .unwrap_err()
            .message
            .contains("no certificate"));
        assert_eq!(
            b.learn(&a.certificate(a.own_key_id()).unwrap()),
            Ok(a.own_key_id())
        );
        assert_eq!(code(b.verify(&from_a)), "ok");
        // Any change to a signed entry breaks it.
        let mut altered = from_a.clone();
        altered.update.push(0);
        assert_eq!(code(b.verify(&altered)), "signature");
        let mut truncated = from_a.clone();
        truncated.signature.pop();
        assert_eq!(code(b.verify(&truncated)), "signature");
        // A's key cannot sign for another origin, even re-signed by A.
        let mut claims_b = LogEntry {
            origin: crate::crdt::client_id_of("b"),
            ..from_a.clone()
        };
        a.sign(&mut claims_b);
        assert!(b
            .verify(&claims_b)
            .unwrap_err()
            .message
            .contains("claims origin"));
        // A revoked node's entries are refused after their signature checks.
        let r = node(&ca, tmp.path(), "r", |_| {});
        b.learn(&r.certificate(r.own_key_id()).unwrap()).unwrap();
        assert_eq!(code(b.verify(&signed_by(&r, "r"))), "revoked");
    }

    #[test]
    fn rotation_keeps_old_entries_valid_and_revoked_keys_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        super::super::tls::ensure_ca(&ca).unwrap();
        let old = node(&ca, tmp.path(), "a", |_| {});
        let old_entry = signed_by(&old, "a");
        let dir = tmp.path().join("a").join("tls");
        super::super::tls::issue_node_cert(&ca, &dir, "a", &[], true).unwrap();
        let mut config = crate::config::Config::default();
        config.node.data_dir = tmp.path().join("a");
        let new = KeyRing::load(&config).unwrap().unwrap();
        assert_ne!(new.own_key_id(), old.own_key_id());
        let new_entry = signed_by(&new, "a");
        let old_cert = old.certificate(old.own_key_id()).unwrap();
        let new_cert = new.certificate(new.own_key_id()).unwrap();
        let b = node(&ca, tmp.path(), "b", |c| {
            c.sync.revoked_keys = vec![format!("{:016x}", old.own_key_id())]
        });
        b.learn(&old_cert).unwrap();
        b.learn(&new_cert).unwrap();
        assert_eq!(code(b.verify(&new_entry)), "ok");
        assert_eq!(code(b.verify(&old_entry)), "revoked");
        let c = node(&ca, tmp.path(), "c", |_| {});
        c.learn(&old_cert).unwrap();
        c.learn(&new_cert).unwrap();
        assert_eq!(
            code(c.verify(&old_entry)),
            "ok",
            "rotation without revocation"
        );
    }

    #[test]
    fn certificates_from_another_ca_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, other) = (tmp.path().join("ca"), tmp.path().join("other"));
        super::super::tls::ensure_ca(&ca).unwrap();
        super::super::tls::ensure_ca(&other).unwrap();
        let b = node(&ca, tmp.path(), "b", |_| {});
        let stranger = node(&other, tmp.path(), "x", |_| {});
        let cert = stranger.certificate(stranger.own_key_id()).unwrap();
        let refused = b.learn(&cert).unwrap_err();
        assert!(refused.contains("cluster CA"), "{refused}");
        assert!(b.learn(b"not a certificate").is_err());
    }
}
