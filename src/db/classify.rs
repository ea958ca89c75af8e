//! Routing by the first keywords of a statement, without parsing it.
//!
//! The keywords only pick a *route*: reads (and deferred transactions,
//! which start as reads) go to a reader thread, writes to the writer,
//! writes mixed with transaction control run alone on the writer.
//! Correctness never rests on it: a reader re-checks
//! `sqlite3_stmt_readonly` after preparing and hands anything that would
//! write over to the writer.

/// What a statement needs, judged from its first keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StmtKind {
    /// SELECT, VALUES, EXPLAIN.
    Read,
    /// WITH, PRAGMA: may read or write; a reader checks.
    Maybe,
    /// BEGIN, BEGIN DEFERRED: a transaction that reads until it first writes.
    BeginRead,
    /// COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE.
    TxnControl,
    /// INSERT, UPDATE, DELETE, DDL, ...
    Write,
    /// BEGIN IMMEDIATE/EXCLUSIVE, VACUUM: the writer, outside any group.
    WriteSolo,
}

/// Where a unit of work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A reader thread (which hands writes over to the writer).
    Reader,
    /// The writer, possibly sharing a group commit with other jobs.
    WriterGroup,
    /// The writer, alone: the job controls transactions itself.
    WriterSolo,
}

impl StmtKind {
    pub fn of(sql: &str) -> StmtKind {
        let (word, rest) = next_keyword(sql);
        let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
        if is(word, "SELECT") || is(word, "VALUES") || is(word, "EXPLAIN") {
            StmtKind::Read
        } else if is(word, "WITH") || is(word, "PRAGMA") {
            StmtKind::Maybe
        } else if is(word, "BEGIN") {
            let (mode, _) = next_keyword(rest);
            if is(mode, "IMMEDIATE") || is(mode, "EXCLUSIVE") {
                StmtKind::WriteSolo
            } else {
                StmtKind::BeginRead
            }
        } else if ["COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"]
            .iter()
            .any(|k| is(word, k))
        {
            StmtKind::TxnControl
        } else if is(word, "VACUUM") {
            StmtKind::WriteSolo
        } else {
            StmtKind::Write
        }
    }

    fn writes(self) -> bool {
        matches!(self, StmtKind::Write | StmtKind::WriteSolo)
    }

    fn controls_txn(self) -> bool {
        matches!(
            self,
            StmtKind::BeginRead | StmtKind::TxnControl | StmtKind::WriteSolo
        )
    }
}

/// The route of statements run as one unit (a statement or a batch).
pub fn route(kinds: impl IntoIterator<Item = StmtKind>) -> Route {
    let (mut writes, mut controls_txn) = (false, false);
    for kind in kinds {
        writes |= kind.writes();
        controls_txn |= kind.controls_txn();
    }
    match (writes, controls_txn) {
        (false, _) => Route::Reader,
        (true, false) => Route::WriterGroup,
        (true, true) => Route::WriterSolo,
    }
}

/// Where a statement stands for change capture (see `db::capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapturePoint {
    /// COMMIT, END, RELEASE: encode pending changes before it runs.
    Commit,
    /// ROLLBACK (TO): documents written before it may be undone.
    Rollback,
    /// BEGIN, SAVEPOINT: nothing to do.
    Begin,
    /// VACUUM, PRAGMA: cannot run inside a transaction, change no rows.
    Unwrappable,
    /// Anything else: in autocommit mode it gets a transaction of its own,
    /// so that its changes are encoded before they commit.
    Statement,
}

impl CapturePoint {
    pub fn of(sql: &str) -> CapturePoint {
        let word = first_keyword(sql);
        let is = |k: &str| word.eq_ignore_ascii_case(k);
        if is("COMMIT") || is("END") || is("RELEASE") {
            CapturePoint::Commit
        } else if is("ROLLBACK") {
            CapturePoint::Rollback
        } else if is("BEGIN") || is("SAVEPOINT") {
            CapturePoint::Begin
        } else if is("VACUUM") || is("PRAGMA") {
            CapturePoint::Unwrappable
        } else {
            CapturePoint::Statement
        }
    }
}

/// The first word of `sql`, skipping whitespace and `--`/`/* */` comments.
pub fn first_keyword(sql: &str) -> &str {
    next_keyword(sql).0
}

/// The first word of `sql` and what follows it.
fn next_keyword(sql: &str) -> (&str, &str) {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, tail)| tail);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, tail)| tail);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    rest.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_after_comments() {
        assert_eq!(first_keyword("  -- hi\n /* x */ select 1"), "select");
        assert_eq!(first_keyword("/* unterminated"), "");
        assert_eq!(first_keyword(""), "");
        assert_eq!(first_keyword("BEGIN;"), "BEGIN");
    }

    #[test]
    fn kinds() {
        use StmtKind::*;
        assert_eq!(StmtKind::of("select 1"), Read);
        assert_eq!(StmtKind::of("WITH x AS (SELECT 1) SELECT * FROM x"), Maybe);
        assert_eq!(StmtKind::of("insert into t values (1)"), Write);
        assert_eq!(StmtKind::of("begin"), BeginRead);
        assert_eq!(StmtKind::of("BEGIN TRANSACTION READONLY"), BeginRead);
        assert_eq!(StmtKind::of("begin /* x */ immediate"), WriteSolo);
        assert_eq!(StmtKind::of("END"), TxnControl);
        assert_eq!(StmtKind::of("vacuum"), WriteSolo);
        assert_eq!(StmtKind::of("nonsense"), Write);
    }

    #[test]
    fn capture_points() {
        use CapturePoint::*;
        assert_eq!(CapturePoint::of("commit"), Commit);
        assert_eq!(CapturePoint::of("END TRANSACTION"), Commit);
        assert_eq!(CapturePoint::of("release sp"), Commit);
        assert_eq!(CapturePoint::of("ROLLBACK TO sp"), Rollback);
        assert_eq!(CapturePoint::of("savepoint a"), Begin);
        assert_eq!(CapturePoint::of("pragma foreign_keys = off"), Unwrappable);
        assert_eq!(
            CapturePoint::of("/* c */ insert into t values (1)"),
            Statement
        );
    }

    #[test]
    fn routes() {
        use StmtKind::*;
        assert_eq!(route([Read, Maybe]), Route::Reader);
        assert_eq!(route([BeginRead, Read, TxnControl]), Route::Reader);
        assert_eq!(route([Write, Read]), Route::WriterGroup);
        assert_eq!(route([BeginRead, Write, TxnControl]), Route::WriterSolo);
        assert_eq!(route([WriteSolo]), Route::WriterSolo);
        assert_eq!(route([TxnControl]), Route::Reader);
    }
}
