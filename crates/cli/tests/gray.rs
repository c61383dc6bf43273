//! Gray failures: a node that is alive but does not answer (SIGSTOP: its TCP connections stay
//! open, its heartbeats stop only in its peers' eyes) is routed around by the nodes and by the
//! client library, and nothing acknowledged meanwhile is lost.

mod common;

use dynamokv_client::{ClusterClient, Routing};

fn signal(node: &common::Node, sig: i32) {
    let pid = node.pid().expect("running") as i32;
    // SAFETY: sending a signal to a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// A read of `key` through `node` at R=3: its status line and body.
async fn read_all(node: &common::Node, key: &str) -> String {
    let url = format!("{}/kv/{key}?r=3", node.url);
    let r = common::http().get(url).send().await.unwrap();
    format!("{} {}", r.status(), r.text().await.unwrap())
}

/// Waits for `nodes` to agree on their ring, then connects a partition-aware client to them and
/// writes `keys` a first value (`KEY-0`).
async fn client_with_keys(nodes: &[common::Node], keys: &[String]) -> ClusterClient {
    let refs: Vec<&common::Node> = nodes.iter().collect();
    common::wait_for_ring(&refs, nodes.len()).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let client = ClusterClient::connect(&urls, Routing::Client)
        .await
        .unwrap();
    load(&client, keys, 0).await;
    client
}

/// Reads each of `keys` through `client` and writes it a new value (`KEY-ROUND`) with the
/// read's context; every request must succeed.
async fn load(client: &ClusterClient, keys: &[String], round: usize) {
    for k in keys {
        let read = client
            .get(k.as_bytes(), None)
            .await
            .unwrap_or_else(|e| panic!("get {k} in round {round}: {e}"));
        client
            .put(
                k.as_bytes(),
                format!("{k}-{round}").into_bytes(),
                read.context.as_deref(),
            )
            .await
            .unwrap_or_else(|e| panic!("put {k} in round {round}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_routed_around_by_nodes_and_clients_and_loses_nothing() {
    let dirs = common::dirs(4);
    let nodes = common::start_cluster(&dirs, &[]);
    let refs: Vec<&common::Node> = nodes.iter().collect();
    common::wait_for_ring(&refs, 4).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let keys: Vec<String> = (0..40).map(|i| format!("gray{i}")).collect();
    for routing in [Routing::Client, Routing::AnyNode] {
        // The default attempt timeout (1 s): above the nodes' own suspicion (500 ms), so a
        // healthy node that forwards to the paused one answers in time.
        let client = ClusterClient::connect(&urls, routing).await.unwrap();
        load(&client, &keys, 0).await;
        // n3 stops answering: requests that reach it, or that a node forwards or replicates to
        // it, are not lost; the client and the nodes stop asking it.
        signal(&nodes[2], libc::SIGSTOP);
        for round in 1..=3 {
            load(&client, &keys, round).await;
        }
        assert!(
            client.skipped().iter().any(|u| *u == nodes[2].url),
            "the {routing:?} client skips the paused node: {:?}",
            client.skipped()
        );
        assert_eq!(
            client.skipped(),
            [nodes[2].url.clone()],
            "{routing:?}: only the paused node is skipped"
        );
        // n1 suspects n3 as soon as n3 leaves one of its requests unanswered (gossip asks it
        // something every few seconds even without load), without waiting for phi.
        let n3 = common::eventually(10, "n1 suspects the paused n3", || async {
            let n3 = common::member_seen_by(&nodes[0], "n3").await;
            if n3["up"] == false {
                Ok(n3)
            } else {
                Err(n3.to_string())
            }
        })
        .await;
        assert!(n3["phi"].as_f64().unwrap() < 8.0, "before phi: {n3}");
        signal(&nodes[2], libc::SIGCONT);
        // Back: the nodes take it back once it answers, and every value written meanwhile is
        // there at R=3 (hints and repair bring n3 up to date).
        common::wait_for_ring(&refs, 4).await;
        for k in &keys {
            // The last acknowledged value is there (alone, or beside a sibling that a client
            // retry after a timeout may leave: see ClusterClient).
            let sibling = format!("\r\n\r\n{k}-3\r\n");
            common::eventually(20, &format!("{k} at R=3 after the pause"), || async {
                let body = read_all(&nodes[2], k).await;
                let found = body == format!("200 OK {k}-3")
                    || (body.starts_with("300") && body.contains(&sibling));
                if found { Ok(()) } else { Err(body) }
            })
            .await;
        }
    }
}

/// A tmpfs of `mib` MiB mounted at a new temporary directory, unmounted on drop; `None` (with
/// the reason) where this process may not mount.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn disk_of(node: &common::Node) -> serde_json::Value {
    common::get_json(format!("{}/admin/stats", node.url)).await["disk"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers_when_space_returns() {
    let disk = match SmallDisk::mount(96) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let dirs = common::dirs(3);
    let mut nodes = common::start_cluster(&dirs[..2], &[]);
    let flags = [
        "--cluster-secret",
        common::SECRET,
        "--node-id",
        "n3",
        "--seeds",
        &nodes[0].peer,
        "--min-free-disk-mb",
        "40",
    ];
    let full_dir = disk.path().join("n3");
    nodes.push(common::Node::start(&full_dir, &flags));
    let keys: Vec<String> = (0..30).map(|i| format!("disk{i}")).collect();
    let client = client_with_keys(&nodes, &keys).await;
    assert_eq!(disk_of(&nodes[2]).await["refusing_writes"], false);

    // Something else fills n3's filesystem to under its reserve of 40 MiB.
    let free = disk_of(&nodes[2]).await["free_bytes"].as_u64().unwrap();
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; (free - (20 << 20)) as usize]).unwrap();
    common::eventually(10, "n3 notices its full disk", || async {
        let disk = disk_of(&nodes[2]).await;
        if disk["refusing_writes"] == true {
            Ok(())
        } else {
            Err(disk.to_string())
        }
    })
    .await;
    // n3 refuses a write with a clear error, applying nothing...
    let c = common::http();
    let r = c
        .put(format!("{}/kv/disk0", nodes[2].url))
        .body("refused")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_storage", "{body}");
    // ...serves reads...
    let r = c
        .get(format!("{}/kv/disk1?r=1", nodes[2].url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "disk1-0");
    let out = common::cli(&["admin", "status", "--node", &nodes[2].url]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DISK NEARLY FULL"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // ...and writes through the cluster go on (its replicas go to the others as hints).
    for round in 1..=2 {
        load(&client, &keys, round).await;
    }

    // Space returns: n3 takes writes again by itself, and every value is on every replica.
    std::fs::remove_file(&filler).unwrap();
    common::eventually(10, "n3 takes writes again", || async {
        let url = format!("{}/kv/after-space", nodes[2].url);
        let r = c.put(url).body("v").send().await.unwrap();
        if r.status() == 204 {
            Ok(())
        } else {
            Err(r.status().to_string())
        }
    })
    .await;
    for k in &keys {
        common::eventually(30, &format!("{k} at R=3 once space returned"), || async {
            let body = read_all(&nodes[2], k).await;
            if body == format!("200 OK {k}-2") {
                Ok(())
            } else {
                Err(body)
            }
        })
        .await;
    }
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_around_a_slow_replica_by_hedging_and_skipping() {
    let dirs = common::dirs(3);
    let nodes = common::start_cluster(&dirs, &["--enable-fault-injection"]);
    let keys: Vec<String> = (0..30).map(|i| format!("slow{i}")).collect();
    let client = client_with_keys(&nodes, &keys).await;
    // Enough reads for the client to know its usual latency.
    for _ in 0..4 {
        for k in &keys {
            client.get(k.as_bytes(), None).await.unwrap();
        }
    }
    let hedged = client.hedged_reads();
    // n3's disk becomes slow: every object read and write there waits 300 ms.
    let r = common::http()
        .post(format!("{}/admin/faults", nodes[2].url))
        .body(r#"{"storage_delay_ms": 300}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        for k in &keys {
            let read = client.get(k.as_bytes(), None).await.unwrap();
            assert_eq!(read.siblings.len(), 1, "{k}");
            assert_eq!(read.siblings[0].value, format!("{k}-0").into_bytes(), "{k}");
        }
    }
    assert!(
        client.hedged_reads() > hedged || client.skipped().contains(&nodes[2].url),
        "reads whose first node is the slow n3 were hedged ({} -> {}) or n3 skipped ({:?})",
        hedged,
        client.hedged_reads(),
        client.skipped()
    );
}

#[tokio::test]
async fn a_node_whose_journal_is_damaged_says_which_files_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = common::Node::start(dir.path(), &["--cluster-secret", common::SECRET]);
    let keys: Vec<String> = (0..500).map(|i| format!("j{i}")).collect();
    common::write_all(&node, &keys, "").await;
    node.terminate();
    // Bits flip in the journal while the node is stopped.
    let journal = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|f| f.path())
        .find(|p| p.extension().is_some_and(|x| x == "jnl"))
        .expect("a journal file");
    // Inside values (so inside a batch's checksummed payload): a flip in a batch's framing may
    // instead read as the journal's end, which fjall truncates silently (a torn write).
    let mut bytes = std::fs::read(&journal).unwrap();
    for value in ["v-j100", "v-j250", "v-j400"] {
        let at = bytes
            .windows(value.len())
            .position(|w| w == value.as_bytes())
            .unwrap_or_else(|| panic!("{value} is in the journal"));
        bytes[at + 3] ^= 0xff;
    }
    std::fs::write(&journal, bytes).unwrap();
    let err = common::refused_start(dir.path(), &["--cluster-secret", common::SECRET]);
    assert!(
        err.contains("is damaged")
            && err.contains(&journal.display().to_string())
            && err.contains("move")
            && err.contains("--seeds"),
        "{err}"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = f.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The value every key of the corruption test holds (2 KiB, so that a node's objects fill a
/// table file on disk and do not stay only in its journal).
fn big_value(key: &str) -> String {
    format!("{key}:{}", "x".repeat(2048))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_a_stopped_nodes_files_are_salvaged_and_rebuilt() {
    let dirs = common::dirs(3);
    let flags = [
        "--scrub-interval-ms",
        "1000",
        "--scrub-keys-per-sec",
        "20000",
    ];
    let mut nodes = common::start_cluster(&dirs, &flags);
    let refs: Vec<&common::Node> = nodes.iter().collect();
    common::wait_for_ring(&refs, 3).await;
    // Every key on every node (W=3).
    let keys: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
    common::write_all_values(&nodes[0], &keys, "?w=3", big_value).await;

    // Bits flip in n2's largest table file while it is stopped.
    nodes[1].terminate();
    let table = files_under(dirs[1].path())
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "tables"))
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a table file");
    let mut bytes = std::fs::read(&table).unwrap();
    assert!(
        bytes.len() > 4 << 20,
        "{} is {} bytes",
        table.display(),
        bytes.len()
    );
    let len = bytes.len();
    for at in [len / 4, len / 2, 3 * len / 4] {
        bytes[at] ^= 0x5A;
    }
    std::fs::write(&table, bytes).unwrap();
    let seed = nodes[0].peer.clone();
    let mut args = vec!["--cluster-secret", common::SECRET, "--node-id", "n2"];
    args.extend(["--seeds", seed.as_str()]);
    args.extend(flags);
    nodes[1].restart_with(&args);
    let n2 = &nodes[1];

    // Until it is salvaged and rebuilt, n2 answers reads at R=1 with the value or an error,
    // never a wrong value nor "not found".
    let client = common::http();
    let check_reads = || async {
        let mut wrong = Vec::new();
        for k in keys.iter().step_by(7) {
            let r = client
                .get(format!("{}/kv/{k}?r=1", n2.url))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            if status.is_success() && body != big_value(k) || status == 404 {
                wrong.push(format!("{k}: {status} {:.40}", body));
            }
        }
        wrong
    };
    let stats = common::eventually(120, "n2 salvaged and rebuilt its storage", || async {
        let wrong = check_reads().await;
        assert!(wrong.is_empty(), "wrong answers from n2 at R=1: {wrong:?}");
        let s = common::get_json(format!("{}/admin/stats", n2.url)).await;
        let storage = &s["storage"];
        let salvaged = storage["damage"]["salvages"].as_u64().unwrap_or(0) >= 1;
        if salvaged && storage["lost_data"] == false && s["anti_entropy"]["rebuilding"] == false {
            Ok(s)
        } else {
            Err(format!(
                "storage {storage}, rebuilding {}",
                s["anti_entropy"]["rebuilding"]
            ))
        }
    })
    .await;
    let damage = &stats["storage"]["damage"];
    assert!(damage["corrupt_reads"].as_u64().unwrap() > 0, "{damage}");
    let last = &damage["last_salvage"];
    assert!(
        last["unreadable"].as_u64().unwrap() + last["dropped"].as_u64().unwrap() > 0,
        "the salvage dropped what it could not read: {last}"
    );
    assert!(common::metric(n2, "dynamokv_storage_salvages_total", "").await >= 1.0);
    let status = common::cli(&["admin", "status", "--node", &n2.url]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("STORAGE DAMAGE FOUND"), "{status}");

    // Every key is back on n2 itself, with its value; and reads at R=1 through it are right.
    let mut missing = Vec::new();
    for k in &keys {
        let local = client
            .get(format!("{}/admin/local/{k}", n2.url))
            .send()
            .await
            .unwrap();
        let ok = local.status() == 200 && {
            let v: serde_json::Value = local.json().await.unwrap();
            let value = v["siblings"][0]["value"].as_str().unwrap_or_default();
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(value).ok()
                == Some(big_value(k).into_bytes())
        };
        if !ok {
            missing.push(k.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} keys not back on n2: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(check_reads().await.is_empty());
}
