//! deskd: a self-hosted, single-node hypervisor daemon serving the Orgo computer API.
//!
//! Layout (see `../shared/design/architecture.md`):
//! - `api`: the HTTP API (routes, auth, errors, websockets) served by `deskd serve`.
//! - `cli`: the operator's command line (`deskd ls`, `create`, `bash`, ...), a client of that API.
//! - `store`: SQLite state (keys, workspaces, computers, ...).
//! - `computers`: lifecycle of computers and supervision of their VMM processes.
//! - `vmm`: the embedded virtual machine monitor run as `deskd vmm` (one process per VM).
//! - `serve`: the daemon's start-up and shutdown (`deskd serve`).
//! - `config`: the daemon's configuration file (quotas, public URL, limits).
//! - `templates`: `orgo.ai/v1` template documents, their checks, builds and launch checks.

pub mod api;
pub mod cli;
pub mod computers;
pub mod config;
pub mod files;
pub mod network;
pub mod serve;
pub mod store;
pub mod templates;
pub mod vmm;
