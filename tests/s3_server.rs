//! The S3 test server harness itself (tests/common/s3.rs): a real SeaweedFS
//! `weed mini` on loopback. Needs `bash scripts/s3-tools.sh` (scripts/test.sh
//! runs it).

mod common;

use common::s3::{litestream_bin, S3Server};

#[test]
fn starts_ready_with_the_bucket_and_the_identity() {
    let s3 = S3Server::start();
    eprintln!("weed mini ready in {:?}", s3.startup_time());
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    assert!(s3.accepts_connections());
    assert_eq!(s3.bucket(), "backups");
    // The readiness probe cleaned up after itself: the bucket starts empty.
    assert_eq!(s3.list_keys(""), Vec::<String>::new());

    s3.put_object("dir/a b.txt", b"hello");
    s3.put_object("dir/c", b"");
    s3.put_object("other", b"x");
    assert_eq!(s3.get_object("dir/a b.txt").as_deref(), Some(&b"hello"[..]));
    assert_eq!(s3.list_keys("dir/"), ["dir/a b.txt", "dir/c"]);
    s3.delete_object("dir/c");
    assert_eq!(s3.get_object("dir/c"), None);
}

#[test]
fn anonymous_requests_are_refused() {
    let s3 = S3Server::start();
    let url = format!("{}/{}/anything", s3.endpoint(), s3.bucket());
    match ureq::put(&url).send_bytes(b"x") {
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 403),
        other => panic!("an unsigned PUT was not refused: {other:?}"),
    }
}

#[test]
fn env_describes_the_server_for_child_processes() {
    let s3 = S3Server::start();
    let env = s3.env();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("AWS_ACCESS_KEY_ID"), Some(s3.access_key()));
    assert_eq!(get("AWS_SECRET_ACCESS_KEY"), Some(s3.secret_key()));
    assert_eq!(get("AWS_REGION"), Some(s3.region()));
    assert_eq!(get("AWS_ENDPOINT_URL"), Some(s3.endpoint().as_str()));
    assert_eq!(get("AWS_ALLOW_HTTP"), Some("true"));
}

#[test]
fn stop_closes_the_port_and_restart_keeps_the_data() {
    let mut s3 = S3Server::start();
    s3.put_object("kept/object", b"survives a SIGKILL");
    let ports = s3.ports();

    s3.stop();
    assert!(
        !s3.accepts_connections(),
        "the S3 port still accepts after stop"
    );
    let kept = std::fs::read_dir(s3.data_dir()).map_or(0, |d| d.count());
    assert!(kept > 0, "the data dir is gone or empty after stop");

    s3.restart();
    eprintln!("weed mini ready again in {:?}", s3.startup_time());
    assert_eq!(s3.ports(), ports);
    assert_eq!(
        s3.get_object("kept/object").as_deref(),
        Some(&b"survives a SIGKILL"[..])
    );
    assert_eq!(s3.list_keys("kept/"), ["kept/object"]);
    // Restarting a running server works too.
    s3.restart();
    assert!(s3.get_object("kept/object").is_some());
}

#[test]
fn concurrent_servers_get_distinct_ports_and_storage() {
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(S3Server::start);
        let b = scope.spawn(S3Server::start);
        (a.join().expect("start a"), b.join().expect("start b"))
    });
    let ports_a = a.ports();
    assert!(
        b.ports().iter().all(|p| !ports_a.contains(p)),
        "{ports_a:?} and {:?} overlap",
        b.ports()
    );
    assert_ne!(a.endpoint(), b.endpoint());
    a.put_object("only-in-a", b"a");
    assert_eq!(b.get_object("only-in-a"), None);
    assert_eq!(a.get_object("only-in-a").as_deref(), Some(&b"a"[..]));
}

#[test]
fn litestream_is_installed_at_the_pinned_version() {
    let out = std::process::Command::new(litestream_bin())
        .arg("version")
        .output()
        .expect("run litestream version");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "litestream version: {out:?}");
    assert_eq!(version.trim(), "0.5.17");
}
