//! Window, clipboard, screen and idle events from the X server, on a thread with its own
//! connection (so event traffic never delays input or capture).
//!
//! Windows: EWMH (`_NET_CLIENT_LIST`, `_NET_ACTIVE_WINDOW`) when a window manager publishes them;
//! without one, top-level map/destroy notifications and the input focus stand in.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::screensaver::ConnectionExt as _;
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ChangeWindowAttributesAux, ConnectionExt as _, CreateWindowAux, EventMask,
    Window, WindowClass,
};
use x11rb::protocol::Event as XEvent;
use x11rb::rust_connection::RustConnection;

use super::EventHub;
use crate::protocol::{
    ClipboardData, EventData, IdleData, NoData, ScreenData, WindowCloseData, WindowData,
};

const TICK: Duration = Duration::from_millis(500);
const RECONNECT: Duration = Duration::from_secs(2);
/// Clipboard contents larger than this are cut (in 4-byte units for GetProperty).
const CLIPBOARD_MAX_WORDS: u32 = 256 * 1024;
/// The same limit in bytes, for contents that arrive piecewise (INCR).
const CLIPBOARD_MAX_BYTES: usize = CLIPBOARD_MAX_WORDS as usize * 4;

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("connect: {0}")]
    Connect(#[from] x11rb::errors::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] x11rb::errors::ConnectionError),
    #[error("reply: {0}")]
    Reply(#[from] x11rb::errors::ReplyError),
    #[error("ids: {0}")]
    Id(#[from] x11rb::errors::ReplyOrIdError),
    #[error("no screen {0}")]
    NoScreen(usize),
}

struct Atoms {
    client_list: Atom,
    active_window: Atom,
    wm_name: Atom,
    utf8_string: Atom,
    clipboard: Atom,
    target_prop: Atom,
    incr: Atom,
}

fn intern(conn: &RustConnection, name: &str) -> Result<Atom, WatchError> {
    Ok(conn.intern_atom(false, name.as_bytes())?.reply()?.atom)
}

struct Watcher {
    conn: RustConnection,
    root: Window,
    own: Window,
    atoms: Atoms,
    hub: EventHub,
    idle_after: Duration,
    windows: HashSet<Window>,
    ewmh: bool,
    active: Window,
    screen: (u16, u16),
    idle: bool,
    has_screensaver: bool,
    /// A clipboard content arriving piecewise (INCR): what came so far. Read to its end even
    /// past the limit, since an owner serves its next requestor only once a transfer is done.
    incr: Option<Vec<u8>>,
}

pub fn start(hub: EventHub, display: String, idle_after: Duration) {
    let spawned = std::thread::Builder::new()
        .name("x11-events".into())
        .spawn(move || loop {
            match watch(&hub, &display, idle_after) {
                Ok(()) => {}
                Err(e) => tracing::debug!("X event watcher: {e}; retrying"),
            }
            std::thread::sleep(RECONNECT);
        });
    if let Err(e) = spawned {
        tracing::warn!("could not start the X event thread: {e}");
    }
}

fn watch(hub: &EventHub, display: &str, idle_after: Duration) -> Result<(), WatchError> {
    let (conn, screen_num) = RustConnection::connect(Some(display))?;
    let screen = conn
        .setup()
        .roots
        .get(screen_num)
        .ok_or(WatchError::NoScreen(screen_num))?;
    let root = screen.root;
    let screen_size = (screen.width_in_pixels, screen.height_in_pixels);
    let own = conn.generate_id()?;
    conn.create_window(
        0,
        own,
        root,
        -1,
        -1,
        1,
        1,
        0,
        WindowClass::INPUT_ONLY,
        0,
        // Pieces of an INCR transfer arrive as property changes on this window.
        &CreateWindowAux::new().event_mask(EventMask::PROPERTY_CHANGE),
    )?;
    let atoms = Atoms {
        client_list: intern(&conn, "_NET_CLIENT_LIST")?,
        active_window: intern(&conn, "_NET_ACTIVE_WINDOW")?,
        wm_name: intern(&conn, "_NET_WM_NAME")?,
        utf8_string: intern(&conn, "UTF8_STRING")?,
        clipboard: intern(&conn, "CLIPBOARD")?,
        target_prop: intern(&conn, "DESKD_CLIPBOARD")?,
        incr: intern(&conn, "INCR")?,
    };
    conn.change_window_attributes(
        root,
        &ChangeWindowAttributesAux::new()
            .event_mask(EventMask::PROPERTY_CHANGE | EventMask::SUBSTRUCTURE_NOTIFY),
    )?;
    if conn.xfixes_query_version(5, 0)?.reply().is_ok() {
        conn.xfixes_select_selection_input(
            own,
            atoms.clipboard,
            xfixes::SelectionEventMask::SET_SELECTION_OWNER,
        )?;
    }
    if conn.randr_query_version(1, 2)?.reply().is_ok() {
        conn.randr_select_input(root, randr::NotifyMask::SCREEN_CHANGE)?;
    }
    let has_screensaver = conn
        .screensaver_query_version(1, 1)
        .ok()
        .and_then(|c| c.reply().ok())
        .is_some();
    let mut w = Watcher {
        conn,
        root,
        own,
        atoms,
        hub: hub.clone(),
        idle_after,
        windows: HashSet::new(),
        ewmh: false,
        active: 0,
        screen: screen_size,
        idle: false,
        has_screensaver,
        incr: None,
    };
    w.refresh_windows(false)?;
    w.refresh_focus(false)?;
    w.conn.flush()?;
    w.run()
}

impl Watcher {
    fn run(&mut self) -> Result<(), WatchError> {
        let mut last_tick = Instant::now();
        loop {
            while let Some(ev) = self.conn.poll_for_event()? {
                self.handle(ev)?;
            }
            self.conn.flush()?;
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick()?;
                self.conn.flush()?;
            }
            // Sleep until the server sends something or the next tick is due.
            let stream = self.conn.stream();
            let fd = stream.as_fd();
            let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let wait = TICK.saturating_sub(last_tick.elapsed());
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms));
        }
    }

    fn tick(&mut self) -> Result<(), WatchError> {
        if !self.ewmh {
            self.refresh_focus(true)?;
        }
        if self.has_screensaver {
            let info = self.conn.screensaver_query_info(self.root)?.reply()?;
            let idle_for = Duration::from_millis(info.ms_since_user_input.into());
            if !self.idle && idle_for >= self.idle_after {
                self.idle = true;
                self.hub.emit(EventData::Idle(IdleData {
                    idle_seconds: idle_for.as_secs(),
                }));
            } else if self.idle && idle_for < self.idle_after {
                self.idle = false;
                self.hub.emit(EventData::Active(NoData {}));
            }
        }
        Ok(())
    }

    fn handle(&mut self, ev: XEvent) -> Result<(), WatchError> {
        match ev {
            XEvent::PropertyNotify(p) if p.window == self.root => {
                if p.atom == self.atoms.client_list {
                    self.refresh_windows(true)?;
                } else if p.atom == self.atoms.active_window {
                    self.refresh_focus(true)?;
                }
            }
            XEvent::MapNotify(m)
                if !self.ewmh
                    && m.event == self.root
                    && !m.override_redirect
                    && m.window != self.own
                    && self.windows.insert(m.window) =>
            {
                let title = self.title(m.window);
                self.hub.emit(EventData::WindowOpen(WindowData {
                    window_id: m.window,
                    title,
                }));
            }
            XEvent::DestroyNotify(d) if !self.ewmh && self.windows.remove(&d.window) => {
                self.hub.emit(EventData::WindowClose(WindowCloseData {
                    window_id: d.window,
                }));
            }
            XEvent::XfixesSelectionNotify(s) if s.owner != x11rb::NONE && s.owner != self.own => {
                self.conn.convert_selection(
                    self.own,
                    self.atoms.clipboard,
                    self.atoms.utf8_string,
                    self.atoms.target_prop,
                    s.selection_timestamp,
                )?;
            }
            XEvent::SelectionNotify(s) if s.requestor == self.own && s.property != x11rb::NONE => {
                let reply = self
                    .conn
                    .get_property(
                        true,
                        self.own,
                        self.atoms.target_prop,
                        AtomEnum::ANY,
                        0,
                        CLIPBOARD_MAX_WORDS,
                    )?
                    .reply()?;
                if reply.type_ == self.atoms.incr {
                    // Deleting the property (done by the read) asks for the first piece.
                    self.incr = Some(Vec::new());
                } else {
                    self.incr = None;
                    let content = String::from_utf8_lossy(&reply.value).into_owned();
                    self.hub
                        .emit(EventData::Clipboard(ClipboardData { content }));
                }
            }
            XEvent::PropertyNotify(p)
                if p.window == self.own
                    && p.atom == self.atoms.target_prop
                    && p.state == x11rb::protocol::xproto::Property::NEW_VALUE
                    && self.incr.is_some() =>
            {
                let piece = self
                    .conn
                    .get_property(
                        true,
                        self.own,
                        self.atoms.target_prop,
                        AtomEnum::ANY,
                        0,
                        CLIPBOARD_MAX_WORDS,
                    )?
                    .reply()?;
                if piece.value.is_empty() {
                    let got = self.incr.take().unwrap_or_default();
                    let content = String::from_utf8_lossy(&got).into_owned();
                    self.hub
                        .emit(EventData::Clipboard(ClipboardData { content }));
                } else if let Some(got) = self.incr.as_mut() {
                    let room = CLIPBOARD_MAX_BYTES.saturating_sub(got.len());
                    got.extend_from_slice(&piece.value[..piece.value.len().min(room)]);
                }
            }
            XEvent::RandrScreenChangeNotify(s) => {
                let size = (s.width, s.height);
                if size != self.screen {
                    self.screen = size;
                    self.hub.emit(EventData::ScreenChange(ScreenData {
                        width: s.width.into(),
                        height: s.height.into(),
                    }));
                }
            }
            XEvent::ConfigureNotify(c) if c.window == self.root => {
                let size = (c.width, c.height);
                if size != self.screen {
                    self.screen = size;
                    self.hub.emit(EventData::ScreenChange(ScreenData {
                        width: c.width.into(),
                        height: c.height.into(),
                    }));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn window_list(&self) -> Result<Option<Vec<Window>>, WatchError> {
        let r = self
            .conn
            .get_property(
                false,
                self.root,
                self.atoms.client_list,
                AtomEnum::WINDOW,
                0,
                u32::MAX / 4,
            )?
            .reply()?;
        if r.type_ == x11rb::NONE {
            return Ok(None);
        }
        Ok(Some(r.value32().map(|v| v.collect()).unwrap_or_default()))
    }

    /// Diffs `_NET_CLIENT_LIST`; `announce` is false for the first read (windows already open).
    fn refresh_windows(&mut self, announce: bool) -> Result<(), WatchError> {
        let Some(list) = self.window_list()? else {
            return Ok(());
        };
        if !self.ewmh {
            // Switching from the fallback: forget map-based bookkeeping.
            self.ewmh = true;
            if announce {
                let now: HashSet<Window> = list.iter().copied().collect();
                self.windows.retain(|w| now.contains(w));
            }
        }
        let now: HashSet<Window> = list.iter().copied().collect();
        if announce {
            for w in list.iter().filter(|w| !self.windows.contains(w)) {
                let title = self.title(*w);
                self.hub.emit(EventData::WindowOpen(WindowData {
                    window_id: *w,
                    title,
                }));
            }
            for w in self.windows.difference(&now) {
                self.hub
                    .emit(EventData::WindowClose(WindowCloseData { window_id: *w }));
            }
        }
        self.windows = now;
        Ok(())
    }

    fn refresh_focus(&mut self, announce: bool) -> Result<(), WatchError> {
        // One read answers both "is there a _NET_ACTIVE_WINDOW?" (its type) and "which window?".
        let active = self
            .conn
            .get_property(
                false,
                self.root,
                self.atoms.active_window,
                AtomEnum::WINDOW,
                0,
                1,
            )?
            .reply()?;
        let focused = if self.ewmh || active.type_ != x11rb::NONE {
            active.value32().and_then(|mut v| v.next()).unwrap_or(0)
        } else {
            let f = self.conn.get_input_focus()?.reply()?.focus;
            // 0 = None, 1 = PointerRoot: no window has the focus.
            if f <= 1 || f == self.root {
                0
            } else {
                f
            }
        };
        if focused != self.active {
            self.active = focused;
            if announce && focused != 0 {
                let title = self.title(focused);
                self.hub.emit(EventData::WindowFocus(WindowData {
                    window_id: focused,
                    title,
                }));
            }
        }
        Ok(())
    }

    /// `_NET_WM_NAME` (UTF-8), else `WM_NAME`; empty when the window has neither or is gone.
    fn title(&self, w: Window) -> String {
        let read = |prop: Atom, ty: Atom| -> Option<String> {
            let r = self
                .conn
                .get_property(false, w, prop, ty, 0, 1024)
                .ok()?
                .reply()
                .ok()?;
            (!r.value.is_empty()).then(|| String::from_utf8_lossy(&r.value).into_owned())
        };
        read(self.atoms.wm_name, self.atoms.utf8_string)
            .or_else(|| read(AtomEnum::WM_NAME.into(), AtomEnum::ANY.into()))
            .unwrap_or_default()
    }
}
