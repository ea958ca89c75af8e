//! The replication state machine, sans IO.
//!
//! [`Core`] knows nothing of sockets, clocks, threads or the database. The
//! driver (the transport in production, the simulation in tests) feeds it
//! [`Input`]s — a link came up or went down, a message arrived, the log
//! advanced, an effect finished, time passed — and carries out the
//! [`Output`]s it returns: send a message, read entries from the log, apply
//! entries to the database, connect to a peer, close a link. Every decision
//! (what to send, when to retry, when a peer is dead, which duplicate link
//! to keep) is made here, so a seeded simulation can replay any history.
//!
//! ## How a link works
//! A link is one connection between two nodes, used in both directions.
//! Each side sends `Hello` with its version vector. From then on each side
//! *pushes*: it reads from its log the entries above what it has sent (or
//! the peer said it holds), in batches bounded by count and bytes, keeping
//! at most `window_batches` unacknowledged. The receiving side applies one
//! batch at a time, in order, and acknowledges it with its new vector. New
//! local writes and entries applied from any other peer advance the log,
//! which wakes every link: that is both live push and transitive relay.
//!
//! ## Why nothing is lost
//! - A node's vector is read from its database after each apply, never
//!   guessed; a link starts from the peer's vector in its `Hello`.
//! - Per origin, a pusher sends entries in seq order from a dense log, and a
//!   receiver applies batches in arrival order, so a receiver's log stays
//!   dense. If an apply fails, the link closes: the next link restarts from
//!   the vectors, so nothing is skipped, and duplicates are no-ops.
//! - Everything unsent stays in the log on disk: the core buffers at most
//!   `window_batches` batches per link in each direction.
//!
//! ## Schema versions
//! Every entry carries the schema version it was written under, and a node
//! never applies one from a newer version: a pusher reads for a peer only
//! entries up to the peer's version (stopping, per origin, at the first
//! newer one, so nothing is skipped). A node that learns of a newer peer
//! emits [`Output::SchemaBehind`] (the driver migrates if it can) and shows
//! the link as paused. When its own schema changes
//! ([`Input::SchemaChanged`]) it reconnects every link, so peers learn the
//! new version from the new `Hello` and send what they held back. Peers at
//! the same version with different schema hashes have diverged: neither
//! sends nor applies anything on that link. A peer at an older version
//! never gets a snapshot (its documents would hold columns it lacks); it
//! waits until it migrates.

use std::collections::{BTreeMap, VecDeque};

use crate::db::capture::{LogEntry, SnapshotDoc};

use super::proto::{Hello, Msg, PROTOCOL_VERSION};
use super::vv::VersionVector;

/// A connection, numbered by the driver (unique for the driver's lifetime).
pub type LinkId = u64;
/// A configured peer, numbered by the driver (index into its peer list).
pub type PeerId = usize;
/// Milliseconds on the driver's clock (monotonic; any origin).
pub type Millis = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    pub batch_entries: usize,
    pub batch_bytes: usize,
    pub window_batches: usize,
    pub retry_min: Millis,
    pub retry_max: Millis,
    pub heartbeat: Millis,
    pub peer_timeout: Millis,
}

impl CoreConfig {
    pub fn from_config(c: &crate::config::SyncConfig) -> CoreConfig {
        CoreConfig {
            batch_entries: c.batch_entries,
            batch_bytes: c.batch_bytes,
            window_batches: c.window_batches,
            retry_min: c.retry_min.as_millis() as Millis,
            retry_max: c.retry_max.as_millis() as Millis,
            heartbeat: c.heartbeat.as_millis() as Millis,
            peer_timeout: c.peer_timeout.as_millis() as Millis,
        }
    }
}

