//! A deterministic, seeded simulation of the replication core
//! (`outpost::sync::core::Core`).
//!
//! Each simulated node is a real `Core` plus a model store standing in for
//! the database: a change log, one real `RowDoc` (yrs CRDT) per row, a
//! version vector and an HLC. The network is a set of links, each direction
//! a FIFO queue with random delivery delays (TCP: FIFO within a connection,
//! reordering across links and effects). The simulation cuts and heals
//! pairs, drops connections, crashes and restarts nodes (the store is
//! durable), upgrades schemas, compacts logs (peers behind the floor get
//! snapshots), re-runs applies (idempotency), fails applies and completes
//! effects after random delays. At the end every link heals and every node
//! must hold the same vector, the same log entries and the same rows.
//!
//! `OUTPOST_SIM_SEEDS=N` runs seeds 0..N (default 500);
//! `OUTPOST_SIM_SEED=s` runs only seed `s` and prints a step trace:
//! `OUTPOST_SIM_SEED=17 cargo test --test sync_sim -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use outpost::crdt::{client_id_of, Hlc, RowDoc, RowView, Stamp, Unwritten, Value};
use outpost::db::capture::{LogEntry, SnapshotDoc};
use outpost::sync::core::{
    ApplyOutcome, Core, CoreConfig, Identity, Input, LinkId, Millis, Output, PauseKind, PeerState,
};
use outpost::sync::proto::Msg;
use outpost::sync::vv::VersionVector;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WALL_BASE: u64 = 1_700_000_000_000;

/// A transaction: (table, key) -> the row's columns, or None (deleted).
type Rows = BTreeMap<(String, String), Option<Vec<(String, Value)>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every node configures every other node (duplicate links race).
    Mesh,
    /// Every other node configures node 0 only.
    Hub,
    /// Node i configures node i-1 only (transitive relay).
    Chain,
}

#[derive(Clone, Debug)]
struct Params {
    nodes: usize,
    topology: Topology,
    config: CoreConfig,
    tables: usize,
    rows: u64,
    compact_above: usize,
    /// Random partitions, drops, crashes, schema upgrades.
    chaos: bool,
    /// Probability that an apply fails before applying anything.
    fail_apply: f64,
    /// Probability that an apply effect runs twice.
    dup_apply: f64,
    /// Upper bound of most network delays (ms); a few are up to 150 ms.
    max_delay: Millis,
    /// Log compaction: (interval, peer retention) in ms, as the driver
    /// runs it (`db::compact`); peers behind it get snapshots.
    compaction: Option<(Millis, Millis)>,
}

fn small_config() -> CoreConfig {
    CoreConfig {
        batch_entries: 5,
        batch_bytes: 1 << 20,
        window_batches: 2,
        retry_min: 20,
        retry_max: 500,
        heartbeat: 50,
        peer_timeout: 300,
    }
}

impl Params {
    /// No chaos, no failures: for the focused tests.
    fn calm(nodes: usize, topology: Topology, config: CoreConfig) -> Params {
        Params {
            nodes,
            topology,
            config,
            tables: 2,
            rows: 4,
            compact_above: 16 * 1024,
            chaos: false,
            fail_apply: 0.0,
            dup_apply: 0.0,
            max_delay: 10,
            compaction: None,
        }
    }

    fn random(rng: &mut StdRng) -> Params {
        let topology = [Topology::Mesh, Topology::Hub, Topology::Chain][rng.gen_range(0..3)];
        Params {
            nodes: rng.gen_range(3..=7),
            topology,
            config: CoreConfig {
                batch_entries: rng.gen_range(3..=8),
                batch_bytes: rng.gen_range(100..=2000),
                window_batches: rng.gen_range(1..=4),
                retry_min: 20,
                retry_max: 500,
                heartbeat: 50,
                peer_timeout: 300,
            },
            tables: rng.gen_range(1..=2),
            rows: rng.gen_range(2..=6),
            compact_above: [64, 512, 16 * 1024][rng.gen_range(0..3)],
            chaos: true,
            fail_apply: 0.03,
            dup_apply: 0.1,
            max_delay: [5, 20, 40][rng.gen_range(0..3)],
            compaction: rng
                .gen_bool(0.6)
                .then(|| (rng.gen_range(50..=400), rng.gen_range(300..=3000))),
        }
    }
}

/// The database of one node: durable across crashes.
struct Store {
    origin: u64,
    /// The schema version the database is at (what apply accepts).
    schema: i64,
    log: BTreeMap<(u64, u64), LogEntry>,
    docs: HashMap<(String, String), RowDoc>,
    /// The highest seq per origin in the log or below the floor (as
    /// `capture::log_vector`).
    vv: VersionVector,
    /// `_outpost_compacted`: the log may lack entries at or below this.
    compacted: VersionVector,
    /// `_outpost_peers`: node id -> (what it acknowledged, when, the
    /// configured peer it is, if one).
    peers_seen: BTreeMap<String, (VersionVector, Millis, Option<usize>)>,
    hlc: Hlc,
    /// This node's wall clock minus the simulation's.
    skew: i64,
}

impl Store {
    /// Applies remote entries in one transaction, as `Capture::apply` does:
    /// duplicates are no-ops; an entry from a newer schema defers it and
    /// every later entry. Returns (log advanced, deferred reason).
    fn apply(
        &mut self,
        entries: &[LogEntry],
        names: &BTreeMap<u64, String>,
        me: &str,
    ) -> (bool, Option<String>) {
        let mut advanced = false;
        for e in entries {
            if self.log.contains_key(&(e.origin, e.seq)) || e.seq <= self.compacted.get(e.origin) {
                continue;
            }
            if e.schema_version > self.schema {
                let why = format!(
                    "written under schema version {}, this node has {}",
                    e.schema_version, self.schema
                );
                return (advanced, Some(why));
            }
            let o = name_of(names, e.origin);
            assert_ne!(
                e.origin, self.origin,
                "{me}: its own entry {o}:{} came back",
                e.seq
            );
            let have = self.vv.get(e.origin);
            assert_eq!(
                e.seq,
                have + 1,
                "{me}: applying {o}:{} would leave a gap in the log (it holds {o} up to {have})",
                e.seq
            );
            let doc = self
                .docs
                .entry((e.table.clone(), e.key.clone()))
                .or_insert_with(|| RowDoc::new(self.origin));
            doc.apply(&e.update).expect("a remote update applies");
            self.hlc.observe(e.hlc);
            self.log.insert((e.origin, e.seq), e.clone());
            self.vv.observe(e.origin, e.seq);
            advanced = true;
        }
        (advanced, None)
    }

    /// `Output::ReadLog`, exactly as documented: `after < seq <= upto` per
    /// origin, in seq order per origin (origins interleaved at random),
    /// at most `max_entries` and about `max_bytes` (at least one entry),
    /// stopping at the first entry per origin newer than `max_schema`.
    /// Like the database, it returns the entries that exist: below the
    /// compaction floor some may be gone. Returns also whether the result
    /// skips missing entries (a gap the reader would not notice).
    fn read(
        &self,
        after: &VersionVector,
        upto: &VersionVector,
        max_entries: usize,
        max_bytes: usize,
        max_schema: i64,
        rng: &mut StdRng,
    ) -> (Vec<LogEntry>, bool) {
        assert!(
            self.vv.covers(upto),
            "ReadLog up to {upto:?} past the log {:?}",
            self.vv
        );
        // (origin, next seq wanted, last seq wanted)
        let mut cursors: Vec<(u64, u64, u64)> = upto
            .0
            .iter()
            .filter(|(&o, &s)| s > after.get(o))
            .map(|(&o, &s)| (o, after.get(o) + 1, s))
            .collect();
        let mut out: Vec<LogEntry> = Vec::new();
        let mut bytes = 0;
        let mut gap = false;
        while out.len() < max_entries && !cursors.is_empty() {
            let i = rng.gen_range(0..cursors.len());
            let (o, next, last) = cursors[i];
            let Some((_, e)) = self.log.range((o, next)..=(o, last)).next() else {
                assert!(
                    last <= self.compacted.get(o),
                    "the log lacks {o}:{next}..={last} above its floor"
                );
                gap = true;
                cursors.swap_remove(i);
                continue;
            };
            if e.seq != next {
                assert!(
                    e.seq - 1 <= self.compacted.get(o),
                    "the log lacks {o}:{next} above its floor"
                );
                gap = true;
            }
            if e.schema_version > max_schema {
                cursors.swap_remove(i);
                continue;
            }
            if !out.is_empty() && bytes + e.update.len() > max_bytes {
                break;
            }
            bytes += e.update.len();
            out.push(e.clone());
            if e.seq == last {
                cursors.swap_remove(i);
            } else {
                cursors[i].1 = e.seq + 1;
            }
        }
        (out, gap)
    }

