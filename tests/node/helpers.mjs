// Shared helpers for the Node.js integration tests: start/stop a real `outpost` process, mint tokens,
// and open @libsql/client clients against it over http://, ws:// (Hrana 2) and ws:// (Hrana 3).
//
// Every test file starts its own server(s) on ports chosen at run time (127.0.0.1:0), in a fresh
// temporary data directory, so files can run in parallel.
//
// Environment:
//   OUTPOST_BIN        path of the outpost binary (default: ${CARGO_TARGET_DIR:-<repo>/target}/debug/outpost)
//   OUTPOST_TRACE=1    log every Hrana HTTP request/response body and WebSocket message to stderr
//   OUTPOST_KEEP_DATA=1  keep the temporary data directories (their paths are printed)

import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { createClient, LibsqlError } from "@libsql/client";
import { WsClient } from "@libsql/client/ws";
import * as hrana from "@libsql/hrana-client";

export { LibsqlError };

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "..", "..");

/** Deadline for `outpost serve` to print its READY line. */
export const READY_TIMEOUT_MS = 20_000;
/** Deadline for the short CLI commands (init, token). */
export const CLI_TIMEOUT_MS = 20_000;
/** Deadline for a server to exit after SIGTERM before it gets SIGKILL. */
export const STOP_TIMEOUT_MS = 10_000;

export function outpostBin() {
    if (process.env.OUTPOST_BIN) {
        return path.resolve(repoRoot, process.env.OUTPOST_BIN);
    }
    const targetDir = process.env.CARGO_TARGET_DIR
        ? path.resolve(repoRoot, process.env.CARGO_TARGET_DIR)
        : path.join(repoRoot, "target");
    return path.join(targetDir, "debug", "outpost");
}

function requireBin() {
    const bin = outpostBin();
    if (!existsSync(bin)) {
        throw new Error(
            `outpost binary not found at ${bin}: build it first (cargo build), ` +
                `or point OUTPOST_BIN / CARGO_TARGET_DIR at it`,
        );
    }
    return bin;
}

const tmpDirs = [];
const liveServers = new Set();
process.on("exit", () => {
    // Never leave a server behind, even if a test file dies without running its `after` hook.
    for (const proc of liveServers) {
        try {
            proc.kill("SIGKILL");
        } catch {
            // already gone
        }
    }
    if (process.env.OUTPOST_KEEP_DATA) {
        return;
    }
    for (const dir of tmpDirs) {
        try {
            rmSync(dir, { recursive: true, force: true });
        } catch {
            // best effort
        }
    }
});

/** A fresh, empty temporary directory (removed when the test process exits). */
export function freshDataDir(prefix = "outpost-node-") {
    const dir = mkdtempSync(path.join(tmpdir(), prefix));
    tmpDirs.push(dir);
    if (process.env.OUTPOST_KEEP_DATA) {
        console.error(`[outpost-test] data dir: ${dir}`);
    }
    return dir;
}

/** Run an outpost CLI subcommand to completion (bounded), returning { stdout, stderr }. */
export function runOutpost(args, { timeoutMs = CLI_TIMEOUT_MS, env } = {}) {
    const bin = requireBin();
    return new Promise((resolve, reject) => {
        execFile(
            bin,
            args,
            {
                timeout: timeoutMs,
                killSignal: "SIGKILL",
                env: { ...process.env, ...env },
                maxBuffer: 16 * 1024 * 1024,
            },
            (error, stdout, stderr) => {
                if (error) {
                    const how = error.killed
                        ? `killed after ${timeoutMs} ms`
                        : `exit code ${error.code}, signal ${error.signal}`;
                    reject(
                        new Error(
                            `outpost ${args.join(" ")} failed (${how})\n` +
                                `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`,
                        ),
                    );
                    return;
                }
                resolve({ stdout, stderr });
            },
        );
    });
}

/** `outpost init --data-dir DIR`: create the node's key pair, after which `serve` requires a JWT. */
export async function initDataDir(dataDir) {
    await runOutpost(["init", "--data-dir", dataDir]);
}

