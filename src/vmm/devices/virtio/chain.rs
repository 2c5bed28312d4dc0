//! Validated descriptor chains: every buffer checked against guest memory before a device reads
//! or writes it (the bytes are then moved by [`super::cursor::Cursor`]).

use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use super::GuestMemory;

/// What is wrong with a chain the driver made available. Any of these means the driver is broken
/// or hostile; devices answer by marking themselves `DEVICE_NEEDS_RESET`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor chain is empty (head index out of the table or unreadable descriptor)")]
    Empty,
    #[error("descriptor chain does not terminate (loop, next index out of range, or unreadable descriptor)")]
    Unterminated,
    #[error("descriptor buffer at {addr:#x} of {len} bytes is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor chain is {len} bytes long, more than the {max} this device accepts")]
    TooLong { len: u64, max: u64 },
}

/// One guest buffer, known to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A descriptor chain split into its device-readable and device-writable parts.
#[derive(Debug, Clone)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Buf>,
    pub writable: Vec<Buf>,
}

impl Chain {
    /// Walks `chain`, checking that it terminates, that every buffer is inside `mem`, that readable
    /// buffers come first, and that the total length is at most `max_len`.
    pub fn parse(
        chain: DescriptorChain<&GuestMemory>,
        mem: &GuestMemory,
        max_len: u64,
    ) -> Result<Chain, ChainError> {
        let head = chain.head_index();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut total: u64 = 0;
        let mut last_has_next = false;
        // `DescriptorChain` stops after `queue_size` descriptors (its loop guard) and on any
        // descriptor it cannot read, without saying why; a last descriptor that still points to a
        // next one tells us the walk was cut short.
        for desc in chain {
            last_has_next = desc.has_next();
            let buf = Buf {
                addr: desc.addr(),
                len: desc.len(),
            };
            if !GuestMemoryBackend::check_range(mem, buf.addr, buf.len as usize) {
                return Err(ChainError::OutsideMemory {
                    addr: buf.addr.raw_value(),
                    len: buf.len,
                });
            }
            total += u64::from(buf.len);
            if total > max_len {
                return Err(ChainError::TooLong {
                    len: total,
                    max: max_len,
                });
            }
            if desc.is_write_only() {
                writable.push(buf);
            } else if writable.is_empty() {
                readable.push(buf);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
        }
        if readable.is_empty() && writable.is_empty() && !last_has_next {
            return Err(ChainError::Empty);
        }
        if last_has_next {
            return Err(ChainError::Unterminated);
        }
        Ok(Chain {
            head,
            readable,
            writable,
        })
    }
}

/// Total length of `bufs`.
pub fn total_len(bufs: &[Buf]) -> u64 {
    bufs.iter().map(|b| u64::from(b.len)).sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    pub fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("test memory")
    }

    pub fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    /// Places `descs` at the start of the table (links as given) and makes index 0 available.
    fn parse_raw(mem: &GuestMemory, descs: &[RawDescriptor]) -> Result<Chain, ChainError> {
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(descs, 0).expect("mock chain");
        let mut q: Queue = vq.create_queue().expect("mock queue");
        let chain = q.iter(mem).expect("iter").next().expect("one chain");
        Chain::parse(chain, mem, u64::from(u32::MAX))
    }

    #[test]
    fn good_chain_is_split_into_readable_and_writable() {
        let mem = memory();
        let chain = parse_raw(
            &mem,
            &[
                desc(0x1000, 16, VRING_DESC_F_NEXT, 1),
                desc(0x2000, 512, VRING_DESC_F_WRITE, 0),
            ],
        )
        .expect("valid chain");
        assert_eq!(
            chain.readable,
            vec![Buf {
                addr: GuestAddress(0x1000),
                len: 16
            }]
        );
        assert_eq!(
            chain.writable,
            vec![Buf {
                addr: GuestAddress(0x2000),
                len: 512
            }]
        );
    }

    #[test]
    fn buffer_outside_guest_memory_is_rejected() {
        let mem = memory();
        let err = parse_raw(&mem, &[desc(0x20_0000, 16, 0, 0)]).unwrap_err();
        assert_eq!(
            err,
            ChainError::OutsideMemory {
                addr: 0x20_0000,
                len: 16
            }
        );
        // Straddling the end of memory is as bad as starting outside it.
        let err = parse_raw(&mem, &[desc(0xf_ff00, 0x200, 0, 0)]).unwrap_err();
        assert!(matches!(err, ChainError::OutsideMemory { .. }));
    }

    #[test]
    fn oversized_length_is_rejected() {
        let mem = memory();
        let err = parse_raw(&mem, &[desc(0x1000, u32::MAX, 0, 0)]).unwrap_err();
        assert!(matches!(err, ChainError::OutsideMemory { .. }));
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[desc(0x1000, 4096, 0, 0)], 0)
            .expect("mock");
        let mut q: Queue = vq.create_queue().expect("queue");
        let chain = q.iter(&mem).expect("iter").next().expect("chain");
        assert_eq!(
            Chain::parse(chain, &mem, 1024).unwrap_err(),
            ChainError::TooLong {
                len: 4096,
                max: 1024
            }
        );
    }

    #[test]
    fn descriptor_loop_is_rejected() {
        let mem = memory();
        // 0 -> 1 -> 0 -> ... never ends; the walk is cut at the queue size.
        let err = parse_raw(
            &mem,
            &[
                desc(0x1000, 16, VRING_DESC_F_NEXT, 1),
                desc(0x2000, 16, VRING_DESC_F_NEXT, 0),
            ],
        )
        .unwrap_err();
        assert_eq!(err, ChainError::Unterminated);
    }

    #[test]
    fn next_index_out_of_table_is_rejected() {
        let mem = memory();
        let err = parse_raw(&mem, &[desc(0x1000, 16, VRING_DESC_F_NEXT, 200)]).unwrap_err();
        assert_eq!(err, ChainError::Unterminated);
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let mem = memory();
        let err = parse_raw(
            &mem,
            &[
                desc(0x1000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                desc(0x2000, 16, 0, 0),
            ],
        )
        .unwrap_err();
        assert_eq!(err, ChainError::ReadableAfterWritable);
    }
}
