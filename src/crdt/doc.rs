//! A row's CRDT document.
//!
//! # Layout
//!
//! One yrs `Doc` per replicated row, with one root map, `row`. Its keys are
//! *origins* (the yrs client id of a node, in decimal) and each value is
//! that origin's [`Slot`]: the column values it wrote, each with the
//! [`Stamp`] (hybrid logical clock + origin) of the write, and whether it
//! last saw the row alive. Only the origin itself ever writes its key.
//!
//! The row's value is the *join* of all slots ([`RowView`]): per column the
//! entry with the highest stamp wins, and the liveness entry with the highest
//! stamp decides whether the row exists. The join is commutative,
//! associative and idempotent, so every node that has the same updates shows
//! the same row, whatever the order they arrived in.
//!
//! # Why not one map entry per column
//!
//! yrs keeps a tombstone item for every overwritten map value. With a key per
//! column, a row updated 100,000 times grows to ~580 KB and each update gets
//! slower. With a key per origin, consecutive overwrites of a key by the same
//! client have consecutive clocks, and yrs's garbage collector squashes them
//! into one deleted range: a row updated 100,000 times by three nodes stays
//! below 100 bytes of tombstones (measured; see the `hot_row_stays_small`
//! test). Since no one but an origin writes its key, an update still in
//! flight from that origin always refers to the origin's latest item, which
//! every node keeps — so this compaction never breaks a merge.
//!
//! Slots of other origins that no longer win any column are removed by
//! [`RowDoc::write_local`] once the document grows past a limit; that is an
//! ordinary yrs delete, replicated like any other change.

use std::collections::BTreeMap;

use yrs::updates::decoder::Decode;
use yrs::{Any, Doc, Map, MapRef, Options, Out, ReadTxn, StateVector, Transact, Update};

use super::value::put_varint;
use super::value::{put_bytes, take_array, take_bytes, take_u8, take_varint, CodecError, Value};

const ROOT: &str = "row";
const SLOT_FORMAT: u8 = 1;

/// Orders concurrent writes: hybrid logical clock first, then origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub hlc: u64,
    pub origin: u64,
}

impl Stamp {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hlc.to_be_bytes());
        out.extend_from_slice(&self.origin.to_be_bytes());
    }

    fn decode(input: &mut &[u8]) -> Result<Stamp, CodecError> {
        Ok(Stamp {
            hlc: u64::from_be_bytes(take_array(input)?),
            origin: u64::from_be_bytes(take_array(input)?),
        })
    }
}

/// What one origin wrote to a row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    pub live: Option<(Stamp, bool)>,
    pub cols: BTreeMap<String, (Stamp, Value)>,
}

impl Slot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.cols.len() * 32);
        out.push(SLOT_FORMAT);
        match self.live {
            None => out.push(0),
            Some((stamp, live)) => {
                out.push(if live { 2 } else { 1 });
                stamp.encode(&mut out);
            }
        }
        put_varint(&mut out, self.cols.len() as u64);
        for (name, (stamp, value)) in &self.cols {
            put_bytes(&mut out, name.as_bytes());
            stamp.encode(&mut out);
            value.encode(&mut out);
        }
        out
    }

    pub fn decode(mut input: &[u8]) -> Result<Slot, CodecError> {
        let input = &mut input;
        if take_u8(input)? != SLOT_FORMAT {
            return Err(CodecError("unknown slot format".into()));
        }
        let live = match take_u8(input)? {
            0 => None,
            flag @ (1 | 2) => Some((Stamp::decode(input)?, flag == 2)),
            _ => return Err(CodecError("bad liveness flag".into())),
        };
        let count = take_varint(input)?;
        let mut cols = BTreeMap::new();
        for _ in 0..count {
            let name = String::from_utf8(take_bytes(input)?.to_vec())
                .map_err(|_| CodecError("column name is not UTF-8".into()))?;
            let stamp = Stamp::decode(input)?;
            cols.insert(name, (stamp, Value::decode(input)?));
        }
        if !input.is_empty() {
            return Err(CodecError("trailing bytes in a slot".into()));
        }
        Ok(Slot { live, cols })
    }
}

