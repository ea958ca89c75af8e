//! Writes the seed corpora of the fuzz targets into `fuzz/corpus/<target>/`
//! (replacing the files it names, leaving others):
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds
//! ```
//!
//! - `hrana_request`: Hrana bodies as the libSQL clients send them (HTTP
//!   pipeline, cursor, v1) and WebSocket client messages;
//! - `sync_message`: one encoded sync message of each kind, the entries and
//!   documents made by real change capture;
//! - `apply_entry`: inputs in the format of `outpost_fuzz::apply` that
//!   apply the templates (each alone, and all in order), the row documents
//!   as snapshots, and a few variations.

use std::path::{Path, PathBuf};

use outpost::sync::proto::{Hello, Msg, PROTOCOL_VERSION};
use outpost::sync::vv::VersionVector;
use outpost_fuzz::apply::{encode, Bytes, DocSpec, EntrySpec, Env, Field, Op, LOCAL_WRITES};

const HRANA: &[(&str, &str)] = &[
    (
        "pipeline-execute",
        r#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"SELECT 1","want_rows":true}},{"type":"close"}]}"#,
    ),
    (
        "pipeline-args",
        r#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"INSERT INTO t VALUES (?, ?, ?, ?, ?)","args":[{"type":"integer","value":"-9223372036854775808"},{"type":"text","value":"é\u0000"},{"type":"blob","base64":"AAH/"},{"type":"float","value":1.5e300},{"type":"null"}],"want_rows":false}}]}"#,
    ),
    (
        "pipeline-named-args",
        r#"{"requests":[{"type":"execute","stmt":{"sql":"SELECT :a, @b, $c","named_args":[{"name":":a","value":{"type":"integer","value":"1"}},{"name":"b","value":{"type":"text","value":"x"}}]}},{"type":"get_autocommit"}]}"#,
    ),
    (
        "pipeline-batch-conds",
        r#"{"baton":null,"requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"BEGIN"}},{"condition":{"type":"ok","step":0},"stmt":{"sql":"INSERT INTO t VALUES (1)"}},{"condition":{"type":"and","conds":[{"type":"ok","step":1},{"type":"not","cond":{"type":"error","step":0}}]},"stmt":{"sql":"COMMIT"}},{"condition":{"type":"or","conds":[{"type":"is_autocommit"},{"type":"error","step":2}]},"stmt":{"sql":"ROLLBACK"}}]}}]}"#,
    ),
    (
        "pipeline-bad-cond",
        r#"{"requests":[{"type":"batch","batch":{"steps":[{"condition":{"type":"ok","step":0},"stmt":{"sql":"SELECT 1"}}],"replication_index":"7"}}]}"#,
    ),
    (
        "pipeline-stored-sql",
        r#"{"requests":[{"type":"store_sql","sql_id":1,"sql":"SELECT ?"},{"type":"execute","stmt":{"sql_id":1,"args":[{"type":"integer","value":"3"}]}},{"type":"batch","batch":{"steps":[{"stmt":{"sql_id":1}},{"stmt":{"sql_id":2}}]}},{"type":"close_sql","sql_id":1},{"type":"execute","stmt":{"sql_id":1}}]}"#,
    ),
    (
        "pipeline-sequence-describe",
        r#"{"baton":"AAAAAAAAAAEAAAAAAAAAAgAAAAAAAAAAAAAAAAAAAAA","requests":[{"type":"sequence","sql":"-- c\nCREATE TABLE x(a); /* y */ INSERT INTO x VALUES (1);"},{"type":"describe","sql":"SELECT * FROM x WHERE a = ?"},{"type":"sequence","sql_id":5,"sql":"x"}]}"#,
    ),
    (
        "cursor",
        r#"{"baton":null,"batch":{"steps":[{"stmt":{"sql":"WITH r AS (SELECT 1) SELECT * FROM r","want_rows":true}}]}}"#,
    ),
    (
        "v1-execute",
        r#"{"stmt":{"sql":"PRAGMA foreign_keys = ON","args":[]}}"#,
    ),
    (
        "v1-batch",
        r#"{"batch":{"steps":[{"stmt":{"sql":"BEGIN IMMEDIATE"}},{"stmt":{"sql":"VACUUM"}}]}}"#,
    ),
    (
        "ws-hello",
        r#"{"type":"hello","jwt":"eyJhbGciOiJFZERTQSJ9.e30.c2ln"}"#,
    ),
    (
        "ws-open-stream",
        r#"{"type":"request","request_id":1,"request":{"type":"open_stream","stream_id":1}}"#,
    ),
    (
        "ws-execute",
        r#"{"type":"request","request_id":2,"request":{"type":"execute","stream_id":1,"stmt":{"sql":"SELECT ?","args":[{"type":"float","value":-0.0}],"want_rows":true}}}"#,
    ),
    (
        "ws-batch",
        r#"{"type":"request","request_id":3,"request":{"type":"batch","stream_id":1,"batch":{"steps":[{"stmt":{"sql":"SAVEPOINT s"}},{"condition":{"type":"not","cond":{"type":"ok","step":0}},"stmt":{"sql":"RELEASE s"}}]}}}"#,
    ),
    (
        "ws-cursor",
        r#"{"type":"request","request_id":4,"request":{"type":"open_cursor","stream_id":1,"cursor_id":7,"batch":{"steps":[{"stmt":{"sql":"VALUES (1), (2)"}}]}}}"#,
    ),
    (
        "ws-fetch-cursor",
        r#"{"type":"request","request_id":5,"request":{"type":"fetch_cursor","cursor_id":7,"max_count":4294967295}}"#,
    ),
    (
        "ws-store-sql",
        r#"{"type":"request","request_id":6,"request":{"type":"store_sql","sql_id":-1,"sql":"END"}}"#,
    ),
    (
        "ws-sequence",
        r#"{"type":"request","request_id":7,"request":{"type":"sequence","stream_id":1,"sql_id":-1}}"#,
    ),
    (
        "ws-describe",
        r#"{"type":"request","request_id":8,"request":{"type":"describe","stream_id":1,"sql":"EXPLAIN SELECT 1"}}"#,
    ),
    (
        "ws-close",
        r#"{"type":"request","request_id":9,"request":{"type":"close_stream","stream_id":1}}"#,
    ),
];

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn corpus(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    dir
}

