//! Executing Hrana statements, batches, sequences and describes on one
//! connection. Pure functions of (connection, request) → result: the writer
//! and the readers both call them, on their own threads.

use std::time::Instant;

use bytes::Bytes;
use libsql_hrana::proto::{
    Batch, BatchCond, BatchResult, Col, DescribeCol, DescribeParam, DescribeResult, Row, Stmt,
    StmtResult, Value,
};
use libsql_sys::rusqlite::types::{ToSqlOutput, ValueRef};
use libsql_sys::rusqlite::{self, Connection, Statement};

use super::capture::Capture;
use super::classify::CapturePoint;
use super::conn::{Guard, Role};
use crate::auth::Access;
use crate::error::SqlError;

/// Per-request bounds and rights, carried by every job.
#[derive(Debug, Clone, Copy)]
pub struct ExecCtx {
    pub access: Access,
    pub max_rows: usize,
    pub max_bytes: usize,
    /// Longest the whole work item may run (`limits.query_timeout`).
    pub timeout: std::time::Duration,
}

/// Why a statement did not produce a result.
#[derive(Debug, Clone)]
pub enum ExecError {
    Sql(SqlError),
    /// A reader prepared a statement that would write: run it on the writer.
    NeedsWriter,
}

impl From<SqlError> for ExecError {
    fn from(e: SqlError) -> Self {
        ExecError::Sql(e)
    }
}

/// A unit of database work, self-contained so that it can be queued,
/// routed and, after a failed group commit, run again.
#[derive(Debug, Clone)]
pub enum WorkItem {
    Execute(Stmt),
    Batch(Batch),
    Sequence(String),
    Describe(String),
}

#[derive(Debug)]
pub enum WorkOutput {
    Execute(StmtResult),
    Batch(BatchResult),
    Sequence,
    Describe(DescribeResult),
}

/// A connection with its authorizer guard and its role.
pub struct Session<'a> {
    pub conn: &'a Connection,
    pub guard: &'a Guard,
    pub role: Role,
    /// Running inside the writer's group transaction: from the stream's
    /// point of view it is in autocommit mode (its jobs hold no
    /// transaction statements), whatever the shared connection says.
    pub grouped: bool,
    /// The writer's change capture (None on readers, or when it is off).
    pub capture: Option<&'a Capture>,
}

impl Session<'_> {
    /// Whether the *stream* is in autocommit mode (Hrana's `is_autocommit`).
    fn stream_autocommit(&self) -> bool {
        self.grouped || self.conn.is_autocommit()
    }
}

