// outpost-specific: the SQL authorizer (DESIGN.md "Auth"): whatever the token, statements from
// clients are denied ATTACH, load_extension(), PRAGMA writable_schema, and any access to tables
// named `_outpost_*` (outpost's own bookkeeping, e.g. `_outpost_meta`). Driven through
// @libsql/client over http:// and ws://. No upstream counterpart.
//
// A SQLite authorizer denial is SQLITE_AUTH ("not authorized"), which sqld reports with the Hrana
// error code "SQLITE_AUTH" (libsql-server/src/hrana/stmt.rs, sqlite_error_code()). Every denial is checked
// through every path a statement can take: execute(), batch(), an interactive transaction, and
// executeMultiple() (a Hrana `sequence`, which must not bypass the authorizer).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { assertLibsqlError, clientForTransport, freshDataDir, startServer, TRANSPORTS } from "./helpers.mjs";

const T = { timeout: 30_000 };

/**
 * The statement must be refused as a denial: a LibsqlError with sqld's code for an authorizer
 * denial (SQLITE_AUTH), or at least a message that says so. Errors that would mean nothing was
 * protected ("no such table", syntax errors) do not count.
 */
async function assertDenied(promise) {
    const e = await assertLibsqlError(promise);
    assert.doesNotMatch(e.message, /no such (table|column)|syntax error|parse/i, `${e.code}: ${e.message}`);
    assert.ok(
        e.code === "SQLITE_AUTH" || /not authori[sz]ed|denied|forbidden|not allowed|prohibited/i.test(e.message),
        `expected an authorization denial (SQLITE_AUTH), got ${e.code}: ${e.message}`,
    );
    return e;
}

