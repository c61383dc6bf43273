//! TLS end to end: certificates from `dynamokv admin certs`, a 3-node cluster over mutual TLS
//! serving HTTPS and RESP over TLS, and what is refused: plaintext on each port, a node whose
//! certificate comes from another CA (with the right cluster secret), a client trusting
//! another CA, and a client without a certificate where one is required - each leaving
//! membership and data as they were.

mod common;

use common::{BIN, Node, SECRET, cli, dirs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn certs(dir: &Path, nodes: &str, clients: &str) {
    let out = dir.display().to_string();
    let mut args = vec!["admin", "certs", "--out", &out, "--node-id", nodes];
    if !clients.is_empty() {
        args.extend(["--client", clients]);
    }
    let o = cli(&args);
    assert!(
        o.status.success(),
        "admin certs failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn tls_flags(dir: &Path, node: &str) -> Vec<String> {
    let f = |name: &str| dir.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        f(&format!("{node}.pem")),
        "--tls-key".into(),
        f(&format!("{node}.key")),
        "--tls-ca".into(),
        f("ca.pem"),
    ]
}

fn start(dir: &Path, certs: &Path, id: &str, seed: Option<&str>, extra: &[&str]) -> Node {
    let mut args = vec![
        "--cluster-secret".to_owned(),
        SECRET.into(),
        "--node-id".into(),
        id.into(),
        "--resp".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(tls_flags(certs, id));
    if let Some(s) = seed {
        args.extend(["--seeds".to_owned(), s.to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(dir, &args)
}

/// An HTTPS client trusting the CA in `ca_dir` (and presenting `identity`, if given).
fn https(ca_dir: &Path, identity: Option<&str>) -> reqwest::Client {
    let ca = std::fs::read(ca_dir.join("ca.pem")).expect("ca.pem");
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .timeout(Duration::from_secs(10));
    if let Some(name) = identity {
        let mut pem = std::fs::read(ca_dir.join(format!("{name}.pem"))).expect("cert");
        pem.extend(std::fs::read(ca_dir.join(format!("{name}.key"))).expect("key"));
        b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    b.build().expect("client")
}

async fn member_ids(c: &reqwest::Client, node: &Node) -> Vec<(String, bool)> {
    let v: serde_json::Value = c
        .get(format!("{}/admin/members", node.url))
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("json");
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_owned(),
                m["up"] == true,
            )
        })
        .collect()
}

async fn wait_all_up(c: &reqwest::Client, nodes: &[&Node], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ok = true;
        for node in nodes {
            let ids = member_ids(c, node).await;
            ok &= ids.len() == n && ids.iter().all(|(_, up)| *up);
        }
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "the TLS cluster did not form");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A RESP client over TLS, trusting `ca_dir`'s CA.
async fn resp_tls(
    addr: &str,
    ca_dir: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_dir.join("ca.pem")).expect("ca")
    {
        roots.add(cert.expect("ca cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().expect("name"), tcp)
        .await
        .expect("RESP TLS handshake")
}

async fn read_some(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_refuses_plaintext_and_strangers() {
    let pki = tempfile::tempdir().expect("tmp");
    let other = tempfile::tempdir().expect("tmp");
    certs(pki.path(), "n1,n2,n3", "ops");
    certs(other.path(), "n4", "");
    let d = dirs(4);
    let n1 = start(d[0].path(), pki.path(), "n1", None, &[]);
    let n2 = start(d[1].path(), pki.path(), "n2", Some(&n1.peer), &[]);
    let n3 = start(d[2].path(), pki.path(), "n3", Some(&n1.peer), &[]);
    assert!(n1.url.starts_with("https://"), "{}", n1.url);
    let c = https(pki.path(), None);
    wait_all_up(&c, &[&n1, &n2, &n3], 3).await;

    // Data over HTTPS, read back through another node.
    let r = c
        .put(format!("{}/kv/secret-key", n1.url))
        .body("v1")
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success(), "{}", r.status());
    let r = c
        .get(format!("{}/kv/secret-key", n3.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "v1");

    // The CLI over HTTPS with --cacert, routing by key to every node.
    let ca = pki.path().join("ca.pem").display().to_string();
    let o = cli(&["--cacert", &ca, "get", "secret-key", "--node", &n2.url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("v1"));
    // Without the CA the CLI cannot trust the node.
    let o = cli(&["get", "secret-key", "--node", &n2.url]);
    assert!(!o.status.success());

    // Plaintext HTTP on the HTTPS port: told so.
    let plain = reqwest::Client::new()
        .get(n1.url.replace("https://", "http://") + "/kv/secret-key")
        .send()
        .await
        .expect("plaintext answer");
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.expect("body").contains("tls_required"));

    // A client trusting another CA refuses the node.
    let stranger = https(other.path(), None);
    let e = stranger
        .get(format!("{}/health", n1.url))
        .send()
        .await
        .expect_err("the node's certificate is not of the stranger's CA");
    assert!(e.is_connect(), "{e:?}");

    // RESP: plaintext is told to use TLS; over TLS it serves.
    let mut plain = tokio::net::TcpStream::connect(&n1.resp).await.expect("tcp");
    plain.write_all(b"PING\r\n").await.expect("write");
    let answer = read_some(&mut plain).await;
    assert!(
        answer.starts_with("-ERR this port speaks TLS"),
        "{answer:?}"
    );
    let mut tls = resp_tls(&n1.resp, pki.path()).await;
    tls.write_all(b"*2\r\n$3\r\nGET\r\n$10\r\nsecret-key\r\n")
        .await
        .expect("write");
    assert_eq!(read_some(&mut tls).await, "$2\r\nv1\r\n");

    // Plaintext on the peer port: closed without an answer.
    let mut peer = tokio::net::TcpStream::connect(&n1.peer).await.expect("tcp");
    let mut hello = 40u32.to_be_bytes().to_vec();
    hello.extend_from_slice(b"dynamokv\x00\x05");
    hello.extend_from_slice(&[0u8; 30]);
    peer.write_all(&hello).await.expect("write");
    assert_eq!(read_some(&mut peer).await, "", "closed, nothing said");

    // A node with the cluster secret but a certificate from another CA: refused both ways,
    // and it never becomes a member.
    let n4 = start(d[3].path(), other.path(), "n4", Some(&n1.peer), &[]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for node in [&n1, &n2, &n3] {
        let ids: Vec<String> = member_ids(&c, node)
            .await
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(ids, ["n1", "n2", "n3"], "membership as {} sees it", node.id);
    }
    let alone: Vec<String> = member_ids(&stranger, &n4)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(alone, ["n4"], "the stranger learned no member");
    let metrics = c
        .get(format!("{}/metrics", n1.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dynamokv_peer_handshakes_refused_total{reason=\"tls\"}")),
        "refusals counted"
    );
    // Data unchanged.
    let r = c
        .get(format!("{}/kv/secret-key", n2.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "v1");
    drop(n4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_when_required() {
    let pki = tempfile::tempdir().expect("tmp");
    certs(pki.path(), "n1", "ops");
    let d = dirs(1);
    let n1 = start(
        d[0].path(),
        pki.path(),
        "n1",
        None,
        &["--tls-require-client-cert"],
    );
    // Without a client certificate the handshake fails.
    let anonymous = https(pki.path(), None);
    assert!(
        anonymous
            .put(format!("{}/kv/k", n1.url))
            .body("x")
            .send()
            .await
            .is_err(),
        "no client certificate, no request"
    );
    // With the cluster's client certificate it serves.
    let ops = https(pki.path(), Some("client-ops"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ops.put(format!("{}/kv/k", n1.url)).body("y").send().await {
            Ok(r) if r.status().is_success() => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = ops
        .get(format!("{}/kv/k", n1.url))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert_eq!(v, "y", "the anonymous write changed nothing");
    // The CLI with a client certificate and its key.
    let f = |n: &str| pki.path().join(n).display().to_string();
    let o = std::process::Command::new(BIN)
        .args([
            "--cacert",
            &f("ca.pem"),
            "--client-cert",
            &f("client-ops.pem"),
        ])
        .args([
            "--client-cert-key",
            &f("client-ops.key"),
            "get",
            "k",
            "--node",
            &n1.url,
        ])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains('y'));
}