    /// `Output::ReadDocs`: documents after `after` in (table, key) order, at
    /// most `max_docs` and about `max_bytes` (at least one).
    fn read_docs(
        &self,
        after: &Option<(String, String)>,
        max_docs: usize,
        max_bytes: usize,
    ) -> Vec<SnapshotDoc> {
        let mut keys: Vec<&(String, String)> = self
            .docs
            .keys()
            .filter(|k| after.as_ref().is_none_or(|a| *k > a))
            .collect();
        keys.sort();
        let mut docs = Vec::new();
        let mut bytes = 0;
        for (table, key) in keys.into_iter().take(max_docs) {
            let doc = self.docs[&(table.clone(), key.clone())].encode();
            let size = table.len() + key.len() + doc.len();
            if !docs.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            docs.push(SnapshotDoc {
                table: table.clone(),
                key: key.clone(),
                doc,
            });
        }
        docs
    }

    /// `Output::ApplySnapshot`, as `Capture::apply_snapshot`: merges the
    /// documents; `done` counts as held (compacted) from now on.
    fn apply_snapshot(&mut self, docs: &[SnapshotDoc], done: &Option<VersionVector>) {
        for d in docs {
            let doc = self
                .docs
                .entry((d.table.clone(), d.key.clone()))
                .or_insert_with(|| RowDoc::new(self.origin));
            doc.apply(&d.doc).expect("a snapshot document applies");
            self.hlc
                .observe(doc.view().expect("a readable document").max_hlc());
        }
        if let Some(done) = done {
            self.compacted.merge(done);
            self.vv.merge(done);
        }
    }

    /// `db::compact::run`: records what the peers acknowledged, forgets
    /// peers silent past `retention`, waits until every configured peer was
    /// seen, then deletes entries every recorded peer holds.
    fn compact(
        &mut self,
        acks: Vec<(String, VersionVector, Option<usize>)>,
        configured: usize,
        now: Millis,
        retention: Millis,
    ) -> usize {
        for (node, have, peer) in acks {
            let seen = self
                .peers_seen
                .entry(node)
                .or_insert((have.clone(), now, peer));
            seen.0 = have;
            seen.1 = now;
            seen.2 = seen.2.or(peer);
        }
        self.peers_seen
            .retain(|_, (_, seen, _)| *seen >= now.saturating_sub(retention));
        if self.peers_seen.is_empty() {
            return 0;
        }
        if (0..configured).any(|p| !self.peers_seen.values().any(|(_, _, q)| *q == Some(p))) {
            return 0;
        }
        let floor = self
            .peers_seen
            .values()
            .fold(self.vv.clone(), |floor, (have, _, _)| floor.meet(have));
        let before = self.log.len();
        self.log.retain(|&(o, s), _| s > floor.get(o));
        self.compacted.merge(&floor);
        before - self.log.len()
    }

    /// Every row as a comparable string (rows never written are skipped).
    fn digest(&self) -> Vec<(String, String, String)> {
        let mut rows: Vec<(String, String, String)> = self
            .docs
            .iter()
            .filter_map(|((t, k), doc)| {
                assert!(!doc.has_pending(), "row {t}/{k} has a pending update");
                let view = doc.view().expect("a readable document");
                (view != RowView::default()).then(|| {
                    (
                        t.clone(),
                        k.clone(),
                        format!("{:?} {:?}", view.live, view.cols),
                    )
                })
            })
            .collect();
        rows.sort();
        rows
    }

    /// The log holds every entry above the compaction floor, up to the
    /// vector, and nothing above the vector.
    fn check_dense(&self) {
        for (&o, &s) in &self.vv.0 {
            let floor = self.compacted.get(o).min(s);
            let held = if floor < s {
                self.log.range((o, floor + 1)..=(o, s)).count() as u64
            } else {
                0
            };
            assert_eq!(
                held,
                s - floor,
                "the log of origin {o} is not dense between its floor {floor} and {s}"
            );
            let max = self.log.range((o, 0)..=(o, u64::MAX)).next_back();
            assert!(
                max.is_none_or(|((_, m), _)| *m <= s),
                "the log of {o} is past its vector"
            );
        }
    }
}

struct Node {
    name: String,
    origin: u64,
    /// Configured peers (node indexes); PeerId is the index in this list.
    peers: Vec<usize>,
    core: Option<Core>,
    /// Bumped at each crash: effects and links of older lives are void.
    inc: u64,
    /// The schema version the core announces.
    ident_schema: i64,
    /// The schema hash the core announces (`h<version>` unless diverged).
    ident_hash: String,
    /// Whether the node migrates by itself when a peer is newer
    /// (`schema.auto_migrate` with the files at hand).
    auto_migrate: bool,
    store: Store,
}

struct SimLink {
    /// [initiator, acceptor].
    ends: [usize; 2],
    incs: [u64; 2],
    /// Whether that end's core still holds the link.
    open: [bool; 2],
    /// Broken connection: nothing more is delivered.
    broken: bool,
    /// queues[d]: messages from ends[d] to the other end.
    queues: [VecDeque<Msg>; 2],
    /// Delivery time of the last message queued in direction d.
    last_at: [Millis; 2],
    /// Entries batches sent by ends[d] and not yet acked to it.
    unacked: [usize; 2],
    /// Entries batches from ends[d] delivered to the other end and not
    /// yet acknowledged by it (its inbox plus the batch it applies).
    held: [usize; 2],
}

enum Ev {
    Tick {
        node: usize,
        inc: u64,
    },
    Deliver {
        link: LinkId,
        dir: usize,
    },
    CloseNotify {
        link: LinkId,
        end: usize,
    },
    ConnectDone {
        from: usize,
        inc: u64,
        peer: usize,
    },
    ReadDone {
        node: usize,
        inc: u64,
        link: LinkId,
        after: VersionVector,
        upto: VersionVector,
        max_entries: usize,
        max_bytes: usize,
        max_schema: i64,
    },
    ApplyDone {
        node: usize,
        inc: u64,
        link: LinkId,
        entries: Vec<LogEntry>,
        fail: bool,
        twice: bool,
    },
    /// A random local write (random run only).
    Write,
    /// A random fault (random run only).
    Chaos,
    DocsDone {
        node: usize,
        inc: u64,
        link: LinkId,
        after: Option<(String, String)>,
        max_docs: usize,
        max_bytes: usize,
    },
    SnapshotDone {
        node: usize,
        inc: u64,
        link: LinkId,
        docs: Vec<SnapshotDoc>,
        done: Option<VersionVector>,
        fail: bool,
        twice: bool,
    },
    /// The driver's periodic compaction: takes the acks from the status.
    CompactStart {
        node: usize,
        inc: u64,
    },
    /// The compaction's transaction on the writer.
    CompactRun {
        node: usize,
        inc: u64,
        acks: Vec<(String, VersionVector, Option<usize>)>,
    },
    /// Its outcome reaches the core.
    CompactedNotify {
        node: usize,
        inc: u64,
        compacted: VersionVector,
    },
    /// A migration announced early has reached the database.
    /// The driver's automatic migration for a newer peer.
    AutoMigrate {
        node: usize,
        inc: u64,
        version: i64,
    },
    Migrated {
        node: usize,
    },
}

#[derive(Default, Debug, Clone)]
struct Stats {
    events: u64,
    writes: u64,
    entries_written: u64,
    applies: u64,
    applies_twice: u64,
    applies_failed: u64,
    deferred: u64,
    reads: u64,
    batches: u64,
    connects: u64,
    connect_failed: u64,
    closes: u64,
    dup_closes: u64,
    timeouts: u64,
    crashes: u64,
    upgrades: u64,
    schema_behind: u64,
    cuts: u64,
    drops: u64,
    max_unacked: usize,
    max_held: usize,
    compacted_entries: u64,
    /// Reads that skipped entries gone below the floor.
    gap_reads: u64,
    snapshot_batches: u64,
    snapshots_done: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.events += o.events;
        self.writes += o.writes;
        self.entries_written += o.entries_written;
        self.applies += o.applies;
        self.applies_twice += o.applies_twice;
        self.applies_failed += o.applies_failed;
        self.deferred += o.deferred;
        self.reads += o.reads;
        self.batches += o.batches;
        self.connects += o.connects;
        self.connect_failed += o.connect_failed;
        self.closes += o.closes;
        self.dup_closes += o.dup_closes;
        self.timeouts += o.timeouts;
        self.crashes += o.crashes;
        self.upgrades += o.upgrades;
        self.schema_behind += o.schema_behind;
        self.cuts += o.cuts;
        self.drops += o.drops;
        self.max_unacked = self.max_unacked.max(o.max_unacked);
        self.compacted_entries += o.compacted_entries;
        self.gap_reads += o.gap_reads;
        self.snapshot_batches += o.snapshot_batches;
        self.snapshots_done += o.snapshots_done;
        self.max_held = self.max_held.max(o.max_held);
    }
}

struct Sim {
    p: Params,
    rng: StdRng,
    now: Millis,
    seq: u64,
    events: BTreeMap<(Millis, u64), Ev>,
    nodes: Vec<Node>,
    names: BTreeMap<u64, String>,
    links: BTreeMap<LinkId, SimLink>,
    next_link: LinkId,
    cuts: BTreeSet<(usize, usize)>,
    trace: bool,
    stats: Stats,
    /// Random run: writes still to make; chaos runs while this is > 0.
    writes_left: u64,
}

