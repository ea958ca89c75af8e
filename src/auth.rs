//! Client authentication: Ed25519-signed JWTs, as libSQL clients send them
//! (`Authorization: Bearer <jwt>` over HTTP, the `jwt` field of the Hrana
//! WebSocket `hello`).
//!
//! Claims follow libSQL's server: `a` is the access level (`"rw"` or `"ro"`),
//! `exp` (optional) the expiry in seconds since the epoch. outpost adds `t`
//! (optional): per-table rights, `{"tasks": "rw", "projects": "r"}`. Without
//! `t` a token reaches every table at level `a`; with `t` only the tables it
//! lists, each read (`r`) or read-write (`rw`), and `a = "ro"` still caps
//! them all to reading. Names compare ignoring ASCII case, as SQLite's do.
//! The SQL path checks these rights on every statement (`db::exec`), the
//! change feed on every subscription (`api::feed`).
//!
//! `outpost init` writes the key pair into `<data_dir>/keys/`; `outpost
//! token` signs tokens with the private key; the server only needs the
//! public key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
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

/// The most tables a `t` claim (or `outpost token --tables`) may list.
pub const MAX_TABLES: usize = 256;

/// The longest table name a `t` claim may hold, in bytes.
pub const MAX_TABLE_NAME: usize = 1024;

/// What a request may do. Cheap to clone (per-table rights are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every table, reading only (`a = "ro"`, no `t`).
    ReadOnly,
    /// Every table, and the schema (`a = "rw"` or no `a`, no `t`).
    ReadWrite,
    /// Only the tables of a `t` claim; never the schema.
    Tables(Arc<TableRights>),
}

impl Access {
    /// Whether the caller may read `table` (ASCII case ignored).
    pub fn may_read(&self, table: &str) -> bool {
        match self {
            Access::ReadOnly | Access::ReadWrite => true,
            Access::Tables(rights) => rights.level(table).is_some(),
        }
    }

    /// Whether the caller may insert, update or delete rows of `table`.
    pub fn may_write(&self, table: &str) -> bool {
        match self {
            Access::ReadOnly => false,
            Access::ReadWrite => true,
            Access::Tables(rights) => rights.level(table) == Some(Level::ReadWrite),
        }
    }

    /// The per-table rights, if the token has a `t` claim.
    pub fn tables(&self) -> Option<&TableRights> {
        match self {
            Access::Tables(rights) => Some(rights),
            _ => None,
        }
    }

    /// Whether the token is read-only (`a = "ro"`), with or without `t`.
    pub fn is_read_only(&self) -> bool {
        match self {
            Access::ReadOnly => true,
            Access::ReadWrite => false,
            Access::Tables(rights) => rights.read_only,
        }
    }
}

/// A table's level in a `t` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `"r"`: read.
    Read,
    /// `"rw"`: read, insert, update, delete.
    ReadWrite,
}

impl Level {
    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "r" => Some(Level::Read),
            "rw" => Some(Level::ReadWrite),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "r",
            Level::ReadWrite => "rw",
        }
    }
}

/// The tables a `t` claim lists, validated: at most [`MAX_TABLES`],
/// non-empty names, none twice (ignoring ASCII case). Levels are already
/// capped by `a`: under a read-only token every table is [`Level::Read`].
#[derive(Debug, PartialEq, Eq)]
pub struct TableRights {
    read_only: bool,
    /// ASCII-lowercased name → (name as given, level).
    tables: BTreeMap<String, (String, Level)>,
}

impl TableRights {
    /// Validates `entries`; the error says what is wrong (no prefix).
    pub fn new(
        read_only: bool,
        entries: impl IntoIterator<Item = (String, Level)>,
    ) -> Result<TableRights, String> {
        let mut tables = BTreeMap::new();
        for (name, level) in entries {
            if tables.len() >= MAX_TABLES {
                return Err(format!("lists more than {MAX_TABLES} tables"));
            }
            if name.is_empty() {
                return Err("has an empty table name".into());
            }
            if name.len() > MAX_TABLE_NAME {
                return Err(format!(
                    "has a table name longer than {MAX_TABLE_NAME} bytes"
                ));
            }
            let level = if read_only { Level::Read } else { level };
            if tables
                .insert(name.to_ascii_lowercase(), (name.clone(), level))
                .is_some()
            {
                return Err(format!(
                    "names table {name:?} twice (names ignore ASCII case)"
                ));
            }
        }
        Ok(TableRights { read_only, tables })
    }

