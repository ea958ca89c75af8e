// outpost-specific: Hrana over HTTP on the wire, with raw fetch(), for what the official clients do
// not show: batons (stream continuity, isolation, stale/forged batons), version probes, `want_rows`,
// the HTTP API v1 endpoints, and malformed requests answered with a 4xx instead of a crash.
// References: libSQL docs/HRANA_3_SPEC.md ("Hrana over HTTP"), docs/HTTP_V2_SPEC.md,
// docs/HTTP_V1_SPEC.md; DESIGN.md "API".

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { startServer } from "./helpers.mjs";

const T = { timeout: 30_000 };

describe("Hrana over HTTP, raw", { timeout: 300_000 }, () => {
    let server;

    before(async () => {
        server = await startServer();
        await pipeline("/v2/pipeline", null, [
            { type: "execute", stmt: { sql: "DROP TABLE IF EXISTS kv" } },
            { type: "execute", stmt: { sql: "CREATE TABLE kv (k TEXT PRIMARY KEY, v)" } },
            { type: "close" },
        ]);
    });

    after(async () => {
        await server?.stop();
    });

    async function post(path, body, headers = {}) {
        const resp = await fetch(server.api + path, {
            method: "POST",
            headers: { "content-type": "application/json", ...headers },
            body: typeof body === "string" ? body : JSON.stringify(body),
        });
        const text = await resp.text();
        let json;
        try {
            json = JSON.parse(text);
        } catch {
            json = undefined;
        }
        return { status: resp.status, contentType: resp.headers.get("content-type"), text, json };
    }

    async function pipeline(path, baton, requests) {
        const r = await post(path, { baton, requests });
        assert.equal(r.status, 200, `${path}: ${r.status} ${r.text}`);
        assert.equal(r.json.results.length, requests.length, r.text);
        return r.json;
    }

    const ok = (result) => {
        assert.equal(result.type, "ok", JSON.stringify(result));
        return result.response;
    };

    for (const v of ["v2", "v3"]) {
        test(`GET /${v} answers 2xx`, T, async () => {
            const resp = await fetch(`${server.api}/${v}`);
            await resp.arrayBuffer();
            assert.ok(resp.status >= 200 && resp.status < 300, `GET /${v}: ${resp.status}`);
        });

        describe(`POST /${v}/pipeline`, () => {
            const path = `/${v}/pipeline`;

            test("execute returns the StmtResult structure", T, async () => {
                const body = await pipeline(path, null, [
                    {
                        type: "execute",
                        stmt: {
                            sql: "SELECT 1 AS i, 2.5 AS f, 'x' AS t, X'00ff' AS b, NULL AS n, ? AS p, :name AS q",
                            args: [{ type: "integer", value: "-9223372036854775808" }],
                            named_args: [{ name: ":name", value: { type: "text", value: "named" } }],
                        },
                    },
                    { type: "close" },
                ]);
                const res = ok(body.results[0]).result;
                assert.deepStrictEqual(
                    res.cols.map((c) => c.name),
                    ["i", "f", "t", "b", "n", "p", "q"],
                );
                // sqld (libsql-hrana) writes base64 without padding (STANDARD_NO_PAD); the spec only
                // says "base64": compare without the padding.
                const rows = res.rows.map((row) =>
                    row.map((v) => (v.type === "blob" ? { ...v, base64: v.base64.replace(/=+$/, "") } : v)),
                );
                assert.deepStrictEqual(rows, [
                    [
                        { type: "integer", value: "1" },
                        { type: "float", value: 2.5 },
                        { type: "text", value: "x" },
                        { type: "blob", base64: "AP8" },
                        { type: "null" },
                        { type: "integer", value: "-9223372036854775808" },
                        { type: "text", value: "named" },
                    ],
                ]);
                assert.equal(res.affected_row_count, 0);
                assert.equal(ok(body.results[1]).type, "close");
                assert.equal(body.baton, null, "closing the stream must return a null baton");
            });

            test("want_rows: false returns no rows", T, async () => {
                const body = await pipeline(path, null, [
                    { type: "execute", stmt: { sql: "VALUES (1), (2), (3)", want_rows: false } },
                    { type: "close" },
                ]);
                assert.deepStrictEqual(ok(body.results[0]).result.rows, []);
            });

            test("a statement error is a StreamResultError with a code, and later requests still run", T, async () => {
                const body = await pipeline(path, null, [
                    { type: "execute", stmt: { sql: "SELECT * FROM no_such_table" } },
                    { type: "execute", stmt: { sql: "SELECT 7" } },
                    { type: "close" },
                ]);
                assert.equal(body.results[0].type, "error");
                assert.equal(typeof body.results[0].error.message, "string");
                assert.equal(body.results[0].error.code, "SQLITE_UNKNOWN");
                assert.deepStrictEqual(ok(body.results[1]).result.rows, [[{ type: "integer", value: "7" }]]);
            });

            test("the baton carries the stream: a transaction spans requests and is isolated", T, async () => {
                const key = `baton-${v}`;
                const r1 = await pipeline(path, null, [
                    { type: "execute", stmt: { sql: "BEGIN" } },
                    { type: "execute", stmt: { sql: "INSERT INTO kv VALUES (?, 1)", args: [{ type: "text", value: key }] } },
                ]);
                ok(r1.results[0]);
                ok(r1.results[1]);
                assert.equal(typeof r1.baton, "string", "an open stream must return a baton");

                // another stream does not see the uncommitted row
                const other = await pipeline(path, null, [
                    { type: "execute", stmt: { sql: "SELECT COUNT(*) FROM kv WHERE k = ?", args: [{ type: "text", value: key }] } },
                    { type: "close" },
                ]);
                assert.deepStrictEqual(ok(other.results[0]).result.rows, [[{ type: "integer", value: "0" }]]);

                // the same stream sees it, and is still inside its transaction
                const r2 = await pipeline(path, r1.baton, [
                    { type: "execute", stmt: { sql: "SELECT v FROM kv WHERE k = ?", args: [{ type: "text", value: key }] } },
                ]);
                assert.deepStrictEqual(ok(r2.results[0]).result.rows, [[{ type: "integer", value: "1" }]]);
                assert.equal(typeof r2.baton, "string");
                assert.notEqual(r2.baton, r1.baton, "the server must hand out a new baton each time");

                const r3 = await pipeline(path, r2.baton, [
                    { type: "execute", stmt: { sql: "COMMIT" } },
                    { type: "close" },
                ]);
                ok(r3.results[0]);
                assert.equal(r3.baton, null);

                const after = await pipeline(path, null, [
                    { type: "execute", stmt: { sql: "SELECT v FROM kv WHERE k = ?", args: [{ type: "text", value: key }] } },
                    { type: "close" },
                ]);
                assert.deepStrictEqual(ok(after.results[0]).result.rows, [[{ type: "integer", value: "1" }]]);
            });

            test("a stale baton is refused with a 4xx", T, async () => {
                const r1 = await pipeline(path, null, [{ type: "execute", stmt: { sql: "SELECT 1" } }]);
                const r2 = await pipeline(path, r1.baton, [{ type: "execute", stmt: { sql: "SELECT 2" } }]);
                const stale = await post(path, { baton: r1.baton, requests: [{ type: "execute", stmt: { sql: "SELECT 3" } }] });
                assert.ok(stale.status >= 400 && stale.status < 500, `stale baton: ${stale.status} ${stale.text}`);
                // close the stream properly (or find it already closed by the refusal)
                await post(path, { baton: r2.baton, requests: [{ type: "close" }] });
            });

            test("a forged baton is refused with a 4xx", T, async () => {
                for (const baton of ["forged", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "1.2.3"]) {
                    const r = await post(path, { baton, requests: [{ type: "execute", stmt: { sql: "SELECT 1" } }] });
                    assert.ok(r.status >= 400 && r.status < 500, `baton ${baton}: ${r.status} ${r.text}`);
                }
            });

            test("a closed stream's baton cannot be reused", T, async () => {
                const r1 = await pipeline(path, null, [{ type: "execute", stmt: { sql: "SELECT 1" } }]);
                const r2 = await pipeline(path, r1.baton, [{ type: "close" }]);
                assert.equal(r2.baton, null);
                const r3 = await post(path, { baton: r1.baton, requests: [{ type: "execute", stmt: { sql: "SELECT 1" } }] });
                assert.ok(r3.status >= 400 && r3.status < 500, `${r3.status} ${r3.text}`);
            });

            test("sequence, store_sql and close_sql", T, async () => {
                const body = await pipeline(path, null, [
                    { type: "sequence", sql: "CREATE TABLE IF NOT EXISTS seq_t (a); INSERT INTO seq_t VALUES (1); INSERT INTO seq_t VALUES (2);" },
                    { type: "store_sql", sql_id: 1, sql: "SELECT COUNT(*) FROM seq_t" },
                    { type: "execute", stmt: { sql_id: 1 } },
                    { type: "close_sql", sql_id: 1 },
                    { type: "execute", stmt: { sql_id: 1 } },
                    { type: "close" },
                ]);
                assert.equal(ok(body.results[0]).type, "sequence");
                assert.equal(ok(body.results[1]).type, "store_sql");
                assert.equal(Number(ok(body.results[2]).result.rows[0][0].value) >= 2, true);
                assert.equal(ok(body.results[3]).type, "close_sql");
                assert.equal(body.results[4].type, "error", "a closed sql_id must not resolve");
            });

            test("batch with conditions", T, async () => {
                const body = await pipeline(path, null, [
                    {
                        type: "batch",
                        batch: {
                            steps: [
                                { stmt: { sql: "SELECT 1" } },
                                { stmt: { sql: "SELECT nope" } },
                                { condition: { type: "ok", step: 0 }, stmt: { sql: "SELECT 'ran after ok'" } },
                                { condition: { type: "ok", step: 1 }, stmt: { sql: "SELECT 'must not run'" } },
                                { condition: { type: "error", step: 1 }, stmt: { sql: "SELECT 'ran after error'" } },
                                {
                                    condition: { type: "and", conds: [{ type: "ok", step: 0 }, { type: "not", cond: { type: "ok", step: 1 } }] },
                                    stmt: { sql: "SELECT 'and/not'" },
                                },
                                {
                                    condition: { type: "or", conds: [{ type: "ok", step: 1 }, { type: "ok", step: 3 }] },
                                    stmt: { sql: "SELECT 'must not run either'" },
                                },
                            ],
                        },
                    },
                    { type: "close" },
                ]);
                const res = ok(body.results[0]).result;
                assert.equal(res.step_results.length, 7);
                assert.equal(res.step_errors.length, 7);
                assert.notEqual(res.step_results[0], null);
                assert.equal(res.step_results[1], null);
                assert.notEqual(res.step_errors[1], null);
                assert.deepStrictEqual(res.step_results[2].rows, [[{ type: "text", value: "ran after ok" }]]);
                assert.equal(res.step_results[3], null);
                assert.equal(res.step_errors[3], null);
                assert.deepStrictEqual(res.step_results[4].rows, [[{ type: "text", value: "ran after error" }]]);
                assert.deepStrictEqual(res.step_results[5].rows, [[{ type: "text", value: "and/not" }]]);
                assert.equal(res.step_results[6], null);
                assert.equal(res.step_errors[6], null);
            });

            test("malformed bodies are a 4xx, and the server stays up", T, async () => {
                for (const body of ["{", "null", "[]", '{"baton": null}', '{"baton": null, "requests": [{"type": "no_such_request"}]}']) {
                    const r = await post(path, body);
                    assert.ok(r.status >= 400 && r.status < 500, `body ${body}: ${r.status} ${r.text}`);
                }
                const body = await pipeline(path, null, [{ type: "execute", stmt: { sql: "SELECT 1" } }, { type: "close" }]);
                ok(body.results[0]);
            });
        });
    }

    test("POST /v3/cursor streams newline-delimited entries", T, async () => {
        const resp = await fetch(server.api + "/v3/cursor", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
                baton: null,
                batch: {
                    steps: [
                        { stmt: { sql: "VALUES (1), (2), (3)" } },
                        { stmt: { sql: "SELECT nope" } },
                        { condition: { type: "ok", step: 1 }, stmt: { sql: "SELECT 'skipped'" } },
                    ],
                },
            }),
        });
        const text = await resp.text();
        assert.equal(resp.status, 200, text);
        const lines = text.split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l));
        const [head, ...entries] = lines;
        assert.ok("baton" in head, `first line must be CursorRespBody: ${JSON.stringify(head)}`);
        assert.deepStrictEqual(
            entries.map((e) => e.type),
            ["step_begin", "row", "row", "row", "step_end", "step_error"],
        );
        assert.equal(entries[0].step, 0);
        assert.deepStrictEqual(entries.slice(1, 4).map((e) => e.row), [
            [{ type: "integer", value: "1" }],
            [{ type: "integer", value: "2" }],
            [{ type: "integer", value: "3" }],
        ]);
        assert.equal(entries[5].step, 1);
        assert.equal(typeof entries[5].error.message, "string");
        if (head.baton !== null) {
            const close = await pipeline("/v3/pipeline", head.baton, [{ type: "close" }]);
            ok(close.results[0]);
        }
    });

    describe("HTTP API v1", () => {
        test("POST /v1/execute", T, async () => {
            const r = await post("/v1/execute", { stmt: { sql: "SELECT ? + 1 AS x", args: [{ type: "integer", value: "41" }] } });
            assert.equal(r.status, 200, r.text);
            assert.deepStrictEqual(r.json.result.rows, [[{ type: "integer", value: "42" }]]);
            assert.deepStrictEqual(r.json.result.cols.map((c) => c.name), ["x"]);
        });

        test("POST /v1/batch", T, async () => {
            const r = await post("/v1/batch", {
                batch: {
                    steps: [
                        { stmt: { sql: "SELECT 1" } },
                        { condition: { type: "ok", step: 0 }, stmt: { sql: "SELECT 2" } },
                    ],
                },
            });
            assert.equal(r.status, 200, r.text);
            assert.deepStrictEqual(r.json.result.step_results[1].rows, [[{ type: "integer", value: "2" }]]);
        });

        test("POST /v1/execute with an error answers an Error", T, async () => {
            const r = await post("/v1/execute", { stmt: { sql: "SELECT * FROM no_such_table" } });
            assert.ok(r.status >= 400 && r.status < 600, `${r.status} ${r.text}`);
            assert.equal(typeof r.json?.message, "string", r.text);
        });
    });

    test("the server is still healthy", T, async () => {
        const resp = await fetch(server.admin + "/health");
        await resp.arrayBuffer();
        assert.equal(resp.status, 200);
        assert.equal(server.exited, null, "outpost must not have exited");
    });
});
