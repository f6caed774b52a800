//! OpenTelemetry export of decided calls: one span per `tools/call`, from the decision to the
//! call's end (or to the refusal), sent in batches to an OTLP/HTTP collector as JSON
//! (`POST <endpoint>/v1/traces`). The span carries the session, tool, upstream, decision,
//! determining policies, pack version and outcome: never arguments, tokens or reasons an agent
//! wrote. A `traceparent` the agent sends in the call's `_meta` (W3C trace context) makes the
//! span a child of the agent's own.
//!
//! Export is best effort and never slows a call: spans go into a bounded queue that one
//! thread drains; when the collector is slow or gone, spans beyond the queue are dropped and
//! counted, and the log says so once a minute at most.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tracing::warn;

/// Spans queued at most; beyond, they are dropped.
const QUEUE: usize = 4096;
/// Spans per request at most.
const BATCH: usize = 512;

/// One attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    Text(String),
    List(Vec<String>),
    Int(i64),
}

/// A finished call, ready to export.
#[derive(Debug, Clone)]
pub struct CallSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The agent's span, when it sent a `traceparent`.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub start_unix_nanos: u128,
    pub end_unix_nanos: u128,
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set for a call that failed or was refused.
    pub error: Option<String>,
}

/// Where a call's span starts: its trace, its own id, its parent and when.
#[derive(Debug, Clone)]
pub struct SpanStart {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub start_unix_nanos: u128,
}

impl SpanStart {
    /// A span starting now, in the agent's trace when `traceparent` is a valid W3C one.
    pub fn now(traceparent: Option<&str>) -> Self {
        let (trace_id, parent_span_id) = match traceparent.and_then(parse_traceparent) {
            Some((trace, parent)) => (trace, Some(parent)),
            None => (random_hex(16), None),
        };
        Self {
            trace_id,
            span_id: random_hex(8),
            parent_span_id,
            start_unix_nanos: unix_nanos(),
        }
    }
}

/// `00-<trace id>-<parent id>-<flags>`, with ids that are not all zeros.
fn parse_traceparent(text: &str) -> Option<(String, String)> {
    let mut parts = text.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    (version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && flags.len() == 2
        && flags.bytes().all(|b| b.is_ascii_hexdigit()))
    .then(|| (trace.to_owned(), parent.to_owned()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // An id that fails to be random is still an id; it only has to be unlikely to collide.
    if getrandom::fill(&mut buf).is_err() {
        let seed = unix_nanos().to_le_bytes();
        for (b, s) in buf.iter_mut().zip(seed.iter().cycle()) {
            *b = *s;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The exporter: a queue and the thread that sends it.
#[derive(Debug)]
pub struct Exporter {
    queue: Mutex<Option<SyncSender<CallSpan>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub dropped: AtomicU64,
    pub exported: AtomicU64,
    pub failed: AtomicU64,
}

impl Exporter {
    /// Starts sending to `endpoint` (`http://collector:4318`), as `service`, at least every
    /// `every`.
    pub fn start(endpoint: &str, service: &str, every: Duration) -> std::sync::Arc<Self> {
        let (queue, spans) = mpsc::sync_channel(QUEUE);
        let exporter = std::sync::Arc::new(Self {
            queue: Mutex::new(Some(queue)),
            thread: Mutex::new(None),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let service = service.to_owned();
        let counters = std::sync::Arc::clone(&exporter);
        let thread = std::thread::Builder::new()
            .name("tollgate-otlp".into())
            .spawn(move || send_all(&spans, &url, &service, every, &counters));
        match thread {
            Ok(thread) => {
                *exporter
                    .thread
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(thread);
            }
            Err(e) => {
                warn!(error = %e, "the OpenTelemetry exporter could not start; no spans are sent")
            }
        }
        exporter
    }

    /// Queues `span`; drops it when the queue is full.
    pub fn export(&self, span: CallSpan) {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(queue) = queue.as_ref() else {
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(span) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends what is queued and stops.
    pub fn shutdown(&self) {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn send_all(
    spans: &Receiver<CallSpan>,
    url: &str,
    service: &str,
    every: Duration,
    counters: &Exporter,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        warn!("the OpenTelemetry exporter has no runtime; no spans are sent");
        return;
    };
    let client = match tollgate_proxy::http_client(Some(Duration::from_secs(5))) {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "the OpenTelemetry exporter has no HTTP client; no spans are sent");
            return;
        }
    };
    let mut last_warning: Option<Instant> = None;
    let mut open = true;
    while open {
        let mut batch = Vec::new();
        let deadline = Instant::now() + every;
        while batch.len() < BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match spans.recv_timeout(left) {
                Ok(span) => batch.push(span),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let body = request(service, &batch);
        let sent = runtime.block_on(async {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
        });
        match sent {
            Ok(_) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                counters.failed.fetch_add(n, Ordering::Relaxed);
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    warn!(%url, error = %e, spans = n, "spans could not be sent to the OpenTelemetry collector");
                }
            }
        }
    }
}

/// An OTLP/HTTP JSON `ExportTraceServiceRequest` for `spans`.
pub fn request(service: &str, spans: &[CallSpan]) -> Value {
    let attribute = |key: &str, value: &Attr| {
        let value = match value {
            Attr::Text(s) => json!({ "stringValue": s }),
            Attr::Int(n) => json!({ "intValue": n.to_string() }),
            Attr::List(items) => json!({
                "arrayValue": { "values": items.iter().map(|s| json!({ "stringValue": s })).collect::<Vec<_>>() }
            }),
        };
        json!({ "key": key, "value": value })
    };
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut out = json!({
                "traceId": span.trace_id,
                "spanId": span.span_id,
                "name": span.name,
                // SPAN_KIND_SERVER: Tollgate serves the agent's call.
                "kind": 2,
                "startTimeUnixNano": span.start_unix_nanos.to_string(),
                "endTimeUnixNano": span.end_unix_nanos.to_string(),
                "attributes": span.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
                "status": match &span.error {
                    // STATUS_CODE_ERROR
                    Some(message) => json!({ "code": 2, "message": message }),
                    None => json!({ "code": 0 }),
                },
            });
            if let (Some(parent), Some(map)) = (&span.parent_span_id, out.as_object_mut()) {
                map.insert("parentSpanId".into(), Value::from(parent.clone()));
            }
            out
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [ { "key": "service.name", "value": { "stringValue": service } } ] },
            "scopeSpans": [{ "scope": { "name": "tollgate", "version": env!("CARGO_PKG_VERSION") }, "spans": spans }]
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_taken_only_when_well_formed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(good),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned()
            ))
        );
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            "",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let fresh = SpanStart::now(None);
        assert_eq!((fresh.trace_id.len(), fresh.span_id.len()), (32, 16));
        assert!(fresh.parent_span_id.is_none());
    }
}
