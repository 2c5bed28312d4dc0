//! Encodes captured frames as PNG (fast deflate) or JPEG.

use crate::x11::capture::Frame;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
    #[error("JPEG encoding failed: {0}")]
    Jpeg(#[from] jpeg_encoder::EncodingError),
    #[error("image {0}x{1} is too large for JPEG (65535 max per side)")]
    TooLarge(u32, u32),
}

/// PNG with the `Fast` preset: fdeflate plus the Up filter, several times faster than zlib's
/// fastest level at a similar size for desktop content.
pub fn png(frame: &Frame) -> Result<Vec<u8>, EncodeError> {
    let rgb = bgrx_to_rgb(&frame.bgrx);
    let mut out = Vec::with_capacity(rgb.len() / 8);
    {
        let mut enc = png::Encoder::new(&mut out, frame.width, frame.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// JPEG straight from the B, G, R, X bytes (the encoder ignores the fourth byte).
pub fn jpeg(frame: &Frame, quality: u8) -> Result<Vec<u8>, EncodeError> {
    let (w, h) = (
        u16::try_from(frame.width).map_err(|_| EncodeError::TooLarge(frame.width, frame.height))?,
        u16::try_from(frame.height)
            .map_err(|_| EncodeError::TooLarge(frame.width, frame.height))?,
    );
    let mut out = Vec::with_capacity(frame.bgrx.len() / 10);
    let enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    enc.encode(&frame.bgrx, w, h, jpeg_encoder::ColorType::Bgra)?;
    Ok(out)
}

/// Runs once per PNG screenshot over every pixel: writing into a pre-sized buffer keeps the loop
/// free of the per-pixel length check and reallocation path that pushing onto a `Vec` has.
fn bgrx_to_rgb(bgrx: &[u8]) -> Vec<u8> {
    let mut rgb = vec![0u8; bgrx.len() / 4 * 3];
    for (dst, px) in rgb.chunks_exact_mut(3).zip(bgrx.chunks_exact(4)) {
        dst[0] = px[2];
        dst[1] = px[1];
        dst[2] = px[0];
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        // 2x1: red then blue, as the X server lays them out (B, G, R, X).
        Frame {
            width: 2,
            height: 1,
            bgrx: vec![0, 0, 255, 0, 255, 0, 0, 0],
        }
    }

    #[test]
    fn png_keeps_pixels() {
        let bytes = png(&frame()).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&buf[..6], &[255, 0, 0, 0, 0, 255]);
    }

    #[test]
    fn jpeg_has_markers() {
        let bytes = jpeg(&frame(), 80).unwrap();
        assert_eq!(&bytes[..2], &[0xff, 0xd8]);
        assert_eq!(&bytes[bytes.len() - 2..], &[0xff, 0xd9]);
    }
}
