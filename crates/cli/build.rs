//! Names the commit the binary is built from, for `dynamokv --version`: `git rev-parse` of the
//! checkout, or "unknown commit" when built outside a git checkout (e.g. from a source archive).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .map(|c| format!("commit {c}"))
        .unwrap_or_else(|| "unknown commit".to_owned());
    println!("cargo:rustc-env=DYNAMOKV_COMMIT={commit}");
    for path in [
        "../../.git/HEAD",
        "../../.git/refs/heads",
        "../../.git/packed-refs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
