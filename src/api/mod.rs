//! The public Orgo API served by `deskd serve` (contract: shared/spec/api.md sections 0-4).
//!
//! Layout: `routes` (the router), `middleware` (request ids, error bodies, auth, rate limit),
//! `body` (JSON bodies and field checks), `error` (the error model), `access` (scope checks),
//! `views` (JSON shapes), `files` (section 7, uploads, exports and signed downloads), `templates` (section 6), `workspaces`/`computers`/`actions` (handlers; actions are forwarded to
//! the guest agent), `desktop_ws` (section 4 WebSockets relayed to the agent), `streams` (section 5 RTMP), `storage` (stored
//! screenshots), `console` (serial log), `openapi`, `listen` (sockets, sd_notify), `rate_limit`
//! (token buckets), `bad_keys` (per-peer limit on requests without a valid key), `in_flight` (calls to agents in flight per key).

mod access;
mod actions;
pub(crate) mod bad_keys;
mod body;
mod computers;
mod console;
mod desktop_ws;
mod error;
mod files;
mod in_flight;
pub(crate) mod listen;
#[cfg(test)]
mod media_tests;
mod metrics;
mod middleware;
pub mod openapi;
pub(crate) mod rate_limit;
mod resize;
mod routes;
pub(crate) mod server;
mod storage;
mod streams;
mod templates;
#[cfg(test)]
mod test_rig;
mod views;
mod workspaces;

#[cfg(test)]
mod agent_bounds_tests;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod hooks_tests;
#[cfg(test)]
mod launch_tests;
#[cfg(test)]
mod testing;

use std::sync::Arc;

pub use error::ApiError;
pub use in_flight::InFlight;
pub use routes::router;

pub use crate::computers::quota::HostFacts;
use crate::computers::Lifecycle;
use crate::config::Config;
use crate::store::Store;

/// Default Unix socket of the API.
pub const DEFAULT_SOCKET: &str = "/run/deskd/deskd.sock";
/// File in the data directory that receives the key made on first start.
pub const INITIAL_KEY_FILE: &str = "initial-api-key";

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub lifecycle: Arc<Lifecycle>,
    pub config: Arc<Config>,
    pub limiter: Arc<rate_limit::RateLimiter>,
    /// Requests without a valid key, per peer (`rate_limit.bad_key_*`).
    pub bad_keys: Arc<bad_keys::BadKeyLimiter>,
    /// Calls to guest agents in flight, per key (`limits.max_agent_calls_per_key`).
    pub agent_calls: Arc<InFlight>,
    pub host: HostFacts,
    pub metrics: Arc<metrics::Metrics>,
    pub account_id: Arc<str>,
    /// Guest networking's host side; `None` while `[network] enabled` is off.
    pub network: Option<Arc<crate::network::Network>>,
    /// Signs and checks the download URLs of stored files.
    pub signer: Arc<crate::files::signing::Signer>,
    /// Template builds (section 6); the VM runner behind it is `crate::templates::BuildRunner`.
    pub builds: Arc<crate::templates::Builds>,
}
