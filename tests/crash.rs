//! Crash safety with real processes: concurrent HTTP writers, `kill -9` of
//! the server at a random moment, then `outpost check` on the dead node's data
//! dir (every replicated row matches its CRDT document, every document is in
//! the change log, `seq` dense per origin), then a restart on the same data dir
//! and a check that every acknowledged write is there with its acknowledged
//! value. The data dir is kept across cycles (the long variant starts a fresh
//! one every 40), so later cycles also crash a node that has recovered from
//! earlier crashes.
//!
//! Seeded: the seed is printed and in every failure message; reproduce a run's
//! choices (kill moments, each writer's operations and values) with
//! `OUTPOST_CRASH_SEED=<seed> cargo test --test crash`. Timing across threads
//! and processes is not deterministic, so a seed replays the same workload, not
//! the same interleaving. `OUTPOST_CRASH_CYCLES=<n>` overrides the cycle count.
//! On failure the data dir is copied to `$TMPDIR/outpost-crash-seed<seed>-cycle<n>/now`,
//! and the files as the kill left them (before `check` and the restart touched
//! them) to `.../after-kill`.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::{Options, Server};

const WRITERS: i64 = 8;
/// The server is killed this long (ms, uniform) after the writers start.
const KILL_WINDOW_MS: std::ops::RangeInclusive<u64> = 50..=300;
/// Rows fetched per SELECT when reading a table back (below `max_response_rows`).
const PAGE: usize = 5000;
const REGIONS: [&str; 5] = ["eu-west", "us-east", "ap-south", "zürich", "東京"];

#[test]
fn sigkill_keeps_every_acknowledged_write() {
    crash_cycles(20, 20);
}

/// 200 kills, on a fresh data dir every 40 (`outpost check` reads the whole
/// change log, which only grows, so one dir for all 200 would make the later
/// cycles slow without testing anything new).
#[test]
#[ignore = "long: 200 kill cycles (cargo test --test crash -- --ignored)"]
fn sigkill_keeps_every_acknowledged_write_long() {
    crash_cycles(200, 40);
}

/// A row's identity: `acked` is keyed by an INTEGER PRIMARY KEY, `tagged` by
/// a composite TEXT one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Acked(i64),
    Tagged(String, String),
}

/// What a row may look like after a crash. `None` is "absent".
#[derive(Debug)]
struct Row {
    /// The state the last acknowledged write left (absent if the insert was
    /// never acknowledged or a delete was).
    acked: Option<String>,
    /// States written since then by writes whose outcome is unknown (lost in
    /// the crash or answered with an error); each may or may not be durable.
    maybe: Vec<Option<String>>,
}

impl Row {
    fn allows(&self, state: &Option<String>) -> bool {
        self.acked == *state || self.maybe.contains(state)
    }
}

/// One writer's rows. A writer only ever touches its own rows, one request at
/// a time, so "the later acknowledgement wins" is well defined per row.
struct Writer {
    id: i64,
    next: i64,
    rows: BTreeMap<Key, Row>,
    /// Rows known to exist (acknowledged), candidates for updates and deletes.
    live: Vec<Key>,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    acked_inserts: u64,
    acked_batches: u64,
    acked_updates: u64,
    acked_deletes: u64,
    unknown: u64,
}

impl Stats {
    fn acked(&self) -> u64 {
        self.acked_inserts + self.acked_batches + self.acked_updates + self.acked_deletes
    }

    fn add(&mut self, o: Stats) {
        self.acked_inserts += o.acked_inserts;
        self.acked_batches += o.acked_batches;
        self.acked_updates += o.acked_updates;
        self.acked_deletes += o.acked_deletes;
        self.unknown += o.unknown;
    }
}

/// What a writer brings back from a cycle.
struct Report {
    writer: Writer,
    stats: Stats,
    /// Responses no correct server gives to this workload (in-band errors,
    /// non-200 statuses, wrong row counts).
    anomalies: Vec<String>,
}

/// Seed and cycle, for every message.
#[derive(Clone, Copy)]
struct Ctx {
    seed: u64,
    cycle: u32,
}

impl std::fmt::Display for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[seed={} cycle={}; reproduce with OUTPOST_CRASH_SEED={}]",
            self.seed, self.cycle, self.seed
        )
    }
}