/// The row as the join of every slot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowView {
    pub live: Option<(Stamp, bool)>,
    pub cols: BTreeMap<String, (Stamp, Value)>,
}

impl RowView {
    pub fn is_live(&self) -> bool {
        self.live.is_some_and(|(_, live)| live)
    }

    fn join(&mut self, slot: &Slot) {
        if let Some(live) = slot.live {
            if self.live.is_none_or(|(stamp, _)| stamp < live.0) {
                self.live = Some(live);
            }
        }
        for (name, entry) in &slot.cols {
            match self.cols.get(name) {
                Some((stamp, _)) if *stamp >= entry.0 => {}
                _ => {
                    self.cols.insert(name.clone(), entry.clone());
                }
            }
        }
    }

    /// Whether `slot` holds no winning entry (the join is the same without it).
    fn dominates(&self, slot: &Slot) -> bool {
        let live_wins = slot
            .live
            .is_some_and(|(stamp, _)| self.live.is_some_and(|(s, _)| s == stamp));
        let col_wins = slot
            .cols
            .iter()
            .any(|(name, (stamp, _))| self.cols.get(name).is_some_and(|(s, _)| s == stamp));
        !live_wins && !col_wins
    }

    /// The highest stamp in the row (for the node's clock to stay ahead).
    pub fn max_hlc(&self) -> u64 {
        let live = self.live.map_or(0, |(s, _)| s.hlc);
        self.cols.values().map(|(s, _)| s.hlc).fold(live, u64::max)
    }

    /// The change that makes the document say what the table says.
    /// `row` is the SQL row (column name, value) or None if it is absent.
    pub fn diff(&self, row: Option<&[(String, Value)]>) -> Option<Change> {
        match row {
            None if self.is_live() => Some(Change {
                live: Some(false),
                ..Change::default()
            }),
            None => None,
            Some(cols) if !self.is_live() => Some(Change {
                live: Some(true),
                cols: cols.to_vec(),
                fill: Vec::new(),
            }),
            Some(cols) => {
                let changed: Vec<(String, Value)> = cols
                    .iter()
                    .filter(|(name, value)| self.cols.get(name).is_none_or(|(_, v)| v != value))
                    .cloned()
                    .collect();
                (!changed.is_empty()).then_some(Change {
                    live: None,
                    cols: changed,
                    fill: Vec::new(),
                })
            }
        }
    }
}

/// A recorded local change: the yrs update and the change's `live`.
pub type Recorded = (Vec<u8>, Option<bool>);

/// A local write to a row, found by comparing the table to the document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Change {
    /// Some(true): (re)inserted; Some(false): deleted.
    pub live: Option<bool>,
    pub cols: Vec<(String, Value)>,
    /// Values a migration put into columns no one has written yet in this
    /// document (a backfill; see [`Unwritten::Fill`]), stamped with the
    /// lowest stamp (HLC 0).
    pub fill: Vec<(String, Value)>,
}

/// How a local change records a value in a column that the row's document
/// has no value for (a column added after the row was last written, or a
/// row inserted by a node at an older schema).
///
/// Why it matters: a node that migrates late, stamping the new column's
/// default with its own (later) clock, would overwrite the values other
/// nodes wrote into that column meanwhile: the silent loss outpost exists
/// to prevent. A default or a migration's value therefore never wins over
/// a real write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritten {
    /// The column's default: not recorded at all. A document without the
    /// column means its default on every node with the same schema (so an
    /// `ADD COLUMN` writes no log entry per row).
    Default,
    /// A value a migration put there (a backfill): recorded with the lowest
    /// stamp, so every node running the same migration agrees and any real
    /// write, made anywhere at any time, wins over it.
    Fill,
    /// A value someone wrote: recorded like any change.
    Write,
}

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("cannot decode a yrs update: {0}")]
    Update(String),
    #[error("cannot apply a yrs update: {0}")]
    Apply(String),
    #[error("the row document holds a value of an unexpected type under {0:?}")]
    Shape(String),
}

