// Port of the official libSQL TypeScript client's own test suite:
//   tursodatabase/libsql-client-ts, packages/libsql-client/src/__tests__/client.test.ts
//   (read at commit 3c4132709fb7e2346a76e7777610edc30f2f737a)
// run against a real `outpost serve` process, once per transport (see TRANSPORTS in helpers.mjs).
//
// The tests are kept as upstream wrote them (same SQL, same expected values); Jest's `expect` is
// replaced by node:assert/strict:
//   toStrictEqual(x)              -> assert.deepStrictEqual(_, x)
//   toEqual([{...}])              -> assert.deepStrictEqual (rows are plain objects whose column
//                                    names are the only enumerable own properties)
//   rejects.toBeLibsqlError(code) -> assertLibsqlError(promise, code)
//   rejects.toBeInstanceOf(cls)   -> assertRejectsInstanceOf(promise, cls)
//
// Upstream gates some tests on the server (`SERVER` env var). Against outpost, which claims the same
// endpoints as sqld:
//   hasHrana2 = true; hasHrana3 = (negotiated protocol version >= 3), i.e. only the "ws-hrana3"
//   transport, because @libsql/client 0.18 itself speaks Hrana 2 over HTTP and over WebSocket;
//   hasNetworkErrors = false (the ".close_ws"/".close_tcp" statements exist only in upstream's
//   Python test server); isFile = false; isHttp = (transport === "http").
//
// Not ported, because they do not involve a server:
//   - describe("createClient()"): URL/config validation done inside the client;
//   - "query a single value using an in memory database" (":memory:" URL);
//   - "calls waitForLastMigrationJobToFinish ..." (a Jest module mock of Turso's migration API);
//   - "raw error codes" (file: URLs only).
// Added here (marked "outpost addition"): migrate() — which upstream has no test for — and
// assertions of the error codes sqld returns.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
    assertLibsqlError,
    assertRejectsInstanceOf,
    clientForTransport,
    expectedVersion,
    LibsqlError,
    negotiatedWsVersion,
    startServer,
    urlFor,
    withClient as withClientFor,
} from "./helpers.mjs";

/** Default per-test deadline: nothing here may hang. */
const T = { timeout: 30_000 };

