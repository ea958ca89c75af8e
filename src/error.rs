//! Errors that cross module boundaries, each with a stable string `code`.
//!
//! Two layers exist on purpose:
//! - [`SqlError`]: a statement failed (bad SQL, constraint, authorization).
//!   Hrana reports these in-band, inside the pipeline result, exactly like
//!   libSQL's server does, so clients raise them as `LibsqlError`s.
//! - [`ApiError`]: the request itself cannot be served (bad JSON, bad token,
//!   forged baton, limit exceeded, overload). These become HTTP 4xx/5xx
//!   responses with a JSON body `{"message": .., "code": ..}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use libsql_sys::rusqlite;

/// A statement-level failure reported inside a Hrana result.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub code: String,
    pub message: String,
}

impl SqlError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn to_hrana(&self) -> libsql_hrana::proto::Error {
        libsql_hrana::proto::Error {
            message: self.message.clone(),
            code: self.code.clone(),
        }
    }
}

impl From<rusqlite::Error> for SqlError {
    fn from(err: rusqlite::Error) -> Self {
        match &err {
            rusqlite::Error::SqliteFailure(ffi, msg) => {
                let detail = msg.clone().unwrap_or_else(|| ffi.to_string());
                SqlError::new(
                    sqlite_code_name(ffi.code),
                    format!("SQLite error: {detail}"),
                )
            }
            rusqlite::Error::SqlInputError { error, msg, .. } => {
                SqlError::new(sqlite_code_name(error.code), format!("SQLite error: {msg}"))
            }
            rusqlite::Error::InvalidParameterName(name) => SqlError::new(
                "ARGS_INVALID",
                format!("Unknown named parameter {name:?} in the statement"),
            ),
            rusqlite::Error::InvalidParameterCount(given, expected) => SqlError::new(
                "ARGS_INVALID",
                format!("The statement expects {expected} arguments but {given} were given"),
            ),
            rusqlite::Error::MultipleStatement => SqlError::new(
                "SQL_MANY_STATEMENTS",
                "SQL string contains more than one statement",
            ),
            other => SqlError::new("SQLITE_UNKNOWN", format!("SQLite error: {other}")),
        }
    }
}

/// The names libSQL's server (sqld) uses for SQLite result codes, so that
/// clients matching on `code` see the same strings from outpost.
fn sqlite_code_name(code: rusqlite::ErrorCode) -> &'static str {
    use rusqlite::ErrorCode as C;
    match code {
        C::InternalMalfunction => "SQLITE_INTERNAL",
        C::PermissionDenied => "SQLITE_PERM",
        C::OperationAborted => "SQLITE_ABORT",
        C::DatabaseBusy => "SQLITE_BUSY",
        C::DatabaseLocked => "SQLITE_LOCKED",
        C::OutOfMemory => "SQLITE_NOMEM",
        C::ReadOnly => "SQLITE_READONLY",
        C::OperationInterrupted => "SQLITE_INTERRUPT",
        C::SystemIoFailure => "SQLITE_IOERR",
        C::DatabaseCorrupt => "SQLITE_CORRUPT",
        C::NotFound => "SQLITE_NOTFOUND",
        C::DiskFull => "SQLITE_FULL",
        C::CannotOpen => "SQLITE_CANTOPEN",
        C::FileLockingProtocolFailed => "SQLITE_PROTOCOL",
        C::SchemaChanged => "SQLITE_SCHEMA",
        C::TooBig => "SQLITE_TOOBIG",
        C::ConstraintViolation => "SQLITE_CONSTRAINT",
        C::TypeMismatch => "SQLITE_MISMATCH",
        C::ApiMisuse => "SQLITE_MISUSE",
        C::NoLargeFileSupport => "SQLITE_NOLFS",
        C::AuthorizationForStatementDenied => "SQLITE_AUTH",
        C::ParameterOutOfRange => "SQLITE_RANGE",
        C::NotADatabase => "SQLITE_NOTADB",
        _ => "SQLITE_UNKNOWN",
    }
}

/// A request that cannot be served as a whole.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AUTH_FAILED", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    pub fn overloaded(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "message": self.message, "code": self.code, "error": self.message })
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(self.body())
    }
}
