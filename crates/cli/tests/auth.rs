//! End-to-end: client tokens from the config file, on HTTP and RESP. A missing, wrong or
//! under-scoped token is refused with a clear answer, and the refused request changes nothing.

mod common;

use common::{Node, http};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const READER: &str = "reader-token-0123456789";
const WRITER: &str = "writer-token-0123456789";
const ADMIN: &str = "admin-token-01234567890";

/// Sends RESP commands (inline) and returns one reply line per command.
fn resp(conn: &mut BufReader<TcpStream>, commands: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for c in commands {
        conn.get_mut()
            .write_all(format!("{c}\r\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        if let Some(len) = line
            .strip_prefix('$')
            .and_then(|l| l.trim().parse::<usize>().ok())
        {
            let mut value = String::new();
            conn.read_line(&mut value).unwrap();
            assert_eq!(value.trim_end().len(), len);
            line = format!("${}", value.trim_end());
        }
        out.push(line.trim_end().to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_scopes_guard_http_and_resp() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[tokens]]\nname = \"reader\"\ntoken = \"{READER}\"\nscopes = [\"read\"]\n\n\
             [[tokens]]\nname = \"writer\"\ntoken = \"{WRITER}\"\nscopes = [\"read\", \"write\"]\n\n\
             [[tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nscopes = [\"admin\"]\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let node = Node::start(
        &data,
        &["--config", cfg.to_str().unwrap(), "--resp", "127.0.0.1:0"],
    );
    let c = http();
    let url = &node.url;
    let put = |token: Option<&str>, value: &str| {
        let mut r = c.put(format!("{url}/kv/k")).body(value.to_owned());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    // Open: health and the page.
    assert_eq!(
        c.get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(c.get(format!("{url}/")).send().await.unwrap().status(), 200);
    // No token, a wrong token: 401 with the scheme named.
    let r = put(None, "anon").await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(
        put(Some("not-a-token-at-all-000"), "x")
            .await
            .unwrap()
            .status(),
        401
    );
    // Writer writes; reader may read but not write (403, naming the scope).
    assert_eq!(put(Some(WRITER), "v1").await.unwrap().status(), 204);
    let r = put(Some(READER), "v2").await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("write"),
        "{body}"
    );
    let r = c
        .get(format!("{url}/kv/k"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "v1",
        "the refused writes changed nothing"
    );
    assert_eq!(
        c.get(format!("{url}/kv/k")).send().await.unwrap().status(),
        401
    );
    // Admin endpoints and metrics need the admin scope.
    for path in ["/admin/stats", "/metrics", "/admin/ring"] {
        let r = c
            .get(format!("{url}{path}"))
            .bearer_auth(WRITER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let r = c
            .get(format!("{url}{path}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    // RESP: nothing but AUTH, HELLO and QUIT before a token; scopes as on HTTP.
    let s = TcpStream::connect(&node.resp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn = BufReader::new(s);
    let replies = resp(
        &mut conn,
        &[
            "GET k",
            "PING",
            "AUTH wrong-token-000000000",
            &format!("AUTH {READER}"),
            "GET k",
            "SET k v3",
            &format!("AUTH writer {WRITER}"),
            "SET k v4",
            "GET k",
        ],
    );
    assert_eq!(
        replies,
        vec![
            "-NOAUTH Authentication required.",
            "-NOAUTH Authentication required.",
            "-WRONGPASS invalid username-password pair or user is disabled.",
            "+OK",
            "$v1",
            "-NOPERM token 'reader' lacks the write scope this command needs",
            "+OK",
            "+OK",
            "$v4",
        ]
    );
    // HELLO 2 AUTH on a new connection.
    let s = TcpStream::connect(&node.resp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn = BufReader::new(s);
    let first = resp(&mut conn, &["HELLO 2 AUTH reader wrong-token-000000000"]);
    assert!(first[0].starts_with("-WRONGPASS"), "{first:?}");
}
