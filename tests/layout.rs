//! The shape of the code, checked: which crate may depend on which, what the shipped binary
//! leaves out, and the imports between each crate's modules, which must form a tree: in every
//! folder of a crate's sources, no module names one that names it back, directly or through
//! others.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Each workspace crate's normal dependencies.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let metadata: serde_json::Value =
        serde_json::from_str(&cargo(&["metadata", "--format-version", "1", "--no-deps"])).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn crates_depend_on_each_other_as_the_architecture_says() {
    let deps = dependencies();
    let of = |name: &str| deps.get(name).unwrap_or_else(|| panic!("no crate {name}"));
    // The decision engine is pure: no runtime, no network, no files of its own.
    for forbidden in ["tokio", "reqwest", "rmcp", "axum", "hyper"] {
        assert!(
            !of("tollgate-policy").contains(forbidden),
            "tollgate-policy depends on {forbidden}"
        );
    }
    // The relay knows nothing of the guard: the guard plugs into its interception seam.
    assert!(!of("tollgate-proxy").contains("tollgate-guard"));
    assert!(of("tollgate-guard").contains("tollgate-proxy"));
    // Only the binary brings the demo's servers, and only as a feature.
    for crate_name in [
        "tollgate-proxy",
        "tollgate-guard",
        "tollgate-policy",
        "tollgate-mint",
    ] {
        assert!(
            !of(crate_name).contains("tollgate-testkit"),
            "{crate_name} depends on the testkit"
        );
    }
}

#[test]
fn the_binary_without_its_demo_leaves_the_test_servers_and_the_example_api_out() {
    let tree = cargo(&[
        "tree",
        "-p",
        "tollgate-cli",
        "--no-default-features",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--offline",
    ]);
    for absent in ["tollgate-testkit", "payments-api"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(&format!("{absent} "))),
            "{absent} is in the binary without the demo feature"
        );
    }
    let with_demo = cargo(&[
        "tree",
        "-p",
        "tollgate-cli",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--offline",
    ]);
    assert!(
        with_demo
            .lines()
            .any(|l| l.starts_with("tollgate-testkit ")),
        "the check would see the testkit where it is"
    );
}

