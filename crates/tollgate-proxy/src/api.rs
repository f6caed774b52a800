//! HTTP API tools: tools declared in the config that Tollgate itself executes as REST requests,
//! so a team can put an HTTP API in front of agents without writing an MCP server.
//!
//! Each tool says its method, a path template whose `{name}` segments come from arguments,
//! which arguments go in the query and which in a JSON body, and (optionally) which part of
//! the JSON response is the result. [`plan`] turns a call into the exact request, the same
//! way every time: the guard mints the call's credential for that method, path and body hash
//! before the request is sent, and the resource server checks it against what it received.
//!
//! The tools are served by an in-process MCP server ([`ApiServer`]) that the upstream
//! supervisor connects to like any other, so listing, naming, decisions and credentials work
//! as for every upstream. The credential reaches it in `_meta` and leaves only as the
//! request's `Authorization` header. Redirects are never followed: they could carry the
//! credential elsewhere.

use std::{sync::Arc, time::Duration};

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    },
    service::RequestContext,
};
use serde_json::{Map, Value};

use crate::intercept::CREDENTIAL_META_KEY;

use crate::config::api::Segment;
pub use crate::config::api::{ApiSpec, ApiTool, Body, DEFAULT_MAX_RESPONSE_BYTES, Method};

/// The exact request one call becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: Method,
    /// The path (with the base URL's prefix) and query, percent-encoded, as sent.
    pub path: String,
    /// The JSON body's bytes (canonical JSON), empty when there is none.
    pub body: Vec<u8>,
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
fn encode_into(out: &mut String, text: &str) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            use std::fmt::Write;
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// A scalar argument as text; `None` for objects, arrays and null.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Turns a call of `tool` with `arguments` into its request. The same call always gives the
/// same bytes. `Err` says which argument does not fit and why.
pub fn plan(
    spec: &ApiSpec,
    tool: &ApiTool,
    arguments: &Map<String, Value>,
) -> Result<ApiRequest, String> {
    let mut path = spec.prefix.clone();
    let mut used: Vec<&str> = Vec::new();
    for segment in &tool.segments {
        path.push('/');
        match segment {
            Segment::Literal(text) => path.push_str(text),
            Segment::Argument(name) => {
                let value = arguments.get(name).ok_or_else(|| {
                    format!("argument `{name}` is required: it is part of the path")
                })?;
                let text = scalar(value)
                    .ok_or_else(|| format!("argument `{name}` must be a string, number or boolean: it is part of the path"))?;
                if text.is_empty() || text == "." || text == ".." {
                    return Err(format!(
                        "argument `{name}` cannot be empty, `.` or `..`: it is one segment of the path"
                    ));
                }
                encode_into(&mut path, &text);
                used.push(name);
            }
        }
    }
    let mut separator = '?';
    for name in &tool.query {
        used.push(name);
        let values: Vec<String> = match arguments.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    scalar(v).ok_or_else(|| {
                        format!("argument `{name}` must hold strings, numbers or booleans: it goes in the query")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(value) => vec![scalar(value).ok_or_else(|| {
                format!("argument `{name}` must be a string, number, boolean or a list of them: it goes in the query")
            })?],
        };
        for value in values {
            path.push(separator);
            separator = '&';
            encode_into(&mut path, name);
            path.push('=');
            encode_into(&mut path, &value);
        }
    }
    let body_fields: Map<String, Value> = match &tool.body {
        Body::None => Map::new(),
        Body::Rest => arguments
            .iter()
            .filter(|(k, _)| !used.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Body::Fields(fields) => fields
            .iter()
            .filter_map(|f| arguments.get(f).map(|v| (f.clone(), v.clone())))
            .collect(),
    };
    // An argument the request has no place for is refused, never dropped: the agent must not
    // believe something was sent that was not.
    if let Some(stray) = arguments
        .keys()
        .find(|k| !used.contains(&k.as_str()) && !body_fields.contains_key(k.as_str()))
    {
        return Err(format!(
            "argument `{stray}` has no place in the {} request this tool makes",
            tool.method.as_str()
        ));
    }
    let body = if tool.body == Body::None {
        Vec::new()
    } else {
        tollgate_mint::jcs::canonical(&Value::Object(body_fields)).into_bytes()
    };
    Ok(ApiRequest {
        method: tool.method,
        path,
        body,
    })
}

/// The in-process MCP server that executes one API upstream's tools.
#[derive(Debug, Clone)]
pub struct ApiServer {
    name: String,
    spec: Arc<ApiSpec>,
    client: reqwest::Client,
}

impl ApiServer {
    pub fn new(name: &str, spec: Arc<ApiSpec>, timeout: Duration) -> Result<Self, String> {
        let client = crate::http_client(Some(timeout))?;
        Ok(Self {
            name: name.to_owned(),
            spec,
            client,
        })
    }

    fn failure(text: String) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(text)])
    }

    async fn execute(
        &self,
        tool: &ApiTool,
        arguments: &Map<String, Value>,
        credential: Option<&str>,
    ) -> CallToolResult {
        let request = match plan(&self.spec, tool, arguments) {
            Ok(request) => request,
            Err(why) => return Self::failure(why),
        };
        let url = format!("{}{}", self.spec.origin, request.path);
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self
            .client
            .request(method, &url)
            .header(http::header::ACCEPT, "application/json");
        for (name, value) in &self.spec.headers {
            builder = builder.header(name.as_str(), value.expose());
        }
        if let Some(token) = credential {
            builder = builder.bearer_auth(token);
        }
        if tool.body != Body::None {
            builder = builder
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(request.body);
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Self::failure(format!("`{}` did not answer in time", self.name));
            }
            Err(e) if e.is_connect() => {
                return Self::failure(format!("`{}` cannot be reached", self.name));
            }
            Err(_) => return Self::failure(format!("the request to `{}` failed", self.name)),
        };
        let status = response.status();
        let body = match read_limited(response, self.spec.max_response_bytes).await {
            Ok(body) => body,
            Err(why) => return Self::failure(why),
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let mut excerpt: String = text.chars().take(2048).collect();
            if excerpt.len() < text.len() {
                excerpt.push('…');
            }
            return Self::failure(format!("HTTP {}: {excerpt}", status.as_u16()));
        }
        let result = match (&json, tool.result.as_deref()) {
            (Some(value), Some(pointer)) => match value.pointer(pointer) {
                Some(part) => Some(part.clone()),
                None => {
                    return Self::failure(format!(
                        "the answer has nothing at `{pointer}`, where this tool's result is configured to be"
                    ));
                }
            },
            (Some(value), None) => Some(value.clone()),
            (None, _) => None,
        };
        match result {
            Some(value) => {
                let shown = value.to_string();
                let mut out = CallToolResult::success(vec![ContentBlock::text(shown)]);
                if value.is_object() {
                    out.structured_content = Some(value);
                }
                out
            }
            None => CallToolResult::success(vec![ContentBlock::text(text)]),
        }
    }
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(format!(
                        "the answer is larger than {limit} bytes; it was not read"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err("the answer was cut off".to_owned()),
        }
    }
}