fn main() {
    let dir = corpus("hrana_request");
    for (name, json) in HRANA {
        serde_json::from_str::<serde_json::Value>(json).expect("seed is JSON");
        write(&dir, &format!("{name}.json"), json.as_bytes());
    }

    let env = Env::get();

    let dir = corpus("sync_message");
    let mut have = VersionVector::new();
    for (i, &peer) in env.peers.iter().enumerate() {
        have.observe(peer, 3 + i as u64);
    }
    // As a node with a certificate sends them (the codec checks no signature).
    let signed: Vec<_> = env.entries[4..6]
        .iter()
        .map(|e| outpost::db::capture::LogEntry {
            key_id: 0x0123_4567_89ab_cdef,
            signature: (0..64).collect(),
            ..e.clone()
        })
        .collect();
    let messages = [
        (
            "hello",
            Msg::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                node_id: "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0".into(),
                origin: env.peers[0],
                schema_version: 0,
                schema_hash: "e3b0c44298fc1c149afbf4c8996fb924".into(),
                have: have.clone(),
                partial: false,
            }),
        ),
        ("entries", Msg::Entries(env.entries[..4].to_vec())),
        ("entries-signed", Msg::Entries(signed)),
        (
            "entries-placeholder",
            Msg::Entries(vec![env.entries[0].placeholder()]),
        ),
        (
            "keys",
            Msg::Keys(vec![
                b"0\x82\x01\x0a not a real certificate".to_vec(),
                Vec::new(),
            ]),
        ),
        ("entries-empty", Msg::Entries(Vec::new())),
        (
            "ack",
            Msg::Ack {
                have: have.clone(),
                batches: 2,
            },
        ),
        ("heartbeat", Msg::Ack { have, batches: 0 }),
        (
            "bye",
            Msg::Bye {
                reason: "schema differs".into(),
            },
        ),
        (
            "snapshot",
            Msg::Snapshot {
                docs: env.docs[..2].to_vec(),
                done: None,
            },
        ),
        (
            "snapshot-done",
            Msg::Snapshot {
                docs: Vec::new(),
                done: Some(VersionVector::new()),
            },
        ),
    ];
    for (name, msg) in messages {
        write(&dir, &format!("{name}.bin"), &msg.encode());
    }

    let dir = corpus("apply_entry");
    let n = env.entries.len() as u8;
    // Every template alone, as its origin's next entry...
    for i in 0..n {
        let next = EntrySpec {
            seq: Field::Known(0),
            ..EntrySpec::template(i)
        };
        write(
            &dir,
            &format!("entry-{i:02}.bin"),
            &encode(&[Op::Apply(vec![next])]),
        );
    }
    // ...and all of them in order, 8 per call, with local writes between.
    let mut ops: Vec<Op> = (0..n)
        .collect::<Vec<_>>()
        .chunks(8)
        .map(|c| Op::Apply(c.iter().map(|&i| EntrySpec::template(i)).collect()))
        .collect();
    for (i, _) in LOCAL_WRITES.iter().enumerate() {
        ops.insert(
            (2 * i + 1).min(ops.len()),
            Op::Local {
                stmt: i as u8,
                arg: i as i64 * 3,
            },
        );
    }
    ops.truncate(outpost_fuzz::apply::MAX_OPS);
    write(&dir, "all-in-order.bin", &encode(&ops));
    // Every row document, as a snapshot.
    let docs: Vec<DocSpec> = (0..env.docs.len() as u8)
        .map(|i| DocSpec {
            template: i,
            table: Field::Template,
            key: Field::Template,
            doc: Bytes::Template,
        })
        .collect();
    let ops: Vec<Op> = docs
        .chunks(4)
        .map(|c| Op::Snapshot {
            docs: c.to_vec(),
            done: None,
        })
        .collect();
    write(&dir, "snapshot.bin", &encode(&ops));
    // Variations, as the next entry of template 1's origin: another or a
    // merged update, another table or key, a newer schema, a mutated
    // update, raw bytes.
    let fresh = |update: Bytes| EntrySpec {
        seq: Field::Known(0),
        update,
        ..EntrySpec::template(1)
    };
    let variations = [
        ("fresh-other-update", fresh(Bytes::Entry(n - 1))),
        ("fresh-merged", fresh(Bytes::Merged(0, n / 2))),
        ("fresh-doc", fresh(Bytes::Doc(0))),
        (
            "fresh-mutated",
            fresh(Bytes::Mutated(vec![(7, 0xff), (30, 0)])),
        ),
        ("fresh-truncated", fresh(Bytes::Truncated(20))),
        ("fresh-raw", fresh(Bytes::Raw(vec![1, 0, 0]))),
        (
            "other-table-key",
            EntrySpec {
                table: Field::Known(1),
                key: Field::Known(5),
                ..fresh(Bytes::Template)
            },
        ),
        (
            "newer-schema",
            EntrySpec {
                schema_version: Field::Known(1),
                ..fresh(Bytes::Template)
            },
        ),
        (
            "other-origin",
            EntrySpec {
                origin: Field::Known(1),
                ..fresh(Bytes::Template)
            },
        ),
    ];
    for (name, spec) in variations {
        write(
            &dir,
            &format!("{name}.bin"),
            &encode(&[
                Op::Apply(vec![EntrySpec::template(0)]),
                Op::Apply(vec![spec]),
            ]),
        );
    }
    println!("seeds written under {}", dir.parent().unwrap().display());
}