impl Session<'_> {
    /// Runs one work item, interrupted if it outlives `ctx.timeout`.
    pub fn run(&self, item: &WorkItem, ctx: &ExecCtx) -> Result<WorkOutput, ExecError> {
        self.guard.set_deadline(Some(Instant::now() + ctx.timeout));
        let output = self.run_item(item, ctx);
        let timed_out = self.guard.set_deadline(None);
        match output {
            Err(ExecError::Sql(e)) if timed_out && e.code == "SQLITE_INTERRUPT" => Err(SqlError::new(
                "SQLITE_INTERRUPT",
                format!(
                    "SQLite error: interrupted: the request ran longer than {:?} (limits.query_timeout)",
                    ctx.timeout
                ),
            )
            .into()),
            other => other,
        }
    }

    fn run_item(&self, item: &WorkItem, ctx: &ExecCtx) -> Result<WorkOutput, ExecError> {
        match item {
            WorkItem::Execute(stmt) => self.execute(stmt, ctx).map(WorkOutput::Execute),
            WorkItem::Batch(batch) => self.batch(batch, ctx).map(WorkOutput::Batch),
            WorkItem::Sequence(sql) => self.sequence(sql, ctx).map(|()| WorkOutput::Sequence),
            WorkItem::Describe(sql) => self
                .describe(sql)
                .map(WorkOutput::Describe)
                .map_err(Into::into),
        }
    }

    fn prepare(&self, sql: &str) -> Result<rusqlite::CachedStatement<'_>, SqlError> {
        self.guard.take_denial();
        check_rename(sql, false)?;
        if may_hold_several_statements(sql) && self.count_statements(sql)? > 1 {
            return Err(SqlError::new(
                "SQL_MANY_STATEMENTS",
                "SQL string contains more than one statement; use a batch or a sequence",
            ));
        }
        self.conn
            .prepare_cached(sql)
            .map_err(|e| self.prepare_error(e))
    }

    fn prepare_error(&self, err: rusqlite::Error) -> SqlError {
        if let Some(reason) = self.guard.take_denial() {
            return SqlError::new(
                "SQLITE_AUTH",
                format!("SQLite error: not authorized: {reason}"),
            );
        }
        let error = SqlError::from(err);
        // The authorizer never sees names that do not exist; refuse internal
        // names the same way whether or not the table exists yet.
        if error
            .message
            .to_ascii_lowercase()
            .contains(super::conn::INTERNAL_PREFIX)
        {
            return SqlError::new(
                "SQLITE_AUTH",
                "SQLite error: not authorized: internal _outpost_* names cannot be used",
            );
        }
        error
    }

    fn count_statements(&self, sql: &str) -> Result<usize, SqlError> {
        let mut batch = rusqlite::Batch::new(self.conn, sql);
        let mut count = 0;
        while let Some(_stmt) = batch.next().map_err(|e| self.prepare_error(e))? {
            count += 1;
            if count > 1 {
                break;
            }
        }
        Ok(count)
    }

    /// Checks that `stmt` may run here, for this caller.
    fn check_allowed(
        &self,
        sql: &str,
        stmt: &Statement<'_>,
        ctx: &ExecCtx,
    ) -> Result<(), ExecError> {
        // A savepoint lives on its connection: one opened on a reader would
        // be lost when the transaction moves to the writer at its first
        // write. Savepoints are for writing, so they start on the writer.
        if self.role == Role::Reader
            && super::classify::first_keyword(sql).eq_ignore_ascii_case("SAVEPOINT")
        {
            return Err(ExecError::NeedsWriter);
        }
        if stmt.readonly() {
            return Ok(());
        }
        if ctx.access == Access::ReadOnly {
            return Err(SqlError::new(
                "SQLITE_AUTH",
                "SQLite error: not authorized: this token is read-only and the statement writes",
            )
            .into());
        }
        if self.role == Role::Reader {
            return Err(ExecError::NeedsWriter);
        }
        Ok(())
    }

    pub fn execute(&self, stmt: &Stmt, ctx: &ExecCtx) -> Result<StmtResult, ExecError> {
        let started = Instant::now();
        let sql = stmt
            .sql
            .as_deref()
            .ok_or_else(|| SqlError::new("SQL_NOT_FOUND", "The statement has no SQL text"))?;
        let mut prepared = self.prepare(sql)?;
        self.check_allowed(sql, &prepared, ctx)?;
        bind_args(&mut prepared, stmt)?;
        let readonly = prepared.readonly();
        self.captured(sql, readonly, || {
            self.run_prepared(prepared, stmt.want_rows.unwrap_or(true), ctx, started)
        })
    }

    fn run_prepared(
        &self,
        mut prepared: rusqlite::CachedStatement<'_>,
        want_rows: bool,
        ctx: &ExecCtx,
        started: Instant,
    ) -> Result<StmtResult, ExecError> {
        let readonly = prepared.readonly();
        let total_before = total_changes(self.conn);
        let rows = collect_rows(&mut prepared, want_rows, ctx)?;
        // Read after running: if the schema changed since the statement was
        // prepared (a migration, another connection's DDL), SQLite prepared
        // it again at its first step, and only now has its columns.
        let cols: Vec<Col> = prepared
            .columns()
            .iter()
            .map(|c| Col {
                name: Some(c.name().to_string()),
                decltype: c.decl_type().map(str::to_string),
            })
            .collect();
        drop(prepared);
        let wrote = total_changes(self.conn) != total_before;
        let affected_row_count = if readonly || !wrote {
            0
        } else {
            self.conn.changes()
        };
        Ok(StmtResult {
            cols,
            rows_read: rows.len() as u64,
            rows_written: affected_row_count,
            rows,
            affected_row_count,
            last_insert_rowid: (!readonly && self.role == Role::Writer)
                .then(|| self.conn.last_insert_rowid()),
            replication_index: None,
            query_duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Runs one statement with change capture around it, on the writer:
    /// pending changes are encoded before a COMMIT/RELEASE, and a write in
    /// autocommit mode runs in a transaction of its own so that its changes
    /// are encoded before it commits (invisible to the client: it still
    /// reports autocommit). See `db::capture`.
    fn captured<T>(
        &self,
        sql: &str,
        readonly: bool,
        run: impl FnOnce() -> Result<T, ExecError>,
    ) -> Result<T, ExecError> {
        let Some(capture) = self.capture.filter(|_| !self.grouped) else {
            return run();
        };
        let open = !self.conn.is_autocommit();
        let output = match CapturePoint::of(sql) {
            CapturePoint::Commit if open => {
                self.guard
                    .internal(|| capture.flush(self.conn))
                    .map_err(SqlError::from)?;
                run()
            }
            CapturePoint::Rollback if open => {
                let output = run();
                if !self.conn.is_autocommit() {
                    capture.savepoint_rolled_back();
                }
                output
            }
            CapturePoint::Statement if !open && !readonly => {
                return self.in_own_transaction(capture, run);
            }
            _ => run(),
        };
        self.guard.internal(|| capture.settle(self.conn));
        output
    }

    fn in_own_transaction<T>(
        &self,
        capture: &Capture,
        run: impl FnOnce() -> Result<T, ExecError>,
    ) -> Result<T, ExecError> {
        self.conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.raw_execute())
            .map_err(SqlError::from)?;
        let output = run();
        if !self.conn.is_autocommit() {
            // Commits what the statement left (as autocommit would), or
            // rolls back if its changes cannot be captured.
            self.guard
                .internal(|| capture.flush_and_commit(self.conn))
                .map_err(SqlError::from)?;
        }
        self.guard.internal(|| capture.settle(self.conn));
        output
    }

    /// Runs the steps whose conditions hold; a failing step does not stop
    /// the batch (conditions decide), exactly as Hrana specifies.
    pub fn batch(&self, batch: &Batch, ctx: &ExecCtx) -> Result<BatchResult, ExecError> {
        let mut step_results: Vec<Option<StmtResult>> = Vec::with_capacity(batch.steps.len());
        let mut step_errors: Vec<Option<libsql_hrana::proto::Error>> =
            Vec::with_capacity(batch.steps.len());
        let mut budget = *ctx;
        for step in &batch.steps {
            let run = match &step.condition {
                None => true,
                Some(cond) => {
                    eval_cond(cond, &step_results, &step_errors, self.stream_autocommit())
                }
            };
            if !run {
                step_results.push(None);
                step_errors.push(None);
                continue;
            }
            match self.execute(&step.stmt, &budget) {
                Ok(result) => {
                    budget.max_rows = budget.max_rows.saturating_sub(result.rows.len());
                    budget.max_bytes = budget.max_bytes.saturating_sub(result_size(&result));
                    step_results.push(Some(result));
                    step_errors.push(None);
                }
                Err(ExecError::NeedsWriter) => return Err(ExecError::NeedsWriter),
                Err(ExecError::Sql(e)) => {
                    step_results.push(None);
                    step_errors.push(Some(e.to_hrana()));
                }
            }
        }
        Ok(BatchResult {
            step_results,
            step_errors,
            replication_index: None,
        })
    }

    /// Runs every statement of `sql` in order, discarding rows.
    pub fn sequence(&self, sql: &str, ctx: &ExecCtx) -> Result<(), ExecError> {
        self.guard.take_denial();
        check_rename(sql, true)?;
        let mut batch = rusqlite::Batch::new(self.conn, sql);
        loop {
            let next = batch.next().map_err(|e| self.prepare_error(e))?;
            let Some(mut stmt) = next else {
                return Ok(());
            };
            let text = stmt.expanded_sql().unwrap_or_default();
            self.check_allowed(&text, &stmt, ctx)?;
            let readonly = stmt.readonly();
            self.captured(&text, readonly, || {
                let mut rows = stmt.raw_query();
                while rows.next().map_err(SqlError::from)?.is_some() {}
                Ok(())
            })?;
        }
    }

    pub fn describe(&self, sql: &str) -> Result<DescribeResult, SqlError> {
        let stmt = self.prepare(sql)?;
        let params = (1..=stmt.parameter_count())
            .map(|i| DescribeParam {
                name: stmt.parameter_name(i).map(str::to_string),
            })
            .collect();
        let cols = stmt
            .columns()
            .iter()
            .map(|c| DescribeCol {
                name: c.name().to_string(),
                decltype: c.decl_type().map(str::to_string),
            })
            .collect();
        Ok(DescribeResult {
            params,
            cols,
            is_explain: stmt.is_explain() != 0,
            is_readonly: stmt.readonly(),
        })
    }
}

/// The authorizer sees only the old name of `ALTER TABLE .. RENAME TO`, and
/// it must let `DROP TABLE` drop the table's capture triggers, so an ALTER
/// or DROP that names an internal object anywhere is refused here.
/// (A sequence may hold such a statement anywhere, so for it any mention counts.)
fn check_rename(sql: &str, anywhere: bool) -> Result<(), SqlError> {
    let lower = sql.to_ascii_lowercase();
    let is_alter = if anywhere {
        lower.contains("alter") || lower.contains("drop")
    } else {
        let word = super::classify::first_keyword(sql);
        word.eq_ignore_ascii_case("ALTER") || word.eq_ignore_ascii_case("DROP")
    };
    if is_alter && lower.contains(super::conn::INTERNAL_PREFIX) {
        return Err(SqlError::new(
            "SQLITE_AUTH",
            "SQLite error: not authorized: internal _outpost_* names cannot be used",
        ));
    }
    Ok(())
}

/// `;` followed by more than whitespace may start a second statement.
fn may_hold_several_statements(sql: &str) -> bool {
    sql.trim_end().trim_end_matches(';').contains(';')
}

fn total_changes(conn: &Connection) -> i64 {
    // SAFETY: the handle is valid for as long as `conn` lives, and this
    // thread owns the connection.
    unsafe { libsql_sys::ffi::sqlite3_total_changes64(conn.handle()) }
}

/// Binds every parameter of `stmt`: a named one (`:a`, `@a`, `$a`) from
/// `named_args`, else — like every `?` and `?NNN` — from the positional
/// argument at its index. A parameter with no value is an error, as in
/// libSQL's server; so are unused arguments.
fn bind_args(stmt: &mut Statement<'_>, hrana: &Stmt) -> Result<(), SqlError> {
    let expected = stmt.parameter_count();
    if hrana.args.len() > expected {
        return Err(SqlError::new(
            "ARGS_INVALID",
            format!(
                "The statement has {expected} parameters but {} positional arguments were given",
                hrana.args.len()
            ),
        ));
    }
    for arg in &hrana.named_args {
        if named_index(stmt, &arg.name)?.is_none() {
            return Err(SqlError::new(
                "ARGS_INVALID",
                format!("The statement has no parameter named {:?}", arg.name),
            ));
        }
    }
    for index in 1..=expected {
        let name = stmt.parameter_name(index).map(str::to_string);
        let named = name
            .as_deref()
            .filter(|n| n.starts_with([':', '@', '$']))
            .and_then(|n| hrana.named_args.iter().find(|a| same_param(&a.name, n)));
        let value = match named {
            Some(arg) => &arg.value,
            None => hrana.args.get(index - 1).ok_or_else(|| {
                SqlError::new(
                    "ARGS_INVALID",
                    format!(
                        "No value for parameter {} ({} given)",
                        name.unwrap_or_else(|| format!("?{index}")),
                        hrana.args.len() + hrana.named_args.len()
                    ),
                )
            })?,
        };
        stmt.raw_bind_parameter(index, to_sql(value)?)?;
    }
    Ok(())
}

/// `a` given by a client matches the parameter `:a`, `@a` or `$a`.
fn same_param(given: &str, param: &str) -> bool {
    given == param || (!given.starts_with([':', '@', '$']) && &param[1..] == given)
}

/// Finds a named parameter; a name without its prefix matches `:`, `@`, `$`.
fn named_index(stmt: &Statement<'_>, name: &str) -> Result<Option<usize>, SqlError> {
    if name.starts_with([':', '@', '$']) {
        return Ok(stmt.parameter_index(name)?);
    }
    for prefix in [':', '@', '$'] {
        if let Some(i) = stmt.parameter_index(&format!("{prefix}{name}"))? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

fn to_sql(value: &Value) -> Result<ToSqlOutput<'_>, SqlError> {
    Ok(ToSqlOutput::Borrowed(match value {
        Value::Null => ValueRef::Null,
        Value::Integer { value } => ValueRef::Integer(*value),
        Value::Float { value } => ValueRef::Real(*value),
        Value::Text { value } => ValueRef::Text(value.as_bytes()),
        Value::Blob { value } => ValueRef::Blob(value),
        Value::None => {
            return Err(SqlError::new("ARGS_INVALID", "An argument has no value"));
        }
    }))
}

fn from_sql(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(value) => Value::Integer { value },
        ValueRef::Real(value) => Value::Float { value },
        ValueRef::Text(bytes) => Value::Text {
            value: String::from_utf8_lossy(bytes).into(),
        },
        ValueRef::Blob(bytes) => Value::Blob {
            value: Bytes::copy_from_slice(bytes),
        },
    }
}

/// Approximate JSON size of a value, for the response-size limit.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::None => 16,
        Value::Integer { .. } | Value::Float { .. } => 48,
        Value::Text { value } => 32 + value.len(),
        Value::Blob { value } => 32 + value.len() * 4 / 3,
    }
}

