//! Node-to-node mutual TLS: `outpost init` issues node certificates from a
//! cluster CA, and the sync configs (`outpost::sync::tls`) accept exactly the
//! nodes of that CA, in real TLS handshakes over loopback TCP.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost::sync::tls::{self, CA_CERT_FILE, CA_KEY_FILE, NODE_CERT_FILE, NODE_KEY_FILE};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A node initialized by `outpost init`.
struct Node {
    data: PathBuf,
    id: String,
}

impl Node {
    fn init(data: PathBuf, extra: &[&str]) -> Node {
        let mut args = vec!["init", "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (status, out, err) = common::run(&args);
        assert!(status.success(), "init failed: {err}\n{out}");
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("node id "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no node id in: {out}"))
            .to_string();
        Node { data, id }
    }
    fn tls(&self, file: &str) -> PathBuf {
        self.data.join("tls").join(file)
    }
    fn server(&self) -> ServerConfig {
        tls::server_config(
            &self.tls(CA_CERT_FILE),
            &self.tls(NODE_CERT_FILE),
            &self.tls(NODE_KEY_FILE),
        )
        .unwrap()
    }
    fn client(&self) -> ClientConfig {
        tls::client_config(
            &self.tls(CA_CERT_FILE),
            &self.tls(NODE_CERT_FILE),
            &self.tls(NODE_KEY_FILE),
        )
        .unwrap()
    }
    fn cert_der(&self) -> CertificateDer<'static> {
        pem_certs(&self.tls(NODE_CERT_FILE)).remove(0)
    }
}

/// n1 and n2 share the CA in `ca`; `stranger` has a CA of its own.
struct Cluster {
    _tmp: tempfile::TempDir,
    ca: PathBuf,
    n1: Node,
    n2: Node,
    stranger: Node,
}

fn cluster() -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let ca_arg = ca.to_str().unwrap();
    let n1 = Node::init(
        tmp.path().join("n1"),
        &[
            "--ca-dir",
            ca_arg,
            "--host",
            "node1.example",
            "--host",
            "10.9.8.7",
        ],
    );
    let n2 = Node::init(tmp.path().join("n2"), &["--ca-dir", ca_arg]);
    let stranger = Node::init(tmp.path().join("stranger"), &[]);
    Cluster {
        _tmp: tmp,
        ca,
        n1,
        n2,
        stranger,
    }
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for der in pem_certs(ca_pem) {
        roots.add(der).unwrap();
    }
    Arc::new(roots)
}

/// What one side of a handshake saw: the peer's node id and the ALPN.
#[derive(Debug)]
struct Seen {
    peer: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// Runs a TLS handshake over loopback TCP, then "ping"/"pong" so that a
/// refusal after the client's handshake (TLS 1.3 client auth) reaches the
/// client. Returns (server side, client side).
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    name: &str,
) -> (Result<Seen, String>, Result<Seen, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut stream = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        stream.write_all(b"pong").await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let (_, conn) = stream.get_ref();
        let seen = Seen {
            peer: conn
                .peer_certificates()
                .and_then(|c| tls::peer_node_id(&c[0])),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        stream.shutdown().await.ok();
        Ok::<_, String>(seen)
    });
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector = TlsConnector::from(Arc::new(client));
        let mut stream = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        let (_, conn) = stream.get_ref();
        Ok::<_, String>(Seen {
            peer: conn
                .peer_certificates()
                .and_then(|c| tls::peer_node_id(&c[0])),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        })
    };
    let limit = Duration::from_secs(20);
    let client_result = tokio::time::timeout(limit, client_side)
        .await
        .expect("client side timed out");
    let server_result = tokio::time::timeout(limit, server_side)
        .await
        .expect("server side timed out")
        .expect("server task panicked");
    (server_result, client_result)
}

