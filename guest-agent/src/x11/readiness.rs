//! Which parts of the desktop session are up, for `/health` (see `protocol::health` for what each
//! part means). Four batches of pipelined X requests, so four round trips whatever the number of
//! windows, and no program started: cheap enough for every readiness probe on a slow guest.

use x11rb::connection::Connection;
use x11rb::errors::ReplyError;
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ConnectionExt as _, GetPropertyReply, ImageFormat, MapState, Window,
};

use super::{X11Error, XSession};
use crate::protocol::DesktopParts;

x11rb::atom_manager! {
    Atoms: AtomsCookie {
        _NET_SUPPORTING_WM_CHECK,
        _NET_CLIENT_LIST,
        _NET_WM_WINDOW_TYPE,
        _NET_WM_WINDOW_TYPE_DOCK,
        _NET_WM_WINDOW_TYPE_DESKTOP,
    }
}

/// At most this many managed windows are looked at (a desktop has a few dozen).
const MAX_CLIENTS: u32 = 4096;
/// At most this many types per window are read (EWMH windows name one or two).
const MAX_TYPES: u32 = 16;
/// At most this many pixels of a panel are read to see whether it has drawn (a 4K-wide panel
/// of 64 rows is 250 k pixels; anything larger is read from its top rows only).
const MAX_PANEL_PIXELS: u32 = 256 * 1024;

/// A reply, or None when the server refused the request (a window that went away meanwhile is
/// simply not there); a broken connection stays an error.
fn lenient<T>(reply: Result<T, ReplyError>) -> Result<Option<T>, X11Error> {
    match reply {
        Ok(v) => Ok(Some(v)),
        Err(ReplyError::X11Error(_)) => Ok(None),
        Err(ReplyError::ConnectionError(e)) => Err(X11Error::Connection(e)),
    }
}

fn first_window(reply: &GetPropertyReply) -> Option<Window> {
    reply
        .value32()
        .and_then(|mut v| v.next())
        .filter(|w| *w != x11rb::NONE)
}

/// The parts of the desktop session that are up, on a live connection (so `x_server` is true).
pub fn desktop_parts(s: &XSession) -> Result<DesktopParts, X11Error> {
    let conn = &s.conn;
    let root = s.root;

    // 1: atoms (the ICCCM window manager selection is per screen).
    let wm_selection = conn.intern_atom(false, format!("WM_S{}", s.screen_num).as_bytes())?;
    let atoms = Atoms::new(conn)?;
    let wm_selection = wm_selection.reply()?.atom;
    let atoms = atoms.reply()?;

    // 2: who owns the selection, the EWMH check window, the managed windows and the top-level
    // ones (a panel without a window manager is not in any client list).
    let owner = conn.get_selection_owner(wm_selection)?;
    let check = conn.get_property(
        false,
        root,
        atoms._NET_SUPPORTING_WM_CHECK,
        AtomEnum::WINDOW,
        0,
        1,
    )?;
    let clients = conn.get_property(
        false,
        root,
        atoms._NET_CLIENT_LIST,
        AtomEnum::WINDOW,
        0,
        MAX_CLIENTS,
    )?;
    let tree = conn.query_tree(root)?;
    let owner = owner.reply()?.owner;
    let check_window = first_window(&check.reply()?);
    let mut candidates: Vec<Window> = clients
        .reply()?
        .value32()
        .map(|v| v.collect())
        .unwrap_or_default();
    candidates.extend(tree.reply()?.children);
    candidates.sort_unstable();
    candidates.dedup();

    // 3: the check window names itself (a stale property left by a dead window manager names a
    // window that is gone), and each candidate's map state, types and size.
    let self_check = match check_window {
        Some(w) => Some(conn.get_property(
            false,
            w,
            atoms._NET_SUPPORTING_WM_CHECK,
            AtomEnum::WINDOW,
            0,
            1,
        )?),
        None => None,
    };
    let mut probes = Vec::with_capacity(candidates.len());
    for w in &candidates {
        probes.push((
            *w,
            conn.get_window_attributes(*w)?,
            conn.get_property(
                false,
                *w,
                atoms._NET_WM_WINDOW_TYPE,
                AtomEnum::ATOM,
                0,
                MAX_TYPES,
            )?,
            conn.get_geometry(*w)?,
        ));
    }
    let ewmh_wm = match self_check {
        Some(c) => lenient(c.reply())?.is_some_and(|r| first_window(&r) == check_window),
        None => false,
    };
    let mut docks = Vec::new();
    let mut desktop = false;
    for (w, attrs, types, geometry) in probes {
        let (Some(attrs), Some(types), Some(geometry)) = (
            lenient(attrs.reply())?,
            lenient(types.reply())?,
            lenient(geometry.reply())?,
        ) else {
            continue;
        };
        if attrs.map_state != MapState::VIEWABLE {
            continue;
        }
        let types: Vec<Atom> = types.value32().map(|v| v.collect()).unwrap_or_default();
        if types.contains(&atoms._NET_WM_WINDOW_TYPE_DESKTOP) {
            desktop = true;
        }
        if types.contains(&atoms._NET_WM_WINDOW_TYPE_DOCK) {
            docks.push((w, geometry.width, geometry.height));
        }
    }

    // 4: a panel has drawn once its pixels are not all one colour: tint2 maps its window with a
    // plain background and paints launchers, task list and clock afterwards.
    let mut images = Vec::with_capacity(docks.len());
    for (w, width, height) in docks {
        if width == 0 || height == 0 {
            continue;
        }
        let rows = u16::try_from(MAX_PANEL_PIXELS / u32::from(width))
            .unwrap_or(u16::MAX)
            .clamp(1, height);
        images.push((
            width,
            conn.get_image(ImageFormat::Z_PIXMAP, w, 0, 0, width, rows, !0)?,
        ));
    }
    let mut panel = false;
    for (width, image) in images {
        if let Some(img) = lenient(image.reply())? {
            panel |= !uniform(&img.data, width, layout(conn, img.depth));
        }
    }

    Ok(DesktopParts {
        x_server: true,
        window_manager: owner != x11rb::NONE || ewmh_wm,
        panel,
        desktop,
    })
}

