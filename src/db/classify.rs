//! Routing by the first keyword of a statement, without parsing it.
//!
//! The keyword only picks a *route*: reads go to a reader thread, writes to
//! the writer, transaction control runs alone on the writer. Correctness never
//! rests on it: a reader re-checks `sqlite3_stmt_readonly` after preparing and
//! hands anything that would write over to the writer.

/// What a statement needs, judged from its first keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StmtKind {
    /// SELECT, VALUES, EXPLAIN: a reader can run it.
    Read,
    /// WITH, PRAGMA: may read or write; try a reader, which checks.
    Maybe,
    /// INSERT, UPDATE, DDL, ...: the writer, and may share a group commit.
    Write,
    /// BEGIN, COMMIT, SAVEPOINT, VACUUM, ...: the writer, alone, outside any
    /// group transaction.
    Solo,
}

impl StmtKind {
    pub fn of(sql: &str) -> StmtKind {
        let word = first_keyword(sql);
        let is = |k: &str| word.eq_ignore_ascii_case(k);
        if is("SELECT") || is("VALUES") || is("EXPLAIN") {
            StmtKind::Read
        } else if is("WITH") || is("PRAGMA") {
            StmtKind::Maybe
        } else if ["BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "VACUUM"]
            .iter()
            .any(|k| is(k))
        {
            StmtKind::Solo
        } else {
            StmtKind::Write
        }
    }

    /// The kind of several statements run as one unit: the most demanding.
    pub fn combine(self, other: StmtKind) -> StmtKind {
        use StmtKind::*;
        match (self, other) {
            (Solo, _) | (_, Solo) => Solo,
            (Write, _) | (_, Write) => Write,
            (Maybe, _) | (_, Maybe) => Maybe,
            (Read, Read) => Read,
        }
    }

    pub fn fits_reader(self) -> bool {
        matches!(self, StmtKind::Read | StmtKind::Maybe)
    }
}

/// The first word of `sql`, skipping whitespace and `--`/`/* */` comments.
pub fn first_keyword(sql: &str) -> &str {
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
    &rest[..end]
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
        assert_eq!(StmtKind::of("select 1"), StmtKind::Read);
        assert_eq!(StmtKind::of("WITH x AS (SELECT 1) SELECT * FROM x"), StmtKind::Maybe);
        assert_eq!(StmtKind::of("insert into t values (1)"), StmtKind::Write);
        assert_eq!(StmtKind::of("begin immediate"), StmtKind::Solo);
        assert_eq!(StmtKind::of("END"), StmtKind::Solo);
        assert_eq!(StmtKind::of("vacuum"), StmtKind::Solo);
        assert_eq!(StmtKind::of("nonsense"), StmtKind::Write);
        assert_eq!(StmtKind::Read.combine(StmtKind::Write), StmtKind::Write);
        assert_eq!(StmtKind::Maybe.combine(StmtKind::Solo), StmtKind::Solo);
    }
}
