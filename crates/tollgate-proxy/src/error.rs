//! The proxy's one error type, tagged with who is at fault, and its single mapping to the
//! JSON-RPC answer the agent receives.

use rmcp::{ErrorData as McpError, model::ErrorCode};

/// Who caused a failure: it decides the JSON-RPC code and whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The agent sent something wrong (unknown tool, bad cursor, bad parameters).
    Agent,
    /// The upstream failed, timed out or is down.
    Upstream,
    /// The operator's configuration does not allow the request.
    Config,
    /// A bug or resource failure inside Tollgate.
    Internal,
}

/// An error on the relay path.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("unknown tool `{name}`")]
    UnknownTool { name: String },
    #[error("unknown prompt `{name}`")]
    UnknownPrompt { name: String },
    #[error("no upstream serves resource `{uri}`")]
    UnknownResource { uri: String },
    #[error("invalid pagination cursor `{cursor}`")]
    InvalidCursor { cursor: String },
    #[error("upstream `{upstream}` is not connected")]
    UpstreamDown { upstream: String },
    #[error(
        "upstream `{upstream}` did not answer within {timeout_ms} ms; the request was cancelled"
    )]
    UpstreamTimeout { upstream: String, timeout_ms: u128 },
    #[error("upstream `{upstream}` closed the connection before answering")]
    UpstreamClosed { upstream: String },
    #[error("upstream `{upstream}` failed: {message}")]
    UpstreamFailed { upstream: String, message: String },
    /// An error the upstream answered with; relayed as it came.
    #[error("{0}")]
    Relayed(McpError),
    #[error("the request was cancelled")]
    Cancelled,
    #[error("unknown or expired `requestState`; call the tool again without it")]
    UnknownInputState,
    #[error("{reason}")]
    GrantRefused { reason: String },
}

impl ProxyError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::UnknownTool { .. }
            | Self::UnknownPrompt { .. }
            | Self::UnknownResource { .. }
            | Self::InvalidCursor { .. }
            | Self::UnknownInputState
            | Self::GrantRefused { .. }
            | Self::Cancelled => Fault::Agent,
            Self::UpstreamDown { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamClosed { .. }
            | Self::UpstreamFailed { .. }
            | Self::Relayed(_) => Fault::Upstream,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::UpstreamDown { .. } | Self::UpstreamTimeout { .. } | Self::UpstreamClosed { .. }
        )
    }

    /// Turns an rmcp service error on the way to `upstream` into ours.
    pub(crate) fn from_service(upstream: &str, error: rmcp::service::ServiceError) -> Self {
        use rmcp::service::ServiceError as E;
        match error {
            E::McpError(e) => Self::Relayed(e),
            E::TransportClosed | E::TransportSend(_) => Self::UpstreamClosed {
                upstream: upstream.to_owned(),
            },
            E::Timeout { timeout } => Self::UpstreamTimeout {
                upstream: upstream.to_owned(),
                timeout_ms: timeout.as_millis(),
            },
            E::Cancelled { .. } => Self::Cancelled,
            other => Self::UpstreamFailed {
                upstream: upstream.to_owned(),
                message: other.to_string(),
            },
        }
    }

    /// The JSON-RPC error the agent receives. The one place errors become wire answers.
    pub fn into_mcp(self) -> McpError {
        let retryable = self.retryable();
        match self {
            Self::Relayed(e) => e,
            Self::UnknownTool { .. }
            | Self::UnknownPrompt { .. }
            | Self::InvalidCursor { .. }
            | Self::UnknownInputState => McpError::invalid_params(self.to_string(), None),
            Self::UnknownResource { .. } => {
                McpError::new(ErrorCode::RESOURCE_NOT_FOUND, self.to_string(), None)
            }
            Self::Cancelled => McpError::new(ErrorCode::INTERNAL_ERROR, self.to_string(), None),
            Self::GrantRefused { .. } => McpError::new(
                ErrorCode(crate::intercept::GRANT_REFUSED),
                self.to_string(),
                None,
            ),
            Self::UpstreamDown { ref upstream }
            | Self::UpstreamTimeout { ref upstream, .. }
            | Self::UpstreamClosed { ref upstream }
            | Self::UpstreamFailed { ref upstream, .. } => {
                let data = serde_json::json!({ "upstream": upstream, "retryable": retryable });
                McpError::internal_error(self.to_string(), Some(data))
            }
        }
    }
}
