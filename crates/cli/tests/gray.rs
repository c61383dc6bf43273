//! Gray failures: a node that is alive but does not answer (SIGSTOP: its TCP connections stay
//! open, its heartbeats stop only in its peers' eyes) is routed around by the nodes and by the
//! client library, and nothing acknowledged meanwhile is lost.

mod common;

use dynamokv_client::{ClusterClient, Routing};
use std::time::Duration;

fn signal(node: &common::Node, sig: i32) {
    let pid = node.pid().expect("running") as i32;
    // SAFETY: sending a signal to a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
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
        let client = ClusterClient::connect(&urls, routing)
            .await
            .unwrap()
            .with_attempt_timeout(Duration::from_millis(500));
        load(&client, &keys, 0).await;
        // n3 stops answering: requests that reach it, or that a node forwards or replicates to
        // it, are not lost; the client and the nodes stop asking it.
        signal(&nodes[2], libc::SIGSTOP);
        for round in 1..=3 {
            load(&client, &keys, round).await;
        }
        assert!(
            client.skipped().iter().any(|u| *u == nodes[2].url),
            "the client skips the paused node: {:?}",
            client.skipped()
        );
        let seen = common::get_json(format!("{}/admin/members", nodes[0].url)).await;
        let n3 = seen["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "n3")
            .unwrap()
            .clone();
        assert_eq!(n3["up"], false, "n1 suspects the paused n3: {n3}");
        signal(&nodes[2], libc::SIGCONT);
        // Back: the nodes take it back once it answers, and every value written meanwhile is
        // there at R=3 (hints and repair bring n3 up to date).
        common::wait_for_ring(&refs, 4).await;
        for k in &keys {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let r = common::http()
                    .get(format!("{}/kv/{k}?r=3", nodes[2].url))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body = format!("{status} {}", r.text().await.unwrap());
                if body == format!("200 OK {k}-3") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{k} after the pause: {body:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
