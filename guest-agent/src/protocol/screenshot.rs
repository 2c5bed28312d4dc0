//! The query rules of `GET /screenshot`: image format names and aliases, the JPEG quality range
//! and its default. The agent applies them to what it serves and the daemon to what it forwards
//! (so a bad query is refused before a booting computer is waited for), with the same messages.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// JPEG quality when the query names none.
pub const DEFAULT_JPEG_QUALITY: u8 = 80;
/// The JPEG qualities accepted.
pub const JPEG_QUALITY: RangeInclusive<u8> = 1..=100;

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
}

/// A checked screenshot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenshotOptions {
    pub format: ImageFormat,
    /// JPEG quality (unused for PNG).
    pub quality: u8,
}

impl Default for ScreenshotOptions {
    fn default() -> Self {
        ScreenshotOptions {
            format: ImageFormat::Png,
            quality: DEFAULT_JPEG_QUALITY,
        }
    }
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
        Ok(ScreenshotOptions { format, quality })
    }
}

impl ScreenshotOptions {
    /// The agent's path and query for these options.
    pub fn path(&self) -> String {
        let path = super::paths::SCREENSHOT;
        match self.format {
            ImageFormat::Png => format!("{path}?format=png"),
            ImageFormat::Jpeg => format!("{path}?format=jpeg&quality={}", self.quality),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(format: Option<&str>, quality: Option<&str>) -> ScreenshotQuery {
        ScreenshotQuery {
            format: format.map(str::to_string),
            quality: quality.map(str::to_string),
        }
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
            },
        ] {
            let path = opts.path();
            let query = path.split_once('?').unwrap().1;
            let mut back = ScreenshotQuery::default();
            for (k, v) in query.split('&').filter_map(|p| p.split_once('=')) {
                match k {
                    "format" => back.format = Some(v.into()),
                    "quality" => back.quality = Some(v.into()),
                    _ => panic!("{k}"),
                }
            }
            let parsed = back.parse().unwrap();
            assert_eq!(parsed.format, opts.format);
            if opts.format == ImageFormat::Jpeg {
                assert_eq!(parsed.quality, opts.quality);
            }
        }
    }
}
