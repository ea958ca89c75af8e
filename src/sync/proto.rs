//! The messages nodes exchange over a sync link, and their binary wire
//! form (one message per WebSocket binary frame).
//!
//! A link is symmetric: each side pushes the log entries the other lacks
//! and acknowledges what it applied.
//!
//! ```text
//!   A                                   B
//!   |-- Hello{have: A's vector} ------->|   both sides, first message
//!   |<------- Hello{have: B's vector} --|
//!   |<------------- Entries{batch 1} ---|   B sends what A lacks, at most
//!   |<------------- Entries{batch 2} ---|   sync.window_batches unacked
//!   |-- Ack{have, batches: 1} --------->|   A applied batch 1
//!   |-- Entries{...} ------------------>|   and the same the other way
//!   |<------------- Ack{batches: 0} ----|   heartbeat when idle
//! ```
//!
//! Encoding: a tag byte, then fields; integers are u64 little-endian
//! varints (LEB128), strings and byte strings are length-prefixed. Every
//! length is checked against the bytes left, so a hostile message cannot
//! make the decoder allocate more than it received.

use crate::db::capture::{LogEntry, SnapshotDoc};

use super::vv::VersionVector;

/// Bumped on any incompatible change of the messages or their meaning.
/// 2: entries carry their origin's signature; `Keys`; `Hello.partial`.
pub const PROTOCOL_VERSION: u64 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// The first message on a link, from both sides.
    Hello(Hello),
    /// Log entries the receiver lacks, in (origin, seq) order per origin.
    Entries(Vec<LogEntry>),
    /// What the sender holds now; `batches` acknowledges that many Entries
    /// messages (0: a heartbeat).
    Ack { have: VersionVector, batches: u64 },
    /// The sender closes the link, saying why.
    Bye { reason: String },
    /// Row documents, for a receiver behind the sender's log compaction.
    /// The last batch has no documents and `done`: the sender's vector
    /// when the snapshot began (the documents hold at least that much).
    Snapshot {
        docs: Vec<SnapshotDoc>,
        done: Option<VersionVector>,
    },
    /// Node certificates (DER, issued by the cluster CA) for the keys that
    /// signed entries the sender is about to send (`sync::keys`). Sent
    /// before the first entry under each key on a link.
    Keys(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u64,
    /// The node id (stable, random; the certificate's name).
    pub node_id: String,
    /// The yrs client id derived from the node id: the origin of its entries.
    pub origin: u64,
    pub schema_version: i64,
    /// A hash of the replicated schema (compared from the schema issue on).
    pub schema_hash: String,
    /// What the sender holds.
    pub have: VersionVector,
    /// The sender is a partial replica (`sync.partial`): it takes
    /// placeholders for entries withheld from it, and holds some itself.
    pub partial: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed sync message: {0}")]
pub struct DecodeError(pub String);

const TAG_HELLO: u8 = 1;
const TAG_ENTRIES: u8 = 2;
const TAG_ACK: u8 = 3;
const TAG_BYE: u8 = 4;
const TAG_SNAPSHOT: u8 = 5;
const TAG_KEYS: u8 = 6;

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Msg::Hello(h) => {
                out.push(TAG_HELLO);
                put_u64(&mut out, h.protocol);
                put_bytes(&mut out, h.node_id.as_bytes());
                put_u64(&mut out, h.origin);
                put_u64(&mut out, h.schema_version as u64);
                put_bytes(&mut out, h.schema_hash.as_bytes());
                put_vv(&mut out, &h.have);
                out.push(u8::from(h.partial));
            }
            Msg::Entries(entries) => {
                out.push(TAG_ENTRIES);
                put_u64(&mut out, entries.len() as u64);
                for e in entries {
                    put_u64(&mut out, e.origin);
                    put_u64(&mut out, e.seq);
                    put_u64(&mut out, e.hlc);
                    put_bytes(&mut out, e.table.as_bytes());
                    put_bytes(&mut out, e.key.as_bytes());
                    put_u64(&mut out, e.schema_version as u64);
                    put_bytes(&mut out, &e.update);
                    put_u64(&mut out, e.key_id);
                    put_bytes(&mut out, &e.signature);
                }
            }
            Msg::Ack { have, batches } => {
                out.push(TAG_ACK);
                put_vv(&mut out, have);
                put_u64(&mut out, *batches);
            }
            Msg::Bye { reason } => {
                out.push(TAG_BYE);
                put_bytes(&mut out, reason.as_bytes());
            }
            Msg::Snapshot { docs, done } => {
                out.push(TAG_SNAPSHOT);
                put_u64(&mut out, docs.len() as u64);
                for d in docs {
                    put_bytes(&mut out, d.table.as_bytes());
                    put_bytes(&mut out, d.key.as_bytes());
                    put_bytes(&mut out, &d.doc);
                }
                match done {
                    Some(vv) => {
                        out.push(1);
                        put_vv(&mut out, vv);
                    }
                    None => out.push(0),
                }
            }
            Msg::Keys(certs) => {
                out.push(TAG_KEYS);
                put_u64(&mut out, certs.len() as u64);
                for cert in certs {
                    put_bytes(&mut out, cert);
                }
            }
        }
        out
    }

    pub fn decode(input: &[u8]) -> Result<Msg, DecodeError> {
        let mut r = Reader(input);
        let msg = match r.byte()? {
            TAG_HELLO => Msg::Hello(Hello {
                protocol: r.u64()?,
                node_id: r.string()?,
                origin: r.u64()?,
                schema_version: r.u64()? as i64,
                schema_hash: r.string()?,
                have: r.vv()?,
                partial: r.flag()?,
            }),
            TAG_ENTRIES => {
                let n = r.count(9)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(LogEntry {
                        origin: r.u64()?,
                        seq: r.u64()?,
                        hlc: r.u64()?,
                        table: r.string()?,
                        key: r.string()?,
                        schema_version: r.u64()? as i64,
                        update: r.bytes()?.to_vec(),
                        key_id: r.u64()?,
                        signature: r.bytes()?.to_vec(),
                    });
                }
                Msg::Entries(entries)
            }
            TAG_ACK => Msg::Ack {
                have: r.vv()?,
                batches: r.u64()?,
            },
            TAG_BYE => Msg::Bye {
                reason: r.string()?,
            },
            TAG_SNAPSHOT => {
                let n = r.count(3)?;
                let mut docs = Vec::with_capacity(n);
                for _ in 0..n {
                    docs.push(SnapshotDoc {
                        table: r.string()?,
                        key: r.string()?,
                        doc: r.bytes()?.to_vec(),
                    });
                }
                let done = match r.byte()? {
                    0 => None,
                    1 => Some(r.vv()?),
                    flag => return Err(DecodeError(format!("bad snapshot flag {flag}"))),
                };
                Msg::Snapshot { docs, done }
            }
            TAG_KEYS => {
                let n = r.count(1)?;
                let mut certs = Vec::with_capacity(n);
                for _ in 0..n {
                    certs.push(r.bytes()?.to_vec());
                }
                Msg::Keys(certs)
            }
            tag => return Err(DecodeError(format!("unknown message tag {tag}"))),
        };
        if !r.0.is_empty() {
            return Err(DecodeError(format!("{} trailing bytes", r.0.len())));
        }
        Ok(msg)
    }
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_vv(out: &mut Vec<u8>, vv: &VersionVector) {
    put_u64(out, vv.0.len() as u64);
    for (&origin, &seq) in &vv.0 {
        put_u64(out, origin);
        put_u64(out, seq);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or_else(|| DecodeError("truncated".into()))?;
        self.0 = rest;
        Ok(b)
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError(format!("bad flag {b}"))),
        }
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .filter(|_| shift < 63 || b & 0x7f <= 1)
                .ok_or_else(|| DecodeError("varint overflows u64".into()))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint longer than 10 bytes".into()))
    }

    /// A count of items each at least `min_item_bytes` long: bounded by the
    /// bytes left, so it is safe to preallocate.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u64()?;
        if n > (self.0.len() / min_item_bytes) as u64 {
            return Err(DecodeError(format!(
                "{n} items cannot fit in {} bytes",
                self.0.len()
            )));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u64()?;
        if n > self.0.len() as u64 {
            return Err(DecodeError(format!("length {n} past the end")));
        }
        let (head, rest) = self.0.split_at(n as usize);
        self.0 = rest;
        Ok(head)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("text is not UTF-8".into()))
    }

    fn vv(&mut self) -> Result<VersionVector, DecodeError> {
        let n = self.count(2)?;
        let mut vv = VersionVector::new();
        for _ in 0..n {
            let origin = self.u64()?;
            vv.observe(origin, self.u64()?);
        }
        Ok(vv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Msg> {
        let mut have = VersionVector::new();
        have.observe(7, 3);
        have.observe(1 << 52, u64::MAX >> 2);
        vec![
            Msg::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                node_id: "node-é".into(),
                origin: 12345,
                schema_version: -1,
                schema_hash: "abc".into(),
                have: have.clone(),
                partial: true,
            }),
            Msg::Entries(vec![LogEntry {
                origin: 7,
                seq: 4,
                hlc: u64::MAX,
                table: "t".into(),
                key: "1,'x'".into(),
                schema_version: 2,
                update: vec![0, 1, 2, 255],
                key_id: u64::MAX,
                signature: vec![7; 64],
            }]),
            Msg::Keys(vec![vec![1, 2, 3], Vec::new()]),
            Msg::Entries(Vec::new()),
            Msg::Ack { have, batches: 2 },
            Msg::Bye {
                reason: "bye".into(),
            },
            Msg::Snapshot {
                docs: vec![SnapshotDoc {
                    table: "t".into(),
                    key: "'k'".into(),
                    doc: vec![1, 2, 3],
                }],
                done: None,
            },
            Msg::Snapshot {
                docs: Vec::new(),
                done: Some(VersionVector::new()),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in sample() {
            assert_eq!(Msg::decode(&msg.encode()), Ok(msg));
        }
    }

    #[test]
    fn truncated_or_extended_messages_are_refused() {
        for msg in sample() {
            let bytes = msg.encode();
            for len in 0..bytes.len() {
                assert!(Msg::decode(&bytes[..len]).is_err(), "{msg:?} cut at {len}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Msg::decode(&longer).is_err());
        }
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut bytes = vec![TAG_ENTRIES];
        put_u64(&mut bytes, u64::MAX);
        assert!(Msg::decode(&bytes).is_err());
        let mut bytes = vec![TAG_BYE];
        put_u64(&mut bytes, 1 << 40);
        assert!(Msg::decode(&bytes).is_err());
        assert!(Msg::decode(&[
            TAG_ACK, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
        ])
        .is_err());
    }
}
