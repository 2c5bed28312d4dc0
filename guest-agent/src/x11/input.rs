//! Pointer and keyboard input through XTest.
//!
//! Characters the keymap lacks are typed by binding a spare keycode (one with no symbols) to the
//! wanted keysym. Spares are reused least-recently first and never rebound sooner than
//! `REBIND_GUARD` after use, so a client still reading the previous key event sees the right symbol.

use std::collections::VecDeque;
use std::thread::sleep;
use std::time::{Duration, Instant};

use x11rb::protocol::xproto::{
    ConnectionExt as _, BUTTON_PRESS_EVENT, BUTTON_RELEASE_EVENT, KEY_PRESS_EVENT,
    KEY_RELEASE_EVENT, MOTION_NOTIFY_EVENT,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::keys::{self, Combo, XK_SHIFT_L};
use super::{sync, X11Error, XSession};
use crate::protocol::Button;

const REBIND_GUARD: Duration = Duration::from_millis(150);
/// Pause between the two clicks of a double click: well inside every toolkit's double-click time.
const DOUBLE_CLICK_GAP: Duration = Duration::from_millis(40);

pub struct Keyboard {
    min_keycode: u8,
    per: usize,
    syms: Vec<u32>,
    /// Keycodes that had no symbols when first seen; ours to rebind.
    spares: Vec<u8>,
    /// Spares currently bound by us, with the time they were last pressed (front = oldest).
    bound: VecDeque<(u8, Instant)>,
}

impl Keyboard {
    pub fn load(conn: &RustConnection) -> Result<Keyboard, X11Error> {
        let mut kb = Keyboard {
            min_keycode: 0,
            per: 0,
            syms: Vec::new(),
            spares: Vec::new(),
            bound: VecDeque::new(),
        };
        kb.reload(conn)?;
        kb.spares = (0..kb.keycode_count())
            .filter(|i| kb.row(*i).iter().all(|s| *s == 0))
            .map(|i| kb.min_keycode + i as u8)
            .collect();
        // With no free keycode at all, borrow the last one (usually an unused high code).
        if kb.spares.is_empty() {
            kb.spares
                .push(kb.min_keycode + (kb.keycode_count() as u8).saturating_sub(1));
        }
        Ok(kb)
    }

    fn keycode_count(&self) -> usize {
        self.syms.len().checked_div(self.per).unwrap_or(0)
    }

    fn row(&self, index: usize) -> &[u32] {
        &self.syms[index * self.per..(index + 1) * self.per]
    }

    /// Re-reads the server's keymap (someone may have run setxkbmap since).
    pub fn reload(&mut self, conn: &RustConnection) -> Result<(), X11Error> {
        let setup = x11rb::connection::Connection::setup(conn);
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let reply = conn
            .get_keyboard_mapping(min, (max - min).saturating_add(1))?
            .reply()?;
        self.min_keycode = min;
        self.per = usize::from(reply.keysyms_per_keycode);
        self.syms = reply.keysyms;
        Ok(())
    }

    /// The keycode that produces `ks`, and whether Shift is needed for it.
    fn find(&self, ks: u32) -> Option<(u8, bool)> {
        for col in 0..self.per.min(2) {
            for i in 0..self.keycode_count() {
                if self.row(i)[col] == ks {
                    return Some((self.min_keycode + i as u8, col == 1));
                }
            }
        }
        None
    }

    /// Finds `ks` in the keymap or binds a spare keycode to it.
    fn ensure(&mut self, conn: &RustConnection, ks: u32) -> Result<(u8, bool), X11Error> {
        if let Some(found) = self.find(ks) {
            return Ok(found);
        }
        let kc = match self
            .spares
            .iter()
            .find(|kc| !self.bound.iter().any(|(b, _)| b == *kc))
        {
            Some(kc) => *kc,
            None => {
                let (kc, last) = self
                    .bound
                    .pop_front()
                    .unwrap_or((self.spares[0], Instant::now()));
                let since = last.elapsed();
                if since < REBIND_GUARD {
                    sync(conn)?;
                    sleep(REBIND_GUARD - since);
                }
                kc
            }
        };
        self.bound.retain(|(b, _)| *b != kc);
        let mut row = vec![0u32; self.per.max(2)];
        row[0] = ks;
        row[1] = ks;
        row.truncate(self.per.max(1));
        conn.change_keyboard_mapping(1, kc, row.len() as u8, &row)?;
        let index = usize::from(kc - self.min_keycode);
        if self.per > 0 && index < self.keycode_count() {
            let per = self.per;
            self.syms[index * per..(index + 1) * per].copy_from_slice(&row);
        }
        self.bound.push_back((kc, Instant::now()));
        Ok((kc, false))
    }

    fn touch(&mut self, kc: u8) {
        if let Some(pos) = self.bound.iter().position(|(b, _)| *b == kc) {
            self.bound.remove(pos);
            self.bound.push_back((kc, Instant::now()));
        }
    }
}

fn fake(s: &XSession, kind: u8, detail: u8, x: i16, y: i16) -> Result<(), X11Error> {
    s.conn.xtest_fake_input(kind, detail, 0, s.root, x, y, 0)?;
    Ok(())
}

fn button_code(b: Button) -> u8 {
    match b {
        Button::Left => 1,
        Button::Middle => 2,
        Button::Right => 3,
    }
}

/// Fails with a message when (x, y) is not on the screen.
pub fn check_on_screen(s: &XSession, x: i64, y: i64) -> Result<(i16, i16), X11Error> {
    let (w, h) = s.screen_size()?;
    if x < 0 || y < 0 || x >= i64::from(w) || y >= i64::from(h) {
        return Err(X11Error::BadInput(format!(
            "coordinates ({x}, {y}) are off the screen, which is {w}x{h} (x 0..{}, y 0..{})",
            w - 1,
            h - 1
        )));
    }
    // Both fit in i16 because the screen is at most 65535 wide and they are below its size... but
    // X coordinates are i16, so refuse anything beyond that too.
    let xi = i16::try_from(x).map_err(|_| X11Error::BadInput(format!("x {x} too large")))?;
    let yi = i16::try_from(y).map_err(|_| X11Error::BadInput(format!("y {y} too large")))?;
    Ok((xi, yi))
}

pub fn move_to(s: &XSession, x: i16, y: i16) -> Result<(), X11Error> {
    fake(s, MOTION_NOTIFY_EVENT, 0, x, y)?;
    sync(&s.conn)
}

/// `clicks` clicks (1 to 3) at (x, y), `DOUBLE_CLICK_GAP` apart.
pub fn click(s: &XSession, x: i16, y: i16, button: Button, clicks: u8) -> Result<(), X11Error> {
    let b = button_code(button);
    fake(s, MOTION_NOTIFY_EVENT, 0, x, y)?;
    for n in 0..clicks.max(1) {
        if n > 0 {
            sync(&s.conn)?;
            sleep(DOUBLE_CLICK_GAP);
        }
        fake(s, BUTTON_PRESS_EVENT, b, 0, 0)?;
        fake(s, BUTTON_RELEASE_EVENT, b, 0, 0)?;
    }
    sync(&s.conn)
}

/// Presses (`down`) or releases `button` where the pointer is.
pub fn mouse_button(s: &XSession, button: Button, down: bool) -> Result<(), X11Error> {
    let kind = if down {
        BUTTON_PRESS_EVENT
    } else {
        BUTTON_RELEASE_EVENT
    };
    fake(s, kind, button_code(button), 0, 0)?;
    sync(&s.conn)
}

/// Where the pointer is on the root window.
pub fn cursor_position(s: &XSession) -> Result<(i16, i16), X11Error> {
    let p = s.conn.query_pointer(s.root)?.reply()?;
    Ok((p.root_x, p.root_y))
}

/// The keycodes of `combo` in press order (modifiers first), bound if the keymap lacks them.
fn combo_keycodes(s: &XSession, kb: &mut Keyboard, combo: &Combo) -> Result<Vec<u8>, X11Error> {
    kb.reload(&s.conn)?;
    let mut codes = Vec::new();
    for m in &combo.modifiers {
        codes.push(kb.ensure(&s.conn, *m)?.0);
    }
    let (kc, needs_shift) = kb.ensure(&s.conn, combo.key)?;
    if needs_shift && !combo.modifiers.contains(&XK_SHIFT_L) {
        codes.push(kb.ensure(&s.conn, XK_SHIFT_L)?.0);
    }
    codes.push(kc);
    Ok(codes)
}

/// Holds `combo` down for `duration`. The keyboard lock is let go while the keys are down, so
/// `type` and `key` sent meanwhile run with them held (shift held while typing gives capitals).
pub fn hold_combo(s: &XSession, combo: &Combo, duration: Duration) -> Result<(), X11Error> {
    let codes = {
        let mut kb = s.keyboard.lock().unwrap_or_else(|p| p.into_inner());
        let codes = combo_keycodes(s, &mut kb, combo)?;
        for kc in &codes {
            key_kc(s, *kc, true)?;
        }
        sync(&s.conn)?;
        codes
    };
    sleep(duration);
    let mut kb = s.keyboard.lock().unwrap_or_else(|p| p.into_inner());
    for kc in codes.iter().rev() {
        key_kc(s, *kc, false)?;
        kb.touch(*kc);
    }
    sync(&s.conn)
}

pub fn drag(
    s: &XSession,
    from: (i16, i16),
    to: (i16, i16),
    button: Button,
    duration: Duration,
) -> Result<(), X11Error> {
    let b = button_code(button);
    fake(s, MOTION_NOTIFY_EVENT, 0, from.0, from.1)?;
    fake(s, BUTTON_PRESS_EVENT, b, 0, 0)?;
    sync(&s.conn)?;
    // About 60 intermediate positions per second, so applications see a real movement.
    let steps = ((duration.as_secs_f64() * 60.0).round() as u32).clamp(1, 600);
    let pause = duration / steps;
    for i in 1..=steps {
        let t = f64::from(i) / f64::from(steps);
        let x = f64::from(from.0) + (f64::from(to.0) - f64::from(from.0)) * t;
        let y = f64::from(from.1) + (f64::from(to.1) - f64::from(from.1)) * t;
        fake(
            s,
            MOTION_NOTIFY_EVENT,
            0,
            x.round() as i16,
            y.round() as i16,
        )?;
        sync(&s.conn)?;
        sleep(pause);
    }
    fake(s, BUTTON_RELEASE_EVENT, b, 0, 0)?;
    sync(&s.conn)
}

/// Scroll wheel clicks: buttons 4 (up), 5 (down), 6 (left), 7 (right).
pub fn scroll(s: &XSession, wheel_button: u8, amount: u32) -> Result<(), X11Error> {
    for _ in 0..amount {
        fake(s, BUTTON_PRESS_EVENT, wheel_button, 0, 0)?;
        fake(s, BUTTON_RELEASE_EVENT, wheel_button, 0, 0)?;
    }
    sync(&s.conn)
}

fn key_kc(s: &XSession, kc: u8, press: bool) -> Result<(), X11Error> {
    let kind = if press {
        KEY_PRESS_EVENT
    } else {
        KEY_RELEASE_EVENT
    };
    fake(s, kind, kc, 0, 0)
}

pub fn press_combo(s: &XSession, combo: &Combo) -> Result<(), X11Error> {
    let mut kb = s.keyboard.lock().unwrap_or_else(|p| p.into_inner());
    let codes = combo_keycodes(s, &mut kb, combo)?;
    let Some((kc, mods)) = codes.split_last() else {
        return Ok(());
    };
    for m in mods {
        key_kc(s, *m, true)?;
    }
    key_kc(s, *kc, true)?;
    key_kc(s, *kc, false)?;
    for m in mods.iter().rev() {
        key_kc(s, *m, false)?;
    }
    kb.touch(*kc);
    sync(&s.conn)
}

pub fn type_text(s: &XSession, text: &str, delay: Duration) -> Result<(), X11Error> {
    let mut kb = s.keyboard.lock().unwrap_or_else(|p| p.into_inner());
    kb.reload(&s.conn)?;
    let shift = kb.ensure(&s.conn, XK_SHIFT_L)?.0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // "\r\n" is one line break, not two.
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        let ks = keys::keysym_for_char(c);
        let (kc, needs_shift) = kb.ensure(&s.conn, ks)?;
        if needs_shift {
            key_kc(s, shift, true)?;
        }
        key_kc(s, kc, true)?;
        key_kc(s, kc, false)?;
        if needs_shift {
            key_kc(s, shift, false)?;
        }
        kb.touch(kc);
        if delay.is_zero() {
            x11rb::connection::Connection::flush(&s.conn)?;
        } else {
            sync(&s.conn)?;
            sleep(delay);
        }
    }
    sync(&s.conn)
}
