//! Conditional writes over HTTP with curl: `If-None-Match: *`, `If-Match: *` and `If-Match:
//! <context>`; 412 with the current context when the condition fails; unsupported conditional
//! headers refused by name and changing nothing.

mod common;

use common::{dirs, start_cluster, wait_for_ring};

/// `curl -s -i ARGS URL`: the status code, the X-Context header and the body.
fn curl(args: &[&str], url: &str) -> (u16, Option<String>, String) {
    let (status, head, body) = common::curl(args, url);
    let ctx = head
        .lines()
        .find_map(|l| l.strip_prefix("x-context:").map(|v| v.trim().to_owned()));
    (status, ctx, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_write_once_and_refuse_stale_contexts() {
    let d = dirs(3);
    let nodes = start_cluster(&d, &[]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let url = |i: usize| format!("{}/kv/lock", nodes[i].url);

    // Create only if absent: the first wins, the second gets 412 with the current context.
    let (s, _, _) = curl(
        &["-X", "PUT", "-H", "If-None-Match: *", "--data", "a"],
        &url(0),
    );
    assert_eq!(s, 204);
    let (s, ctx, body) = curl(
        &["-X", "PUT", "-H", "If-None-Match: *", "--data", "b"],
        &url(1),
    );
    assert_eq!(s, 412, "{body}");
    assert!(body.contains("precondition_failed"), "{body}");
    let current = ctx.expect("the 412 carries the current context");
    let (_, _, value) = curl(&[], &url(2));
    assert_eq!(value, "a");

    // If-Match with that context: written; with it again (now stale): 412.
    let if_match = format!("If-Match: {current}");
    let (s, _, _) = curl(&["-X", "PUT", "-H", &if_match, "--data", "c"], &url(2));
    assert_eq!(s, 204);
    let (s, _, body) = curl(&["-X", "PUT", "-H", &if_match, "--data", "d"], &url(0));
    assert_eq!(s, 412, "{body}");
    assert!(body.contains("written since"), "{body}");
    let (_, _, value) = curl(&[], &url(1));
    assert_eq!(value, "c");

    // If-Match: * only when there is a value; a delete with it, then it fails.
    let (s, _, _) = curl(&["-X", "DELETE", "-H", "If-Match: *"], &url(1));
    assert_eq!(s, 204);
    let (s, _, _) = curl(&["-X", "PUT", "-H", "If-Match: *", "--data", "e"], &url(0));
    assert_eq!(s, 412);
    // After a delete, If-None-Match: * creates again (over the tombstone, no sibling).
    let (s, _, _) = curl(
        &["-X", "PUT", "-H", "If-None-Match: *", "--data", "f"],
        &url(2),
    );
    assert_eq!(s, 204);
    let (s, _, value) = curl(&[], &url(0));
    assert_eq!((s, value.as_str()), (200, "f"));

    // Unsupported conditions are refused by name and change nothing.
    for (header, named) in [
        (
            "If-Modified-Since: Mon, 07 Dec 2026 00:00:00 GMT",
            "if-modified-since",
        ),
        (
            "If-Unmodified-Since: Mon, 07 Dec 2026 00:00:00 GMT",
            "if-unmodified-since",
        ),
        ("If-None-Match: \"abc\"", "only If-None-Match: *"),
    ] {
        let (s, _, body) = curl(&["-X", "PUT", "-H", header, "--data", "x"], &url(0));
        assert_eq!(s, 400, "{header}: {body}");
        assert!(
            body.contains(named) && body.contains("unsupported_condition"),
            "{body}"
        );
    }
    let (s, _, body) = curl(
        &[
            "-X",
            "PUT",
            "-H",
            "If-None-Match: *",
            "-H",
            "X-Context: abc",
            "--data",
            "x",
        ],
        &url(0),
    );
    assert_eq!(s, 400, "{body}");
    let (_, _, value) = curl(&[], &url(1));
    assert_eq!(value, "f");
}
