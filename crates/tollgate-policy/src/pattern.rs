//! Patterns over names and resources, and the one question narrowing needs of them: does
//! every string one pattern matches also match another?
//!
//! Names (`fs.read_*`) and named resources (`repo:acme/*`) use globs: `*` any run, `?` one
//! character. Paths use segments: `*` and `?` stay within one segment and a final `**`
//! takes the folder and everything under it (`path:/srv/app/**`). Fields of a tool's output
//! use JSON pointer patterns (`/transactions/*/counterparty`, `**` any depth).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::resource::Resource;

/// Does `name` match the glob `pattern`? Iterative with one backtrack point, so no pattern can
/// take more than O(pattern × name) steps.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    // Names are almost always ASCII, where a byte is a character: no allocation needed.
    if pattern.is_ascii() && name.is_ascii() {
        return glob_match_units(pattern.as_bytes(), name.as_bytes(), b'*', b'?');
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_match_units(&p, &n, '*', '?')
}

fn glob_match_units<T: PartialEq + Copy>(p: &[T], n: &[T], any_run: T, any_one: T) -> bool {
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(c) if *c == any_run => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == any_one || Some(c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == any_run))
}

/// Does the glob `outer` match every name the glob `inner` matches? Sound, not complete: a
/// wildcard of `inner` can only be taken by a `*` of `outer` (and a `?` by a `?`), so a
/// `true` is always right and a rare `false` only refuses a narrowing that was in fact safe.
pub fn glob_covers(outer: &str, inner: &str) -> bool {
    let o: Vec<char> = outer.chars().collect();
    let i: Vec<char> = inner.chars().collect();
    // covers[a][b]: outer[a..] covers inner[b..].
    let mut table = vec![vec![false; i.len() + 1]; o.len() + 1];
    if let Some(last) = table.get_mut(o.len()).and_then(|row| row.get_mut(i.len())) {
        *last = true;
    }
    for a in (0..o.len()).rev() {
        for b in (0..=i.len()).rev() {
            let oc = o.get(a).copied();
            let ic = i.get(b).copied();
            let at =
                |x: usize, y: usize| table.get(x).and_then(|r| r.get(y)).copied() == Some(true);
            let value = match (oc, ic) {
                (Some('*'), _) => at(a + 1, b) || (ic.is_some() && at(a, b + 1)),
                (Some(_), None) => false,
                (Some('?'), Some(c)) => c != '*' && at(a + 1, b + 1),
                (Some(x), Some(c)) => x == c && c != '*' && c != '?' && at(a + 1, b + 1),
                (None, _) => false,
            };
            if let Some(cell) = table.get_mut(a).and_then(|r| r.get_mut(b)) {
                *cell = value;
            }
        }
    }
    table.first().and_then(|r| r.first()).copied() == Some(true)
}

fn segments(path: &str) -> Vec<&str> {
    if path == "/" {
        vec![""]
    } else {
        path.trim_end_matches('/').split('/').collect()
    }
}

/// Does the path `pattern` match the normalized absolute `path`?
pub fn path_match(pattern: &str, path: &str) -> bool {
    let p = segments(pattern);
    let s = segments(path);
    match p.split_last() {
        Some((&"**", base)) => {
            s.len() >= base.len()
                && base
                    .iter()
                    .zip(&s)
                    .all(|(pp, ss)| *pp == *ss || (!ss.is_empty() && glob_match(pp, ss)))
        }
        _ => {
            p.len() == s.len()
                && p.iter()
                    .zip(&s)
                    .all(|(pp, ss)| *pp == *ss || (!ss.is_empty() && glob_match(pp, ss)))
        }
    }
}

/// Does the label pattern `pattern` match the normalized absolute `path`? Unlike a grant's
/// patterns, `**` may stand anywhere (`**/.env`, `**/.git/**`: any number of segments, none
/// included), and case is ignored: a label marks what must not be reached, and on a
/// case-insensitive filesystem `.ENV` is `.env`. Dynamic programming over segments, so no
/// pattern can take more than O(pattern × path) segment matches.
pub fn label_match(pattern: &str, path: &str) -> bool {
    let pattern = pattern.to_lowercase();
    let path = path.to_lowercase();
    let p: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let s: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // reach[j]: the pattern's first i segments match the path's first j.
    let mut reach = vec![false; s.len() + 1];
    if let Some(first) = reach.first_mut() {
        *first = true;
    }
    for segment in &p {
        let mut next = vec![false; s.len() + 1];
        if *segment == "**" {
            let mut any = false;
            for (j, cell) in next.iter_mut().enumerate() {
                any = any || reach.get(j).copied().unwrap_or(false);
                *cell = any;
            }
        } else {
            for (j, name) in s.iter().enumerate() {
                if reach.get(j).copied().unwrap_or(false)
                    && glob_match(segment, name)
                    && let Some(cell) = next.get_mut(j + 1)
                {
                    *cell = true;
                }
            }
        }
        reach = next;
    }
    reach.last().copied().unwrap_or(false)
}

