//! The state every front shares: the upstreams, their merged catalog and the session table.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicU64, Ordering},
};

use std::collections::HashMap;

use rmcp::{RoleClient, service::Peer};
use tollgate_policy::{Hints, ToolFacts};
use tracing::{info, warn};

use crate::{
    config::Config,
    intercept::Interceptor,
    names::{Merged, Namer, UpstreamLists},
    session::Sessions,
    suspend::SuspendedCalls,
    upstream::{Host, ListKind, Upstream},
};

#[derive(Debug)]
pub(crate) struct Hub {
    pub config: Config,
    pub namer: Namer,
    pub upstreams: Vec<Arc<Upstream>>,
    merged: RwLock<Arc<Merged>>,
    version: AtomicU64,
    pub sessions: Sessions,
    pub interceptor: Arc<dyn Interceptor>,
    pub suspended: Arc<SuspendedCalls>,
    /// The timeouts of fast-path calls in flight.
    pub deadlines: crate::deadline::Deadlines,
    /// Server→client requests sent to HTTP agents by the fast path, waiting for answers.
    pub agent_answers: Arc<crate::agent::AgentAnswers>,
    /// Per-process random key for fingerprints of agent credentials.
    pub fingerprint_key: std::collections::hash_map::RandomState,
    /// Serializes rebuilds so that two upstreams changing at once cannot publish out of order.
    rebuild: tokio::sync::Mutex<()>,
    /// Input schemas compiled once per distinct schema.
    schemas: tollgate_policy::SchemaCache,
}

impl std::fmt::Debug for dyn Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interceptor")
    }
}

impl Hub {
    pub fn new(config: Config, interceptor: Arc<dyn Interceptor>) -> Self {
        let namer = Namer::new(&config.naming, config.prefixed());
        let upstreams = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                Arc::new(Upstream::new(
                    i,
                    u.clone(),
                    config.limits.max_message_bytes,
                    config.limits.request_timeout,
                ))
            })
            .collect();
        Self {
            config,
            namer,
            upstreams,
            merged: RwLock::new(Arc::new(Merged::default())),
            version: AtomicU64::new(0),
            sessions: Sessions::default(),
            interceptor,
            suspended: Arc::default(),
            deadlines: crate::deadline::Deadlines::default(),
            agent_answers: Arc::default(),
            fingerprint_key: std::collections::hash_map::RandomState::new(),
            rebuild: tokio::sync::Mutex::new(()),
            schemas: tollgate_policy::SchemaCache::default(),
        }
    }

    /// What the decision engine needs of each exposed tool, built once per catalog version.
    fn tool_facts(&self, merged: &Merged) -> HashMap<String, Arc<ToolFacts>> {
        let mut facts = HashMap::with_capacity(merged.tools.len());
        for tool in &merged.tools {
            let Ok(route) = merged.tool(&tool.name) else {
                continue;
            };
            let Some(upstream) = self.config.upstreams.get(route.upstream) else {
                continue;
            };
            let hints = tool
                .annotations
                .as_ref()
                .map(|a| Hints {
                    read_only: a.read_only_hint,
                    destructive: a.destructive_hint,
                    open_world: a.open_world_hint,
                })
                .unwrap_or_default();
            let schema = self.schemas.compile(&tool.input_schema);
            facts.insert(
                tool.name.to_string(),
                Arc::new(
                    ToolFacts::new(
                        tool.name.to_string(),
                        upstream.name.clone(),
                        hints,
                        upstream.root.clone(),
                        schema,
                    )
                    .with_definition(
                        route.name.clone(),
                        crate::pins::definition_digest(&route.name, tool),
                    )
                    .with_entry(&tool.input_schema),
                ),
            );
        }
        facts
    }

    pub fn merged(&self) -> Arc<Merged> {
        self.merged
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn refresh_kinds(&self, index: usize, kinds: &[ListKind]) {
        let Some(upstream) = self.upstreams.get(index) else {
            return;
        };
        let Ok(peer) = upstream.peer() else {
            return;
        };
        {
            // One refresh of an upstream at a time, so an older fetch never overwrites a newer
            // one; other upstreams refresh meanwhile.
            let _refreshing = upstream.refreshing.lock().await;
            let mut lists = (*upstream.lists()).clone();
            for kind in kinds {
                if let Err(error) = fetch(&peer, *kind, &mut lists, upstream.request_timeout).await
                {
                    warn!(upstream = %upstream.name, ?kind, %error, "cannot fetch list");
                }
            }
            upstream.set_lists(lists);
        }
        let _serial = self.rebuild.lock().await;
        self.rebuild_and_announce();
    }

    /// Rebuilds the merged view, reports new collisions, and tells every session which lists
    /// changed.
    fn rebuild_and_announce(&self) {
        let snapshot: Vec<(&str, Arc<UpstreamLists>)> = self
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.lists()))
            .collect();
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let mut merged = Merged::build(version, &self.namer, &snapshot);
        merged.facts = self.tool_facts(&merged);
        let merged = Arc::new(merged);
        let previous = {
            let mut slot = self
                .merged
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *slot, merged.clone())
        };
        for collision in &merged.collisions {
            if !previous.collisions.contains(collision) {
                warn!(%collision, "name collision");
            }
        }
        let tools_changed = previous.tools != merged.tools;
        let prompts_changed = previous.prompts != merged.prompts;
        let resources_changed =
            previous.resources != merged.resources || previous.templates != merged.templates;
        if tools_changed {
            info!(tools = merged.tools.len(), "tool list changed");
        }
        if !(tools_changed || prompts_changed || resources_changed) {
            return;
        }
        for peer in self.sessions.all_peers() {
            tokio::spawn(async move {
                if tools_changed {
                    let _ = peer.notify_tool_list_changed().await;
                }
                if prompts_changed {
                    let _ = peer.notify_prompt_list_changed().await;
                }
                if resources_changed {
                    let _ = peer.notify_resource_list_changed().await;
                }
            });
        }
    }
}

impl Host for Hub {
    fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    fn upstream(&self, index: usize) -> Option<&Arc<Upstream>> {
        self.upstreams.get(index)
    }

    fn lists_changed<'a>(
        &'a self,
        index: usize,
        kinds: &'a [ListKind],
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.refresh_kinds(index, kinds))
    }
}

async fn fetch(
    peer: &Peer<RoleClient>,
    kind: ListKind,
    lists: &mut UpstreamLists,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let capabilities = peer.peer_info().map(|info| info.capabilities.clone());
    let offers =
        |has: fn(&rmcp::model::ServerCapabilities) -> bool| capabilities.as_ref().is_none_or(has);
    let run = async {
        match kind {
            ListKind::Tools => {
                if offers(|c| c.tools.is_some()) {
                    lists.tools = peer.list_all_tools().await.map_err(|e| e.to_string())?;
                }
            }
            ListKind::Prompts => {
                if offers(|c| c.prompts.is_some()) {
                    lists.prompts = peer.list_all_prompts().await.map_err(|e| e.to_string())?;
                }
            }
            ListKind::Resources => {
                if offers(|c| c.resources.is_some()) {
                    lists.resources = peer.list_all_resources().await.map_err(|e| e.to_string())?;
                    lists.templates = peer
                        .list_all_resource_templates()
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        if let Some(info) = peer.peer_info() {
            lists.instructions = info.instructions.clone();
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}
