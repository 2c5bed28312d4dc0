//! The compressed kernel inside a bzImage, decompressed on the host.
//!
//! A bzImage is a setup header, a real-mode stub, a small decompressor and the real kernel (an
//! ELF `vmlinux`) compressed. The setup header says where that payload is (`payload_offset`,
//! `payload_length`, protocol 2.08+). Decompressing it natively on the host and loading the ELF
//! saves the guest from running its decompressor, which under nested virtualization is most of
//! the time before the kernel's first instruction. The file on disk is not modified; kernels whose
//! payload uses a compression not handled here are booted the classic way.
//!
//! Debian 12's kernels use LZ4 in its legacy frame format, as written by `lz4 -l`:
//! magic `0x184c2102`, then blocks of (u32 LE compressed length, LZ4 block), each block
//! decompressing to at most 8 MiB; the kernel build appends the decompressed size as a u32 LE.

/// Legacy LZ4 frame magic (little endian on disk: 02 21 4c 18).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Largest decompressed size of one legacy block.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// Offset of the setup header in a bzImage.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Upper bound for a decompressed kernel; anything claiming more is not a kernel we boot.
const MAX_VMLINUX: usize = 512 << 20;
/// The ELF magic the decompressed payload must start with.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Why the payload could not be extracted although it claimed a supported format.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the bzImage payload is truncated or its header points outside the file")]
    OutOfBounds,
    #[error("the LZ4 payload is corrupt: {0}")]
    Lz4(String),
    #[error("the decompressed payload is {0} bytes, more than a kernel can be")]
    TooBig(usize),
    #[error("the decompressed payload is not an ELF image")]
    NotElf,
}