fn name_of(names: &BTreeMap<u64, String>, origin: u64) -> String {
    names
        .get(&origin)
        .cloned()
        .unwrap_or_else(|| format!("?{origin}"))
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(p: Params, seed: u64, trace: bool) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0f0a_7b05_u64);
        let mut nodes = Vec::new();
        let mut names = BTreeMap::new();
        for i in 0..p.nodes {
            let name = format!("n{i}");
            let origin = client_id_of(&format!("sim-{seed}-{name}"));
            names.insert(origin, name.clone());
            let peers: Vec<usize> = match p.topology {
                Topology::Mesh => (0..p.nodes).filter(|&j| j != i).collect(),
                Topology::Hub if i == 0 => Vec::new(),
                Topology::Hub => vec![0],
                Topology::Chain if i == 0 => Vec::new(),
                Topology::Chain => vec![i - 1],
            };
            let skew = rng.gen_range(-200..=200);
            nodes.push(Node {
                name,
                origin,
                peers,
                core: None,
                inc: 0,
                ident_schema: 1,
                ident_hash: "h1".into(),
                auto_migrate: rng.gen_bool(0.5),
                store: Store {
                    origin,
                    schema: 1,
                    log: BTreeMap::new(),
                    docs: HashMap::new(),
                    vv: VersionVector::new(),
                    compacted: VersionVector::new(),
                    peers_seen: BTreeMap::new(),
                    hlc: Hlc::default(),
                    skew,
                },
            });
        }
        assert_eq!(names.len(), p.nodes, "origins are distinct");
        let mut sim = Sim {
            p,
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            names,
            links: BTreeMap::new(),
            next_link: 1,
            cuts: BTreeSet::new(),
            trace,
            stats: Stats::default(),
            writes_left: 0,
        };
        for n in 0..sim.nodes.len() {
            sim.start(n);
        }
        sim
    }

    fn at(&mut self, delay: Millis, ev: Ev) {
        self.seq += 1;
        self.events.insert((self.now + delay, self.seq), ev);
    }

    fn net_delay(&mut self) -> Millis {
        let r: f64 = self.rng.gen();
        if r < 0.9 || !self.p.chaos {
            self.rng.gen_range(0..=self.p.max_delay)
        } else if r < 0.995 || self.writes_left == 0 {
            self.rng.gen_range(self.p.max_delay..=150)
        } else {
            // A stall past the peer timeout (while faults run).
            self.rng.gen_range(150..=450)
        }
    }

    fn effect_delay(&mut self) -> Millis {
        if self.rng.gen_bool(0.9) {
            self.rng.gen_range(0..=15)
        } else {
            self.rng.gen_range(15..=100)
        }
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>7} {}", self.now, what());
        }
    }

    fn vv_str(&self, vv: &VersionVector) -> String {
        let parts: Vec<String> =
            vv.0.iter()
                .map(|(&o, &s)| format!("{}:{s}", name_of(&self.names, o)))
                .collect();
        format!("{{{}}}", parts.join(","))
    }

    fn entries_str(&self, entries: &[LogEntry]) -> String {
        let parts: Vec<String> = entries
            .iter()
            .map(|e| format!("{}:{}", name_of(&self.names, e.origin), e.seq))
            .collect();
        format!("[{}]", parts.join(" "))
    }

    fn msg_str(&self, msg: &Msg) -> String {
        match msg {
            Msg::Hello(h) => format!(
                "Hello({} schema {} have {})",
                name_of(&self.names, h.origin),
                h.schema_version,
                self.vv_str(&h.have)
            ),
            Msg::Entries(e) => format!("Entries{}", self.entries_str(e)),
            Msg::Ack { have, batches } => format!("Ack({batches}, {})", self.vv_str(have)),
            Msg::Bye { reason } => format!("Bye({reason})"),
            Msg::Snapshot { docs, done } => format!(
                "Snapshot({} docs, done {})",
                docs.len(),
                done.as_ref().map_or("-".into(), |d| self.vv_str(d))
            ),
            Msg::Keys(certs) => format!("Keys({})", certs.len()),
        }
    }

    fn input_str(&self, input: &Input) -> String {
        match input {
            Input::Received { link, msg } => format!("recv L{link} {}", self.msg_str(msg)),
            Input::LogAdvanced(vv) => format!("LogAdvanced {}", self.vv_str(vv)),
            Input::LogRead { link, entries } => {
                format!("LogRead L{link} {}", self.entries_str(entries))
            }
            other => format!("{other:?}"),
        }
    }

    fn output_str(&self, out: &Output) -> String {
        match out {
            Output::Send { link, msg } => format!("send L{link} {}", self.msg_str(msg)),
            Output::ReadLog {
                link,
                after,
                upto,
                max_entries,
                max_bytes,
                max_schema,
            } => format!(
                "ReadLog L{link} after {} upto {} max {max_entries}/{max_bytes}B schema<={max_schema}",
                self.vv_str(after),
                self.vv_str(upto)
            ),
            Output::Apply { link, entries, .. } => {
                format!("Apply L{link} {}", self.entries_str(entries))
            }
            Output::ApplySnapshot {
                link, docs, done, ..
            } => format!(
                "ApplySnapshot L{link} {} docs done {}",
                docs.len(),
                done.as_ref().map_or("-".into(), |d| self.vv_str(d))
            ),
            other => format!("{other:?}"),
        }
    }

    fn identity(&self, n: usize) -> Identity {
        let node = &self.nodes[n];
        Identity {
            node_id: node.name.clone(),
            origin: node.origin,
            schema_version: node.ident_schema,
            schema_hash: node.ident_hash.clone(),
            partial: false,
        }
    }

    /// Starts a new life of node `n` from its store.
    fn start(&mut self, n: usize) {
        assert!(self.nodes[n].core.is_none());
        let core = Core::new(
            self.p.config.clone(),
            self.identity(n),
            self.nodes[n].store.vv.clone(),
            self.nodes[n].peers.len(),
            self.now,
        );
        self.nodes[n].core = Some(core);
        let inc = self.nodes[n].inc;
        self.log(|| {
            format!(
                "{} starts (schema {})",
                self.nodes[n].name, self.nodes[n].ident_schema
            )
        });
        let d = self.rng.gen_range(0..=10);
        self.at(d, Ev::Tick { node: n, inc });
        // The driver tells a new core what its log may lack.
        let compacted = self.nodes[n].store.compacted.clone();
        self.handle(n, Input::Compacted(compacted));
        if let Some((every, _)) = self.p.compaction {
            let d = self.rng.gen_range(1..=every);
            self.at(d, Ev::CompactStart { node: n, inc });
        }
    }

    /// Kills node `n`: its links break, its in-flight applies either
    /// committed or not; the store survives.
    fn crash(&mut self, n: usize) {
        if self.nodes[n].core.take().is_none() {
            return;
        }
        self.stats.crashes += 1;
        let old = self.nodes[n].inc;
        self.nodes[n].inc += 1;
        self.log(|| format!("{} crashes", self.nodes[n].name));
        // Applies in flight: the transaction committed before the crash, or not.
        let pending: Vec<Vec<LogEntry>> = self
            .events
            .values()
            .filter_map(|ev| match ev {
                Ev::ApplyDone {
                    node,
                    inc,
                    entries,
                    fail: false,
                    ..
                } if *node == n && *inc == old => Some(entries.clone()),
                _ => None,
            })
            .collect();
        for entries in pending {
            if self.rng.gen_bool(0.5) {
                let me = self.nodes[n].name.clone();
                self.nodes[n].store.apply(&entries, &self.names, &me);
            }
        }
        let snapshots: Vec<(Vec<SnapshotDoc>, Option<VersionVector>)> = self
            .events
            .values()
            .filter_map(|ev| match ev {
                Ev::SnapshotDone {
                    node,
                    inc,
                    docs,
                    done,
                    fail: false,
                    ..
                } if *node == n && *inc == old => Some((docs.clone(), done.clone())),
                _ => None,
            })
            .collect();
        for (docs, done) in snapshots {
            if self.rng.gen_bool(0.5) {
                self.nodes[n].store.apply_snapshot(&docs, &done);
            }
        }
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            let l = &self.links[&id];
            let Some(e) = (0..2).find(|&e| l.ends[e] == n && l.incs[e] == old && l.open[e]) else {
                continue;
            };
            let other = 1 - e;
            let other_open = l.open[other];
            {
                let l = self.links.get_mut(&id).unwrap();
                l.open[e] = false;
                l.broken = true;
                l.queues = Default::default();
            }
            // The peer hears of it soon, or never (half-open: its timeout).
            if other_open && self.rng.gen_bool(0.7) {
                let d = self.rng.gen_range(1..=50);
                self.at(
                    d,
                    Ev::CloseNotify {
                        link: id,
                        end: other,
                    },
                );
            }
        }
    }

    /// Breaks a connection: queued messages are lost, both ends hear of it.
    fn break_link(&mut self, id: LinkId) {
        let l = self.links.get_mut(&id).unwrap();
        if l.broken {
            return;
        }
        l.broken = true;
        l.queues = Default::default();
        let open = l.open;
        self.log(|| format!("L{id} breaks"));
        for (e, open) in open.into_iter().enumerate() {
            if open {
                let d = self.rng.gen_range(1..=30);
                self.at(d, Ev::CloseNotify { link: id, end: e });
            }
        }
    }

    fn cut(&mut self, a: usize, b: usize) {
        if !self.cuts.insert(pair(a, b)) {
            return;
        }
        self.stats.cuts += 1;
        self.log(|| format!("cut n{a} | n{b}"));
        let ids: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| pair(l.ends[0], l.ends[1]) == pair(a, b) && !l.broken)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.break_link(id);
        }
    }

    /// Node `n` migrates its running database to `version`, and the
    /// driver tells the core (`Input::SchemaChanged`), as in production.
    fn migrate_live(&mut self, n: usize, version: i64) {
        if self.nodes[n].store.schema >= version {
            return;
        }
        self.stats.upgrades += 1;
        self.nodes[n].store.schema = version;
        self.log(|| format!("{} migrates live to schema {version}", self.nodes[n].name));
        self.announce_schema(n);
    }

    /// The node's core learns its store's schema (and hash).
    fn announce_schema(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.ident_schema = node.store.schema;
        if !node.ident_hash.starts_with('x') {
            node.ident_hash = format!("h{}", node.ident_schema);
        }
        let input = Input::SchemaChanged {
            version: node.ident_schema,
            hash: node.ident_hash.clone(),
        };
        self.handle(n, input);
    }

    /// Node `n` migrates to the next schema version: its store at once, its
    /// core (what it announces) at a restart, now or later. With `early`,
    /// the restarted core announces the version before the database has
    /// it (the migration ends later): its peers send newer entries, which
    /// the store defers. (Production announces after the commit, like
    /// `migrate_live`; these orders stand for a peer that errs.)
    fn upgrade(&mut self, n: usize, restart: bool, early: bool) {
        self.stats.upgrades += 1;
        if early && self.nodes[n].core.is_some() {
            self.crash(n);
            self.nodes[n].ident_schema = self.nodes[n].store.schema + 1;
            self.nodes[n].ident_hash = format!("h{}", self.nodes[n].ident_schema);
            self.start(n);
            let d = self.rng.gen_range(50..=1000);
            self.at(d, Ev::Migrated { node: n });
            return;
        }
        self.nodes[n].store.schema += 1;
        self.log(|| {
            format!(
                "{} migrates to schema {}",
                self.nodes[n].name, self.nodes[n].store.schema
            )
        });
        if restart && self.nodes[n].core.is_some() {
            self.crash(n);
            self.nodes[n].ident_schema = self.nodes[n].store.schema;
            self.nodes[n].ident_hash = format!("h{}", self.nodes[n].ident_schema);
            self.start(n);
        }
    }

    fn handle(&mut self, n: usize, input: Input) {
        let now = self.now;
        let Some(core) = self.nodes[n].core.as_mut() else {
            return;
        };
        let before = core.local().clone();
        let input_str = self.trace.then(|| self.input_str(&input));
        let core = self.nodes[n].core.as_mut().unwrap();
        let outs = core.handle(now, input);
        let after = core.local().clone();
        if let Some(s) = input_str {
            self.log(|| format!("{} <- {s}", self.nodes[n].name));
        }
        assert!(
            self.nodes[n].store.vv.covers(&after),
            "{}: the core's vector {} is past the log's {}",
            self.nodes[n].name,
            self.vv_str(&after),
            self.vv_str(&self.nodes[n].store.vv)
        );
        for out in outs {
            self.output(n, out, &before);
        }
    }

    /// Which end of `id` node `n` (in its current life) is.
    fn end_of(&self, id: LinkId, n: usize) -> usize {
        let l = &self.links[&id];
        let inc = self.nodes[n].inc;
        (0..2)
            .find(|&e| l.ends[e] == n && l.incs[e] == inc)
            .unwrap_or_else(|| panic!("n{n} used L{id}, which is not its link"))
    }

    fn output(&mut self, n: usize, out: Output, local_before: &VersionVector) {
        let me = self.nodes[n].name.clone();
        self.log(|| format!("{me} -> {}", self.output_str(&out)));
        let inc = self.nodes[n].inc;
        let window = self.p.config.window_batches;
        match out {
            Output::Send { link, msg } => {
                let d = self.end_of(link, n);
                let l = &self.links[&link];
                assert!(l.open[d], "{me} sent on L{link} after it closed");
                match &msg {
                    Msg::Entries(entries) => {
                        assert!(!entries.is_empty(), "{me}: an empty batch");
                        assert!(entries.len() <= self.p.config.batch_entries);
                        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
                        for e in entries {
                            if let Some(prev) = last.insert(e.origin, e.seq) {
                                assert_eq!(e.seq, prev + 1, "{me}: a batch skips or reorders seqs");
                            }
                        }
                        self.stats.batches += 1;
                        let l = self.links.get_mut(&link).unwrap();
                        l.unacked[d] += 1;
                        let u = l.unacked[d];
                        assert!(
                            u <= window,
                            "{me}: {u} unacked batches on L{link} (window {window})"
                        );
                        self.stats.max_unacked = self.stats.max_unacked.max(u);
                    }
                    Msg::Snapshot { docs, .. } => {
                        assert!(docs.len() <= self.p.config.batch_entries);
                        self.stats.snapshot_batches += 1;
                        let l = self.links.get_mut(&link).unwrap();
                        l.unacked[d] += 1;
                        let u = l.unacked[d];
                        assert!(
                            u <= window,
                            "{me}: {u} unacked batches on L{link} (window {window})"
                        );
                        self.stats.max_unacked = self.stats.max_unacked.max(u);
                    }
                    Msg::Ack { batches, .. } => {
                        let l = self.links.get_mut(&link).unwrap();
                        l.held[1 - d] = l.held[1 - d]
                            .checked_sub(*batches as usize)
                            .unwrap_or_else(|| {
                                panic!("{me} acked batches it never got on L{link}")
                            });
                    }
                    _ => {}
                }
                if self.links[&link].broken {
                    return;
                }
                let delay = self.net_delay();
                let l = self.links.get_mut(&link).unwrap();
                let t = l.last_at[d].max(self.now + delay);
                l.last_at[d] = t;
                l.queues[d].push_back(msg);
                self.seq += 1;
                self.events
                    .insert((t, self.seq), Ev::Deliver { link, dir: d });
            }
            Output::ReadLog {
                link,
                after,
                upto,
                max_entries,
                max_bytes,
                max_schema,
            } => {
                self.stats.reads += 1;
                let d = self.effect_delay();
                self.at(
                    d,
                    Ev::ReadDone {
                        node: n,
                        inc,
                        link,
                        after,
                        upto,
                        max_entries,
                        max_bytes,
                        max_schema,
                    },
                );
            }
            Output::Apply { link, entries, .. } => {
                assert!(!entries.is_empty(), "{me}: an empty Apply");
                for e in &entries {
                    assert!(
                        e.seq > local_before.get(e.origin),
                        "{me}: Apply of {}:{} which it holds (vector {})",
                        name_of(&self.names, e.origin),
                        e.seq,
                        self.vv_str(local_before)
                    );
                }
                let fail = self.rng.gen_bool(self.p.fail_apply);
                let twice = self.rng.gen_bool(self.p.dup_apply);
                let d = self.effect_delay();
                self.at(
                    d,
                    Ev::ApplyDone {
                        node: n,
                        inc,
                        link,
                        entries,
                        fail,
                        twice,
                    },
                );
            }
            Output::ReadDocs {
                link,
                after,
                max_docs,
                max_bytes,
            } => {
                let d = self.effect_delay();
                self.at(
                    d,
                    Ev::DocsDone {
                        node: n,
                        inc,
                        link,
                        after,
                        max_docs,
                        max_bytes,
                    },
                );
            }
            Output::ApplySnapshot {
                link, docs, done, ..
            } => {
                let fail = self.rng.gen_bool(self.p.fail_apply);
                let twice = self.rng.gen_bool(self.p.dup_apply);
                let d = self.effect_delay();
                self.at(
                    d,
                    Ev::SnapshotDone {
                        node: n,
                        inc,
                        link,
                        docs,
                        done,
                        fail,
                        twice,
                    },
                );
            }
            Output::SchemaBehind { version } => {
                assert!(
                    version > self.nodes[n].ident_schema,
                    "{me}: SchemaBehind {version}"
                );
                self.stats.schema_behind += 1;
                if self.nodes[n].auto_migrate {
                    // The migration runs on the writer, a little later.
                    let d = self.effect_delay();
                    self.at(
                        d,
                        Ev::AutoMigrate {
                            node: n,
                            inc,
                            version,
                        },
                    );
                }
            }
            Output::Connect { peer } => {
                self.stats.connects += 1;
                let d = self.rng.gen_range(1..=20);
                self.at(d, Ev::ConnectDone { from: n, inc, peer });
            }
            Output::Close { link, reason } => {
                assert!(
                    !reason.starts_with("protocol error"),
                    "{me} closed L{link}: {reason}"
                );
                self.stats.closes += 1;
                if reason.contains("same node") || reason.contains("link to this node exists") {
                    self.stats.dup_closes += 1;
                }
                if reason.contains("silent") {
                    self.stats.timeouts += 1;
                }
                let d = self.end_of(link, n);
                let l = self.links.get_mut(&link).unwrap();
                assert!(l.open[d], "{me} closed L{link} twice");
                l.open[d] = false;
                if !l.broken && l.open[1 - d] {
                    // The other end hears of it after what was queued.
                    let t = l.last_at[d].max(self.now) + 1;
                    self.seq += 1;
                    self.events
                        .insert((t, self.seq), Ev::CloseNotify { link, end: 1 - d });
                }
            }
        }
    }

    /// A local commit at node `n` of 1–3 rows (inserts, updates, deletes).
    fn write(&mut self, n: usize) {
        if self.nodes[n].core.is_none() {
            return;
        }
        let count = self.rng.gen_range(1..=3);
        let mut rows = BTreeMap::new();
        for _ in 0..count {
            let table = format!("t{}", self.rng.gen_range(0..self.p.tables));
            let key = self.rng.gen_range(0..self.p.rows);
            let row = if self.rng.gen_bool(0.25) {
                None
            } else {
                Some(vec![
                    ("id".to_string(), Value::Integer(key as i64)),
                    ("v".to_string(), Value::Integer(self.rng.gen_range(0..4))),
                    (
                        "w".to_string(),
                        Value::Text(format!("w{}", self.rng.gen_range(0..3))),
                    ),
                ])
            };
            rows.insert((table, key.to_string()), row);
        }
        self.commit(n, rows);
    }

    /// Records `rows` as one local transaction (one stamp, as `flush` does).
    fn commit(&mut self, n: usize, rows: Rows) {
        self.stats.writes += 1;
        let compact_above = self.p.compact_above;
        let now = self.now;
        let store = &mut self.nodes[n].store;
        let wall = (WALL_BASE as i64 + now as i64 + store.skew) as u64;
        let stamp = Stamp {
            hlc: store.hlc.tick(wall),
            origin: store.origin,
        };
        let mut wrote = Vec::new();
        for ((table, key), row) in rows {
            let doc = store
                .docs
                .entry((table.clone(), key.clone()))
                .or_insert_with(|| RowDoc::new(store.origin));
            let Some((update, _live)) = doc
                .record_local(stamp, row.as_deref(), compact_above, &|_, _| {
                    Unwritten::Write
                })
                .expect("record_local")
            else {
                continue;
            };
            let seq = store.vv.get(store.origin) + 1;
            let entry = LogEntry {
                origin: store.origin,
                seq,
                hlc: stamp.hlc,
                table,
                key,
                schema_version: store.schema,
                update,
                ..LogEntry::default()
            };
            wrote.push(format!("{}/{}#{seq}", entry.table, entry.key));
            store.log.insert((store.origin, seq), entry);
            store.vv.observe(store.origin, seq);
            self.stats.entries_written += 1;
        }
        if !wrote.is_empty() {
            self.log(|| format!("{} writes {}", self.nodes[n].name, wrote.join(" ")));
            let vv = self.nodes[n].store.vv.clone();
            self.handle(n, Input::LogAdvanced(vv));
        }
    }

    fn chaos(&mut self) {
        let n = self.p.nodes;
        match self.rng.gen_range(0..100) {
            0..=24 => {
                let open: Vec<LinkId> = self
                    .links
                    .iter()
                    .filter(|(_, l)| !l.broken && l.open.iter().any(|&o| o))
                    .map(|(&id, _)| id)
                    .collect();
                if !open.is_empty() {
                    let id = open[self.rng.gen_range(0..open.len())];
                    self.stats.drops += 1;
                    self.break_link(id);
                }
            }
            25..=44 => {
                let a = self.rng.gen_range(0..n);
                let b = self.rng.gen_range(0..n);
                if a != b {
                    self.cut(a, b);
                }
            }
            45..=64 => {
                if !self.cuts.is_empty() {
                    let i = self.rng.gen_range(0..self.cuts.len());
                    let c = *self.cuts.iter().nth(i).unwrap();
                    self.cuts.remove(&c);
                    self.log(|| format!("heal n{} | n{}", c.0, c.1));
                }
            }
            65..=79 => {
                let a = self.rng.gen_range(0..n);
                self.crash(a);
            }
            80..=94 => {
                let down: Vec<usize> = (0..n).filter(|&i| self.nodes[i].core.is_none()).collect();
                if !down.is_empty() {
                    let a = down[self.rng.gen_range(0..down.len())];
                    self.start(a);
                }
            }
            _ => {
                let a = self.rng.gen_range(0..n);
                let next = self.nodes[a].store.schema + 1;
                if next <= 3 && self.nodes[a].core.is_some() && self.rng.gen_bool(0.6) {
                    self.migrate_live(a, next);
                } else if next <= 3 {
                    let restart = self.rng.gen_bool(0.7);
                    let early = restart && self.rng.gen_bool(0.5);
                    self.upgrade(a, restart, early);
                }
            }
        }
    }

    fn step(&mut self) -> bool {
        let Some(((t, _), ev)) = self.events.pop_first() else {
            return false;
        };
        assert!(t >= self.now);
        self.now = t;
        self.stats.events += 1;
        match ev {
            Ev::Tick { node, inc } => {
                if self.nodes[node].inc != inc || self.nodes[node].core.is_none() {
                    return true;
                }
                self.handle(node, Input::Tick);
                let stall = self.p.chaos && self.writes_left > 0 && self.rng.gen_bool(0.01);
                let d = if stall {
                    self.rng.gen_range(25..=150) // a busy event loop
                } else {
                    self.rng.gen_range(5..=25)
                };
                self.at(d, Ev::Tick { node, inc });
            }
            Ev::Deliver { link, dir } => {
                let l = self.links.get_mut(&link).unwrap();
                if l.broken {
                    return true;
                }
                let msg = l.queues[dir].pop_front().expect("a queued message");
                let r = 1 - dir;
                if !l.open[r] {
                    return true;
                }
                let window = self.p.config.window_batches;
                match &msg {
                    Msg::Entries(_) | Msg::Snapshot { .. } => {
                        l.held[dir] += 1;
                        let h = l.held[dir];
                        assert!(
                            h <= window,
                            "L{link}: {h} batches held by the receiver (window {window})"
                        );
                        self.stats.max_held = self.stats.max_held.max(h);
                    }
                    Msg::Ack { batches, .. } => {
                        l.unacked[r] = l.unacked[r]
                            .checked_sub(*batches as usize)
                            .unwrap_or_else(|| panic!("L{link}: acked more than was sent"));
                    }
                    _ => {}
                }
                let node = l.ends[r];
                self.handle(node, Input::Received { link, msg });
            }
            Ev::CloseNotify { link, end } => {
                let l = self.links.get_mut(&link).unwrap();
                if !l.open[end] {
                    return true;
                }
                l.open[end] = false;
                l.broken = true;
                l.queues = Default::default();
                let node = l.ends[end];
                self.handle(node, Input::Closed { link });
            }
            Ev::ConnectDone { from, inc, peer } => {
                if self.nodes[from].inc != inc || self.nodes[from].core.is_none() {
                    return true;
                }
                let to = self.nodes[from].peers[peer];
                if self.nodes[to].core.is_none() || self.cuts.contains(&pair(from, to)) {
                    self.stats.connect_failed += 1;
                    let error = format!("n{to} unreachable");
                    self.handle(from, Input::ConnectFailed { peer, error });
                    return true;
                }
                let link = self.next_link;
                self.next_link += 1;
                self.links.insert(
                    link,
                    SimLink {
                        ends: [from, to],
                        incs: [inc, self.nodes[to].inc],
                        open: [true, true],
                        broken: false,
                        queues: Default::default(),
                        last_at: [self.now; 2],
                        unacked: [0; 2],
                        held: [0; 2],
                    },
                );
                self.handle(to, Input::Connected { link, peer: None });
                self.handle(
                    from,
                    Input::Connected {
                        link,
                        peer: Some(peer),
                    },
                );
            }
            Ev::ReadDone {
                node,
                inc,
                link,
                after,
                upto,
                max_entries,
                max_bytes,
                max_schema,
            } => {
                if self.nodes[node].inc != inc {
                    return true;
                }
                let (entries, gap) = self.nodes[node].store.read(
                    &after,
                    &upto,
                    max_entries,
                    max_bytes,
                    max_schema,
                    &mut self.rng,
                );
                if gap {
                    self.stats.gap_reads += 1;
                    self.log(|| format!("n{node}: the read skips compacted entries"));
                }
                self.handle(node, Input::LogRead { link, entries });
            }
            Ev::ApplyDone {
                node,
                inc,
                link,
                entries,
                fail,
                twice,
            } => {
                if self.nodes[node].inc != inc {
                    return true;
                }
                if fail {
                    self.stats.applies_failed += 1;
                    let outcome = ApplyOutcome::Failed("simulated I/O error".into());
                    self.handle(node, Input::Applied { link, outcome });
                    return true;
                }
                self.stats.applies += 1;
                let me = self.nodes[node].name.clone();
                let store = &mut self.nodes[node].store;
                let (advanced, deferred) = store.apply(&entries, &self.names, &me);
                if twice {
                    self.stats.applies_twice += 1;
                    let vv = store.vv.clone();
                    let (again, deferred2) = store.apply(&entries, &self.names, &me);
                    assert!(
                        !again && store.vv == vv,
                        "{me}: applying a batch twice changed the log"
                    );
                    assert_eq!(deferred, deferred2);
                }
                store.check_dense();
                if advanced {
                    let vv = store.vv.clone();
                    self.handle(node, Input::LogAdvanced(vv));
                }
                let outcome = match deferred {
                    Some(why) => {
                        self.stats.deferred += 1;
                        ApplyOutcome::Deferred(why)
                    }
                    None => ApplyOutcome::Done,
                };
                self.handle(node, Input::Applied { link, outcome });
            }
            Ev::Write => {
                if self.writes_left > 0 {
                    let up: Vec<usize> = (0..self.p.nodes)
                        .filter(|&i| self.nodes[i].core.is_some())
                        .collect();
                    if !up.is_empty() {
                        let n = up[self.rng.gen_range(0..up.len())];
                        self.write(n);
                        self.writes_left -= 1;
                    }
                    let d = self.rng.gen_range(1..=40);
                    self.at(d, Ev::Write);
                }
            }
            Ev::DocsDone {
                node,
                inc,
                link,
                after,
                max_docs,
                max_bytes,
            } => {
                if self.nodes[node].inc != inc {
                    return true;
                }
                let docs = self.nodes[node]
                    .store
                    .read_docs(&after, max_docs, max_bytes);
                self.handle(node, Input::DocsRead { link, docs });
            }
            Ev::SnapshotDone {
                node,
                inc,
                link,
                docs,
                done,
                fail,
                twice,
            } => {
                if self.nodes[node].inc != inc {
                    return true;
                }
                if fail {
                    self.stats.applies_failed += 1;
                    let outcome = ApplyOutcome::Failed("simulated I/O error".into());
                    self.handle(node, Input::Applied { link, outcome });
                    return true;
                }
                let store = &mut self.nodes[node].store;
                store.apply_snapshot(&docs, &done);
                if twice {
                    self.stats.applies_twice += 1;
                    store.apply_snapshot(&docs, &done);
                }
                store.check_dense();
                if done.is_some() {
                    self.stats.snapshots_done += 1;
                }
                let vv = store.vv.clone();
                self.handle(node, Input::LogAdvanced(vv));
                let outcome = ApplyOutcome::Done;
                self.handle(node, Input::Applied { link, outcome });
            }
            Ev::CompactStart { node, inc } => {
                let Some(core) = self.nodes[node].core.as_ref() else {
                    return true;
                };
                if self.nodes[node].inc != inc {
                    return true;
                }
                let acks: Vec<(String, VersionVector, Option<usize>)> = core
                    .status()
                    .into_iter()
                    .filter_map(|s| Some((s.node_id?, s.peer_has?, s.peer)))
                    .collect();
                let d = self.effect_delay();
                self.at(d, Ev::CompactRun { node, inc, acks });
                let every = self.p.compaction.expect("compaction on").0;
                let d = self.rng.gen_range(every / 2..=every);
                self.at(d, Ev::CompactStart { node, inc });
            }
            Ev::CompactRun { node, inc, acks } => {
                if self.nodes[node].inc != inc {
                    return true;
                }
                let retention = self.p.compaction.expect("compaction on").1;
                let configured = self.nodes[node].peers.len();
                let now = self.now;
                let deleted = self.nodes[node]
                    .store
                    .compact(acks, configured, now, retention);
                self.stats.compacted_entries += deleted as u64;
                if deleted > 0 {
                    self.log(|| {
                        format!(
                            "n{node} compacts {deleted} entries: floor {}",
                            self.vv_str(&self.nodes[node].store.compacted)
                        )
                    });
                }
                let compacted = self.nodes[node].store.compacted.clone();
                let d = self.rng.gen_range(0..=10);
                self.at(
                    d,
                    Ev::CompactedNotify {
                        node,
                        inc,
                        compacted,
                    },
                );
            }
            Ev::CompactedNotify {
                node,
                inc,
                compacted,
            } => {
                if self.nodes[node].inc == inc {
                    self.handle(node, Input::Compacted(compacted));
                }
            }
            Ev::AutoMigrate { node, inc, version } => {
                if self.nodes[node].inc == inc && self.nodes[node].core.is_some() {
                    self.migrate_live(node, version);
                }
            }
            Ev::Migrated { node } => {
                let node_ = &mut self.nodes[node];
                node_.store.schema = node_.store.schema.max(node_.ident_schema);
                self.log(|| format!("n{node}'s database migrated"));
            }
            Ev::Chaos => {
                if self.writes_left > 0 {
                    self.chaos();
                    let d = self.rng.gen_range(30..=300);
                    self.at(d, Ev::Chaos);
                }
            }
        }
        true
    }

    fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self
            .events
            .first_key_value()
            .is_some_and(|((t, _), _)| *t <= end)
        {
            self.step();
        }
        self.now = end;
    }

    /// Heals every cut and brings every node to the newest schema: running
    /// nodes migrate live, stopped ones start migrated.
    fn heal_all(&mut self) {
        self.log(|| "heal everything".to_string());
        self.cuts.clear();
        let newest = self
            .nodes
            .iter()
            .map(|n| n.store.schema.max(n.ident_schema))
            .max()
            .unwrap();
        for n in 0..self.nodes.len() {
            if self.nodes[n].core.is_some() {
                self.nodes[n].store.schema =
                    self.nodes[n].store.schema.max(self.nodes[n].ident_schema);
                self.migrate_live(n, newest);
                if self.nodes[n].ident_schema != newest {
                    self.announce_schema(n);
                }
            } else {
                self.nodes[n].store.schema = newest;
                self.nodes[n].ident_schema = newest;
                self.nodes[n].ident_hash = format!("h{newest}");
                self.start(n);
            }
        }
    }

    fn converged(&self) -> bool {
        let vv0 = &self.nodes[0].store.vv;
        self.nodes.iter().all(|node| {
            node.core
                .as_ref()
                .is_some_and(|c| c.is_quiet() && c.local() == &node.store.vv)
                && &node.store.vv == vv0
        })
    }

    /// Runs until every node is quiet and holds the same vector.
    fn run_until_converged(&mut self, budget: Millis) -> Result<(), String> {
        let end = self.now + budget;
        while self.now <= end {
            if self.converged() {
                return Ok(());
            }
            if !self.step() {
                return Err("no events left".into());
            }
        }
        Err(format!(
            "not converged after {budget} ms of healed network:\n{}",
            self.dump()
        ))
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for node in &self.nodes {
            s += &format!(
                "  {} log {} schema {}/{}",
                node.name,
                self.vv_str(&node.store.vv),
                node.store.schema,
                node.ident_schema
            );
            match &node.core {
                None => s += " DOWN\n",
                Some(c) => {
                    s += &format!(" core {} quiet {}\n", self.vv_str(c.local()), c.is_quiet());
                    for st in c.status() {
                        s += &format!(
                            "    L{:?} peer {:?} {:?} {} has {}\n",
                            st.link,
                            st.peer,
                            st.node_id,
                            st.state.as_str(),
                            st.peer_has.as_ref().map_or("-".into(), |h| self.vv_str(h))
                        );
                    }
                }
            }
        }
        s
    }

    /// The end-of-run checks: same vector, same log, same rows everywhere.
    fn check_equal(&self) -> Result<(), String> {
        let first = &self.nodes[0];
        let digest0 = first.store.digest();
        for node in &self.nodes {
            node.store.check_dense();
            if node.store.vv != first.store.vv {
                return Err(format!(
                    "{} holds {} but {} holds {}",
                    node.name,
                    self.vv_str(&node.store.vv),
                    first.name,
                    self.vv_str(&first.store.vv)
                ));
            }
            // Compaction drops entries below a floor: entries both hold
            // are the same; without compaction the logs are equal.
            let compacted =
                !node.store.compacted.0.is_empty() || !first.store.compacted.0.is_empty();
            let differ = if compacted {
                node.store
                    .log
                    .iter()
                    .any(|(k, e)| first.store.log.get(k).is_some_and(|f| f != e))
            } else {
                node.store.log != first.store.log
            };
            if differ {
                return Err(format!(
                    "{} and {} hold different logs",
                    node.name, first.name
                ));
            }
            let digest = node.store.digest();
            if digest != digest0 {
                let diff: Vec<String> = digest
                    .iter()
                    .zip(digest0.iter())
                    .filter(|(a, b)| a != b)
                    .take(3)
                    .map(|(a, b)| format!("{a:?} vs {b:?}"))
                    .collect();
                return Err(format!(
                    "{} and {} hold different rows ({} vs {} rows): {}",
                    node.name,
                    first.name,
                    digest.len(),
                    digest0.len(),
                    diff.join("; ")
                ));
            }
        }
        Ok(())
    }

    /// Open links between each configured pair: exactly one, established
    /// on both ends, and no stray ones.
    fn check_links(&self) -> Result<(), String> {
        let mut wanted = BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for &j in &node.peers {
                wanted.insert(pair(i, j));
            }
        }
        let mut have: BTreeMap<(usize, usize), Vec<LinkId>> = BTreeMap::new();
        for (&id, l) in &self.links {
            match l.open {
                [true, true] if !l.broken => {
                    have.entry(pair(l.ends[0], l.ends[1])).or_default().push(id)
                }
                [false, false] => {}
                _ if l.broken => return Err(format!("L{id} is broken but still open at one end")),
                _ => return Err(format!("L{id} is open at one end only: {:?}", l.open)),
            }
        }
        for p in &wanted {
            match have.get(p).map(Vec::as_slice) {
                Some([id]) => {
                    for &n in &[p.0, p.1] {
                        let core = self.nodes[n].core.as_ref().unwrap();
                        let established = core
                            .status()
                            .iter()
                            .any(|s| s.link == Some(*id) && s.node_id.is_some());
                        if !established {
                            return Err(format!("L{id} is not established at n{n}"));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "n{} and n{} have links {other:?}, not one",
                        p.0, p.1
                    ))
                }
            }
        }
        // Every configured peer shows as connected in the status.
        for (n, node) in self.nodes.iter().enumerate() {
            let status = node.core.as_ref().unwrap().status();
            for (p, &to) in node.peers.iter().enumerate() {
                let shown = status.iter().any(|s| {
                    s.peer == Some(p) && s.link.is_some() && s.state == PeerState::Connected
                });
                if !shown {
                    return Err(format!(
                        "n{n}'s configured peer {p} (n{to}) is not shown connected: {status:?}"
                    ));
                }
            }
        }
        if let Some(extra) = have.keys().find(|p| !wanted.contains(p)) {
            return Err(format!(
                "a link between unconfigured n{} and n{}",
                extra.0, extra.1
            ));
        }
        Ok(())
    }

    /// Converge, then stay converged with no reconnects or closes for a
    /// while, then check equality and the links. (A configured peer whose
    /// attempts all failed while the other node connected to it tries once
    /// more, and is refused as a duplicate: one window is allowed for that.)
    fn settle(&mut self, budget: Millis) -> Result<(), String> {
        self.run_until_converged(budget)?;
        let c = self.p.config.clone();
        self.run_for(c.retry_max + c.peer_timeout);
        let (connects, closes) = (self.stats.connects, self.stats.closes);
        let window = 2 * c.retry_max + c.peer_timeout;
        self.run_for(window);
        if self.stats.connects != connects || self.stats.closes != closes {
            return Err(format!(
                "links churn after convergence: {} connects and {} closes in {window} ms:\n{}",
                self.stats.connects - connects,
                self.stats.closes - closes,
                self.dump()
            ));
        }
        if !self.converged() {
            return Err(format!("converged, then not:\n{}", self.dump()));
        }
        self.check_equal()?;
        self.check_links()
    }
}

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".into()
    }
}

