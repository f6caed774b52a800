//! `tollgate policy report`: one self-contained HTML page a security reviewer reads without
//! knowing Cedar: who can do what to which tools (evaluated, with the policies that decide),
//! the catalog, the pinned tools, the pack's own tests and every policy with its text.

use std::fmt::Write;

use tollgate_policy::{Effect, Pack, cases::ToolReview};

/// What the page shows, gathered by the caller.
pub(crate) struct Review<'a> {
    pub pack: &'a Pack,
    pub tools: &'a [ToolReview],
    /// `(file, case, failure)`: `None` when the case passed.
    pub tests: &'a [(String, String, Option<String>)],
    /// `(upstream, name, digest, description)`, when a lock file was given.
    pub pins: Option<Vec<(String, String, String, String)>>,
    pub generated: String,
}

/// `text` safe inside HTML text and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn effect_words(effect: Effect) -> (&'static str, &'static str) {
    match effect {
        Effect::Allow => ("allow", "allowed"),
        Effect::Deny => ("deny", "denied"),
        Effect::NeedsApproval => ("approval", "needs a person's approval"),
    }
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:78em;padding:0 1em;color:#1d1d1f}\
table{border-collapse:collapse;margin:1em 0;width:100%}th,td{border:1px solid #ccc;padding:.35em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.allow{background:#e3f4e1}td.deny{background:#f9e0e0}td.approval{background:#fff3cd}\
td.fail{background:#f9e0e0}td.pass{background:#e3f4e1}code,pre{font:13px ui-monospace,monospace}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}\
small{color:#555}details{margin:.2em 0}";

pub(crate) fn render(review: &Review<'_>) -> String {
    let pack = review.pack;
    let purposes: Vec<&String> = pack.purposes().iter().collect();
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Policy review: {v}</title><style>{STYLE}</style></head><body>\n\
<h1>Policy review: <code>{v}</code></h1>\n<p>{n} policies; purposes a grant may declare: {p}. Generated {g}. \
Everything not allowed below is denied: no policy, an error, an unknown tool or a missing grant all deny.</p>\n\
<nav><a href=\"#matrix\">Who can do what</a> · <a href=\"#catalog\">Catalog</a> · <a href=\"#pins\">Pinned tools</a> · <a href=\"#tests\">Tests</a> · <a href=\"#policies\">Policies</a></nav>\n",
        v = esc(pack.version()),
        n = pack.meta().len(),
        p = purposes
            .iter()
            .map(|p| format!("<code>{}</code>", esc(p)))
            .collect::<Vec<_>>()
            .join(", "),
        g = esc(&review.generated),
    );

    // The matrix.
    let _ = write!(
        out,
        "<h2 id=\"matrix\">Who can do what</h2>\n<p>Each row is a tool of the pack's tests, with the call its first test makes. \
Each column is a purpose: what a session with that purpose gets for that call, when its grant allows the tool's class and the \
resources the call names (so that the pack decides, not a narrow grant), with no history and no taint. \
Under each answer, the policies that decided it; under each tool, every policy that can apply to it.</p>\n\
<table id=\"matrix-table\"><thead><tr><th>tool</th><th>class</th><th>risk</th><th>the call</th>"
    );
    for purpose in &purposes {
        let _ = write!(out, "<th>{}</th>", esc(purpose));
    }
    out.push_str("</tr></thead><tbody>\n");
    for tool in review.tools {
        let _ = write!(
            out,
            "<tr class=\"tool\" data-tool=\"{t}\"><td><code>{t}</code><br><small>upstream {u}</small></td><td>{c}</td><td>{r}</td>\
<td><small>{e}</small><br><code>{a}</code>{res}</td>",
            t = esc(&tool.tool),
            u = esc(&tool.upstream),
            c = esc(tool.class.as_str()),
            r = esc(&tool.risk),
            e = esc(&tool.example),
            a = esc(&tool.arguments.to_string()),
            res = if tool.resources.is_empty() {
                String::new()
            } else {
                format!(
                    "<br><small>resources: {}</small>",
                    esc(&tool.resources.join(", "))
                )
            },
        );
        for cell in &tool.cells {
            let (class, words) = effect_words(cell.decision);
            let _ = write!(
                out,
                "<td class=\"{class}\" data-purpose=\"{p}\">{words}<br><small>by {by}</small>{why}</td>",
                p = esc(&cell.purpose),
                by = esc(&cell.policies.join(", ")),
                why = if cell.reasons.is_empty() {
                    String::new()
                } else {
                    format!("<br><small>{}</small>", esc(&cell.reasons.join("; ")))
                },
            );
        }
        out.push_str("</tr>\n");
        let _ = write!(
            out,
            "<tr class=\"conditions\"><td colspan=\"{}\"><details><summary>{} polic{} can apply to <code>{}</code></summary><ul>",
            4 + purposes.len(),
            tool.policies.len(),
            if tool.policies.len() == 1 { "y" } else { "ies" },
            esc(&tool.tool)
        );
        for (id, effect, reason) in &tool.policies {
            let _ = write!(
                out,
                "<li>{} <a href=\"#policy-{id}\"><code>{id}</code></a>{}</li>",
                esc(effect),
                reason
                    .as_deref()
                    .map(|r| format!(": {}", esc(r)))
                    .unwrap_or_default(),
                id = esc(id),
            );
        }
        out.push_str("</ul></details></td></tr>\n");
    }
    out.push_str("</tbody></table>\n");

    // The catalog.
    out.push_str(
        "<h2 id=\"catalog\">Catalog</h2>\n<p>What each tool does to the world, as the operator states it. Every entry that matches a tool counts and the most restricted class wins, so no entry can widen another; a tool no entry names is treated as the most restricted class.</p>\n\
<table id=\"catalog-table\"><thead><tr><th>tools</th><th>class</th></tr></thead><tbody>\n",
    );
    for (pattern, class) in pack.catalog().entries() {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            esc(pattern),
            esc(class.as_str())
        );
    }
    out.push_str("</tbody></table>\n");

    // The pins.
    out.push_str("<h2 id=\"pins\">Pinned tools</h2>\n");
    match &review.pins {
        None => {
            out.push_str("<p>No lock file was given (<code>--pins tollgate.lock</code>).</p>\n")
        }
        Some(pins) => {
            out.push_str("<p>A tool whose definition no longer matches its pin is hidden and refused.</p>\n<table id=\"pins-table\"><thead><tr><th>upstream</th><th>tool</th><th>description</th><th>digest</th></tr></thead><tbody>\n");
            for (upstream, name, digest, description) in pins {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td></tr>",
                    esc(upstream),
                    esc(name),
                    esc(description),
                    esc(digest)
                );
            }
            out.push_str("</tbody></table>\n");
        }
    }

    // The tests.
    let failed = review.tests.iter().filter(|t| t.2.is_some()).count();
    let _ = write!(
        out,
        "<h2 id=\"tests\">Policy tests</h2>\n<p>{} of {} cases pass.</p>\n<table id=\"tests-table\"><thead><tr><th>file</th><th>case</th><th>result</th></tr></thead><tbody>\n",
        review.tests.len() - failed,
        review.tests.len()
    );
    for (file, case, failure) in review.tests {
        let (class, text) = match failure {
            None => ("pass", "passes".to_owned()),
            Some(why) => ("fail", format!("FAILS: {why}")),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
            esc(file),
            esc(case),
            esc(&text)
        );
    }
    out.push_str("</tbody></table>\n");

    // The policies.
    out.push_str("<h2 id=\"policies\">Policies</h2>\n");
    for policy in pack.policies().policies() {
        let id = policy.id().to_string();
        let meta = pack.meta().get(&id);
        let kind = match (
            policy.effect() == cedar_policy::Effect::Permit,
            meta.is_some_and(|m| m.needs_approval),
        ) {
            (true, true) => "permits once a person approves",
            (true, false) => "permits",
            (false, _) => "forbids",
        };
        let _ = writeln!(
            out,
            "<section id=\"policy-{i}\"><h3><code>{i}</code> {kind}</h3><p><small>{file}</small>{reason}{approvers}</p><pre>{src}</pre></section>",
            i = esc(&id),
            file = esc(meta.map_or("", |m| m.file.as_str())),
            reason = meta
                .and_then(|m| m.reason.as_deref())
                .map(|r| format!(" — the agent is told: “{}”", esc(r)))
                .unwrap_or_default(),
            approvers = meta
                .and_then(|m| m.approvers.as_deref())
                .map(|a| format!(" — approved by the group <code>{}</code>", esc(a)))
                .unwrap_or_default(),
            src = esc(&policy.to_string()),
        );
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