#[tokio::test]
async fn two_nodes_of_one_ca_handshake_and_name_each_other() {
    let c = cluster();
    let ca_pem = std::fs::read(c.ca.join(CA_CERT_FILE)).unwrap();
    assert_eq!(std::fs::read(c.n1.tls(CA_CERT_FILE)).unwrap(), ca_pem);
    assert_eq!(std::fs::read(c.n2.tls(CA_CERT_FILE)).unwrap(), ca_pem);
    assert_ne!(c.n1.id, c.n2.id);

    for name in ["localhost", "127.0.0.1", "::1", "node1.example", "10.9.8.7"] {
        let (server, client) = handshake(c.n1.server(), c.n2.client(), name).await;
        let server = server.unwrap_or_else(|e| panic!("{name}: server: {e}"));
        let client = client.unwrap_or_else(|e| panic!("{name}: client: {e}"));
        assert_eq!(server.peer.as_deref(), Some(c.n2.id.as_str()));
        assert_eq!(client.peer.as_deref(), Some(c.n1.id.as_str()));
        assert_eq!(server.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(client.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
    // And the other way round.
    let (server, client) = handshake(c.n2.server(), c.n1.client(), "localhost").await;
    assert_eq!(server.unwrap().peer.as_deref(), Some(c.n1.id.as_str()));
    assert_eq!(client.unwrap().peer.as_deref(), Some(c.n2.id.as_str()));
}

#[test]
fn node_certificates_verify_against_the_cluster_ca_only() {
    let c = cluster();
    let cluster_roots = roots(&c.ca.join(CA_CERT_FILE));
    let now = UnixTime::now();
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(cluster_roots.clone(), provider())
            .build()
            .unwrap();
    let client_verifier = WebPkiClientVerifier::builder_with_provider(cluster_roots, provider())
        .build()
        .unwrap();
    for node in [&c.n1, &c.n2] {
        let der = node.cert_der();
        assert_eq!(tls::peer_node_id(&der).as_deref(), Some(node.id.as_str()));
        client_verifier
            .verify_client_cert(&der, &[], now)
            .unwrap_or_else(|e| panic!("{}: clientAuth: {e}", node.id));
        let localhost = ServerName::try_from("localhost").unwrap();
        server_verifier
            .verify_server_cert(&der, &[], &localhost, &[], now)
            .unwrap_or_else(|e| panic!("{}: serverAuth: {e}", node.id));
    }
    // The --host names are n1's only; a name nobody gave is refused.
    let n1 = c.n1.cert_der();
    let n2 = c.n2.cert_der();
    for name in ["node1.example", "10.9.8.7"] {
        let name = ServerName::try_from(name).unwrap();
        server_verifier
            .verify_server_cert(&n1, &[], &name, &[], now)
            .unwrap();
        assert!(server_verifier
            .verify_server_cert(&n2, &[], &name, &[], now)
            .is_err());
    }
    let elsewhere = ServerName::try_from("elsewhere.example").unwrap();
    assert!(server_verifier
        .verify_server_cert(&n1, &[], &elsewhere, &[], now)
        .is_err());
    // Another CA's node is neither a client nor a server of this cluster.
    let stranger = c.stranger.cert_der();
    assert!(client_verifier
        .verify_client_cert(&stranger, &[], now)
        .is_err());
    let localhost = ServerName::try_from("localhost").unwrap();
    assert!(server_verifier
        .verify_server_cert(&stranger, &[], &localhost, &[], now)
        .is_err());
}

#[tokio::test]
async fn client_with_a_certificate_from_another_ca_is_refused() {
    let c = cluster();
    // Trusts the cluster's CA (so it accepts the server), but presents a
    // certificate from its own CA.
    let client = tls::client_config(
        &c.n2.tls(CA_CERT_FILE),
        &c.stranger.tls(NODE_CERT_FILE),
        &c.stranger.tls(NODE_KEY_FILE),
    )
    .unwrap();
    let (server, client) = handshake(c.n1.server(), client, "localhost").await;
    let server = server.expect_err("server accepted a stranger's certificate");
    assert!(server.contains("certificate"), "{server}");
    client.expect_err("client got through");
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let c = cluster();
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&c.n2.tls(CA_CERT_FILE)))
        .with_no_client_auth();
    let (server, client) = handshake(c.n1.server(), client, "localhost").await;
    let server = server.expect_err("server accepted a client without certificate");
    assert!(server.contains("no certificates"), "{server}");
    client.expect_err("client got through");
}

#[tokio::test]
async fn server_with_a_certificate_from_another_ca_is_refused() {
    let c = cluster();
    // Would accept the cluster's clients, but presents a stranger's certificate.
    let server = tls::server_config(
        &c.n1.tls(CA_CERT_FILE),
        &c.stranger.tls(NODE_CERT_FILE),
        &c.stranger.tls(NODE_KEY_FILE),
    )
    .unwrap();
    let (server, client) = handshake(server, c.n2.client(), "localhost").await;
    let client = client.expect_err("client accepted a stranger's server");
    assert!(client.contains("UnknownIssuer"), "{client}");
    server.expect_err("server completed the handshake");
}

#[test]
fn init_is_idempotent_and_keys_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let ca_arg = ca.to_str().unwrap();
    let node = Node::init(tmp.path().join("n1"), &["--ca-dir", ca_arg]);
    let files = [
        ca.join(CA_CERT_FILE),
        ca.join(CA_KEY_FILE),
        node.tls(NODE_CERT_FILE),
        node.tls(NODE_KEY_FILE),
        node.tls(CA_CERT_FILE),
    ];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();

    let again = Node::init(node.data.clone(), &["--ca-dir", ca_arg]);
    assert_eq!(again.id, node.id);
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(before, after, "a second init changed TLS files");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [ca.join(CA_KEY_FILE), node.tls(NODE_KEY_FILE)] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }

    // --force-cert reissues the node certificate from the same CA.
    let (status, out, err) = common::run(&[
        "init",
        "--data-dir",
        node.data.to_str().unwrap(),
        "--ca-dir",
        ca_arg,
        "--force-cert",
    ]);
    assert!(status.success(), "{err}");
    assert!(out.contains("created node certificate"), "{out}");
    assert_ne!(std::fs::read(node.tls(NODE_CERT_FILE)).unwrap(), before[2]);
    assert_ne!(std::fs::read(node.tls(NODE_KEY_FILE)).unwrap(), before[3]);
    assert_eq!(std::fs::read(ca.join(CA_KEY_FILE)).unwrap(), before[1]);
    assert_eq!(
        tls::peer_node_id(&node.cert_der()).as_deref(),
        Some(node.id.as_str())
    );
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files[0]), provider())
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&node.cert_der(), &[], UnixTime::now())
        .unwrap();
}

