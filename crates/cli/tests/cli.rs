//! End-to-end tests of the command line: put, get, delete against a real node; help; config.

mod common;

use common::{Node, cli};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn context_line(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("context: "))
        .expect("a context line")
        .to_owned()
}

#[test]
fn put_get_delete_with_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let n = ["--node", node.url.as_str()];

    let out = cli(&[&["put", "fruit", "apple"][..], &n].concat());
    assert!(out.status.success(), "{out:?}");
    let c1 = context_line(&stdout(&out));

    let out = cli(&[&["get", "fruit"][..], &n].concat());
    assert!(out.status.success());
    assert_eq!(stdout(&out), format!("apple\ncontext: {c1}\n"));

    // Two writers with the same (now stale) context: siblings.
    assert!(
        cli(&[&["put", "fruit", "banana", "--context", &c1][..], &n].concat())
            .status
            .success()
    );
    assert!(
        cli(&[&["put", "fruit", "cherry", "-x", &c1][..], &n].concat())
            .status
            .success()
    );
    let out = cli(&[&["get", "fruit"][..], &n].concat());
    let text = stdout(&out);
    assert!(text.starts_with("2 siblings:\n"), "{text}");
    assert!(
        text.contains("sibling 1: banana\n") && text.contains("sibling 2: cherry\n"),
        "{text}"
    );
    let merged = context_line(&text);

    // JSON output.
    let out = cli(&[&["get", "fruit", "--json"][..], &n].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["siblings"].as_array().unwrap().len(), 2);
    assert_eq!(v["context"].as_str(), Some(merged.as_str()));

    // Reconcile with the merged context.
    assert!(
        cli(&[&["put", "fruit", "banana+cherry", "-x", &merged][..], &n].concat())
            .status
            .success()
    );
    let out = cli(&[&["get", "fruit"][..], &n].concat());
    assert!(stdout(&out).starts_with("banana+cherry\n"));

    // Delete; get then exits 1 and says so.
    let out = cli(&[&["delete", "fruit"][..], &n].concat());
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("deleted\ncontext: "));
    let out = cli(&[&["get", "fruit"][..], &n].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("not found\n"));

    // Values from standard input via --value-file -.
    let mut child = std::process::Command::new(common::BIN)
        .args([&["put", "piped", "--value-file", "-"][..], &n].concat())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let out = cli(&[&["get", "piped"][..], &n].concat());
    assert!(stdout(&out).starts_with("from stdin\n"));
}

#[test]
fn errors_are_reported_with_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--max-value-bytes", "4"]);
    let out = cli(&["put", "k", "too long", "--node", &node.url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("value_too_large"), "{err}");

    let out = cli(&["put", "k", "v", "--context", "forged", "--node", &node.url]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_context"));

    // Nothing listens on port 1.
    let out = cli(&["get", "k", "--node", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn help_documents_commands_and_flags() {
    let out = cli(&["--help"]);
    let text = stdout(&out);
    for cmd in ["server", "put", "get", "delete", "bench-storage"] {
        assert!(text.contains(cmd), "{cmd} missing from --help");
    }
    let text = stdout(&cli(&["server", "--help"]));
    for flag in [
        "--data-dir",
        "--http",
        "--config",
        "--sync",
        "--max-value-bytes",
    ] {
        assert!(text.contains(flag), "{flag} missing from server --help");
    }
    let out = cli(&["server", "--sync", "sometimes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("always, periodic or never"));
}

#[test]
fn config_file_with_flag_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "max_value_bytes = 3\nsync = \"always\"\nhttp = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    // --http overrides the file; max_value_bytes comes from it.
    let node = Node::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let out = cli(&["put", "k", "abcd", "--node", &node.url]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("value_too_large"));
    let out = cli(&["put", "k", "abc", "--node", &node.url]);
    assert!(out.status.success());

    std::fs::write(&cfg, "bogus_field = 1\n").unwrap();
    let out = cli(&["server", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_field"));
}
