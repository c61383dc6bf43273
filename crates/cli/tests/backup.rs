//! Backup and restore: every live object of a running cluster to one file and into a cluster
//! of another size and N - twice, over newer writes, in both formats - and the refusals of
//! truncated, damaged and foreign files.

mod common;

use common::{Node, SECRET, cli, dirs, http, wait_for_ring};
use std::collections::BTreeMap;

/// Every key's live values (sorted) as `node` reads them at R=`r`.
async fn snapshot(node: &Node, keys: &[String], r: u8) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for k in keys {
        let resp = http()
            .get(format!("{}/kv/{k}?r={r}", node.url))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            continue;
        }
        assert!(
            resp.status().is_success() || resp.status() == 300,
            "{k}: {}",
            resp.status()
        );
        let v: serde_json::Value = resp.json().await.unwrap();
        use base64::Engine as _;
        let mut values: Vec<String> = v["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(s["value"].as_str().unwrap())
                    .unwrap();
                String::from_utf8(b).unwrap()
            })
            .collect();
        values.sort();
        out.insert(k.clone(), values);
    }
    out
}

fn run(args: &[&str]) -> (bool, String) {
    let out = cli(args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_another_cluster_twice_and_over_newer_writes() {
    let da = dirs(3);
    let a = common::start_cluster(&da, &[]);
    wait_for_ring(&a.iter().collect::<Vec<_>>(), 3).await;
    let c = http();
    let keys: Vec<String> = (0..1200).map(|i| format!("b{i:04}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let r = c
            .put(format!("{}/kv/{k}", a[i % 3].url))
            .body(format!("v{i}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // Siblings: a second blind write through another node.
    for k in keys.iter().take(100) {
        let r = c
            .put(format!("{}/kv/{k}", a[1].url))
            .body(format!("{k}-concurrent"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // Deleted keys are not backed up.
    for k in keys.iter().skip(1100) {
        let r = c
            .delete(format!("{}/kv/{k}", a[2].url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let expected = snapshot(&a[0], &keys, 3).await;
    assert_eq!(expected.len(), 1100);
    assert_eq!(expected["b0007"].len(), 2, "siblings kept");

    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("cluster.dkvb");
    let file = file.to_str().unwrap();
    let (ok, said) = run(&[
        "admin", "backup", "--node", &a[0].url, "--out", file, "--page", "77",
    ]);
    assert!(ok && said.contains("backed up 1100 objects"), "{said}");
    let jsonl = files.path().join("cluster.jsonl");
    let jsonl = jsonl.to_str().unwrap();
    let (ok, said) = run(&[
        "admin", "backup", "--node", &a[1].url, "--out", jsonl, "--format", "jsonl",
    ]);
    assert!(ok && said.contains("backed up 1100 objects"), "{said}");
    let first = std::fs::read_to_string(jsonl).unwrap();
    assert!(
        first.lines().next().unwrap().contains("\"key\":\"b0000\""),
        "{first:.200}"
    );

    // Another cluster: two nodes, N=2.
    let db = dirs(2);
    let b = common::start_cluster(
        &db,
        &[
            "--replicas",
            "2",
            "--read-quorum",
            "1",
            "--write-quorum",
            "1",
        ],
    );
    wait_for_ring(&b.iter().collect::<Vec<_>>(), 2).await;
    let (ok, said) = run(&["admin", "restore", "--node", &b[1].url, file]);
    assert!(ok && said.contains("restored 1100 objects"), "{said}");
    assert_eq!(
        snapshot(&b[0], &keys, 2).await,
        expected,
        "restored as backed up"
    );
    // Twice, and from the JSON lines: nothing changes.
    let (ok, said) = run(&["admin", "restore", "--node", &b[0].url, file]);
    assert!(ok, "{said}");
    let (ok, said) = run(&[
        "admin", "restore", "--node", &b[0].url, "--format", "jsonl", jsonl,
    ]);
    assert!(ok && said.contains("restored 1100 objects"), "{said}");
    assert_eq!(
        snapshot(&b[0], &keys, 2).await,
        expected,
        "a restore is idempotent"
    );

    // Over a newer write: the newer value stays.
    let read = c
        .get(format!("{}/kv/b0500", b[0].url))
        .send()
        .await
        .unwrap();
    let ctx = common::ctx(&read).unwrap();
    let r = c
        .put(format!("{}/kv/b0500?w=2", b[0].url))
        .header("x-context", ctx)
        .body("newer")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (ok, said) = run(&["admin", "restore", "--node", &b[1].url, file]);
    assert!(ok, "{said}");
    let after = snapshot(&b[0], &["b0500".to_owned()], 2).await;
    assert_eq!(
        after["b0500"],
        ["newer"],
        "the restore did not bring the old value back"
    );

    // Refusals: truncated, damaged, foreign - and nothing written by them.
    let bytes = std::fs::read(file).unwrap();
    let cut = files.path().join("cut.dkvb");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, said) = run(&[
        "admin",
        "restore",
        "--node",
        &b[0].url,
        cut.to_str().unwrap(),
    ]);
    assert!(
        !ok && said.contains("truncated") && said.contains("nothing was restored"),
        "{said}"
    );
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    let bad = files.path().join("bad.dkvb");
    std::fs::write(&bad, &flipped).unwrap();
    let (ok, said) = run(&[
        "admin",
        "restore",
        "--node",
        &b[0].url,
        bad.to_str().unwrap(),
    ]);
    assert!(
        !ok && said.contains("chunk") && said.contains("byte"),
        "{said}"
    );
    let (ok, said) = run(&["admin", "restore", "--node", &b[0].url, "Cargo.toml"]);
    assert!(!ok && said.contains("not a dynamokv backup"), "{said}");
    let after = snapshot(&b[0], &["b0500".to_owned()], 2).await;
    assert_eq!(after["b0500"], ["newer"]);
    drop((a, b, SECRET));
}
