//! dockgc's Docker Engine adapter: the only code that knows Docker's API.
//!
//! [`Engine`] connects to an endpoint resolved like the docker CLI does ([`endpoint`]), takes a
//! [`dockgc_core::Snapshot`], and deletes objects without ever forcing. API JSON is converted
//! to the core model by the pure functions in [`convert`], tested on recorded responses.

pub mod client;
pub mod convert;
pub mod endpoint;
pub mod engine;
pub mod host;
pub mod workload;

pub use endpoint::{Endpoint, Environment};
pub use engine::Engine;

/// Errors the rest of dockgc acts on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine could not be reached (connection refused, timeout, broken stream).
    #[error("cannot reach the Docker engine at {endpoint}: {message}")]
    Unreachable {
        /// The endpoint tried, with where it came from.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// 404: the object does not exist (for a deletion: already gone).
    #[error("not found: {0}")]
    NotFound(String),
    /// 409: the engine refused because the object is in use or referenced.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Any other error status from the engine.
    #[error("{what}: engine answered {status}: {message}")]
    Api {
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// The engine answered something dockgc does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Bad connection settings (host URL, context, certificates).
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The typed error of an error status.
    pub fn from_status(status: u16, what: &str, body: &[u8]) -> Self {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
        match status {
            404 => Self::NotFound(format!("{what}: {message}")),
            409 => Self::Conflict(format!("{what}: {message}")),
            _ => Self::Api {
                what: what.to_string(),
                status,
                message,
            },
        }
    }
}
