//! The kernel boundary around a stdio upstream Tollgate starts: Landlock confines the child
//! to the folders it may use (the grant's paths, or the configured ones), its own install and
//! the system's read-only, and no TCP unless egress is granted. Tollgate's own files are never
//! in the ruleset. What path binding cannot see (a link swapped in after the decision, a
//! tool the catalog does not know) the kernel still refuses.
//!
//! The child is started through `tollgate sandbox-exec`, which restricts itself and then
//! executes the server: a ruleset is inherited across `exec` and can only narrow.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// How strictly the boundary is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    /// The server does not start unless every restriction is enforced.
    Grant,
    /// Whatever the kernel supports is enforced; what it does not is said at start.
    BestEffort,
}

/// What one child may reach; computed once, handed to `sandbox-exec` as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    pub mode: SandboxMode,
    /// Folders (or files) it may read and execute from.
    pub read: Vec<PathBuf>,
    /// Folders (or files) it may read and change.
    pub write: Vec<PathBuf>,
    /// Folders it may only list: those that hold Tollgate's own files, opened entry by entry
    /// above; their names show, nothing in them opens.
    #[serde(default)]
    pub list: Vec<PathBuf>,
    /// Whether it may open TCP connections (and bind ports).
    pub network: bool,
}

/// System folders every program needs to read: its libraries, its configuration, `/proc`.
const SYSTEM_READ: [&str; 10] = [
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys",
];
/// Devices every program may write to.
const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/urandom",
    "/dev/random",
];

impl Confinement {
    /// The confinement for `command`: `write` and `read` (the grant's or the configuration's
    /// folders), the system's folders and the command's own install read-only, with every
    /// folder of `protected` carved out of what would contain it and dropped where it lies
    /// inside one.
    pub fn derive(
        mode: SandboxMode,
        command: &str,
        read: &[PathBuf],
        write: &[PathBuf],
        network: bool,
        protected: &[PathBuf],
    ) -> Self {
        let mut readable: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        readable.extend(install_folders(command));
        readable.extend(read.iter().cloned());
        let mut writable: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
        writable.extend(write.iter().cloned());
        let mut list: Vec<PathBuf> = readable
            .iter()
            .chain(&writable)
            .filter(|path| protected.iter().any(|p| p.starts_with(path) && p != *path))
            .filter(|path| path.as_os_str() != "/")
            .cloned()
            .collect();
        list.sort();
        list.dedup();
        Self {
            mode,
            read: carve_all(readable, protected),
            write: carve_all(writable, protected),
            list,
            network,
        }
    }

    /// The program and arguments that start `command args` inside this confinement.
    pub fn launcher(
        &self,
        command: &str,
        args: &[String],
    ) -> std::io::Result<(PathBuf, Vec<OsString>)> {
        let exe = std::env::current_exe()?;
        let spec = serde_json::to_string(self).map_err(std::io::Error::other)?;
        let mut argv: Vec<OsString> = vec![
            "sandbox-exec".into(),
            "--spec".into(),
            spec.into(),
            "--".into(),
        ];
        argv.push(command.into());
        argv.extend(args.iter().map(OsString::from));
        Ok((exe, argv))
    }
}

/// Where `command` and the interpreter its `#!` line names are installed.
fn install_folders(command: &str) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    let Some(exe) = which(command) else {
        return folders;
    };
    folders.push(install_root(&exe));
    if let Some(interpreter) = shebang(&exe) {
        folders.push(install_root(&interpreter));
    }
    folders
}

/// `command` as the shell would find it, symlinks resolved.
fn which(command: &str) -> Option<PathBuf> {
    let found = if command.contains('/') {
        Some(PathBuf::from(command))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(command))
                .find(|candidate| candidate.is_file())
        })
    }?;
    std::fs::canonicalize(found).ok()
}

/// The interpreter a script's `#!` line names (`/usr/bin/env node` names `node`).
fn shebang(exe: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(exe).ok()?.read(&mut head).ok()?;
    let line = head.get(..n)?.strip_prefix(b"#!")?;
    let line = std::str::from_utf8(line.split(|b| *b == b'\n').next()?).ok()?;
    let mut words = line.split_whitespace();
    let interpreter = words.next()?;
    if interpreter.ends_with("/env") {
        let name = words.find(|w| !w.starts_with('-'))?;
        which(name)
    } else {
        which(interpreter)
    }
}

/// The folder a program's installation lives in: the outermost `node_modules`' parent, the
/// prefix above a `bin` folder, or the program's own folder.
fn install_root(exe: &Path) -> PathBuf {
    if let Some(modules) = exe
        .ancestors()
        .filter(|a| a.file_name().is_some_and(|n| n == "node_modules"))
        .last()
        && let Some(root) = modules.parent()
    {
        return root.to_owned();
    }
    let dir = exe.parent().unwrap_or(Path::new("/"));
    match (dir.file_name(), dir.parent()) {
        (Some(name), Some(prefix)) if name == "bin" => prefix.to_owned(),
        _ => dir.to_owned(),
    }
}

