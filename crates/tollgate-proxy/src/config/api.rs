//! `[[upstream]]` tables with `api`: an HTTP API whose tools the config declares, validated
//! into an [`ApiSpec`] (methods, path templates, query and body arguments, the result's
//! place). What a call becomes and the in-process server that sends it are in the relay's
//! `api` module.

use rmcp::model::ToolAnnotations;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ConfigError, Secret};

/// The largest response body an API tool reads by default.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The HTTP methods a tool may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }

    fn takes_body(self) -> bool {
        matches!(self, Self::Post | Self::Put | Self::Patch)
    }
}

/// Which arguments form the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// Every argument not in the path or the query.
    Rest,
    /// These arguments.
    Fields(Vec<String>),
}

/// One path segment of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Argument(String),
}

/// One configured API tool.
#[derive(Debug, Clone)]
pub struct ApiTool {
    pub name: String,
    pub description: String,
    pub input_schema: Map<String, Value>,
    pub method: Method,
    pub(crate) segments: Vec<Segment>,
    pub query: Vec<String>,
    pub body: Body,
    /// A JSON pointer into the response: the part that is the result.
    pub result: Option<String>,
    pub annotations: ToolAnnotations,
}

/// An API upstream: its base URL, its static headers and its tools.
#[derive(Debug, Clone)]
pub struct ApiSpec {
    /// Scheme, host and port, as the URL parser normalized them.
    pub origin: String,
    /// The base URL's path (empty or starting with `/`), as the URL parser normalized it.
    pub(crate) prefix: String,
    pub headers: std::collections::BTreeMap<String, Secret>,
    pub tools: Vec<ApiTool>,
    pub max_response_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiTool {
    name: String,
    #[serde(default)]
    description: String,
    method: Method,
    path: String,
    #[serde(default)]
    query: Vec<String>,
    body: Option<RawBody>,
    result: Option<String>,
    input_schema: Value,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    destructive: bool,
    #[serde(default)]
    idempotent: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawBody {
    Keyword(String),
    Fields(Vec<String>),
}

fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl ApiSpec {
    /// Validates an `api` upstream's base URL, headers and tools. `key` names a field of this
    /// upstream in errors.
    pub(crate) fn from_raw(
        base: &str,
        headers: std::collections::BTreeMap<String, Secret>,
        tools: Vec<RawApiTool>,
        max_response_bytes: Option<usize>,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Self, ConfigError> {
        let url = reqwest::Url::parse(base).map_err(|_| {
            ConfigError::invalid(key("api"), format!("an http(s) URL, not `{base}`"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::invalid(
                key("api"),
                format!("an http or https URL with a host, not `{base}`"),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::invalid(
                key("api"),
                "a URL without credentials; give the API its credential in `credential`",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::invalid(
                key("api"),
                "a base URL without query or fragment; tools add their own query",
            ));
        }
        if tools.is_empty() {
            return Err(ConfigError::invalid(
                key("tool"),
                "at least one `[[upstream.tool]]` for an `api` upstream",
            ));
        }
        let prefix = url.path().trim_end_matches('/').to_owned();
        let origin = url.origin().ascii_serialization();
        let mut out = Vec::with_capacity(tools.len());
        for (i, raw) in tools.into_iter().enumerate() {
            let key = |field: &str| key(&format!("tool[{i}].{field}"));
            if !valid_tool_name(&raw.name) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!(
                        "1 to 128 characters from `A-Z a-z 0-9 _ - .`, not `{}`",
                        raw.name
                    ),
                ));
            }
            if out.iter().any(|t: &ApiTool| t.name == raw.name) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!(
                        "a name no other tool of this upstream has; `{}` is used twice",
                        raw.name
                    ),
                ));
            }
            let Value::Object(schema) = raw.input_schema else {
                return Err(ConfigError::invalid(
                    key("input_schema"),
                    "a JSON Schema object with `type = \"object\"`",
                ));
            };
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Err(ConfigError::invalid(
                    key("input_schema.type"),
                    "\"object\": a tool's arguments are an object",
                ));
            }
            let properties = schema
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let segments = parse_path(&raw.path).map_err(|why| {
                ConfigError::invalid(key("path"), format!("{why}, in `{}`", raw.path))
            })?;
            let mut placed: Vec<&str> = Vec::new();
            for segment in &segments {
                if let Segment::Argument(name) = segment {
                    if !properties.contains_key(name) || !required.contains(&name.as_str()) {
                        return Err(ConfigError::invalid(
                            key("path"),
                            format!(
                                "`{{{name}}}` to be a required property of `input_schema`: a path cannot leave a segment out"
                            ),
                        ));
                    }
                    if placed.contains(&name.as_str()) {
                        return Err(ConfigError::invalid(
                            key("path"),
                            format!("`{{{name}}}` once"),
                        ));
                    }
                    placed.push(name);
                }
            }
            for name in &raw.query {
                if !properties.contains_key(name) {
                    return Err(ConfigError::invalid(
                        key("query"),
                        format!("`{name}` to be a property of `input_schema`"),
                    ));
                }
                if placed.contains(&name.as_str()) {
                    return Err(ConfigError::invalid(
                        key("query"),
                        format!("`{name}` in one place only; it is already in the path"),
                    ));
                }
                placed.push(name);
            }
            let body = match raw.body {
                None if raw.method.takes_body() => Body::Rest,
                None => Body::None,
                Some(RawBody::Keyword(word)) => match word.as_str() {
                    "none" => Body::None,
                    "rest" => Body::Rest,
                    other => {
                        return Err(ConfigError::invalid(
                            key("body"),
                            format!(
                                "`\"none\"`, `\"rest\"` or a list of argument names, not `{other}`"
                            ),
                        ));
                    }
                },
                Some(RawBody::Fields(fields)) => {
                    for name in &fields {
                        if !properties.contains_key(name) || placed.contains(&name.as_str()) {
                            return Err(ConfigError::invalid(
                                key("body"),
                                format!(
                                    "`{name}` to be a property of `input_schema` not already in the path or query"
                                ),
                            ));
                        }
                    }
                    Body::Fields(fields)
                }
            };
            if body != Body::None && !raw.method.takes_body() {
                return Err(ConfigError::invalid(
                    key("body"),
                    format!(
                        "no body for {}: put its arguments in `path` or `query`",
                        raw.method.as_str()
                    ),
                ));
            }
            if let Some(pointer) = &raw.result
                && !(pointer.is_empty() || pointer.starts_with('/'))
            {
                return Err(ConfigError::invalid(
                    key("result"),
                    format!("a JSON pointer such as `/data`, not `{pointer}`"),
                ));
            }
            let mut annotations = ToolAnnotations::default();
            annotations.read_only_hint = Some(raw.read_only);
            annotations.destructive_hint = Some(raw.destructive);
            annotations.idempotent_hint = Some(raw.idempotent || raw.read_only);
            annotations.open_world_hint = Some(false);
            out.push(ApiTool {
                name: raw.name,
                description: raw.description,
                input_schema: schema,
                method: raw.method,
                segments,
                query: raw.query,
                body,
                result: raw.result,
                annotations,
            });
        }
        let max_response_bytes = match max_response_bytes {
            None => DEFAULT_MAX_RESPONSE_BYTES,
            Some(0) => {
                return Err(ConfigError::invalid(
                    key("max_response_bytes"),
                    "a positive number of bytes",
                ));
            }
            Some(n) => n,
        };
        Ok(Self {
            origin,
            prefix,
            headers,
            tools: out,
            max_response_bytes,
        })
    }

    pub fn tool(&self, name: &str) -> Option<&ApiTool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

fn parse_path(path: &str) -> Result<Vec<Segment>, &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("a path starting with `/`");
    };
    if path.contains(['?', '#']) {
        return Err("a path without query or fragment (use `query`)");
    }
    let mut segments = Vec::new();
    for part in rest.split('/') {
        if let Some(inner) = part.strip_prefix('{') {
            let name = inner
                .strip_suffix('}')
                .ok_or("`{name}` to fill a whole segment")?;
            if name.is_empty() || name.contains(['{', '}']) {
                return Err("`{name}` with an argument's name");
            }
            segments.push(Segment::Argument(name.to_owned()));
        } else {
            if part.contains(['{', '}']) {
                return Err("`{name}` to fill a whole segment");
            }
            if part == "." || part == ".." {
                return Err("no `.` or `..` segments");
            }
            segments.push(Segment::Literal(part.to_owned()));
        }
    }
    Ok(segments)
}