/// Who this node is, as the handshake tells peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub origin: u64,
    pub schema_version: i64,
    pub schema_hash: String,
    /// A partial replica (`sync.partial`).
    pub partial: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A connection is up. `peer` is Some for connections this node made.
    Connected {
        link: LinkId,
        peer: Option<PeerId>,
    },
    /// Connecting to a configured peer failed.
    ConnectFailed {
        peer: PeerId,
        error: String,
    },
    /// The connection is gone (closed by either side or broken).
    Closed {
        link: LinkId,
    },
    Received {
        link: LinkId,
        msg: Msg,
    },
    /// The local log holds this now (after a local commit or an apply).
    LogAdvanced(VersionVector),
    /// The result of [`Output::ReadLog`].
    LogRead {
        link: LinkId,
        entries: Vec<LogEntry>,
    },
    /// The result of [`Output::ReadDocs`].
    DocsRead {
        link: LinkId,
        docs: Vec<SnapshotDoc>,
    },
    /// The result of [`Output::Apply`] or [`Output::ApplySnapshot`].
    Applied {
        link: LinkId,
        outcome: ApplyOutcome,
    },
    /// The local log may now lack entries at or below this (compacted, or
    /// covered by a snapshot): a peer below it gets a snapshot.
    Compacted(VersionVector),
    /// This node's schema is now at `version` with `hash` (a migration ran,
    /// or DDL changed the tables).
    SchemaChanged {
        version: i64,
        hash: String,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Every entry was applied, a duplicate, or quarantined.
    Done,
    /// Entries from a newer schema were deferred: stop taking entries
    /// from this link until this node has migrated.
    Deferred(String),
    /// The apply failed (database error): nothing of the batch is known
    /// to have been applied.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send {
        link: LinkId,
        msg: Msg,
    },
    /// Read log entries with `after[origin] < seq <= upto[origin]`, in seq
    /// order per origin, at most `max_entries` and about `max_bytes` of
    /// updates (at least one entry), and only entries whose schema version
    /// is at most `max_schema` (stopping at the first newer one per origin);
    /// reply with [`Input::LogRead`].
    ReadLog {
        link: LinkId,
        after: VersionVector,
        upto: VersionVector,
        max_entries: usize,
        max_bytes: usize,
        max_schema: i64,
    },
    /// Apply these remote entries; reply with [`Input::Applied`], and with
    /// [`Input::LogAdvanced`] first if the log advanced.
    Apply {
        link: LinkId,
        peer: String,
        entries: Vec<LogEntry>,
    },
    /// Read row documents after `after` in (table, key) order, at most
    /// `max_docs` and about `max_bytes` (at least one); reply with
    /// [`Input::DocsRead`] (empty: the end).
    ReadDocs {
        link: LinkId,
        after: Option<(String, String)>,
        max_docs: usize,
        max_bytes: usize,
    },
    /// Merge these documents of a peer's snapshot; `done` (on the last
    /// batch) is the peer's vector when the snapshot began. Reply with
    /// [`Input::Applied`], and [`Input::LogAdvanced`] first.
    ApplySnapshot {
        link: LinkId,
        peer: String,
        docs: Vec<SnapshotDoc>,
        done: Option<VersionVector>,
    },
    Connect {
        peer: PeerId,
    },
    Close {
        link: LinkId,
        reason: String,
    },
    /// A peer is at a newer schema `version`: migrate if possible (repeated
    /// every tick while it lasts; the driver decides how often to try).
    SchemaBehind {
        version: i64,
    },
}

/// Why a link carries nothing in some direction, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseKind {
    /// The peer is at a newer schema version (or, sending side, needs a
    /// snapshot but is at an older one).
    Schema,
    /// Same schema version, different schema hash.
    SchemaHash,
    /// An apply was deferred (entries from a newer schema arrived).
    Deferred,
}

impl PauseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseKind::Schema => "schema",
            PauseKind::SchemaHash => "schema_hash",
            PauseKind::Deferred => "deferred",
        }
    }
}

/// What a peer link is doing, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Handshaking,
    Connected,
    BackingOff,
    /// Connected, but not taking entries (e.g. a newer schema).
    Paused,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Connecting => "connecting",
            PeerState::Handshaking => "handshaking",
            PeerState::Connected => "connected",
            PeerState::BackingOff => "backing_off",
            PeerState::Paused => "paused",
        }
    }

    pub const ALL: [PeerState; 5] = [
        PeerState::Connecting,
        PeerState::Handshaking,
        PeerState::Connected,
        PeerState::BackingOff,
        PeerState::Paused,
    ];
}

