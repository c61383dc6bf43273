//! docs/architecture.md stays true to the tree: every file under `crates/*/src` has a row in
//! its crate's table of the module map, every row names a file that exists, and no two files of
//! a crate import each other in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file under `dir`, as paths relative to it with `/` separators.
fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap();
                out.insert(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

/// The crates of the workspace (directories of `crates/` with a `src/`).
fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The files each crate's table in docs/architecture.md lists: the first cell of every row
/// under a heading that starts with the crate's path in backquotes.
fn map() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(workspace().join("docs/architecture.md")).unwrap();
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            current = line
                .strip_prefix("### `crates/")
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name.to_owned());
            if let Some(name) = &current {
                map.entry(name.clone()).or_default();
            }
            continue;
        }
        let (Some(name), Some(row)) = (&current, line.strip_prefix("| `")) else {
            continue;
        };
        if let Some((file, _)) = row.split_once("` |") {
            map.get_mut(name).unwrap().insert(file.to_owned());
        }
    }
    map
}

#[test]
fn every_source_file_is_in_the_module_map_and_every_row_exists() {
    let map = map();
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for name in crates() {
        let files = files_under(&workspace().join("crates").join(&name).join("src"));
        let listed = map.get(&name).cloned().unwrap_or_default();
        for f in files.difference(&listed) {
            missing.push(format!("crates/{name}/src/{f}"));
        }
        for f in listed.difference(&files) {
            stale.push(format!("crates/{name}/src/{f}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md has no row for these files; add each to its crate's table: {missing:#?}"
    );
    assert!(
        stale.is_empty(),
        "docs/architecture.md lists files that do not exist: {stale:#?}"
    );
}

/// The module path of a source file relative to its crate's `src/` (`lib.rs`: the root;
/// `a/mod.rs` and `a.rs`: `a`).
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source without comments and without a trailing `#[cfg(test)] mod tests`.
fn code_of(source: &str) -> String {
    let code = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    code.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// The module paths named after each `crate::` and `super::` in `code` (for a `{...}` group,
/// each item's first segment), resolved from `module`.
fn paths_named(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("::") {
        let before = &code[..at];
        let word_start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let (mut base, mut rest) = match &before[word_start..] {
            "crate" => (Vec::new(), &code[at + 2..]),
            "super" if word_start < 2 || &before[word_start - 2..word_start] != "::" => (
                module[..module.len().saturating_sub(1)].to_vec(),
                &code[at + 2..],
            ),
            _ => continue,
        };
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        loop {
            let (name, after) = ident(rest);
            if name.is_empty() {
                break;
            }
            base.push(name.to_owned());
            match after.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        if let Some(group) = rest.strip_prefix('{') {
            for item in group.split([',', '}']).take_while(|i| !i.contains(';')) {
                let (name, _) = ident(item.trim());
                if !name.is_empty() {
                    let mut p = base.clone();
                    p.push(name.to_owned());
                    out.push(p);
                }
            }
        }
        out.push(base);
    }
    out
}

/// The import circles among `files` (path relative to `src/` -> source) of one crate.
fn circles_in(files: &BTreeMap<String, String>) -> Vec<String> {
    let by_module: BTreeMap<Vec<String>, &String> =
        files.keys().map(|f| (module_of(f), f)).collect();
    let mut edges: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    for (f, source) in files {
        let module = module_of(f);
        for path in paths_named(&code_of(source), &module) {
            // The longest prefix of the path that is a file of the crate.
            let target = (1..=path.len())
                .rev()
                .find_map(|k| by_module.get(&path[..k]).copied());
            if let Some(t) = target
                && t != f
            {
                edges.entry(f).or_default().insert(t);
            }
        }
    }
    // A circle: a file reachable again from one of the files it imports.
    let mut circles = Vec::new();
    for (from, targets) in &edges {
        for t in targets {
            let mut seen = BTreeSet::new();
            let mut stack = vec![*t];
            while let Some(n) = stack.pop() {
                if !seen.insert(n) {
                    continue;
                }
                if n == *from {
                    circles.push(format!("{from} -> {t} -> ... -> {from}"));
                    break;
                }
                stack.extend(edges.get(n).into_iter().flatten().copied());
            }
        }
    }
    circles
}

#[test]
fn no_import_circles_between_files_of_a_crate() {
    let mut circles = Vec::new();
    for name in crates() {
        let src = workspace().join("crates").join(&name).join("src");
        let files: BTreeMap<String, String> = files_under(&src)
            .into_iter()
            .filter(|f| f.ends_with(".rs") && !f.starts_with("bin/"))
            .map(|f| {
                let source = std::fs::read_to_string(src.join(&f)).unwrap();
                (f, source)
            })
            .collect();
        for c in circles_in(&files) {
            circles.push(format!("crates/{name}/src: {c}"));
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let crate_of = |files: &[(&str, &str)]| -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect()
    };
    let circle = crate_of(&[
        ("lib.rs", "mod a;\nmod node;"),
        ("a.rs", "use crate::node::{b::B, c};"),
        ("node/mod.rs", "mod b;"),
        ("node/b.rs", "use super::super::a::A;"),
    ]);
    assert_eq!(circles_in(&circle).len(), 2, "{:?}", circles_in(&circle));
    let tree = crate_of(&[
        ("lib.rs", "mod a;\nmod node;"),
        ("a.rs", "use crate::node::{b::B, c}; // crate::lib"),
        ("node/mod.rs", "mod b;"),
        (
            "node/b.rs",
            "// use super::super::a::A;\nuse super::mod_item;",
        ),
    ]);
    assert!(circles_in(&tree).is_empty(), "{:?}", circles_in(&tree));
}