impl Ctx {
    /// Copies the data dir (and, if given, the copy taken right after the
    /// kill) somewhere that outlives the test, then panics.
    fn fail(&self, dir: Option<&Path>, crashed: Option<&Path>, msg: String) -> ! {
        let keep = std::env::temp_dir().join(format!(
            "outpost-crash-seed{}-cycle{}",
            self.seed, self.cycle
        ));
        let mut saved = Vec::new();
        for (name, from) in [("now", dir), ("after-kill", crashed)] {
            let Some(from) = from else { continue };
            let to = keep.join(name);
            saved.push(match copy_dir(from, &to) {
                Ok(()) => format!("{name}: {}", to.display()),
                Err(e) => format!("{name}: could not copy to {}: {e}", to.display()),
            });
        }
        panic!("{self} {msg}\n(data dir saved: {})", saved.join("; "));
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Replaces `to` with a copy of the data dir `from`.
fn snapshot(ctx: &Ctx, from: &Path, to: &Path) {
    let copy = || -> std::io::Result<()> {
        for entry in std::fs::read_dir(to)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        copy_dir(from, to)
    };
    copy().unwrap_or_else(|e| panic!("{ctx} copying the data dir after the kill: {e}"));
}

fn crash_cycles(default_cycles: u32, cycles_per_dir: u32) {
    let seed = match std::env::var("OUTPOST_CRASH_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("OUTPOST_CRASH_SEED must be an unsigned integer"),
        Err(_) => rand::random(),
    };
    let cycles = match std::env::var("OUTPOST_CRASH_CYCLES") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("OUTPOST_CRASH_CYCLES must be a number"),
        Err(_) => default_cycles,
    };
    eprintln!(
        "crash test: seed {seed}, {cycles} cycles (reproduce with OUTPOST_CRASH_SEED={seed})"
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = Stats::default();
    let mut rows = 0;
    let mut first = 1;
    while first <= cycles {
        let last = cycles.min(first + cycles_per_dir - 1);
        rows += one_data_dir(seed, &mut rng, first..=last, &mut total);
        first = last + 1;
    }
    assert!(
        total.acked() > 0,
        "[seed={seed}] no write was acknowledged in {cycles} cycles: the test checked nothing"
    );
    eprintln!(
        "crash test: seed {seed}, {cycles} cycles, {} acknowledged writes ({} inserts, {} batches, \
         {} updates, {} deletes), {} unknown outcomes, {rows} rows left, {:.1?}",
        total.acked(),
        total.acked_inserts,
        total.acked_batches,
        total.acked_updates,
        total.acked_deletes,
        total.unknown,
        started.elapsed()
    );
}

/// Runs `cycles` on one fresh data dir, then shuts down cleanly and checks the
/// digest; returns how many rows are left.
fn one_data_dir(
    seed: u64,
    rng: &mut StdRng,
    cycles: std::ops::RangeInclusive<u32>,
    total: &mut Stats,
) -> usize {
    let mut server = Server::start();
    let ctx = Ctx {
        seed,
        cycle: *cycles.start() - 1,
    };
    for sql in [
        "CREATE TABLE acked (id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, v TEXT)",
        "CREATE TABLE tagged (region TEXT NOT NULL, name TEXT NOT NULL, writer INTEGER NOT NULL, \
         v TEXT, PRIMARY KEY (region, name))",
    ] {
        let r = common::exec(&server, None, sql);
        assert_eq!(r["type"], "ok", "{ctx} {sql}: {r}");
    }

    let mut writers: Vec<Writer> = (0..WRITERS)
        .map(|id| Writer {
            id,
            next: 0,
            rows: BTreeMap::new(),
            live: Vec::new(),
        })
        .collect();
    let crashed = tempfile::tempdir().unwrap();

    let last = *cycles.end();
    for cycle in cycles {
        let ctx = Ctx { seed, cycle };
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = writers
            .drain(..)
            .map(|w| {
                let url = format!("{}/v2/pipeline", server.api);
                let rng = StdRng::seed_from_u64(rng.gen());
                let stop = stop.clone();
                std::thread::spawn(move || write_until_crash(w, &url, rng, cycle, &stop))
            })
            .collect();

        // The crash moment (a deliberate random delay, not a readiness wait).
        let window = rng.gen_range(KILL_WINDOW_MS);
        std::thread::sleep(Duration::from_millis(window));
        server.kill();
        stop.store(true, Ordering::SeqCst);

        let mut cycle_stats = Stats::default();
        let mut anomalies = Vec::new();
        for h in handles {
            let report = h.join().unwrap_or_else(|p| {
                panic!("{ctx} a writer thread panicked: {}", panic_message(&p))
            });
            cycle_stats.add(report.stats);
            anomalies.extend(report.anomalies);
            writers.push(report.writer);
        }
        writers.sort_by_key(|w| w.id);
        total.add(cycle_stats);
        if !anomalies.is_empty() {
            let logs = server.stderr_lines().join("\n");
            ctx.fail(
                Some(server.data_dir()),
                None,
                format!(
                    "unexpected responses before the crash:\n{}\nserver stderr:\n{logs}",
                    anomalies.join("\n")
                ),
            );
        }

        // Keep the files exactly as the crash left them, for a failure report
        // (`check` and the restart recover the database in place).
        snapshot(&ctx, server.data_dir(), crashed.path());

        // Offline integrity check of the killed node's files.
        let t = Instant::now();
        check(&ctx, server.data_dir(), Some(crashed.path()), &[]);
        let check_time = t.elapsed();

        // A failed start drops (deletes) the data dir; the copy taken after
        // the kill is what reproduces it.
        let t = Instant::now();
        server = match catch_unwind(AssertUnwindSafe(move || server.restart(Options::default()))) {
            Ok(server) => server,
            Err(p) => ctx.fail(
                None,
                Some(crashed.path()),
                format!("restart after kill -9 failed: {}", panic_message(&p)),
            ),
        };
        let restart_time = t.elapsed();
        let t = Instant::now();
        verify(&ctx, &server, crashed.path(), &mut writers);
        eprintln!(
            "cycle {cycle}: killed after {window} ms; acked {} (inserts {}, batches {}, updates {}, \
             deletes {}), unknown {}; check {:.0?}, restart+verify {:.0?}",
            cycle_stats.acked(),
            cycle_stats.acked_inserts,
            cycle_stats.acked_batches,
            cycle_stats.acked_updates,
            cycle_stats.acked_deletes,
            cycle_stats.unknown,
            check_time,
            restart_time + t.elapsed(),
        );
    }

    let ctx = Ctx { seed, cycle: last };
    // A clean shutdown at the end, and the digest of what survived.
    let status = server.terminate();
    assert!(status.success(), "{ctx} graceful shutdown: {status:?}");
    let out = check(&ctx, server.data_dir(), None, &["--digest"]);
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("digest "))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{ctx} `outpost check --digest` printed no digest line:\n{out}"));
    assert!(
        !digest.is_empty() && digest.chars().all(|c| c.is_ascii_hexdigit()),
        "{ctx} digest is not hex: {digest:?}"
    );
    writers.iter().map(|w| w.rows.len()).sum()
}

/// Runs `outpost check [extra] --data-dir DIR`, which must exit 0; returns stdout.
fn check(ctx: &Ctx, dir: &Path, crashed: Option<&Path>, extra: &[&str]) -> String {
    let mut args = vec!["check"];
    args.extend_from_slice(extra);
    args.extend(["--data-dir", dir.to_str().unwrap()]);
    let (status, out, err) = common::run(&args);
    if !status.success() {
        ctx.fail(
            Some(dir),
            crashed,
            format!(
                "`outpost {}` failed ({status}) after kill -9\n--- stdout\n{out}\n--- stderr\n{err}",
                args.join(" ")
            ),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Writers

enum Outcome {
    /// HTTP 200 and no error for the statement/batch: the write is committed.
    Acked(Value),
    /// An answer that is not an acknowledgement (not expected in this workload).
    Refused(String),
    /// No (complete) answer: the server died. The write may or may not be durable.
    Lost,
}

/// Issues writes, one at a time, until the server dies (or `stop` is set).
fn write_until_crash(
    mut w: Writer,
    url: &str,
    mut rng: StdRng,
    cycle: u32,
    stop: &AtomicBool,
) -> Report {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build();
    let mut stats = Stats::default();
    let mut anomalies = Vec::new();
    let mut op = 0u64;
    while !stop.load(Ordering::SeqCst) {
        op += 1;
        let tag = format!("c{cycle} w{} op{op}", w.id);
        let roll = rng.gen_range(0..100);
        let lost = if roll < 40 || w.live.is_empty() {
            let key = new_key(&mut w, &mut rng);
            let v = value(&mut rng, &tag);
            let (sql, args) = insert_sql(&key, w.id, &v);
            let outcome = send(&agent, url, single(sql, args));
            let outcome = expect_rows(outcome, 1, &tag, "insert");
            record_inserts(&mut w, &mut stats, &mut anomalies, vec![(key, v)], outcome)
        } else if roll < 65 {
            let mut rows = Vec::new();
            let mut steps = vec![json!({"stmt": {"sql": "BEGIN IMMEDIATE"}})];
            for i in 0..3 {
                let key = new_key(&mut w, &mut rng);
                let v = value(&mut rng, &format!("{tag}.{i}"));
                let (sql, args) = insert_sql(&key, w.id, &v);
                steps.push(json!({
                    "condition": {"type": "ok", "step": steps.len() - 1},
                    "stmt": {"sql": sql, "args": args},
                }));
                rows.push((key, v));
            }
            steps.push(json!({"condition": {"type": "ok", "step": 3}, "stmt": {"sql": "COMMIT"}}));
            steps.push(json!({
                "condition": {"type": "not", "cond": {"type": "ok", "step": 4}},
                "stmt": {"sql": "ROLLBACK"},
            }));
            let body = json!({"baton": null, "requests": [
                {"type": "batch", "batch": {"steps": steps}},
                {"type": "close"},
            ]});
            let outcome = match send(&agent, url, body) {
                Outcome::Acked(r) => match batch_committed(&r) {
                    Ok(()) => Outcome::Acked(r),
                    Err(e) => Outcome::Refused(format!("{tag} batch: {e}: {r}")),
                },
                other => other,
            };
            record_inserts(&mut w, &mut stats, &mut anomalies, rows, outcome)
        } else {
            let i = rng.gen_range(0..w.live.len());
            let key = w.live[i].clone();
            let delete = roll >= 95;
            let v = (!delete).then(|| value(&mut rng, &tag));
            let (sql, args) = match (&key, &v) {
                (Key::Acked(id), Some(v)) => (
                    "UPDATE acked SET v = ? WHERE id = ?",
                    vec![text(v), int(*id)],
                ),
                (Key::Tagged(r, n), Some(v)) => (
                    "UPDATE tagged SET v = ? WHERE region = ? AND name = ?",
                    vec![text(v), text(r), text(n)],
                ),
                (Key::Acked(id), None) => ("DELETE FROM acked WHERE id = ?", vec![int(*id)]),
                (Key::Tagged(r, n), None) => (
                    "DELETE FROM tagged WHERE region = ? AND name = ?",
                    vec![text(r), text(n)],
                ),
            };
            let what = if delete { "delete" } else { "update" };
            let outcome = expect_rows(send(&agent, url, single(sql, args)), 1, &tag, what);
            let row = w.rows.get_mut(&key).expect("live row has a model");
            match outcome {
                Outcome::Acked(_) => {
                    row.acked = v;
                    row.maybe.clear();
                    if delete {
                        stats.acked_deletes += 1;
                        w.live.swap_remove(i);
                    } else {
                        stats.acked_updates += 1;
                    }
                    false
                }
                Outcome::Refused(e) => {
                    anomalies.push(e);
                    stats.unknown += 1;
                    row.maybe.push(v);
                    // Its existence is uncertain now: leave it alone until verified.
                    w.live.swap_remove(i);
                    false
                }
                Outcome::Lost => {
                    stats.unknown += 1;
                    row.maybe.push(v);
                    w.live.swap_remove(i);
                    true
                }
            }
        };
        if lost {
            break;
        }
    }
    Report {
        writer: w,
        stats,
        anomalies,
    }
}

/// Records the outcome of inserting `rows` atomically; returns whether the
/// server is gone.
fn record_inserts(
    w: &mut Writer,
    stats: &mut Stats,
    anomalies: &mut Vec<String>,
    rows: Vec<(Key, String)>,
    outcome: Outcome,
) -> bool {
    let batch = rows.len() > 1;
    let acked = matches!(outcome, Outcome::Acked(_));
    for (key, v) in rows {
        let row = if acked {
            w.live.push(key.clone());
            Row {
                acked: Some(v),
                maybe: Vec::new(),
            }
        } else {
            Row {
                acked: None,
                maybe: vec![Some(v)],
            }
        };
        assert!(w.rows.insert(key, row).is_none(), "key reused");
    }
    match outcome {
        Outcome::Acked(_) if batch => stats.acked_batches += 1,
        Outcome::Acked(_) => stats.acked_inserts += 1,
        Outcome::Refused(e) => {
            anomalies.push(e);
            stats.unknown += 1;
        }
        Outcome::Lost => {
            stats.unknown += 1;
            return true;
        }
    }
    false
}

fn new_key(w: &mut Writer, rng: &mut StdRng) -> Key {
    w.next += 1;
    if rng.gen_bool(0.5) {
        Key::Acked(w.id * 1_000_000_000_000 + w.next)
    } else {
        let region = REGIONS[rng.gen_range(0..REGIONS.len())];
        Key::Tagged(region.to_string(), format!("w{}/n{}", w.id, w.next))
    }
}

/// A value naming the write that produced it, with a random tail of varying
/// length (sometimes long enough to need overflow pages).
fn value(rng: &mut StdRng, tag: &str) -> String {
    let len = if rng.gen_bool(0.05) {
        rng.gen_range(2000..6000)
    } else {
        rng.gen_range(0..40)
    };
    let tail: String = (0..len)
        .map(|_| {
            let chars = b"abcdefghijklmnopqrstuvwxyz0123456789 '\"-";
            chars[rng.gen_range(0..chars.len())] as char
        })
        .collect();
    format!("{tag}: {tail}")
}

fn insert_sql(key: &Key, writer: i64, v: &str) -> (&'static str, Vec<Value>) {
    match key {
        Key::Acked(id) => (
            "INSERT INTO acked (id, writer, v) VALUES (?, ?, ?)",
            vec![int(*id), int(writer), text(v)],
        ),
        Key::Tagged(r, n) => (
            "INSERT INTO tagged (region, name, writer, v) VALUES (?, ?, ?, ?)",
            vec![text(r), text(n), int(writer), text(v)],
        ),
    }
}

fn int(i: i64) -> Value {
    json!({"type": "integer", "value": i.to_string()})
}

fn text(s: &str) -> Value {
    json!({"type": "text", "value": s})
}

fn single(sql: &str, args: Vec<Value>) -> Value {
    json!({"baton": null, "requests": [
        {"type": "execute", "stmt": {"sql": sql, "args": args}},
        {"type": "close"},
    ]})
}

/// POSTs a pipeline; `Acked` carries the first request's result.
fn send(agent: &ureq::Agent, url: &str, body: Value) -> Outcome {
    let resp = match agent
        .post(url)
        .set("content-type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            return Outcome::Refused(format!("HTTP {code}: {text}"));
        }
        Err(ureq::Error::Transport(_)) => return Outcome::Lost,
    };
    // A body cut short by the kill is not an acknowledgement.
    let Ok(text) = resp.into_string() else {
        return Outcome::Lost;
    };
    let Ok(json) = serde_json::from_str::<Value>(&text) else {
        return Outcome::Lost;
    };
    let first = &json["results"][0];
    if first["type"] == "ok" {
        Outcome::Acked(first["response"]["result"].clone())
    } else {
        Outcome::Refused(format!("in-band error: {first}"))
    }
}

/// An acknowledged statement must have changed exactly `n` rows.
fn expect_rows(outcome: Outcome, n: u64, tag: &str, what: &str) -> Outcome {
    match outcome {
        Outcome::Acked(r) if r["affected_row_count"].as_u64() != Some(n) => {
            Outcome::Refused(format!("{tag} {what}: expected {n} affected row(s): {r}"))
        }
        other => other,
    }
}

/// BEGIN, three inserts and COMMIT all ran without error (the ROLLBACK step was skipped).
fn batch_committed(r: &Value) -> Result<(), String> {
    for step in 0..=4 {
        if !r["step_errors"][step].is_null() {
            return Err(format!("step {step} failed"));
        }
        if r["step_results"][step].is_null() {
            return Err(format!("step {step} did not run"));
        }
    }
    for step in 1..=3 {
        if r["step_results"][step]["affected_row_count"].as_u64() != Some(1) {
            return Err(format!("step {step} did not insert one row"));
        }
    }
    if !r["step_results"][5].is_null() {
        return Err("the ROLLBACK step ran".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Verification after restart

/// Reads both tables back and checks them against every writer's model, then
/// resets the models to what is now durable.
fn verify(ctx: &Ctx, server: &Server, crashed: &Path, writers: &mut [Writer]) {
    let mut observed: BTreeMap<Key, (i64, String)> = BTreeMap::new();
    let mut last_id = i64::MIN;
    loop {
        let rows = select(
            ctx,
            server,
            crashed,
            "SELECT id, writer, v FROM acked WHERE id > ? ORDER BY id LIMIT ?",
            vec![int(last_id), int(PAGE as i64)],
        );
        for r in &rows {
            last_id = int_of(ctx, &r[0]);
            let writer = int_of(ctx, &r[1]);
            observed.insert(Key::Acked(last_id), (writer, text_of(ctx, &r[2])));
        }
        if rows.len() < PAGE {
            break;
        }
    }
    let (mut last_region, mut last_name) = (String::new(), String::new());
    loop {
        let rows = select(
            ctx,
            server,
            crashed,
            "SELECT region, name, writer, v FROM tagged WHERE (region, name) > (?, ?) \
             ORDER BY region, name LIMIT ?",
            vec![text(&last_region), text(&last_name), int(PAGE as i64)],
        );
        for r in &rows {
            last_region = text_of(ctx, &r[0]);
            last_name = text_of(ctx, &r[1]);
            let writer = int_of(ctx, &r[2]);
            observed.insert(
                Key::Tagged(last_region.clone(), last_name.clone()),
                (writer, text_of(ctx, &r[3])),
            );
        }
        if rows.len() < PAGE {
            break;
        }
    }

    let mut errors = Vec::new();
    for w in writers.iter_mut() {
        w.rows.retain(|key, row| {
            let found = observed.remove(key);
            if let Some((writer, _)) = &found {
                if *writer != w.id {
                    errors.push(format!(
                        "{key:?}: writer column is {writer}, written by {}",
                        w.id
                    ));
                }
            }
            let state = found.map(|(_, v)| v);
            if !row.allows(&state) {
                errors.push(format!(
                    "{key:?} (writer {}): found {}, acknowledged {}{}",
                    w.id,
                    show(&state),
                    show(&row.acked),
                    if row.maybe.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (unacknowledged: {})",
                            row.maybe.iter().map(show).collect::<Vec<_>>().join(", ")
                        )
                    }
                ));
            }
            // What the restarted node serves is durable: later cycles hold it to that.
            row.acked = state;
            row.maybe.clear();
            row.acked.is_some()
        });
        w.live = w.rows.keys().cloned().collect();
    }
    for (key, (writer, v)) in &observed {
        errors.push(format!(
            "{key:?}: row never written (writer {writer}, v {})",
            show(&Some(v.clone()))
        ));
    }
    if !errors.is_empty() {
        let n = errors.len();
        errors.truncate(50);
        ctx.fail(
            Some(server.data_dir()),
            Some(crashed),
            format!(
                "after kill -9 and restart, {n} row(s) differ from what was acknowledged:\n{}",
                errors.join("\n")
            ),
        );
    }
}

fn select(ctx: &Ctx, server: &Server, crashed: &Path, sql: &str, args: Vec<Value>) -> Vec<Value> {
    let (status, body) = common::post(
        &format!("{}/v2/pipeline", server.api),
        None,
        &single(sql, args).to_string(),
    );
    let first = &body["results"][0];
    if status != 200 || first["type"] != "ok" {
        ctx.fail(
            Some(server.data_dir()),
            Some(crashed),
            format!("reading back after restart: HTTP {status}: {body}"),
        );
    }
    first["response"]["result"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{ctx} no rows in {first}"))
}

fn int_of(ctx: &Ctx, v: &Value) -> i64 {
    v["value"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .filter(|_| v["type"] == "integer")
        .unwrap_or_else(|| panic!("{ctx} not an integer: {v}"))
}

fn text_of(ctx: &Ctx, v: &Value) -> String {
    match (&v["type"], v["value"].as_str()) {
        (t, Some(s)) if t == "text" => s.to_string(),
        _ => panic!("{ctx} not text: {v}"),
    }
}

fn show(state: &Option<String>) -> String {
    match state {
        None => "absent".into(),
        Some(v) if v.chars().count() > 60 => {
            format!("{:?}…", v.chars().take(60).collect::<String>())
        }
        Some(v) => format!("{v:?}"),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