/// One open connection.
#[derive(Debug)]
struct Link {
    peer: Option<PeerId>,
    /// The other side, once its Hello arrived.
    remote: Option<Hello>,
    last_heard: Millis,
    last_sent: Millis,
    // Push side.
    /// Entries the other side holds or has been sent on this link.
    sent: VersionVector,
    unacked: usize,
    reading: bool,
    /// The local vector when a read came back empty: read again only
    /// once the log moved past it (or changed below it: `LogAdvanced`).
    empty_at: Option<VersionVector>,
    /// Set while the peer is sent a snapshot (it was behind compaction).
    snapshot: Option<SnapshotCursor>,
    // Receive side.
    inbox: VecDeque<Batch>,
    applying: bool,
    /// Set when this side stopped taking entries (schema).
    paused: Option<String>,
    /// Same schema version, different hash: nothing moves either way.
    diverged: bool,
    stats: LinkStats,
}

/// Where a snapshot being sent stands.
#[derive(Debug, Clone)]
struct SnapshotCursor {
    /// The local vector when it began: the documents hold at least this.
    upto: VersionVector,
    /// The last document sent.
    after: Option<(String, String)>,
}

/// A received batch waiting to be applied.
#[derive(Debug)]
enum Batch {
    Entries(Vec<LogEntry>),
    Snapshot {
        docs: Vec<SnapshotDoc>,
        done: Option<VersionVector>,
    },
}

/// Counters per link, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub entries_sent: u64,
    pub entries_received: u64,
    pub batches_sent: u64,
    pub batches_applied: u64,
}

/// A configured peer: reconnect bookkeeping.
#[derive(Debug, Clone)]
struct Peer {
    link: Option<LinkId>,
    connecting: bool,
    backoff: Millis,
    next_attempt: Millis,
    last_error: Option<String>,
}

/// A view of one link or configured peer, for `/status`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkStatus {
    pub link: Option<LinkId>,
    pub peer: Option<PeerId>,
    pub node_id: Option<String>,
    pub origin: Option<u64>,
    pub state: PeerState,
    pub paused: Option<(PauseKind, String)>,
    pub remote_schema_version: Option<i64>,
    pub last_error: Option<String>,
    /// What the peer said it holds.
    pub peer_has: Option<VersionVector>,
    pub stats: LinkStats,
}

pub struct Core {
    config: CoreConfig,
    me: Identity,
    now: Millis,
    local: VersionVector,
    /// The local log may lack entries at or below this.
    compacted: VersionVector,
    links: BTreeMap<LinkId, Link>,
    peers: Vec<Peer>,
    out: Vec<Output>,
}

impl Core {
    /// `peers`: how many configured peers to keep connected (ids 0..peers).
    pub fn new(
        config: CoreConfig,
        me: Identity,
        local: VersionVector,
        peers: usize,
        now: Millis,
    ) -> Core {
        assert!(config.window_batches > 0 && config.batch_entries > 0 && config.batch_bytes > 0);
        assert!(config.retry_min > 0 && config.retry_min <= config.retry_max);
        assert!(config.heartbeat < config.peer_timeout);
        let peer = Peer {
            link: None,
            connecting: false,
            backoff: config.retry_min,
            next_attempt: now,
            last_error: None,
        };
        Core {
            config,
            me,
            now,
            local,
            compacted: VersionVector::new(),
            links: BTreeMap::new(),
            peers: vec![peer; peers],
            out: Vec::new(),
        }
    }

    pub fn local(&self) -> &VersionVector {
        &self.local
    }

    /// Advances the clock to `now` (never backwards) and handles `input`.
    /// Returns what the driver must do, in order.
    pub fn handle(&mut self, now: Millis, input: Input) -> Vec<Output> {
        self.now = self.now.max(now);
        match input {
            Input::Connected { link, peer } => self.on_connected(link, peer),
            Input::ConnectFailed { peer, error } => self.on_connect_failed(peer, error),
            Input::Closed { link } => self.on_closed(link),
            Input::Received { link, msg } => self.on_message(link, msg),
            Input::LogAdvanced(vv) => self.on_log_advanced(vv),
            Input::LogRead { link, entries } => self.on_log_read(link, entries),
            Input::DocsRead { link, docs } => self.on_docs_read(link, docs),
            Input::Compacted(vv) => {
                self.compacted.merge(&vv);
                self.on_log_advanced(VersionVector::new());
            }
            Input::Applied { link, outcome } => self.on_applied(link, outcome),
            Input::SchemaChanged { version, hash } => self.on_schema_changed(version, hash),
            Input::Tick => self.on_tick(),
        }
        std::mem::take(&mut self.out)
    }

