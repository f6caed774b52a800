//! Reading a policy pack from its folder (or the embedded default) into the texts the decision
//! engine compiles. The engine itself reads nothing.

use std::path::{Path, PathBuf};

use tollgate_policy::{EntryConfig, PackSource};

/// The default pack, built into the binary so that Tollgate decides with no files at all.
pub const DEFAULT_PACK: [(&str, &str); 3] = [
    (
        "pack.toml",
        include_str!("../../../policies/default/pack.toml"),
    ),
    (
        "policies.cedar",
        include_str!("../../../policies/default/policies.cedar"),
    ),
    (
        "anonymous.cedar",
        include_str!("../../../policies/default/anonymous.cedar"),
    ),
];

/// Why a pack's files could not be read.
#[derive(Debug, thiserror::Error)]
#[error("policy pack `{}`: {source}", path.display())]
pub struct PackReadError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The embedded default pack.
pub fn embedded_default() -> PackSource {
    let mut source = PackSource {
        name: "default".to_owned(),
        ..PackSource::default()
    };
    for (file, text) in DEFAULT_PACK {
        if file == "pack.toml" {
            text.clone_into(&mut source.manifest);
        } else {
            source.policies.push((file.to_owned(), text.to_owned()));
        }
    }
    source.policies.sort();
    source
}

/// The pack in `dir`: `pack.toml`, every `*.cedar` in name order, and `tollgate.cedarschema`
/// when the pack brings its own.
pub fn read_pack(dir: &Path) -> Result<PackSource, PackReadError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| PackReadError { path, source }
    };
    let manifest_path = dir.join("pack.toml");
    let manifest = std::fs::read_to_string(&manifest_path).map_err(err(&manifest_path))?;
    let schema_path = dir.join("tollgate.cedarschema");
    let schema = match std::fs::read_to_string(&schema_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(err(&schema_path)(e)),
    };
    let mut policies = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "cedar") {
            let text = std::fs::read_to_string(&path).map_err(err(&path))?;
            policies.push((entry.file_name().to_string_lossy().into_owned(), text));
        }
    }
    policies.sort();
    let name = dir
        .canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pack".to_owned());
    Ok(PackSource {
        name,
        manifest,
        schema,
        policies,
        extra_tools: Vec::new(),
    })
}

/// The test-case files in `dir/tests`, in name order.
pub fn read_cases(dir: &Path) -> Result<Vec<(String, String)>, PackReadError> {
    let tests = dir.join("tests");
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| PackReadError { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&tests).map_err(err(&tests))? {
        let entry = entry.map_err(err(&tests))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&path).map_err(err(&path))?;
            files.push((entry.file_name().to_string_lossy().into_owned(), text));
        }
    }
    files.sort();
    Ok(files)
}

/// A stamp of the pack's files (names, sizes, modification times): it changes when any file
/// is written, added or removed.
pub fn stamp(dir: &Path) -> Option<Vec<(String, u64, std::time::SystemTime)>> {
    let mut stamp = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let meta = entry.metadata().ok()?;
        stamp.push((
            entry.file_name().to_string_lossy().into_owned(),
            meta.len(),
            meta.modified().ok()?,
        ));
    }
    stamp.sort();
    Some(stamp)
}

/// Adds the operator's own catalog entries to a pack's manifest.
pub fn with_tools(mut source: PackSource, tools: &[EntryConfig]) -> PackSource {
    source.extra_tools = tools.to_vec();
    source
}
