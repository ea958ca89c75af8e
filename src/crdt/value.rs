//! SQL values inside CRDT documents, and row keys.
//!
//! yrs's own `Any` numbers cannot carry every SQLite value exactly (an
//! integer above 2^53 comes back as a float, an integral REAL as an
//! integer), so each value is stored in a small tagged binary form that
//! round-trips NULL, INTEGER (full i64), REAL (bit for bit), TEXT and BLOB.
//!
//! A row's key is the text SQLite's `quote()` gives for each primary-key
//! column, joined by commas (`1`, `'a''b',X'00FF'`, `1.5`). The capture
//! triggers compute it in SQL, so it is exact and the same on every node;
//! [`parse_key`] turns it back into values to find the row.

use libsql_sys::rusqlite::types::{ToSql, ToSqlOutput, ValueRef};

/// One SQLite value, compared exactly (REAL by its bits).
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Blob(a), Value::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed CRDT data: {0}")]
pub struct CodecError(pub String);

const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BLOB: u8 = 4;

impl Value {
    pub fn from_sql(value: ValueRef<'_>) -> Value {
        match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            // SQLite TEXT may hold invalid UTF-8; keep it lossless as far as
            // Rust strings allow (such bytes are replaced, and the check
            // command would report the row).
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(TAG_NULL),
            Value::Integer(i) => {
                out.push(TAG_INTEGER);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Real(r) => {
                out.push(TAG_REAL);
                out.extend_from_slice(&r.to_bits().to_be_bytes());
            }
            Value::Text(t) => {
                out.push(TAG_TEXT);
                put_bytes(out, t.as_bytes());
            }
            Value::Blob(b) => {
                out.push(TAG_BLOB);
                put_bytes(out, b);
            }
        }
    }

    pub fn decode(input: &mut &[u8]) -> Result<Value, CodecError> {
        Ok(match take_u8(input)? {
            TAG_NULL => Value::Null,
            TAG_INTEGER => Value::Integer(i64::from_be_bytes(take_array(input)?)),
            TAG_REAL => Value::Real(f64::from_bits(u64::from_be_bytes(take_array(input)?))),
            TAG_TEXT => Value::Text(
                String::from_utf8(take_bytes(input)?.to_vec())
                    .map_err(|_| CodecError("text is not UTF-8".into()))?,
            ),
            TAG_BLOB => Value::Blob(take_bytes(input)?.to_vec()),
            tag => return Err(CodecError(format!("unknown value tag {tag}"))),
        })
    }

    /// Bytes this value adds to an encoded document, roughly.
    pub fn size(&self) -> usize {
        match self {
            Value::Text(t) => t.len() + 5,
            Value::Blob(b) => b.len() + 5,
            _ => 9,
        }
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> libsql_sys::rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(crate) fn take_u8(input: &mut &[u8]) -> Result<u8, CodecError> {
    let (&first, rest) = input
        .split_first()
        .ok_or_else(|| CodecError("unexpected end".into()))?;
    *input = rest;
    Ok(first)
}

pub(crate) fn take_varint(input: &mut &[u8]) -> Result<u64, CodecError> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take_u8(input)?;
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(n);
        }
    }
    Err(CodecError("varint too long".into()))
}

pub(crate) fn take_array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], CodecError> {
    if input.len() < N {
        return Err(CodecError("unexpected end".into()));
    }
    let (head, rest) = input.split_at(N);
    *input = rest;
    Ok(head.try_into().expect("length checked"))
}

pub(crate) fn take_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    let len = take_varint(input)? as usize;
    if input.len() < len {
        return Err(CodecError("length past the end".into()));
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

/// Parses a row key (SQLite `quote()` literals joined by commas).
pub fn parse_key(key: &str) -> Result<Vec<Value>, CodecError> {
    let bad = |why: &str| CodecError(format!("row key {key:?}: {why}"));
    let mut values = Vec::new();
    let mut rest = key;
    loop {
        let (value, after) = parse_literal(rest).ok_or_else(|| bad("not a SQL literal"))?;
        values.push(value);
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None if after.is_empty() => return Ok(values),
            None => return Err(bad("junk after a literal")),
        }
    }
}

fn parse_literal(s: &str) -> Option<(Value, &str)> {
    if let Some(body) = s.strip_prefix('\'') {
        return parse_text(body);
    }
    if let Some(body) = s.strip_prefix("X'") {
        let end = body.find('\'')?;
        let hex = &body[..end];
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        return Some((Value::Blob(bytes), &body[end + 1..]));
    }
    if let Some(after) = s.strip_prefix("NULL") {
        return Some((Value::Null, after));
    }
    let end = s.find(',').unwrap_or(s.len());
    let token = &s[..end];
    let value = if token.contains(['.', 'e', 'E']) {
        Value::Real(token.parse().ok()?)
    } else {
        Value::Integer(token.parse().ok()?)
    };
    Some((value, &s[end..]))
}

fn parse_text(body: &str) -> Option<(Value, &str)> {
    let mut text = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            text.push(c);
            continue;
        }
        if body[i + 1..].starts_with('\'') {
            text.push('\'');
            chars.next();
        } else {
            return Some((Value::Text(text), &body[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_exactly() {
        let values = [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Integer((1 << 53) + 1),
            Value::Real(1.0),
            Value::Real(-0.0),
            Value::Real(f64::MIN_POSITIVE),
            Value::Real(f64::INFINITY),
            Value::Text("héllo 'x'".into()),
            Value::Text(String::new()),
            Value::Blob(vec![0, 255, 1]),
        ];
        for v in values {
            let mut buf = Vec::new();
            v.encode(&mut buf);
            let mut input = &buf[..];
            assert_eq!(Value::decode(&mut input).unwrap(), v);
            assert!(input.is_empty());
        }
        assert_ne!(Value::Real(0.0), Value::Real(-0.0));
        assert_ne!(Value::Integer(1), Value::Real(1.0));
    }

    #[test]
    fn parses_quote_literals() {
        assert_eq!(
            parse_key("1,'a''b',X'00FF',NULL,1.5,-9.0e+999").unwrap(),
            vec![
                Value::Integer(1),
                Value::Text("a'b".into()),
                Value::Blob(vec![0, 255]),
                Value::Null,
                Value::Real(1.5),
                Value::Real(f64::NEG_INFINITY),
            ]
        );
        assert_eq!(parse_key("'a,b'").unwrap(), vec![Value::Text("a,b".into())]);
        for bad in ["", "'open", "X'0'", "1 2", "abc", "1,"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sqlite_quote_output_parses_back_exactly() {
        let conn = libsql_sys::rusqlite::Connection::open_in_memory().unwrap();
        let cases = [
            "1",
            "-9223372036854775808",
            "0.1",
            "1e300",
            "1.0/3",
            "'x''y,'",
            "X'00ff10'",
            "9e999",
            "2.5e-310",
        ];
        for expr in cases {
            let (key, original): (String, Value) = conn
                .query_row(&format!("SELECT quote({expr}), {expr}"), [], |r| {
                    Ok((r.get(0)?, Value::from_sql(r.get_ref(1)?)))
                })
                .unwrap();
            assert_eq!(parse_key(&key).unwrap(), vec![original], "{expr} -> {key}");
        }
        // -0.0 quotes as 0.0: SQLite compares them equal, so as keys they are one row.
        let key: String = conn
            .query_row("SELECT quote(-0.0)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(key, "0.0");
    }
}