/// A loaded row document. Cheap to create; keep it only while working on the row.
pub struct RowDoc {
    doc: Doc,
    map: MapRef,
    client: u64,
}

impl RowDoc {
    /// An empty document that writes as `client`.
    pub fn new(client: u64) -> RowDoc {
        let mut options = Options::with_client_id(yrs::block::ClientID::new(client));
        options.skip_gc = false;
        let doc = Doc::with_options(options);
        let map = doc.get_or_insert_map(ROOT);
        RowDoc { doc, map, client }
    }

    /// Loads an encoded document (as [`RowDoc::encode`] made it).
    pub fn load(encoded: &[u8], client: u64) -> Result<RowDoc, DocError> {
        let row = RowDoc::new(client);
        row.apply(encoded)?;
        Ok(row)
    }

    /// The whole state, to store. Shrunk: yrs leaves spare capacity.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        bytes.shrink_to_fit();
        bytes
    }

    /// Applies a remote update (or a whole encoded state). Applying one
    /// twice changes nothing.
    pub fn apply(&self, update: &[u8]) -> Result<(), DocError> {
        let update = decode_update(update).map_err(DocError::Update)?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .map_err(|e| DocError::Apply(e.to_string()))
    }

    /// True when some update waits for an earlier one of the same origin.
    pub fn has_pending(&self) -> bool {
        self.doc.transact().has_missing_updates()
    }

    pub fn slots(&self) -> Result<Vec<(u64, Slot)>, DocError> {
        let txn = self.doc.transact();
        let mut slots = Vec::new();
        for (key, value) in self.map.iter(&txn) {
            let origin: u64 = key.parse().map_err(|_| DocError::Shape(key.to_string()))?;
            let Out::Any(Any::Buffer(bytes)) = value else {
                return Err(DocError::Shape(key.to_string()));
            };
            slots.push((origin, Slot::decode(&bytes)?));
        }
        Ok(slots)
    }

    pub fn view(&self) -> Result<RowView, DocError> {
        let mut view = RowView::default();
        for (_, slot) in self.slots()? {
            view.join(&slot);
        }
        Ok(view)
    }

    /// Records what the table says about the row (`row`: its columns, or
    /// None if absent) as a local change stamped `stamp`, and returns the
    /// yrs update that carries it with the change's `live` (Some(true):
    /// inserted, Some(false): deleted, None: updated) — None when the
    /// document already agrees.
    /// `unwritten(column, value)` says how to record a value in a column
    /// the document has no value for.
    pub fn record_local(
        &self,
        stamp: Stamp,
        row: Option<&[(String, Value)]>,
        compact_above: usize,
        unwritten: &dyn Fn(&str, &Value) -> Unwritten,
    ) -> Result<Option<Recorded>, DocError> {
        let slots = self.slots()?;
        let mut view = RowView::default();
        for (_, slot) in &slots {
            view.join(slot);
        }
        match view.diff(row) {
            Some(mut change) => {
                if change.live.is_none() {
                    let mut cols = Vec::new();
                    for (name, value) in change.cols {
                        match view.cols.contains_key(&name) {
                            true => cols.push((name, value)),
                            false => match unwritten(&name, &value) {
                                Unwritten::Default => {}
                                Unwritten::Fill => change.fill.push((name, value)),
                                Unwritten::Write => cols.push((name, value)),
                            },
                        }
                    }
                    change.cols = cols;
                    if change.cols.is_empty() && change.fill.is_empty() {
                        return Ok(None);
                    }
                }
                let live = change.live;
                let update = self.write_change(stamp, &change, compact_above, slots, view);
                Ok(Some((update, live)))
            }
            None => Ok(None),
        }
    }

    /// Records a local change stamped `stamp` (whose origin is this
    /// document's client) and returns the yrs update that carries it.
    /// When the encoded document is larger than `compact_above` bytes,
    /// the same update also drops other origins' slots that win nothing.
    pub fn write_local(
        &self,
        stamp: Stamp,
        change: &Change,
        compact_above: usize,
    ) -> Result<Vec<u8>, DocError> {
        let slots = self.slots()?;
        let mut view = RowView::default();
        for (_, slot) in &slots {
            view.join(slot);
        }
        Ok(self.write_change(stamp, change, compact_above, slots, view))
    }

    fn write_change(
        &self,
        stamp: Stamp,
        change: &Change,
        compact_above: usize,
        slots: Vec<(u64, Slot)>,
        mut view: RowView,
    ) -> Vec<u8> {
        debug_assert_eq!(stamp.origin, self.client);
        let own_key = self.client.to_string();
        let mut own = slots
            .iter()
            .find(|(origin, _)| *origin == self.client)
            .map(|(_, slot)| slot.clone())
            .unwrap_or_default();
        if let Some(live) = change.live {
            own.live = Some((stamp, live));
        }
        for (name, value) in &change.cols {
            own.cols.insert(name.clone(), (stamp, value.clone()));
        }
        let lowest = Stamp {
            hlc: 0,
            origin: stamp.origin,
        };
        for (name, value) in &change.fill {
            own.cols.insert(name.clone(), (lowest, value.clone()));
        }
        view.join(&own);
        // Keep only what still wins: the join is unchanged, the slot stays
        // as small as the row.
        own.cols
            .retain(|name, (s, _)| view.cols.get(name).is_some_and(|(w, _)| w == s));
        let stale: Vec<String> = if self.encoded_len_hint(&slots) > compact_above {
            slots
                .iter()
                .filter(|(origin, slot)| *origin != self.client && view.dominates(slot))
                .map(|(origin, _)| origin.to_string())
                .collect()
        } else {
            Vec::new()
        };
        let mut txn = self.doc.transact_mut();
        self.map
            .insert(&mut txn, own_key, Any::Buffer(own.encode().into()));
        for key in stale {
            self.map.remove(&mut txn, &key);
        }
        txn.encode_update_v1()
    }

    fn encoded_len_hint(&self, slots: &[(u64, Slot)]) -> usize {
        slots
            .iter()
            .map(|(_, slot)| {
                40 + slot
                    .cols
                    .iter()
                    .map(|(n, (_, v))| n.len() + 17 + v.size())
                    .sum::<usize>()
            })
            .sum()
    }
}