/// Bits per pixel and scanline padding (in bits) of ZPixmap images of this depth.
fn layout(conn: &impl Connection, depth: u8) -> Option<(usize, usize)> {
    conn.setup()
        .pixmap_formats
        .iter()
        .find(|f| f.depth == depth)
        .map(|f| {
            (
                usize::from(f.bits_per_pixel),
                usize::from(f.scanline_pad).max(8),
            )
        })
}

/// Whether every pixel of a ZPixmap image `width` pixels wide has the same value, scanline
/// padding ignored (GetImage answers exactly the rectangle asked for, or an error).
fn uniform(data: &[u8], width: u16, layout: Option<(usize, usize)>) -> bool {
    let (bpp, pad) = match layout {
        Some((bpp, pad)) if bpp >= 8 => (bpp, pad),
        // Depths below a byte per pixel (or unannounced) do not occur on a desktop; comparing
        // bytes there errs towards "drawn".
        _ => return data.windows(2).all(|p| p[0] == p[1]),
    };
    let px = bpp / 8;
    let stride = (usize::from(width) * bpp).div_ceil(pad) * pad / 8;
    let Some(first) = data.get(..px) else {
        return true;
    };
    data.chunks(stride).all(|row| {
        row.chunks_exact(px)
            .take(usize::from(width))
            .all(|p| p == first)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_ignores_scanline_padding() {
        // 3 pixels of 16 bits, rows padded to 32 bits: 6 pixel bytes + 2 padding bytes a row.
        let layout = Some((16, 32));
        let plain = [1, 2, 1, 2, 1, 2, 9, 9, 1, 2, 1, 2, 1, 2, 7, 7];
        assert!(uniform(&plain, 3, layout));
        let mut drawn = plain;
        drawn[10] = 5;
        assert!(!uniform(&drawn, 3, layout));
        // 32 bits a pixel, no padding.
        let black = [0u8; 4 * 8];
        assert!(uniform(&black, 8, Some((32, 32))));
        let mut one = black;
        one[4 * 7] = 0xff;
        assert!(!uniform(&one, 8, Some((32, 32))));
        assert!(uniform(&[], 0, Some((32, 32))));
    }
}