#[test]
fn init_without_ca_dir_makes_a_single_node_ca_and_prints_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("n1");
    let (status, out, err) = common::run(&["init", "--data-dir", data.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    let ca = data.join("tls").join("ca");
    for path in [
        ca.join(CA_CERT_FILE),
        ca.join(CA_KEY_FILE),
        data.join("tls").join(NODE_CERT_FILE),
        data.join("tls").join(NODE_KEY_FILE),
        data.join("tls").join(CA_CERT_FILE),
    ] {
        assert!(path.exists(), "{} missing", path.display());
        assert!(
            out.lines().any(|l| l.ends_with(path.to_str().unwrap())),
            "{} not printed in:\n{out}",
            path.display()
        );
    }
    assert_eq!(
        std::fs::read(ca.join(CA_CERT_FILE)).unwrap(),
        std::fs::read(data.join("tls").join(CA_CERT_FILE)).unwrap()
    );
    // The second run creates nothing.
    let (status, out, _) = common::run(&["init", "--data-dir", data.to_str().unwrap()]);
    assert!(status.success());
    assert!(!out.contains("created"), "{out}");
    assert!(out.contains("already exists"), "{out}");
}

#[test]
fn init_refuses_a_bad_host() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("n1");
    let (status, _, err) = common::run(&[
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--host",
        "not a host",
    ]);
    assert!(!status.success());
    assert!(err.contains("not a host"), "{err}");
    assert!(!data.join("tls").join(NODE_CERT_FILE).exists());
}
