//! Encodes captured frames as PNG (fast deflate) or JPEG, and scales them down.

use crate::x11::capture::Frame;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
    #[error("JPEG encoding failed: {0}")]
    Jpeg(#[from] jpeg_encoder::EncodingError),
    #[error("image {0}x{1} is too large for JPEG (65535 max per side)")]
    TooLarge(u32, u32),
    #[error("scaling the screenshot failed: {0}")]
    Scale(String),
}

/// `frame` scaled to `width` x `height` with a bilinear filter (sharp enough for text at the
/// scales models ask for, and fast). The fourth byte is padding, not alpha, so it is ignored.
pub fn scale(frame: Frame, width: u32, height: u32) -> Result<Frame, EncodeError> {
    use fast_image_resize::{
        images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    if (width, height) == (frame.width, frame.height) {
        return Ok(frame);
    }
    let src = Image::from_vec_u8(frame.width, frame.height, frame.bgrx, PixelType::U8x4)
        .map_err(|e| EncodeError::Scale(e.to_string()))?;
    let mut dst = Image::new(width, height, PixelType::U8x4);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .use_alpha(false);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| EncodeError::Scale(e.to_string()))?;
    Ok(Frame {
        width,
        height,
        bgrx: dst.into_vec(),
    })
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

    #[test]
    fn scaling_keeps_colours_with_a_zero_padding_byte() {
        // 40x20: left half red, right half blue; the padding byte is 0, as X sends it, which
        // must not be read as transparent.
        let mut bgrx = Vec::new();
        for _ in 0..20 {
            for x in 0..40 {
                bgrx.extend_from_slice(if x < 20 {
                    &[0, 0, 255, 0]
                } else {
                    &[255, 0, 0, 0]
                });
            }
        }
        let f = scale(
            Frame {
                width: 40,
                height: 20,
                bgrx,
            },
            10,
            5,
        )
        .unwrap();
        assert_eq!((f.width, f.height, f.bgrx.len()), (10, 5, 10 * 5 * 4));
        assert_eq!(&f.bgrx[..3], &[0, 0, 255]);
        let last = f.bgrx.len() - 4;
        assert_eq!(&f.bgrx[last..last + 3], &[255, 0, 0]);
        // Same size: the frame comes back untouched.
        let same = scale(frame(), 2, 1).unwrap();
        assert_eq!(same.bgrx, frame().bgrx);
    }
}
