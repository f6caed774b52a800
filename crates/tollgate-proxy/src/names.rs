//! The merged view of every upstream's tools, prompts and resources: how each is named
//! towards the agent, which upstream serves it, and which names collide.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};

use crate::{ProxyError, config::Naming};

/// Items listed to the agent per page.
pub const PAGE_SIZE: usize = 100;

/// What one upstream currently lists.
#[derive(Debug, Default, Clone)]
pub struct UpstreamLists {
    pub tools: Vec<Tool>,
    pub prompts: Vec<Prompt>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
    pub instructions: Option<String>,
}

/// Where an exposed name leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub upstream: usize,
    pub name: String,
}

/// Two or more upstream items that would show under one name; none of them is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub kind: &'static str,
    pub name: String,
    pub upstreams: Vec<String>,
}

impl std::fmt::Display for Collision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} `{}` is offered by {}; it is hidden until the names differ",
            self.kind,
            self.name,
            self.upstreams
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )
    }
}

/// The merged catalog at one moment; replaced whole when any upstream's lists change.
#[derive(Debug, Default)]
pub struct Merged {
    pub version: u64,
    pub tools: Vec<Tool>,
    pub prompts: Vec<Prompt>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
    tool_routes: HashMap<String, Route>,
    prompt_routes: HashMap<String, Route>,
    resource_routes: HashMap<String, usize>,
    /// Literal prefix of each template (up to its first `{`), longest first.
    template_prefixes: Vec<(String, usize)>,
    template_owners: HashMap<String, usize>,
    pub collisions: Vec<Collision>,
    /// What the decision engine knows of each exposed tool, by exposed name.
    pub facts: HashMap<String, Arc<tollgate_policy::ToolFacts>>,
    pub instructions: Option<String>,
}

/// Exposed-name rules shared by tools and prompts.
#[derive(Debug, Clone)]
pub struct Namer {
    pub separator: String,
    pub prefixed: bool,
}

impl Namer {
    pub fn new(naming: &Naming, prefixed: bool) -> Self {
        Self {
            separator: naming.separator.clone(),
            prefixed,
        }
    }

    pub fn expose(&self, upstream: &str, name: &str) -> String {
        if self.prefixed {
            format!("{upstream}{}{name}", self.separator)
        } else {
            name.to_owned()
        }
    }
}

/// Merges named items, hiding every name that more than one item claims.
fn merge_named<T: Clone>(
    kind: &'static str,
    namer: &Namer,
    upstreams: &[(&str, &[T])],
    name_of: impl Fn(&T) -> &str,
    rename: impl Fn(&T, String) -> T,
    collisions: &mut Vec<Collision>,
) -> (Vec<T>, HashMap<String, Route>) {
    let mut claims: BTreeMap<String, Vec<(usize, &T)>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (index, (upstream, items)) in upstreams.iter().enumerate() {
        for item in items.iter() {
            let exposed = namer.expose(upstream, name_of(item));
            let entry = claims.entry(exposed.clone()).or_default();
            if entry.is_empty() {
                order.push(exposed);
            }
            entry.push((index, item));
        }
    }
    let mut listed = Vec::with_capacity(order.len());
    let mut routes = HashMap::with_capacity(order.len());
    for exposed in order {
        let Some(claimants) = claims.get(&exposed) else {
            continue;
        };
        match claimants.as_slice() {
            [(index, item)] => {
                routes.insert(
                    exposed.clone(),
                    Route {
                        upstream: *index,
                        name: name_of(item).to_owned(),
                    },
                );
                listed.push(rename(item, exposed));
            }
            many => collisions.push(Collision {
                kind,
                name: exposed,
                upstreams: many
                    .iter()
                    .filter_map(|(i, _)| upstreams.get(*i).map(|(u, _)| (*u).to_owned()))
                    .collect(),
            }),
        }
    }
    (listed, routes)
}

