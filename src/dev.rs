//! `outpost dev --nodes N`: a local cluster in one command, for trying
//! replication out. Each node is a real `outpost serve` child process on
//! loopback with its own data dir under `--dir`, certificates from one
//! cluster CA, and peers to every earlier node (links carry both
//! directions, so that is a full mesh). Each node has its own migrations
//! directory (`nodeN/migrations`), seeded with the example app's schema
//! (`migrations/` of the repository: projects, tasks, comments), so a
//! rolling schema change can be tried node by node. Ctrl-C stops them all.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The example app's migrations, written into each node's migrations
/// directory when it is created.
const EXAMPLE_MIGRATIONS: &[(&str, &str)] =
    &[("0001_init.sql", include_str!("../migrations/0001_init.sql"))];

/// The ports of node `i` (0-based): api, admin, sync.
pub fn ports(base: u16, i: u16) -> Result<(u16, u16, u16)> {
    let first = u32::from(base) + u32::from(i) * 10;
    if first + 2 > u32::from(u16::MAX) {
        bail!("--base-port {base} leaves no room for node {}", i + 1);
    }
    let first = first as u16;
    Ok((first, first + 1, first + 2))
}

pub fn run(nodes: u16, base_port: u16, dir: &Path) -> Result<()> {
    if !(1..=9).contains(&nodes) {
        bail!("--nodes must be between 1 and 9");
    }
    let exe = std::env::current_exe().context("locating the outpost binary")?;
    let ca = dir.join("ca");
    let mut children = Vec::new();
    let mut peers: Vec<String> = Vec::new();
    println!("outpost dev: {nodes} nodes under {}", dir.display());
    for i in 0..nodes {
        let data = dir.join(format!("node{}", i + 1));
        prepare_node(&exe, &data, &ca)?;
        let (api, admin, sync) = ports(base_port, i)?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--sync-listen", &format!("127.0.0.1:{sync}")])
            .arg("--migrations")
            .arg(data.join("migrations"));
        for peer in &peers {
            cmd.args(["--peer", peer]);
        }
        let log = std::fs::File::create(data.join("outpost.log"))?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting a node")?;
        let ready = read_ready(&mut child).with_context(|| {
            format!(
                "node {} did not start; see {}",
                i + 1,
                data.join("outpost.log").display()
            )
        })?;
        let token = token(&exe, &data)?;
        println!(
            "\nnode{}: {ready}\n  data: {}\n  token: {token}",
            i + 1,
            data.display()
        );
        peers.push(format!("https://127.0.0.1:{sync}"));
        children.push(child);
    }
    let (api1, _, _) = ports(base_port, 0)?;
    let (api2, admin2, _) = ports(base_port, nodes.saturating_sub(1))?;
    println!(
        "\nTry it: write on node1, read on node{nodes}:\n  curl -s -H \"Authorization: Bearer $TOKEN1\" -d '{{\"requests\":[{{\"type\":\"execute\",\"stmt\":{{\"sql\":\"INSERT INTO projects(id, name) VALUES (\\u0027p1\\u0027, \\u0027hello\\u0027)\"}}}}]}}' http://127.0.0.1:{api1}/v2/pipeline\n  curl -s -H \"Authorization: Bearer $TOKEN{nodes}\" -d '{{\"requests\":[{{\"type\":\"execute\",\"stmt\":{{\"sql\":\"SELECT * FROM projects\"}}}}]}}' http://127.0.0.1:{api2}/v2/pipeline\n  outpost status --admin http://127.0.0.1:{admin2}\nCtrl-C stops every node."
    );
    wait_for_signal();
    for child in &mut children {
        // SIGTERM: each node shuts down gracefully.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    Ok(())
}

/// Creates the node's identity, keys and certificate, and its migrations
/// directory with the example app's schema (kept if it exists).
fn prepare_node(exe: &Path, data: &Path, ca: &Path) -> Result<()> {
    let status = Command::new(exe)
        .arg("init")
        .arg("--data-dir")
        .arg(data)
        .arg("--ca-dir")
        .arg(ca)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("outpost init failed for {}", data.display());
    }
    let migrations: PathBuf = data.join("migrations");
    if !migrations.exists() {
        std::fs::create_dir_all(&migrations)?;
        for (name, sql) in EXAMPLE_MIGRATIONS {
            std::fs::write(migrations.join(name), sql)?;
        }
    }
    Ok(())
}

fn read_ready(child: &mut Child) -> Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    match line.strip_prefix("READY ") {
        Some(rest) => Ok(rest.trim().to_string()),
        None => bail!("no READY line"),
    }
}

fn token(exe: &Path, data: &Path) -> Result<String> {
    let out = Command::new(exe)
        .arg("token")
        .arg("--data-dir")
        .arg(data)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_for_signal() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
}
