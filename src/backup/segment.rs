//! Log segments: a run of change-log entries as one object, compressed and
//! checksummed. Pure encoding, no I/O.
//!
//! ```text
//! "OPSEG\x01\0\0"                8 bytes, magic and format version
//! header length                  u32, little-endian
//! header                         JSON (`SegmentHeader`), readable without decompressing
//! body                           zstd( sync message `Keys` ++ sync message `Entries` ),
//!                                each prefixed by its u32 length
//! SHA-256                        32 bytes, over everything before it
//! ```
//!
//! The body reuses the sync wire codec (`sync::proto`): an entry in a
//! segment is byte for byte what a peer would receive, signature included,
//! and the certificates of the keys that signed them travel along, so a
//! restored node can prove every entry to its peers.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::capture::LogEntry;
use crate::sync::proto::Msg;
use crate::sync::vv::VersionVector;

const MAGIC: &[u8; 8] = b"OPSEG\x01\0\0";
const DIGEST_LEN: usize = 32;
/// A header larger than this is not one of ours.
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// What a segment holds, readable before its body is decompressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Its place in the node's sequence of segments (0, 1, 2, ...).
    pub index: u64,
    /// The node that shipped it.
    pub node_id: String,
    /// The entries are those above `from` up to `to`, per origin.
    pub from: VersionVector,
    pub to: VersionVector,
    pub entries: u64,
    /// The entries' hybrid-clock stamps, lowest and highest.
    pub min_hlc: u64,
    pub max_hlc: u64,
    /// The body's size once decompressed.
    pub raw_bytes: u64,
    pub created_ms: u64,
}

/// A decoded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub header: SegmentHeader,
    /// DER certificates of the keys that signed the entries.
    pub certs: Vec<Vec<u8>>,
    /// Origin by origin, each in seq order.
    pub entries: Vec<LogEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("checksum mismatch: the object is corrupt or was altered")]
    Checksum,
    #[error("not an outpost log segment ({0})")]
    Format(String),
}

/// Encodes a segment; `level` is the zstd level.
pub fn encode(segment: &Segment, level: i32) -> Vec<u8> {
    let mut body = Vec::new();
    for msg in [
        Msg::Keys(segment.certs.clone()),
        Msg::Entries(segment.entries.clone()),
    ] {
        let bytes = msg.encode();
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(&bytes);
    }
    let mut header = segment.header.clone();
    header.raw_bytes = body.len() as u64;
    let header = serde_json::to_vec(&header).expect("a header serializes");
    let compressed = zstd::bulk::compress(&body, level).expect("zstd compresses in memory");
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + compressed.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&compressed);
    seal(out)
}

/// Appends the SHA-256 trailer to a segment's content.
pub fn seal(mut content: Vec<u8>) -> Vec<u8> {
    let digest = Sha256::digest(&content);
    content.extend_from_slice(&digest);
    content
}

/// Checks the checksum and reads the header only.
pub fn read_header(bytes: &[u8]) -> Result<(SegmentHeader, &[u8]), SegmentError> {
    if bytes.len() < MAGIC.len() + 4 + DIGEST_LEN {
        return Err(SegmentError::Format(format!(
            "{} bytes: too short",
            bytes.len()
        )));
    }
    let (content, digest) = bytes.split_at(bytes.len() - DIGEST_LEN);
    if Sha256::digest(content)[..] != *digest {
        return Err(SegmentError::Checksum);
    }
    if &content[..MAGIC.len()] != MAGIC {
        return Err(SegmentError::Format("wrong magic or format version".into()));
    }
    let rest = &content[MAGIC.len()..];
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let rest = &rest[4..];
    if len > MAX_HEADER_BYTES || len > rest.len() {
        return Err(SegmentError::Format(format!("header length {len}")));
    }
    let header: SegmentHeader = serde_json::from_slice(&rest[..len])
        .map_err(|e| SegmentError::Format(format!("header: {e}")))?;
    Ok((header, &rest[len..]))
}

/// Decodes a whole segment, refusing one whose body decompresses to more
/// than `max_raw_bytes`.
pub fn decode(bytes: &[u8], max_raw_bytes: usize) -> Result<Segment, SegmentError> {
    let (header, compressed) = read_header(bytes)?;
    if header.raw_bytes as usize > max_raw_bytes {
        return Err(SegmentError::Format(format!(
            "body of {} bytes exceeds the limit of {max_raw_bytes}",
            header.raw_bytes
        )));
    }
    let body = zstd::bulk::decompress(compressed, header.raw_bytes as usize)
        .map_err(|e| SegmentError::Format(format!("body: {e}")))?;
    let mut rest = &body[..];
    let mut next = || -> Result<Msg, SegmentError> {
        if rest.len() < 4 {
            return Err(SegmentError::Format("body truncated".into()));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() < 4 + len {
            return Err(SegmentError::Format("body truncated".into()));
        }
        let msg = Msg::decode(&rest[4..4 + len]).map_err(|e| SegmentError::Format(e.0))?;
        rest = &rest[4 + len..];
        Ok(msg)
    };
    let (Msg::Keys(certs), Msg::Entries(entries)) = (next()?, next()?) else {
        return Err(SegmentError::Format("body is not keys then entries".into()));
    };
    if entries.len() as u64 != header.entries {
        return Err(SegmentError::Format(format!(
            "header says {} entries, body has {}",
            header.entries,
            entries.len()
        )));
    }
    Ok(Segment {
        header,
        certs,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Segment {
        let entries: Vec<LogEntry> = (1..=50)
            .map(|seq| LogEntry {
                origin: 7,
                seq,
                hlc: seq << 16,
                table: "t".into(),
                key: format!("{seq}"),
                schema_version: 1,
                update: vec![seq as u8; 40],
                key_id: 9,
                signature: vec![1; 64],
            })
            .collect();
        let mut to = VersionVector::new();
        to.observe(7, 50);
        Segment {
            header: SegmentHeader {
                index: 3,
                node_id: "n".into(),
                from: VersionVector::new(),
                to,
                entries: 50,
                min_hlc: 1 << 16,
                max_hlc: 50 << 16,
                raw_bytes: 0,
                created_ms: 1,
            },
            certs: vec![vec![0x30, 1, 2]],
            entries,
        }
    }

    #[test]
    fn round_trips_and_compresses() {
        let segment = sample();
        let bytes = encode(&segment, 3);
        let back = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(back.entries, segment.entries);
        assert_eq!(back.certs, segment.certs);
        assert_eq!(back.header.to, segment.header.to);
        assert!(back.header.raw_bytes as usize > bytes.len(), "compressed");
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let bytes = encode(&sample(), 3);
        for at in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert_eq!(
                decode(&bad, 1 << 20),
                Err(SegmentError::Checksum),
                "byte {at}"
            );
        }
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1], 1 << 20),
            Err(SegmentError::Checksum)
        ));
        assert!(matches!(
            decode(b"short", 1 << 20),
            Err(SegmentError::Format(_))
        ));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_before_decompressing() {
        let bytes = encode(&sample(), 3);
        assert!(matches!(decode(&bytes, 100), Err(SegmentError::Format(_))));
    }
}
