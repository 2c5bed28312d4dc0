//! deskd-agent: the HTTP server inside each computer's VM that does the desktop work (input,
//! screenshots, shell, Python, terminal, events, the VNC bridge, the speaker's audio stream, RTMP
//! streaming). Architecture decision 4.
//!
//! `protocol` holds the wire types; the daemon depends on this crate for them, with
//! `default-features = false` when it needs nothing else (the feature `agent` is the server).

pub mod protocol;

#[cfg(feature = "agent")]
pub mod audio;
#[cfg(feature = "agent")]
pub mod child;
#[cfg(feature = "agent")]
pub mod encode;
#[cfg(feature = "agent")]
pub mod events;
#[cfg(feature = "agent")]
pub mod files;
#[cfg(feature = "agent")]
pub mod growfs;
#[cfg(feature = "agent")]
pub mod resumed;
#[cfg(feature = "agent")]
pub mod root_helper;
#[cfg(feature = "agent")]
pub mod run;
#[cfg(feature = "agent")]
pub mod server;
#[cfg(feature = "agent")]
pub mod stream;
#[cfg(feature = "agent")]
pub mod terminal;
#[cfg(feature = "agent")]
pub mod vnc;
#[cfg(feature = "agent")]
pub mod x11;

#[cfg(feature = "agent")]
mod start;
#[cfg(feature = "agent")]
pub use server::{Agent, Listen};
#[cfg(feature = "agent")]
pub use start::{build, run_agent, Config, StartError};
