// outpost-specific: authentication and authorization with JWTs, driven through @libsql/client over
// http:// and ws:// (Hrana 2, as the client speaks it; and Hrana 3 over WebSocket).
// No upstream counterpart (libsql-client-ts's client.test.ts only passes AUTH_TOKEN through).
//
// Contract (DESIGN.md "Auth", "Command line"): after `outpost init --data-dir DIR`, `outpost serve
// --data-dir DIR` requires an Ed25519-signed JWT (`Authorization: Bearer`, or the `jwt` of the Hrana
// WebSocket hello). `outpost token` mints a full-access token, `--read-only` a read-only one,
// `--expires 2s` one that expires. Missing, invalid or expired token: HTTP 401 with a JSON error body
// carrying a string `code`; the client throws LibsqlError. A write with a read-only token fails with
// LibsqlError and changes nothing.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
    assertLibsqlError,
    clientForTransport,
    freshDataDir,
    initDataDir,
    LibsqlError,
    mintToken,
    pollUntil,
    startServer,
    TRANSPORTS,
    withDeadline,
} from "./helpers.mjs";

const T = { timeout: 30_000 };

describe("auth", { timeout: 300_000 }, () => {
    let server;
    let dataDir;
    let rwToken;
    let roToken;
    let foreignToken; // signed by another node's key

    before(async () => {
        dataDir = freshDataDir("outpost-auth-");
        await initDataDir(dataDir);
        server = await startServer({ dataDir });
        rwToken = await mintToken(dataDir);
        roToken = await mintToken(dataDir, { readOnly: true });

        const otherDir = freshDataDir("outpost-auth-other-");
        await initDataDir(otherDir);
        foreignToken = await mintToken(otherDir);

        const c = clientForTransport(server, "http", { authToken: rwToken });
        try {
            await c.batch(
                [
                    "DROP TABLE IF EXISTS notes",
                    "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
                    "INSERT INTO notes VALUES (1, 'hello')",
                ],
                "write",
            );
        } finally {
            c.close();
        }
    });

    after(async () => {
        await server?.stop();
    });

    async function count(transport = "http") {
        const c = clientForTransport(server, transport, { authToken: rwToken });
        try {
            const rs = await c.execute("SELECT COUNT(*) FROM notes");
            return rs.rows[0][0];
        } finally {
            c.close();
        }
    }

    describe("raw HTTP", () => {
        const pipelineBody = JSON.stringify({
            baton: null,
            requests: [{ type: "execute", stmt: { sql: "SELECT 1" } }, { type: "close" }],
        });

        for (const path of ["/v2/pipeline", "/v3/pipeline"]) {
            test(`POST ${path} without a token -> 401 with a JSON error`, T, async () => {
                const resp = await fetch(server.api + path, {
                    method: "POST",
                    headers: { "content-type": "application/json" },
                    body: pipelineBody,
                });
                assert.equal(resp.status, 401);
                assert.match(resp.headers.get("content-type") ?? "", /^application\/json/);
                const body = await resp.json();
                assert.equal(typeof body.code, "string", `401 body must carry a string code: ${JSON.stringify(body)}`);
                assert.ok(body.code.length > 0);
            });

            test(`POST ${path} with a garbage token -> 401`, T, async () => {
                const resp = await fetch(server.api + path, {
                    method: "POST",
                    headers: { "content-type": "application/json", authorization: "Bearer not.a.jwt" },
                    body: pipelineBody,
                });
                assert.equal(resp.status, 401);
                await resp.arrayBuffer();
            });

            test(`POST ${path} with a token signed by another key -> 401`, T, async () => {
                const resp = await fetch(server.api + path, {
                    method: "POST",
                    headers: { "content-type": "application/json", authorization: `Bearer ${foreignToken}` },
                    body: pipelineBody,
                });
                assert.equal(resp.status, 401);
                await resp.arrayBuffer();
            });

            test(`POST ${path} with a valid token -> 200`, T, async () => {
                const resp = await fetch(server.api + path, {
                    method: "POST",
                    headers: { "content-type": "application/json", authorization: `Bearer ${rwToken}` },
                    body: pipelineBody,
                });
                assert.equal(resp.status, 200);
                const body = await resp.json();
                assert.equal(body.results[0].type, "ok", JSON.stringify(body));
                assert.deepStrictEqual(body.results[0].response.result.rows, [[{ type: "integer", value: "1" }]]);
            });
        }

        test("a tampered token (payload changed, signature kept) -> 401", T, async () => {
            const [h, p, s] = roToken.split(".");
            const claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8"));
            // Whatever the claim names, flipping the payload must invalidate the signature.
            const tampered = { ...claims, tampered: true };
            const forged = [h, Buffer.from(JSON.stringify(tampered)).toString("base64url"), s].join(".");
            const resp = await fetch(server.api + "/v2/pipeline", {
                method: "POST",
                headers: { "content-type": "application/json", authorization: `Bearer ${forged}` },
                body: pipelineBody,
            });
            assert.equal(resp.status, 401);
            await resp.arrayBuffer();
        });

        test("an unsigned token (alg none) -> 401", T, async () => {
            const [, p] = rwToken.split(".");
            const header = Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url");
            const resp = await fetch(server.api + "/v2/pipeline", {
                method: "POST",
                headers: { "content-type": "application/json", authorization: `Bearer ${header}.${p}.` },
                body: pipelineBody,
            });
            assert.equal(resp.status, 401);
            await resp.arrayBuffer();
        });
    });

    for (const transport of TRANSPORTS) {
        describe(`@libsql/client over ${transport}`, () => {
            test("no token is rejected", T, async () => {
                const c = clientForTransport(server, transport);
                try {
                    await assertLibsqlError(withDeadline(c.execute("SELECT 1"), 10_000, "execute"));
                } finally {
                    c.close();
                }
            });

            test("a token signed by another node's key is rejected", T, async () => {
                const c = clientForTransport(server, transport, { authToken: foreignToken });
                try {
                    await assertLibsqlError(withDeadline(c.execute("SELECT 1"), 10_000, "execute"));
                } finally {
                    c.close();
                }
            });

            test("a garbage token is rejected", T, async () => {
                const c = clientForTransport(server, transport, { authToken: "garbage" });
                try {
                    await assertLibsqlError(withDeadline(c.execute("SELECT 1"), 10_000, "execute"));
                } finally {
                    c.close();
                }
            });

            test("a full-access token can read and write", T, async () => {
                const c = clientForTransport(server, transport, { authToken: rwToken });
                try {
                    const before = await c.execute("SELECT COUNT(*) FROM notes");
                    const ins = await c.execute({ sql: "INSERT INTO notes (body) VALUES (?)", args: [`rw ${transport}`] });
                    assert.equal(ins.rowsAffected, 1);
                    const afterRs = await c.execute("SELECT COUNT(*) FROM notes");
                    assert.equal(afterRs.rows[0][0], before.rows[0][0] + 1);
                    const txn = await c.transaction("write");
                    try {
                        await txn.execute({ sql: "INSERT INTO notes (body) VALUES (?)", args: [`txn ${transport}`] });
                        await txn.commit();
                    } finally {
                        txn.close();
                    }
                } finally {
                    c.close();
                }
            });

            test("a read-only token can read", T, async () => {
                const c = clientForTransport(server, transport, { authToken: roToken });
                try {
                    const rs = await c.execute("SELECT body FROM notes WHERE id = 1");
                    assert.deepStrictEqual(Array.from(rs.rows[0]), ["hello"]);
                    const rss = await c.batch(["SELECT 1", "SELECT COUNT(*) FROM notes"], "read");
                    assert.equal(rss.length, 2);
                    const txn = await c.transaction("read");
                    try {
                        const rs2 = await txn.execute("SELECT body FROM notes WHERE id = 1");
                        assert.deepStrictEqual(Array.from(rs2.rows[0]), ["hello"]);
                    } finally {
                        txn.close();
                    }
                } finally {
                    c.close();
                }
            });

            test("a read-only token cannot write", T, async () => {
                const n0 = await count();
                const c = clientForTransport(server, transport, { authToken: roToken });
                try {
                    await assertLibsqlError(c.execute("INSERT INTO notes (body) VALUES ('ro')"));
                    await assertLibsqlError(c.execute("UPDATE notes SET body = 'ro' WHERE id = 1"));
                    await assertLibsqlError(c.execute("DELETE FROM notes"));
                    await assertLibsqlError(c.execute("CREATE TABLE ro_table (x)"));
                    await assertLibsqlError(c.execute("DROP TABLE notes"));
                    await assertLibsqlError(c.batch(["INSERT INTO notes (body) VALUES ('ro')"], "write"));
                    await assertLibsqlError(c.batch(["SELECT 1", "INSERT INTO notes (body) VALUES ('ro')"], "deferred"));
                    await assertLibsqlError(c.executeMultiple("INSERT INTO notes (body) VALUES ('ro');"));
                    // (migrate() is not tried here: it wraps a deferred batch, tried above, in
                    // `PRAGMA foreign_keys` steps whose failure @libsql/client leaves unhandled.)
                    // an interactive transaction cannot write either
                    const txn = await c.transaction("deferred");
                    try {
                        await assertLibsqlError(txn.execute("INSERT INTO notes (body) VALUES ('ro')"));
                    } finally {
                        txn.close();
                    }
                    // and the client still works for reads after the refusals
                    const rs = await c.execute("SELECT body FROM notes WHERE id = 1");
                    assert.deepStrictEqual(Array.from(rs.rows[0]), ["hello"]);
                } finally {
                    c.close();
                }
                assert.equal(await count(), n0, "a read-only token must not change anything");
                const chk = clientForTransport(server, "http", { authToken: rwToken });
                try {
                    const rs = await chk.execute("SELECT body FROM notes WHERE id = 1");
                    assert.deepStrictEqual(Array.from(rs.rows[0]), ["hello"]);
                    const t = await chk.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'ro_table'");
                    assert.equal(t.rows[0][0], 0);
                } finally {
                    chk.close();
                }
            });

            test("an expired token is rejected", { timeout: 60_000 }, async () => {
                const token = await mintToken(dataDir, { expires: "2s" });
                const mintedAt = Date.now();
                // Valid right after minting (if this ran late, skip the positive half rather than race).
                const c0 = clientForTransport(server, transport, { authToken: token });
                try {
                    if (Date.now() - mintedAt < 1000) {
                        const rs = await c0.execute("SELECT 1");
                        assert.equal(rs.rows[0][0], 1);
                    }
                } finally {
                    c0.close();
                }
                // Once past its expiry (no leeway beyond a few seconds), a fresh client is rejected.
                await pollUntil(
                    async () => {
                        const c = clientForTransport(server, transport, { authToken: token });
                        try {
                            await withDeadline(c.execute("SELECT 1"), 5_000, "execute");
                            return false; // still accepted
                        } catch (e) {
                            if (e instanceof LibsqlError) {
                                return true;
                            }
                            throw e;
                        } finally {
                            c.close();
                        }
                    },
                    { timeoutMs: 15_000, intervalMs: 250, what: "expired token rejected" },
                );
                const c = clientForTransport(server, transport, { authToken: token });
                try {
                    await assertLibsqlError(c.execute("SELECT 1"));
                } finally {
                    c.close();
                }
            });
        });
    }

    test("an expired token gets HTTP 401", { timeout: 60_000 }, async () => {
        const token = await mintToken(dataDir, { expires: "1s" });
        const body = JSON.stringify({ baton: null, requests: [{ type: "execute", stmt: { sql: "SELECT 1" } }] });
        await pollUntil(
            async () => {
                const resp = await fetch(server.api + "/v2/pipeline", {
                    method: "POST",
                    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
                    body,
                });
                await resp.arrayBuffer();
                return resp.status === 401;
            },
            { timeoutMs: 15_000, intervalMs: 250, what: "401 for an expired token" },
        );
    });
});
