//! Property tests of change capture (issue 4), on real in-process
//! [`Database`]s in temporary directories, driven through `Database::run`
//! like Hrana streams drive them:
//!
//! 1. `writes_are_captured_and_match_a_plain_sqlite_model`: a random schema
//!    (1–3 tables, keys of any type or composite, UNIQUE columns) and a
//!    random mix of writes (INSERT, OR IGNORE/REPLACE/FAIL/ABORT, UPSERT,
//!    multi-row UPDATE and DELETE) sent as autocommit statements, batches,
//!    group commits, sequences and interactive transactions (savepoints,
//!    ROLLBACK TO, ROLLBACK), plus schema changes, writes by another
//!    program and sweeps. Afterwards `outpost check` is clean, and the
//!    tables hold what a plain SQLite connection running the same SQL holds
//!    (each statement also fails or succeeds, and counts rows, the same way).
//! 2. `replica_converges_from_the_log_in_any_order` and
//!    `two_writers_converge_after_exchanging_logs`: the change log applied
//!    to other nodes in random order, with duplicates, in random batches
//!    (interleaved with local writes, across restarts) gives clean nodes
//!    with equal digests.
//! 3. Plain tests of the apply API's edge cases, and regression tests of
//!    the bugs these properties found (the open ones are `#[ignore]`d).
//!
//! Reproducing a failure: proptest prints the minimal input (each failure
//! message also holds the schema and the SQL that ran, with its outcomes)
//! and saves a `cc <seed>` line to `tests/capture_props.proptest-regressions`,
//! which later runs replay first. `PROPTEST_CASES=500` runs longer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use libsql_hrana::proto::{self, Batch, BatchCond, BatchStep, Stmt};
use libsql_sys::rusqlite::{self, Connection, OpenFlags};
use outpost::auth::Access;
use outpost::config::Config;
use outpost::crdt::Value;
use outpost::db::capture::{quote_ident, quote_text, Applied, LogEntry};
use outpost::db::check::{check, CheckReport};
use outpost::db::{Database, ExecCtx, ExecError, Lease, TxnState, WorkItem, WorkOutput};
use outpost::metrics::Metrics;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------- schema

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
    Untyped,
}

impl Ty {
    fn decl(self) -> &'static str {
        match self {
            Ty::Integer => " INTEGER",
            Ty::Text => " TEXT",
            Ty::Blob => " BLOB",
            Ty::Real => " REAL",
            Ty::Numeric => " NUMERIC",
            Ty::Untyped => "",
        }
    }
}

#[derive(Debug, Clone)]
struct ColSpec {
    ty: Ty,
    unique: bool,
    default: bool,
}

#[derive(Debug, Clone)]
struct TableSpec {
    /// Types of the primary-key columns (one or two).
    pk: Vec<Ty>,
    extra: Vec<ColSpec>,
    without_rowid: bool,
}

#[derive(Debug, Clone)]
struct Schema {
    tables: Vec<TableSpec>,
    /// Key columns also get values of other types (else each key column
    /// only gets values of its own type).
    wild_keys: bool,
    /// The workload changes the schema (see [`Ddl`]).
    ddl: bool,
}

const TABLE_NAMES: [&str; 3] = ["t0", "tab le\"1", "ünï2"];
const PK_NAMES: [&str; 2] = ["k0", "k 1"];
const COL_NAMES: [&str; 3] = ["a", "b\"c", "é d"];

impl TableSpec {
    fn columns(&self) -> Vec<&'static str> {
        let mut cols: Vec<&str> = PK_NAMES[..self.pk.len()].to_vec();
        cols.extend(&COL_NAMES[..self.extra.len()]);
        cols
    }

    fn is_pk(&self, col: usize) -> bool {
        col < self.pk.len()
    }

    /// A single INTEGER key of a rowid table: an alias of the rowid.
    fn is_rowid_alias(&self) -> bool {
        self.pk == [Ty::Integer] && !self.without_rowid
    }

    fn ddl(&self, name: &str) -> String {
        let mut defs = Vec::new();
        for (i, ty) in self.pk.iter().enumerate() {
            defs.push(format!("{}{}", quote_ident(PK_NAMES[i]), ty.decl()));
        }
        for (i, col) in self.extra.iter().enumerate() {
            let mut def = format!("{}{}", quote_ident(COL_NAMES[i]), col.ty.decl());
            if col.unique {
                def.push_str(" UNIQUE");
            }
            if col.default {
                def.push_str(" DEFAULT 'dflt'");
            }
            defs.push(def);
        }
        let pk = PK_NAMES[..self.pk.len()]
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        defs.push(format!("PRIMARY KEY ({pk})"));
        format!(
            "CREATE TABLE {} ({}){}",
            quote_ident(name),
            defs.join(", "),
            if self.without_rowid {
                " WITHOUT ROWID"
            } else {
                ""
            }
        )
    }

    /// The values written to column `col`.
    fn pool(&self, col: usize, wild: bool) -> Vec<Value> {
        if self.is_pk(col) {
            key_pool(self.pk[col], self.is_rowid_alias(), wild)
        } else {
            general_pool()
        }
    }
}

impl Schema {
    fn ddl(&self) -> Vec<String> {
        self.tables
            .iter()
            .enumerate()
            .map(|(i, t)| t.ddl(TABLE_NAMES[i]))
            .collect()
    }

    fn table(&self, pick: u8) -> (&'static str, &TableSpec) {
        let i = pick as usize % self.tables.len();
        (TABLE_NAMES[i], &self.tables[i])
    }

    /// Whether column `col` of `table` is a key, UNIQUE, or may become
    /// UNIQUE (see [`Ddl::UniqueIndex`]).
    fn keyed(&self, table: &TableSpec, col: usize) -> bool {
        table.is_pk(col)
            || table.extra[col - table.pk.len()].unique
            || (self.ddl && col == table.pk.len())
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// Values for columns outside the key: every type and its edges.
fn general_pool() -> Vec<Value> {
    vec![
        Value::Null,
        Value::Integer(0),
        Value::Integer(42),
        Value::Integer(-7),
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Integer((1 << 53) + 1),
        Value::Real(0.1),
        Value::Real(-0.0),
        Value::Real(2.5),
        Value::Real(3.0),
        Value::Real(1e300),
        Value::Real(-1e-300),
        Value::Real(f64::INFINITY),
        Value::Real(f64::NEG_INFINITY),
        text(""),
        text("a"),
        text("it's"),
        text("a,b"),
        text("héllo wörld"),
        text("🚀 ✓ ünï"),
        text("NULL"),
        text("1"),
        Value::Blob(Vec::new()),
        Value::Blob(vec![0]),
        Value::Blob(vec![0, 1, 2, 255]),
        Value::Blob(b"'x',".to_vec()),
        Value::Blob(vec![7; 300]),
    ]
}

/// Values for key columns: a few per type, so that writes hit the same
/// rows again. `wild` adds NULL and values of other types.
fn key_pool(ty: Ty, rowid_alias: bool, wild: bool) -> Vec<Value> {
    let mut pool = match ty {
        Ty::Integer => {
            let mut v: Vec<Value> = [1, 2, 3, -1, 0, i64::MIN, (1 << 53) + 1]
                .into_iter()
                .map(Value::Integer)
                .collect();
            // Past i64::MAX SQLite picks random rowids: the model would differ.
            if !rowid_alias {
                v.push(Value::Integer(i64::MAX));
            }
            v
        }
        Ty::Text => ["a", "b", "it's", "x,y", "ünï 🚀", "", "NULL", "1"]
            .into_iter()
            .map(text)
            .collect(),
        Ty::Blob => vec![
            Value::Blob(Vec::new()),
            Value::Blob(vec![0]),
            Value::Blob(vec![255]),
            Value::Blob(b"a".to_vec()),
            Value::Blob(vec![0, 0]),
            Value::Blob(b"',".to_vec()),
        ],
        Ty::Real | Ty::Numeric | Ty::Untyped => [
            0.5,
            -1.25,
            0.1,
            1e300,
            3.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            i64::MIN as f64,
        ]
        .into_iter()
        .map(Value::Real)
        .collect(),
    };
    // Not NULL (a known limitation, see README), nor numerically equal
    // INTEGER and REAL values or -0.0 (see the ignored tests at the end).
    // Nor, for a rowid alias, values that fail with "datatype mismatch": a
    // multi-row `INSERT OR IGNORE` that fails so keeps its earlier rows in
    // plain SQLite (no statement journal) but not in outpost (its triggers
    // make SQLite use one), so the model would differ.
    if wild && rowid_alias {
        pool.extend([Value::Integer(1), Value::Integer(2), text("1"), text("2")]);
    } else if wild {
        pool.extend([
            Value::Integer(1),
            Value::Integer(2),
            Value::Real(0.5),
            Value::Real(2.5),
            text("1"),
            Value::Blob(vec![1]),
        ]);
    }
    pool
}

fn pick(pool: &[Value], p: u8) -> Value {
    pool[p as usize % pool.len()].clone()
}

// ---------------------------------------------------------------- writes

#[derive(Debug, Clone)]
enum SetSeed {
    Val(u8),
    /// `c = c`: a no-op.
    Same,
    /// `c = c || ?`
    Concat(u8),
    /// `c = excluded.c` in an upsert (`c = c` elsewhere).
    Excluded,
    /// `c = <another column>`
    Other(u8),
}

#[derive(Debug, Clone)]
enum FilterSeed {
    All,
    Key(u8, u8),
    Is(u8, u8),
    NotNull(u8),
    Gt(u8, u8),
}

impl FilterSeed {
    /// The same picks as a filter on the whole key (one row at most).
    fn single_row(&self) -> FilterSeed {
        match *self {
            FilterSeed::All => FilterSeed::Key(0, 0),
            FilterSeed::Key(a, b) | FilterSeed::Is(a, b) | FilterSeed::Gt(a, b) => {
                FilterSeed::Key(a, b)
            }
            FilterSeed::NotNull(a) => FilterSeed::Key(a, a),
        }
    }
}

/// One write statement, as picks resolved against the schema.
#[derive(Debug, Clone)]
enum W {
    Insert {
        t: u8,
        /// 0 INSERT, 1 OR IGNORE, 2 OR REPLACE, 3 REPLACE, 4 OR FAIL, 5 OR ABORT.
        mode: u8,
        rows: Vec<[u8; 5]>,
        /// Which non-key columns are named (the others get their default).
        keep: [bool; 3],
        /// Leave out the key of a rowid alias (SQLite picks it).
        auto: bool,
    },
    Upsert {
        t: u8,
        row: [u8; 5],
        sets: Vec<(u8, SetSeed)>,
    },
    Update {
        t: u8,
        /// 0 UPDATE, 1 OR IGNORE, 2 OR REPLACE.
        mode: u8,
        sets: Vec<(u8, SetSeed)>,
        filter: FilterSeed,
    },
    Delete {
        t: u8,
        filter: FilterSeed,
    },
}

/// A statement with `?N` parameters, or with its values inlined.
#[derive(Debug, Clone)]
struct Sql {
    text: String,
    args: Vec<Value>,
}

struct Render {
    inline: bool,
    args: Vec<Value>,
}

impl Render {
    fn arg(&mut self, value: Value) -> String {
        if self.inline {
            return literal(&value);
        }
        self.args.push(value);
        format!("?{}", self.args.len())
    }
}

/// A SQL literal for `value` (what a client would type in a sequence).
fn literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i64::MIN) => "(-9223372036854775807 - 1)".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) if r.is_infinite() => if *r > 0.0 { "9e999" } else { "-9e999" }.into(),
        Value::Real(r) if *r == 0.0 && r.is_sign_negative() => "-0.0".into(),
        Value::Real(r) => format!("{r:?}"),
        Value::Text(t) => quote_text(t),
        Value::Blob(b) => format!(
            "X'{}'",
            b.iter().map(|x| format!("{x:02X}")).collect::<String>()
        ),
    }
}