/// Does the path pattern `outer` match every path the path pattern `inner` matches?
pub fn path_covers(outer: &str, inner: &str) -> bool {
    let o = segments(outer);
    let i = segments(inner);
    let inner_deep = i.last() == Some(&"**");
    // A `**` anywhere but last is not a pattern we issue; refuse rather than guess.
    if i.iter().rev().skip(1).any(|s| *s == "**") || o.iter().rev().skip(1).any(|s| *s == "**") {
        return false;
    }
    match o.split_last() {
        Some((&"**", base)) => {
            let fixed = if inner_deep { i.len() - 1 } else { i.len() };
            fixed >= base.len()
                && base
                    .iter()
                    .zip(&i)
                    .all(|(oo, ii)| *ii != "**" && glob_covers(oo, ii))
        }
        _ => {
            !inner_deep
                && o.len() == i.len()
                && o.iter().zip(&i).all(|(oo, ii)| glob_covers(oo, ii))
        }
    }
}

/// One segment of a field pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A key, and the array index it also is when it is a number.
    Name(String, Option<usize>),
    /// `*`: any one key or index.
    Any,
    /// `**`: any number of segments, none included.
    AnyDepth,
}

/// One step into a result: an object's key or an array's index.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'v> {
    Key(&'v str),
    Index(usize),
}

/// A JSON pointer pattern over a tool's output: `/transactions/*/counterparty`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPattern(Vec<Segment>);

impl FieldPattern {
    /// `None` when `text` is not a pointer (it must start with `/`).
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix('/')?;
        let segments = rest
            .split('/')
            .map(|s| match s {
                "*" => Segment::Any,
                "**" => Segment::AnyDepth,
                name => {
                    let name = name.replace("~1", "/").replace("~0", "~");
                    let index = name.parse().ok();
                    Segment::Name(name, index)
                }
            })
            .collect();
        Some(Self(segments))
    }

    /// Does the JSON pointer `pointer` (as a sighting keeps it) fall under this pattern?
    pub fn matches_pointer(&self, pointer: &str) -> bool {
        let Some(rest) = pointer.strip_prefix('/') else {
            return false;
        };
        let keys: Vec<String> = rest
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let path: Vec<Step<'_>> = keys.iter().map(|k| Step::Key(k)).collect();
        self.matches(&path)
    }

    pub(crate) fn matches(&self, path: &[Step<'_>]) -> bool {
        fn walk(pattern: &[Segment], path: &[Step<'_>]) -> bool {
            match (pattern.split_first(), path.split_first()) {
                (None, None) => true,
                (Some((Segment::AnyDepth, rest)), _) => {
                    walk(rest, path) || path.split_first().is_some_and(|(_, p)| walk(pattern, p))
                }
                (Some((Segment::Any, rest)), Some((_, p))) => walk(rest, p),
                (Some((Segment::Name(n, index), rest)), Some((step, p))) => {
                    let same = match step {
                        Step::Key(key) => n == key,
                        Step::Index(i) => *index == Some(*i),
                    };
                    same && walk(rest, p)
                }
                _ => false,
            }
        }
        walk(&self.0, path)
    }
}

/// A pattern over resources as a grant names them: `kind:pattern`, or `kind:from(SOURCE)`
/// for the values a field the catalog trusts carried in a tool's results this session
/// (`payee:from(bank.list_transactions.counterparty)`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourcePattern {
    kind: String,
    pattern: String,
}

impl ResourcePattern {
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Does `resource` fall under this pattern by its value? A source entry takes no value by
    /// itself: what it takes depends on what the session has seen ([`ResourcePattern::source`]).
    pub fn matches(&self, resource: &Resource) -> bool {
        if self.kind != resource.kind || self.is_source() {
            return false;
        }
        match self.kind.as_str() {
            "path" => path_match(&self.pattern, &resource.value),
            "host" => glob_match(&self.pattern, &resource.value.to_ascii_lowercase()),
            _ => glob_match(&self.pattern, &resource.value),
        }
    }

    /// It names one resource, with no wildcard.
    pub fn is_exact(&self) -> bool {
        !self.is_source() && !self.pattern.contains(['*', '?'])
    }

    fn is_source(&self) -> bool {
        self.pattern.starts_with("from(")
    }

