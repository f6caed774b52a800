//! The fast path's way to a streamable-HTTP upstream: raw `tools/call` POSTs on the very session
//! rmcp's client opened (so the server sees one client, with one state), answered with the
//! response bytes; progress, log messages and server→client requests that arrive on the call's
//! own event stream are handed to the relay.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures::StreamExt;
use http::{HeaderName, HeaderValue};
use rmcp::{
    model::ClientJsonRpcMessage,
    transport::streamable_http_client::{
        SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
        StreamableHttpResponseLimits,
    },
};
use sse_stream::Sse;

use crate::{ProxyError, intercept::Credential};

/// The session id rmcp's client uses with an upstream, as it goes by.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionSlot(Arc<RwLock<Option<Arc<str>>>>);

impl SessionSlot {
    fn set(&self, id: Option<&str>) {
        if let Some(id) = id {
            let mut slot = self
                .0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.as_deref() != Some(id) {
                *slot = Some(id.into());
            }
        }
    }

    fn get(&self) -> Option<Arc<str>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// rmcp's reqwest client, noting the session id of every request and response.
#[derive(Debug, Clone)]
pub(crate) struct SessionTap {
    pub inner: reqwest::Client,
    pub session: SessionSlot,
}

type PostResult = Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>;

impl SessionTap {
    /// Notes the session id a POST carries and the one its answer assigns.
    async fn observe(
        &self,
        session_id: Option<Arc<str>>,
        post: impl Future<Output = PostResult>,
    ) -> PostResult {
        self.session.set(session_id.as_deref());
        let result = post.await;
        if let Ok(
            StreamableHttpPostResponse::Json(_, Some(id))
            | StreamableHttpPostResponse::Sse(_, Some(id)),
        ) = &result
        {
            self.session.set(Some(id));
        }
        result
    }
}

/// Moves a call's per-call credential from its `_meta` (where the relay put it) to the
/// request's `Authorization` header: an HTTP upstream gets it as a bearer token, not in the body.
fn take_credential(message: &mut ClientJsonRpcMessage) -> Option<String> {
    let rmcp::model::JsonRpcMessage::Request(request) = message else {
        return None;
    };
    let rmcp::model::ClientRequest::CallToolRequest(call) = &mut request.request else {
        return None;
    };
    let meta = call.params.meta.as_mut()?;
    let token = meta.0.0.remove(crate::intercept::CREDENTIAL_META_KEY)?;
    if meta.0.0.is_empty() {
        call.params.meta = None;
    }
    token.as_str().map(str::to_owned)
}

impl StreamableHttpClient for SessionTap {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        mut message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> PostResult {
        let auth_header = take_credential(&mut message).or(auth_header);
        self.observe(
            session_id.clone(),
            self.inner
                .post_message(uri, message, session_id, auth_header, custom_headers),
        )
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        mut message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> PostResult {
        let auth_header = take_credential(&mut message).or(auth_header);
        self.observe(
            session_id.clone(),
            self.inner.post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            ),
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        mut message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> PostResult {
        let auth_header = take_credential(&mut message).or(auth_header);
        self.observe(
            session_id.clone(),
            self.inner.post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            ),
        )
        .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.inner
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<Sse, SseError>>,
        StreamableHttpError<Self::Error>,
    > {
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<Sse, SseError>>,
        StreamableHttpError<Self::Error>,
    > {
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

/// Raw POSTs to one streamable-HTTP upstream.
#[derive(Debug)]
pub(crate) struct HttpLane {
    client: reqwest::Client,
    url: String,
    headers: http::HeaderMap,
    session: SessionSlot,
    protocol_version: String,
    upstream: String,
    max_bytes: usize,
    next: std::sync::atomic::AtomicU64,
}

impl HttpLane {
    pub(crate) fn new(
        client: reqwest::Client,
        url: String,
        headers: http::HeaderMap,
        session: SessionSlot,
        protocol_version: String,
        upstream: String,
        max_bytes: usize,
    ) -> Self {
        Self {
            client,
            url,
            headers,
            session,
            protocol_version,
            upstream,
            max_bytes,
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A fresh raw call number.
    pub(crate) fn next_call(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn post(&self, body: Vec<u8>, bearer: Option<&Credential>) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", &self.protocol_version)
            .body(body);
        if let Some(session) = self.session.get() {
            request = request.header("mcp-session-id", session.as_ref());
        }
        if let Some(credential) = bearer {
            request = request.bearer_auth(credential.expose());
        }
        request
    }

    fn failed(&self, message: impl Into<String>) -> ProxyError {
        ProxyError::UpstreamFailed {
            upstream: self.upstream.clone(),
            message: message.into(),
        }
    }

    /// POSTs one request and returns the response message for `id` as bytes; every other
    /// message on the response stream goes to `on_message` as it arrives.
    pub(crate) async fn call(
        &self,
        body: Vec<u8>,
        id: &str,
        bearer: Option<&Credential>,
        mut on_message: impl FnMut(&[u8]),
    ) -> Result<Vec<u8>, ProxyError> {
        let response = self.post(body, bearer).send().await.map_err(|e| {
            if e.is_connect() {
                ProxyError::UpstreamDown {
                    upstream: self.upstream.clone(),
                }
            } else {
                self.failed(format!("request failed: {}", e.without_url()))
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.failed(format!("answered HTTP {status}")));
        }
        let event_stream = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !event_stream {
            if response
                .content_length()
                .is_some_and(|n| n > self.max_bytes as u64)
            {
                return Err(self.failed("answer over the size limit"));
            }
            let bytes = response.bytes().await.map_err(|e| {
                self.failed(format!("reading the answer failed: {}", e.without_url()))
            })?;
            return Ok(bytes.to_vec());
        }
        let mut events = sse_stream::SseStream::from_bytes_stream(response.bytes_stream());
        let wanted = format!("\"{id}\"");
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| self.failed(format!("event stream broke: {e}")))?;
            let Some(data) = event.data else { continue };
            if data.len() > self.max_bytes {
                return Err(self.failed("event over the size limit"));
            }
            let bytes = data.into_bytes();
            let Ok(envelope) = crate::wire::Envelope::parse(&bytes) else {
                continue;
            };
            if envelope.method.is_none() && envelope.id.is_some_and(|i| i.get() == wanted) {
                return Ok(bytes);
            }
            on_message(&bytes);
        }
        Err(ProxyError::UpstreamClosed {
            upstream: self.upstream.clone(),
        })
    }

    /// POSTs a JSON-RPC response (to a server→client request) or a notification.
    pub(crate) async fn deliver(&self, body: Vec<u8>) -> Result<(), ProxyError> {
        let response = self
            .post(body, None)
            .send()
            .await
            .map_err(|e| self.failed(format!("request failed: {}", e.without_url())))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.failed(format!("answered HTTP {}", response.status())))
        }
    }
}
