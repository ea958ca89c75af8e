//! Executing Hrana statements, batches, sequences and describes on one
//! connection. Pure functions of (connection, request) → result: the writer
//! and the readers both call them, on their own threads.

use std::sync::Arc;
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
use super::conn::{Guard, Role, Touches};
use crate::auth::Access;
use crate::error::SqlError;

/// Per-request bounds and rights, carried by every job.
#[derive(Debug, Clone)]
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
                .describe(sql, ctx)
                .map(WorkOutput::Describe)
                .map_err(Into::into),
        }
    }

    /// Prepares (cached) a client statement, with what it touches: recorded
    /// by the authorizer if SQLite compiled it now, else remembered from
    /// when it did. Rights are checked against these on every execution.
    fn prepare(
        &self,
        sql: &str,
    ) -> Result<(rusqlite::CachedStatement<'_>, Arc<Touches>), SqlError> {
        self.guard.take_denial();
        check_rename(sql, false)?;
        if may_hold_several_statements(sql) && self.count_statements(sql)? > 1 {
            return Err(SqlError::new(
                "SQL_MANY_STATEMENTS",
                "SQL string contains more than one statement; use a batch or a sequence",
            ));
        }
        let (prepared, recorded) = self.guard.recording(|| self.conn.prepare_cached(sql));
        let prepared = prepared.map_err(|e| self.prepare_error(e))?;
        if let Some(touches) = recorded {
            let touches = Arc::new(touches);
            self.guard.remember_touches(sql, Arc::clone(&touches));
            return Ok((prepared, touches));
        }
        if let Some(touches) = self.guard.touches_of(sql) {
            return Ok((prepared, touches));
        }
        // From the statement cache, but what it touches is not known (the
        // side cache dropped it, internal code compiled it first, or it
        // touches nothing): compile it once more, uncached, to learn it.
        let (fresh, recorded) = self.guard.recording(|| self.conn.prepare(sql).map(drop));
        fresh.map_err(|e| self.prepare_error(e))?;
        let touches = Arc::new(recorded.unwrap_or_default());
        self.guard.remember_touches(sql, Arc::clone(&touches));
        Ok((prepared, touches))
    }

    /// Compiles `sql` again, uncached, against the current schema (loaded
    /// first, in case another connection changed it), and remembers what
    /// it touches.
    fn relearn(&self, sql: &str) -> Result<Arc<Touches>, SqlError> {
        self.guard
            .internal(|| {
                let mut check = self.conn.prepare("SELECT 1 FROM sqlite_schema LIMIT 1")?;
                let mut rows = check.raw_query();
                rows.next().map(drop)
            })
            .map_err(SqlError::from)?;
        let (fresh, recorded) = self.guard.recording(|| self.conn.prepare(sql).map(drop));
        fresh.map_err(|e| self.prepare_error(e))?;
        let touches = Arc::new(recorded.unwrap_or_default());
        self.guard.remember_touches(sql, Arc::clone(&touches));
        Ok(touches)
    }

    /// Steps a client statement: if SQLite recompiles it meanwhile (the
    /// schema changed), the authorizer enforces the caller's table rights
    /// on the new compilation, and what it touches replaces what was
    /// remembered for `sql` (None: not remembered, a sequence's statement).
    fn step<T>(
        &self,
        sql: Option<&str>,
        ctx: &ExecCtx,
        run: impl FnOnce() -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let (output, recompiled) = self.guard.running(&ctx.access, run);
        if let (Some(sql), Some(touches)) = (sql, recompiled) {
            match &output {
                Ok(_) => self.guard.remember_touches(sql, Arc::new(touches)),
                Err(_) => self.guard.forget_touches(sql),
            }
        }
        output.map_err(|e| match self.guard.take_denial() {
            Some(reason) if e.code == "SQLITE_AUTH" => SqlError::new(
                "SQLITE_AUTH",
                format!("SQLite error: not authorized: {reason}"),
            ),
            _ => e,
        })
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
        touches: &Touches,
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
        let readonly = stmt.readonly();
        check_rights(&ctx.access, touches, readonly)?;
        if readonly {
            return Ok(());
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
        let (mut prepared, touches) = self.prepare(sql)?;
        if let Err(refused) = self.check_allowed(sql, &prepared, &touches, ctx) {
            // What a cached statement touches may be stale: the schema
            // changed since it was compiled (a trigger dropped). Learn it
            // again before refusing; running it is checked anyway.
            let stale = matches!(&refused, ExecError::Sql(e) if e.code == "SQLITE_AUTH")
                && ctx.access.tables().is_some();
            if !stale {
                return Err(refused);
            }
            let fresh = self.relearn(sql)?;
            if *fresh == *touches {
                return Err(refused);
            }
            self.check_allowed(sql, &prepared, &fresh, ctx)?;
        }
        bind_args(&mut prepared, stmt)?;
        let readonly = prepared.readonly();
        self.captured(sql, readonly, || {
            self.run_prepared(sql, prepared, stmt.want_rows.unwrap_or(true), ctx, started)
        })
    }

    fn run_prepared(
        &self,
        sql: &str,
        mut prepared: rusqlite::CachedStatement<'_>,
        want_rows: bool,
        ctx: &ExecCtx,
        started: Instant,
    ) -> Result<StmtResult, ExecError> {
        let readonly = prepared.readonly();
        let total_before = total_changes(self.conn);
        let rows = self.step(Some(sql), ctx, || {
            collect_rows(&mut prepared, want_rows, ctx)
        })?;
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
        let mut budget = ctx.clone();
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
            // Each statement is compiled (never cached) just before it runs,
            // so the authorizer reports what it touches every time.
            let (next, recorded) = self.guard.recording(|| batch.next());
            let next = next.map_err(|e| self.prepare_error(e))?;
            let Some(mut stmt) = next else {
                return Ok(());
            };
            let touches = recorded.unwrap_or_default();
            let text = stmt.expanded_sql().unwrap_or_default();
            self.check_allowed(&text, &stmt, &touches, ctx)?;
            let readonly = stmt.readonly();
            self.captured(&text, readonly, || {
                self.step(None, ctx, || {
                    let mut rows = stmt.raw_query();
                    while rows.next().map_err(SqlError::from)?.is_some() {}
                    Ok(())
                })
                .map_err(ExecError::from)
            })?;
        }
    }

    /// Describes a statement without running it. With per-table rights,
    /// the caller must be able to read every table it touches (its columns
    /// and parameters are what describe reveals).
    pub fn describe(&self, sql: &str, ctx: &ExecCtx) -> Result<DescribeResult, SqlError> {
        let (stmt, touches) = self.prepare(sql)?;
        if ctx.access.tables().is_some() {
            let refusal = |touches: &Touches| {
                touches
                    .writes
                    .iter()
                    .chain(&touches.reads)
                    .find_map(|t| super::conn::Touch::Read(t).refusal(&ctx.access))
            };
            let mut reason = refusal(&touches);
            if reason.is_some() {
                reason = refusal(&*self.relearn(sql)?);
            }
            if let Some(reason) = reason {
                return Err(SqlError::new(
                    "SQLITE_AUTH",
                    format!("SQLite error: not authorized: {reason}"),
                ));
            }
        }
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

/// The caller's rights against what a statement touches, checked on every
/// execution (a cached statement skips the authorizer, see `db::conn`).
fn check_rights(access: &Access, touches: &Touches, readonly: bool) -> Result<(), SqlError> {
    let refuse = |reason: &str| {
        Err(SqlError::new(
            "SQLITE_AUTH",
            format!("SQLite error: not authorized: {reason}"),
        ))
    };
    const READ_ONLY: &str = "this token is read-only and the statement writes";
    match access {
        Access::ReadWrite => Ok(()),
        Access::ReadOnly if readonly => Ok(()),
        Access::ReadOnly => refuse(READ_ONLY),
        Access::Tables(rights) => {
            if let Some(reason) = touches.refusal(access) {
                return refuse(&reason);
            }
            if readonly {
                Ok(())
            } else if rights.is_read_only() {
                refuse(READ_ONLY)
            } else if touches.writes.is_empty() && !touches.schema && !touches.transaction {
                refuse(
                    "the statement writes outside any table (PRAGMA, VACUUM, sqlite_* tables), \
                     which needs a token without per-table rights (no \"t\" claim)",
                )
            } else {
                Ok(())
            }
        }
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

#[cfg(test)]
mod permission_tests {
    use super::*;
    use crate::config::DbConfig;
    use crate::db::conn::{self, Role};

    struct Db {
        _dir: tempfile::TempDir,
        conn: Connection,
        guard: Arc<Guard>,
    }

    fn open(statement_cache: usize) -> Db {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DbConfig {
            statement_cache,
            ..DbConfig::default()
        };
        let (conn, guard) = conn::open(&dir.path().join("t.db"), Role::Writer, &cfg).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE tasks (id INTEGER PRIMARY KEY, project REFERENCES projects(id) ON DELETE CASCADE, title TEXT);
             CREATE TABLE secrets (id INTEGER PRIMARY KEY, s TEXT);
             INSERT INTO projects VALUES (1, 'p');
             INSERT INTO secrets VALUES (1, 'hidden');",
        )
        .unwrap();
        Db {
            _dir: dir,
            conn,
            guard,
        }
    }

    fn tables(specs: &str) -> Access {
        let specs: Vec<String> = specs.split(',').map(str::to_string).collect();
        crate::auth::parse_tables(false, &specs).unwrap()
    }

    impl Db {
        fn session(&self) -> Session<'_> {
            Session {
                conn: &self.conn,
                guard: &self.guard,
                role: Role::Writer,
                grouped: false,
                capture: None,
            }
        }

        fn ctx(access: &Access) -> ExecCtx {
            ExecCtx {
                access: access.clone(),
                max_rows: 1000,
                max_bytes: 1 << 20,
                timeout: std::time::Duration::from_secs(10),
            }
        }

        fn run(&self, access: &Access, item: WorkItem) -> Result<WorkOutput, String> {
            self.session()
                .run(&item, &Self::ctx(access))
                .map_err(|e| match e {
                    ExecError::Sql(e) => {
                        assert_eq!(e.code, "SQLITE_AUTH", "{}", e.message);
                        e.message
                    }
                    ExecError::NeedsWriter => "needs writer".into(),
                })
        }

        fn exec(&self, access: &Access, sql: &str) -> Result<(), String> {
            self.run(access, WorkItem::Execute(Stmt::new(sql, true)))
                .map(drop)
        }
    }

    #[test]
    fn reads_and_writes_per_table() {
        let db = open(16);
        let t = tables("tasks:rw,projects:r");
        db.exec(&t, "INSERT INTO tasks (project, title) VALUES (1, 'a')")
            .unwrap();
        db.exec(
            &t,
            "SELECT * FROM tasks JOIN projects ON projects.id = tasks.project",
        )
        .unwrap();
        let err = db.exec(&t, "UPDATE projects SET name = 'x'").unwrap_err();
        assert_eq!(
            err,
            "SQLite error: not authorized: this token may not write table \"projects\""
        );
        let err = db.exec(&t, "SELECT count(*) FROM secrets").unwrap_err();
        assert!(err.ends_with("may not read table \"secrets\""), "{err}");
        // A foreign-key cascade writes the child table.
        let p = tables("projects:rw");
        let err = db
            .exec(&p, "DELETE FROM projects WHERE id = 1")
            .unwrap_err();
        assert!(err.contains("may not write table \"tasks\""), "{err}");
        // Schema tables stay readable, other sqlite_* writes need full rights.
        db.exec(&t, "SELECT name FROM sqlite_schema").unwrap();
        let err = db.exec(&t, "PRAGMA user_version = 7").unwrap_err();
        assert!(err.contains("writes outside any table"), "{err}");
        let err = db.exec(&t, "CREATE TABLE x (a)").unwrap_err();
        assert!(err.contains("changes the schema"), "{err}");
        // Transactions are for everyone.
        db.exec(&t, "BEGIN IMMEDIATE").unwrap();
        db.exec(&t, "INSERT INTO tasks (project, title) VALUES (1, 'b')")
            .unwrap();
        db.exec(&t, "COMMIT").unwrap();
        // Read-only cap: every write refused, reads allowed.
        let ro = crate::auth::parse_tables(true, &["tasks:rw".into()]).unwrap();
        db.exec(&ro, "SELECT * FROM tasks").unwrap();
        let err = db.exec(&ro, "DELETE FROM tasks").unwrap_err();
        assert!(err.contains("read-only"), "{err}");
        let err = db.exec(&ro, "BEGIN IMMEDIATE").unwrap_err();
        assert!(err.contains("read-only"), "{err}");
    }

    #[test]
    fn triggers_and_views_count() {
        let db = open(16);
        db.exec(
            &Access::ReadWrite,
            "CREATE TRIGGER leak AFTER INSERT ON tasks BEGIN INSERT INTO secrets (s) VALUES (new.title); END",
        )
        .unwrap();
        db.exec(
            &Access::ReadWrite,
            "CREATE VIEW open_secrets AS SELECT s FROM secrets",
        )
        .unwrap();
        let t = tables("tasks:rw,projects:r,open_secrets:r");
        let err = db
            .exec(&t, "INSERT INTO tasks (project, title) VALUES (1, 'a')")
            .unwrap_err();
        assert!(err.contains("may not write table \"secrets\""), "{err}");
        let err = db.exec(&t, "SELECT * FROM open_secrets").unwrap_err();
        assert!(err.contains("may not read table \"secrets\""), "{err}");
        let all = tables("tasks:rw,projects:r,secrets:rw,open_secrets:r");
        db.exec(&all, "INSERT INTO tasks (project, title) VALUES (1, 'a')")
            .unwrap();
        db.exec(&all, "SELECT * FROM open_secrets").unwrap();
    }

    #[test]
    fn the_statement_cache_does_not_carry_rights() {
        let db = open(16);
        let t = tables("tasks:rw");
        let sql = "SELECT * FROM secrets";
        db.exec(&Access::ReadWrite, sql).unwrap();
        assert!(db.exec(&t, sql).is_err(), "cached after a full token");
        db.exec(&Access::ReadWrite, sql).unwrap();
        let insert = "INSERT INTO secrets (s) VALUES ('x')";
        assert!(db.exec(&t, insert).is_err());
        db.exec(&Access::ReadWrite, insert).unwrap();
        assert!(db.exec(&t, insert).is_err());

        // Compiled (and cached) first by internal code: learnt anyway.
        let internal = "SELECT s FROM secrets WHERE id = 1";
        db.guard.internal(|| {
            db.conn
                .prepare_cached(internal)
                .unwrap()
                .raw_query()
                .next()
                .unwrap();
        });
        assert!(db.exec(&t, internal).is_err());

        // A tiny cache: statements evicted and compiled again stay checked.
        let db = open(1);
        for _ in 0..3 {
            for sql in ["SELECT * FROM tasks", "SELECT * FROM secrets", insert] {
                let allowed = sql == "SELECT * FROM tasks";
                assert_eq!(db.exec(&t, sql).is_ok(), allowed, "{sql}");
                db.exec(&Access::ReadWrite, sql).unwrap();
            }
        }
    }

    #[test]
    fn a_schema_change_under_a_cached_statement_is_checked() {
        let db = open(16);
        let t = tables("tasks:rw,projects:r");
        let first = "INSERT INTO tasks (project, title) VALUES (1, 'a')";
        let second = "INSERT INTO tasks (project, title) VALUES (1, 'b')";
        db.exec(&t, first).unwrap();
        db.exec(&t, second).unwrap();
        // The cached statements now fire a trigger writing another table.
        db.exec(
            &Access::ReadWrite,
            "CREATE TRIGGER leak AFTER INSERT ON tasks BEGIN INSERT INTO secrets (s) VALUES (new.title); END",
        )
        .unwrap();
        // Recompiled while the restricted token runs it: refused then.
        let err = db.exec(&t, first).unwrap_err();
        assert!(err.contains("may not write table \"secrets\""), "{err}");
        db.exec(&Access::ReadWrite, first).unwrap();
        let err = db.exec(&t, first).unwrap_err();
        assert!(err.contains("may not write table \"secrets\""), "{err}");
        // Recompiled while a full token runs it: what it touches now is
        // remembered, and the restricted token is refused before it runs.
        db.exec(&Access::ReadWrite, second).unwrap();
        let err = db.exec(&t, second).unwrap_err();
        assert!(err.contains("may not write table \"secrets\""), "{err}");
        let secrets = |db: &Db| -> i64 {
            db.conn
                .query_row("SELECT count(*) FROM secrets", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(
            secrets(&db),
            3,
            "only the full token's inserts fired the trigger"
        );
        // Without the trigger, the statements are allowed again.
        db.exec(&Access::ReadWrite, "DROP TRIGGER leak").unwrap();
        db.exec(&t, first).unwrap();
        db.exec(&t, second).unwrap();
        assert_eq!(secrets(&db), 3);

        // The same through another connection (as the writer's changes
        // reach the readers).
        let other = Connection::open(db.conn.path().unwrap()).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER leak2 AFTER INSERT ON tasks BEGIN DELETE FROM secrets; END",
            )
            .unwrap();
        let err = db.exec(&t, first).unwrap_err();
        assert!(err.contains("may not write table \"secrets\""), "{err}");
        db.exec(&Access::ReadWrite, second).unwrap();
        assert_eq!(secrets(&db), 0);
        let err = db.exec(&t, second).unwrap_err();
        assert!(err.contains("may not write table \"secrets\""), "{err}");
        other.execute_batch("DROP TRIGGER leak2").unwrap();
        db.exec(&t, second).unwrap();
        db.exec(&t, first).unwrap();

        let view = "SELECT * FROM tasks";
        db.exec(&t, view).unwrap();
        other
            .execute_batch("DROP TABLE tasks; CREATE VIEW tasks AS SELECT s AS title FROM secrets")
            .unwrap();
        let err = db.exec(&t, view).unwrap_err();
        assert!(err.contains("may not read table \"secrets\""), "{err}");
    }

    #[test]
    fn sequences_batches_and_describe_check_every_statement() {
        let db = open(16);
        let t = tables("tasks:rw,projects:r");
        let err = db
            .run(
                &t,
                WorkItem::Sequence(
                    "INSERT INTO tasks (project, title) VALUES (1, 'a'); DELETE FROM secrets;"
                        .into(),
                ),
            )
            .unwrap_err();
        assert!(err.contains("may not write table \"secrets\""), "{err}");
        let n: i64 = db
            .conn
            .query_row("SELECT count(*) FROM secrets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);

        let batch: Batch = serde_json::from_value(serde_json::json!({"steps": [
            {"stmt": {"sql": "SELECT * FROM tasks"}},
            {"stmt": {"sql": "SELECT * FROM secrets"}},
        ]}))
        .unwrap();
        let WorkOutput::Batch(result) = db.run(&t, WorkItem::Batch(batch)).unwrap() else {
            panic!("not a batch result");
        };
        assert!(result.step_results[0].is_some());
        let error = result.step_errors[1].as_ref().expect("step 1 refused");
        assert_eq!(error.code, "SQLITE_AUTH");

        assert!(db
            .run(&t, WorkItem::Describe("SELECT * FROM tasks".into()))
            .is_ok());
        let err = db
            .run(&t, WorkItem::Describe("SELECT * FROM secrets".into()))
            .unwrap_err();
        assert!(err.contains("may not read table \"secrets\""), "{err}");
    }
}
