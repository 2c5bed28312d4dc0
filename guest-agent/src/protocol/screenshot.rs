//! The query rules of `GET /screenshot`: image format names and aliases, the JPEG quality range
//! and its default, a region (`x, y, width, height`, captured at full resolution) and a pixel cap
//! (`max_pixels`, scaled down with the scale in the answer). The agent applies them to what it serves and the daemon to what it forwards
//! (so a bad query is refused before a booting computer is waited for), with the same messages.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// JPEG quality when the query names none.
pub const DEFAULT_JPEG_QUALITY: u8 = 80;
/// The JPEG qualities accepted.
pub const JPEG_QUALITY: RangeInclusive<u8> = 1..=100;
/// The `max_pixels` accepted (a 32x32 thumbnail up to any screen X can have).
pub const MAX_PIXELS: RangeInclusive<u64> = 1024..=(1 << 32);
/// Largest region coordinate or side (X coordinates are 16-bit signed).
pub const MAX_COORD: u16 = i16::MAX as u16;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Png,
    Jpeg,
}

impl ImageFormat {
    /// `png`, `jpeg` or its alias `jpg`, in any case.
    pub fn parse(name: &str) -> Option<ImageFormat> {
        match name.to_ascii_lowercase().as_str() {
            "png" => Some(ImageFormat::Png),
            "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
            _ => None,
        }
    }

    /// The canonical name, as sent in a query.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
        }
    }
}

/// Query of `GET /screenshot` as received: `format=png|jpeg|jpg`, `quality=1..100` (JPEG only;
/// checked for PNG too, so a typo never passes silently). Kept as strings so that every bad value
/// gets the message of [`ScreenshotQuery::parse`], not a deserializer's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScreenshotQuery {
    pub format: Option<String>,
    pub quality: Option<String>,
    pub x: Option<String>,
    pub y: Option<String>,
    pub width: Option<String>,
    pub height: Option<String>,
    pub max_pixels: Option<String>,
}

/// A rectangle of the screen, in screen pixels.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Region {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
}

impl Region {
    /// Checks that the region lies on a `screen_w` x `screen_h` screen (the agent's check, since
    /// only it knows the size), or the message for a 400.
    pub fn check_on(&self, screen_w: u16, screen_h: u16) -> Result<(), String> {
        let (right, bottom) = (
            u32::from(self.x) + u32::from(self.width),
            u32::from(self.y) + u32::from(self.height),
        );
        if right > u32::from(screen_w) {
            return Err(format!(
                "x + width is {right}, past the screen's width {screen_w}; the screen is {screen_w}x{screen_h}"
            ));
        }
        if bottom > u32::from(screen_h) {
            return Err(format!(
                "y + height is {bottom}, past the screen's height {screen_h}; the screen is {screen_w}x{screen_h}"
            ));
        }
        Ok(())
    }
}

/// A checked screenshot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenshotOptions {
    pub format: ImageFormat,
    /// JPEG quality (unused for PNG).
    pub quality: u8,
    /// Only this part of the screen, at full resolution.
    pub region: Option<Region>,
    /// Scale the image down (keeping its aspect) until it has at most this many pixels.
    pub max_pixels: Option<u64>,
}

impl Default for ScreenshotOptions {
    fn default() -> Self {
        ScreenshotOptions {
            format: ImageFormat::Png,
            quality: DEFAULT_JPEG_QUALITY,
            region: None,
            max_pixels: None,
        }
    }
}

/// A whole number from `min` to `max` in query value `field`, or the message for a 400.
fn whole(field: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{field} must be a whole number from {min} to {max}."))
}