impl Merged {
    /// Builds the merged view from each upstream's lists, in configuration order.
    pub fn build(version: u64, namer: &Namer, upstreams: &[(&str, Arc<UpstreamLists>)]) -> Self {
        let mut collisions = Vec::new();

        let tool_lists: Vec<(&str, &[Tool])> = upstreams
            .iter()
            .map(|(n, l)| (*n, l.tools.as_slice()))
            .collect();
        let (tools, tool_routes) = merge_named(
            "tool",
            namer,
            &tool_lists,
            |t| t.name.as_ref(),
            |t, exposed| {
                let mut t = t.clone();
                t.name = exposed.into();
                t
            },
            &mut collisions,
        );

        let prompt_lists: Vec<(&str, &[Prompt])> = upstreams
            .iter()
            .map(|(n, l)| (*n, l.prompts.as_slice()))
            .collect();
        let (prompts, prompt_routes) = merge_named(
            "prompt",
            namer,
            &prompt_lists,
            |p| p.name.as_str(),
            |p, exposed| {
                let mut p = p.clone();
                p.name = exposed;
                p
            },
            &mut collisions,
        );

        // Resource URIs name things in the world, so they are never rewritten; the same URI
        // from two upstreams is a collision like any other.
        let mut resources = Vec::new();
        let mut resource_routes = HashMap::new();
        let mut uri_claims: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, (_, lists)) in upstreams.iter().enumerate() {
            for r in &lists.resources {
                uri_claims.entry(r.uri.as_str()).or_default().push(index);
            }
        }
        for (index, (_, lists)) in upstreams.iter().enumerate() {
            for r in &lists.resources {
                match uri_claims.get(r.uri.as_str()).map(Vec::as_slice) {
                    Some([_]) => {
                        resource_routes.insert(r.uri.clone(), index);
                        resources.push(r.clone());
                    }
                    Some(many) if many.first() == Some(&index) => collisions.push(Collision {
                        kind: "resource",
                        name: r.uri.clone(),
                        upstreams: many
                            .iter()
                            .filter_map(|i| upstreams.get(*i).map(|(u, _)| (*u).to_owned()))
                            .collect(),
                    }),
                    _ => {}
                }
            }
        }

        let mut templates = Vec::new();
        let mut template_prefixes = Vec::new();
        let mut template_owners = HashMap::new();
        for (index, (_, lists)) in upstreams.iter().enumerate() {
            for t in &lists.templates {
                template_owners
                    .entry(t.uri_template.clone())
                    .or_insert(index);
                let prefix = t
                    .uri_template
                    .split('{')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                template_prefixes.push((prefix, index));
                templates.push(t.clone());
            }
        }
        template_prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));

        let instructions = {
            let parts: Vec<String> = upstreams
                .iter()
                .filter_map(|(name, l)| {
                    l.instructions.as_ref().map(|i| {
                        if upstreams.len() > 1 {
                            format!("[{name}]\n{i}")
                        } else {
                            i.clone()
                        }
                    })
                })
                .collect();
            (!parts.is_empty()).then(|| parts.join("\n\n"))
        };

        Self {
            version,
            tools,
            prompts,
            resources,
            templates,
            tool_routes,
            prompt_routes,
            resource_routes,
            template_prefixes,
            template_owners,
            collisions,
            facts: HashMap::new(),
            instructions,
        }
    }

    pub fn tool(&self, exposed: &str) -> Result<&Route, ProxyError> {
        self.tool_routes
            .get(exposed)
            .ok_or_else(|| ProxyError::UnknownTool {
                name: exposed.to_owned(),
            })
    }

    pub fn prompt(&self, exposed: &str) -> Result<&Route, ProxyError> {
        self.prompt_routes
            .get(exposed)
            .ok_or_else(|| ProxyError::UnknownPrompt {
                name: exposed.to_owned(),
            })
    }

    /// The upstream that serves `uri`: a listed resource first, then the template with the
    /// longest matching literal prefix, then the only upstream if there is just one.
    pub fn resource_upstream(&self, uri: &str, upstream_count: usize) -> Result<usize, ProxyError> {
        if let Some(index) = self.resource_routes.get(uri) {
            return Ok(*index);
        }
        if let Some((_, index)) = self
            .template_prefixes
            .iter()
            .find(|(prefix, _)| !prefix.is_empty() && uri.starts_with(prefix.as_str()))
        {
            return Ok(*index);
        }
        if upstream_count == 1 {
            return Ok(0);
        }
        Err(ProxyError::UnknownResource {
            uri: uri.to_owned(),
        })
    }

    /// The upstream owning a resource template, for completions.
    pub fn template_upstream(&self, uri_template: &str) -> Option<usize> {
        self.template_owners.get(uri_template).copied()
    }
}

