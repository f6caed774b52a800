//! Binding a call's arguments to the resources it touches: `path:` values normalized
//! lexically against the upstream's root (a `..` that climbs out is refused, never clamped),
//! then resolved as the upstream's filesystem will resolve them where a [`PathView`] is given,
//! `url:` and `host:` from parsed http(s) URLs, and plain identifiers such as `customer:42`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The kind of resource an argument names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ResourceKind {
    /// A filesystem path.
    Path,
    /// An http(s) URL; binds the URL and its host.
    Url,
    /// An identifier of a named kind (`customer`, `repo`, …).
    Named(String),
}

impl<'de> Deserialize<'de> for ResourceKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "path" => Ok(Self::Path),
            "url" => Ok(Self::Url),
            "host" => Err(serde::de::Error::custom(
                "`host` is bound from a `url` argument; name the argument `url`",
            )),
            other
                if !other.is_empty()
                    && other.len() <= 32
                    && other.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
                    }) =>
            {
                Ok(Self::Named(other.to_owned()))
            }
            other => Err(serde::de::Error::custom(format!(
                "a resource kind such as `path`, `url` or `customer` (lowercase letters, digits, `_`, `-`), not `{other}`"
            ))),
        }
    }
}

/// One resource a call touches, shown as `kind:value`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Resource {
    pub kind: String,
    pub value: String,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Why an argument could not be bound; the call is denied with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("argument `{argument}`: expected {expected}")]
    Type {
        argument: String,
        expected: &'static str,
    },
    #[error("argument `{argument}`: the path climbs out of `{root}`")]
    EscapesRoot { argument: String, root: String },
    #[error(
        "argument `{argument}`: a relative path needs the upstream's root, and none is configured"
    )]
    NoRoot { argument: String },
    #[error("argument `{argument}`: the path climbs above `/`")]
    AboveFilesystemRoot { argument: String },
    #[error("argument `{argument}`: not a URL ({reason})")]
    BadUrl { argument: String, reason: String },
    #[error("argument `{argument}`: scheme `{scheme}` is not allowed (http and https are)")]
    Scheme { argument: String, scheme: String },
    #[error("argument `{argument}`: {reason}")]
    BadValue {
        argument: String,
        reason: &'static str,
    },
    #[error("argument `{argument}`: the path cannot be resolved ({reason})")]
    Unresolvable { argument: String, reason: String },
}

/// How the filesystem an upstream runs on resolves a path. The engine does no IO: the proxy
/// hands it a view of the local filesystem for an upstream it runs itself, and replay the
/// answers recorded when the call was decided.
pub trait PathView: Sync + fmt::Debug {
    /// `lexical` (absolute, already normalized) as the filesystem will open it: every symlink
    /// on the way followed. `Err` with a short reason when it cannot be told.
    fn resolve(&self, lexical: &str) -> Result<String, String>;
}

/// The resources a call names, and the paths whose resolution differed from their lexical form
/// (lexical, resolved): what a record keeps so that replay sees the same filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bound {
    pub resources: Vec<Resource>,
    pub resolved: Vec<(String, String)>,
}

/// Longest identifier accepted as a named resource.
const MAX_NAMED: usize = 256;

/// The resources `arguments` name under `bindings` (argument → kind). An absent argument
/// binds nothing; an array binds each element. `root` is the upstream's root folder for
/// relative paths.
pub fn bind(
    arguments: Option<&Map<String, Value>>,
    bindings: &[(String, ResourceKind)],
    root: Option<&str>,
) -> Result<Vec<Resource>, BindError> {
    bind_seen(arguments, bindings, root, None).map(|bound| bound.resources)
}

