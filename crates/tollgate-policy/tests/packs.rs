//! Every shipped policy pack compiles, and every case in its `tests/` holds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use tollgate_policy::{Pack, PackSource, cases};

fn read_sorted(dir: &Path, ext: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_pack_passes_its_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let mut packs = 0;
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let dir = entry.path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("pack.toml")) else {
            continue;
        };
        packs += 1;
        let name = entry.file_name().to_string_lossy().into_owned();
        let pack = Pack::compile(&PackSource {
            name: name.clone(),
            manifest,
            schema: std::fs::read_to_string(dir.join("tollgate.cedarschema")).ok(),
            policies: read_sorted(&dir, "cedar"),
            extra_tools: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("pack `{name}` does not compile: {e}"));
        let files = read_sorted(&dir.join("tests"), "toml");
        assert!(!files.is_empty(), "pack `{name}` has no test cases");
        let mut failures = Vec::new();
        let mut count = 0;
        for (file, text) in files {
            let results = cases::run_file(&pack, &text)
                .unwrap_or_else(|e| panic!("{name}/tests/{file}: {e}"));
            for result in results {
                count += 1;
                if let Some(failure) = result.failure {
                    failures.push(format!("{name}/tests/{file}: {}: {failure}", result.name));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(count >= 5, "pack `{name}` has only {count} cases");
    }
    assert!(packs >= 1, "no packs found under {}", root.display());
}
