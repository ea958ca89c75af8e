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
import { readdirSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { createClient } from "@libsql/client";

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
        // The checks on _outpost_meta only mean something if the table is there: a statement on a
        // missing table fails with "no such table" whatever the authorizer does (and assertDenied
        // does not accept that answer). If this outpost version does not create _outpost_meta
        // itself, seed one into the (stopped) node's database file, as outpost's own bookkeeping
        // would be, then start the server on it.
        const dataDir = freshDataDir("outpost-authz-");
        const first = await startServer({ dataDir });
        let exists;
        const c0 = clientForTransport(first, "http");
        try {
            const rs = await c0.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_outpost_meta'");
            exists = rs.rows[0][0] === 1;
        } finally {
            c0.close();
            await first.stop();
        }
        if (!exists) {
            const dbFiles = readdirSync(dataDir).filter((f) => f.endsWith(".db"));
            assert.equal(dbFiles.length, 1, `expected one database file in ${dataDir}, found ${JSON.stringify(dbFiles)}`);
            const local = createClient({ url: `file:${path.join(dataDir, dbFiles[0])}` });
            try {
                await local.execute("CREATE TABLE _outpost_meta (k TEXT PRIMARY KEY, v)");
                await local.execute("INSERT INTO _outpost_meta VALUES ('seeded_by', 'security.test.mjs')");
            } finally {
                local.close();
            }
        }

        server = await startServer({ dataDir });
        attachTarget = `${freshDataDir("outpost-attach-")}/other.db`;
        const c = clientForTransport(server, "http");
        try {
            await c.batch(
                ["DROP TABLE IF EXISTS items", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"],
                "write",
            );
            const ddl = await c.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '_outpost_meta'");
            assert.equal(ddl.rows.length, 1, "_outpost_meta must exist");
            // a real column of _outpost_meta, so UPDATE / CREATE INDEX can fail only by denial
            const m = /\(\s*["`\[]?([A-Za-z_][A-Za-z0-9_]*)/.exec(String(ddl.rows[0][0]));
            assert.ok(m, `cannot find a column in ${ddl.rows[0][0]}`);
            metaCol = m[1];
            for (const t of TRANSPORTS) {
                await c.execute(`CREATE TABLE IF NOT EXISTS victim_${t.replace(/-/g, "_")} (x)`);
            }
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
        ["ALTER TABLE ... RENAME TO _outpost_x", (t) => `ALTER TABLE victim_${t.replace(/-/g, "_")} RENAME TO _outpost_victim_${t.replace(/-/g, "_")}`],
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

    const sqlOf = (sql, transport) => (typeof sql === "function" ? sql(transport) : sql);

    for (const transport of TRANSPORTS) {
        describe(`over ${transport}`, () => {
            for (const [name, sql0] of deniedStatements) {
                test(`${name} is denied`, T, async () => {
                    const sql = sqlOf(sql0, transport);
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
                    }
                } finally {
                    await c.execute("DROP VIEW IF EXISTS peek").catch(() => undefined);
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
                    }
                    const rs = await c.execute("SELECT COUNT(*) FROM items WHERE name = 'x'");
                    assert.equal(rs.rows[0][0], 0);
                } finally {
                    await c.execute("DROP TRIGGER IF EXISTS sneaky").catch(() => undefined);
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
                    "('_outpost_evil', 'stolen_meta', 'evil_idx', 'evil_trg', 'peek', 'sneaky') " +
                    "OR name LIKE '\\_outpost\\_victim%' ESCAPE '\\' ORDER BY name",
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