/// [`bind`], with every path then resolved through `paths` where one is given: the resolved
/// path is the resource, so the grant, the policies and the trail see what the upstream will
/// open, not what the agent wrote.
pub fn bind_seen(
    arguments: Option<&Map<String, Value>>,
    bindings: &[(String, ResourceKind)],
    root: Option<&str>,
    paths: Option<&dyn PathView>,
) -> Result<Bound, BindError> {
    let mut bound = Bound::default();
    let Some(arguments) = arguments else {
        return Ok(bound);
    };
    let mut binder = Binder {
        root,
        paths,
        out: &mut bound,
    };
    for (argument, kind) in bindings {
        if let (Some((_, _)), ResourceKind::Named(_)) = (argument.split_once('/'), kind) {
            if let Some(joined) = join_parts(arguments, argument)? {
                binder.bind_one(argument, kind, &Value::String(joined))?;
            }
            continue;
        }
        let values: Vec<&Value> = match arguments.get(argument) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items.iter().collect(),
            Some(value) => vec![value],
        };
        for value in values {
            binder.bind_one(argument, kind, value)?;
        }
    }
    bound.resources.sort();
    bound.resources.dedup();
    bound.resolved.sort();
    bound.resolved.dedup();
    Ok(bound)
}

/// The value of a composite binding such as `owner/repo`: each argument's value, joined by
/// `/`. None when no part is given; a refusal when only some are, or a part holds a `/`.
fn join_parts(
    arguments: &Map<String, Value>,
    composite: &str,
) -> Result<Option<String>, BindError> {
    let mut parts = Vec::new();
    for name in composite.split('/') {
        match arguments.get(name) {
            None | Some(Value::Null) => parts.push(None),
            Some(Value::String(s)) if !s.contains('/') => parts.push(Some(s.clone())),
            Some(Value::Number(n)) => parts.push(Some(n.to_string())),
            Some(_) => {
                return Err(BindError::Type {
                    argument: name.to_owned(),
                    expected: "a string without `/`, or a number",
                });
            }
        }
    }
    if parts.iter().all(Option::is_none) {
        return Ok(None);
    }
    match parts.into_iter().collect::<Option<Vec<String>>>() {
        Some(parts) => Ok(Some(parts.join("/"))),
        None => Err(BindError::BadValue {
            argument: composite.to_owned(),
            reason: "every part of this resource must be given, or none",
        }),
    }
}

struct Binder<'a> {
    root: Option<&'a str>,
    paths: Option<&'a dyn PathView>,
    out: &'a mut Bound,
}

impl Binder<'_> {
    fn bind_one(
        &mut self,
        argument: &str,
        kind: &ResourceKind,
        value: &Value,
    ) -> Result<(), BindError> {
        let type_error = |expected| BindError::Type {
            argument: argument.to_owned(),
            expected,
        };
        match kind {
            ResourceKind::Path => {
                let text = value.as_str().ok_or_else(|| type_error("a path string"))?;
                let lexical = normalize_path(argument, text, self.root)?;
                let value = match self.paths {
                    None => lexical,
                    Some(paths) => {
                        let resolved =
                            paths
                                .resolve(&lexical)
                                .map_err(|reason| BindError::Unresolvable {
                                    argument: argument.to_owned(),
                                    reason,
                                })?;
                        if resolved != lexical {
                            self.out.resolved.push((lexical, resolved.clone()));
                        }
                        resolved
                    }
                };
                self.out.resources.push(Resource {
                    kind: "path".into(),
                    value,
                });
            }
            ResourceKind::Url => {
                let text = value.as_str().ok_or_else(|| type_error("a URL string"))?;
                let url = url::Url::parse(text).map_err(|e| BindError::BadUrl {
                    argument: argument.to_owned(),
                    reason: e.to_string(),
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(BindError::Scheme {
                        argument: argument.to_owned(),
                        scheme: url.scheme().to_owned(),
                    });
                }
                let host = url.host_str().ok_or_else(|| BindError::BadUrl {
                    argument: argument.to_owned(),
                    reason: "no host".into(),
                })?;
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(BindError::BadValue {
                        argument: argument.to_owned(),
                        reason: "a URL with credentials in it is refused",
                    });
                }
                self.out.resources.push(Resource {
                    kind: "host".into(),
                    value: host.to_ascii_lowercase(),
                });
                self.out.resources.push(Resource {
                    kind: "url".into(),
                    value: url.to_string(),
                });
            }
            ResourceKind::Named(name) => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(type_error("a string or number identifier")),
                };
                if text.is_empty() || text.len() > MAX_NAMED || text.chars().any(char::is_control) {
                    return Err(BindError::BadValue {
                        argument: argument.to_owned(),
                        reason: "an identifier of 1 to 256 printable characters",
                    });
                }
                self.out.resources.push(Resource {
                    kind: name.clone(),
                    value: text,
                });
            }
        }
        Ok(())
    }
}