/** `outpost token --data-dir DIR [--read-only] [--expires D]`: one JWT on one line of stdout. */
export async function mintToken(dataDir, { readOnly = false, expires } = {}) {
    const args = ["token", "--data-dir", dataDir];
    if (readOnly) {
        args.push("--read-only");
    }
    if (expires !== undefined) {
        args.push("--expires", expires);
    }
    const { stdout } = await runOutpost(args);
    const lines = stdout.split("\n").map((l) => l.trim()).filter((l) => l !== "");
    assert.equal(lines.length, 1, `outpost token must print exactly one line, got: ${JSON.stringify(stdout)}`);
    const token = lines[0];
    assert.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, "outpost token must print a JWT");
    return token;
}

const READY_RE = /^READY api=(http:\/\/\S+) admin=(http:\/\/\S+)(?: sync=https:\/\/\S+)?\s*$/;

/**
 * Start `outpost serve` on loopback ports chosen by the OS and wait (bounded) for its READY line.
 * Returns { api, admin, httpUrl, wsUrl, dataDir, proc, stderr(), stop() }.
 */
export async function startServer({ dataDir, init = false, extraArgs = [], env } = {}) {
    const bin = requireBin();
    dataDir ??= freshDataDir();
    if (init) {
        await initDataDir(dataDir);
    }
    const args = [
        "serve",
        "--data-dir",
        dataDir,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        // A node that `init` gave a certificate starts its sync listener:
        // never on the default port, files run in parallel.
        "--sync-listen",
        "127.0.0.1:0",
        ...extraArgs,
    ];
    const proc = spawn(bin, args, {
        stdio: ["ignore", "pipe", "pipe"],
        env: { RUST_LOG: process.env.RUST_LOG ?? "info", ...process.env, ...env },
    });

    // Keep the tail of stderr for diagnostics (bounded).
    let stderrBuf = "";
    const STDERR_KEEP = 64 * 1024;
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (chunk) => {
        stderrBuf += chunk;
        if (stderrBuf.length > STDERR_KEEP * 2) {
            stderrBuf = stderrBuf.slice(-STDERR_KEEP);
        }
        if (process.env.OUTPOST_TRACE) {
            process.stderr.write(chunk.replace(/^/gm, "[outpost] "));
        }
    });

    liveServers.add(proc);
    let exited = null;
    const exitPromise = new Promise((resolve) => {
        proc.on("exit", (code, signal) => {
            liveServers.delete(proc);
            exited = { code, signal };
            resolve(exited);
        });
    });

    const ready = await new Promise((resolve, reject) => {
        let stdoutBuf = "";
        let done = false;
        const finish = (err, value) => {
            if (done) {
                return;
            }
            done = true;
            clearTimeout(timer);
            if (err) {
                proc.kill("SIGKILL");
                reject(err);
            } else {
                resolve(value);
            }
        };
        const timer = setTimeout(() => {
            finish(
                new Error(
                    `outpost serve did not print READY within ${READY_TIMEOUT_MS} ms\n` +
                        `--- stdout ---\n${stdoutBuf}\n--- stderr (tail) ---\n${stderrBuf.slice(-8192)}`,
                ),
            );
        }, READY_TIMEOUT_MS);
        proc.stdout.setEncoding("utf8");
        proc.stdout.on("data", (chunk) => {
            stdoutBuf += chunk;
            for (const line of stdoutBuf.split("\n")) {
                const m = READY_RE.exec(line.trim());
                if (m) {
                    finish(null, { api: m[1], admin: m[2] });
                    return;
                }
            }
        });
        proc.on("error", (e) => finish(e));
        exitPromise.then(({ code, signal }) => {
            finish(
                new Error(
                    `outpost serve exited before READY (code ${code}, signal ${signal})\n` +
                        `--- stdout ---\n${stdoutBuf}\n--- stderr (tail) ---\n${stderrBuf.slice(-8192)}`,
                ),
            );
        });
    });

    const api = ready.api.replace(/\/+$/, "");
    const server = {
        api,
        admin: ready.admin.replace(/\/+$/, ""),
        httpUrl: api,
        wsUrl: api.replace(/^http:/, "ws:"),
        dataDir,
        proc,
        stderr: () => stderrBuf,
        get exited() {
            return exited;
        },
        async stop() {
            if (exited) {
                return exited;
            }
            proc.kill("SIGTERM");
            const timer = setTimeout(() => proc.kill("SIGKILL"), STOP_TIMEOUT_MS);
            try {
                return await exitPromise;
            } finally {
                clearTimeout(timer);
            }
        },
    };
    return server;
}

