//! End-to-end: the cluster page in a real headless Chromium (Debian's `chromium`, which
//! `scripts/test` installs), driven over the DevTools protocol. It loads the page of a 3-node
//! cluster, sees the ring of 3 nodes, writes a key through the form and reads it back with its
//! preference list, then sees a killed node marked down.
//!
//! Set `DYNAMOKV_SCREENSHOT=path.png` to keep a screenshot of the page (the README's picture).

mod common;

use common::{cli, dirs, start_cluster, wait_for_ring};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// A headless Chromium and a DevTools connection to its one page.
struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return name.to_owned();
        }
    }
    panic!(
        "no Chromium found: install Debian's chromium package (scripts/test installs it when missing)"
    );
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // It prints "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID".
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let browser_url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium announced its DevTools address");
        let port = browser_url
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        // The page target's own socket, from the /json list.
        let deadline = Instant::now() + Duration::from_secs(30);
        let page = loop {
            let list: Value = http_get_json(&format!("127.0.0.1:{port}"), "/json/list");
            if let Some(p) = list
                .as_array()
                .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            {
                break p["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "chromium shows no page target");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ws, _) = tungstenite::connect(page).expect("connect to the page's DevTools socket");
        Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends a DevTools command and waits for its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().expect("DevTools answer");
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr} threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page; `what` says what was awaited when it never is.
    fn wait_for(&mut self, expr: &str, what: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(expr) == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what} within {secs} s; it shows: {}",
                self.eval(
                    "document.querySelector('main') && document.querySelector('main').innerText"
                )
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A tiny GET for Chromium's `/json/list`: HTTP/1.1, the body read up to its Content-Length
/// (Chromium keeps the connection open).
fn http_get_json(addr: &str, path: &str) -> Value {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Value::Null;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return serde_json::from_str(body).unwrap_or(Value::Null);
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return Value::Null,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_the_ring_writes_a_key_and_sees_a_node_go_down() {
    let d = dirs(3);
    let mut nodes = start_cluster(&d, &[]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let url = nodes[0].url.clone();

    let mut nodes = tokio::task::spawn_blocking(move || {
        let mut b = Browser::start();
        b.call("Page.enable", json!({}));
        b.call("Page.navigate", json!({ "url": format!("{url}/") }));
        b.wait_for("document.body && document.body.dataset.ready === 'true'", "data", 30);

        // The ring: arcs of three owners, three rows in the legend, the caption.
        b.wait_for(
            "new Set([...document.querySelectorAll('#ring path[data-owner]')].map(p => p.dataset.owner)).size === 3",
            "arcs of 3 nodes on the ring",
            10,
        );
        assert_eq!(
            b.eval("document.querySelectorAll('#legend tbody tr').length"),
            json!(3)
        );
        assert!(
            b.eval("document.querySelector('#ring-caption').textContent")
                .as_str()
                .unwrap()
                .starts_with("3 nodes"),
        );
        assert_eq!(
            b.eval("document.querySelectorAll('#members tbody tr[data-up=\"true\"]').length"),
            json!(3)
        );

        // Write through the form, then read back.
        b.eval(
            "document.querySelector('#key').value = 'page key';
             document.querySelector('#value').value = 'written from the page';
             document.querySelector('#put').click(); true",
        );
        b.wait_for(
            "document.querySelector('#kv-status').textContent === 'written'",
            "the put answered",
            10,
        );
        b.eval("document.querySelector('#get').click(); true");
        b.wait_for(
            "document.querySelector('#kv-status').textContent === 'found'",
            "the get answered",
            10,
        );
        assert_eq!(
            b.eval("[...document.querySelectorAll('#siblings li')].map(l => l.textContent)"),
            json!(["written from the page"])
        );
        // Its preference list: 3 primaries, all up; the key is marked on the ring.
        b.wait_for(
            "document.querySelectorAll('#preference tbody tr').length === 3",
            "the preference list",
            10,
        );
        assert!(
            b.eval("document.querySelector('#context').textContent")
                .as_str()
                .unwrap()
                .starts_with("context ")
        );

        // The traffic charts are drawn from the node's last seconds.
        b.wait_for(
            "document.querySelector('#ops-chart polyline').getAttribute('points').split(' ').length >= 2",
            "the traffic chart",
            10,
        );

        // Every node's view, asked from the page.
        b.eval("document.querySelector('#views-button').click(); true");
        b.wait_for(
            "document.querySelectorAll('#views-table tbody tr').length === 3",
            "every node's view",
            10,
        );
        if let Ok(path) = std::env::var("DYNAMOKV_SCREENSHOT") {
            use base64::Engine as _;
            let shot = b.call("Page.captureScreenshot", json!({ "format": "png" }));
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot["data"].as_str().unwrap())
                .unwrap();
            std::fs::write(path, png).unwrap();
        }

        // A node dies: the page marks it down.
        nodes[2].kill9();
        b.wait_for(
            "document.querySelector('#members tbody tr[data-node=\"n3\"]').dataset.up === 'false'",
            "n3 marked down",
            30,
        );
        assert_eq!(
            b.eval("document.querySelector('#members tbody tr[data-node=\"n3\"] .seen').textContent"),
            json!("down")
        );
        // Removed, it is no longer down: it is listed apart, as departed.
        let out = cli(&["admin", "remove", "n3", "--node", &nodes[0].url]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        b.wait_for(
            "document.querySelector('#departed tbody tr[data-node=\"n3\"]') !== null && !document.querySelector('#departed-box').hidden",
            "n3 listed as departed",
            30,
        );
        assert_eq!(
            b.eval("document.querySelector('#members tbody tr[data-node=\"n3\"]')"),
            Value::Null,
            "n3 is not among the members whose health is shown"
        );
        assert_eq!(
            b.eval("document.querySelectorAll('#members tbody tr[data-up=\"true\"]').length"),
            json!(2)
        );
        nodes
    })
    .await
    .unwrap();
    drop(nodes.drain(..));
}
