use super::*;

fn config(pack: &std::path::Path, state: &std::path::Path) -> Config {
    Config::parse(&format!(
        "[front]\nstdio = true\n[policy]\npack = \"{}\"\n[grants]\nstate_dir = \"{}\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
        pack.display(),
        state.display()
    ))
    .unwrap()
}

fn write(pack: &std::path::Path, policies: &str) {
    std::fs::create_dir_all(pack).unwrap();
    std::fs::write(
        pack.join("pack.toml"),
        "purposes = [\"p\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n",
    )
    .unwrap();
    std::fs::write(pack.join("rules.cedar"), policies).unwrap();
}

const GOOD: &str = "@id(\"reads\") permit (principal, action == Action::\"read\", resource);";
const SHADOWED: &str = "@id(\"reads\") permit (principal, action == Action::\"read\", resource);\n@id(\"nothing\") forbid (principal, action, resource);";

#[test]
fn a_session_that_ends_outside_a_runtime_is_forgotten_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (pack, state) = (dir.path().join("pack"), dir.path().join("state"));
    write(&pack, GOOD);
    let guard = PolicyGuard::new(&config(&pack, &state)).unwrap();
    guard.session_ended(7);
}

#[test]
fn a_version_that_fails_policy_check_is_rejected_whole_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (pack, state) = (dir.path().join("pack"), dir.path().join("state"));
    write(&pack, SHADOWED);
    let err = PolicyGuard::new(&config(&pack, &state))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fails `policy check`") && err.contains("shadowed"),
        "{err}"
    );

    write(&pack, GOOD);
    let guard = PolicyGuard::new(&config(&pack, &state)).unwrap();
    let serving = guard.version();
    for broken in [
        SHADOWED,
        "permit (principal, action, resource) when { context.nope };",
        "",
    ] {
        write(&pack, broken);
        assert!(guard.reload().is_err(), "{broken}");
        assert_eq!(guard.version(), serving, "the old version keeps deciding");
    }
    write(
        &pack,
        &format!("{GOOD}\n// a comment changes the version\n"),
    );
    let reloaded = guard.reload().unwrap();
    assert_ne!(reloaded, serving);
    assert_eq!(guard.version(), reloaded);
}
