//! The shape of the code, checked: which crate may depend on which, what the shipped binary
//! leaves out, and the imports between each crate's modules, which must form a tree. Circles
//! that still exist are listed in `KNOWN_CIRCLES`; a new circle, or a known one that grows,
//! fails, and one that shrinks must be written down smaller.

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

/// Module circles that remain, by crate: each is a set of top-level modules whose imports reach
/// each other. To be broken; never to grow.
const KNOWN_CIRCLES: &[(&str, &[&str])] = &[
    ("tollgate-policy", &["decide", "pack", "recorded", "tool"]),
    (
        "tollgate-proxy",
        &[
            "fast", "front", "hub", "relay", "screen", "suspend", "upstream",
        ],
    ),
];

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

/// The top-level modules of the crate whose sources are in `src`, with the top-level modules
/// each one's code names (`crate::name`, or a name in `use crate::{…}`), tests left out.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    let mut folders = vec![src.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.trim_end_matches(".rs").to_owned()
        })
        .filter(|n| !["lib", "main", "bin"].contains(&n.as_str()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
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
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("\n#[cfg(test)]").next().unwrap_or_default();
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c, d::{e, f}}`: the names at the group's top level.
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
        let named = named
            .into_iter()
            .map(|n| n.trim().split("::").next().unwrap_or_default().to_owned())
            .filter(|n| modules.contains(n) && *n != top)
            .collect::<Vec<_>>();
        edges.entry(top).or_default().extend(named);
    }
    edges
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
fn each_crates_modules_import_each_other_as_a_tree_but_for_the_known_circles() {
    let crates = root().join("crates");
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        checked += 1;
        let known: BTreeSet<String> = KNOWN_CIRCLES
            .iter()
            .filter(|(c, _)| *c == name)
            .flat_map(|(_, m)| m.iter().map(|s| (*s).to_owned()))
            .collect();
        let found = circles(&imports(&src));
        assert!(
            !found.is_empty() || known.is_empty(),
            "{name}: the known circle {known:?} is gone: take it off the list"
        );
        for circle in found {
            assert!(
                circle.is_subset(&known),
                "{name}: modules {circle:?} import each other; break the circle (known: {known:?})"
            );
            assert_eq!(
                circle, known,
                "{name}: the known circle shrank to {circle:?}: write it down smaller"
            );
        }
    }
    assert!(checked >= 7, "only {checked} crates found");
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
