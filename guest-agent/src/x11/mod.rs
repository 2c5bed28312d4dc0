//! The agent's link to the X server: one shared connection for input and capture, re-opened when
//! the server comes back after going away.

pub mod capture;
pub mod clipboard;
pub mod input;
pub mod keys;
mod keysym_names;
pub mod readiness;

use std::sync::{Arc, Mutex, MutexGuard};

use x11rb::connection::Connection;
use x11rb::errors::{ConnectError, ConnectionError, ReplyError};
use x11rb::protocol::xproto::{ConnectionExt as _, Window};
use x11rb::rust_connection::RustConnection;

use capture::Capturer;
use input::Keyboard;

#[derive(Debug, thiserror::Error)]
pub enum X11Error {
    #[error("the X server on display {display} is not reachable ({reason}); is Xvfb running?")]
    Unreachable { display: String, reason: String },
    #[error("lost the connection to the X server: {0}")]
    Connection(#[from] ConnectionError),
    #[error("the X server refused a request: {0}")]
    Request(String),
    #[error("the X server lacks the {0} extension, which the agent needs")]
    MissingExtension(&'static str),
    #[error("{0}")]
    BadInput(String),
    #[error("unsupported screen pixel format: {0}")]
    PixelFormat(String),
    #[error("{0}")]
    Clipboard(String),
}

impl From<ReplyError> for X11Error {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::ConnectionError(c) => X11Error::Connection(c),
            ReplyError::X11Error(x) => X11Error::Request(format!("{:?}", x.error_kind)),
        }
    }
}

impl From<x11rb::errors::ReplyOrIdError> for X11Error {
    fn from(e: x11rb::errors::ReplyOrIdError) -> Self {
        use x11rb::errors::ReplyOrIdError as E;
        match e {
            E::ConnectionError(c) => X11Error::Connection(c),
            E::X11Error(x) => X11Error::Request(format!("{:?}", x.error_kind)),
            E::IdsExhausted => X11Error::Request("X resource ids exhausted".into()),
        }
    }
}

impl X11Error {
    /// True when the connection itself is broken, so the next call must reconnect.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, X11Error::Connection(_) | X11Error::Unreachable { .. })
    }
}

/// One open connection with the state that belongs to it.
pub struct XSession {
    pub conn: RustConnection,
    pub root: Window,
    pub root_depth: u8,
    /// The screen of the display the agent drives (the `N` of `:0.N`).
    pub screen_num: usize,
    /// Serialises input so two `type` calls never interleave their keystrokes.
    pub keyboard: Mutex<Keyboard>,
    pub capturer: Mutex<Capturer>,
}

impl XSession {
    fn open(display: &str) -> Result<XSession, X11Error> {
        let (conn, screen_num) =
            RustConnection::connect(Some(display)).map_err(|e: ConnectError| {
                X11Error::Unreachable {
                    display: display.to_string(),
                    reason: e.to_string(),
                }
            })?;
        let screen = conn
            .setup()
            .roots
            .get(screen_num)
            .ok_or_else(|| X11Error::Request(format!("display has no screen {screen_num}")))?;
        let root = screen.root;
        let root_depth = screen.root_depth;
        // XTest is the only way to inject input without a per-call helper program.
        use x11rb::protocol::xtest::ConnectionExt as _;
        conn.xtest_get_version(2, 2)?
            .reply()
            .map_err(|_| X11Error::MissingExtension("XTEST"))?;
        let keyboard = Keyboard::load(&conn)?;
        let capturer = Capturer::new(&conn);
        Ok(XSession {
            conn,
            root,
            root_depth,
            screen_num,
            keyboard: Mutex::new(keyboard),
            capturer: Mutex::new(capturer),
        })
    }

    /// Current size of the root window (follows RandR changes).
    pub fn screen_size(&self) -> Result<(u16, u16), X11Error> {
        let g = self.conn.get_geometry(self.root)?.reply()?;
        Ok((g.width, g.height))
    }
}

/// The display the agent drives. Connects lazily and reconnects after the server restarts.
pub struct Desktop {
    display: String,
    session: Mutex<Option<Arc<XSession>>>,
}

impl Desktop {
    pub fn new(display: &str) -> Desktop {
        Desktop {
            display: display.to_string(),
            session: Mutex::new(None),
        }
    }

    pub fn display_name(&self) -> &str {
        &self.display
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<XSession>>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live session, opening one if needed.
    pub fn session(&self) -> Result<Arc<XSession>, X11Error> {
        let mut slot = self.slot();
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(XSession::open(&self.display)?);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Runs `f` on the session; a broken connection is dropped so the next call reconnects, and the
    /// call is retried once on a fresh connection (the server may have restarted in between).
    pub fn with<T>(&self, f: impl Fn(&XSession) -> Result<T, X11Error>) -> Result<T, X11Error> {
        let first = self.session().and_then(|s| f(&s));
        match first {
            Err(e) if e.is_connection_lost() => {
                self.slot().take();
                let s = self.session()?;
                let again = f(&s);
                if matches!(&again, Err(e) if e.is_connection_lost()) {
                    self.slot().take();
                }
                again
            }
            other => other,
        }
    }
}

/// Blocks until the server has processed everything sent so far.
pub fn sync(conn: &RustConnection) -> Result<(), X11Error> {
    conn.get_input_focus()?.reply()?;
    Ok(())
}
