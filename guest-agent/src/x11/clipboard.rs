//! The CLIPBOARD selection as UTF-8 text. Reading asks whoever owns it (large contents arrive
//! piecewise, INCR). Setting makes the agent the owner: a thread holds a window of its own and
//! answers other clients' requests (a paste) until another client takes the selection. Both use
//! connections of their own, so a slow owner never holds up input or screenshots.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use x11rb::connection::{Connection, RequestConnection};
use x11rb::errors::ConnectError;
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ChangeWindowAttributesAux, ConnectionExt as _, CreateWindowAux, EventMask,
    PropMode, Property, SelectionNotifyEvent, Window, WindowClass, SELECTION_NOTIFY_EVENT,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;
use x11rb::{CURRENT_TIME, NONE};

use super::X11Error;
use crate::protocol::MAX_CLIPBOARD_BYTES;

/// How long the selection's owner may take to answer a read, and the owner thread to take the
/// selection.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// How long a read waits for the owner's first sign of an answer before asking again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);
/// An INCR transfer whose requestor took no piece for this long is given up (a client that
/// asked and went away, or the events watcher, which does not read INCR transfers).
const STALLED_AFTER: Duration = Duration::from_secs(30);
/// Largest piece of one INCR transfer (and the size above which a transfer is INCR).
const MAX_PIECE: usize = 256 << 10;

struct Atoms {
    clipboard: Atom,
    utf8_string: Atom,
    text: Atom,
    text_plain_utf8: Atom,
    targets: Atom,
    incr: Atom,
    /// The property of our window that selection contents are delivered to.
    transfer: Atom,
}