/// Lexical normalization: `.` dropped, `..` pops one component. A relative path is taken
/// against `root` and may not climb out of it; an absolute path may not climb above `/`.
/// Symlinks are not resolved (no IO here): the upstream's own sandbox still applies.
fn normalize_path(argument: &str, text: &str, root: Option<&str>) -> Result<String, BindError> {
    if text.contains('\0') {
        return Err(BindError::BadValue {
            argument: argument.to_owned(),
            reason: "a path with a NUL byte is refused",
        });
    }
    // A server may expand these (server-filesystem takes `~` to the user's home) where the
    // binding would see a folder of that name: what is bound must be what is opened.
    if text.starts_with('~') || text.split('/').any(|part| part.starts_with('$')) {
        return Err(BindError::BadValue {
            argument: argument.to_owned(),
            reason: "a path starting with `~` or holding a `$` variable is refused: give the path itself",
        });
    }
    let (base, rest, floor_is_root) = if text.starts_with('/') {
        (String::new(), text, false)
    } else {
        let root = root.ok_or_else(|| BindError::NoRoot {
            argument: argument.to_owned(),
        })?;
        (root.trim_end_matches('/').to_owned(), text, true)
    };
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    let floor = parts.len();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if floor_is_root && parts.len() <= floor {
                    return Err(BindError::EscapesRoot {
                        argument: argument.to_owned(),
                        root: root.unwrap_or_default().to_owned(),
                    });
                }
                if parts.pop().is_none() {
                    return Err(BindError::AboveFilesystemRoot {
                        argument: argument.to_owned(),
                    });
                }
            }
            other => parts.push(other),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn path(binding: &str) -> Vec<(String, ResourceKind)> {
        vec![(binding.to_owned(), ResourceKind::Path)]
    }

    #[test]
    fn home_and_variables_are_refused_not_bound_as_folder_names() {
        for text in [
            "~",
            "~/.ssh/id_ed25519",
            "~root/.bashrc",
            "$HOME/.env",
            "/srv/${X}/a",
        ] {
            let err = bind(Some(&args(json!({"p": text}))), &path("p"), Some("/srv")).unwrap_err();
            assert!(matches!(err, BindError::BadValue { .. }), "{text}: {err}");
        }
        // Only at the start of a segment: a name holding them is just a name.
        let bound = bind(Some(&args(json!({"p": "/srv/a~b/c$d"}))), &path("p"), None).unwrap();
        assert_eq!(bound[0].value, "/srv/a~b/c$d");
    }

    /// A filesystem where `/srv/app/link` leads to `/private`.
    #[derive(Debug)]
    struct Linked;

    impl PathView for Linked {
        fn resolve(&self, lexical: &str) -> Result<String, String> {
            if lexical == "/srv/app/loop" {
                return Err("too many levels of symbolic links".into());
            }
            Ok(match lexical.strip_prefix("/srv/app/link") {
                Some(rest) => format!("/private{rest}"),
                None => lexical.to_owned(),
            })
        }
    }

    #[test]
    fn a_view_of_the_filesystem_binds_what_is_opened_and_keeps_what_it_changed() {
        let bound = bind_seen(
            Some(&args(json!({"p": ["link/secret.txt", "plain.txt"]}))),
            &path("p"),
            Some("/srv/app"),
            Some(&Linked),
        )
        .unwrap();
        let shown: Vec<String> = bound.resources.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["path:/private/secret.txt", "path:/srv/app/plain.txt"]
        );
        assert_eq!(
            bound.resolved,
            [(
                "/srv/app/link/secret.txt".to_owned(),
                "/private/secret.txt".to_owned()
            )]
        );
        let err = bind_seen(
            Some(&args(json!({"p": "loop"}))),
            &path("p"),
            Some("/srv/app"),
            Some(&Linked),
        )
        .unwrap_err();
        assert!(matches!(err, BindError::Unresolvable { .. }), "{err}");
    }

    #[test]
    fn relative_paths_are_taken_against_the_root() {
        let bound = bind(
            Some(&args(json!({"p": "src/./lib/../main.rs"}))),
            &path("p"),
            Some("/srv/app/"),
        )
        .unwrap();
        assert_eq!(bound[0].to_string(), "path:/srv/app/src/main.rs");
    }

    #[test]
    fn climbing_out_of_the_root_is_refused_not_clamped() {
        let err = bind(
            Some(&args(json!({"p": "../etc/passwd"}))),
            &path("p"),
            Some("/srv/app"),
        )
        .unwrap_err();
        assert!(matches!(err, BindError::EscapesRoot { .. }), "{err}");
        let err = bind(
            Some(&args(json!({"p": "a/../../x"}))),
            &path("p"),
            Some("/srv/app"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("climbs out of `/srv/app`"),
            "{err}"
        );
    }

    #[test]
    fn absolute_paths_normalize_and_cannot_climb_above_slash() {
        let bound = bind(
            Some(&args(json!({"p": "/srv/app/../etc/x"}))),
            &path("p"),
            Some("/srv/app"),
        )
        .unwrap();
        assert_eq!(
            bound[0].value, "/srv/etc/x",
            "outside the root, for the grant to judge"
        );
        assert!(bind(Some(&args(json!({"p": "/../x"}))), &path("p"), None).is_err());
        assert!(bind(Some(&args(json!({"p": "rel"}))), &path("p"), None).is_err());
        assert!(bind(Some(&args(json!({"p": "/a\u{0}b"}))), &path("p"), None).is_err());
    }

    #[test]
    fn urls_bind_url_and_host_and_only_http() {
        let bindings = vec![("u".to_owned(), ResourceKind::Url)];
        let bound = bind(
            Some(&args(json!({"u": "https://API.Example.com/x?y=1"}))),
            &bindings,
            None,
        )
        .unwrap();
        let shown: Vec<String> = bound.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["host:api.example.com", "url:https://api.example.com/x?y=1"]
        );
        assert!(matches!(
            bind(
                Some(&args(json!({"u": "file:///etc/passwd"}))),
                &bindings,
                None
            ),
            Err(BindError::Scheme { .. })
        ));
        assert!(
            bind(
                Some(&args(json!({"u": "https://user:pw@example.com/"}))),
                &bindings,
                None
            )
            .is_err()
        );
        assert!(bind(Some(&args(json!({"u": "not a url"}))), &bindings, None).is_err());
    }

    #[test]
    fn named_identifiers_and_arrays() {
        let bindings = vec![(
            "customer_id".to_owned(),
            ResourceKind::Named("customer".into()),
        )];
        let bound = bind(
            Some(&args(json!({"customer_id": [42, "43"]}))),
            &bindings,
            None,
        )
        .unwrap();
        let shown: Vec<String> = bound.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["customer:42", "customer:43"]);
        assert!(
            bind(
                Some(&args(json!({"customer_id": {"x": 1}}))),
                &bindings,
                None
            )
            .is_err()
        );
        assert!(
            bind(Some(&args(json!({"other": 1}))), &bindings, None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn composite_names_join_their_parts() {
        let repo = vec![("owner/repo".to_owned(), ResourceKind::Named("repo".into()))];
        let bound = bind(
            Some(&args(json!({"owner": "acme", "repo": "web"}))),
            &repo,
            None,
        )
        .unwrap();
        assert_eq!(bound[0].to_string(), "repo:acme/web");
        assert!(
            bind(Some(&args(json!({"q": 1}))), &repo, None)
                .unwrap()
                .is_empty()
        );
        let partial = bind(Some(&args(json!({"owner": "acme"}))), &repo, None).unwrap_err();
        assert!(partial.to_string().contains("every part"), "{partial}");
        let sneaky = bind(
            Some(&args(json!({"owner": "acme/web", "repo": "x"}))),
            &repo,
            None,
        );
        assert!(sneaky.is_err(), "a part may not carry the separator");
    }

    #[test]
    fn kinds_parse_from_config_words() {
        let kinds: Vec<ResourceKind> =
            serde_json::from_value(json!(["path", "url", "repo"])).unwrap();
        assert_eq!(
            kinds,
            [
                ResourceKind::Path,
                ResourceKind::Url,
                ResourceKind::Named("repo".into())
            ]
        );
        assert!(serde_json::from_value::<ResourceKind>(json!("Bad Kind")).is_err());
        assert!(serde_json::from_value::<ResourceKind>(json!("host")).is_err());
    }
}