    /// For `kind:from(TOOL.FIELD)` or `kind:from(TOOL/POINTER)`: the glob over the tools whose
    /// results count and the fields of them whose values it takes (`FIELD` alone is that key at
    /// any depth).
    pub fn source(&self) -> Option<(&str, FieldPattern)> {
        parse_source(&self.pattern)
    }

    /// The one resource an exact pattern names.
    pub fn as_resource(&self) -> Option<Resource> {
        self.is_exact().then(|| Resource {
            kind: self.kind.clone(),
            value: self.pattern.clone(),
        })
    }

    /// Does this pattern take every resource `inner` takes? A source entry is taken only by
    /// itself and by `kind:*`: what it takes is no set of spellings a glob can be compared to.
    pub fn covers(&self, inner: &Self) -> bool {
        if self.is_source() || inner.is_source() {
            return self.kind == inner.kind
                && (self.pattern == inner.pattern || self.pattern == "*");
        }
        self.kind == inner.kind
            && match self.kind.as_str() {
                "path" => path_covers(&self.pattern, &inner.pattern),
                _ => glob_covers(&self.pattern, &inner.pattern),
            }
    }
}

impl TryFrom<String> for ResourcePattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let Some((kind, pattern)) = text.split_once(':') else {
            return Err(format!(
                "a resource such as `customer:42` or `path:/srv/app/**`, not `{text}`"
            ));
        };
        let kind_ok = !kind.is_empty()
            && kind.len() <= 32
            && kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !kind_ok {
            return Err(format!(
                "resource kind `{kind}` in `{text}` is not a plain lowercase word"
            ));
        }
        if pattern.is_empty() {
            return Err(format!("resource `{text}` names nothing after `{kind}:`"));
        }
        if kind == "path" {
            if !pattern.starts_with('/') {
                return Err(format!("path resource `{text}` must be absolute"));
            }
            let segs = segments(pattern);
            if segs.iter().any(|s| *s == "." || *s == "..") {
                return Err(format!(
                    "path resource `{text}` must not contain `.` or `..`"
                ));
            }
            if segs.iter().rev().skip(1).any(|s| s.contains("**")) {
                return Err(format!(
                    "path resource `{text}`: `**` may only be the last segment"
                ));
            }
        }
        if kind == "url" {
            return Err(format!(
                "grants name hosts, not URLs: write `host:<name>` instead of `{text}`"
            ));
        }
        if pattern.starts_with("from(") {
            if matches!(kind, "path" | "host") {
                return Err(format!(
                    "`{text}`: a `{kind}` resource is bound from what the agent wrote and cannot name a source; sources are for named resources (`payee:from(bank.list_transactions.counterparty)`)"
                ));
            }
            if parse_source(pattern).is_none() {
                return Err(format!(
                    "`{text}`: expected `{kind}:from(TOOL.FIELD)` or `{kind}:from(TOOL/POINTER)`, such as `payee:from(bank.list_transactions.counterparty)`"
                ));
            }
        }
        let pattern = if kind == "host" {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_owned()
        };
        Ok(Self {
            kind: kind.to_owned(),
            pattern,
        })
    }
}

/// `from(TOOL.FIELD)` or `from(TOOL/POINTER)`: the tool glob, and the field as a pointer
/// pattern (`FIELD` alone is `/**/FIELD`).
fn parse_source(pattern: &str) -> Option<(&str, FieldPattern)> {
    let inner = pattern.strip_prefix("from(")?.strip_suffix(')')?;
    let plain_tool = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?'))
    };
    let (tool, field) = match inner.split_once('/') {
        Some((tool, _)) => {
            let pointer = inner.get(tool.len()..)?;
            if pointer.split('/').skip(1).any(str::is_empty) {
                return None;
            }
            (tool, FieldPattern::parse(pointer)?)
        }
        None => {
            let (tool, name) = inner.rsplit_once('.')?;
            let plain_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
            if !plain_name {
                return None;
            }
            (tool, FieldPattern::parse(&format!("/**/{name}"))?)
        }
    };
    plain_tool(tool).then_some((tool, field))
}

impl From<ResourcePattern> for String {
    fn from(p: ResourcePattern) -> Self {
        p.to_string()
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.pattern)
    }
}