impl ScreenshotQuery {
    /// The options the query asks for, or the message for a 400.
    pub fn parse(&self) -> Result<ScreenshotOptions, String> {
        let format = match self.format.as_deref() {
            None => ImageFormat::Png,
            Some(f) => ImageFormat::parse(f).ok_or_else(|| {
                format!(
                    "format must be png or jpeg (got {:?}).",
                    f.chars().take(40).collect::<String>()
                )
            })?,
        };
        let quality = match self.quality.as_deref() {
            None => DEFAULT_JPEG_QUALITY,
            Some(q) => q
                .parse::<u8>()
                .ok()
                .filter(|n| JPEG_QUALITY.contains(n))
                .ok_or_else(|| {
                    format!(
                        "quality must be a whole number from {} to {}.",
                        JPEG_QUALITY.start(),
                        JPEG_QUALITY.end()
                    )
                })?,
        };
        let parts = [
            ("x", &self.x),
            ("y", &self.y),
            ("width", &self.width),
            ("height", &self.height),
        ];
        let region = if parts.iter().all(|(_, v)| v.is_none()) {
            None
        } else {
            let missing: Vec<&str> = parts
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(f, _)| *f)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "a region needs x, y, width and height; missing: {}.",
                    missing.join(", ")
                ));
            }
            let num = |i: usize, min: u64| -> Result<u16, String> {
                let (field, value) = parts[i];
                let v = value.as_deref().unwrap_or_default();
                // MAX_COORD fits u16, so the conversion cannot fail.
                whole(field, v, min, u64::from(MAX_COORD)).map(|n| n as u16)
            };
            Some(Region {
                x: num(0, 0)?,
                y: num(1, 0)?,
                width: num(2, 1)?,
                height: num(3, 1)?,
            })
        };
        let max_pixels = match self.max_pixels.as_deref() {
            None => None,
            Some(v) => Some(whole(
                "max_pixels",
                v,
                *MAX_PIXELS.start(),
                *MAX_PIXELS.end(),
            )?),
        };
        Ok(ScreenshotOptions {
            format,
            quality,
            region,
            max_pixels,
        })
    }
}

/// The size a `width` x `height` image is scaled to so that it has at most `max_pixels` pixels,
/// and the scale used (image pixels per screen pixel, at most 1): a point (X, Y) of the image is
/// at (X / scale, Y / scale) of the captured area, within a pixel.
pub fn scaled_size(width: u32, height: u32, max_pixels: u64) -> (u32, u32, f64) {
    let pixels = u64::from(width) * u64::from(height);
    if pixels <= max_pixels || pixels == 0 {
        return (width, height, 1.0);
    }
    let scale = (max_pixels as f64 / pixels as f64).sqrt();
    let side = |n: u32| ((f64::from(n) * scale).floor() as u32).clamp(1, n);
    (side(width), side(height), scale)
}

