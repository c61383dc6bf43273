//! End-to-end tests of the command line: put, get, delete against a real node; help; config.

mod common;

use common::{Node, cli};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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
    // Exactly the value on standard output (`get fruit > file` copies it); the context apart.
    assert_eq!(stdout(&out), "apple");
    assert_eq!(stderr(&out), format!("context: {c1}\n"));

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
    assert_eq!(
        out.status.code(),
        Some(3),
        "siblings have their own exit code"
    );
    assert_eq!(stdout(&out), "", "no single value to print");
    let text = stderr(&out);
    assert!(text.starts_with("2 siblings"), "{text}");
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
    assert_eq!(stdout(&out), "banana+cherry");

    // Delete; get then exits 1 and says so.
    let out = cli(&[&["delete", "fruit"][..], &n].concat());
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("deleted\ncontext: "));
    let out = cli(&[&["get", "fruit"][..], &n].concat());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).starts_with("not found\n"));

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
    assert_eq!(stdout(&out), "from stdin");
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

/// Runs a node with `--log info` and the given log flags, stderr to a file; its log text after a
/// clean stop.
fn node_log(extra: &[&str]) -> String {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("node.log");
    let mut child = std::process::Command::new(common::BIN)
        .args(["server", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .args(["--cluster-secret", "s", "--log", "info"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("listening "));
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log_path).unwrap()
}

#[test]
fn logs_to_a_file_carry_no_colour_codes_and_json_logs_are_json() {
    let text = node_log(&[]);
    assert!(text.contains("node started"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file:\n{text}"
    );

    let json = node_log(&["--log-format", "json"]);
    let mut seen = Vec::new();
    for line in json.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
        seen.push(
            v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(seen.iter().any(|m| m == "node started"), "{seen:?}");
    assert!(seen.iter().any(|m| m == "node stopped cleanly"), "{seen:?}");
}
