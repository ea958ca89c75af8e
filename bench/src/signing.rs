//! The origin-signature workload (issue 6): what signing costs on the write path and verifying
//! on the apply path, measured side by side in one run with the same binary.
//!
//! In-process (`outpost` as a library, no HTTP), per round, each on fresh data directories:
//! 1. **Write**: `rows` single-row `INSERT`s in transactions of [`ROWS_PER_TXN`] on a node with a
//!    node key (every log entry is signed) and on a node without one (nothing signed).
//! 2. **Apply**: the signed node's log applied, in batches of [`APPLY_BATCH`], to a node that
//!    knows its certificate (every entry verified: Ed25519, origin, revocation); the unsigned
//!    node's log to a node without a key (nothing verified).
//!
//! The two sides alternate within a round (signed write, plain write, verified apply, plain
//! apply), [`ROUNDS`] rounds; the report gives each side's median per-row time and the ratio.
//! `db.synchronous = normal`, so CPU costs are not hidden behind fsync.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use outpost::auth::Access;
use outpost::config::Config;
use outpost::db::capture::{Applied, LogEntry};
use outpost::db::{Database, ExecCtx, WorkItem};
use outpost::metrics::Metrics;
use outpost::sync::vv::VersionVector;

use crate::report::Report;
use crate::Plan;

pub const ROWS_FULL: u64 = 20_000;
pub const ROWS_QUICK: u64 = 1_000;
const ROWS_PER_TXN: u64 = 100;
const APPLY_BATCH: usize = 500;
const ROUNDS: usize = 3;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Round {
    pub write_signed_us: f64,
    pub write_plain_us: f64,
    pub apply_verified_us: f64,
    pub apply_plain_us: f64,
    /// The Ed25519 operations alone (`KeyRing::sign`, `KeyRing::verify`) on the same entries.
    pub sign_only_us: f64,
    pub verify_only_us: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SigningReport {
    pub rows: u64,
    pub rounds: Vec<Round>,
    pub problem: Option<String>,
}

impl SigningReport {
    pub fn passed(&self) -> usize {
        usize::from(self.problem.is_none() && !self.rounds.is_empty())
    }

    pub fn problems(&self) -> Vec<String> {
        self.problem
            .iter()
            .map(|p| format!("signing: {p}"))
            .collect()
    }

    fn median(&self, f: impl Fn(&Round) -> f64) -> f64 {
        let mut v: Vec<f64> = self.rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "\norigin signatures: {} rows, in-process, median of {} rounds (µs per row; signed ÷ plain)",
            self.rows,
            self.rounds.len()
        );
        for (what, a, b) in [
            (
                "write (INSERT, 100 per txn): signed vs unsigned",
                self.median(|r| r.write_signed_us),
                self.median(|r| r.write_plain_us),
            ),
            (
                "apply (500 per batch): verified vs unverified",
                self.median(|r| r.apply_verified_us),
                self.median(|r| r.apply_plain_us),
            ),
        ] {
            let _ = writeln!(
                out,
                "  {what:<48} {a:>7.1} vs {b:>7.1}  x{:.2}  (+{:.1} µs)",
                a / b,
                a - b
            );
        }
        let _ = writeln!(
            out,
            "  of which Ed25519 alone: sign {:.1} µs, verify {:.1} µs per entry",
            self.median(|r| r.sign_only_us),
            self.median(|r| r.verify_only_us)
        );
        if let Some(p) = &self.problem {
            let _ = writeln!(out, "  PROBLEM: {p}");
        }
    }
}

pub fn run(plan: &Plan, tmp: &Path, report: &mut Report) -> Result<()> {
    let rows = if plan.mode == "quick" {
        ROWS_QUICK
    } else {
        ROWS_FULL
    };
    let mut s = SigningReport {
        rows,
        ..Default::default()
    };
    let result = (0..ROUNDS).try_for_each(|round| {
        let r = one_round(&tmp.join(format!("signing-{round}")), rows)?;
        s.rounds.push(r);
        Ok(())
    });
    if let Err(e) = &result {
        s.problem = Some(format!("{e:#}"));
    }
    report.signing = Some(s);
    result
}

/// A node in `dir`; with a certificate from the CA in `ca` if given.
struct Node {
    db: Database,
    rt: tokio::runtime::Runtime,
}