describe("SQL authorizer", { timeout: 300_000 }, () => {
    let server;
    let attachTarget;
    let metaCol; // a real column of _outpost_meta, so UPDATE/CREATE INDEX fail only by denial

    before(async () => {
        server = await startServer();
        attachTarget = `${freshDataDir("outpost-attach-")}/other.db`;
        const c = clientForTransport(server, "http");
        try {
            await c.batch(
                ["DROP TABLE IF EXISTS items", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"],
                "write",
            );
            // _outpost_meta must exist for the access checks below to mean anything.
            const rs = await c.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_outpost_meta'",
            );
            assert.equal(rs.rows[0][0], 1, "outpost must have created its _outpost_meta table");
            const ddl = await c.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '_outpost_meta'");
            const m = /\(\s*["`\[]?([A-Za-z_][A-Za-z0-9_]*)/.exec(String(ddl.rows[0][0]));
            assert.ok(m, `cannot find a column in ${ddl.rows[0][0]}`);
            metaCol = m[1];
            await c.batch(["DROP TABLE IF EXISTS victim", "CREATE TABLE victim (x)"], "write");
        } finally {
            c.close();
        }
    });

    after(async () => {
        await server?.stop();
    });

    const deniedStatements = [
        // _outpost_* tables, whatever the spelling
        ["SELECT from _outpost_meta", "SELECT * FROM _outpost_meta"],
        ["SELECT from _OUTPOST_META (names are case-insensitive)", "SELECT * FROM _OUTPOST_META"],
        ["SELECT from \"_outpost_meta\" (quoted)", 'SELECT * FROM "_outpost_meta"'],
        ["SELECT from main._outpost_meta", "SELECT * FROM main._outpost_meta"],
        ["SELECT count from _outpost_meta", "SELECT COUNT(*) FROM _outpost_meta"],
        ["subquery on _outpost_meta", "SELECT (SELECT COUNT(*) FROM _outpost_meta) AS n"],
        ["INSERT INTO _outpost_meta", "INSERT INTO _outpost_meta DEFAULT VALUES"],
        ["UPDATE _outpost_meta", () => `UPDATE _outpost_meta SET ${metaCol} = ${metaCol}`],
        ["DELETE FROM _outpost_meta", "DELETE FROM _outpost_meta"],
        ["DROP TABLE _outpost_meta", "DROP TABLE _outpost_meta"],
        ["ALTER TABLE _outpost_meta", "ALTER TABLE _outpost_meta RENAME TO stolen_meta"],
        ["ALTER TABLE ... RENAME TO _outpost_x", "ALTER TABLE victim RENAME TO _outpost_victim"],
        ["CREATE TABLE _outpost_evil", "CREATE TABLE _outpost_evil (x)"],
        ["CREATE INDEX on _outpost_meta", () => `CREATE INDEX evil_idx ON _outpost_meta (${metaCol})`],
        ["CREATE TRIGGER on _outpost_meta", "CREATE TRIGGER evil_trg AFTER INSERT ON _outpost_meta BEGIN SELECT 1; END"],
        // ATTACH
        ["ATTACH ':memory:'", "ATTACH DATABASE ':memory:' AS other"],
        ["ATTACH a file", () => `ATTACH DATABASE '${attachTarget}' AS other`],
        // load_extension
        ["load_extension()", "SELECT load_extension('/nonexistent/evil.so')"],
        ["load_extension() with entry point", "SELECT load_extension('/nonexistent/evil.so', 'sqlite3_evil_init')"],
        // writable_schema
        ["PRAGMA writable_schema = ON", "PRAGMA writable_schema = ON"],
        ["PRAGMA writable_schema = 1", "PRAGMA writable_schema = 1"],
        ["PRAGMA main.writable_schema = ON", "PRAGMA main.writable_schema = ON"],
        ["PRAGMA writable_schema (read)", "PRAGMA writable_schema"],
    ];

    const sqlOf = (sql) => (typeof sql === "function" ? sql() : sql);

    for (const transport of TRANSPORTS) {
        describe(`over ${transport}`, () => {
            for (const [name, sql0] of deniedStatements) {
                test(`${name} is denied`, T, async () => {
                    const sql = sqlOf(sql0);
                    const c = clientForTransport(server, transport);
                    try {
                        await assertDenied(c.execute(sql));
                        await assertDenied(c.batch(["SELECT 1", sql], "write"));
                        await assertDenied(c.batch([sql], "deferred"));
                        await assertDenied(c.executeMultiple(`SELECT 1; ${sql};`));
                        const txn = await c.transaction("write");
                        try {
                            await assertDenied(txn.execute(sql));
                        } finally {
                            txn.close();
                        }
                        // the client is still usable afterwards
                        const rs = await c.execute("SELECT 1");
                        assert.equal(rs.rows[0][0], 1);
                    } finally {
                        c.close();
                    }
                });
            }

            test("a view over _outpost_meta cannot be used to read it", T, async () => {
                const c = clientForTransport(server, transport);
                try {
                    let created = true;
                    try {
                        await c.execute("CREATE VIEW IF NOT EXISTS peek AS SELECT * FROM _outpost_meta");
                    } catch (e) {
                        created = false;
                        await assertDenied(Promise.reject(e));
                    }
                    if (created) {
                        await assertDenied(c.execute("SELECT * FROM peek"));
                        await c.execute("DROP VIEW peek");
                    }
                } finally {
                    c.close();
                }
            });

            test("a trigger cannot be used to write _outpost_meta", T, async () => {
                const c = clientForTransport(server, transport);
                try {
                    let created = true;
                    try {
                        await c.execute(
                            "CREATE TRIGGER IF NOT EXISTS sneaky AFTER INSERT ON items " +
                                "BEGIN DELETE FROM _outpost_meta; END",
                        );
                    } catch (e) {
                        created = false;
                        await assertDenied(Promise.reject(e));
                    }
                    if (created) {
                        await assertDenied(c.execute("INSERT INTO items (name) VALUES ('x')"));
                        await c.execute("DROP TRIGGER sneaky");
                    }
                    const rs = await c.execute("SELECT COUNT(*) FROM items WHERE name = 'x'");
                    assert.equal(rs.rows[0][0], 0);
                } finally {
                    c.close();
                }
            });

            test("ordinary statements on user tables are allowed", T, async () => {
                const c = clientForTransport(server, transport);
                try {
                    const ins = await c.execute({ sql: "INSERT INTO items (name) VALUES (?)", args: [`ok ${transport}`] });
                    assert.equal(ins.rowsAffected, 1);
                    const rs = await c.execute({ sql: "SELECT name FROM items WHERE id = ?", args: [ins.lastInsertRowid] });
                    assert.deepStrictEqual(Array.from(rs.rows[0]), [`ok ${transport}`]);
                    // names that merely contain "outpost" are fine
                    await c.execute("CREATE TABLE IF NOT EXISTS my_outpost_notes (x)");
                    await c.execute("CREATE TABLE IF NOT EXISTS outpost_meta (x)");
                    await c.execute("INSERT INTO outpost_meta VALUES (1)");
                    // reading the schema is allowed
                    await c.execute("SELECT name FROM sqlite_master");
                    // other pragmas are allowed
                    await c.execute("PRAGMA table_info(items)");
                    await c.execute("PRAGMA foreign_keys");
                } finally {
                    c.close();
                }
            });
        });
    }

    test("after all the refusals the server is healthy and nothing leaked", T, async () => {
        const c = clientForTransport(server, "http");
        try {
            const rs = await c.execute(
                "SELECT name FROM sqlite_master WHERE name IN " +
                    "('_outpost_evil', '_outpost_victim', 'stolen_meta', 'evil_idx', 'evil_trg', 'peek', 'sneaky') ORDER BY name",
            );
            assert.deepStrictEqual(rs.rows.map((r) => r[0]), []);
            const meta = await c.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_outpost_meta'",
            );
            assert.equal(meta.rows[0][0], 1);
            const dbs = await c.execute("PRAGMA database_list");
            assert.deepStrictEqual(
                dbs.rows.map((r) => r.name).filter((n) => n !== "temp"),
                ["main"],
                "no database may stay attached",
            );
        } finally {
            c.close();
        }
        const health = await fetch(server.admin + "/health");
        assert.equal(health.status, 200);
        await health.arrayBuffer();
    });
});