impl Atoms {
    fn intern(conn: &RustConnection) -> Result<Atoms, X11Error> {
        let names = [
            "CLIPBOARD",
            "UTF8_STRING",
            "TEXT",
            "text/plain;charset=utf-8",
            "TARGETS",
            "INCR",
            "DESKD_CLIPBOARD_TRANSFER",
        ];
        let cookies = names
            .iter()
            .map(|n| conn.intern_atom(false, n.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut atoms = Vec::with_capacity(names.len());
        for c in cookies {
            atoms.push(c.reply()?.atom);
        }
        Ok(Atoms {
            clipboard: atoms[0],
            utf8_string: atoms[1],
            text: atoms[2],
            text_plain_utf8: atoms[3],
            targets: atoms[4],
            incr: atoms[5],
            transfer: atoms[6],
        })
    }
}

/// A connection with an unmapped window of its own that hears property changes on itself.
struct Endpoint {
    conn: RustConnection,
    window: Window,
    atoms: Atoms,
}

impl Endpoint {
    fn open(display: &str) -> Result<Endpoint, X11Error> {
        let (conn, screen_num) =
            RustConnection::connect(Some(display)).map_err(|e: ConnectError| {
                X11Error::Unreachable {
                    display: display.to_string(),
                    reason: e.to_string(),
                }
            })?;
        let root = conn
            .setup()
            .roots
            .get(screen_num)
            .ok_or_else(|| X11Error::Request(format!("display has no screen {screen_num}")))?
            .root;
        let window = conn.generate_id()?;
        conn.create_window(
            0,
            window,
            root,
            -10,
            -10,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            0,
            &CreateWindowAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        )?;
        let atoms = Atoms::intern(&conn)?;
        Ok(Endpoint {
            conn,
            window,
            atoms,
        })
    }

    /// The next event, waiting at most until `deadline` (also watching `wake`, if given).
    fn next_event(
        &self,
        deadline: Instant,
        wake: Option<&UnixStream>,
    ) -> Result<Option<Event>, X11Error> {
        loop {
            if let Some(ev) = self.conn.poll_for_event()? {
                return Ok(Some(ev));
            }
            self.conn.flush()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let stream = self.conn.stream();
            let mut fds = vec![nix::poll::PollFd::new(
                stream.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if let Some(w) = wake {
                fds.push(nix::poll::PollFd::new(
                    w.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
            }
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            let woken = fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
            if woken {
                return Ok(None);
            }
        }
    }
}

fn too_large() -> X11Error {
    X11Error::Clipboard(format!(
        "the clipboard holds more than {MAX_CLIPBOARD_BYTES} bytes, more than the agent reads"
    ))
}

fn no_answer() -> X11Error {
    X11Error::Clipboard(format!(
        "the application that owns the clipboard did not answer within {} s",
        ANSWER_WITHIN.as_secs()
    ))
}

/// The CLIPBOARD selection as text; `None` when nobody owns it. Text offered only as `STRING`
/// (Latin-1) is converted.
pub fn read(display: &str) -> Result<Option<String>, X11Error> {
    let ep = Endpoint::open(display)?;
    let a = &ep.atoms;
    let owner = ep.conn.get_selection_owner(a.clipboard)?.reply()?.owner;
    if owner == NONE {
        return Ok(None);
    }
    let deadline = Instant::now() + ANSWER_WITHIN;
    for target in [a.utf8_string, AtomEnum::STRING.into()] {
        let notified = loop {
            ep.conn
                .convert_selection(ep.window, a.clipboard, target, a.transfer, CURRENT_TIME)?;
            // Some owners (xclip among them) drop a request that comes while they are sending
            // to someone else piecewise: ask again until the deadline, as long as nothing of
            // an answer has arrived.
            let retry_at = (Instant::now() + ASK_AGAIN_AFTER).min(deadline);
            let mut started = false;
            let got = loop {
                let until = if started { deadline } else { retry_at };
                match ep.next_event(until, None)? {
                    Some(Event::SelectionNotify(n)) if n.requestor == ep.window => break Some(n),
                    Some(Event::PropertyNotify(p)) if p.window == ep.window => started = true,
                    Some(_) => continue,
                    None => break None,
                }
            };
            match got {
                Some(n) => break n,
                None if Instant::now() >= deadline => return Err(no_answer()),
                None => continue,
            }
        };
        if notified.property == NONE {
            continue; // Not offered in this form; try the next.
        }
        let bytes = take_property(&ep, deadline)?;
        return Ok(Some(if target == a.utf8_string {
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            bytes.iter().map(|b| char::from(*b)).collect()
        }));
    }
    // Owned, but not as text (an image, say).
    Ok(Some(String::new()))
}

/// Reads (and deletes) the transfer property, following an INCR transfer to its end.
fn take_property(ep: &Endpoint, deadline: Instant) -> Result<Vec<u8>, X11Error> {
    let a = &ep.atoms;
    let words = u32::try_from(MAX_CLIPBOARD_BYTES / 4 + 1).unwrap_or(u32::MAX);
    let get = || -> Result<_, X11Error> {
        Ok(ep
            .conn
            .get_property(true, ep.window, a.transfer, AtomEnum::ANY, 0, words)?
            .reply()?)
    };
    let first = get()?;
    if first.bytes_after > 0 {
        return Err(too_large());
    }
    if first.type_ != a.incr {
        return Ok(first.value);
    }
    // Deleting the INCR property (done by the read above) asks for the first piece; each piece
    // is a new value of the property, and an empty one ends the transfer.
    let mut out = Vec::new();
    loop {
        match ep.next_event(deadline, None)? {
            Some(Event::PropertyNotify(p))
                if p.window == ep.window
                    && p.atom == a.transfer
                    && p.state == Property::NEW_VALUE =>
            {
                let piece = get()?;
                if piece.value.is_empty() {
                    return Ok(out);
                }
                if out.len() + piece.value.len() > MAX_CLIPBOARD_BYTES {
                    return Err(too_large());
                }
                out.extend_from_slice(&piece.value);
            }
            Some(_) => continue,
            None => return Err(no_answer()),
        }
    }
}

/// One INCR transfer to a requestor in progress.
struct Transfer {
    kind: Atom,
    data: Arc<Vec<u8>>,
    offset: usize,
    /// The terminating empty piece was written.
    done: bool,
    last: Instant,
}

/// What the owner thread is asked to do.
type SetRequest = (String, mpsc::Sender<Result<(), X11Error>>);

/// The owner thread's side of the link.
struct OwnerLink {
    requests: mpsc::Sender<SetRequest>,
    wake: UnixStream,
}

/// The agent's hold on the clipboard: an owner thread, started when text is first set and again
/// after its X connection was lost.
pub struct Clipboard {
    display: String,
    owner: Mutex<Option<OwnerLink>>,
}

impl Clipboard {
    pub fn new(display: &str) -> Clipboard {
        Clipboard {
            display: display.to_string(),
            owner: Mutex::new(None),
        }
    }

    /// The clipboard's text (`None` when nobody owns it).
    pub fn get(&self) -> Result<Option<String>, X11Error> {
        read(&self.display)
    }

    /// Makes `text` the clipboard's content, owned by the agent until another client copies.
    pub fn set(&self, text: String) -> Result<(), X11Error> {
        if text.len() > MAX_CLIPBOARD_BYTES {
            return Err(X11Error::BadInput(format!(
                "text is {} bytes; the clipboard takes at most {MAX_CLIPBOARD_BYTES}",
                text.len()
            )));
        }
        let (tx, rx) = mpsc::channel();
        let mut slot = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        let mut request = Some((text, tx));
        // A thread that ended (its connection was lost) refuses the send; start a fresh one.
        for _ in 0..2 {
            if slot.is_none() {
                *slot = Some(start_owner(&self.display)?);
            }
            let Some(link) = slot.as_mut() else { break };
            let Some(req) = request.take() else { break };
            match link.requests.send(req) {
                Ok(()) => {
                    let _ = link.wake.write_all(&[1]);
                    break;
                }
                Err(mpsc::SendError(req)) => {
                    request = Some(req);
                    *slot = None;
                }
            }
        }
        drop(slot);
        match rx.recv_timeout(ANSWER_WITHIN) {
            Ok(result) => result,
            Err(_) => Err(X11Error::Clipboard(
                "the clipboard owner thread did not take the selection; try again".into(),
            )),
        }
    }
}

fn start_owner(display: &str) -> Result<OwnerLink, X11Error> {
    let ep = Endpoint::open(display)?;
    let (wake, wake_rx) = UnixStream::pair()
        .map_err(|e| X11Error::Clipboard(format!("cannot create a socket pair: {e}")))?;
    wake_rx
        .set_nonblocking(true)
        .map_err(|e| X11Error::Clipboard(format!("cannot set up the socket pair: {e}")))?;
    let (requests, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("clipboard-owner".into())
        .spawn(move || {
            let mut owner = Owner {
                piece: ep
                    .conn
                    .maximum_request_bytes()
                    .saturating_sub(1024)
                    .clamp(4096, MAX_PIECE),
                ep,
                data: None,
                transfers: HashMap::new(),
            };
            if let Err(e) = owner.run(&rx, wake_rx) {
                tracing::info!("clipboard owner stopped: {e}; the next set starts a new one");
            }
        })
        .map_err(|e| X11Error::Clipboard(format!("cannot start the clipboard thread: {e}")))?;
    Ok(OwnerLink { requests, wake })
}

struct Owner {
    ep: Endpoint,
    piece: usize,
    /// The text we own the selection with; `None` once another client took it.
    data: Option<Arc<Vec<u8>>>,
    /// INCR transfers by (requestor window, property).
    transfers: HashMap<(Window, Atom), Transfer>,
}

impl Owner {
    fn run(
        &mut self,
        rx: &mpsc::Receiver<SetRequest>,
        mut wake: UnixStream,
    ) -> Result<(), X11Error> {
        loop {
            // Drained before the requests are looked at, so a request that comes after the
            // look leaves its wake byte for the wait below.
            let mut drained = [0u8; 64];
            while matches!(wake.read(&mut drained), Ok(n) if n > 0) {}
            loop {
                match rx.try_recv() {
                    Ok((text, reply)) => {
                        let _ = reply.send(self.take(text));
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    // The agent is gone.
                    Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.transfers
                .retain(|_, t| !t.done && t.last.elapsed() < STALLED_AFTER);
            let deadline = Instant::now() + Duration::from_secs(5);
            if let Some(ev) = self.ep.next_event(deadline, Some(&wake))? {
                self.handle(ev)?;
            }
        }
    }

    fn take(&mut self, text: String) -> Result<(), X11Error> {
        let (conn, a) = (&self.ep.conn, &self.ep.atoms);
        conn.set_selection_owner(self.ep.window, a.clipboard, CURRENT_TIME)?;
        let owner = conn.get_selection_owner(a.clipboard)?.reply()?.owner;
        if owner != self.ep.window {
            return Err(X11Error::Clipboard(
                "the X server did not give the agent the clipboard; try again".into(),
            ));
        }
        self.data = Some(Arc::new(text.into_bytes()));
        Ok(())
    }

    fn handle(&mut self, ev: Event) -> Result<(), X11Error> {
        match ev {
            Event::SelectionClear(c) if c.selection == self.ep.atoms.clipboard => {
                self.data = None;
            }
            Event::SelectionRequest(r) => {
                let property = if r.property == NONE {
                    r.target
                } else {
                    r.property
                };
                let answered = self.answer(r.requestor, r.selection, r.target, property)?;
                let notify = SelectionNotifyEvent {
                    response_type: SELECTION_NOTIFY_EVENT,
                    sequence: 0,
                    time: r.time,
                    requestor: r.requestor,
                    selection: r.selection,
                    target: r.target,
                    property: if answered { property } else { NONE },
                };
                self.ep
                    .conn
                    .send_event(false, r.requestor, EventMask::NO_EVENT, notify)?;
                self.ep.conn.flush()?;
            }
            Event::PropertyNotify(p) if p.state == Property::DELETE => {
                self.next_piece(p.window, p.atom)?;
            }
            // Errors about requestors' windows that went away, and everything else.
            _ => {}
        }
        Ok(())
    }

    /// Writes the selection to `property` of `requestor` in the form `target`; false when it
    /// cannot be served in that form.
    fn answer(
        &mut self,
        requestor: Window,
        selection: Atom,
        target: Atom,
        property: Atom,
    ) -> Result<bool, X11Error> {
        let (conn, a) = (&self.ep.conn, &self.ep.atoms);
        let Some(data) = self.data.clone() else {
            return Ok(false);
        };
        if selection != a.clipboard {
            return Ok(false);
        }
        let string: Atom = AtomEnum::STRING.into();
        if target == a.targets {
            let offered = [a.targets, a.utf8_string, a.text_plain_utf8, a.text, string];
            conn.change_property32(
                PropMode::REPLACE,
                requestor,
                property,
                AtomEnum::ATOM,
                &offered,
            )?;
            return Ok(true);
        }
        let (kind, bytes) = if target == a.utf8_string || target == a.text_plain_utf8 {
            (target, data)
        } else if target == a.text {
            (a.utf8_string, data)
        } else if target == string {
            let latin1: Vec<u8> = String::from_utf8_lossy(&data)
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect();
            (string, Arc::new(latin1))
        } else {
            return Ok(false);
        };
        if bytes.len() <= self.piece {
            conn.change_property8(PropMode::REPLACE, requestor, property, kind, &bytes)?;
            return Ok(true);
        }
        // Piecewise: announce the size, then write a piece each time the requestor deletes
        // the property.
        conn.change_window_attributes(
            requestor,
            &ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        )?;
        let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        conn.change_property32(PropMode::REPLACE, requestor, property, a.incr, &[size])?;
        self.transfers.insert(
            (requestor, property),
            Transfer {
                kind,
                data: bytes,
                offset: 0,
                done: false,
                last: Instant::now(),
            },
        );
        Ok(true)
    }

    fn next_piece(&mut self, requestor: Window, property: Atom) -> Result<(), X11Error> {
        let Some(t) = self.transfers.get_mut(&(requestor, property)) else {
            return Ok(());
        };
        let end = (t.offset + self.piece).min(t.data.len());
        let piece = &t.data[t.offset..end];
        self.ep
            .conn
            .change_property8(PropMode::REPLACE, requestor, property, t.kind, piece)?;
        t.done = piece.is_empty();
        t.offset = end;
        t.last = Instant::now();
        if t.done {
            self.transfers.remove(&(requestor, property));
            if !self.transfers.keys().any(|(w, _)| *w == requestor) {
                self.ep.conn.change_window_attributes(
                    requestor,
                    &ChangeWindowAttributesAux::new().event_mask(EventMask::NO_EVENT),
                )?;
            }
        }
        self.ep.conn.flush()?;
        Ok(())
    }
}