    /// The level of `table`, None if the claim does not list it.
    pub fn level(&self, table: &str) -> Option<Level> {
        let found = match self.tables.get(table) {
            Some(entry) => Some(entry),
            None => self.tables.get(&table.to_ascii_lowercase()),
        };
        found.map(|(_, level)| *level)
    }

    /// Whether `a` is `"ro"`.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The listed tables as given, with their (capped) levels.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Level)> {
        self.tables
            .values()
            .map(|(name, level)| (name.as_str(), *level))
    }

    fn from_claim(read_only: bool, raw: &RawTables) -> Result<TableRights, String> {
        let entries = match raw {
            RawTables::Map(entries) => entries,
            RawTables::Other(kind) => {
                return Err(format!(
                    "must be an object of table names to \"r\" or \"rw\", not {kind}"
                ))
            }
        };
        if entries.len() > MAX_TABLES {
            return Err(format!("lists more than {MAX_TABLES} tables"));
        }
        let mut parsed = Vec::with_capacity(entries.len());
        for (name, value) in entries {
            let level = value.as_str().and_then(Level::parse).ok_or_else(|| {
                format!("gives table {name:?} the level {value}; use \"r\" or \"rw\"")
            })?;
            parsed.push((name.clone(), level));
        }
        TableRights::new(read_only, parsed)
    }

    fn to_claim(&self) -> RawTables {
        RawTables::Map(
            self.iter()
                .map(|(name, level)| (name.to_string(), level.as_str().into()))
                .collect(),
        )
    }
}

/// The `t` claim as the token holds it: every entry in order (a name given
/// twice stays twice, to be refused), or the JSON type it wrongly has.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTables {
    Map(Vec<(String, serde_json::Value)>),
    Other(&'static str),
}