/// One page of `items` for `cursor`, and the cursor of the next page.
pub fn page<T: Clone>(
    items: &[T],
    version: u64,
    cursor: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ProxyError> {
    let start = match cursor {
        None => 0,
        Some(c) => parse_cursor(c, version).ok_or_else(|| ProxyError::InvalidCursor {
            cursor: c.chars().take(64).collect(),
        })?,
    };
    if start > items.len() {
        return Err(ProxyError::InvalidCursor {
            cursor: cursor.unwrap_or_default().chars().take(64).collect(),
        });
    }
    let end = start.saturating_add(PAGE_SIZE).min(items.len());
    let slice = items.get(start..end).unwrap_or_default().to_vec();
    let next = (end < items.len()).then(|| format!("tg1.{version}.{end}"));
    Ok((slice, next))
}

fn parse_cursor(cursor: &str, version: u64) -> Option<usize> {
    let mut parts = cursor.split('.');
    if parts.next()? != "tg1" {
        return None;
    }
    let v: u64 = parts.next()?.parse().ok()?;
    let offset: usize = parts.next()?.parse().ok()?;
    if parts.next().is_some() || v != version {
        return None;
    }
    Some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::JsonObject;

    fn tool(name: &str) -> Tool {
        Tool::new(name.to_owned(), "t", Arc::new(JsonObject::new()))
    }

    fn lists(tools: &[&str]) -> Arc<UpstreamLists> {
        Arc::new(UpstreamLists {
            tools: tools.iter().map(|t| tool(t)).collect(),
            ..Default::default()
        })
    }

    fn namer(prefixed: bool) -> Namer {
        Namer {
            separator: ".".into(),
            prefixed,
        }
    }

    #[test]
    fn prefixed_names_route_back() {
        let m = Merged::build(
            1,
            &namer(true),
            &[("fs", lists(&["read"])), ("web", lists(&["read"]))],
        );
        let names: Vec<_> = m.tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["fs.read", "web.read"]);
        assert_eq!(
            m.tool("web.read").unwrap(),
            &Route {
                upstream: 1,
                name: "read".into()
            }
        );
        assert!(m.collisions.is_empty());
        assert!(m.tool("read").is_err());
    }

    #[test]
    fn collision_hides_every_claimant_and_is_reported() {
        let m = Merged::build(
            1,
            &namer(false),
            &[("a", lists(&["x", "y"])), ("b", lists(&["y"]))],
        );
        let names: Vec<_> = m.tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["x"]);
        assert_eq!(m.collisions.len(), 1);
        let shown = m.collisions[0].to_string();
        assert!(
            shown.contains("`y`") && shown.contains("`a`") && shown.contains("`b`"),
            "{shown}"
        );
        assert!(m.tool("y").is_err());
    }

    #[test]
    fn pages_walk_the_whole_list_and_reject_stale_cursors() {
        let items: Vec<u32> = (0..250).collect();
        let (first, next) = page(&items, 7, None).unwrap();
        assert_eq!(first.len(), PAGE_SIZE);
        let (second, next) = page(&items, 7, next.as_deref()).unwrap();
        assert_eq!(second.first(), Some(&100));
        let (third, next) = page(&items, 7, next.as_deref()).unwrap();
        assert_eq!(third.len(), 50);
        assert!(next.is_none());
        assert!(page(&items, 8, Some("tg1.7.100")).is_err(), "stale version");
        assert!(page(&items, 7, Some("garbage")).is_err());
        assert!(page(&items, 7, Some("tg1.7.999")).is_err());
    }
}
