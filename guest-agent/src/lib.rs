//! deskd-agent: the HTTP server inside each computer's VM that does the desktop work.
//!
//! Its protocol types are shared with the daemon (see `protocol`).
