// outpost-specific: many clients writing at once. No upstream counterpart (upstream's closest test,
// "statements are executed in a transaction", runs 100 concurrent batches on one client and is
// ported in client.suite.mjs).
//
// The server serializes writers itself (DESIGN.md: one writer, group commit), so clients never see
// SQLITE_BUSY / SQLITE_LOCKED or any other error, whatever the concurrency, and every acknowledged
// write is there afterwards.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { clientForTransport, startServer, TRANSPORTS, withDeadline } from "./helpers.mjs";

const CLIENTS = 32;
const ROWS_PER_CLIENT = 50;

describe("concurrent clients", { timeout: 600_000 }, () => {
    let server;

    before(async () => {
        server = await startServer();
    });

    after(async () => {
        await server?.stop();
    });

    for (const transport of TRANSPORTS) {
        const table = `conc_${transport.replace(/-/g, "_")}`;

        test(`${CLIENTS} clients x ${ROWS_PER_CLIENT} rows over ${transport}: all rows, no error`, { timeout: 180_000 }, async () => {
            const setup = clientForTransport(server, transport);
            try {
                await setup.batch(
                    [
                        `DROP TABLE IF EXISTS ${table}`,
                        `CREATE TABLE ${table} (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, seq INTEGER NOT NULL, v TEXT NOT NULL, UNIQUE (client, seq))`,
                    ],
                    "write",
                );
            } finally {
                setup.close();
            }

            const clients = Array.from({ length: CLIENTS }, () => clientForTransport(server, transport));
            const errors = [];
            try {
                await Promise.all(
                    clients.map(async (c, ci) => {
                        for (let seq = 0; seq < ROWS_PER_CLIENT; ++seq) {
                            try {
                                const rs = await c.execute({
                                    sql: `INSERT INTO ${table} (client, seq, v) VALUES (?, ?, ?)`,
                                    args: [ci, seq, `client ${ci} row ${seq} ${"x".repeat(32)}`],
                                });
                                assert.equal(rs.rowsAffected, 1);
                                assert.notEqual(rs.lastInsertRowid, undefined);
                            } catch (e) {
                                errors.push(`client ${ci} row ${seq}: ${e.code ?? ""} ${e.message}`);
                            }
                        }
                    }),
                );
            } finally {
                for (const c of clients) {
                    c.close();
                }
            }
            assert.deepStrictEqual(errors.slice(0, 20), [], `${errors.length} writes failed`);

            const check = clientForTransport(server, transport);
            try {
                const total = await check.execute(`SELECT COUNT(*), COUNT(DISTINCT id) FROM ${table}`);
                assert.deepStrictEqual(Array.from(total.rows[0]), [CLIENTS * ROWS_PER_CLIENT, CLIENTS * ROWS_PER_CLIENT]);
                const per = await check.execute(
                    `SELECT client, COUNT(*), MIN(seq), MAX(seq) FROM ${table} GROUP BY client ORDER BY client`,
                );
                assert.equal(per.rows.length, CLIENTS);
                for (let ci = 0; ci < CLIENTS; ++ci) {
                    assert.deepStrictEqual(Array.from(per.rows[ci]), [ci, ROWS_PER_CLIENT, 0, ROWS_PER_CLIENT - 1]);
                }
            } finally {
                check.close();
            }
        });

        test(`concurrent write transactions over ${transport} are serializable, no SQLITE_BUSY`, { timeout: 180_000 }, async () => {
            // Read-modify-write of one counter from many interactive transactions at once: with
            // "write" transactions (BEGIN IMMEDIATE) every increment must survive.
            const N = 16;
            const setup = clientForTransport(server, transport);
            try {
                await setup.batch(
                    [
                        `DROP TABLE IF EXISTS ${table}_ctr`,
                        `CREATE TABLE ${table}_ctr (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)`,
                        `INSERT INTO ${table}_ctr VALUES (1, 0)`,
                    ],
                    "write",
                );
            } finally {
                setup.close();
            }
            const clients = Array.from({ length: N }, () => clientForTransport(server, transport));
            const errors = [];
            try {
                await Promise.all(
                    clients.map(async (c, ci) => {
                        let txn;
                        try {
                            txn = await c.transaction("write");
                            const rs = await txn.execute(`SELECT n FROM ${table}_ctr WHERE id = 1`);
                            const n = rs.rows[0][0];
                            // give the other transactions a chance to interleave
                            await new Promise((r) => setTimeout(r, 5));
                            await txn.execute({ sql: `UPDATE ${table}_ctr SET n = ? WHERE id = 1`, args: [n + 1] });
                            await txn.commit();
                        } catch (e) {
                            errors.push(`client ${ci}: ${e.code ?? ""} ${e.message}`);
                        } finally {
                            txn?.close();
                        }
                    }),
                );
            } finally {
                for (const c of clients) {
                    c.close();
                }
            }
            assert.deepStrictEqual(errors, []);
            const check = clientForTransport(server, transport);
            try {
                const rs = await check.execute(`SELECT n FROM ${table}_ctr WHERE id = 1`);
                assert.equal(rs.rows[0][0], N, "every increment must survive");
            } finally {
                check.close();
            }
        });

        for (const mode of ["read", "deferred"]) {
            test(`an open "${mode}" transaction that has only read does not block writers over ${transport}`, { timeout: 60_000 }, async () => {
                // SQLite in WAL mode: a reader's snapshot never blocks a writer, and a deferred
                // transaction takes the write lock only at its first write. sqld behaves the same.
                const setup = clientForTransport(server, transport);
                const reader = clientForTransport(server, transport);
                const writer = clientForTransport(server, transport);
                let txn;
                try {
                    await setup.batch(
                        [`DROP TABLE IF EXISTS ${table}_snap`, `CREATE TABLE ${table}_snap (x)`, `INSERT INTO ${table}_snap VALUES (1)`],
                        "write",
                    );
                    txn = await reader.transaction(mode);
                    const before = await txn.execute(`SELECT COUNT(*) FROM ${table}_snap`);
                    assert.equal(before.rows[0][0], 1);

                    const t0 = Date.now();
                    await withDeadline(
                        writer.execute(`INSERT INTO ${table}_snap VALUES (2)`),
                        5_000,
                        `a write while another stream holds an open ${mode} transaction`,
                    );
                    assert.ok(Date.now() - t0 < 5_000);

                    // the reader keeps its snapshot ...
                    const during = await txn.execute(`SELECT COUNT(*) FROM ${table}_snap`);
                    assert.equal(during.rows[0][0], 1, "a transaction must keep reading its snapshot");
                    await txn.commit();
                    // ... and sees the write afterwards
                    const after = await reader.execute(`SELECT COUNT(*) FROM ${table}_snap`);
                    assert.equal(after.rows[0][0], 2);
                } finally {
                    txn?.close();
                    for (const c of [setup, reader, writer]) {
                        c.close();
                    }
                }
            });
        }

        test(`concurrent batches and reads over ${transport}: readers never see a partial batch`, { timeout: 180_000 }, async () => {
            const setup = clientForTransport(server, transport);
            try {
                await setup.batch(
                    [
                        `DROP TABLE IF EXISTS ${table}_pair`,
                        `CREATE TABLE ${table}_pair (k INTEGER NOT NULL, side TEXT NOT NULL)`,
                    ],
                    "write",
                );
            } finally {
                setup.close();
            }
            const writers = Array.from({ length: 8 }, () => clientForTransport(server, transport));
            const readers = Array.from({ length: 4 }, () => clientForTransport(server, transport));
            const errors = [];
            let writing = true;
            try {
                const writeAll = Promise.all(
                    writers.map(async (c, wi) => {
                        for (let i = 0; i < 20; ++i) {
                            try {
                                await c.batch(
                                    [
                                        { sql: `INSERT INTO ${table}_pair VALUES (?, 'a')`, args: [wi * 1000 + i] },
                                        { sql: `INSERT INTO ${table}_pair VALUES (?, 'b')`, args: [wi * 1000 + i] },
                                    ],
                                    "write",
                                );
                            } catch (e) {
                                errors.push(`writer ${wi} batch ${i}: ${e.code ?? ""} ${e.message}`);
                            }
                        }
                    }),
                ).finally(() => {
                    writing = false;
                });
                const readAll = Promise.all(
                    readers.map(async (c, ri) => {
                        while (writing) {
                            try {
                                const rs = await c.execute(
                                    `SELECT COUNT(*) FROM ${table}_pair WHERE side = 'a'
                                     EXCEPT SELECT COUNT(*) FROM ${table}_pair WHERE side = 'b'`,
                                );
                                // in one statement both counts come from one snapshot: they are equal
                                assert.equal(rs.rows.length, 0, "a reader saw half of a batch");
                            } catch (e) {
                                errors.push(`reader ${ri}: ${e.code ?? ""} ${e.message}`);
                                return;
                            }
                        }
                    }),
                );
                await Promise.all([writeAll, readAll]);
            } finally {
                for (const c of [...writers, ...readers]) {
                    c.close();
                }
            }
            assert.deepStrictEqual(errors, []);
            const check = clientForTransport(server, transport);
            try {
                const rs = await check.execute(`SELECT side, COUNT(*) FROM ${table}_pair GROUP BY side ORDER BY side`);
                assert.deepStrictEqual(rs.rows.map((r) => Array.from(r)), [["a", 160], ["b", 160]]);
            } finally {
                check.close();
            }
        });
    }
});
