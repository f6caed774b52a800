//! Paths as this machine's filesystem resolves them, for upstreams Tollgate runs itself, and
//! the folders of Tollgate's own that no call may reach.

use std::{
    collections::VecDeque,
    ffi::OsString,
    io,
    path::{Component, Path, PathBuf},
};

use tollgate_policy::{ActionClass, PathView, Resource};

/// Symlinks followed in one path before it is refused, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// The local filesystem: a path is resolved component by component, every symlink followed
/// (a dangling one too: a write through it creates its target), as `open` would.
///
/// What remains is a race: a link made between this check and the upstream's `open` is not
/// seen. The kernel boundary a sandboxed upstream runs in closes it; see ARCHITECTURE.md.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalPaths;

impl PathView for LocalPaths {
    fn resolve(&self, lexical: &str) -> Result<String, String> {
        let resolved = resolve(Path::new(lexical))?;
        resolved
            .into_os_string()
            .into_string()
            .map_err(|_| "it resolves to a name that is not UTF-8".to_owned())
    }
}

/// `path` (absolute) with every symlink on the way followed; the part below the first
/// component that does not exist is taken as written.
pub fn resolve(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err("not an absolute path".to_owned());
    }
    let mut pending: VecDeque<OsString> = parts(path).collect();
    let mut resolved = PathBuf::from("/");
    let mut links = 0usize;
    let mut missing = false;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            if missing {
                // The kernel would fail on the missing folder; so does the binding.
                return Err("it climbs out of a folder that does not exist".to_owned());
            }
            // `resolved` holds no symlink, so its parent is the physical one.
            resolved.pop();
            continue;
        }
        let next = resolved.join(&part);
        if missing {
            resolved = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err("too many levels of symbolic links".to_owned());
                }
                let target = std::fs::read_link(&next).map_err(describe)?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for part in parts(&target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(part);
                }
            }
            Ok(_) => resolved = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = true;
                resolved = next;
            }
            Err(e) => return Err(describe(e)),
        }
    }
    Ok(resolved)
}

/// The named components of `path`, `..` kept (a link's target is resolved as the kernel does).
fn parts(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

fn describe(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "a folder on the way cannot be read".to_owned(),
        io::ErrorKind::NotADirectory => "a file on the way is not a folder".to_owned(),
        _ => e.kind().to_string(),
    }
}

/// Tollgate's own folders (state, keys, trail, packs, configuration), resolved: no call whose
/// resource lies in one is forwarded, whatever the grant and the pack say.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    folders: Vec<PathBuf>,
}

/// The step named in a decision that refused a call for reaching Tollgate's own files.
pub const SELF_STEP: &str = "tollgate:self";

impl Protected {
    /// `folders` as this filesystem resolves them (a relative one against the working
    /// directory).
    pub fn new<'a>(folders: impl IntoIterator<Item = &'a Path>) -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut resolved: Vec<PathBuf> = folders
            .into_iter()
            .map(|folder| {
                let absolute = cwd.join(folder);
                // A folder that cannot be resolved is still protected as written.
                resolve(&absolute).unwrap_or(absolute)
            })
            .collect();
        resolved.sort();
        resolved.dedup();
        Self { folders: resolved }
    }

    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// Why a call of `class` touching `resources` must not go ahead, if it must not: a path in
    /// one of the folders, or (for anything but a read) a folder that holds one, which a move
    /// or a delete would take along.
    pub fn refuses(&self, class: ActionClass, resources: &[Resource]) -> Option<String> {
        resources
            .iter()
            .filter(|r| r.kind == "path")
            .find_map(|resource| {
                let path = Path::new(&resource.value);
                self.folders.iter().find_map(|folder| {
                    if path.starts_with(folder) {
                        Some(format!(
                            "`{}` lies in Tollgate's own files, which no call may touch",
                            resource.value
                        ))
                    } else if class != ActionClass::Read && folder.starts_with(path) {
                        Some(format!(
                            "`{}` holds Tollgate's own files, which no call may change",
                            resource.value
                        ))
                    } else {
                        None
                    }
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn text(path: &Path) -> String {
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn links_to_files_and_folders_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("granted")).unwrap();
        std::fs::create_dir_all(root.join("private")).unwrap();
        std::fs::write(root.join("private/secret.txt"), "s").unwrap();
        symlink(root.join("private/secret.txt"), root.join("granted/file")).unwrap();
        symlink("../private", root.join("granted/dir")).unwrap();
        let view = LocalPaths;
        assert_eq!(
            view.resolve(&text(&root.join("granted/file"))).unwrap(),
            text(&root.join("private/secret.txt"))
        );
        assert_eq!(
            view.resolve(&text(&root.join("granted/dir/secret.txt")))
                .unwrap(),
            text(&root.join("private/secret.txt"))
        );
        // What does not exist yet is taken as written, below the part that does.
        assert_eq!(
            view.resolve(&text(&root.join("granted/dir/new/deeper.txt")))
                .unwrap(),
            text(&root.join("private/new/deeper.txt"))
        );
    }

    #[test]
    fn a_dangling_link_resolves_to_what_a_write_would_create() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("granted")).unwrap();
        symlink(root.join("private/new.txt"), root.join("granted/dangling")).unwrap();
        assert_eq!(
            LocalPaths
                .resolve(&text(&root.join("granted/dangling")))
                .unwrap(),
            text(&root.join("private/new.txt"))
        );
    }

    #[test]
    fn loops_and_climbs_out_of_missing_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        symlink(root.join("b"), root.join("a")).unwrap();
        symlink(root.join("a"), root.join("b")).unwrap();
        assert!(LocalPaths.resolve(&text(&root.join("a/x"))).is_err());
        symlink("missing/../../etc", root.join("c")).unwrap();
        assert!(LocalPaths.resolve(&text(&root.join("c/passwd"))).is_err());
        std::fs::write(root.join("file"), "").unwrap();
        assert!(LocalPaths.resolve(&text(&root.join("file/x"))).is_err());
    }

    #[test]
    fn protected_folders_refuse_what_lies_in_them_and_changes_to_what_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let state = root.join("home/.local/state/tollgate");
        std::fs::create_dir_all(&state).unwrap();
        let protected = Protected::new([state.as_path()]);
        let path = |p: &Path| Resource {
            kind: "path".into(),
            value: text(p),
        };
        let key = [path(&state.join("grant-signing.key"))];
        assert!(protected.refuses(ActionClass::Read, &key).is_some());
        assert!(protected.refuses(ActionClass::Write, &key).is_some());
        let home = [path(&root.join("home"))];
        assert!(protected.refuses(ActionClass::Read, &home).is_none());
        assert!(protected.refuses(ActionClass::Write, &home).is_some());
        // A sibling whose name merely starts alike is not inside.
        let sibling = [path(&root.join("home/.local/state/tollgate-other/x"))];
        assert!(protected.refuses(ActionClass::Write, &sibling).is_none());
        let other = [Resource {
            kind: "customer".into(),
            value: text(&state),
        }];
        assert!(protected.refuses(ActionClass::Write, &other).is_none());
    }
}
