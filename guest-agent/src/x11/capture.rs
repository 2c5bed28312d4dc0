//! Grabs the root window's pixels (all of it or a region): MIT-SHM (the server writes straight into memory we mapped, no
//! copy through the socket), falling back to a plain GetImage when SHM is unavailable.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};
use x11rb::rust_connection::RustConnection;

use super::{X11Error, XSession};
use crate::protocol::Region;

/// A captured frame: 4 bytes per pixel in B, G, R, X order, rows packed (stride = width * 4).
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub bgrx: Vec<u8>,
}

/// A server-created shared memory segment mapped into our address space.
struct ShmSegment {
    seg: shm::Seg,
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is owned by this struct alone and only read while the Capturer mutex is held.
unsafe impl Send for ShmSegment {}

impl ShmSegment {
    fn create(conn: &RustConnection, size: usize) -> Result<ShmSegment, X11Error> {
        let size32 = u32::try_from(size)
            .map_err(|_| X11Error::Request("screen too large for one SHM segment".into()))?;
        let seg = conn.generate_id()?;
        let reply = conn.shm_create_segment(seg, size32, false)?.reply()?;
        let fd = reply.shm_fd;
        // SAFETY: mapping a fresh shared region of `size` bytes from the fd the server handed us;
        // we check the result and unmap it in Drop. The fd can be closed after mmap.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let _ = conn.shm_detach(seg);
            return Err(X11Error::Request(format!(
                "mmap of the SHM segment failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| X11Error::Request("mmap returned null".into()))?;
        Ok(ShmSegment { seg, ptr, size })
    }

    fn bytes(&self, len: usize) -> &[u8] {
        let len = len.min(self.size);
        // SAFETY: ptr points to a live mapping of `size` bytes (see create) and len <= size.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }
}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in create; nothing borrows it past &self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.size);
        }
    }
}

pub struct Capturer {
    shm_supported: bool,
    segment: Option<ShmSegment>,
}

impl Capturer {
    pub fn new(conn: &RustConnection) -> Capturer {
        // SHM 1.2 (CreateSegment) lets the server allocate the memory and pass us an fd, which
        // works whichever user the X server runs as.
        let shm_supported = conn
            .extension_information(shm::X11_EXTENSION_NAME)
            .ok()
            .flatten()
            .is_some()
            && conn
                .shm_query_version()
                .ok()
                .and_then(|c| c.reply().ok())
                .is_some_and(|v| (v.major_version, v.minor_version) >= (1, 2));
        Capturer {
            shm_supported,
            segment: None,
        }
    }

    pub fn uses_shm(&self) -> bool {
        self.shm_supported
    }

    /// Forces the GetImage path (for the benchmark's comparison and the fallback test).
    pub fn disable_shm(&mut self) {
        self.shm_supported = false;
        self.segment = None;
    }
}

/// Captures the whole root window.
pub fn capture(session: &XSession) -> Result<Frame, X11Error> {
    capture_area(session, None)
}

/// Captures `region` of the root window at full resolution (all of it for `None`). A region off
/// the screen is a `BadInput` naming the field that overshoots.
pub fn capture_area(session: &XSession, region: Option<Region>) -> Result<Frame, X11Error> {
    let (sw, sh) = session.screen_size()?;
    let area = match region {
        None => Region {
            x: 0,
            y: 0,
            width: sw,
            height: sh,
        },
        Some(r) => {
            r.check_on(sw, sh).map_err(X11Error::BadInput)?;
            r
        }
    };
    check_format(session)?;
    let mut cap = session.capturer.lock().unwrap_or_else(|p| p.into_inner());
    if cap.shm_supported {
        match capture_shm(session, &mut cap, area) {
            Ok(frame) => return Ok(frame),
            Err(e) if e.is_connection_lost() => return Err(e),
            Err(e) => {
                tracing::warn!("MIT-SHM capture failed ({e}); using GetImage from now on");
                cap.disable_shm();
            }
        }
    }
    drop(cap);
    capture_get_image(session, area)
}

fn check_format(session: &XSession) -> Result<(), X11Error> {
    let setup = session.conn.setup();
    let bpp = setup
        .pixmap_formats
        .iter()
        .find(|f| f.depth == session.root_depth)
        .map(|f| f.bits_per_pixel);
    if bpp != Some(32) || setup.image_byte_order != x11rb::protocol::xproto::ImageOrder::LSB_FIRST {
        return Err(X11Error::PixelFormat(format!(
            "depth {} with {:?} bits per pixel; the agent needs 24/32-bit TrueColor (Xvfb -screen 0 WxHx24)",
            session.root_depth, bpp
        )));
    }
    Ok(())
}

/// The origin of `area` as X coordinates (checked against the screen, which X keeps within i16).
fn origin(area: Region) -> Result<(i16, i16), X11Error> {
    let x =
        i16::try_from(area.x).map_err(|_| X11Error::BadInput(format!("x {} too large", area.x)))?;
    let y =
        i16::try_from(area.y).map_err(|_| X11Error::BadInput(format!("y {} too large", area.y)))?;
    Ok((x, y))
}

fn capture_shm(session: &XSession, cap: &mut Capturer, area: Region) -> Result<Frame, X11Error> {
    let (w, h) = (area.width, area.height);
    let (x, y) = origin(area)?;
    let need = usize::from(w) * usize::from(h) * 4;
    if cap.segment.as_ref().is_none_or(|s| s.size < need) {
        if let Some(old) = cap.segment.take() {
            let _ = session.conn.shm_detach(old.seg);
        }
        cap.segment = Some(ShmSegment::create(&session.conn, need)?);
    }
    let seg = cap
        .segment
        .as_ref()
        .ok_or_else(|| X11Error::Request("no SHM segment".into()))?;
    session
        .conn
        .shm_get_image(
            session.root,
            x,
            y,
            w,
            h,
            !0,
            ImageFormat::Z_PIXMAP.into(),
            seg.seg,
            0,
        )?
        .reply()?;
    Ok(Frame {
        width: w.into(),
        height: h.into(),
        bgrx: seg.bytes(need).to_vec(),
    })
}

fn capture_get_image(session: &XSession, area: Region) -> Result<Frame, X11Error> {
    let (w, h) = (area.width, area.height);
    let (x, y) = origin(area)?;
    let reply = session
        .conn
        .get_image(ImageFormat::Z_PIXMAP, session.root, x, y, w, h, !0)?
        .reply()?;
    let need = usize::from(w) * usize::from(h) * 4;
    if reply.data.len() < need {
        return Err(X11Error::Request(format!(
            "GetImage returned {} bytes, expected {need}",
            reply.data.len()
        )));
    }
    let mut bgrx = reply.data;
    bgrx.truncate(need);
    Ok(Frame {
        width: w.into(),
        height: h.into(),
        bgrx,
    })
}
