//! Cursors that move bytes between validated guest buffers and host memory, files or sockets.

use std::io;

use vm_memory::{Address, Bytes, GuestAddress, ReadVolatile, VolatileMemoryError, WriteVolatile};

use super::chain::{total_len, Buf};
use super::GuestMemory;

/// Why moving bytes to or from guest buffers failed.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("the guest buffers hold {available} more bytes, {wanted} were needed")]
    Short { wanted: u64, available: u64 },
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("host I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl From<VolatileMemoryError> for CursorError {
    fn from(e: VolatileMemoryError) -> Self {
        match e {
            VolatileMemoryError::IOError(io) => CursorError::Io(io),
            other => CursorError::Io(io::Error::other(other.to_string())),
        }
    }
}

/// A position in a list of guest buffers; reads or writes advance it.
#[derive(Debug)]
pub struct Cursor<'a> {
    mem: &'a GuestMemory,
    bufs: &'a [Buf],
    index: usize,
    offset: u32,
    done: u64,
}

impl<'a> Cursor<'a> {
    pub fn new(mem: &'a GuestMemory, bufs: &'a [Buf]) -> Self {
        Cursor {
            mem,
            bufs,
            index: 0,
            offset: 0,
            done: 0,
        }
    }

    /// Bytes left from the current position.
    pub fn remaining(&self) -> u64 {
        total_len(self.bufs).saturating_sub(self.done)
    }

    /// Bytes moved so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Calls `f(addr, len)` for consecutive pieces covering `count` bytes, advancing the cursor.
    /// `f` returns how many bytes it handled; fewer than `len` ends the walk early (EOF).
    fn walk<F>(&mut self, count: u64, mut f: F) -> Result<u64, CursorError>
    where
        F: FnMut(GuestAddress, usize) -> Result<usize, CursorError>,
    {
        if count > self.remaining() {
            return Err(CursorError::Short {
                wanted: count,
                available: self.remaining(),
            });
        }
        let mut moved: u64 = 0;
        while moved < count {
            let Some(buf) = self.bufs.get(self.index) else {
                break;
            };
            let left_in_buf = u64::from(buf.len - self.offset);
            if left_in_buf == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let piece = left_in_buf.min(count - moved);
            // Buffers were range-checked in `Chain::parse`, so the addition stays in memory.
            let addr = buf.addr.unchecked_add(u64::from(self.offset));
            let handled = f(addr, piece as usize)? as u64;
            // `handled <= piece <= left_in_buf`, which fits in u32.
            self.offset += handled as u32;
            moved += handled;
            self.done += handled;
            if handled < piece {
                break;
            }
        }
        Ok(moved)
    }

    /// Copies the next `dst.len()` guest bytes into `dst`.
    pub fn read_exact(&mut self, dst: &mut [u8]) -> Result<(), CursorError> {
        let mem = self.mem;
        let mut at = 0usize;
        self.walk(dst.len() as u64, |addr, len| {
            mem.read_slice(&mut dst[at..at + len], addr)?;
            at += len;
            Ok(len)
        })?;
        Ok(())
    }

    /// Copies `src` into the guest buffers.
    pub fn write_all(&mut self, src: &[u8]) -> Result<(), CursorError> {
        let mem = self.mem;
        let mut at = 0usize;
        self.walk(src.len() as u64, |addr, len| {
            mem.write_slice(&src[at..at + len], addr)?;
            at += len;
            Ok(len)
        })?;
        Ok(())
    }

    /// Sends the next `count` guest bytes to `dst` (a file or socket), all of them or an error.
    pub fn copy_to<W: WriteVolatile>(
        &mut self,
        dst: &mut W,
        count: u64,
    ) -> Result<(), CursorError> {
        let mem = self.mem;
        self.walk(count, |addr, len| {
            mem.write_all_volatile_to(addr, dst, len)?;
            Ok(len)
        })?;
        Ok(())
    }

    /// Fills the next `count` guest bytes from `src`; a short source is an error.
    pub fn copy_from<R: ReadVolatile>(
        &mut self,
        src: &mut R,
        count: u64,
    ) -> Result<(), CursorError> {
        let mem = self.mem;
        self.walk(count, |addr, len| {
            mem.read_exact_volatile_from(addr, src, len)?;
            Ok(len)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::chain::tests::memory;

    #[test]
    fn cursor_spans_buffers_and_refuses_to_overrun() {
        let mem = memory();
        let bufs = [
            Buf {
                addr: GuestAddress(0x1000),
                len: 3,
            },
            Buf {
                addr: GuestAddress(0x2000),
                len: 5,
            },
        ];
        let mut w = Cursor::new(&mem, &bufs);
        w.write_all(b"abcdefgh").expect("fits exactly");
        assert_eq!(w.remaining(), 0);
        assert!(matches!(w.write_all(b"x"), Err(CursorError::Short { .. })));
        let mut r = Cursor::new(&mem, &bufs);
        let mut out = [0u8; 8];
        r.read_exact(&mut out).expect("read back");
        assert_eq!(&out, b"abcdefgh");
        let mut head = [0u8; 3];
        mem.read_slice(&mut head, GuestAddress(0x1000))
            .expect("mem");
        assert_eq!(&head, b"abc");
    }
}