// ---------------------------------------------------------------------------------------------
// Clients

/**
 * The transports every applicable client test runs over:
 * - "http":      http:// URL, as @libsql/client does it (Hrana 2 over HTTP, POST /v2/pipeline, JSON)
 * - "ws":        ws:// URL, as @libsql/client does it (WebSocket subprotocol hrana2, JSON)
 * - "ws-hrana3": ws:// URL, the @libsql/client WebSocket client on a Hrana connection that offers
 *                hrana3 (so the hrana3-only upstream tests run too: is_autocommit conditions etc.)
 */
export const TRANSPORTS = ["http", "ws", "ws-hrana3"];

/** The URL a transport uses for a server. */
export function urlFor(server, transport) {
    return transport === "http" ? server.httpUrl : server.wsUrl;
}

/** The Hrana protocol version a transport is expected to negotiate with outpost. */
export function expectedVersion(transport) {
    return transport === "ws-hrana3" ? 3 : 2;
}

/**
 * Open a client for `url` with `opts` (any @libsql/client Config field: authToken, intMode, ...).
 * `opts.hrana3: true` (ws:// only) makes the WebSocket connection offer hrana3.
 */
export function clientFor(url, opts = {}) {
    const { hrana3 = false, ...config } = opts;
    if (process.env.OUTPOST_TRACE && url.startsWith("http") && config.fetch === undefined) {
        config.fetch = tracingFetch;
    }
    if (!hrana3) {
        return createClient({ url, ...config });
    }
    assert.ok(url.startsWith("ws:") || url.startsWith("wss:"), "hrana3 needs a ws:// URL");
    const intMode = config.intMode ?? "number";
    if (!["number", "bigint", "string"].includes(intMode)) {
        throw new TypeError(`Invalid value for intMode, expected "number", "bigint" or "string", got ${JSON.stringify(intMode)}`);
    }
    // Same construction as @libsql/client's ws `_createClient`, but on a Hrana connection opened with
    // protocol version 3 (the client offers hrana3-protobuf, hrana3, hrana2, hrana1).
    const hranaClient = hrana.openWs(url, config.authToken, 3);
    return new WsClient(hranaClient, new URL(url), config.authToken, intMode, config.concurrency ?? 20);
}

/** A client for `server` over `transport` (one of TRANSPORTS). */
export function clientForTransport(server, transport, opts = {}) {
    return clientFor(urlFor(server, transport), { ...opts, hrana3: transport === "ws-hrana3" });
}

/** Upstream's `withClient`: run `f` with a fresh client, always closing it. */
export function withClient(server, transport, f, extraConfig = {}) {
    return async () => {
        const c = clientForTransport(server, transport, extraConfig);
        try {
            await f(c);
        } finally {
            c.close();
        }
    };
}