fn carve_all(paths: Vec<PathBuf>, protected: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = paths
        .into_iter()
        .flat_map(|path| carve(&path, protected))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `path` less the `protected` folders: nothing if it lies in one; where it holds one, each
/// entry beside the way down to it instead of `path` itself.
fn carve(path: &Path, protected: &[PathBuf]) -> Vec<PathBuf> {
    if protected.iter().any(|p| path.starts_with(p)) {
        return Vec::new();
    }
    if !protected.iter().any(|p| p.starts_with(path)) {
        return vec![path.to_owned()];
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .flat_map(|child| carve(&child, protected))
        .collect()
}

/// The base folder of a grant's path pattern: the part before the first segment with a
/// wildcard (`path:/srv/app/**` → `/srv/app`, `path:/srv/*/logs` → `/srv`).
pub fn pattern_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::from("/");
    for segment in pattern.split('/').filter(|s| !s.is_empty()) {
        if segment.contains(['*', '?']) {
            break;
        }
        base.push(segment);
    }
    base
}

/// Why a confinement could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox spec is not one Tollgate wrote: {0}")]
    Spec(String),
    #[error("the kernel boundary cannot be set up: {0}")]
    Ruleset(String),
    #[error(
        "the kernel enforces this sandbox only in part ({0}); `sandbox = \"grant\"` refuses to start the server (use \"best-effort\" to run it anyway)"
    )]
    Partial(String),
}

/// Restricts this process to `spec` (a [`Confinement`] as JSON) for good; a description of
/// what the kernel enforces.
pub fn restrict_self(spec: &str) -> Result<String, SandboxError> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, RestrictionStatus, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
    };
    let confinement: Confinement =
        serde_json::from_str(spec).map_err(|e| SandboxError::Spec(e.to_string()))?;
    let abi = ABI::V6;
    let level = match confinement.mode {
        SandboxMode::Grant => CompatLevel::HardRequirement,
        SandboxMode::BestEffort => CompatLevel::BestEffort,
    };
    let ruleset_error = |e: landlock::RulesetError| SandboxError::Ruleset(e.to_string());
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .map_err(ruleset_error)?;
    if !confinement.network {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(ruleset_error)?;
    }
    // Nor signals to, nor abstract sockets of, processes outside the boundary: Tollgate's.
    let ruleset = ruleset
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .map_err(ruleset_error)?;
    let status: RestrictionStatus = ruleset
        .create()
        .map_err(ruleset_error)?
        .add_rules(path_beneath_rules(
            &confinement.read,
            AccessFs::from_read(abi),
        ))
        .map_err(ruleset_error)?
        .add_rules(path_beneath_rules(
            &confinement.write,
            AccessFs::from_all(abi),
        ))
        .map_err(ruleset_error)?
        .add_rules(path_beneath_rules(&confinement.list, AccessFs::ReadDir))
        .map_err(ruleset_error)?
        .restrict_self()
        .map_err(ruleset_error)?;
    let described = format!(
        "Landlock {:?}: read {} folder(s), write {} folder(s), TCP {}",
        status.ruleset,
        confinement.read.len(),
        confinement.write.len(),
        if confinement.network {
            "allowed"
        } else {
            "denied"
        }
    );
    match (status.ruleset, confinement.mode) {
        (RulesetStatus::FullyEnforced, _) | (_, SandboxMode::BestEffort) => Ok(described),
        (_, SandboxMode::Grant) => Err(SandboxError::Partial(described)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_bases_stop_at_the_first_wildcard() {
        assert_eq!(pattern_base("/srv/app/**"), PathBuf::from("/srv/app"));
        assert_eq!(pattern_base("/srv/*/logs"), PathBuf::from("/srv"));
        assert_eq!(
            pattern_base("/srv/app/a.txt"),
            PathBuf::from("/srv/app/a.txt")
        );
        assert_eq!(pattern_base("/**"), PathBuf::from("/"));
    }

    #[test]
    fn protected_folders_are_carved_out_of_what_holds_them() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        for dir in [
            "work/src",
            "work/.state/tollgate",
            "work/.state/other",
            "work/docs",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("work/README"), "r").unwrap();
        let protected = [root.join("work/.state/tollgate")];
        let mut carved = carve(&root.join("work"), &protected);
        carved.sort();
        assert_eq!(
            carved,
            [
                root.join("work/.state/other"),
                root.join("work/README"),
                root.join("work/docs"),
                root.join("work/src"),
            ]
        );
        assert!(carve(&root.join("work/.state/tollgate/keys"), &protected).is_empty());
        assert_eq!(
            carve(&root.join("work/src"), &protected),
            [root.join("work/src")]
        );
    }

    #[test]
    fn a_node_package_is_installed_at_its_outermost_node_modules() {
        assert_eq!(
            install_root(Path::new(
                "/w/peers/node_modules/@mcp/server/node_modules/x/dist/index.js"
            )),
            PathBuf::from("/w/peers")
        );
        assert_eq!(
            install_root(Path::new("/opt/py/bin/mcp-server-time")),
            PathBuf::from("/opt/py")
        );
        assert_eq!(
            install_root(Path::new("/srv/tools/server")),
            PathBuf::from("/srv/tools")
        );
    }
}