fn u32_at(data: &[u8], offset: usize) -> Option<u32> {
    let bytes = data.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The compressed payload of a bzImage: its bytes, or `None` if the header has no payload fields.
pub fn payload(bzimage: &[u8]) -> Result<Option<&[u8]>, PayloadError> {
    let setup_sects = *bzimage
        .get(SETUP_HEADER_OFFSET)
        .ok_or(PayloadError::OutOfBounds)?;
    let version = bzimage
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(PayloadError::OutOfBounds)?;
    if version < 0x0208 {
        return Ok(None);
    }
    let setup_sects = if setup_sects == 0 { 4 } else { setup_sects };
    let protected_mode_start = (usize::from(setup_sects) + 1) * 512;
    let offset = u32_at(bzimage, 0x248).ok_or(PayloadError::OutOfBounds)? as usize;
    let length = u32_at(bzimage, 0x24c).ok_or(PayloadError::OutOfBounds)? as usize;
    let start = protected_mode_start
        .checked_add(offset)
        .ok_or(PayloadError::OutOfBounds)?;
    let end = start.checked_add(length).ok_or(PayloadError::OutOfBounds)?;
    bzimage
        .get(start..end)
        .map(Some)
        .ok_or(PayloadError::OutOfBounds)
}

/// Decompresses a legacy-format LZ4 stream (with or without the trailing size word).
fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, PayloadError> {
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 4;
    while let Some(block_len) = u32_at(data, pos) {
        // The trailing size word (or a following frame) ends the stream.
        if block_len == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let block_len = block_len as usize;
        let Some(block) = pos
            .checked_add(4)
            .and_then(|s| Some(s..s.checked_add(block_len)?))
            .and_then(|r| data.get(r))
        else {
            break;
        };
        let before = out.len();
        if before + LZ4_LEGACY_BLOCK > MAX_VMLINUX {
            return Err(PayloadError::TooBig(before + LZ4_LEGACY_BLOCK));
        }
        out.resize(before + LZ4_LEGACY_BLOCK, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[before..])
            .map_err(|e| PayloadError::Lz4(e.to_string()))?;
        out.truncate(before + n);
        pos += 4 + block_len;
    }
    Ok(out)
}

/// The uncompressed `vmlinux` ELF of `bzimage`, or `None` if its payload is in a format this
/// VMM does not decompress (the guest's own decompressor then runs).
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Option<Vec<u8>>, PayloadError> {
    let Some(payload) = payload(bzimage)? else {
        return Ok(None);
    };
    if u32_at(payload, 0) != Some(LZ4_LEGACY_MAGIC) {
        return Ok(None);
    }
    let vmlinux = lz4_legacy(payload)?;
    if !vmlinux.starts_with(ELF_MAGIC) {
        return Err(PayloadError::NotElf);
    }
    Ok(Some(vmlinux))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake bzImage: setup sectors, then an LZ4 legacy payload of `content`.
    fn fake_bzimage(content: &[u8], split: usize) -> Vec<u8> {
        let mut payload = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in content.chunks(split) {
            let block = lz4_flex::block::compress(chunk);
            payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
            payload.extend_from_slice(&block);
        }
        payload.extend_from_slice(&(content.len() as u32).to_le_bytes());
        let setup_sects = 3u8;
        let mut image = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        image[SETUP_HEADER_OFFSET] = setup_sects;
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        let offset = 0x40u32;
        image[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&vec![0x90; offset as usize]); // the decompressor stub
        image.extend_from_slice(&payload);
        image
    }

    fn elf_like(len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        v[..4].copy_from_slice(ELF_MAGIC);
        v
    }

    #[test]
    fn multi_block_payload_round_trips() {
        let content = elf_like(3 * 1000 + 17);
        let image = fake_bzimage(&content, 1000);
        assert_eq!(extract_vmlinux(&image).unwrap().unwrap(), content);
    }

    #[test]
    fn other_formats_fall_back_to_the_guest_decompressor() {
        let mut image = fake_bzimage(&elf_like(100), 100);
        let start = 4 * 512 + 0x40;
        image[start..start + 2].copy_from_slice(&[0x1f, 0x8b]); // gzip magic
        assert!(extract_vmlinux(&image).unwrap().is_none());
        // An old boot protocol without payload fields.
        image[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(extract_vmlinux(&image).unwrap().is_none());
    }

    #[test]
    fn corrupt_or_lying_images_are_errors_not_panics() {
        let content = elf_like(5000);
        let image = fake_bzimage(&content, 5000);
        // Header points past the end of the file.
        let mut bad = image.clone();
        bad[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&bad),
            Err(PayloadError::OutOfBounds)
        ));
        // Garbage inside the LZ4 block.
        let mut bad = image.clone();
        let block_start = 4 * 512 + 0x40 + 8;
        for b in &mut bad[block_start..block_start + 40] {
            *b = 0xff;
        }
        assert!(extract_vmlinux(&bad).is_err());
        // Not an ELF inside.
        let mut not_elf = content.clone();
        not_elf[0] = 0;
        assert!(matches!(
            extract_vmlinux(&fake_bzimage(&not_elf, 5000)),
            Err(PayloadError::NotElf)
        ));
        // Truncated anywhere: never a panic.
        for cut in [0, 0x1f0, 0x250, image.len() / 2, image.len() - 1] {
            let _ = extract_vmlinux(&image[..cut]);
        }
    }

    /// The real thing: Debian's cloud kernel, when `tests/rig/kernel cloud` has fetched it.
    #[test]
    fn debian_cloud_kernel_payload_is_an_elf() {
        let dir = std::path::Path::new("/var/cache/deskd/kernels");
        let image = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("cloud-amd64"))
                .flat_map(|e| {
                    std::fs::read_dir(e.path().join("boot"))
                        .into_iter()
                        .flatten()
                })
                .flatten()
                .find(|f| f.file_name().to_string_lossy().starts_with("vmlinuz-"))
        });
        let Some(image) = image else {
            eprintln!("SKIPPED debian_cloud_kernel_payload_is_an_elf: no kernel in {dir:?} (run tests/rig/kernel cloud)");
            return;
        };
        let bytes = std::fs::read(image.path()).unwrap();
        let vmlinux = extract_vmlinux(&bytes).unwrap().expect("Debian uses LZ4");
        assert!(vmlinux.len() > bytes.len(), "decompressed is larger");
        assert_eq!(vmlinux[4], 2, "64-bit ELF");
    }
}