/** Open a bare Hrana WebSocket client (hrana-client) and return the negotiated protocol version. */
export async function negotiatedWsVersion(wsUrl, { jwt, protocolVersion = 3, timeoutMs = 10_000 } = {}) {
    const c = hrana.openWs(wsUrl, jwt, protocolVersion);
    try {
        return await withDeadline(c.getVersion(), timeoutMs, "WebSocket version negotiation");
    } finally {
        c.close();
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions and waiting

/**
 * Upstream's `toBeLibsqlError(code?, messageRe?)`: the promise must reject with a LibsqlError,
 * with `code` if given (a string, or a predicate), and a message matching `messageRe` if given.
 * Returns the error.
 */
export async function assertLibsqlError(promise, code, messageRe) {
    let error;
    try {
        await promise;
    } catch (e) {
        error = e;
    }
    assert.ok(error !== undefined, `expected a LibsqlError${code ? ` with code ${code}` : ""}, but the promise resolved`);
    checkLibsqlError(error, code, messageRe);
    return error;
}

/** Same as assertLibsqlError, for a function that throws synchronously. */
export function assertThrowsLibsqlError(fn, code, messageRe) {
    let error;
    try {
        fn();
    } catch (e) {
        error = e;
    }
    assert.ok(error !== undefined, "expected a LibsqlError, but nothing was thrown");
    checkLibsqlError(error, code, messageRe);
    return error;
}

function checkLibsqlError(error, code, messageRe) {
    assert.ok(
        error instanceof LibsqlError,
        `expected an instance of LibsqlError, got ${error?.constructor?.name}: ${error?.stack ?? error}`,
    );
    if (typeof code === "string") {
        assert.equal(error.code, code, `expected LibsqlError code ${code}, got ${error.code}: ${error.message}`);
    } else if (typeof code === "function") {
        assert.ok(code(error.code), `unexpected LibsqlError code ${error.code}: ${error.message}`);
    }
    if (messageRe !== undefined) {
        assert.match(error.message, messageRe);
    }
}

/** Upstream's `.rejects.toBeInstanceOf(cls)`. */
export async function assertRejectsInstanceOf(promise, cls) {
    let error;
    try {
        await promise;
    } catch (e) {
        error = e;
    }
    assert.ok(error !== undefined, `expected a rejection with ${cls.name}, but the promise resolved`);
    assert.ok(error instanceof cls, `expected an instance of ${cls.name}, got ${error?.constructor?.name}: ${error}`);
    return error;
}

/** Reject with a clear message if `promise` does not settle within `ms`. */
export function withDeadline(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Poll `fn` until it returns a truthy value, or fail after `timeoutMs`. */
export async function pollUntil(fn, { timeoutMs = 10_000, intervalMs = 100, what = "condition" } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        try {
            last = await fn();
            if (last) {
                return last;
            }
        } catch (e) {
            last = e;
        }
        if (Date.now() >= deadline) {
            throw new Error(`${what} not reached within ${timeoutMs} ms (last: ${last?.stack ?? last})`);
        }
        await new Promise((r) => setTimeout(r, intervalMs));
    }
}

// ---------------------------------------------------------------------------------------------
// Tracing (OUTPOST_TRACE=1): log what the client sends and gets back, for bug reports.

async function tracingFetch(request) {
    const body = request.body ? await request.clone().text() : "";
    console.error(`[trace] --> ${request.method} ${request.url} ${body}`);
    const resp = await fetch(request);
    const text = await resp.clone().text();
    console.error(`[trace] <-- ${resp.status} ${resp.headers.get("content-type")} ${text}`);
    return resp;
}

if (process.env.OUTPOST_TRACE) {
    // Log WebSocket frames too (the `ws` package is what @libsql/isomorphic-ws uses on Node).
    const { WebSocket } = await import("ws");
    const origSend = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data, ...rest) {
        console.error(`[trace] ws --> ${typeof data === "string" ? data : `<${data.length} bytes>`}`);
        return origSend.call(this, data, ...rest);
    };
    const origEmit = WebSocket.prototype.emit;
    WebSocket.prototype.emit = function (event, ...args) {
        if (event === "message") {
            const [data, isBinary] = args;
            console.error(`[trace] ws <-- ${isBinary ? `<${data.length} bytes>` : data.toString()}`);
        } else if (event === "open") {
            console.error(`[trace] ws open, subprotocol ${JSON.stringify(this.protocol)}`);
        } else if (event === "close") {
            console.error(`[trace] ws close ${args[0]} ${args[1]}`);
        }
        return origEmit.call(this, event, ...args);
    };
}