impl Node {
    fn open(dir: &Path, ca: Option<&Path>) -> Result<Node> {
        let mut config = Config::default();
        config.node.data_dir = dir.to_path_buf();
        config.db.synchronous = "normal".into();
        config.db.readers = 1;
        let node_id = outpost::db::conn::create_node_identity(&config.db_path(), &config.db)
            .context("creating the node identity")?;
        if let Some(ca) = ca {
            outpost::sync::tls::issue_node_cert(ca, &dir.join("tls"), &node_id, &[], false)
                .context("issuing the node certificate")?;
        }
        let db = Database::open(&config, Arc::new(Metrics::new())).context("opening")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Node { db, rt })
    }

    fn sql(&self, sql: String) -> Result<()> {
        let ctx = ExecCtx {
            access: Access::ReadWrite,
            max_rows: 10,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(60),
        };
        let reply = self
            .rt
            .block_on(self.db.run(WorkItem::Sequence(sql), ctx, None))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        reply.output.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(())
    }

    /// µs per row to insert `rows` rows, ROWS_PER_TXN per transaction.
    fn write(&self, rows: u64) -> Result<f64> {
        self.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)".into())?;
        let started = Instant::now();
        for first in (0..rows).step_by(ROWS_PER_TXN as usize) {
            let mut sql = String::from("BEGIN;");
            for id in first..(first + ROWS_PER_TXN).min(rows) {
                sql.push_str(&format!(
                    "INSERT INTO t VALUES ({id}, 'value {id} of the signing bench', {id});"
                ));
            }
            sql.push_str("COMMIT;");
            self.sql(sql)?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / rows as f64)
    }

    fn log(&self) -> Result<Vec<LogEntry>> {
        let upto = self.db.events().log_vector();
        let read = self.db.log().read(
            &VersionVector::new(),
            &upto,
            usize::MAX,
            usize::MAX,
            i64::MAX,
            &Default::default(),
        )?;
        Ok(read)
    }

    /// µs per entry to apply `entries` in batches.
    fn apply(&self, entries: Vec<LogEntry>) -> Result<f64> {
        self.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)".into())?;
        let n = entries.len();
        let started = Instant::now();
        for batch in entries.chunks(APPLY_BATCH) {
            let outcomes = self
                .rt
                .block_on(self.db.apply(batch.to_vec(), "bench-source"))
                .map_err(|e| anyhow::anyhow!("apply: {}: {}", e.code, e.message))?;
            if let Some(bad) = outcomes.iter().find(|o| **o != Applied::Applied) {
                bail!("an entry was not applied: {bad:?}");
            }
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
    }
}

fn one_round(dir: &Path, rows: u64) -> Result<Round> {
    let ca = dir.join("ca");
    outpost::sync::tls::ensure_ca(&ca).context("creating the CA")?;
    let signed = Node::open(&dir.join("signed"), Some(&ca))?;
    let plain = Node::open(&dir.join("plain"), None)?;
    let write_signed_us = signed.write(rows)?;
    let write_plain_us = plain.write(rows)?;
    let (signed_log, plain_log) = (signed.log()?, plain.log()?);
    if signed_log.len() != rows as usize || signed_log.iter().any(|e| e.signature.len() != 64) {
        bail!("the signed node's log is not {rows} signed entries");
    }
    let verifier = Node::open(&dir.join("verifier"), Some(&ca))?;
    let keys = signed.db.keys().context("the signed node has a key")?;
    let cert = keys
        .certificate(keys.own_key_id())
        .context("own certificate")?;
    let ring = verifier.db.keys().context("the verifier has a key")?;
    ring.learn(&cert).map_err(anyhow::Error::msg)?;
    let receiver = Node::open(&dir.join("receiver"), None)?;
    let (sign_only_us, verify_only_us) = crypto_only(keys, ring, &signed_log)?;
    let apply_verified_us = verifier.apply(signed_log)?;
    let apply_plain_us = receiver.apply(plain_log)?;
    for node in [&signed, &plain, &verifier, &receiver] {
        node.db.shutdown();
    }
    Ok(Round {
        sign_only_us,
        verify_only_us,
        write_signed_us,
        write_plain_us,
        apply_verified_us,
        apply_plain_us,
    })
}

/// µs per entry to sign each entry again with `keys`, and to verify each with `ring`.
fn crypto_only(
    keys: &outpost::sync::keys::KeyRing,
    ring: &outpost::sync::keys::KeyRing,
    log: &[LogEntry],
) -> Result<(f64, f64)> {
    let mut copies = log.to_vec();
    let started = Instant::now();
    for entry in &mut copies {
        keys.sign(entry);
    }
    let sign = started.elapsed().as_secs_f64() * 1e6 / log.len() as f64;
    let started = Instant::now();
    for entry in &copies {
        ring.verify(entry)
            .map_err(|r| anyhow::anyhow!("{}", r.message))?;
    }
    let verify = started.elapsed().as_secs_f64() * 1e6 / log.len() as f64;
    Ok((sign, verify))
}