    fn on_connected(&mut self, link: LinkId, peer: Option<PeerId>) {
        assert!(!self.links.contains_key(&link), "link ids are unique");
        if let Some(p) = peer {
            let state = &mut self.peers[p];
            state.connecting = false;
            if let Some(old) = state.link.replace(link) {
                self.close(old, "replaced by a new connection");
            }
        }
        self.links.insert(
            link,
            Link {
                peer,
                remote: None,
                last_heard: self.now,
                last_sent: self.now,
                sent: VersionVector::new(),
                unacked: 0,
                reading: false,
                empty_at: None,
                snapshot: None,
                inbox: VecDeque::new(),
                applying: false,
                paused: None,
                diverged: false,
                stats: LinkStats::default(),
            },
        );
        let hello = Msg::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            node_id: self.me.node_id.clone(),
            origin: self.me.origin,
            schema_version: self.me.schema_version,
            schema_hash: self.me.schema_hash.clone(),
            have: self.local.clone(),
            partial: self.me.partial,
        });
        self.send(link, hello);
    }

    fn on_connect_failed(&mut self, peer: PeerId, error: String) {
        let state = &mut self.peers[peer];
        state.connecting = false;
        state.last_error = Some(error);
        self.schedule_retry(peer);
    }

    fn schedule_retry(&mut self, peer: PeerId) {
        let state = &mut self.peers[peer];
        state.next_attempt = self.now + state.backoff;
        state.backoff = (state.backoff * 2).min(self.config.retry_max);
    }

    fn on_closed(&mut self, link: LinkId) {
        if self.links.remove(&link).is_none() {
            return;
        }
        // The peer that made the link, or that uses it since its own link
        // lost to it as a duplicate.
        for p in 0..self.peers.len() {
            if self.peers[p].link == Some(link) {
                self.peers[p].link = None;
                self.schedule_retry(p);
            }
        }
    }

    /// Closes a link now (the driver reports no `Closed` for it).
    fn close(&mut self, link: LinkId, reason: &str) {
        if self.links.contains_key(&link) {
            self.send(
                link,
                Msg::Bye {
                    reason: reason.to_string(),
                },
            );
            self.out.push(Output::Close {
                link,
                reason: reason.to_string(),
            });
            self.on_closed(link);
        }
    }

    fn send(&mut self, link: LinkId, msg: Msg) {
        if let Some(l) = self.links.get_mut(&link) {
            l.last_sent = self.now;
            self.out.push(Output::Send { link, msg });
        }
    }

    fn on_message(&mut self, link: LinkId, msg: Msg) {
        let Some(l) = self.links.get_mut(&link) else {
            return; // a message racing the close
        };
        l.last_heard = self.now;
        let established = l.remote.is_some();
        match msg {
            Msg::Hello(hello) if !established => self.on_hello(link, hello),
            Msg::Hello(_) => self.close(link, "protocol error: a second Hello"),
            _ if !established => self.close(link, "protocol error: a message before Hello"),
            Msg::Entries(entries) => self.on_entries(link, entries),
            Msg::Snapshot { docs, done } => self.on_snapshot(link, docs, done),
            Msg::Ack { have, batches } => self.on_ack(link, have, batches),
            Msg::Bye { reason } => {
                // Shown in the status: e.g. why the peer refuses this node.
                for peer in self.peers.iter_mut().filter(|p| p.link == Some(link)) {
                    peer.last_error = Some(format!("the peer closed the link: {reason}"));
                }
                self.close(link, "the peer closed the link")
            }
            // Certificates are the driver's business (`sync::keys`).
            Msg::Keys(_) => {}
        }
    }

    fn on_hello(&mut self, link: LinkId, hello: Hello) {
        if hello.protocol != PROTOCOL_VERSION {
            let reason = format!(
                "protocol version {} is not {PROTOCOL_VERSION}",
                hello.protocol
            );
            return self.close(link, &reason);
        }
        if hello.origin == self.me.origin {
            return self.close(link, "connected to itself");
        }
        if self.duplicate_of(link, &hello) == Some(true) {
            return; // closed
        }
        let diverged = hello.schema_version == self.me.schema_version
            && hello.schema_version > 0
            && hello.schema_hash != self.me.schema_hash;
        let newer = hello.schema_version > self.me.schema_version;
        let remote_version = hello.schema_version;
        let l = self.links.get_mut(&link).expect("caller checked");
        l.sent = hello.have.clone();
        if diverged {
            l.diverged = true;
            l.paused = Some(format!(
                "schema diverged: both nodes are at schema version {}, but the peer's schema hash is {} and this node's {}; nothing is sent or applied until they agree (same migration files on both)",
                hello.schema_version, hello.schema_hash, self.me.schema_hash
            ));
        }
        l.remote = Some(hello);
        if let Some(p) = l.peer {
            self.peers[p].backoff = self.config.retry_min;
            self.peers[p].last_error = None;
        }
        if newer {
            self.out.push(Output::SchemaBehind {
                version: remote_version,
            });
        }
        self.pump(link);
    }

    /// This node migrated (or its tables changed): reconnect every link so
    /// that peers learn the new version and hash from the new Hello.
    fn on_schema_changed(&mut self, version: i64, hash: String) {
        let announced =
            version != self.me.schema_version || (version > 0 && hash != self.me.schema_hash);
        self.me.schema_version = version;
        self.me.schema_hash = hash;
        if !announced {
            return; // unmanaged schema (version 0): hashes are not compared
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.close(
                link,
                &format!("schema changed to version {version}: reconnecting to announce it"),
            );
        }
        for peer in &mut self.peers {
            peer.backoff = self.config.retry_min;
            peer.next_attempt = self.now;
        }
    }

    /// If another established link leads to the same node, decides which
    /// one stays and closes the one that goes: Some(true) keeps the other
    /// (this one is closed); Some(false) closes the other. Both nodes
    /// decide alike: the link started by the node with the smaller origin
    /// stays; between two links started by the same node, the newer one.
    fn duplicate_of(&mut self, link: LinkId, hello: &Hello) -> Option<bool> {
        let this_outbound = self.links[&link].peer.is_some();
        let other = self.links.iter().find_map(|(&id, l)| {
            (id != link && l.remote.as_ref().is_some_and(|r| r.origin == hello.origin))
                .then_some((id, l.peer.is_some()))
        })?;
        let (other_id, other_outbound) = other;
        let keep_other = if this_outbound == other_outbound {
            false
        } else {
            let mine_started_by_me = this_outbound;
            let i_am_smaller = self.me.origin < hello.origin;
            mine_started_by_me != i_am_smaller
        };
        if keep_other {
            self.close_duplicate(link, other_id, "a link to this node exists");
        } else {
            self.close_duplicate(other_id, link, "replaced by another link to the same node");
        }
        Some(keep_other)
    }

    /// Closes `closed`, a duplicate of `kept`. A configured peer whose
    /// link was `closed` uses `kept` from now on: it reconnects when
    /// `kept` closes, not at once (else the node that lost the rule would
    /// reconnect, and be refused, every `retry_max` forever).
    fn close_duplicate(&mut self, closed: LinkId, kept: LinkId, reason: &str) {
        let adopting: Vec<PeerId> = (0..self.peers.len())
            .filter(|&p| self.peers[p].link == Some(closed))
            .collect();
        self.close(closed, reason);
        for p in adopting {
            let peer = &mut self.peers[p];
            peer.link = Some(kept);
            peer.backoff = self.config.retry_min;
            peer.last_error = None;
        }
    }

    /// Whether `link`'s inbox can take one more batch (else the peer broke
    /// the window and the link is closed).
    fn inbox_has_room(&mut self, link: LinkId) -> bool {
        let l = self.links.get_mut(&link).expect("caller checked");
        if l.inbox.len() > self.config.window_batches {
            self.close(
                link,
                "protocol error: more unacknowledged batches than the window",
            );
            return false;
        }
        true
    }

    fn on_snapshot(&mut self, link: LinkId, docs: Vec<SnapshotDoc>, done: Option<VersionVector>) {
        if !self.inbox_has_room(link) {
            return;
        }
        if self.links[&link]
            .remote
            .as_ref()
            .is_some_and(|r| r.schema_version > self.me.schema_version)
        {
            return self.close(
                link,
                "protocol error: a snapshot from a newer schema version",
            );
        }
        if docs.len() > self.config.batch_entries {
            return self.close(
                link,
                "protocol error: a snapshot batch larger than sync.batch_entries",
            );
        }
        let l = self.links.get_mut(&link).expect("caller checked");
        if let Some(done) = &done {
            l.sent.merge(done);
        }
        l.inbox.push_back(Batch::Snapshot { docs, done });
        self.start_apply(link);
    }

    fn on_entries(&mut self, link: LinkId, entries: Vec<LogEntry>) {
        if !self.inbox_has_room(link) {
            return;
        }
        let l = self.links.get_mut(&link).expect("caller checked");
        if entries.len() > self.config.batch_entries {
            return self.close(
                link,
                "protocol error: a batch larger than sync.batch_entries",
            );
        }
        l.stats.entries_received += entries.len() as u64;
        // The peer holds what it sent: never push it back, and count it
        // as held in its status.
        for e in &entries {
            l.sent.observe(e.origin, e.seq);
            if let Some(remote) = l.remote.as_mut() {
                remote.have.observe(e.origin, e.seq);
            }
        }
        l.inbox.push_back(Batch::Entries(entries));
        self.start_apply(link);
    }

    fn start_apply(&mut self, link: LinkId) {
        let local = &self.local;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.applying || l.paused.is_some() {
            return;
        }
        let Some(batch) = l.inbox.pop_front() else {
            return;
        };
        let peer = l
            .remote
            .as_ref()
            .map_or_else(String::new, |r| r.node_id.clone());
        let batch = match batch {
            Batch::Entries(entries) => entries,
            Batch::Snapshot { docs, done } => {
                l.applying = true;
                if let Some(done) = &done {
                    // Once this applies, the log may lack entries at or
                    // below `done`: a peer below it must get a snapshot
                    // from here too, not the entries above it (a gap).
                    // Known now, before the LogAdvanced that lets links
                    // push from the new vector.
                    self.compacted.merge(done);
                }
                self.out.push(Output::ApplySnapshot {
                    link,
                    peer,
                    docs,
                    done,
                });
                return;
            }
        };
        // Entries this node holds already are dropped here (the database
        // would call them duplicates anyway).
        let fresh: Vec<LogEntry> = batch
            .into_iter()
            .filter(|e| e.seq > local.get(e.origin))
            .collect();
        if fresh.is_empty() {
            l.stats.batches_applied += 1;
            let have = self.local.clone();
            self.send(link, Msg::Ack { have, batches: 1 });
            return self.start_apply(link);
        }
        l.applying = true;
        self.out.push(Output::Apply {
            link,
            peer,
            entries: fresh,
        });
    }

    fn on_applied(&mut self, link: LinkId, outcome: ApplyOutcome) {
        let Some(l) = self.links.get_mut(&link) else {
            return; // closed meanwhile; the next link starts from the vectors
        };
        assert!(l.applying, "an Applied without an Apply");
        l.applying = false;
        match outcome {
            ApplyOutcome::Done => {
                l.stats.batches_applied += 1;
                let have = self.local.clone();
                self.send(link, Msg::Ack { have, batches: 1 });
                self.start_apply(link);
            }
            ApplyOutcome::Deferred(reason) => {
                // The rest of the batch and the window are dropped: the
                // peer resends them when the link is made again.
                l.inbox.clear();
                l.paused = Some(reason.clone());
                // Reconnecting soon would only meet the same entries: wait
                // the longest backoff, and say why in the peer's status.
                if let Some(p) = l.peer {
                    self.peers[p].backoff = self.config.retry_max;
                    self.peers[p].last_error = Some(format!("paused: {reason}"));
                }
                self.close(link, &format!("paused: {reason}"));
            }
            ApplyOutcome::Failed(error) => {
                self.close(link, &format!("applying a batch failed: {error}"));
            }
        }
    }

    fn on_ack(&mut self, link: LinkId, have: VersionVector, batches: u64) {
        let l = self.links.get_mut(&link).expect("caller checked");
        if batches as usize > l.unacked {
            return self.close(
                link,
                "protocol error: acknowledged more batches than were sent",
            );
        }
        l.unacked -= batches as usize;
        l.sent.merge(&have);
        if let Some(remote) = l.remote.as_mut() {
            remote.have.merge(&have);
        }
        self.pump(link);
    }

    fn on_log_advanced(&mut self, vv: VersionVector) {
        self.local.merge(&vv);
        // The log changed, maybe only below the vector (a quarantined entry
        // was replayed into a gap a read stopped at): read again.
        for l in self.links.values_mut() {
            l.empty_at = None;
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.pump(link);
        }
    }

    /// Asks for the next batch for `link` if the window has room and the
    /// log holds entries the peer lacks.
    fn pump(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let Some(remote) = &l.remote else {
            return;
        };
        if l.reading || l.unacked >= self.config.window_batches || l.diverged {
            return;
        }
        if self.local.ahead_of(&l.sent).next().is_none() {
            return;
        }
        let behind =
            l.snapshot.is_none() && behind_compaction(&self.compacted, &self.local, &l.sent);
        if behind && remote.schema_version < self.me.schema_version {
            // The documents may hold columns the peer lacks: it gets a
            // snapshot once it migrated (and reconnected).
            return;
        }
        // A read that came back empty is not asked again until the log
        // moves, unless the peer is behind the compaction floor: the read
        // may have been empty because the entries were compacted meanwhile.
        if !behind && l.empty_at.as_ref().is_some_and(|at| at.covers(&self.local)) {
            return;
        }
        if behind {
            // Entries the peer lacks are gone from the log: send it every
            // row document instead, then the log from where they stand.
            l.snapshot = Some(SnapshotCursor {
                upto: self.local.clone(),
                after: None,
            });
        }
        l.reading = true;
        l.empty_at = None;
        if let Some(cursor) = &l.snapshot {
            self.out.push(Output::ReadDocs {
                link,
                after: cursor.after.clone(),
                max_docs: self.config.batch_entries,
                max_bytes: self.config.batch_bytes,
            });
            return;
        }
        let max_schema = remote.schema_version;
        self.out.push(Output::ReadLog {
            link,
            after: l.sent.clone(),
            upto: self.local.clone(),
            max_entries: self.config.batch_entries,
            max_bytes: self.config.batch_bytes,
            max_schema,
        });
    }

    fn on_docs_read(&mut self, link: LinkId, docs: Vec<SnapshotDoc>) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        assert!(l.reading, "a DocsRead without a ReadDocs");
        l.reading = false;
        let Some(cursor) = l.snapshot.as_mut() else {
            return;
        };
        assert!(docs.len() <= self.config.batch_entries);
        let done = if docs.is_empty() {
            let upto = cursor.upto.clone();
            l.sent.merge(&upto);
            l.snapshot = None;
            Some(upto)
        } else {
            let last = docs.last().expect("not empty");
            cursor.after = Some((last.table.clone(), last.key.clone()));
            None
        };
        l.unacked += 1;
        l.stats.batches_sent += 1;
        self.send(link, Msg::Snapshot { docs, done });
        self.pump(link);
    }

    fn on_log_read(&mut self, link: LinkId, entries: Vec<LogEntry>) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        assert!(l.reading, "a LogRead without a ReadLog");
        l.reading = false;
        if entries.is_empty() {
            // Nothing readable (e.g. held back by schema): wait for the
            // log to move instead of asking again at once.
            l.empty_at = Some(self.local.clone());
            return;
        }
        assert!(entries.len() <= self.config.batch_entries);
        // Entries are read in seq order per origin from what the peer holds
        // (l.sent only grew since): a first entry above l.sent + 1 means the
        // ones between were compacted after the read was asked for (the
        // Compacted input is on its way). Never send the peer a gap: take
        // the floor from the read and send a snapshot instead.
        let mut gone = VersionVector::new();
        let mut first = VersionVector::new();
        for e in &entries {
            if first.get(e.origin) == 0 && e.seq > l.sent.get(e.origin) + 1 {
                gone.observe(e.origin, e.seq - 1);
            }
            first.observe(e.origin, e.seq);
        }
        if !gone.0.is_empty() {
            self.compacted.merge(&gone);
            return self.pump(link);
        }
        for e in &entries {
            l.sent.observe(e.origin, e.seq);
        }
        l.unacked += 1;
        l.stats.entries_sent += entries.len() as u64;
        l.stats.batches_sent += 1;
        self.send(link, Msg::Entries(entries));
        self.pump(link);
    }

    fn on_tick(&mut self) {
        let now = self.now;
        let mut dead = Vec::new();
        let mut idle = Vec::new();
        for (&id, l) in &self.links {
            if now.saturating_sub(l.last_heard) >= self.config.peer_timeout {
                dead.push(id);
            } else if l.remote.is_some() && now.saturating_sub(l.last_sent) >= self.config.heartbeat
            {
                idle.push(id);
            }
        }
        for link in dead {
            self.close(link, "the peer was silent past sync.peer_timeout");
        }
        for link in idle {
            let have = self.local.clone();
            self.send(link, Msg::Ack { have, batches: 0 });
        }
        let newest = self
            .links
            .values()
            .filter_map(|l| l.remote.as_ref().map(|r| r.schema_version))
            .max()
            .unwrap_or(0);
        if newest > self.me.schema_version {
            self.out.push(Output::SchemaBehind { version: newest });
        }
        for p in 0..self.peers.len() {
            let peer = &mut self.peers[p];
            if peer.link.is_none() && !peer.connecting && now >= peer.next_attempt {
                peer.connecting = true;
                self.out.push(Output::Connect { peer: p });
            }
        }
    }

    /// Links and configured peers, for `/status`.
    pub fn status(&self) -> Vec<LinkStatus> {
        let mut all: Vec<LinkStatus> = self
            .links
            .iter()
            .map(|(&id, l)| LinkStatus {
                link: Some(id),
                // The peer that made the link, or that uses it since its
                // own link lost to it as a duplicate.
                peer: l
                    .peer
                    .or_else(|| self.peers.iter().position(|p| p.link == Some(id))),
                node_id: l.remote.as_ref().map(|r| r.node_id.clone()),
                origin: l.remote.as_ref().map(|r| r.origin),
                state: match (&l.remote, self.pause_reason(l)) {
                    (None, _) => PeerState::Handshaking,
                    (Some(_), Some(_)) => PeerState::Paused,
                    (Some(_), None) => PeerState::Connected,
                },
                paused: self.pause_reason(l),
                remote_schema_version: l.remote.as_ref().map(|r| r.schema_version),
                last_error: None,
                peer_has: l.remote.as_ref().map(|r| r.have.clone()),
                stats: l.stats,
            })
            .collect();
        for (p, peer) in self.peers.iter().enumerate() {
            if peer.link.is_some() {
                continue;
            }
            all.push(LinkStatus {
                link: None,
                peer: Some(p),
                node_id: None,
                origin: None,
                state: if peer.connecting {
                    PeerState::Connecting
                } else {
                    PeerState::BackingOff
                },
                paused: None,
                remote_schema_version: None,
                last_error: peer.last_error.clone(),
                peer_has: None,
                stats: LinkStats::default(),
            });
        }
        all
    }

    /// Why `l` carries nothing in some direction, if it does not.
    fn pause_reason(&self, l: &Link) -> Option<(PauseKind, String)> {
        if let Some(reason) = &l.paused {
            let kind = if l.diverged {
                PauseKind::SchemaHash
            } else {
                PauseKind::Deferred
            };
            return Some((kind, reason.clone()));
        }
        let remote = l.remote.as_ref()?;
        let (theirs, mine) = (remote.schema_version, self.me.schema_version);
        if theirs > mine {
            return Some((
                PauseKind::Schema,
                format!("schema: the peer is at schema version {theirs}, this node at {mine}; its newer entries wait in its log until this node migrates"),
            ));
        }
        let needs_snapshot = l.snapshot.is_none()
            && behind_compaction(&self.compacted, &self.local, &l.sent)
            && self.local.ahead_of(&l.sent).next().is_some();
        (theirs < mine && needs_snapshot).then(|| {
            (
                PauseKind::Schema,
                format!("schema: the peer is behind this node's log compaction and at schema version {theirs}, this node at {mine}; it gets a snapshot once it migrates"),
            )
        })
    }

    /// Whether every established link's peer holds everything this node
    /// holds, and nothing waits to be applied (the simulation's "quiet").
    pub fn is_quiet(&self) -> bool {
        self.links.values().all(|l| {
            !l.reading
                && !l.applying
                && l.inbox.is_empty()
                && l.unacked == 0
                && l.remote
                    .as_ref()
                    .is_some_and(|r| r.have.covers(&self.local))
        })
    }
}

/// Whether a peer that holds `sent` needs entries the log no longer has:
/// for some origin, the peer is below the compacted floor and this node
/// holds more than the peer.
fn behind_compaction(
    compacted: &VersionVector,
    local: &VersionVector,
    sent: &VersionVector,
) -> bool {
    compacted
        .0
        .iter()
        .any(|(&origin, &floor)| sent.get(origin) < floor && local.get(origin) > sent.get(origin))
}