impl Serialize for RawTables {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            RawTables::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (name, level) in entries {
                    map.serialize_entry(name, level)?;
                }
                map.end()
            }
            RawTables::Other(_) => serializer.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for RawTables {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawTables;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<RawTables, M::Error> {
                let mut entries = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    // Bounded here already: a huge claim is not kept.
                    if entries.len() > MAX_TABLES {
                        continue;
                    }
                    entries.push((name, value));
                }
                Ok(RawTables::Map(entries))
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<RawTables, S::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(RawTables::Other("an array"))
            }
            fn visit_unit<E>(self) -> Result<RawTables, E> {
                Ok(RawTables::Other("null"))
            }
            fn visit_none<E>(self) -> Result<RawTables, E> {
                Ok(RawTables::Other("null"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawTables, E> {
                Ok(RawTables::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<RawTables, E> {
                Ok(RawTables::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<RawTables, E> {
                Ok(RawTables::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawTables, E> {
                Ok(RawTables::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<RawTables, E> {
                Ok(RawTables::Other("a string"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `t` present (even as `null`) is `Some`: only an absent `t` means "every
/// table", so a `null` is refused rather than read as full access.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RawTables>, D::Error> {
    RawTables::deserialize(d).map(Some)
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
    /// Per-table rights: table name → "r" or "rw". Absent: every table.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub t: Option<RawTables>,
}

impl Claims {
    /// What the claims grant; the error is the 401's message.
    pub fn access(&self) -> Result<Access, String> {
        let read_only = match self.a.as_deref() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => return Err(format!("Invalid token: unknown access level {other:?}")),
        };
        match &self.t {
            None if read_only => Ok(Access::ReadOnly),
            None => Ok(Access::ReadWrite),
            Some(raw) => TableRights::from_claim(read_only, raw)
                .map(|rights| Access::Tables(Arc::new(rights)))
                .map_err(|why| format!("Invalid token: the \"t\" claim (per-table rights) {why}")),
        }
    }
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
        data.claims.access().map_err(ApiError::unauthorized)
    }
}

/// `outpost token --tables`: `NAME:rw` or `NAME:r` (a bare `NAME` is rw)
/// per item; `read_only` makes every table `r`.
pub fn parse_tables(read_only: bool, specs: &[String]) -> Result<Access, String> {
    let mut entries = Vec::with_capacity(specs.len());
    for spec in specs {
        let (name, level) = match spec.rsplit_once(':') {
            Some((name, level)) => {
                let level = Level::parse(level)
                    .ok_or_else(|| format!("{spec:?}: the level after ':' must be r or rw"))?;
                (name, level)
            }
            None => (spec.as_str(), Level::ReadWrite),
        };
        entries.push((name.trim().to_string(), level));
    }
    if entries.len() > MAX_TABLES {
        return Err(format!("at most {MAX_TABLES} tables"));
    }
    let rights = TableRights::new(read_only, entries).map_err(|e| format!("the list {e}"))?;
    Ok(Access::Tables(Arc::new(rights)))
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

/// Signs a token with the private key in `dir` granting `access`.
pub fn mint_token(
    dir: &Path,
    access: &Access,
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
        a: Some(if access.is_read_only() { "ro" } else { "rw" }.into()),
        iat: Some(now),
        exp: expires.map(|d| now + d.as_secs()),
        t: access.tables().map(TableRights::to_claim),
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
        let rw = mint_token(dir.path(), &Access::ReadWrite, None).unwrap();
        let ro = mint_token(dir.path(), &Access::ReadOnly, Some(Duration::from_secs(60))).unwrap();
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

    fn access_of(claims: serde_json::Value) -> Result<Access, String> {
        serde_json::from_value::<Claims>(claims).unwrap().access()
    }

    fn rights(access: &Access) -> &TableRights {
        access.tables().expect("per-table rights")
    }

    #[test]
    fn claims_without_t_keep_their_meaning() {
        use serde_json::json;
        assert_eq!(access_of(json!({})).unwrap(), Access::ReadWrite);
        assert_eq!(access_of(json!({"a": "rw"})).unwrap(), Access::ReadWrite);
        assert_eq!(access_of(json!({"a": "ro"})).unwrap(), Access::ReadOnly);
        let err = access_of(json!({"a": "admin"})).unwrap_err();
        assert!(err.contains("unknown access level"), "{err}");
        assert!(Access::ReadWrite.may_write("anything"));
        assert!(Access::ReadOnly.may_read("anything") && !Access::ReadOnly.may_write("x"));
    }

    #[test]
    fn table_claim_grants_listed_tables_ignoring_ascii_case() {
        use serde_json::json;
        let access = access_of(json!({"a": "rw", "t": {"tasks": "rw", "Projects": "r"}})).unwrap();
        assert!(access.may_read("tasks") && access.may_write("TASKS"));
        assert!(access.may_read("projects") && access.may_read("PROJECTS"));
        assert!(!access.may_write("projects"));
        assert!(!access.may_read("comments") && !access.may_write("comments"));
        assert!(!access.is_read_only());
        let listed: Vec<_> = rights(&access).iter().collect();
        assert_eq!(
            listed,
            [("Projects", Level::Read), ("tasks", Level::ReadWrite)]
        );

        // `a = "ro"` caps every table to reading.
        let ro = access_of(json!({"a": "ro", "t": {"tasks": "rw"}})).unwrap();
        assert!(ro.may_read("tasks") && !ro.may_write("tasks") && ro.is_read_only());
        assert_eq!(rights(&ro).level("tasks"), Some(Level::Read));

        // No `a`: read-write, as without `t`. An empty `t`: no table.
        assert!(access_of(json!({"t": {"x": "rw"}})).unwrap().may_write("x"));
        let none = access_of(json!({"t": {}})).unwrap();
        assert!(!none.may_read("x") && none.tables().is_some());
    }

    #[test]
    fn malformed_table_claims_are_refused_with_reasons() {
        use serde_json::json;
        let cases = [
            (json!({"t": null}), "not null"),
            (json!({"t": ["tasks"]}), "not an array"),
            (json!({"t": "tasks"}), "not a string"),
            (json!({"t": 1}), "not a number"),
            (json!({"t": true}), "not a boolean"),
            (json!({"t": {"tasks": "w"}}), "use \"r\" or \"rw\""),
            (json!({"t": {"tasks": 1}}), "the level 1"),
            (json!({"t": {"tasks": null}}), "the level null"),
            (json!({"t": {"": "r"}}), "empty table name"),
            (json!({"t": {"tasks": "r", "TASKS": "rw"}}), "twice"),
            (
                json!({"t": {"x".repeat(MAX_TABLE_NAME + 1): "r"}}),
                "longer than",
            ),
        ];
        for (claims, expected) in cases {
            let err = access_of(claims.clone()).unwrap_err();
            assert!(
                err.starts_with("Invalid token: the \"t\" claim"),
                "{claims}: {err}"
            );
            assert!(err.contains(expected), "{claims}: {err}");
        }
        // The same name twice in the JSON text is refused, not "last wins".
        let claims: Claims =
            serde_json::from_str(r#"{"t": {"tasks": "r", "tasks": "rw"}}"#).unwrap();
        assert!(claims.access().unwrap_err().contains("twice"));
    }

    #[test]
    fn table_claim_is_bounded() {
        let claim = |n: usize| {
            let t: serde_json::Map<String, serde_json::Value> =
                (0..n).map(|i| (format!("t{i}"), "r".into())).collect();
            serde_json::json!({ "t": t })
        };
        let at_bound = access_of(claim(MAX_TABLES)).unwrap();
        assert!(at_bound.may_read(&format!("t{}", MAX_TABLES - 1)));
        let err = access_of(claim(MAX_TABLES + 1)).unwrap_err();
        assert!(err.contains("more than 256 tables"), "{err}");
        let err = access_of(claim(10_000)).unwrap_err();
        assert!(err.contains("more than 256 tables"), "{err}");
    }

    #[test]
    fn cli_table_lists() {
        let specs = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        let access = parse_tables(false, &specs("tasks:rw,projects:r,notes")).unwrap();
        assert!(access.may_write("tasks") && access.may_write("notes"));
        assert!(access.may_read("projects") && !access.may_write("projects"));
        let ro = parse_tables(true, &specs("tasks:rw,projects")).unwrap();
        assert!(ro.is_read_only() && ro.may_read("tasks") && !ro.may_write("tasks"));
        let colon = parse_tables(false, &specs("a:b:r")).unwrap();
        assert!(colon.may_read("a:b") && !colon.may_write("a:b"));
        for (bad, why) in [
            ("tasks:w", "must be r or rw"),
            ("", "empty table name"),
            ("tasks,projects,", "empty table name"),
            (":r", "empty table name"),
            ("tasks,Tasks:r", "twice"),
        ] {
            let err = parse_tables(false, &specs(bad)).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let many: Vec<String> = (0..=MAX_TABLES).map(|i| format!("t{i}")).collect();
        assert!(parse_tables(false, &many).is_err());
    }

    #[test]
    fn table_tokens_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        generate_keys(dir.path()).unwrap();
        let auth = Authenticator::from_public_key_file(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        for read_only in [false, true] {
            let specs = ["Tasks:rw".to_string(), "projects:r".to_string()];
            let access = parse_tables(read_only, &specs).unwrap();
            let token = mint_token(dir.path(), &access, None).unwrap();
            assert_eq!(auth.authenticate_token(Some(&token)).unwrap(), access);
        }
    }

    #[test]
    fn rejects_missing_forged_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        generate_keys(dir.path()).unwrap();
        let auth = Authenticator::from_public_key_file(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(auth.authenticate_header(None).unwrap_err().status, 401);
        let other = tempfile::tempdir().unwrap();
        generate_keys(other.path()).unwrap();
        let forged = mint_token(other.path(), &Access::ReadWrite, None).unwrap();
        assert_eq!(
            auth.authenticate_token(Some(&forged)).unwrap_err().status,
            401
        );
        let expired = mint_token(dir.path(), &Access::ReadWrite, Some(Duration::ZERO)).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let err = auth.authenticate_token(Some(&expired)).unwrap_err();
        assert!(err.message.contains("expired"), "{}", err.message);
    }
}