/// The yrs client id of a node: 53 bits (Yjs's limit) of a hash of its id.
/// Decodes a yrs update (v1) that may come from a peer, with allocations
/// capped in proportion to its size (`crate::alloc`): a forged count
/// fails the decode instead of reserving gigabytes.
pub fn decode_update(bytes: &[u8]) -> Result<Update, String> {
    crate::alloc::with_cap(crate::alloc::cap_for(bytes.len()), || {
        Update::decode_v1(bytes).map_err(|e| e.to_string())
    })
}

pub fn client_id_of(node_id: &str) -> u64 {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(node_id.as_bytes());
    let id = u64::from_be_bytes(hash[..8].try_into().expect("8 bytes")) & ((1 << 53) - 1);
    id.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[(&str, Value)]) -> Vec<(String, Value)> {
        cols.iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    fn write(doc: &RowDoc, hlc: u64, table_row: Option<&[(String, Value)]>) -> Option<Vec<u8>> {
        let change = doc.view().unwrap().diff(table_row)?;
        let stamp = Stamp {
            hlc,
            origin: doc.client,
        };
        Some(doc.write_local(stamp, &change, 4096).unwrap())
    }

    #[test]
    fn insert_update_delete_revive() {
        let doc = RowDoc::new(7);
        let r1 = row(&[("id", Value::Integer(1)), ("v", Value::Text("a".into()))]);
        assert!(write(&doc, 1, Some(&r1)).is_some());
        assert!(write(&doc, 2, Some(&r1)).is_none(), "no change, no update");
        let r2 = row(&[("id", Value::Integer(1)), ("v", Value::Blob(vec![0]))]);
        write(&doc, 3, Some(&r2)).unwrap();
        let view = doc.view().unwrap();
        assert!(view.is_live());
        assert_eq!(view.cols["v"].1, Value::Blob(vec![0]));
        write(&doc, 4, None).unwrap();
        assert!(!doc.view().unwrap().is_live());
        write(&doc, 5, Some(&r1)).unwrap();
        let view = doc.view().unwrap();
        assert!(view.is_live());
        assert_eq!(view.cols["v"].1, Value::Text("a".into()));
    }

    /// The silent loss a late migration would cause without fills: node x
    /// adds column `p` and writes 5 into it; node y adds the column later
    /// (its default 0 filled into the row) and merges x's write afterwards.
    #[test]
    fn a_late_migrations_fill_never_beats_a_real_write() {
        let base = RowDoc::new(1);
        let before = row(&[("id", Value::Integer(1))]);
        let u0 = write(&base, 10, Some(&before)).unwrap();
        let (x, y) = (RowDoc::new(2), RowDoc::new(3));
        x.apply(&u0).unwrap();
        y.apply(&u0).unwrap();
        let with_p = |p: i64| row(&[("id", Value::Integer(1)), ("p", Value::Integer(p))]);
        let fill = |_: &str, _: &Value| Unwritten::Fill;
        let stamp = |doc: &RowDoc, hlc| Stamp {
            hlc,
            origin: doc.client,
        };
        // x migrates at 20 (fill), writes 5 at 30; y migrates at 40 (fill).
        let (ux_fill, _) = x
            .record_local(stamp(&x, 20), Some(&with_p(0)), 4096, &fill)
            .unwrap()
            .unwrap();
        let no_fill = |_: &str, _: &Value| Unwritten::Write;
        let (ux_write, _) = x
            .record_local(stamp(&x, 30), Some(&with_p(5)), 4096, &no_fill)
            .unwrap()
            .unwrap();
        let (uy_fill, _) = y
            .record_local(stamp(&y, 40), Some(&with_p(0)), 4096, &fill)
            .unwrap()
            .unwrap();
        for u in [&ux_fill, &ux_write] {
            y.apply(u).unwrap();
        }
        x.apply(&uy_fill).unwrap();
        for doc in [&x, &y] {
            assert_eq!(doc.view().unwrap().cols["p"].1, Value::Integer(5));
        }
        // Without the fill rule y's default, stamped 40, would win.
        let z = RowDoc::new(4);
        z.apply(&u0).unwrap();
        let (uz, _) = z
            .record_local(stamp(&z, 40), Some(&with_p(0)), 4096, &no_fill)
            .unwrap()
            .unwrap();
        x.apply(&uz).unwrap();
        assert_eq!(x.view().unwrap().cols["p"].1, Value::Integer(0));
        // A default is not recorded at all: nothing to send.
        let d = RowDoc::new(5);
        d.apply(&u0).unwrap();
        let default = |_: &str, _: &Value| Unwritten::Default;
        let recorded = d.record_local(stamp(&d, 50), Some(&with_p(0)), 4096, &default);
        assert!(recorded.unwrap().is_none());
    }

    #[test]
    fn concurrent_writes_converge_in_any_order() {
        let base = RowDoc::new(1);
        let r = row(&[("a", Value::Integer(0)), ("b", Value::Integer(0))]);
        let u0 = write(&base, 10, Some(&r)).unwrap();
        let (x, y) = (RowDoc::new(2), RowDoc::new(3));
        x.apply(&u0).unwrap();
        y.apply(&u0).unwrap();
        let ux = write(
            &x,
            20,
            Some(&row(&[("a", Value::Integer(1)), ("b", Value::Integer(0))])),
        )
        .unwrap();
        let uy = write(
            &y,
            21,
            Some(&row(&[("a", Value::Integer(0)), ("b", Value::Integer(2))])),
        )
        .unwrap();
        let uz = write(&y, 22, None).unwrap();
        let orders: [&[&Vec<u8>]; 3] = [
            &[&u0, &ux, &uy, &uz],
            &[&uz, &uy, &ux, &u0, &ux],
            &[&uy, &u0, &uz, &ux],
        ];
        let mut views = Vec::new();
        for order in orders {
            let doc = RowDoc::new(9);
            for u in order {
                doc.apply(u).unwrap();
            }
            assert!(!doc.has_pending());
            views.push(doc.view().unwrap());
        }
        assert!(views.windows(2).all(|w| w[0] == w[1]));
        assert!(!views[0].is_live(), "the later delete wins");
        assert_eq!(views[0].cols["a"].1, Value::Integer(1));
        assert_eq!(views[0].cols["b"].1, Value::Integer(2));
    }

    #[test]
    fn hot_row_stays_small() {
        let (a, b, c) = (RowDoc::new(1), RowDoc::new(2), RowDoc::new(3));
        for i in 0..20_000i64 {
            let (doc, other) = match i % 3 {
                0 => (&a, &b),
                1 => (&b, &c),
                _ => (&c, &a),
            };
            let r = row(&[
                ("k", Value::Integer(1)),
                ("n", Value::Integer(i)),
                ("s", Value::Text("x".repeat(20))),
            ]);
            let u = write(doc, i as u64 + 1, Some(&r)).unwrap();
            for d in [&a, &b, &c] {
                if !std::ptr::eq(d, doc) {
                    d.apply(&u).unwrap();
                }
            }
            let _ = other;
        }
        for d in [&a, &b, &c] {
            assert_eq!(d.view().unwrap().cols["n"].1, Value::Integer(19_999));
            let size = d.encode().len();
            assert!(size < 1024, "document grew to {size} bytes");
        }
    }

    #[test]
    fn client_ids_fit_53_bits() {
        for id in ["a", "b", "0123456789abcdef"] {
            let c = client_id_of(id);
            assert!(c > 0 && c < 1 << 53);
        }
    }
}

