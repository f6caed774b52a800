//! Every configuration under `examples/` (and one folder down, beside the example services)
//! loads, and the policy it names compiles.

use std::path::Path;

/// The config's text with each secret read from `secret` instead of the environment: the
/// examples name environment variables a test run does not have.
fn with_secret_files(text: &str, secret: &Path) -> String {
    text.lines()
        .map(|line| {
            let mut line = line.to_owned();
            for key in ["token_env", "client_secret_env", " env"] {
                let file_key = key.replace("env", "file");
                if let Some(at) = line.find(&format!("{key} = \"")) {
                    let value_start = at + key.len() + 4;
                    if let Some(len) = line.get(value_start..).and_then(|rest| rest.find('"')) {
                        line.replace_range(
                            at..value_start + len + 1,
                            &format!("{file_key} = \"{}\"", secret.display()),
                        );
                    }
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let scratch = tempfile::tempdir().unwrap();
    let secret = scratch.path().join("secret");
    std::fs::write(&secret, "an-example-secret-for-tests").unwrap();
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            paths.push(path);
        }
    }
    let mut checked = 0;
    for path in paths {
        if path.extension().is_none_or(|e| e != "toml") || path.ends_with("Cargo.toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut config = match tollgate_proxy::Config::parse(&with_secret_files(&text, &secret)) {
            Ok(config) => config,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        // As `Config::load` does: the pack is relative to the file.
        if let Some(pack) = &config.policy.pack
            && pack.is_relative()
        {
            config.policy.pack = Some(path.parent().unwrap().join(pack));
        }
        // Keys are made on first use: in a folder of the test's, not the working tree.
        let state = tempfile::tempdir().unwrap();
        config.grants.state_dir = state.path().to_owned();
        if let Err(e) = tollgate_guard::guard::PolicyGuard::new(&config) {
            panic!("{}: {e}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the example configs in {}",
        dir.display()
    );
}