fn result_size(result: &StmtResult) -> usize {
    result
        .rows
        .iter()
        .map(|r| r.values.iter().map(value_size).sum::<usize>())
        .sum()
}

fn collect_rows(
    stmt: &mut Statement<'_>,
    want_rows: bool,
    ctx: &ExecCtx,
) -> Result<Vec<Row>, SqlError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        if !want_rows {
            continue;
        }
        if out.len() >= ctx.max_rows {
            return Err(SqlError::new(
                "RESPONSE_TOO_LARGE",
                format!(
                    "The result has more than {} rows (limits.max_response_rows)",
                    ctx.max_rows
                ),
            ));
        }
        let ncols = row.as_ref().column_count();
        let mut values = Vec::with_capacity(ncols);
        for i in 0..ncols {
            let value = from_sql(row.get_ref(i)?);
            bytes += value_size(&value);
            values.push(value);
        }
        if bytes > ctx.max_bytes {
            return Err(SqlError::new(
                "RESPONSE_TOO_LARGE",
                format!(
                    "The result is larger than {} bytes (limits.max_response_bytes)",
                    ctx.max_bytes
                ),
            ));
        }
        out.push(Row { values });
    }
    Ok(out)
}

fn eval_cond(
    cond: &BatchCond,
    results: &[Option<StmtResult>],
    errors: &[Option<libsql_hrana::proto::Error>],
    is_autocommit: bool,
) -> bool {
    let step_ok = |s: u32| results.get(s as usize).is_some_and(Option::is_some);
    let step_err = |s: u32| errors.get(s as usize).is_some_and(Option::is_some);
    match cond {
        BatchCond::None => false,
        BatchCond::Ok { step } => step_ok(*step),
        BatchCond::Error { step } => step_err(*step),
        BatchCond::Not { cond } => !eval_cond(cond, results, errors, is_autocommit),
        BatchCond::And(list) => list
            .conds
            .iter()
            .all(|c| eval_cond(c, results, errors, is_autocommit)),
        BatchCond::Or(list) => list
            .conds
            .iter()
            .any(|c| eval_cond(c, results, errors, is_autocommit)),
        BatchCond::IsAutocommit {} => is_autocommit,
    }
}