impl W {
    fn render(&self, schema: &Schema, inline: bool) -> Sql {
        let mut r = Render {
            inline,
            args: Vec::new(),
        };
        let wild = schema.wild_keys;
        let text = match self {
            W::Insert {
                t,
                mode,
                rows,
                keep,
                auto,
            } => {
                let (name, table) = schema.table(*t);
                let all = table.columns();
                let skip_key = *auto && table.is_rowid_alias();
                let cols: Vec<usize> = (0..all.len())
                    .filter(|&c| {
                        if table.is_pk(c) {
                            !skip_key
                        } else {
                            keep[c - table.pk.len()]
                        }
                    })
                    .collect();
                let verb = [
                    "INSERT",
                    "INSERT OR IGNORE",
                    "INSERT OR REPLACE",
                    "REPLACE",
                    "INSERT OR FAIL",
                    "INSERT OR ABORT",
                ][*mode as usize % 6];
                if cols.is_empty() {
                    format!("{verb} INTO {} DEFAULT VALUES", quote_ident(name))
                } else {
                    let values = rows
                        .iter()
                        .map(|row| {
                            let vals = cols
                                .iter()
                                .map(|&c| r.arg(pick(&table.pool(c, wild), row[c])))
                                .collect::<Vec<_>>();
                            format!("({})", vals.join(", "))
                        })
                        .collect::<Vec<_>>();
                    format!(
                        "{verb} INTO {} ({}) VALUES {}",
                        quote_ident(name),
                        cols.iter()
                            .map(|&c| quote_ident(all[c]))
                            .collect::<Vec<_>>()
                            .join(", "),
                        values.join(", ")
                    )
                }
            }
            W::Upsert { t, row, sets } => {
                let (name, table) = schema.table(*t);
                let all = table.columns();
                let vals = (0..all.len())
                    .map(|c| r.arg(pick(&table.pool(c, wild), row[c])))
                    .collect::<Vec<_>>();
                let action = if sets.is_empty() {
                    "NOTHING".to_string()
                } else {
                    format!(
                        "UPDATE SET {}",
                        render_sets(&mut r, schema, table, sets, true)
                    )
                };
                format!(
                    "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO {action}",
                    quote_ident(name),
                    all.iter()
                        .map(|c| quote_ident(c))
                        .collect::<Vec<_>>()
                        .join(", "),
                    vals.join(", "),
                    all[..table.pk.len()]
                        .iter()
                        .map(|c| quote_ident(c))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            }
            W::Update {
                t,
                mode,
                sets,
                filter,
            } => {
                let (name, table) = schema.table(*t);
                let verb = ["UPDATE", "UPDATE OR IGNORE", "UPDATE OR REPLACE"][*mode as usize % 3];
                // Which row SQLite visits first is unspecified, and decides
                // the result when an UPDATE that changes a key or a UNIQUE
                // column meets a conflict: such an UPDATE changes one row.
                let ncols = table.columns().len();
                let keyed = sets
                    .iter()
                    .any(|(c, _)| schema.keyed(table, *c as usize % ncols));
                let filter = if keyed {
                    filter.single_row()
                } else {
                    filter.clone()
                };
                let sets = render_sets(&mut r, schema, table, sets, false);
                let filter = render_filter(&mut r, schema, table, &filter);
                format!("{verb} {} SET {sets}{filter}", quote_ident(name))
            }
            W::Delete { t, filter } => {
                let (name, table) = schema.table(*t);
                let filter = render_filter(&mut r, schema, table, filter);
                format!("DELETE FROM {}{filter}", quote_ident(name))
            }
        };
        Sql { text, args: r.args }
    }
}

fn render_sets(
    r: &mut Render,
    schema: &Schema,
    table: &TableSpec,
    sets: &[(u8, SetSeed)],
    upsert: bool,
) -> String {
    let all = table.columns();
    let wild = schema.wild_keys;
    sets.iter()
        .map(|(c, seed)| {
            let c = *c as usize % all.len();
            let col = quote_ident(all[c]);
            // A key column only gets values of its pool (never NULL).
            let key_only = table.is_pk(c);
            let expr = match seed {
                SetSeed::Val(p) => r.arg(pick(&table.pool(c, wild), *p)),
                SetSeed::Same => col.clone(),
                SetSeed::Concat(p) if key_only => r.arg(pick(&table.pool(c, wild), *p)),
                SetSeed::Concat(p) => format!("{col} || {}", r.arg(pick(&general_pool(), *p))),
                SetSeed::Excluded if upsert => format!("excluded.{col}"),
                SetSeed::Excluded => col.clone(),
                SetSeed::Other(p) if key_only => r.arg(pick(&table.pool(c, wild), *p)),
                SetSeed::Other(o) => quote_ident(all[*o as usize % all.len()]),
            };
            format!("{col} = {expr}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_filter(r: &mut Render, schema: &Schema, table: &TableSpec, seed: &FilterSeed) -> String {
    let all = table.columns();
    let wild = schema.wild_keys;
    let col = |c: u8| c as usize % all.len();
    match seed {
        FilterSeed::All => String::new(),
        FilterSeed::Key(a, b) => {
            let picks = [*a, *b];
            let conds = (0..table.pk.len())
                .map(|i| {
                    format!(
                        "{} IS {}",
                        quote_ident(all[i]),
                        r.arg(pick(&table.pool(i, wild), picks[i]))
                    )
                })
                .collect::<Vec<_>>();
            format!(" WHERE {}", conds.join(" AND "))
        }
        FilterSeed::Is(c, p) => {
            let c = col(*c);
            format!(
                " WHERE {} IS {}",
                quote_ident(all[c]),
                r.arg(pick(&table.pool(c, wild), *p))
            )
        }
        FilterSeed::NotNull(c) => format!(" WHERE {} IS NOT NULL", quote_ident(all[col(*c)])),
        FilterSeed::Gt(c, p) => {
            let c = col(*c);
            format!(
                " WHERE {} > {}",
                quote_ident(all[c]),
                r.arg(pick(&table.pool(c, wild), *p))
            )
        }
    }
}

// ---------------------------------------------------------------- workload

/// A schema change. DDL is not replicated, so only single-node properties
/// use it; both sides run the same statements.
#[derive(Debug, Clone)]
enum Ddl {
    AddColumn {
        t: u8,
        name: u8,
        default: u8,
    },
    /// A UNIQUE index on the first non-key column.
    UniqueIndex {
        t: u8,
    },
    DropIndex {
        t: u8,
    },
    /// `DROP TABLE`, then `CREATE TABLE` as at the start.
    Recreate {
        t: u8,
    },
}

impl Ddl {
    fn statements(&self, schema: &Schema) -> Vec<String> {
        let table = |t: u8| {
            let i = t as usize % schema.tables.len();
            (i, quote_ident(TABLE_NAMES[i]))
        };
        match self {
            Ddl::AddColumn { t, name, default } => vec![format!(
                "ALTER TABLE {} ADD COLUMN {} DEFAULT {}",
                table(*t).1,
                quote_ident(&format!("z{}", name % 3)),
                literal(&pick(&general_pool(), *default))
            )],
            Ddl::UniqueIndex { t } => {
                let (i, name) = table(*t);
                vec![format!(
                    "CREATE UNIQUE INDEX IF NOT EXISTS \"ux{i}\" ON {name} ({})",
                    quote_ident(COL_NAMES[0])
                )]
            }
            Ddl::DropIndex { t } => vec![format!("DROP INDEX IF EXISTS \"ux{}\"", table(*t).0)],
            Ddl::Recreate { t } => {
                let (i, name) = table(*t);
                vec![
                    format!("DROP TABLE {name}"),
                    schema.tables[i].ddl(TABLE_NAMES[i]),
                ]
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    W(W),
    Ddl(Ddl),
    /// Several writes in one `Sequence`.
    Seq(Vec<W>),
    Savepoint(bool),
    RollbackTo(bool),
    Release(bool),
}

/// How an interactive transaction starts.
#[derive(Debug, Clone, Copy)]
enum Begin {
    /// `BEGIN` as a sequence: on the writer.
    Sequence,
    /// `BEGIN IMMEDIATE` as a statement: on the writer.
    Immediate,
    /// `BEGIN` as a statement: a read transaction on a reader, moved to the
    /// writer at its first write or savepoint.
    Deferred,
}

#[derive(Debug, Clone)]
enum Unit {
    /// One statement in autocommit mode.
    Auto(W),
    /// A batch; `true` makes a step conditional on the previous one.
    Batch(Vec<(W, bool)>),
    /// Autocommit statements submitted together (one group commit).
    Group(Vec<W>),
    /// Autocommit statements in one sequence (it stops at the first error).
    Seq(Vec<W>),
    Txn {
        begin: Begin,
        steps: Vec<Step>,
        commit: bool,
    },
    /// A write by another program (a plain connection to the file), then
    /// `Database::sweep` to encode it.
    External(W),
    /// `Database::sweep` alone: nothing is left to encode.
    Sweep,
    /// A schema change, as a sequence in autocommit mode.
    Ddl(Ddl),
}

fn savepoint_name(b: bool) -> &'static str {
    if b {
        "sa"
    } else {
        "sb"
    }
}

fn set_seed() -> impl Strategy<Value = SetSeed> {
    prop_oneof![
        4 => any::<u8>().prop_map(SetSeed::Val),
        1 => Just(SetSeed::Same),
        1 => any::<u8>().prop_map(SetSeed::Concat),
        2 => Just(SetSeed::Excluded),
        1 => any::<u8>().prop_map(SetSeed::Other),
    ]
}

fn filter_seed() -> impl Strategy<Value = FilterSeed> {
    prop_oneof![
        1 => Just(FilterSeed::All),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| FilterSeed::Key(a, b)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(c, p)| FilterSeed::Is(c, p)),
        1 => any::<u8>().prop_map(FilterSeed::NotNull),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(c, p)| FilterSeed::Gt(c, p)),
    ]
}

fn sets() -> impl Strategy<Value = Vec<(u8, SetSeed)>> {
    prop::collection::vec((any::<u8>(), set_seed()), 1..=3)
}

fn write() -> impl Strategy<Value = W> {
    prop_oneof![
        5 => (
            any::<u8>(),
            any::<u8>(),
            prop::collection::vec(any::<[u8; 5]>(), 1..=2),
            any::<[bool; 3]>(),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(t, mode, rows, keep, auto)| W::Insert { t, mode, rows, keep, auto }),
        2 => (any::<u8>(), any::<[u8; 5]>(), prop::collection::vec((any::<u8>(), set_seed()), 0..=2))
            .prop_map(|(t, row, sets)| W::Upsert { t, row, sets }),
        4 => (any::<u8>(), any::<u8>(), sets(), filter_seed())
            .prop_map(|(t, mode, sets, filter)| W::Update { t, mode, sets, filter }),
        2 => (any::<u8>(), filter_seed()).prop_map(|(t, filter)| W::Delete { t, filter }),
    ]
}

fn ddl() -> impl Strategy<Value = Ddl> {
    prop_oneof![
        2 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(t, name, default)| Ddl::AddColumn { t, name, default }),
        2 => any::<u8>().prop_map(|t| Ddl::UniqueIndex { t }),
        1 => any::<u8>().prop_map(|t| Ddl::DropIndex { t }),
        1 => any::<u8>().prop_map(|t| Ddl::Recreate { t }),
    ]
}

fn step(with_ddl: bool) -> BoxedStrategy<Step> {
    let steps = prop_oneof![
        8 => write().prop_map(Step::W),
        1 => prop::collection::vec(write(), 1..=3).prop_map(Step::Seq),
        2 => any::<bool>().prop_map(Step::Savepoint),
        2 => any::<bool>().prop_map(Step::RollbackTo),
        1 => any::<bool>().prop_map(Step::Release),
    ];
    if with_ddl {
        prop_oneof![12 => steps, 1 => ddl().prop_map(Step::Ddl)].boxed()
    } else {
        steps.boxed()
    }
}

fn unit(with_ddl: bool) -> BoxedStrategy<Unit> {
    let units = prop_oneof![
        4 => write().prop_map(Unit::Auto),
        2 => prop::collection::vec((write(), prop::bool::weighted(0.3)), 1..=5).prop_map(Unit::Batch),
        2 => prop::collection::vec(write(), 2..=4).prop_map(Unit::Group),
        1 => prop::collection::vec(write(), 1..=3).prop_map(Unit::Seq),
        3 => (
            prop_oneof![Just(Begin::Sequence), Just(Begin::Immediate), Just(Begin::Deferred)],
            prop::collection::vec(step(with_ddl), 1..=8),
            prop::bool::weighted(0.75),
        )
            .prop_map(|(begin, steps, commit)| Unit::Txn { begin, steps, commit }),
        1 => write().prop_map(Unit::External),
        1 => Just(Unit::Sweep),
    ];
    if with_ddl {
        prop_oneof![16 => units, 1 => ddl().prop_map(Unit::Ddl)].boxed()
    } else {
        units.boxed()
    }
}

fn workload(max: usize, with_ddl: bool) -> impl Strategy<Value = Vec<Unit>> {
    prop::collection::vec(unit(with_ddl), 1..=max)
}

fn col_type() -> impl Strategy<Value = Ty> {
    prop_oneof![
        Just(Ty::Integer),
        Just(Ty::Text),
        Just(Ty::Blob),
        Just(Ty::Real),
        Just(Ty::Numeric),
        Just(Ty::Untyped),
    ]
}

fn key_type() -> impl Strategy<Value = Ty> {
    prop_oneof![
        Just(Ty::Integer),
        Just(Ty::Text),
        Just(Ty::Blob),
        Just(Ty::Real),
    ]
}

fn table_spec(allow_unique: bool) -> impl Strategy<Value = TableSpec> {
    let col = (
        col_type(),
        prop::bool::weighted(if allow_unique { 0.2 } else { 0.0 }),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(ty, unique, default)| ColSpec {
            ty,
            unique,
            default,
        });
    (
        prop::collection::vec(key_type(), 1..=2),
        prop::collection::vec(col, 1..=3),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(pk, extra, without_rowid)| TableSpec {
            pk,
            extra,
            without_rowid,
        })
}

/// `local`: a single-node property, so extra columns may be UNIQUE (which
/// cannot hold across nodes: a conflicting remote row is rejected) and the
/// workload may change the schema (DDL is not replicated). Key values are
/// typed or of mixed types at random.
fn schema(local: bool) -> impl Strategy<Value = Schema> {
    (
        prop::collection::vec(table_spec(local), 1..=3),
        any::<bool>(),
    )
        .prop_map(move |(tables, wild_keys)| Schema {
            tables,
            wild_keys,
            ddl: local,
        })
}

/// Settings that change capture's code paths: document compaction and the
/// document cache.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    compact_small: bool,
    no_cache: bool,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (any::<bool>(), any::<bool>()).prop_map(|(compact_small, no_cache)| Knobs {
        compact_small,
        no_cache,
    })
}

// ---------------------------------------------------------------- nodes

fn ctx() -> ExecCtx {
    ExecCtx {
        access: Access::ReadWrite,
        max_rows: 100_000,
        max_bytes: 64 * 1024 * 1024,
        timeout: Duration::from_secs(60),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A database in a temporary directory; shut down when dropped.
struct Node {
    config: Config,
    db: Option<Database>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new(knobs: Knobs, tweak: impl FnOnce(&mut Config)) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.node.data_dir = dir.path().to_path_buf();
        config.db.synchronous = "normal".into();
        config.db.readers = 1;
        config.limits.stream_idle_timeout = Duration::from_secs(120);
        if knobs.compact_small {
            config.crdt.compact_doc_bytes = 48;
        }
        if knobs.no_cache {
            config.crdt.doc_cache_bytes = 0;
        }
        tweak(&mut config);
        let mut node = Node {
            config,
            db: None,
            _dir: dir,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        assert!(self.db.is_none());
        let db = Database::open(&self.config, Arc::new(Metrics::new())).expect("open database");
        self.db = Some(db);
    }

    fn db(&self) -> &Database {
        self.db.as_ref().expect("node is running")
    }

    fn path(&self) -> PathBuf {
        self.config.db_path()
    }

    fn stop(&mut self) {
        if let Some(db) = self.db.take() {
            db.shutdown();
        }
    }

    /// Stops the node and checks its file (with the digest).
    fn stop_and_check(&mut self) -> CheckReport {
        self.stop();
        check(&self.path(), true).expect("check runs")
    }

    /// The node's yrs client id (the `origin` of its own log entries).
    fn origin(&self) -> u64 {
        let conn = read_only(&self.path());
        let node_id: String = conn
            .query_row(
                "SELECT value FROM _outpost_meta WHERE key = 'node_id'",
                [],
                |r| r.get(0),
            )
            .expect("node id");
        outpost::crdt::client_id_of(&node_id)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_only(path: &Path) -> Connection {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open read-only");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// Every entry of a node's change log, read straight from its file.
fn read_log(path: &Path) -> Vec<LogEntry> {
    let conn = read_only(path);
    let mut stmt = conn
        .prepare(
            "SELECT origin, seq, hlc, tbl, pk, schema_version, \"update\"
             FROM _outpost_log ORDER BY origin, seq",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(LogEntry {
            origin: r.get::<_, i64>(0)? as u64,
            seq: r.get::<_, i64>(1)? as u64,
            hlc: r.get::<_, i64>(2)? as u64,
            table: r.get(3)?,
            key: r.get(4)?,
            schema_version: r.get(5)?,
            update: r.get(6)?,
            ..LogEntry::default()
        })
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn describe_report(report: &CheckReport) -> String {
    format!(
        "{} problems (+{} more):\n  {}",
        report.problems.len(),
        report.more_problems,
        report.problems.join("\n  ")
    )
}

fn to_hrana(value: &Value) -> proto::Value {
    match value {
        Value::Null => proto::Value::Null,
        Value::Integer(value) => proto::Value::Integer { value: *value },
        Value::Real(value) => proto::Value::Float { value: *value },
        Value::Text(value) => proto::Value::Text {
            value: value.as_str().into(),
        },
        Value::Blob(value) => proto::Value::Blob {
            value: Bytes::copy_from_slice(value),
        },
    }
}

fn stmt(sql: &Sql) -> Stmt {
    Stmt {
        sql: Some(sql.text.clone()),
        sql_id: None,
        args: sql.args.iter().map(to_hrana).collect(),
        named_args: Vec::new(),
        want_rows: Some(false),
        replication_index: None,
    }
}

fn plain(text: &str) -> Sql {
    Sql {
        text: text.into(),
        args: Vec::new(),
    }
}

/// What became of one statement (or one sequence): the rows it changed,
/// or that it failed. Both sides must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok(u64),
    Err,
    Skipped,
}

/// Outcomes in order, with the SQL and error text for failure messages.
#[derive(Default)]
struct Trace {
    outcomes: Vec<Outcome>,
    notes: Vec<String>,
}

impl Trace {
    fn push(&mut self, what: &str, result: Result<u64, String>) {
        match result {
            Ok(n) => {
                self.outcomes.push(Outcome::Ok(n));
                self.notes.push(format!("{what} -> ok {n}"));
            }
            Err(e) => {
                self.outcomes.push(Outcome::Err);
                self.notes.push(format!("{what} -> error {e}"));
            }
        }
    }

    fn skip(&mut self, what: &str) {
        self.outcomes.push(Outcome::Skipped);
        self.notes.push(format!("{what} -> skipped"));
    }
}

fn show(sql: &Sql) -> String {
    if sql.args.is_empty() {
        sql.text.clone()
    } else {
        let args = sql.args.iter().map(literal).collect::<Vec<_>>();
        format!("{}  [{}]", sql.text, args.join(", "))
    }
}

fn exec_error(e: ExecError) -> String {
    match e {
        ExecError::Sql(e) => format!("{}: {}", e.code, e.message),
        ExecError::NeedsWriter => "needs the writer".into(),
    }
}

/// Runs work on a node like one Hrana stream does: the lease of an open
/// transaction is kept and used for the next item.
struct Stream<'a> {
    db: &'a Database,
    lease: Option<Lease>,
}

impl Stream<'_> {
    async fn run(&mut self, item: WorkItem) -> Result<WorkOutput, String> {
        let reply = self
            .db
            .run(item, ctx(), self.lease.as_ref())
            .await
            .map_err(|e| format!("not run: {e}"))?;
        match reply.txn {
            TxnState::Opened(lease) => self.lease = Some(lease),
            TxnState::StillOpen => {}
            TxnState::Closed => self.lease = None,
        }
        reply.output.map_err(exec_error)
    }

    async fn execute(&mut self, sql: &Sql) -> Result<u64, String> {
        match self.run(WorkItem::Execute(stmt(sql))).await? {
            WorkOutput::Execute(result) => Ok(result.affected_row_count),
            other => Err(format!("unexpected output {other:?}")),
        }
    }

    async fn sequence(&mut self, text: &str) -> Result<u64, String> {
        self.run(WorkItem::Sequence(text.into())).await.map(|_| 0)
    }
}

/// Runs a workload on outpost and records what each statement did.
async fn run_outpost(db: &Database, schema: &Schema, units: &[Unit]) -> Trace {
    let mut trace = Trace::default();
    let mut s = Stream { db, lease: None };
    for unit in units {
        match unit {
            Unit::Auto(w) => {
                let sql = w.render(schema, false);
                let result = s.execute(&sql).await;
                trace.push(&show(&sql), result);
            }
            Unit::Batch(steps) => {
                let sqls: Vec<Sql> = steps.iter().map(|(w, _)| w.render(schema, false)).collect();
                let batch = Batch {
                    steps: sqls
                        .iter()
                        .zip(steps)
                        .enumerate()
                        .map(|(i, (sql, (_, cond)))| BatchStep {
                            condition: (*cond && i > 0)
                                .then(|| BatchCond::Ok { step: i as u32 - 1 }),
                            stmt: stmt(sql),
                        })
                        .collect(),
                    replication_index: None,
                };
                match s.run(WorkItem::Batch(batch)).await {
                    Ok(WorkOutput::Batch(result)) => {
                        for (i, sql) in sqls.iter().enumerate() {
                            let what = format!("batch step {i}: {}", show(sql));
                            match (&result.step_results[i], &result.step_errors[i]) {
                                (Some(r), _) => trace.push(&what, Ok(r.affected_row_count)),
                                (None, Some(e)) => {
                                    trace.push(&what, Err(format!("{}: {}", e.code, e.message)))
                                }
                                (None, None) => trace.skip(&what),
                            }
                        }
                    }
                    other => trace.push("batch", Err(format!("whole batch failed: {other:?}"))),
                }
            }
            Unit::Group(ws) => {
                let sqls: Vec<Sql> = ws.iter().map(|w| w.render(schema, false)).collect();
                let jobs = sqls
                    .iter()
                    .map(|sql| db.run(WorkItem::Execute(stmt(sql)), ctx(), None));
                let replies = futures_util::future::join_all(jobs).await;
                for (sql, reply) in sqls.iter().zip(replies) {
                    let result = match reply {
                        Err(e) => Err(format!("not run: {e}")),
                        Ok(reply) => {
                            if !matches!(reply.txn, TxnState::Closed) {
                                trace.push("group", Err("left a transaction open".into()));
                            }
                            match reply.output.map_err(exec_error) {
                                Ok(WorkOutput::Execute(r)) => Ok(r.affected_row_count),
                                Ok(other) => Err(format!("unexpected output {other:?}")),
                                Err(e) => Err(e),
                            }
                        }
                    };
                    trace.push(&format!("group: {}", show(sql)), result);
                }
            }
            Unit::Seq(ws) => {
                let text = seq_text(schema, ws);
                let result = s.sequence(&text).await;
                trace.push(&format!("sequence: {text}"), result);
            }
            Unit::Ddl(ddl) => {
                let text = ddl.statements(schema).join(";\n");
                let result = s.sequence(&text).await;
                trace.push(&format!("DDL: {text}"), result);
            }
            Unit::Txn {
                begin,
                steps,
                commit,
            } => {
                let result = match begin {
                    Begin::Sequence => s.sequence("BEGIN").await,
                    Begin::Immediate => s.execute(&plain("BEGIN IMMEDIATE")).await,
                    Begin::Deferred => s.execute(&plain("BEGIN")).await,
                };
                trace.push(&format!("{begin:?} begin"), result);
                for step in steps {
                    match step {
                        Step::W(w) => {
                            let sql = w.render(schema, false);
                            let result = s.execute(&sql).await;
                            trace.push(&show(&sql), result);
                        }
                        Step::Seq(ws) => {
                            let text = seq_text(schema, ws);
                            let result = s.sequence(&text).await;
                            trace.push(&format!("sequence: {text}"), result);
                        }
                        Step::Ddl(ddl) => {
                            let text = ddl.statements(schema).join(";\n");
                            let result = s.sequence(&text).await;
                            trace.push(&format!("DDL: {text}"), result);
                        }
                        other => {
                            let sql = plain(&control_sql(other));
                            let result = s.execute(&sql).await;
                            trace.push(&sql.text, result);
                        }
                    }
                }
                let end = if *commit { "COMMIT" } else { "ROLLBACK" };
                let result = s.execute(&plain(end)).await;
                trace.push(end, result);
                if s.lease.is_some() {
                    trace.push(end, Err("the transaction is still open".into()));
                    let _ = s.execute(&plain("ROLLBACK")).await;
                    s.lease = None;
                }
            }
            Unit::External(w) => {
                let sql = w.render(schema, false);
                let result = external_write(db.path(), &sql);
                trace.push(&format!("other program: {}", show(&sql)), result);
                let swept = db.sweep().await;
                trace.push("sweep", swept.map(|_| 0).map_err(|e| e.message));
            }
            Unit::Sweep => {
                // Every change was encoded when it committed.
                let swept = db.sweep().await.map(|n| n as u64).map_err(|e| e.message);
                trace.push("sweep", swept);
            }
        }
    }
    trace
}

/// Writes like another program would: a plain connection to the file.
fn external_write(path: &Path, sql: &Sql) -> Result<u64, String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Model { conn }.exec(sql)
}

fn control_sql(step: &Step) -> String {
    match step {
        Step::Savepoint(b) => format!("SAVEPOINT {}", savepoint_name(*b)),
        Step::RollbackTo(b) => format!("ROLLBACK TO {}", savepoint_name(*b)),
        Step::Release(b) => format!("RELEASE {}", savepoint_name(*b)),
        Step::W(_) | Step::Seq(_) | Step::Ddl(_) => unreachable!("not a control step"),
    }
}

fn seq_text(schema: &Schema, ws: &[W]) -> String {
    ws.iter()
        .map(|w| w.render(schema, true).text)
        .collect::<Vec<_>>()
        .join(";\n")
}

/// The same workload on a plain SQLite connection, without outpost.
struct Model {
    conn: Connection,
}

impl Model {
    fn new(schema: &Schema) -> Model {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        for ddl in schema.ddl() {
            conn.execute_batch(&ddl).unwrap();
        }
        Model { conn }
    }

    fn total_changes(&self) -> i64 {
        // SAFETY: the handle is valid while `self.conn` lives.
        unsafe { libsql_sys::ffi::sqlite3_total_changes64(self.conn.handle()) }
    }

    fn exec(&self, sql: &Sql) -> Result<u64, String> {
        let mut stmt = self.conn.prepare(&sql.text).map_err(|e| e.to_string())?;
        for (i, value) in sql.args.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, value)
                .map_err(|e| e.to_string())?;
        }
        let readonly = stmt.readonly();
        let before = self.total_changes();
        let mut rows = stmt.raw_query();
        while rows.next().map_err(|e| e.to_string())?.is_some() {}
        drop(rows);
        drop(stmt);
        Ok(if readonly || self.total_changes() == before {
            0
        } else {
            self.conn.changes()
        })
    }

    /// A sequence: statement by statement, stopping at the first error.
    fn sequence(&self, schema: &Schema, ws: &[W]) -> Result<u64, String> {
        for w in ws {
            self.exec(&w.render(schema, true))?;
        }
        Ok(0)
    }

    fn ddl(&self, schema: &Schema, ddl: &Ddl, trace: &mut Trace) {
        let statements = ddl.statements(schema);
        let result = statements
            .iter()
            .try_for_each(|sql| self.exec(&plain(sql)).map(|_| ()))
            .map(|()| 0);
        trace.push(&format!("DDL: {}", statements.join(";\n")), result);
    }

    fn run(&self, schema: &Schema, units: &[Unit]) -> Trace {
        let mut trace = Trace::default();
        for unit in units {
            match unit {
                Unit::Auto(w) => {
                    let sql = w.render(schema, false);
                    trace.push(&show(&sql), self.exec(&sql));
                }
                Unit::Batch(steps) => {
                    let mut last_ok = false;
                    for (i, (w, cond)) in steps.iter().enumerate() {
                        let sql = w.render(schema, false);
                        let what = format!("batch step {i}: {}", show(&sql));
                        if *cond && i > 0 && !last_ok {
                            trace.skip(&what);
                            last_ok = false;
                            continue;
                        }
                        let result = self.exec(&sql);
                        last_ok = result.is_ok();
                        trace.push(&what, result);
                    }
                }
                Unit::Group(ws) => {
                    for w in ws {
                        let sql = w.render(schema, false);
                        trace.push(&format!("group: {}", show(&sql)), self.exec(&sql));
                    }
                }
                Unit::Seq(ws) => {
                    let what = format!("sequence: {}", seq_text(schema, ws));
                    trace.push(&what, self.sequence(schema, ws));
                }
                Unit::Ddl(ddl) => self.ddl(schema, ddl, &mut trace),
                Unit::Txn {
                    begin,
                    steps,
                    commit,
                } => {
                    trace.push(&format!("{begin:?} begin"), self.exec(&plain("BEGIN")));
                    for step in steps {
                        match step {
                            Step::W(w) => {
                                let sql = w.render(schema, false);
                                trace.push(&show(&sql), self.exec(&sql));
                            }
                            Step::Seq(ws) => {
                                let what = format!("sequence: {}", seq_text(schema, ws));
                                trace.push(&what, self.sequence(schema, ws));
                            }
                            Step::Ddl(ddl) => self.ddl(schema, ddl, &mut trace),
                            other => {
                                let sql = plain(&control_sql(other));
                                trace.push(&sql.text, self.exec(&sql));
                            }
                        }
                    }
                    let end = if *commit { "COMMIT" } else { "ROLLBACK" };
                    trace.push(end, self.exec(&plain(end)));
                }
                Unit::External(w) => {
                    let sql = w.render(schema, false);
                    trace.push(&format!("other program: {}", show(&sql)), self.exec(&sql));
                    trace.push("sweep", Ok(0));
                }
                Unit::Sweep => trace.push("sweep", Ok(0)),
            }
        }
        trace
    }
}

/// Every row of every table of the schema, each table sorted.
fn contents(conn: &Connection, schema: &Schema) -> Vec<Vec<Vec<Value>>> {
    (0..schema.tables.len())
        .map(|i| {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {}", quote_ident(TABLE_NAMES[i])))
                .unwrap();
            let n = stmt.column_count();
            let mut rows: Vec<Vec<Value>> = stmt
                .query_map([], |r| {
                    (0..n).map(|c| Ok(Value::from_sql(r.get_ref(c)?))).collect()
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            rows.sort_by_cached_key(|row| {
                let mut key = Vec::new();
                for v in row {
                    v.encode(&mut key);
                }
                key
            });
            rows
        })
        .collect()
}

async fn create_schema(db: &Database, schema: &Schema) -> Result<(), String> {
    let mut s = Stream { db, lease: None };
    s.sequence(&schema.ddl().join(";\n"))
        .await
        .map(|_| ())
        .map_err(|e| format!("DDL failed: {e}"))
}

fn show_schema(schema: &Schema) -> String {
    schema.ddl().join(";\n")
}

fn show_trace(trace: &Trace) -> String {
    trace.notes.join("\n")
}

/// Applies `entries` with their origins interleaved at random, some twice,
/// in random batch sizes; no entry may be rejected. Each origin's entries
/// keep their order: a node applies an entry only right after the one
/// before it of the same origin (every peer sends them so).
async fn apply_shuffled(
    db: &Database,
    entries: &[LogEntry],
    rng: &mut StdRng,
    max_batch: usize,
) -> Result<(), String> {
    let mut list = Vec::new();
    for entry in entries {
        list.push(entry.clone());
        if rng.gen_bool(0.25) {
            list.push(entry.clone());
        }
    }
    list.shuffle(rng);
    let mut per_origin: std::collections::HashMap<u64, Vec<LogEntry>> = Default::default();
    for entry in &list {
        per_origin
            .entry(entry.origin)
            .or_default()
            .push(entry.clone());
    }
    for entries in per_origin.values_mut() {
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
    }
    let list: Vec<LogEntry> = list
        .iter()
        .map(|e| per_origin.get_mut(&e.origin).unwrap().pop().unwrap())
        .collect();
    let mut rest = &list[..];
    while !rest.is_empty() {
        let n = rng.gen_range(1..=max_batch.min(rest.len()));
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let outcomes = db
            .apply(batch.to_vec(), "test")
            .await
            .map_err(|e| format!("apply failed: {}: {}", e.code, e.message))?;
        if outcomes.len() != batch.len() {
            return Err(format!(
                "{} outcomes for {} entries",
                outcomes.len(),
                batch.len()
            ));
        }
        for (entry, outcome) in batch.iter().zip(outcomes) {
            if let Applied::Rejected(reason) = outcome {
                return Err(format!(
                    "entry {}/{} of {} {} rejected: {reason}",
                    entry.origin, entry.seq, entry.table, entry.key
                ));
            }
        }
    }
    Ok(())
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- property 1

fn writes_match_model(schema: &Schema, units: &[Unit], knobs: Knobs) -> Result<(), String> {
    let mut node = Node::new(knobs, |_| {});
    let rt = runtime();
    let trace = rt.block_on(async {
        create_schema(node.db(), schema).await?;
        Ok::<_, String>(run_outpost(node.db(), schema, units).await)
    })?;
    let report = node.stop_and_check();
    let model = Model::new(schema);
    let expected = model.run(schema, units);
    let context = || {
        format!(
            "schema:\n{}\noutpost ran:\n{}\nplain SQLite ran:\n{}",
            show_schema(schema),
            show_trace(&trace),
            show_trace(&expected)
        )
    };
    if !report.is_clean() {
        return Err(format!(
            "check is not clean: {}\n{}",
            describe_report(&report),
            context()
        ));
    }
    if trace.outcomes != expected.outcomes {
        return Err(format!(
            "statements did not do the same on outpost and plain SQLite\n{}",
            context()
        ));
    }
    let got = contents(&read_only(&node.path()), schema);
    let want = contents(&model.conn, schema);
    if got != want {
        return Err(format!(
            "tables differ from plain SQLite:\noutpost: {got:?}\nplain:   {want:?}\n{}",
            context()
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(24))]

    /// Random writes through every kind of work item: the database checks
    /// clean and holds what plain SQLite holds.
    #[test]
    fn writes_are_captured_and_match_a_plain_sqlite_model(
        schema in schema(true),
        units in workload(20, true),
        knobs in knobs(),
    ) {
        writes_match_model(&schema, &units, knobs).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------- property 2

fn replica_converges(
    schema: &Schema,
    units: &[Unit],
    knobs: Knobs,
    seed: u64,
    max_batch: usize,
) -> Result<(), String> {
    let rt = runtime();
    let mut a = Node::new(knobs, |_| {});
    let trace = rt.block_on(async {
        create_schema(a.db(), schema).await?;
        Ok::<_, String>(run_outpost(a.db(), schema, units).await)
    })?;
    let report_a = a.stop_and_check();
    let context = || {
        format!(
            "schema:\n{}\nA ran:\n{}",
            show_schema(schema),
            show_trace(&trace)
        )
    };
    if !report_a.is_clean() {
        return Err(format!("A: {}\n{}", describe_report(&report_a), context()));
    }
    let entries = read_log(&a.path());
    let mut b = Node::new(knobs, |_| {});
    let mut rng = StdRng::seed_from_u64(seed);
    rt.block_on(async {
        create_schema(b.db(), schema).await?;
        apply_shuffled(b.db(), &entries, &mut rng, max_batch).await?;
        // All of it again: every entry is a duplicate now.
        let again = b
            .db()
            .apply(entries.clone(), "test")
            .await
            .map_err(|e| e.message.clone())?;
        if let Some((e, o)) = entries
            .iter()
            .zip(&again)
            .find(|(_, o)| **o != Applied::Duplicate)
        {
            return Err(format!(
                "entry {}/{} applied a second time: {o:?}",
                e.origin, e.seq
            ));
        }
        Ok(())
    })
    .map_err(|e| format!("{e}\n{}", context()))?;
    let report_b = b.stop_and_check();
    if !report_b.is_clean() {
        return Err(format!("B: {}\n{}", describe_report(&report_b), context()));
    }
    if report_a.digest != report_b.digest {
        return Err(format!(
            "B's digest differs from A's\nA: {:?}\nB: {:?}\n{}",
            contents(&read_only(&a.path()), schema),
            contents(&read_only(&b.path()), schema),
            context()
        ));
    }
    Ok(())
}

/// Entries of `from`'s log that `to` may receive (not `to`'s own).
fn entries_for(from: &Node, to_origin: u64) -> Vec<LogEntry> {
    let mut entries = read_log(&from.path());
    entries.retain(|e| e.origin != to_origin);
    entries
}

fn two_writers_converge(
    schema: &Schema,
    rounds: &[(Vec<Unit>, Vec<Unit>)],
    knobs: Knobs,
    seed: u64,
) -> Result<(), String> {
    let rt = runtime();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut rng_a, mut rng_b) = (
        StdRng::seed_from_u64(rng.gen()),
        StdRng::seed_from_u64(rng.gen()),
    );
    let mut a = Node::new(knobs, |_| {});
    let mut b = Node::new(knobs, |_| {});
    let (origin_a, origin_b) = (a.origin(), b.origin());
    let mut notes = Vec::new();
    let fail = |e: String, notes: &[String]| {
        format!(
            "{e}\nschema:\n{}\n{}",
            show_schema(schema),
            notes.join("\n")
        )
    };
    for (round, (units_a, units_b)) in rounds.iter().enumerate() {
        let result = rt.block_on(async {
            if round == 0 {
                create_schema(a.db(), schema).await?;
                create_schema(b.db(), schema).await?;
            }
            // What each node logged so far reaches the other while both
            // write: applies and local writes interleave on each writer.
            let to_b = entries_for(&a, origin_b);
            let to_a = entries_for(&b, origin_a);
            let (trace_a, trace_b, applied_a, applied_b) = tokio::join!(
                run_outpost(a.db(), schema, units_a),
                run_outpost(b.db(), schema, units_b),
                apply_shuffled(a.db(), &to_a, &mut rng_a, 8),
                apply_shuffled(b.db(), &to_b, &mut rng_b, 8),
            );
            notes.push(format!(
                "round {round}: A got {} entries of B's log, B got {} of A's\n\
                 round {round}, A ran:\n{}\nround {round}, B ran:\n{}",
                to_a.len(),
                to_b.len(),
                show_trace(&trace_a),
                show_trace(&trace_b)
            ));
            applied_a.map_err(|e| format!("A applying B's log: {e}"))?;
            applied_b.map_err(|e| format!("B applying A's log: {e}"))
        });
        if let Err(e) = result {
            return Err(fail(format!("round {round}: {e}"), &notes));
        }
        // Restart the nodes between rounds (capture starts from the file).
        if round % 2 == 1 {
            a.stop();
            a.start();
            b.stop();
            b.start();
        }
    }
    // Last exchange: everything, once more.
    let (to_a, to_b) = (entries_for(&b, origin_a), entries_for(&a, origin_b));
    rt.block_on(async {
        apply_shuffled(a.db(), &to_a, &mut rng_a, 8)
            .await
            .map_err(|e| format!("A applying B's log: {e}"))?;
        apply_shuffled(b.db(), &to_b, &mut rng_b, 8)
            .await
            .map_err(|e| format!("B applying A's log: {e}"))
    })
    .map_err(|e| fail(format!("last exchange: {e}"), &notes))?;
    let context = || format!("schema:\n{}\n{}", show_schema(schema), notes.join("\n"));
    let (report_a, report_b) = (a.stop_and_check(), b.stop_and_check());
    for (name, report) in [("A", &report_a), ("B", &report_b)] {
        if !report.is_clean() {
            return Err(format!(
                "{name}: {}\n{}",
                describe_report(report),
                context()
            ));
        }
    }
    if report_a.digest != report_b.digest {
        return Err(format!(
            "A and B differ after exchanging their logs\nA: {:?}\nB: {:?}\n{}",
            contents(&read_only(&a.path()), schema),
            contents(&read_only(&b.path()), schema),
            context()
        ));
    }
    // A third node that gets both logs at once, in one random order.
    let mut all = read_log(&a.path());
    all.extend(read_log(&b.path()));
    let mut c = Node::new(knobs, |_| {});
    rt.block_on(async {
        create_schema(c.db(), schema).await?;
        apply_shuffled(c.db(), &all, &mut rng, 16).await
    })
    .map_err(|e| format!("C: {e}\n{}", context()))?;
    let report_c = c.stop_and_check();
    if !report_c.is_clean() || report_c.digest != report_a.digest {
        return Err(format!(
            "C (both logs at once) differs: {}\nA: {:?}\nC: {:?}\n{}",
            describe_report(&report_c),
            contents(&read_only(&a.path()), schema),
            contents(&read_only(&c.path()), schema),
            context()
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(24))]

    /// A's log applied to a fresh node B with origins in any interleaving,
    /// with duplicates, in any batch sizes: B is clean and has A's digest.
    #[test]
    fn replica_converges_from_the_log_in_any_order(
        schema in schema(false),
        units in workload(16, false),
        knobs in knobs(),
        seed in any::<u64>(),
        max_batch in 1usize..=12,
    ) {
        replica_converges(&schema, &units, knobs, seed, max_batch)
            .map_err(TestCaseError::fail)?;
    }

    /// A and B write the same keys independently, over a few rounds, and
    /// exchange their logs after each: both end clean with equal digests.
    #[test]
    fn two_writers_converge_after_exchanging_logs(
        schema in schema(false),
        rounds in prop::collection::vec((workload(6, false), workload(6, false)), 1..=3),
        knobs in knobs(),
        seed in any::<u64>(),
    ) {
        two_writers_converge(&schema, &rounds, knobs, seed).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------- apply API

/// Runs one sequence on a node, panicking on error.
fn run_sql(rt: &tokio::runtime::Runtime, node: &Node, sql: &str) {
    rt.block_on(async {
        let mut s = Stream {
            db: node.db(),
            lease: None,
        };
        s.sequence(sql).await
    })
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn apply(rt: &tokio::runtime::Runtime, node: &Node, entries: &[LogEntry]) -> Vec<Applied> {
    rt.block_on(node.db().apply(entries.to_vec(), "test"))
        .unwrap_or_else(|e| panic!("apply: {}: {}", e.code, e.message))
}

fn check_running(node: &Node) -> CheckReport {
    let report = check(&node.path(), true).expect("check runs");
    assert!(report.is_clean(), "{}", describe_report(&report));
    report
}

const KNOBS: Knobs = Knobs {
    compact_small: false,
    no_cache: false,
};

/// A node with `ddl`, then `writes`; returns it (stopped) and its log.
fn source_log(rt: &tokio::runtime::Runtime, ddl: &str, writes: &str) -> (Node, Vec<LogEntry>) {
    let mut a = Node::new(KNOBS, |_| {});
    run_sql(rt, &a, ddl);
    run_sql(rt, &a, writes);
    let report = a.stop_and_check();
    assert!(report.is_clean(), "{}", describe_report(&report));
    let log = read_log(&a.path());
    (a, log)
}

#[test]
fn applying_the_same_entries_twice_changes_nothing() {
    let rt = runtime();
    let ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, w)";
    let (mut a, log) = source_log(
        &rt,
        ddl,
        "INSERT INTO t VALUES (1, 'one', 1.5), (2, 'two', NULL), (3, 'three', X'00');
         UPDATE t SET v = 'uno' WHERE id = 1;
         DELETE FROM t WHERE id = 2",
    );
    assert_eq!(log.len(), 5, "{log:?}");
    let b = Node::new(KNOBS, |_| {});
    run_sql(&rt, &b, ddl);
    assert!(apply(&rt, &b, &log).iter().all(|o| *o == Applied::Applied));
    let first = check_running(&b);
    let again = apply(&rt, &b, &log);
    assert!(again.iter().all(|o| *o == Applied::Duplicate), "{again:?}");
    // Duplicates inside one batch, too.
    let doubled: Vec<LogEntry> = log.iter().chain(&log).cloned().collect();
    assert!(apply(&rt, &b, &doubled)
        .iter()
        .all(|o| *o == Applied::Duplicate));
    let second = check_running(&b);
    assert_eq!(first.digest, second.digest);
    assert_eq!(first.log_entries, second.log_entries);
    assert_eq!(first.log_entries, log.len() as u64);
    a.start();
    let report_a = check_running(&a);
    assert_eq!(report_a.digest, second.digest);
}

#[test]
fn rejected_entries_give_a_reason_and_the_rest_of_the_batch_applies() {
    let rt = runtime();
    let ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)";
    let (_a, log) = source_log(
        &rt,
        ddl,
        "INSERT INTO t VALUES (1, 'one'); INSERT INTO t VALUES (2, 'two'); UPDATE t SET v = 'x'",
    );
    assert_eq!(log.len(), 4, "{log:?}");
    let b = Node::new(KNOBS, |c| c.crdt.max_update_bytes = 512);
    run_sql(&rt, &b, ddl);
    let own = b.origin();
    const STRANGER: u64 = 4242;
    let bad = |seq: u64, change: &dyn Fn(&mut LogEntry)| {
        let mut entry = log[0].clone();
        entry.origin = STRANGER;
        entry.seq = seq;
        change(&mut entry);
        entry
    };
    let cases: Vec<(LogEntry, &str)> = vec![
        (bad(1, &|e| e.table = "nope".into()), "not replicated"),
        (bad(2, &|e| e.key = "'open".into()), "row key"),
        (bad(3, &|e| e.key = "1,2".into()), "primary key"),
        (bad(4, &|e| e.update = vec![0; 600]), "max_update_bytes"),
        (bad(6, &|e| e.origin = own), "own origin"),
        (bad(5, &|e| e.update = vec![0xff; 40]), "update"),
        (bad(8, &|e| e.origin = 0), "out of range"),
        (bad(0, &|_| {}), "out of range"),
    ];
    // Good and bad entries interleaved in one batch.
    let mut batch = Vec::new();
    let mut expect = Vec::new();
    for (i, (entry, word)) in cases.iter().enumerate() {
        if let Some(good) = log.get(i) {
            batch.push(good.clone());
            expect.push(None);
        }
        batch.push(entry.clone());
        expect.push(Some(*word));
    }
    let outcomes = apply(&rt, &b, &batch);
    assert_eq!(outcomes.len(), batch.len());
    for ((entry, outcome), word) in batch.iter().zip(&outcomes).zip(&expect) {
        match (outcome, word) {
            (Applied::Applied, None) => {}
            (Applied::Rejected(reason), Some(word)) => assert!(
                reason.contains(word),
                "entry {entry:?}: reason {reason:?} should mention {word:?}"
            ),
            _ => panic!("entry {entry:?}: {outcome:?}, expected {word:?}"),
        }
    }
    let report = check_running(&b);
    assert_eq!(report.log_entries, log.len() as u64);
    assert_eq!(report.rows, 2);
    // A rejected entry was not stored: it is not a duplicate now.
    let retry = apply(&rt, &b, &[cases[0].0.clone()]);
    assert!(matches!(retry[0], Applied::Rejected(_)), "{retry:?}");
}

#[test]
fn an_entry_from_a_newer_schema_defers_the_rest_of_the_batch() {
    let rt = runtime();
    let ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)";
    let (_a, log) = source_log(
        &rt,
        ddl,
        "INSERT INTO t VALUES (1, 'one'); INSERT INTO t VALUES (2, 'two'); INSERT INTO t VALUES (3, 'three')",
    );
    assert_eq!(log.len(), 3, "{log:?}");
    let b = Node::new(KNOBS, |_| {});
    run_sql(&rt, &b, ddl);
    let mut newer = log.clone();
    newer[1].schema_version = 1;
    let outcomes = apply(&rt, &b, &newer);
    assert_eq!(outcomes[0], Applied::Applied);
    for outcome in &outcomes[1..] {
        assert!(
            matches!(outcome, Applied::Deferred(why) if why.contains("schema version")),
            "{outcomes:?}"
        );
    }
    // Nothing was quarantined: the same entries apply once the schema matches.
    assert_eq!(apply(&rt, &b, &log[1..]), vec![Applied::Applied; 2]);
    assert!(check_running(&b).is_clean());
}

#[test]
fn a_batch_larger_than_max_apply_batch_is_refused_whole() {
    let rt = runtime();
    let ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)";
    let (_a, log) = source_log(
        &rt,
        ddl,
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    );
    let b = Node::new(KNOBS, |c| c.crdt.max_apply_batch = 2);
    run_sql(&rt, &b, ddl);
    let refused = rt.block_on(b.db().apply(log.clone(), "test"));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.message.contains("max_apply_batch")),
        "{refused:?}"
    );
    assert_eq!(check_running(&b).log_entries, 0, "nothing was applied");
    assert_eq!(apply(&rt, &b, &log[..2]), vec![Applied::Applied; 2]);
    assert_eq!(apply(&rt, &b, &log[2..]), vec![Applied::Applied]);
    assert_eq!(check_running(&b).rows, 3);
}

#[test]
fn rows_apply_before_their_foreign_key_parent() {
    let rt = runtime();
    let ddl = "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
               CREATE TABLE child (id INTEGER PRIMARY KEY,
                   pid INTEGER NOT NULL REFERENCES parent (id));";
    // The parent written on one node, the children on another (which does
    // not enforce the reference for this write).
    let (_a, parents) = source_log(&rt, ddl, "INSERT INTO parent VALUES (1, 'p')");
    let (_c, children) = source_log(
        &rt,
        ddl,
        "PRAGMA foreign_keys = OFF; INSERT INTO child VALUES (10, 1), (11, 1);",
    );
    assert_eq!((parents.len(), children.len()), (1, 2));
    let mut b = Node::new(KNOBS, |_| {});
    run_sql(&rt, &b, ddl);
    let outcomes = apply(&rt, &b, &children);
    assert!(
        outcomes.iter().all(|o| *o == Applied::Applied),
        "{outcomes:?}"
    );
    // Not checked here: the log misses the parent's entry, so seq has a gap.
    let count = |table: &str| -> i64 {
        read_only(&b.path())
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!((count("parent"), count("child")), (0, 2));
    assert_eq!(apply(&rt, &b, &parents), vec![Applied::Applied]);
    // Foreign keys are back on for clients after the apply.
    let refused = rt.block_on(async {
        let mut s = Stream {
            db: b.db(),
            lease: None,
        };
        s.execute(&plain("INSERT INTO child VALUES (12, 99)")).await
    });
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("FOREIGN KEY")),
        "{refused:?}"
    );
    let report = b.stop_and_check();
    assert!(report.is_clean(), "{}", describe_report(&report));
    assert_eq!(report.rows, 3);
}

// ---------------------------------------------------------------- bugs

/// Runs `writes` (statements with arguments) on a node with `ddl`, then
/// applies its log to a second node. Returns both check reports.
fn origin_and_replica(ddl: &str, writes: &[Sql]) -> (CheckReport, CheckReport) {
    let rt = runtime();
    let mut a = Node::new(KNOBS, |_| {});
    run_sql(&rt, &a, ddl);
    rt.block_on(async {
        let mut s = Stream {
            db: a.db(),
            lease: None,
        };
        for sql in writes {
            s.execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", show(sql)));
        }
    });
    let report_a = a.stop_and_check();
    let log = read_log(&a.path());
    let mut b = Node::new(KNOBS, |_| {});
    run_sql(&rt, &b, ddl);
    let outcomes = apply(&rt, &b, &log);
    assert!(
        outcomes.iter().all(|o| !matches!(o, Applied::Rejected(_))),
        "{outcomes:?}"
    );
    let report_b = b.stop_and_check();
    (report_a, report_b)
}

fn sql(text: &str, args: Vec<Value>) -> Sql {
    Sql {
        text: text.into(),
        args,
    }
}

fn assert_converged(report_a: &CheckReport, report_b: &CheckReport) {
    assert!(report_a.is_clean(), "origin: {}", describe_report(report_a));
    assert!(
        report_b.is_clean(),
        "replica: {}",
        describe_report(report_b)
    );
    assert_eq!(
        report_a.digest, report_b.digest,
        "replica differs from origin"
    );
}

/// Found by `writes_are_captured_and_match_a_plain_sqlite_model` on
/// 190ace5 (fixed in fe1f1a6): rows that REPLACE deleted through another
/// UNIQUE index kept a live document.
#[test]
fn replace_through_a_unique_index_is_captured() {
    let ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, u UNIQUE)";
    let (a, b) = origin_and_replica(
        ddl,
        &[
            sql("INSERT INTO t VALUES (1, 'x')", vec![]),
            sql("INSERT OR REPLACE INTO t VALUES (2, 'x')", vec![]),
        ],
    );
    assert_converged(&a, &b);
    let (a, b) = origin_and_replica(
        ddl,
        &[
            sql("INSERT INTO t VALUES (1, 'x'), (2, 'y')", vec![]),
            sql("UPDATE OR REPLACE t SET u = 'x' WHERE id = 2", vec![]),
        ],
    );
    assert_converged(&a, &b);
}

#[test]
#[ignore = "known limitation (README: give key columns a type): a key column without affinity holds 1 and 1.0 as one row (SQLite compares them equal) under two keys ('1', '1.0'); after UPDATE k = 1.0 the document of key '1' still finds the row with `k IS 1`, so the DELETE that follows leaves it live"]
fn key_changed_to_an_equal_real_then_deleted_is_captured() {
    let (a, b) = origin_and_replica(
        "CREATE TABLE t (k BLOB PRIMARY KEY, a)",
        &[
            sql("INSERT INTO t VALUES (1, 'a')", vec![]),
            sql("UPDATE t SET k = 1.0 WHERE k = 1", vec![]),
            sql("DELETE FROM t", vec![]),
        ],
    );
    assert_converged(&a, &b);
}

#[test]
#[ignore = "known limitation (README: give key columns a type): applying key '1.0' finds the replica's row of key '1' (`k IS 1.0`) and updates its key column; the update trigger records key '1', which apply leaves pending (check: 1 changed rows are not encoded yet; the next flush logs a local entry for '1')"]
fn replace_by_an_equal_real_key_applies_cleanly() {
    let (a, b) = origin_and_replica(
        "CREATE TABLE t (k BLOB PRIMARY KEY, a)",
        &[
            sql("INSERT INTO t VALUES (1, 'a')", vec![]),
            sql("INSERT OR REPLACE INTO t VALUES (1.0, 'b')", vec![]),
        ],
    );
    assert_converged(&a, &b);
}

#[test]
fn negative_zero_key_replicates_exactly() {
    let (a, b) = origin_and_replica(
        "CREATE TABLE t (k BLOB PRIMARY KEY, a)",
        &[sql("INSERT INTO t VALUES (?1, 1)", vec![Value::Real(-0.0)])],
    );
    assert_converged(&a, &b);
}

#[test]
fn schema_changes_after_a_rolled_back_reconcile_are_picked_up() {
    let rt = runtime();
    // How many schema changes return the cookie to the remembered number
    // depends on how many triggers reconcile creates: try a range.
    for k in 0..16 {
        let mut a = Node::new(KNOBS, |_| {});
        run_sql(&rt, &a, "CREATE TABLE t (id INTEGER PRIMARY KEY, u)");
        run_sql(&rt, &a, "INSERT INTO t VALUES (1, 'x')");
        // RELEASE makes capture reconcile the new column; then it rolls back.
        run_sql(
            &rt,
            &a,
            "BEGIN; ALTER TABLE t ADD COLUMN z; SAVEPOINT s; RELEASE s; ROLLBACK",
        );
        let mut txn = String::from("BEGIN; ");
        for j in 0..k {
            txn.push_str(&format!("CREATE INDEX i{j} ON t (id); "));
        }
        txn.push_str("CREATE UNIQUE INDEX ux ON t (u); COMMIT");
        run_sql(&rt, &a, &txn);
        run_sql(&rt, &a, "INSERT OR REPLACE INTO t VALUES (2, 'x')");
        let report = a.stop_and_check();
        assert!(
            report.is_clean(),
            "with {k} more indexes: {}",
            describe_report(&report)
        );
    }
}
