//! Every configuration under `examples/` loads.

use std::path::Path;

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = tollgate_proxy::Config::load(&path) {
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