impl std::str::FromStr for ResourcePattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_patterns_take_any_depth_and_ignore_case() {
        let secret = [
            "**/.env",
            "**/.env.*",
            "**/.env/**",
            "**/.ssh/**",
            "**/*.pem",
        ];
        let labelled = |path: &str| secret.iter().any(|p| label_match(p, path));
        for path in [
            "/srv/app/.env",
            "/.env",
            "/srv/app/.ENV",
            "/srv/app/.env.local",
            "/srv/app/granted/.env/inner",
            "/home/u/.ssh/id_ed25519",
            "/a/b/c/cert.PEM",
        ] {
            assert!(labelled(path), "{path}");
        }
        for path in [
            "/srv/app/env",
            "/srv/app/x.env.bak/",
            "/srv/app/.envrc",
            "/srv/.sshx/k",
        ] {
            assert!(!labelled(path), "{path}");
        }
        assert!(label_match("/srv/**/secret/*", "/srv/a/b/secret/x"));
        assert!(!label_match("/srv/**/secret/*", "/srv/a/b/secret/x/y"));
        assert!(label_match("**", "/"));
        // Many `**` in a row cost no more than one.
        let deep = "/a".repeat(200);
        assert!(label_match("**/**/**/**/a", &deep));
        assert!(!label_match("**/**/**/**/b", &deep));
    }

    fn res(kind: &str, value: &str) -> Resource {
        Resource {
            kind: kind.into(),
            value: value.into(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("fs.read_*", "fs.read_file"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("fs.read_*", "fs.write_file"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.delete_*", "github.delete_repo"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        // Non-ASCII names take the character path: `?` is one character, not one byte.
        assert!(glob_match("caf?", "café"));
        assert!(glob_match("*é", "résumé"));
    }

    #[test]
    fn glob_cover_is_sound() {
        assert!(glob_covers("*", "fs.*"));
        assert!(glob_covers("fs.*", "fs.read_*"));
        assert!(glob_covers("fs.read_file", "fs.read_file"));
        assert!(!glob_covers("fs.read_*", "fs.*"));
        assert!(!glob_covers("fs.read_file", "fs.read_*"));
        assert!(!glob_covers("a?c", "a*c"));
        assert!(glob_covers("a*", "a?c"));
    }

    #[test]
    fn paths_match_by_segment() {
        assert!(path_match("/srv/app/**", "/srv/app"));
        assert!(path_match("/srv/app/**", "/srv/app/a/b.txt"));
        assert!(!path_match("/srv/app/**", "/srv/application"));
        assert!(path_match("/srv/*.txt", "/srv/a.txt"));
        assert!(!path_match("/srv/*.txt", "/srv/a/b.txt"));
        assert!(path_match("/**", "/"));
        assert!(path_match("/**", "/etc/passwd"));
    }

    #[test]
    fn path_cover() {
        assert!(path_covers("/srv/**", "/srv/app/**"));
        assert!(path_covers("/srv/app/**", "/srv/app/x.txt"));
        assert!(path_covers("/srv/*/logs/**", "/srv/a/logs/x/**"));
        assert!(!path_covers("/srv/app/**", "/srv/**"));
        assert!(!path_covers("/srv/app/x.txt", "/srv/app/**"));
        assert!(!path_covers("/srv/a*", "/srv/*"));
    }

    #[test]
    fn resource_patterns_parse_and_match() {
        let p: ResourcePattern = "customer:42".parse().unwrap();
        assert!(p.matches(&res("customer", "42")));
        assert!(!p.matches(&res("customer", "43")));
        let h: ResourcePattern = "host:*.Example.com".parse().unwrap();
        assert!(h.matches(&res("host", "api.example.com")));
        let source: ResourcePattern = "payee:from(bank.list_transactions.counterparty)"
            .parse()
            .unwrap();
        assert!(
            !source.is_exact()
                && !source.matches(&res("payee", "from(bank.list_transactions.counterparty)"))
        );
        assert_eq!(source.source().unwrap().0, "bank.list_transactions");
        let pointer: ResourcePattern =
            "payee:from(bank.list_transactions/transactions/*/counterparty)"
                .parse()
                .unwrap();
        assert!(pointer.source().is_some());
        // Only `kind:*` and the entry itself take a source entry: `payee:f*` names spellings.
        let all: ResourcePattern = "payee:*".parse().unwrap();
        let some: ResourcePattern = "payee:f*".parse().unwrap();
        assert!(all.covers(&source) && source.covers(&source));
        assert!(!some.covers(&source) && !source.covers(&all) && !pointer.covers(&source));
        for bad in [
            "payee:from()",
            "payee:from(bank)",
            "payee:from(bank.)",
            "payee:from(.counterparty)",
            "payee:from(bank.list transactions.counterparty)",
            "payee:from(bank.list_transactions.counterparty",
            "payee:from(bank.list_transactions/)",
            "path:from(fs.list.path)",
            "host:from(web.search.host)",
            "nocolon",
            "path:relative",
            "path:/a/../b",
            "Kind:x",
            "url:https://x",
            "x:",
        ] {
            assert!(bad.parse::<ResourcePattern>().is_err(), "{bad}");
        }
    }
}