impl ServerHandler for ApiServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new(self.name.clone(), env!("CARGO_PKG_VERSION")),
        )
    }

    async fn list_tools(
        &self,
        _params: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = self
            .spec
            .tools
            .iter()
            .map(|t| {
                Tool::new(
                    t.name.clone(),
                    t.description.clone(),
                    Arc::new(t.input_schema.clone()),
                )
                .annotate(t.annotations.clone())
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(tool) = self.spec.tool(&params.name) else {
            return Err(McpError::invalid_params(
                format!("unknown tool `{}`", params.name),
                None,
            ));
        };
        let credential = ctx.meta.get(CREDENTIAL_META_KEY).and_then(Value::as_str);
        let arguments = params.arguments.unwrap_or_default();
        Ok(CallToolResponse::Complete(
            self.execute(tool, &arguments, credential).await,
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{ConfigError, api::RawApiTool};

    fn spec(tools: Value) -> Result<ApiSpec, ConfigError> {
        let raw: Vec<RawApiTool> = serde_json::from_value(tools).unwrap();
        ApiSpec::from_raw(
            "http://127.0.0.1:9/v1/",
            Default::default(),
            raw,
            None,
            &|f| format!("upstream[0].{f}"),
        )
    }

    fn transfer() -> Value {
        json!([{
            "name": "refund",
            "method": "POST",
            "path": "/customers/{customer_id}/refunds",
            "query": ["idempotency"],
            "input_schema": {"type": "object", "properties": {
                "customer_id": {"type": "string"}, "amount": {"type": "number"},
                "reason": {"type": "string"}, "idempotency": {"type": "string"}},
                "required": ["customer_id", "amount"]}
        }])
    }

    #[test]
    fn a_call_becomes_one_exact_request() {
        let spec = spec(transfer()).unwrap();
        let tool = spec.tool("refund").unwrap();
        let args =
            json!({"customer_id": "cus 42/x", "amount": 40, "reason": "late", "idempotency": "k1"});
        let request = plan(&spec, tool, args.as_object().unwrap()).unwrap();
        assert_eq!(spec.origin, "http://127.0.0.1:9");
        assert_eq!(request.method, Method::Post);
        assert_eq!(
            request.path,
            "/v1/customers/cus%2042%2Fx/refunds?idempotency=k1"
        );
        assert_eq!(request.body, br#"{"amount":40,"reason":"late"}"#);
        // The same call in another key order is the same request.
        let reordered: Value = serde_json::from_str(
            r#"{"reason":"late","idempotency":"k1","amount":40,"customer_id":"cus 42/x"}"#,
        )
        .unwrap();
        assert_eq!(
            plan(&spec, tool, reordered.as_object().unwrap()).unwrap(),
            request
        );
    }

    #[test]
    fn the_request_url_is_built_from_the_normalized_base() {
        let raw: Vec<RawApiTool> = serde_json::from_value(json!([{"name": "get", "method": "GET",
            "path": "/c/{id}", "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}]))
        .unwrap();
        // A base whose path the URL parser rewrites (a space, a `..`), longer than it was.
        let spec = ApiSpec::from_raw(
            "http://API.example:80/v 1/x/../api",
            Default::default(),
            raw,
            None,
            &|f| f.to_owned(),
        )
        .unwrap();
        let request = plan(
            &spec,
            spec.tool("get").unwrap(),
            json!({"id": "7"}).as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(spec.origin, "http://api.example");
        assert_eq!(request.path, "/v%201/api/c/7");
    }

    #[test]
    fn arguments_that_do_not_fit_are_refused_by_name() {
        let spec = spec(transfer()).unwrap();
        let tool = spec.tool("refund").unwrap();
        for (args, named) in [
            (json!({"customer_id": "..", "amount": 1}), "customer_id"),
            (json!({"customer_id": "", "amount": 1}), "customer_id"),
            (json!({"customer_id": {"a": 1}, "amount": 1}), "customer_id"),
            (json!({"amount": 1}), "customer_id"),
            (
                json!({"customer_id": "c", "amount": 1, "idempotency": {"x": 1}}),
                "idempotency",
            ),
        ] {
            let err = plan(&spec, tool, args.as_object().unwrap()).unwrap_err();
            assert!(err.contains(&format!("`{named}`")), "{err}");
        }
        let get = self::spec(json!([{"name": "get", "method": "GET", "path": "/c/{id}",
            "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}]))
        .unwrap();
        let err = plan(
            &get,
            get.tool("get").unwrap(),
            json!({"id": "a", "extra": 1}).as_object().unwrap(),
        )
        .unwrap_err();
        assert!(err.contains("`extra` has no place"), "{err}");
    }

    #[test]
    fn a_bad_tool_declaration_names_its_field() {
        let cases = [
            (
                json!([{"name": "x", "method": "GET", "path": "c/{id}", "input_schema": {"type": "object"}}]),
                "tool[0].path",
            ),
            (
                json!([{"name": "x", "method": "GET", "path": "/c/{id}", "input_schema": {"type": "object", "properties": {"id": {}}}}]),
                "tool[0].path",
            ),
            (
                json!([{"name": "x", "method": "GET", "path": "/c/../d", "input_schema": {"type": "object"}}]),
                "tool[0].path",
            ),
            (
                json!([{"name": "x", "method": "GET", "path": "/c", "body": "rest", "input_schema": {"type": "object"}}]),
                "tool[0].body",
            ),
            (
                json!([{"name": "x", "method": "GET", "path": "/c", "query": ["q"], "input_schema": {"type": "object"}}]),
                "tool[0].query",
            ),
            (
                json!([{"name": "x", "method": "GET", "path": "/c", "input_schema": {"type": "array"}}]),
                "tool[0].input_schema.type",
            ),
            (
                json!([{"name": "x y", "method": "GET", "path": "/c", "input_schema": {"type": "object"}}]),
                "tool[0].name",
            ),
            (
                json!([{"name": "x", "method": "POST", "path": "/c", "result": "data", "input_schema": {"type": "object"}}]),
                "tool[0].result",
            ),
        ];
        for (tools, field) in cases {
            let err = spec(tools.clone()).unwrap_err().to_string();
            assert!(err.contains(field), "{tools}: {err}");
        }
    }
}