export function defineClientSuite(transport) {
    describe(`@libsql/client over ${transport}`, { timeout: 600_000 }, () => {
        let server;
        const isHttp = transport === "http";
        const hasHrana2 = true;
        const hasHrana3 = expectedVersion(transport) >= 3;

        before(async () => {
            server = await startServer();
        });

        after(async () => {
            await server?.stop();
        });

        const withClient = (f, extraConfig = {}) => () =>
            withClientFor(server, transport, f, extraConfig)();

        // `(cond ? test : test.skip)` as upstream writes it
        const testIf = (cond) => (cond ? test : test.skip);
        const describeIf = (cond) => (cond ? describe : describe.skip);

        if (transport === "ws-hrana3") {
            test("server negotiates Hrana 3 over WebSocket (outpost addition)", T, async () => {
                const version = await negotiatedWsVersion(server.wsUrl, { protocolVersion: 3 });
                assert.equal(version, 3, "a hrana3 WebSocket client must get protocol version 3");
            });
        }

        describe("execute()", () => {
            test("query a single value", T, withClient(async (c) => {
                const rs = await c.execute("SELECT 42");
                assert.deepStrictEqual(rs.columns.length, 1);
                assert.deepStrictEqual(rs.columnTypes.length, 1);
                assert.deepStrictEqual(rs.rows.length, 1);
                assert.deepStrictEqual(rs.rows[0].length, 1);
                assert.deepStrictEqual(rs.rows[0][0], 42);
            }));

            test("query a single row", T, withClient(async (c) => {
                const rs = await c.execute("SELECT 1 AS one, 'two' AS two, 0.5 AS three");
                assert.deepStrictEqual(rs.columns, ["one", "two", "three"]);
                assert.deepStrictEqual(rs.columnTypes, ["", "", ""]);
                assert.deepStrictEqual(rs.rows.length, 1);

                const r = rs.rows[0];
                assert.deepStrictEqual(r.length, 3);
                assert.deepStrictEqual(Array.from(r), [1, "two", 0.5]);
                assert.deepStrictEqual(Object.entries(r), [
                    ["one", 1],
                    ["two", "two"],
                    ["three", 0.5],
                ]);
            }));

            test("query multiple rows", T, withClient(async (c) => {
                const rs = await c.execute("VALUES (1, 'one'), (2, 'two'), (3, 'three')");
                assert.deepStrictEqual(rs.columns.length, 2);
                assert.deepStrictEqual(rs.columnTypes.length, 2);
                assert.deepStrictEqual(rs.rows.length, 3);

                assert.deepStrictEqual(Array.from(rs.rows[0]), [1, "one"]);
                assert.deepStrictEqual(Array.from(rs.rows[1]), [2, "two"]);
                assert.deepStrictEqual(Array.from(rs.rows[2]), [3, "three"]);
            }));

            test("statement that produces error", T, withClient(async (c) => {
                await assertLibsqlError(c.execute("SELECT foobar"));
            }));

            test("rowsAffected with INSERT", T, withClient(async (c) => {
                await c.batch(["DROP TABLE IF EXISTS t", "CREATE TABLE t (a)"], "write");
                const rs = await c.execute("INSERT INTO t VALUES (1), (2)");
                assert.deepStrictEqual(rs.rowsAffected, 2);
            }));

            test("rowsAffected with DELETE", T, withClient(async (c) => {
                await c.batch(
                    [
                        "DROP TABLE IF EXISTS t",
                        "CREATE TABLE t (a)",
                        "INSERT INTO t VALUES (1), (2), (3), (4), (5)",
                    ],
                    "write",
                );
                const rs = await c.execute("DELETE FROM t WHERE a >= 3");
                assert.deepStrictEqual(rs.rowsAffected, 3);
            }));

            test("lastInsertRowid with INSERT", T, withClient(async (c) => {
                await c.batch(
                    [
                        "DROP TABLE IF EXISTS t",
                        "CREATE TABLE t (a)",
                        "INSERT INTO t VALUES ('one'), ('two')",
                    ],
                    "write",
                );
                const insertRs = await c.execute("INSERT INTO t VALUES ('three')");
                assert.notStrictEqual(insertRs.lastInsertRowid, undefined);
                const selectRs = await c.execute({
                    sql: "SELECT a FROM t WHERE ROWID = ?",
                    args: [insertRs.lastInsertRowid],
                });
                assert.deepStrictEqual(Array.from(selectRs.rows[0]), ["three"]);
            }));

            test("rows from INSERT RETURNING", T, withClient(async (c) => {
                await c.batch(["DROP TABLE IF EXISTS t", "CREATE TABLE t (a)"], "write");

                const rs = await c.execute("INSERT INTO t VALUES (1) RETURNING 42 AS x, 'foo' AS y");
                assert.deepStrictEqual(rs.columns, ["x", "y"]);
                assert.deepStrictEqual(rs.columnTypes, ["", ""]);
                assert.deepStrictEqual(rs.rows.length, 1);
                assert.deepStrictEqual(Array.from(rs.rows[0]), [42, "foo"]);
            }));

            testIf(hasHrana2)("rowsAffected with WITH INSERT", T, withClient(async (c) => {
                await c.batch(
                    [
                        "DROP TABLE IF EXISTS t",
                        "CREATE TABLE t (a)",
                        "INSERT INTO t VALUES (1), (2), (3)",
                    ],
                    "write",
                );

                const rs = await c.execute(`
            WITH x(a) AS (SELECT 2*a FROM t)
            INSERT INTO t SELECT a+1 FROM x
        `);
                assert.deepStrictEqual(rs.rowsAffected, 3);
            }));
        });

        describe("values", () => {
            function testRoundtrip(name, passed, expected, intMode) {
                test(name, T, withClient(async (c) => {
                    const rs = await c.execute({
                        sql: "SELECT ?",
                        args: [passed],
                    });
                    assert.deepStrictEqual(rs.rows[0][0], expected);
                }, { intMode }));
            }

            function testRoundtripError(name, passed, expectedError, intMode) {
                test(name, T, withClient(async (c) => {
                    await assertRejectsInstanceOf(
                        c.execute({
                            sql: "SELECT ?",
                            args: [passed],
                        }),
                        expectedError,
                    );
                }, { intMode }));
            }

            testRoundtrip("string", "boomerang", "boomerang");
            testRoundtrip("string with weird characters", "a\n\r\t ", "a\n\r\t ");
            testRoundtrip(
                "string with unicode",
                "žluťoučký kůň úpěl ďábelské ódy",
                "žluťoučký kůň úpěl ďábelské ódy",
            );

            describe("number", () => {
                const intModes = ["number", "bigint", "string"];
                for (const intMode of intModes) {
                    testRoundtrip(`zero (${intMode})`, 0, 0, intMode);
                    testRoundtrip(`integer (${intMode})`, -2023, -2023, intMode);
                    testRoundtrip(`float (${intMode})`, 12.345, 12.345, intMode);
                    testRoundtrip(`large positive float (${intMode})`, 1e18, 1e18, intMode);
                    testRoundtrip(`large negative float (${intMode})`, -1e18, -1e18, intMode);
                    testRoundtrip(`MAX_VALUE (${intMode})`, Number.MAX_VALUE, Number.MAX_VALUE, intMode);
                    testRoundtrip(`-MAX_VALUE (${intMode})`, -Number.MAX_VALUE, -Number.MAX_VALUE, intMode);
                    testRoundtrip(`MIN_VALUE (${intMode})`, Number.MIN_VALUE, Number.MIN_VALUE, intMode);
                }
            });

            describe("bigint", () => {
                describe("'number' int mode", () => {
                    testRoundtrip("zero integer", 0n, 0, "number");
                    testRoundtrip("small integer", -42n, -42, "number");
                    testRoundtrip("largest safe integer", 9007199254740991n, 9007199254740991, "number");
                    testRoundtripError("smallest unsafe integer", 9007199254740992n, RangeError, "number");
                    testRoundtripError("large unsafe integer", -1152921504594532842n, RangeError, "number");
                });

                describe("'bigint' int mode", () => {
                    testRoundtrip("zero integer", 0n, 0n, "bigint");
                    testRoundtrip("small integer", -42n, -42n, "bigint");
                    testRoundtrip("large positive integer", 1152921504608088318n, 1152921504608088318n, "bigint");
                    testRoundtrip("large negative integer", -1152921504594532842n, -1152921504594532842n, "bigint");
                    testRoundtrip("largest positive integer", 9223372036854775807n, 9223372036854775807n, "bigint");
                    testRoundtrip("largest negative integer", -9223372036854775808n, -9223372036854775808n, "bigint");
                });

                describe("'string' int mode", () => {
                    testRoundtrip("zero integer", 0n, "0", "string");
                    testRoundtrip("small integer", -42n, "-42", "string");
                    testRoundtrip("large positive integer", 1152921504608088318n, "1152921504608088318", "string");
                    testRoundtrip("large negative integer", -1152921504594532842n, "-1152921504594532842", "string");
                    testRoundtrip("largest positive integer", 9223372036854775807n, "9223372036854775807", "string");
                    testRoundtrip("largest negative integer", -9223372036854775808n, "-9223372036854775808", "string");
                });
            });

            const buf = new ArrayBuffer(256);
            const array = new Uint8Array(buf);
            for (let i = 0; i < 256; ++i) {
                array[i] = i ^ 0xab;
            }
            testRoundtrip("ArrayBuffer", buf, buf);
            testRoundtrip("Uint8Array", array, buf);

            testRoundtrip("null", null, null);
            testRoundtrip("true (bigint)", true, 1n, "bigint");
            testRoundtrip("false (bigint)", false, 0n, "bigint");
            testRoundtrip("true (number)", true, 1, "number");
            testRoundtrip("false (number)", false, 0, "number");
            testRoundtrip("true (string)", true, "1", "string");
            testRoundtrip("false (string)", false, "0", "string");
            testRoundtrip("true", true, 1);
            testRoundtrip("false", false, 0);

            testRoundtrip("Date", new Date("2023-01-02T12:34:56Z"), 1672662896000, "bigint");

            testRoundtripError("undefined produces error", undefined, TypeError);
            testRoundtripError("NaN produces error", NaN, RangeError);
            testRoundtripError("Infinity produces error", Infinity, RangeError);
            testRoundtripError("large bigint produces error", -1267650600228229401496703205376n, RangeError);

            test("max 64-bit bigint", T, withClient(async (c) => {
                const rs = await c.execute({
                    sql: "SELECT ?||''",
                    args: [9223372036854775807n],
                });
                assert.deepStrictEqual(rs.rows[0][0], "9223372036854775807");
            }));

            test("min 64-bit bigint", T, withClient(async (c) => {
                const rs = await c.execute({
                    sql: "SELECT ?||''",
                    args: [-9223372036854775808n],
                });
                assert.deepStrictEqual(rs.rows[0][0], "-9223372036854775808");
            }));
        });

        describe("ResultSet.toJSON()", () => {
            test("simple result set", T, withClient(async (c) => {
                const rs = await c.execute("SELECT 1 AS a");
                const json = rs.toJSON();
                assert.ok(json["lastInsertRowid"] === null || json["lastInsertRowid"] === "0");
                assert.deepStrictEqual(json["columns"], ["a"]);
                assert.deepStrictEqual(json["columnTypes"], [""]);
                assert.deepStrictEqual(json["rows"], [[1]]);
                assert.deepStrictEqual(json["rowsAffected"], 0);

                const str = JSON.stringify(rs);
                assert.ok(
                    str === '{"columns":["a"],"columnTypes":[""],"rows":[[1]],"rowsAffected":0,"lastInsertRowid":null}' ||
                        str === '{"columns":["a"],"columnTypes":[""],"rows":[[1]],"rowsAffected":0,"lastInsertRowid":"0"}',
                    str,
                );
            }));

            test("lastInsertRowid", T, withClient(async (c) => {
                await c.execute("DROP TABLE IF EXISTS t");
                await c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL)");
                const rs = await c.execute("INSERT INTO t VALUES (12345)");
                assert.deepStrictEqual(rs.toJSON(), {
                    columns: [],
                    columnTypes: [],
                    rows: [],
                    rowsAffected: 1,
                    lastInsertRowid: "12345",
                });
            }));

            test("computed values", T, withClient(async (c) => {
                const rs = await c.execute(
                    "SELECT 42 AS integer, 0.5 AS float, NULL AS \"null\", 'foo' AS text, X'626172' AS blob",
                );
                const json = rs.toJSON();
                assert.deepStrictEqual(json["columns"], ["integer", "float", "null", "text", "blob"]);
                assert.deepStrictEqual(json["columnTypes"], ["", "", "", "", ""]);
                assert.deepStrictEqual(json["rows"], [[42, 0.5, null, "foo", "YmFy"]]);
            }));

            testIf(hasHrana2)("row values", T, withClient(async (c) => {
                await c.execute("DROP TABLE IF EXISTS t");
                await c.execute("CREATE TABLE t (i INTEGER, f FLOAT, t TEXT, b BLOB)");
                await c.execute("INSERT INTO t VALUES (42, 0.5, 'foo', X'626172')");
                const rs = await c.execute("SELECT i, f, t, b FROM t LIMIT 1");
                const json = rs.toJSON();
                assert.deepStrictEqual(json["columns"], ["i", "f", "t", "b"]);
                assert.deepStrictEqual(json["columnTypes"], ["INTEGER", "FLOAT", "TEXT", "BLOB"]);
                assert.deepStrictEqual(json["rows"], [[42, 0.5, "foo", "YmFy"]]);
            }));

            test("bigint row value", T, withClient(async (c) => {
                const rs = await c.execute("SELECT 42");
                const json = rs.toJSON();
                assert.deepStrictEqual(json["rows"], [["42"]]);
            }, { intMode: "bigint" }));
        });

        describe("arguments", () => {
            test("? arguments", T, withClient(async (c) => {
                const rs = await c.execute({
                    sql: "SELECT ?, ?",
                    args: ["one", "two"],
                });
                assert.deepStrictEqual(Array.from(rs.rows[0]), ["one", "two"]);
            }));

            test("?NNN arguments", T, withClient(async (c) => {
                const rs = await c.execute({
                    sql: "SELECT ?2, ?3, ?1",
                    args: ["one", "two", "three"],
                });
                assert.deepStrictEqual(Array.from(rs.rows[0]), ["two", "three", "one"]);
            }));

            test("?NNN arguments with holes", T, withClient(async (c) => {
                const rs = await c.execute({
                    sql: "SELECT ?3, ?1",
                    args: ["one", "two", "three"],
                });
                assert.deepStrictEqual(Array.from(rs.rows[0]), ["three", "one"]);
            }));

            test("?NNN and ? arguments", T, withClient(async (c) => {
                const rs = await c.execute({
                    sql: "SELECT ?2, ?, ?3",
                    args: ["one", "two", "three"],
                });
                assert.deepStrictEqual(Array.from(rs.rows[0]), ["two", "three", "three"]);
            }));

            for (const sign of [":", "@", "$"]) {
                test(`${sign}AAAA arguments`, T, withClient(async (c) => {
                    const rs = await c.execute({
                        sql: `SELECT ${sign}b, ${sign}a`,
                        args: { a: "one", [`${sign}b`]: "two" },
                    });
                    assert.deepStrictEqual(Array.from(rs.rows[0]), ["two", "one"]);
                }));

                test(`${sign}AAAA arguments used multiple times`, T, withClient(async (c) => {
                    const rs = await c.execute({
                        sql: `SELECT ${sign}b, ${sign}a, ${sign}b || ${sign}a`,
                        args: { a: "one", [`${sign}b`]: "two" },
                    });
                    assert.deepStrictEqual(Array.from(rs.rows[0]), ["two", "one", "twoone"]);
                }));

                test(`${sign}AAAA arguments and ?NNN arguments`, T, withClient(async (c) => {
                    const rs = await c.execute({
                        sql: `SELECT ${sign}b, ${sign}a, ?1`,
                        args: { a: "one", [`${sign}b`]: "two" },
                    });
                    assert.deepStrictEqual(Array.from(rs.rows[0]), ["two", "one", "two"]);
                }));
            }
        });

        describe("batch()", () => {
            test("multiple queries", T, withClient(async (c) => {
                const rss = await c.batch(
                    [
                        "SELECT 1+1",
                        "SELECT 1 AS one, 2 AS two",
                        { sql: "SELECT ?", args: ["boomerang"] },
                        { sql: "VALUES (?), (?)", args: ["big", "ben"] },
                    ],
                    "read",
                );

                assert.deepStrictEqual(rss.length, 4);
                const [rs0, rs1, rs2, rs3] = rss;

                assert.deepStrictEqual(rs0.rows.length, 1);
                assert.deepStrictEqual(Array.from(rs0.rows[0]), [2]);

                assert.deepStrictEqual(rs1.rows.length, 1);
                assert.deepStrictEqual(Array.from(rs1.rows[0]), [1, 2]);

                assert.deepStrictEqual(rs2.rows.length, 1);
                assert.deepStrictEqual(Array.from(rs2.rows[0]), ["boomerang"]);

                assert.deepStrictEqual(rs3.rows.length, 2);
                assert.deepStrictEqual(Array.from(rs3.rows[0]), ["big"]);
                assert.deepStrictEqual(Array.from(rs3.rows[1]), ["ben"]);
            }));

            test("statements are executed sequentially", T, withClient(async (c) => {
                const rss = await c.batch(
                    [
                        /* 0 */ "DROP TABLE IF EXISTS t",
                        /* 1 */ "CREATE TABLE t (a, b)",
                        /* 2 */ "INSERT INTO t VALUES (1, 'one')",
                        /* 3 */ "SELECT * FROM t ORDER BY a",
                        /* 4 */ "INSERT INTO t VALUES (2, 'two')",
                        /* 5 */ "SELECT * FROM t ORDER BY a",
                        /* 6 */ "DROP TABLE t",
                    ],
                    "write",
                );

                assert.deepStrictEqual(rss.length, 7);
                assert.deepStrictEqual(rss[3].rows, [{ a: 1, b: "one" }]);
                assert.deepStrictEqual(rss[5].rows, [
                    { a: 1, b: "one" },
                    { a: 2, b: "two" },
                ]);
            }));

            // upstream timeout: 10000 ms
            test("statements are executed in a transaction", { timeout: 10_000 }, withClient(async (c) => {
                await c.batch(
                    [
                        "DROP TABLE IF EXISTS t1",
                        "DROP TABLE IF EXISTS t2",
                        "CREATE TABLE t1 (a)",
                        "CREATE TABLE t2 (a)",
                    ],
                    "write",
                );

                const n = 100;
                const promises = [];
                for (let i = 0; i < n; ++i) {
                    const ii = i;
                    promises.push(
                        (async () => {
                            const rss = await c.batch(
                                [
                                    { sql: "INSERT INTO t1 VALUES (?)", args: [ii] },
                                    { sql: "INSERT INTO t2 VALUES (?)", args: [ii * 10] },
                                    "SELECT SUM(a) FROM t1",
                                    "SELECT SUM(a) FROM t2",
                                ],
                                "write",
                            );

                            const sum1 = rss[2].rows[0][0];
                            const sum2 = rss[3].rows[0][0];
                            assert.deepStrictEqual(sum2, sum1 * 10);
                        })(),
                    );
                }
                await Promise.all(promises);

                const rs1 = await c.execute("SELECT SUM(a) FROM t1");
                assert.deepStrictEqual(rs1.rows[0][0], (n * (n - 1)) / 2);
                const rs2 = await c.execute("SELECT SUM(a) FROM t2");
                assert.deepStrictEqual(rs2.rows[0][0], ((n * (n - 1)) / 2) * 10);
            }));

            test("error in batch", T, withClient(async (c) => {
                await assertLibsqlError(c.batch(["SELECT 1+1", "SELECT foobar"], "read"));
            }));

            test("error in batch rolls back transaction", T, withClient(async (c) => {
                await c.execute("DROP TABLE IF EXISTS t");
                await c.execute("CREATE TABLE t (a)");
                await c.execute("INSERT INTO t VALUES ('one')");
                await assertLibsqlError(
                    c.batch(
                        [
                            "INSERT INTO t VALUES ('two')",
                            "SELECT foobar",
                            "INSERT INTO t VALUES ('three')",
                        ],
                        "write",
                    ),
                );

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 1);
            }));

            test("batch with a lot of different statements", T, withClient(async (c) => {
                const stmts = [];
                for (let i = 0; i < 1000; ++i) {
                    stmts.push(`SELECT ${i}`);
                }
                const rss = await c.batch(stmts, "read");
                for (let i = 0; i < stmts.length; ++i) {
                    assert.deepStrictEqual(rss[i].rows[0][0], i);
                }
            }));

            test("batch with a lot of the same statements", T, withClient(async (c) => {
                const n = 20;
                const m = 200;

                const stmts = [];
                for (let i = 0; i < n; ++i) {
                    for (let j = 0; j < m; ++j) {
                        stmts.push({ sql: `SELECT ?, ${j}`, args: [i] });
                    }
                }

                const rss = await c.batch(stmts, "read");
                for (let i = 0; i < n; ++i) {
                    for (let j = 0; j < m; ++j) {
                        const rs = rss[i * m + j];
                        assert.deepStrictEqual(rs.rows[0][0], i);
                        assert.deepStrictEqual(rs.rows[0][1], j);
                    }
                }
            }));

            test("deferred batch", T, withClient(async (c) => {
                const rss = await c.batch(
                    [
                        "SELECT 1+1",
                        "DROP TABLE IF EXISTS t",
                        "CREATE TABLE t (a)",
                        "INSERT INTO t VALUES (21) RETURNING 2*a",
                    ],
                    "deferred",
                );

                assert.deepStrictEqual(rss.length, 4);
                const [rs0, _rs1, _rs2, rs3] = rss;

                assert.deepStrictEqual(rs0.rows.length, 1);
                assert.deepStrictEqual(Array.from(rs0.rows[0]), [2]);

                assert.deepStrictEqual(rs3.rows.length, 1);
                assert.deepStrictEqual(Array.from(rs3.rows[0]), [42]);
            }));

            testIf(hasHrana3)("ROLLBACK statement stops execution of batch", T, withClient(async (c) => {
                await c.execute("DROP TABLE IF EXISTS t");
                await c.execute("CREATE TABLE t (a)");

                await assertLibsqlError(
                    c.batch(
                        [
                            "INSERT INTO t VALUES (1), (2), (3)",
                            "ROLLBACK",
                            "INSERT INTO t VALUES (4), (5)",
                        ],
                        "write",
                    ),
                    "TRANSACTION_CLOSED",
                );

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 0);
            }));
        });

        describe("transaction()", () => {
            test("query multiple rows", T, withClient(async (c) => {
                const txn = await c.transaction("read");

                const rs = await txn.execute("VALUES (1, 'one'), (2, 'two'), (3, 'three')");
                assert.deepStrictEqual(rs.columns.length, 2);
                assert.deepStrictEqual(rs.columnTypes.length, 2);
                assert.deepStrictEqual(rs.rows.length, 3);

                assert.deepStrictEqual(Array.from(rs.rows[0]), [1, "one"]);
                assert.deepStrictEqual(Array.from(rs.rows[1]), [2, "two"]);
                assert.deepStrictEqual(Array.from(rs.rows[2]), [3, "three"]);

                txn.close();
            }));

            test("commit()", T, withClient(async (c) => {
                await c.batch(["DROP TABLE IF EXISTS t", "CREATE TABLE t (a)"], "write");

                const txn = await c.transaction("write");
                await txn.execute("INSERT INTO t VALUES ('one')");
                await txn.execute("INSERT INTO t VALUES ('two')");
                assert.deepStrictEqual(txn.closed, false);
                await txn.commit();
                assert.deepStrictEqual(txn.closed, true);

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 2);
                await assertLibsqlError(txn.execute("SELECT 1"), "TRANSACTION_CLOSED");
            }));

            test("rollback()", T, withClient(async (c) => {
                await c.batch(["DROP TABLE IF EXISTS t", "CREATE TABLE t (a)"], "write");

                const txn = await c.transaction("write");
                await txn.execute("INSERT INTO t VALUES ('one')");
                await txn.execute("INSERT INTO t VALUES ('two')");
                assert.deepStrictEqual(txn.closed, false);
                await txn.rollback();
                assert.deepStrictEqual(txn.closed, true);

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 0);
                await assertLibsqlError(txn.execute("SELECT 1"), "TRANSACTION_CLOSED");
            }));

            test("close()", T, withClient(async (c) => {
                await c.batch(["DROP TABLE IF EXISTS t", "CREATE TABLE t (a)"], "write");

                const txn = await c.transaction("write");
                await txn.execute("INSERT INTO t VALUES ('one')");
                assert.deepStrictEqual(txn.closed, false);
                txn.close();
                assert.deepStrictEqual(txn.closed, true);

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 0);
                await assertLibsqlError(txn.execute("SELECT 1"), "TRANSACTION_CLOSED");
            }));

            test("error does not rollback", T, withClient(async (c) => {
                await c.batch(["DROP TABLE IF EXISTS t", "CREATE TABLE t (a)"], "write");

                const txn = await c.transaction("write");
                await assertLibsqlError(txn.execute("SELECT foo"));
                await txn.execute("INSERT INTO t VALUES ('one')");
                await assertLibsqlError(txn.execute("SELECT bar"));
                await txn.commit();

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 1);
            }));

            testIf(hasHrana3)("ROLLBACK statement stops execution of transaction", T, withClient(async (c) => {
                await c.execute("DROP TABLE IF EXISTS t");
                await c.execute("CREATE TABLE t (a)");

                const txn = await c.transaction("write");
                const prom1 = txn.execute("INSERT INTO t VALUES (1), (2), (3)");
                const prom2 = txn.execute("ROLLBACK");
                const prom3 = txn.execute("INSERT INTO t VALUES (4), (5)");

                await prom1;
                await prom2;
                await assertLibsqlError(prom3, "TRANSACTION_CLOSED");
                await assertLibsqlError(txn.commit());
                txn.close();

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 0);
            }));

            testIf(hasHrana3)("OR ROLLBACK statement stops execution of transaction", T, withClient(async (c) => {
                await c.execute("DROP TABLE IF EXISTS t");
                await c.execute("CREATE TABLE t (a UNIQUE)");

                const txn = await c.transaction("write");
                const prom1 = txn.execute("INSERT INTO t VALUES (1), (2), (3)");
                const prom2 = txn.execute("INSERT OR ROLLBACK INTO t VALUES (1)");
                const prom3 = txn.execute("INSERT INTO t VALUES (4), (5)");

                await prom1;
                await assertLibsqlError(prom2);
                await assertLibsqlError(prom3, "TRANSACTION_CLOSED");
                await assertLibsqlError(txn.commit());
                txn.close();

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 0);
            }));

            testIf(hasHrana3)("OR ROLLBACK as the first statement stops execution of transaction", T, withClient(async (c) => {
                await c.execute("DROP TABLE IF EXISTS t");
                await c.execute("CREATE TABLE t (a UNIQUE)");
                await c.execute("INSERT INTO t VALUES (1), (2), (3)");

                const txn = await c.transaction("write");
                const prom1 = txn.execute("INSERT OR ROLLBACK INTO t VALUES (1)");
                const prom2 = txn.execute("INSERT INTO t VALUES (4), (5)");

                await assertLibsqlError(prom1);
                await assertLibsqlError(prom2, "TRANSACTION_CLOSED");
                await assertLibsqlError(txn.commit());
                txn.close();

                const rs = await c.execute("SELECT COUNT(*) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 3);
            }));

            test("commit empty", T, withClient(async (c) => {
                const txn = await c.transaction("read");
                await txn.commit();
            }));

            test("rollback empty", T, withClient(async (c) => {
                const txn = await c.transaction("read");
                await txn.rollback();
            }));

            describe("batch()", () => {
                test("as the first operation on transaction", T, withClient(async (c) => {
                    const txn = await c.transaction("write");

                    await txn.batch([
                        "DROP TABLE IF EXISTS t",
                        "CREATE TABLE t (a)",
                        { sql: "INSERT INTO t VALUES (?)", args: [1] },
                        { sql: "INSERT INTO t VALUES (?)", args: [2] },
                        { sql: "INSERT INTO t VALUES (?)", args: [4] },
                    ]);

                    const rs = await txn.execute("SELECT SUM(a) FROM t");
                    assert.deepStrictEqual(rs.rows[0][0], 7);
                    txn.close();
                }));

                test("as the second operation on transaction", T, withClient(async (c) => {
                    const txn = await c.transaction("write");

                    await txn.execute("DROP TABLE IF EXISTS t");
                    await txn.batch([
                        "CREATE TABLE t (a)",
                        { sql: "INSERT INTO t VALUES (?)", args: [1] },
                        { sql: "INSERT INTO t VALUES (?)", args: [2] },
                        { sql: "INSERT INTO t VALUES (?)", args: [4] },
                    ]);

                    const rs = await txn.execute("SELECT SUM(a) FROM t");
                    assert.deepStrictEqual(rs.rows[0][0], 7);
                    txn.close();
                }));

                test("after error, further statements are not executed", T, withClient(async (c) => {
                    const txn = await c.transaction("write");

                    await assertLibsqlError(
                        txn.batch([
                            "DROP TABLE IF EXISTS t",
                            "CREATE TABLE t (a UNIQUE)",
                            "INSERT INTO t VALUES (1), (2), (4)",
                            "INSERT INTO t VALUES (1)",
                            "INSERT INTO t VALUES (8), (16)",
                        ]),
                    );

                    const rs = await txn.execute("SELECT SUM(a) FROM t");
                    assert.deepStrictEqual(rs.rows[0][0], 7);

                    await txn.commit();
                }));
            });

            describeIf(hasHrana2)("executeMultiple()", () => {
                test("as the first operation on transaction", T, withClient(async (c) => {
                    const txn = await c.transaction("write");

                    await txn.executeMultiple(`
                DROP TABLE IF EXISTS t;
                CREATE TABLE t (a);
                INSERT INTO t VALUES (1), (2), (4), (8);
            `);

                    const rs = await txn.execute("SELECT SUM(a) FROM t");
                    assert.deepStrictEqual(rs.rows[0][0], 15);
                    txn.close();
                }));

                test("as the second operation on transaction", T, withClient(async (c) => {
                    const txn = await c.transaction("write");
                    await txn.execute("DROP TABLE IF EXISTS t");
                    await txn.executeMultiple(`
                CREATE TABLE t (a);
                INSERT INTO t VALUES (1), (2), (4), (8);
            `);

                    const rs = await txn.execute("SELECT SUM(a) FROM t");
                    assert.deepStrictEqual(rs.rows[0][0], 15);
                    txn.close();
                }));

                test("after error, further statements are not executed", T, withClient(async (c) => {
                    const txn = await c.transaction("write");

                    await assertLibsqlError(
                        txn.executeMultiple(`
                DROP TABLE IF EXISTS t;
                CREATE TABLE t (a UNIQUE);
                INSERT INTO t VALUES (1), (2), (4);
                INSERT INTO t VALUES (1);
                INSERT INTO t VALUES (8), (16);
            `),
                    );

                    const rs = await txn.execute("SELECT SUM(a) FROM t");
                    assert.deepStrictEqual(rs.rows[0][0], 7);

                    await txn.commit();
                }));
            });
        });

        describeIf(hasHrana2)("executeMultiple()", () => {
            test("multiple statements", T, withClient(async (c) => {
                await c.executeMultiple(`
            DROP TABLE IF EXISTS t;
            CREATE TABLE t (a);
            INSERT INTO t VALUES (1), (2), (4), (8);
        `);

                const rs = await c.execute("SELECT SUM(a) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 15);
            }));

            test("after an error, statements are not executed", T, withClient(async (c) => {
                await assertLibsqlError(
                    c.executeMultiple(`
            DROP TABLE IF EXISTS t;
            CREATE TABLE t (a);
            INSERT INTO t VALUES (1), (2), (4);
            INSERT INTO t VALUES (foo());
            INSERT INTO t VALUES (8), (16);
        `),
                );

                const rs = await c.execute("SELECT SUM(a) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 7);
            }));

            test("manual transaction control statements", T, withClient(async (c) => {
                await c.executeMultiple(`
            DROP TABLE IF EXISTS t;
            CREATE TABLE t (a);
            BEGIN;
            INSERT INTO t VALUES (1), (2), (4);
            INSERT INTO t VALUES (8), (16);
            COMMIT;
        `);

                const rs = await c.execute("SELECT SUM(a) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 31);
            }));

            test("error rolls back a manual transaction", T, withClient(async (c) => {
                await assertLibsqlError(
                    c.executeMultiple(`
            DROP TABLE IF EXISTS t;
            CREATE TABLE t (a);
            INSERT INTO t VALUES (0);
            BEGIN;
            INSERT INTO t VALUES (1), (2), (4);
            INSERT INTO t VALUES (foo());
            INSERT INTO t VALUES (8), (16);
            COMMIT;
        `),
                );

                const rs = await c.execute("SELECT SUM(a) FROM t");
                assert.deepStrictEqual(rs.rows[0][0], 0);
            }));
        });

        testIf(isHttp)("custom fetch", T, async () => {
            let fetchCalledCount = 0;
            function customFetch(request) {
                fetchCalledCount += 1;
                // upstream calls `fetch` from @libsql/hrana-client, which hrana-client 0.10 (used by
                // @libsql/client 0.18) no longer exports: it calls the global fetch itself.
                return fetch(request);
            }

            const c = clientForTransport(server, transport, { fetch: customFetch });
            try {
                const rs = await c.execute("SELECT 42");
                assert.deepStrictEqual(rs.rows[0][0], 42);
                assert.ok(fetchCalledCount > 0);
            } finally {
                c.close();
            }
        });

        // ---------------------------------------------------------------------------------------
        // outpost additions

        describe("migrate() (outpost addition: upstream has no test for it)", () => {
            // migrate() runs the statements in a deferred batch between `PRAGMA foreign_keys=off` and
            // `PRAGMA foreign_keys=on`. libSQL enables foreign keys by default
            // (SQLITE_DEFAULT_FOREIGN_KEYS=1), so the same statements fail in a plain batch().
            const setup = [
                "DROP TABLE IF EXISTS mchild",
                "DROP TABLE IF EXISTS mparent",
                "CREATE TABLE mparent (id INTEGER PRIMARY KEY)",
                "CREATE TABLE mchild (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES mparent(id))",
            ];

            test("runs the statements atomically and returns their results", T, withClient(async (c) => {
                const rss = await c.migrate([
                    ...setup,
                    { sql: "INSERT INTO mparent VALUES (?)", args: [1] },
                    { sql: "INSERT INTO mchild VALUES (?, ?) RETURNING parent", args: [10, 1] },
                ]);
                assert.deepStrictEqual(rss.length, setup.length + 2);
                assert.deepStrictEqual(rss[setup.length].rowsAffected, 1);
                assert.deepStrictEqual(Array.from(rss[setup.length + 1].rows[0]), [1]);
                const rs = await c.execute("SELECT COUNT(*) FROM mchild");
                assert.deepStrictEqual(rs.rows[0][0], 1);
            }));

            test("foreign keys are enforced by default in batch()", T, withClient(async (c) => {
                await c.batch(setup, "write");
                const e = await assertLibsqlError(
                    c.batch(["INSERT INTO mchild VALUES (10, 99)"], "write"),
                );
                assert.deepStrictEqual(e.code, "SQLITE_CONSTRAINT", `code ${e.code}: ${e.message}`);
                const rs = await c.execute("PRAGMA foreign_keys");
                assert.deepStrictEqual(rs.rows[0][0], 1);
            }));

            test("disables foreign keys for the migration only", T, withClient(async (c) => {
                await c.batch(setup, "write");
                // A child whose parent does not exist: accepted because migrate() turns FKs off.
                await c.migrate(["INSERT INTO mchild VALUES (10, 99)"]);
                const rs = await c.execute("SELECT parent FROM mchild WHERE id = 10");
                assert.deepStrictEqual(Array.from(rs.rows[0]), [99]);
                // Foreign keys are on again afterwards.
                const fk = await c.execute("PRAGMA foreign_keys");
                assert.deepStrictEqual(fk.rows[0][0], 1);
                await assertLibsqlError(c.execute("INSERT INTO mchild VALUES (11, 98)"), "SQLITE_CONSTRAINT");
            }));

            test("a failing statement rolls the whole migration back", T, withClient(async (c) => {
                await c.batch(setup, "write");
                await assertLibsqlError(
                    c.migrate([
                        "INSERT INTO mparent VALUES (1)",
                        "CREATE TABLE mnew (x)",
                        "INSERT INTO mparent VALUES (1)", // UNIQUE violation
                        "INSERT INTO mparent VALUES (2)",
                    ]),
                    "SQLITE_CONSTRAINT",
                );
                const rs = await c.execute("SELECT COUNT(*) FROM mparent");
                assert.deepStrictEqual(rs.rows[0][0], 0);
                const tbl = await c.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'mnew'");
                assert.deepStrictEqual(tbl.rows[0][0], 0);
            }));
        });

        describe("error codes, as sqld returns them (outpost addition)", () => {
            test("constraint violation -> SQLITE_CONSTRAINT", T, withClient(async (c) => {
                await c.batch(["DROP TABLE IF EXISTS u", "CREATE TABLE u (a UNIQUE NOT NULL)"], "write");
                await c.execute("INSERT INTO u VALUES (1)");
                const e = await assertLibsqlError(c.execute("INSERT INTO u VALUES (1)"), "SQLITE_CONSTRAINT");
                assert.match(e.message, /UNIQUE constraint failed/);
                await assertLibsqlError(c.execute("INSERT INTO u VALUES (NULL)"), "SQLITE_CONSTRAINT");
            }));

            test("no such table / no such column -> SQLITE_UNKNOWN", T, withClient(async (c) => {
                const e1 = await assertLibsqlError(c.execute("SELECT * FROM no_such_table_here"), "SQLITE_UNKNOWN");
                assert.match(e1.message, /no such table/);
                const e2 = await assertLibsqlError(c.execute("SELECT foobar"), "SQLITE_UNKNOWN");
                assert.match(e2.message, /no such column/);
            }));

            test("syntax error -> SQL_PARSE_ERROR (sqld) or SQLITE_UNKNOWN", T, withClient(async (c) => {
                // sqld parses statements before preparing them and answers SQL_PARSE_ERROR; a server that
                // lets SQLite report it answers SQLITE_UNKNOWN (SQLITE_ERROR, sqld's mapping).
                await assertLibsqlError(
                    c.execute("NOT A VALID SQL"),
                    (code) => code === "SQL_PARSE_ERROR" || code === "SQLITE_UNKNOWN",
                );
            }));

            test("error inside batch carries the statement's code", T, withClient(async (c) => {
                await c.batch(["DROP TABLE IF EXISTS u", "CREATE TABLE u (a UNIQUE)"], "write");
                const e = await assertLibsqlError(
                    c.batch(["INSERT INTO u VALUES (1)", "INSERT INTO u VALUES (1)"], "write"),
                    "SQLITE_CONSTRAINT",
                );
                assert.deepStrictEqual(e.statementIndex, 1);
                const rs = await c.execute("SELECT COUNT(*) FROM u");
                assert.deepStrictEqual(rs.rows[0][0], 0);
            }));

            test("wrong number of arguments is an error, not a crash", T, withClient(async (c) => {
                await assertLibsqlError(c.execute({ sql: "SELECT ?, ?", args: [1] }));
                await assertLibsqlError(c.execute({ sql: "SELECT ?", args: [1, 2] }));
                await assertLibsqlError(c.execute({ sql: "SELECT :a", args: { b: 1 } }));
                // the connection still works
                const rs = await c.execute("SELECT 1");
                assert.deepStrictEqual(rs.rows[0][0], 1);
            }));

            test("an error is a LibsqlError and the client stays usable", T, withClient(async (c) => {
                const e = await assertLibsqlError(c.execute("SELECT * FROM nope"));
                assert.ok(e instanceof LibsqlError);
                const rs = await c.execute("SELECT 'still alive'");
                assert.deepStrictEqual(rs.rows[0][0], "still alive");
            }));
        });

        describe("values stored in tables (outpost addition)", () => {
            test("every type survives a write and a read", T, withClient(async (c) => {
                await c.batch(
                    [
                        "DROP TABLE IF EXISTS vals",
                        "CREATE TABLE vals (id INTEGER PRIMARY KEY, v)",
                    ],
                    "write",
                );
                const blob = new Uint8Array([0, 1, 2, 253, 254, 255]);
                const values = [
                    null,
                    0n,
                    -9223372036854775808n,
                    9223372036854775807n,
                    1.5,
                    -0.25,
                    1e300,
                    "",
                    "héllo wörld ✓ 𝄞 中文",
                    "line\nbreak\0nul",
                    blob,
                ];
                for (let i = 0; i < values.length; ++i) {
                    await c.execute({ sql: "INSERT INTO vals VALUES (?, ?)", args: [i, values[i]] });
                }
                const rs = await c.execute("SELECT typeof(v) FROM vals ORDER BY id");
                assert.deepStrictEqual(
                    rs.rows.map((r) => r[0]),
                    ["null", "integer", "integer", "integer", "real", "real", "real", "text", "text", "text", "blob"],
                );
                const c2 = clientForTransport(server, transport, { intMode: "bigint" });
                try {
                    const rs2 = await c2.execute("SELECT v FROM vals ORDER BY id");
                    const got = rs2.rows.map((r) => r[0]);
                    assert.deepStrictEqual(got.slice(0, 10), values.slice(0, 10));
                    assert.deepStrictEqual(new Uint8Array(got[10]), blob);
                } finally {
                    c2.close();
                }
            }));

            test("lastInsertRowid is a bigint and matches the rowid", T, withClient(async (c) => {
                await c.batch(
                    ["DROP TABLE IF EXISTS big", "CREATE TABLE big (id INTEGER PRIMARY KEY, v)"],
                    "write",
                );
                const rs = await c.execute({ sql: "INSERT INTO big VALUES (?, 'x')", args: [9007199254740993n] });
                assert.deepStrictEqual(rs.lastInsertRowid, 9007199254740993n);
                assert.deepStrictEqual(rs.rowsAffected, 1);
                const rs2 = await c.execute("INSERT INTO big (v) VALUES ('y')");
                assert.deepStrictEqual(rs2.lastInsertRowid, 9007199254740994n);
            }));
        });
    });
}