/// The modules of one folder of a crate's sources (`src`, or a module's folder below it), with
/// the sibling modules each one's code names, tests left out. `module` is the folder's path
/// from the crate root (`crate::` for `src`, `crate::front::` for `src/front`); a file directly
/// in the folder may also name its siblings through `super::`.
fn imports_in(folder: &Path, module: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    let mut folders = vec![folder.to_owned()];
    while let Some(next) = folders.pop() {
        for entry in std::fs::read_dir(next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let modules: BTreeSet<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.trim_end_matches(".rs").to_owned()
        })
        .filter(|n| !["lib", "main", "bin", "mod"].contains(&n.as_str()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(folder).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if !modules.contains(&top) {
            continue;
        }
        let mut prefixes = vec![module];
        if relative.components().count() == 1 {
            prefixes.push("super::");
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("\n#[cfg(test)]").next().unwrap_or_default();
        let mut named = BTreeSet::new();
        for prefix in prefixes {
            named.extend(names_after(code, prefix));
        }
        let named = named
            .into_iter()
            .map(|n| n.trim().split("::").next().unwrap_or_default().to_owned())
            .filter(|n| modules.contains(n) && *n != top)
            .collect::<Vec<_>>();
        edges.entry(top).or_default().extend(named);
    }
    edges
}

/// The names `code` reaches through `prefix`: `prefix name`, or each name at the top level of
/// `prefix{a, b::c, d::{e, f}}`. A prefix that is the tail of a longer path
/// (`super::super::`, `my_crate::`) does not count, but for `self::super::`. Glob imports
/// (`use super::*`) name nothing in particular and are not followed.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let before = &code[..at];
        let tail_of_a_path = before
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        // `self::super::` is `super::`; any other path before the prefix is somewhere else.
        let through_self = before.strip_suffix("self::").is_some_and(|b| {
            !b.chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        });
        if tail_of_a_path && !through_self {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        named.insert(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            named.insert(item);
        } else {
            named.insert(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    named
}

/// The top-level modules of the crate whose sources are in `src`, with the top-level modules
/// each one's code names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    imports_in(src, "crate::")
}

/// Every folder of modules under `src` (itself included), with its path from the crate root.
fn module_folders(src: &Path) -> Vec<(PathBuf, String)> {
    let mut found = vec![(src.to_owned(), "crate::".to_owned())];
    let mut next = 0;
    while let Some((folder, module)) = found.get(next).cloned() {
        next += 1;
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                found.push((path, format!("{module}{name}::")));
            }
        }
    }
    found
}

/// The sets of modules that reach each other (strongly connected, more than one module).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.to_owned()];
        while let Some(m) = next.pop() {
            for to in edges.get(&m).into_iter().flatten() {
                if seen.insert(to.clone()) {
                    next.push(to.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for (m, from_m) in &reached {
        let circle: BTreeSet<String> = from_m
            .iter()
            .filter(|o| reached.get(o).is_some_and(|r| r.contains(*m)))
            .cloned()
            .collect();
        if circle.len() > 1 && !found.contains(&circle) {
            found.push(circle);
        }
    }
    found
}

#[test]
fn each_crates_modules_import_each_other_as_a_tree() {
    let crates = root().join("crates");
    let mut checked = 0;
    let mut folders = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        checked += 1;
        for (folder, module) in module_folders(&src) {
            folders += 1;
            let found = circles(&imports_in(&folder, &module));
            assert!(
                found.is_empty(),
                "{name}: modules of {module} import each other: {found:?}; break the circle"
            );
        }
    }
    assert!(checked >= 7, "only {checked} crates found");
    assert!(
        folders > checked,
        "no module folders below the crates' roots were checked"
    );
}

#[test]
fn the_import_check_finds_a_circle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::{b::X, c};").unwrap();
    std::fs::write(dir.path().join("b.rs"), "fn f() { crate::a::g() }").unwrap();
    std::fs::write(
        dir.path().join("c.rs"),
        "pub struct C;\n#[cfg(test)]\nmod tests { use crate::a; }",
    )
    .unwrap();
    let edges = imports(dir.path());
    assert_eq!(
        circles(&edges),
        [BTreeSet::from(["a".to_owned(), "b".to_owned()])],
        "{edges:?}"
    );
}

#[test]
fn the_import_check_finds_a_circle_inside_a_module_folder() {
    let dir = tempfile::tempdir().unwrap();
    let front = dir.path().join("front");
    std::fs::create_dir(&front).unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod front;").unwrap();
    std::fs::write(
        dir.path().join("front.rs"),
        "mod http; mod replay; mod stdio;",
    )
    .unwrap();
    std::fs::write(front.join("http.rs"), "use super::replay::Streams;").unwrap();
    std::fs::write(
        front.join("replay.rs"),
        "fn f() { crate::front::http::g() }",
    )
    .unwrap();
    // `super::super::` and a crate of another name are not this folder's modules;
    // `self::super::` is.
    std::fs::write(
        front.join("stdio.rs"),
        "use other_crate::front::http; fn f() { super::super::http::g() }",
    )
    .unwrap();
    std::fs::write(front.join("ws.rs"), "fn f() { self::super::replay::g() }").unwrap();
    let folders = module_folders(dir.path());
    let (folder, module) = folders.iter().find(|(_, m)| m == "crate::front::").unwrap();
    let edges = imports_in(folder, module);
    assert_eq!(
        circles(&edges),
        [BTreeSet::from(["http".to_owned(), "replay".to_owned()])],
        "{edges:?}"
    );
    assert!(
        !edges.get("stdio").is_some_and(|e| e.contains("http")),
        "{edges:?}"
    );
}
