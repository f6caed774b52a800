//! Every configuration under `examples/` loads, and the policy it names compiles.

use std::path::Path;

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let mut config = match tollgate_proxy::Config::load(&path) {
                Ok(config) => config,
                Err(e) => panic!("{}: {e}", path.display()),
            };
            // Keys are made on first use: in a folder of the test's, not the working tree.
            let state = tempfile::tempdir().unwrap();
            config.grants.state_dir = state.path().to_owned();
            if let Err(e) = tollgate_proxy::guard::PolicyGuard::new(&config) {
                panic!("{}: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 1,
        "no example configs found in {}",
        dir.display()
    );
}