impl ScreenshotOptions {
    /// The agent's path and query for these options.
    pub fn path(&self) -> String {
        let path = super::paths::SCREENSHOT;
        let mut p = match self.format {
            ImageFormat::Png => format!("{path}?format=png"),
            ImageFormat::Jpeg => format!("{path}?format=jpeg&quality={}", self.quality),
        };
        if let Some(r) = self.region {
            p += &format!("&x={}&y={}&width={}&height={}", r.x, r.y, r.width, r.height);
        }
        if let Some(m) = self.max_pixels {
            p += &format!("&max_pixels={m}");
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(format: Option<&str>, quality: Option<&str>) -> ScreenshotQuery {
        ScreenshotQuery {
            format: format.map(str::to_string),
            quality: quality.map(str::to_string),
            ..Default::default()
        }
    }

    fn region(x: &str, y: &str, w: &str, h: &str) -> ScreenshotQuery {
        ScreenshotQuery {
            x: Some(x.into()),
            y: Some(y.into()),
            width: Some(w.into()),
            height: Some(h.into()),
            ..Default::default()
        }
    }

    #[test]
    fn regions_need_all_four_whole_numbers() {
        assert_eq!(
            region("10", "20", "300", "200").parse().unwrap().region,
            Some(Region {
                x: 10,
                y: 20,
                width: 300,
                height: 200
            })
        );
        let only_x = ScreenshotQuery {
            x: Some("1".into()),
            height: Some("5".into()),
            ..Default::default()
        };
        assert_eq!(
            only_x.parse().unwrap_err(),
            "a region needs x, y, width and height; missing: y, width."
        );
        assert_eq!(
            region("-1", "0", "1", "1").parse().unwrap_err(),
            "x must be a whole number from 0 to 32767."
        );
        assert_eq!(
            region("0", "0", "0", "1").parse().unwrap_err(),
            "width must be a whole number from 1 to 32767."
        );
        assert_eq!(
            region("0", "0", "1", "1.5").parse().unwrap_err(),
            "height must be a whole number from 1 to 32767."
        );
        let r = region("100", "0", "541", "10")
            .parse()
            .unwrap()
            .region
            .unwrap();
        assert!(r
            .check_on(640, 480)
            .unwrap_err()
            .contains("x + width is 641"));
        let r = region("0", "470", "10", "11")
            .parse()
            .unwrap()
            .region
            .unwrap();
        assert!(r
            .check_on(640, 480)
            .unwrap_err()
            .contains("y + height is 481"));
        let r = region("630", "470", "10", "10")
            .parse()
            .unwrap()
            .region
            .unwrap();
        assert_eq!(r.check_on(640, 480), Ok(()));
    }

    #[test]
    fn max_pixels_range_and_scaled_sizes() {
        let m = |v: &str| ScreenshotQuery {
            max_pixels: Some(v.into()),
            ..Default::default()
        };
        assert_eq!(m("1150000").parse().unwrap().max_pixels, Some(1_150_000));
        for bad in ["0", "1023", "x", "-5", "4294967297"] {
            assert_eq!(
                m(bad).parse().unwrap_err(),
                "max_pixels must be a whole number from 1024 to 4294967296.",
                "{bad}"
            );
        }
        let (w, h, s) = scaled_size(1920, 1080, 1_150_000);
        assert!(u64::from(w) * u64::from(h) <= 1_150_000);
        assert!((s - (1_150_000f64 / (1920.0 * 1080.0)).sqrt()).abs() < 1e-12);
        assert!((f64::from(w) - 1920.0 * s).abs() < 1.0);
        assert!((f64::from(h) - 1080.0 * s).abs() < 1.0);
        assert_eq!(scaled_size(640, 480, 1_000_000), (640, 480, 1.0));
        assert_eq!(scaled_size(640, 480, 640 * 480), (640, 480, 1.0));
        // A thin strip never scales to nothing.
        assert_eq!(scaled_size(30000, 1, 1024).1, 1);
    }

    #[test]
    fn formats_and_aliases() {
        assert_eq!(q(None, None).parse(), Ok(ScreenshotOptions::default()));
        for (name, format) in [
            ("png", ImageFormat::Png),
            ("PNG", ImageFormat::Png),
            ("jpeg", ImageFormat::Jpeg),
            ("jpg", ImageFormat::Jpeg),
            ("JPG", ImageFormat::Jpeg),
        ] {
            assert_eq!(
                q(Some(name), None).parse().unwrap().format,
                format,
                "{name}"
            );
        }
        assert_eq!(
            q(Some("gif"), None).parse().unwrap_err(),
            "format must be png or jpeg (got \"gif\")."
        );
    }

    #[test]
    fn quality_range() {
        assert_eq!(q(Some("jpg"), Some("1")).parse().unwrap().quality, 1);
        assert_eq!(q(Some("jpg"), Some("100")).parse().unwrap().quality, 100);
        assert_eq!(q(Some("jpg"), None).parse().unwrap().quality, 80);
        for bad in ["0", "101", "abc", "-5", "50.5", ""] {
            assert_eq!(
                q(Some("jpeg"), Some(bad)).parse().unwrap_err(),
                "quality must be a whole number from 1 to 100.",
                "{bad}"
            );
        }
    }

    #[test]
    fn forwarded_paths_read_back_the_same() {
        for opts in [
            ScreenshotOptions::default(),
            ScreenshotOptions {
                format: ImageFormat::Jpeg,
                quality: 33,
                ..Default::default()
            },
            ScreenshotOptions {
                region: Some(Region {
                    x: 1,
                    y: 2,
                    width: 3,
                    height: 4,
                }),
                max_pixels: Some(5000),
                ..Default::default()
            },
        ] {
            let path = opts.path();
            let query = path.split_once('?').unwrap().1;
            let mut back = ScreenshotQuery::default();
            for (k, v) in query.split('&').filter_map(|p| p.split_once('=')) {
                match k {
                    "format" => back.format = Some(v.into()),
                    "quality" => back.quality = Some(v.into()),
                    "x" => back.x = Some(v.into()),
                    "y" => back.y = Some(v.into()),
                    "width" => back.width = Some(v.into()),
                    "height" => back.height = Some(v.into()),
                    "max_pixels" => back.max_pixels = Some(v.into()),
                    _ => panic!("{k}"),
                }
            }
            let parsed = back.parse().unwrap();
            assert_eq!(parsed.format, opts.format);
            if opts.format == ImageFormat::Jpeg {
                assert_eq!(parsed.quality, opts.quality);
            }
            assert_eq!(parsed.region, opts.region);
            assert_eq!(parsed.max_pixels, opts.max_pixels);
        }
    }
}