/// Rejects batches whose conditions refer to steps not yet run, or that are
/// too long. Checked before the batch is queued.
pub fn validate_batch(batch: &Batch, max_steps: usize) -> Result<(), SqlError> {
    if batch.steps.len() > max_steps {
        return Err(SqlError::new(
            "BATCH_TOO_LARGE",
            format!(
                "The batch has {} steps; the limit is {max_steps} (limits.max_batch_steps)",
                batch.steps.len()
            ),
        ));
    }
    fn check(cond: &BatchCond, current: u32) -> Result<(), SqlError> {
        let bad = |step: u32| {
            Err(SqlError::new(
                "BATCH_COND_INVALID",
                format!(
                    "Step {current} has a condition on step {step}, which does not run before it"
                ),
            ))
        };
        match cond {
            BatchCond::Ok { step } | BatchCond::Error { step } if *step >= current => bad(*step),
            BatchCond::Not { cond } => check(cond, current),
            BatchCond::And(list) | BatchCond::Or(list) => {
                list.conds.iter().try_for_each(|c| check(c, current))
            }
            BatchCond::None => Err(SqlError::new(
                "BATCH_COND_INVALID",
                "Unknown condition type",
            )),
            _ => Ok(()),
        }
    }
    for (i, step) in batch.steps.iter().enumerate() {
        if let Some(cond) = &step.condition {
            check(cond, i as u32)?;
        }
    }
    Ok(())
}