/// One random run: writes and faults, then heal and check.
fn run_seed(seed: u64, trace: bool) -> Result<Stats, String> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = Params::random(&mut rng);
        let writes = rng.gen_range(30..=150);
        if trace {
            println!("seed {seed}: {writes} writes, {p:?}");
        }
        let mut sim = Sim::new(p, seed, trace);
        sim.writes_left = writes;
        sim.at(1, Ev::Write);
        sim.at(50, Ev::Chaos);
        while sim.writes_left > 0 {
            assert!(sim.step(), "events ran out");
        }
        sim.heal_all();
        sim.settle(60_000).map(|()| sim.stats.clone())
    }));
    match result {
        Ok(r) => r,
        Err(e) => Err(panic_message(e)),
    }
}

#[test]
fn simulation_converges_for_500_seeds() {
    if let Ok(seed) = std::env::var("OUTPOST_SIM_SEED") {
        let seed: u64 = seed.parse().expect("OUTPOST_SIM_SEED is a number");
        match run_seed(seed, true) {
            Ok(stats) => println!("seed {seed} converged: {stats:?}"),
            Err(e) => panic!("seed {seed} failed: {e}"),
        }
        return;
    }
    let seeds: u64 = std::env::var("OUTPOST_SIM_SEEDS")
        .map(|s| s.parse().expect("OUTPOST_SIM_SEEDS is a number"))
        .unwrap_or(500);
    let started = Instant::now();
    // Seeds are independent: run them on a few threads, report in order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    let mut results: Vec<(u64, Result<Stats, String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (0..seeds)
                        .filter(|s| s % threads == t)
                        .map(|seed| (seed, run_seed(seed, false)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a worker thread"))
            .collect()
    });
    results.sort_by_key(|(seed, _)| *seed);
    let mut total = Stats::default();
    let mut failed = Vec::new();
    for (seed, result) in results {
        match result {
            Ok(stats) => total.add(&stats),
            Err(e) => {
                let first_line = e.lines().next().unwrap_or_default().to_string();
                println!("seed {seed} failed: {first_line}");
                failed.push((seed, e));
            }
        }
    }
    if let Some((seed, e)) = failed.first() {
        let seeds: Vec<u64> = failed.iter().map(|(s, _)| *s).collect();
        panic!(
            "seed {seed} failed: {e}; rerun with OUTPOST_SIM_SEED={seed} cargo test --test sync_sim \
             (add -- --nocapture for the step trace); failing seeds: {seeds:?}"
        );
    }
    println!(
        "{seeds} seeds converged in {:.1?}: {total:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------
// Focused, deterministic scenarios.

fn row(key: u64, v: i64) -> Option<Vec<(String, Value)>> {
    Some(vec![
        ("id".to_string(), Value::Integer(key as i64)),
        ("v".to_string(), Value::Integer(v)),
    ])
}

fn one_row(table: &str, key: u64, v: i64) -> Rows {
    BTreeMap::from([((table.to_string(), key.to_string()), row(key, v))])
}

fn link_stats(sim: &Sim, n: usize) -> Vec<outpost::sync::core::LinkStatus> {
    sim.nodes[n]
        .core
        .as_ref()
        .unwrap()
        .status()
        .into_iter()
        .filter(|s| s.link.is_some())
        .collect()
}

#[test]
fn two_nodes_exchange_1000_entries_in_windowed_batches() {
    let config = CoreConfig {
        batch_entries: 5,
        window_batches: 2,
        ..small_config()
    };
    let mut sim = Sim::new(Params::calm(2, Topology::Chain, config), 1, false);
    // Cut them apart while each writes 1000 entries, then let them meet.
    sim.cut(0, 1);
    for i in 0..1000u64 {
        sim.commit(0, one_row("a", i, 1));
        sim.commit(1, one_row("b", i, 2));
    }
    sim.run_for(100);
    sim.cuts.clear();
    sim.settle(60_000).unwrap();
    assert_eq!(sim.nodes[1].store.log.len(), 2000);
    assert_eq!(sim.stats.max_unacked, 2, "the window was used");
    for n in 0..2 {
        let links = link_stats(&sim, n);
        assert_eq!(links.len(), 1);
        let s = links[0].stats;
        assert_eq!((s.entries_sent, s.batches_sent), (1000, 200), "n{n}: {s:?}");
        assert_eq!(
            (s.entries_received, s.batches_applied),
            (1000, 200),
            "n{n}: {s:?}"
        );
    }
}

#[test]
fn a_node_offline_during_500_writes_catches_up() {
    let mut p = Params::calm(3, Topology::Mesh, small_config());
    p.rows = 5;
    let mut sim = Sim::new(p, 2, false);
    sim.run_for(200);
    sim.crash(2);
    for i in 0..500u64 {
        // Both live nodes write the same few rows: conflicts.
        let n = (i % 2) as usize;
        let mut rows = one_row("t", i % 5, i as i64);
        if i % 7 == 0 {
            rows.insert(("t".into(), ((i + 1) % 5).to_string()), None);
        }
        sim.commit(n, rows);
        sim.run_for(3);
    }
    assert!(sim.nodes[2].store.log.is_empty());
    sim.start(2);
    sim.settle(60_000).unwrap();
    assert!(sim.nodes[2].store.log.len() >= 500);
}

#[test]
fn duplicate_links_collapse_to_one_and_stay_one() {
    for seed in 0..20 {
        let mut p = Params::calm(2 + (seed as usize % 3), Topology::Mesh, small_config());
        p.max_delay = 0; // every pair connects both ways at once
        let mut sim = Sim::new(p, 100 + seed, false);
        for i in 0..20u64 {
            sim.commit((i % 2) as usize, one_row("t", i % 3, i as i64));
            sim.run_for(7);
        }
        if let Err(e) = sim.settle(30_000) {
            panic!("seed {seed}: {e}");
        }
        assert!(
            sim.stats.dup_closes > 0,
            "seed {seed}: duplicate links formed and were closed"
        );
    }
}

#[test]
fn a_silent_peer_is_closed_and_reconnects_with_doubling_backoff() {
    let config = small_config();
    let me = Identity {
        node_id: "a".into(),
        origin: 1,
        schema_version: 1,
        schema_hash: "h".into(),
        partial: false,
    };
    let mut core = Core::new(config.clone(), me, VersionVector::new(), 1, 0);
    let connects = |outs: &[Output]| {
        outs.iter()
            .any(|o| matches!(o, Output::Connect { peer: 0 }))
    };
    // Every attempt fails: the delay doubles from retry_min up to retry_max.
    let mut attempts = Vec::new();
    for t in 0..=1700 {
        let outs = core.handle(t, Input::Tick);
        if connects(&outs) {
            attempts.push(t);
            let error = "refused".to_string();
            assert!(core
                .handle(t, Input::ConnectFailed { peer: 0, error })
                .is_empty());
        }
    }
    assert_eq!(attempts, vec![0, 20, 60, 140, 300, 620, 1120, 1620]);
    // The next attempt succeeds, the peer says Hello, then falls silent.
    let t = 2120;
    assert!(connects(&core.handle(t, Input::Tick)));
    core.handle(
        t,
        Input::Connected {
            link: 7,
            peer: Some(0),
        },
    );
    let hello = outpost::sync::proto::Hello {
        protocol: outpost::sync::proto::PROTOCOL_VERSION,
        node_id: "b".into(),
        origin: 2,
        schema_version: 1,
        schema_hash: "h".into(),
        have: VersionVector::new(),
        partial: false,
    };
    core.handle(
        t + 5,
        Input::Received {
            link: 7,
            msg: Msg::Hello(hello),
        },
    );
    let mut heartbeats = 0;
    let mut closed_at = None;
    let mut reconnect_at = None;
    for now in t + 5..t + 1000 {
        for out in core.handle(now, Input::Tick) {
            match out {
                Output::Send {
                    msg: Msg::Ack { batches: 0, .. },
                    ..
                } => heartbeats += 1,
                Output::Close { link: 7, reason } => {
                    assert!(reason.contains("silent"), "{reason}");
                    closed_at = Some(now);
                }
                Output::Connect { peer: 0 } if reconnect_at.is_none() => reconnect_at = Some(now),
                _ => {}
            }
        }
    }
    assert_eq!(closed_at, Some(t + 5 + config.peer_timeout));
    assert!(heartbeats >= 5, "heartbeats while waiting: {heartbeats}");
    // The handshake succeeded, so the backoff starts again from retry_min.
    assert_eq!(
        reconnect_at,
        Some(t + 5 + config.peer_timeout + config.retry_min)
    );
    // A link whose peer never says Hello is closed too.
    let t = t + 1000; // the core's clock never goes back
    core.handle(
        t,
        Input::Connected {
            link: 8,
            peer: Some(0),
        },
    );
    let mut closed = None;
    for now in t..t + 400 {
        if core
            .handle(now, Input::Tick)
            .iter()
            .any(|o| matches!(o, Output::Close { link: 8, .. }))
        {
            closed = Some(now);
            break;
        }
    }
    assert_eq!(closed, Some(t + config.peer_timeout));
}

#[test]
fn newer_schema_entries_are_deferred_until_this_node_migrates() {
    let mut sim = Sim::new(Params::calm(2, Topology::Chain, small_config()), 3, false);
    // n0 writes under schema 1, migrates to 2, writes more.
    for i in 0..8u64 {
        sim.commit(0, one_row("t", i, 1));
    }
    sim.nodes[0].store.schema = 2;
    for i in 0..8u64 {
        sim.commit(0, one_row("u", i, 2));
    }
    // n1 announces schema 2 but its database is still at 1 (the migration
    // runs): n0 sends everything, n1 defers the newer entries.
    sim.crash(1);
    sim.nodes[1].ident_schema = 2;
    sim.start(1);
    sim.crash(0);
    sim.nodes[0].ident_schema = 2;
    sim.start(0);
    sim.run_for(2000);
    assert!(sim.stats.deferred > 0, "the newer entries were deferred");
    let n0 = sim.nodes[0].origin;
    assert_eq!(
        sim.nodes[1].store.vv.get(n0),
        8,
        "the older entries were applied"
    );
    assert!(sim.stats.closes > 0);
    println!(
        "while deferred: {} connects, {} closes, {} applies deferred",
        sim.stats.connects, sim.stats.closes, sim.stats.deferred
    );
    // The migration finishes: the entries arrive.
    sim.nodes[1].store.schema = 2;
    sim.settle(30_000).unwrap();
    assert_eq!(sim.nodes[1].store.vv.get(n0), 16);
}

#[test]
fn nodes_away_past_retention_catch_up_from_snapshots_and_relay_them() {
    // n1 -> n0, n2 -> n1, n3 -> n2; compaction every 100 ms, peers
    // forgotten after 500 ms of silence.
    let mut p = Params::calm(4, Topology::Chain, small_config());
    p.compaction = Some((100, 500));
    let mut sim = Sim::new(p, 4, false);
    sim.run_for(300);
    sim.crash(2);
    sim.crash(3);
    for i in 0..200u64 {
        sim.commit((i % 2) as usize, one_row("t", i % 4, i as i64));
        sim.run_for(5);
    }
    sim.run_for(1000);
    let n0 = sim.nodes[0].origin;
    assert!(
        sim.nodes[1].store.compacted.get(n0) > 50,
        "n1 compacted what n2 lacks"
    );
    // n2 comes back below n1's floor, n3 below what n2 will hold.
    sim.start(2);
    sim.run_for(30);
    sim.start(3);
    sim.settle(60_000).unwrap();
    assert!(sim.stats.snapshots_done >= 2, "{:?}", sim.stats);
    let n2 = &sim.nodes[2].store;
    assert!(
        n2.compacted.get(n0) > 50 && n2.log.len() < 300,
        "n2 holds documents, not the old entries"
    );
}

#[test]
fn a_node_that_migrates_live_resumes_without_a_restart() {
    let mut sim = Sim::new(Params::calm(2, Topology::Chain, small_config()), 5, false);
    sim.nodes[1].auto_migrate = false;
    for i in 0..8u64 {
        sim.commit(0, one_row("t", i, 1));
    }
    sim.migrate_live(0, 2);
    for i in 0..8u64 {
        sim.commit(0, one_row("u", i, 2));
    }
    sim.run_for(3000);
    let n0 = sim.nodes[0].origin;
    assert_eq!(
        sim.nodes[1].store.vv.get(n0),
        8,
        "n1 holds the entries of schema 1 and none of schema 2"
    );
    assert_eq!(sim.stats.deferred, 0, "n0 withheld them, n1 never deferred");
    let status = sim.nodes[1].core.as_ref().unwrap().status();
    assert!(
        status
            .iter()
            .any(|s| matches!(&s.paused, Some((PauseKind::Schema, _)))),
        "n1 shows the link paused for the schema: {status:?}"
    );
    assert!(sim.stats.schema_behind > 0, "n1 was told to migrate");
    let connects = sim.stats.connects;
    sim.migrate_live(1, 2);
    sim.settle(30_000).unwrap();
    assert_eq!(sim.nodes[1].store.vv.get(n0), 16);
    assert!(
        sim.stats.connects > connects,
        "the new version is announced on new links"
    );
}

#[test]
fn diverged_schemas_exchange_nothing_until_they_agree() {
    let mut sim = Sim::new(Params::calm(2, Topology::Chain, small_config()), 6, false);
    sim.nodes[1].ident_hash = "x1".into();
    sim.announce_schema(1);
    for i in 0..6u64 {
        sim.commit(0, one_row("t", i, 1));
        sim.commit(1, one_row("u", i, 1));
    }
    sim.run_for(3000);
    let (n0, n1) = (sim.nodes[0].origin, sim.nodes[1].origin);
    assert_eq!(sim.nodes[1].store.vv.get(n0), 0, "n1 applied nothing of n0");
    assert_eq!(sim.nodes[0].store.vv.get(n1), 0, "n0 applied nothing of n1");
    for n in 0..2 {
        let status = sim.nodes[n].core.as_ref().unwrap().status();
        assert!(
            status
                .iter()
                .any(|s| matches!(&s.paused, Some((PauseKind::SchemaHash, _)))),
            "n{n} shows the link paused for diverged schemas: {status:?}"
        );
    }
    sim.nodes[1].ident_hash = "h1".into();
    sim.announce_schema(1);
    sim.settle(30_000).unwrap();
    assert_eq!(sim.nodes[1].store.vv.get(n0), 6);
    assert_eq!(sim.nodes[0].store.vv.get(n1), 6);
}
