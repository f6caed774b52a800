//! What the guard counts, in the Prometheus text format the admin endpoint serves at
//! `/metrics`: decisions by effect, upstream and tool; how long decisions and forwarded calls
//! take; approvals pending; sessions the guard remembers; and the audit trail's writes,
//! latency and failure.

use std::{collections::HashMap, fmt::Write, sync::Mutex};

use tollgate_audit::histogram::{Histogram, Snapshot};

/// The effects counted, in the order `Metrics::decided` takes them.
pub const EFFECTS: [&str; 5] = ["allow", "deny", "needs_approval", "hide", "reject"];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Per upstream, per tool: counts by effect (in `EFFECTS` order). Looked up by borrowed
    /// names, so a call only allocates the first time its tool is seen.
    decisions: Mutex<HashMap<String, HashMap<String, [u64; EFFECTS.len()]>>>,
    pub decision_latency: Histogram,
    pub call_latency: Histogram,
    /// Shadow decisions: counts by (live effect, shadow effect), each in `Effect` order
    /// (allow, deny, needs approval).
    shadow: Mutex<[[u64; 3]; 3]>,
    /// Per upstream and tool: decisions where the shadow pack's effect differed.
    shadow_differences: Mutex<HashMap<(String, String), u64>>,
}

/// Values read at scrape time from elsewhere.
#[derive(Debug, Default)]
pub struct Gauges {
    pub approvals_pending: usize,
    pub sessions: usize,
    /// The audit trail's writer; none when the trail is off.
    pub audit: Option<AuditGauges>,
}

/// What the audit trail's writer has done.
#[derive(Debug)]
pub struct AuditGauges {
    /// Lines written.
    pub records: u64,
    /// `fdatasync`s made.
    pub syncs: u64,
    /// How long each batch took to write (and sync).
    pub batches: Snapshot,
    /// The trail can no longer be written.
    pub failed: bool,
}

impl Metrics {
    /// Counts a decision; `effect` indexes `EFFECTS`.
    pub fn decided(&self, effect: usize, upstream: &str, tool: &str) {
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !decisions.contains_key(upstream) {
            decisions.insert(upstream.to_owned(), HashMap::new());
        }
        let Some(tools) = decisions.get_mut(upstream) else {
            return;
        };
        if !tools.contains_key(tool) {
            tools.insert(tool.to_owned(), [0; EFFECTS.len()]);
        }
        if let Some(count) = tools.get_mut(tool).and_then(|c| c.get_mut(effect)) {
            *count += 1;
        }
    }

    /// Counts a decision the shadow pack also made.
    pub fn shadowed(
        &self,
        live: tollgate_policy::Effect,
        shadow: tollgate_policy::Effect,
        upstream: &str,
        tool: &str,
    ) {
        let index = |e: tollgate_policy::Effect| match e {
            tollgate_policy::Effect::Allow => 0,
            tollgate_policy::Effect::Deny => 1,
            tollgate_policy::Effect::NeedsApproval => 2,
        };
        if let Some(n) = self
            .shadow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(index(live))
            .and_then(|row| row.get_mut(index(shadow)))
        {
            *n += 1;
        }
        if live != shadow {
            *self
                .shadow_differences
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry((upstream.to_owned(), tool.to_owned()))
                .or_default() += 1;
        }
    }

    fn render_shadow(&self, out: &mut String) {
        let pairs = *self
            .shadow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pairs.iter().flatten().all(|n| *n == 0) {
            return;
        }
        out.push_str("# HELP tollgate_shadow_decisions_total Decisions the shadow pack also made, by the live and the shadow effect.\n# TYPE tollgate_shadow_decisions_total counter\n");
        let names = ["allow", "deny", "needs_approval"];
        for (live, row) in names.iter().zip(pairs) {
            for (shadow, n) in names.iter().zip(row) {
                let _ = writeln!(
                    out,
                    "tollgate_shadow_decisions_total{{live=\"{live}\",shadow=\"{shadow}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP tollgate_shadow_differences_total Decisions where the shadow pack's effect differed, by upstream and tool.\n# TYPE tollgate_shadow_differences_total counter\n");
        let mut rows: Vec<((String, String), u64)> = self
            .shadow_differences
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        rows.sort();
        for ((upstream, tool), n) in rows {
            let _ = writeln!(
                out,
                "tollgate_shadow_differences_total{{upstream=\"{}\",tool=\"{}\"}} {n}",
                label(&upstream),
                label(&tool)
            );
        }
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP tollgate_decisions_total Tool calls decided, by effect, upstream and tool.\n# TYPE tollgate_decisions_total counter\n");
        let mut rows: Vec<(String, String, [u64; EFFECTS.len()])> = self
            .decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .flat_map(|(upstream, tools)| {
                tools
                    .iter()
                    .map(|(tool, counts)| (upstream.clone(), tool.clone(), *counts))
            })
            .collect();
        rows.sort();
        for (upstream, tool, counts) in rows {
            for (effect, n) in EFFECTS.iter().zip(counts).filter(|(_, n)| *n > 0) {
                let _ = writeln!(
                    out,
                    "tollgate_decisions_total{{decision=\"{effect}\",upstream=\"{}\",tool=\"{}\"}} {n}",
                    label(&upstream),
                    label(&tool)
                );
            }
        }
        histogram(
            &mut out,
            "tollgate_decision_seconds",
            "Time to decide a tool call.",
            &self.decision_latency.snapshot(),
        );
        histogram(
            &mut out,
            "tollgate_call_seconds",
            "Time from the decision to the end of a forwarded call (upstream latency included).",
            &self.call_latency.snapshot(),
        );
        let _ = write!(
            out,
            "# HELP tollgate_approvals_pending Approval requests waiting for an answer.\n# TYPE tollgate_approvals_pending gauge\ntollgate_approvals_pending {}\n# HELP tollgate_sessions Sessions (and stateless grants) the guard keeps history for.\n# TYPE tollgate_sessions gauge\ntollgate_sessions {}\n",
            gauges.approvals_pending, gauges.sessions
        );
        if let Some(audit) = &gauges.audit {
            let _ = write!(
                out,
                "# HELP tollgate_audit_records_total Lines written to the audit trail: decisions, outcomes, the definitions they name and checkpoints.\n# TYPE tollgate_audit_records_total counter\ntollgate_audit_records_total {}\n# HELP tollgate_audit_syncs_total Syncs (fdatasync) of the audit trail; records written together share one.\n# TYPE tollgate_audit_syncs_total counter\ntollgate_audit_syncs_total {}\n# HELP tollgate_audit_failed 1 once the audit trail cannot be written (every call is then refused).\n# TYPE tollgate_audit_failed gauge\ntollgate_audit_failed {}\n",
                audit.records,
                audit.syncs,
                u8::from(audit.failed)
            );
            histogram(
                &mut out,
                "tollgate_audit_write_seconds",
                "Time to write (and sync) one batch of audit records.",
                &audit.batches,
            );
        }
        self.render_shadow(&mut out);
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, help: &str, snapshot: &Snapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, count) in &snapshot.cumulative {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
        snapshot.count, snapshot.sum_seconds, snapshot.count
    );
}