#[cfg(test)]
mod compaction_tests {
    use super::*;

    /// Past `compact_above`, a local write drops the entries of nodes that
    /// win nothing; below it, it keeps them. The row is the same either way.
    #[test]
    fn compaction_drops_only_losing_origins_at_the_bound() {
        let row = |v: i64| {
            vec![
                ("k".to_string(), Value::Integer(1)),
                ("v".to_string(), Value::Integer(v)),
            ]
        };
        let build = |compact_above: usize| {
            let target = RowDoc::new(1000);
            for origin in 1..=20u64 {
                let writer = RowDoc::new(origin);
                writer.apply(&target.encode()).unwrap();
                let change = writer
                    .view()
                    .unwrap()
                    .diff(Some(&row(origin as i64)))
                    .unwrap();
                let update = writer
                    .write_local(
                        Stamp {
                            hlc: origin,
                            origin,
                        },
                        &change,
                        usize::MAX,
                    )
                    .unwrap();
                target.apply(&update).unwrap();
            }
            let change = target.view().unwrap().diff(Some(&row(-1))).unwrap();
            target
                .write_local(
                    Stamp {
                        hlc: 100,
                        origin: 1000,
                    },
                    &change,
                    compact_above,
                )
                .unwrap();
            target
        };
        let kept = build(usize::MAX);
        let compacted = build(64);
        assert_eq!(kept.view().unwrap().cols, compacted.view().unwrap().cols);
        assert_eq!(kept.slots().unwrap().len(), 21);
        // Origin 1 still wins column k (its first write); the others lost everything.
        assert!(
            compacted.slots().unwrap().len() <= 2,
            "{}",
            compacted.slots().unwrap().len()
        );
        assert!(compacted.encode().len() < kept.encode().len());
    }
}
