//! Client authentication: Ed25519-signed JWTs, as libSQL clients send them
//! (`Authorization: Bearer <jwt>` over HTTP, the `jwt` field of the Hrana
//! WebSocket `hello`).
//!
//! Claims follow libSQL's server: `a` is the access level (`"rw"` or `"ro"`),
//! `exp` (optional) the expiry in seconds since the epoch. `outpost init`
//! writes the key pair into `<data_dir>/keys/`; `outpost token` signs tokens
//! with the private key; the server only needs the public key.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

pub const PRIVATE_KEY_FILE: &str = "jwt.key.pem";
pub const PUBLIC_KEY_FILE: &str = "jwt.pub.pem";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid key {path}: {message}")]
    Invalid { path: String, message: String },
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Access level: "rw" or "ro".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Verifies client tokens. Without a key every request has full access
/// (the server refuses to listen beyond loopback in that case).
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Authenticator {
    pub fn disabled() -> Self {
        Self {
            key: None,
            validation: Validation::new(Algorithm::EdDSA),
        }
    }

    pub fn from_public_key_file(path: &Path) -> Result<Self, KeyError> {
        let text = String::from_utf8_lossy(&read_key(path)?).into_owned();
        let invalid = |message: String| invalid_key(path, message);
        let trimmed = text.trim();
        // PEM (SPKI) as `outpost init` writes it, or a bare base64url key as
        // libSQL's server accepts it.
        let key = if trimmed.starts_with("-----BEGIN") {
            DecodingKey::from_ed_pem(trimmed.as_bytes()).map_err(|e| invalid(e.to_string()))?
        } else {
            DecodingKey::from_ed_components(trimmed).map_err(|e| invalid(e.to_string()))?
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        // Tokens are minted by the operator for this fleet; no skew allowance,
        // so an expired token is refused the second it expires.
        validation.leeway = 0;
        Ok(Self {
            key: Some(key),
            validation,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate_header(&self, header: Option<&str>) -> Result<Access, ApiError> {
        if self.key.is_none() {
            return Ok(Access::ReadWrite);
        }
        let header = header.ok_or_else(|| {
            ApiError::unauthorized("Authentication required: send `Authorization: Bearer <token>`")
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("The Authorization header must be `Bearer <token>`")
            })?;
        self.authenticate_token(Some(token.trim()))
    }

    /// Checks a bare token (the WebSocket `hello` carries one).
    pub fn authenticate_token(&self, token: Option<&str>) -> Result<Access, ApiError> {
        let Some(key) = &self.key else {
            return Ok(Access::ReadWrite);
        };
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authentication required: no token given"))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        ApiError::unauthorized("The token has expired")
                    }
                    _ => ApiError::unauthorized(format!("Invalid token: {e}")),
                }
            })?;
        match data.claims.a.as_deref() {
            None | Some("rw") => Ok(Access::ReadWrite),
            Some("ro") => Ok(Access::ReadOnly),
            Some(other) => Err(ApiError::unauthorized(format!(
                "Invalid token: unknown access level {other:?}"
            ))),
        }
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid_key(path: &Path, message: String) -> KeyError {
    KeyError::Invalid {
        path: path.display().to_string(),
        message,
    }
}

/// Creates the key pair in `dir` unless it exists. Returns true if created.
pub fn generate_keys(dir: &Path) -> Result<bool, KeyError> {
    let private = dir.join(PRIVATE_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    if private.exists() && public.exists() {
        return Ok(false);
    }
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| KeyError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let invalid = |message: String| invalid_key(dir, message);
    let private_pem = signing
        .to_pkcs8_pem(Default::default())
        .map_err(|e| invalid(e.to_string()))?;
    let public_pem = signing
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| invalid(e.to_string()))?;
    write_private(&private, private_pem.as_bytes()).map_err(write_err(&private))?;
    std::fs::write(&public, public_pem.as_bytes()).map_err(write_err(&public))?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Signs a token with the private key in `dir`.
pub fn mint_token(
    dir: &Path,
    access: Access,
    expires: Option<Duration>,
) -> Result<String, KeyError> {
    let path = dir.join(PRIVATE_KEY_FILE);
    let pem = read_key(&path)?;
    let invalid = |message: String| invalid_key(&path, message);
    let key = EncodingKey::from_ed_pem(&pem).map_err(|e| invalid(e.to_string()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        a: Some(match access {
            Access::ReadOnly => "ro".into(),
            Access::ReadWrite => "rw".into(),
        }),
        iat: Some(now),
        exp: expires.map(|d| now + d.as_secs()),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key)
        .map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(generate_keys(dir.path()).unwrap());
        assert!(
            !generate_keys(dir.path()).unwrap(),
            "second init keeps the keys"
        );
        let auth = Authenticator::from_public_key_file(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        let rw = mint_token(dir.path(), Access::ReadWrite, None).unwrap();
        let ro = mint_token(dir.path(), Access::ReadOnly, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(
            auth.authenticate_token(Some(&rw)).unwrap(),
            Access::ReadWrite
        );
        assert_eq!(
            auth.authenticate_header(Some(&format!("Bearer {ro}")))
                .unwrap(),
            Access::ReadOnly
        );
    }

    #[test]
    fn rejects_missing_forged_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        generate_keys(dir.path()).unwrap();
        let auth = Authenticator::from_public_key_file(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(auth.authenticate_header(None).unwrap_err().status, 401);
        let other = tempfile::tempdir().unwrap();
        generate_keys(other.path()).unwrap();
        let forged = mint_token(other.path(), Access::ReadWrite, None).unwrap();
        assert_eq!(
            auth.authenticate_token(Some(&forged)).unwrap_err().status,
            401
        );
        let expired = mint_token(dir.path(), Access::ReadWrite, Some(Duration::ZERO)).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let err = auth.authenticate_token(Some(&expired)).unwrap_err();
        assert!(err.message.contains("expired"), "{}", err.message);
    }
}
