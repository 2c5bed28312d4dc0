//! The audio WebSocket (`/ws/audio`, api.md section 4): the format a client may ask for, the size
//! of a frame, and the JSON control messages both ways. The daemon checks a client's query with
//! [`AudioFormat::from_query`] before it relays, the agent checks again (it has other clients:
//! the desktop proxy, its own tests), and both name the same limits in their messages.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// Sample rates a client may ask for, in Hz.
pub const SAMPLE_RATES: RangeInclusive<u32> = 8000..=48000;
/// Channel counts a client may ask for (mono, stereo).
pub const CHANNELS: RangeInclusive<u8> = 1..=2;
/// The format when the query names none (the contract's example: 24 kHz mono).
pub const DEFAULT_FORMAT: AudioFormat = AudioFormat {
    sample_rate: 24_000,
    channels: 1,
};
/// Length of one binary frame.
pub const FRAME_MS: u32 = 20;
/// The PulseAudio source the desktop's sound comes from: the monitor of the image's null sink
/// `speaker` (images/rootfs/etc/pulse/default.pa.d/deskd-speaker.pa).
pub const SPEAKER_MONITOR: &str = "speaker.monitor";
/// The message of the error frame sent before close 4500 when capture fails (the contract's
/// words; the reason follows in `detail`).
pub const CAPTURE_FAILED: &str = "Failed to start audio capture";

/// What a client asked for: raw s16le PCM at `sample_rate` Hz with `channels` interleaved
/// channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioFormat {
    pub sample_rate: u32,
    pub channels: u8,
}

impl AudioFormat {
    /// From the query values; a missing value keeps its default, anything unreadable or out of
    /// range is the message for the client.
    pub fn from_values(
        sample_rate: Option<&str>,
        channels: Option<&str>,
    ) -> Result<AudioFormat, String> {
        let rate = match sample_rate {
            None => DEFAULT_FORMAT.sample_rate,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|r| SAMPLE_RATES.contains(r))
                .ok_or_else(|| {
                    format!(
                        "sample_rate must be a whole number of Hz from {} to {} (got {v:?})",
                        SAMPLE_RATES.start(),
                        SAMPLE_RATES.end()
                    )
                })?,
        };
        let channels = match channels {
            None => DEFAULT_FORMAT.channels,
            Some(v) => v
                .parse::<u8>()
                .ok()
                .filter(|c| CHANNELS.contains(c))
                .ok_or_else(|| format!("channels must be 1 (mono) or 2 (stereo) (got {v:?})"))?,
        };
        Ok(AudioFormat {
            sample_rate: rate,
            channels,
        })
    }

    /// From a raw query string (`sample_rate=24000&channels=1&token=...`; other keys ignored).
    pub fn from_query(query: Option<&str>) -> Result<AudioFormat, String> {
        let (mut rate, mut channels) = (None, None);
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("sample_rate", v)) => rate = Some(v),
                Some(("channels", v)) => channels = Some(v),
                _ => {}
            }
        }
        AudioFormat::from_values(rate, channels)
    }

    /// Samples per channel in one frame. For the few rates that are not a multiple of 50 Hz
    /// (11025) this rounds down, so such frames are a fraction of a millisecond short of 20 ms
    /// and arrive slightly more often; no sample is lost.
    pub fn frame_samples(&self) -> usize {
        (self.sample_rate * FRAME_MS / 1000) as usize
    }

    /// Bytes of one binary frame (s16le: two bytes per sample and channel).
    pub fn frame_bytes(&self) -> usize {
        self.frame_samples() * usize::from(self.channels) * 2
    }

    /// The agent's path for a stream of this format.
    pub fn path(&self) -> String {
        format!(
            "{}?sample_rate={}&channels={}",
            super::paths::WS_AUDIO,
            self.sample_rate,
            self.channels
        )
    }
}

/// Messages an audio client sends (JSON text frames).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AudioIn {
    /// Ends the stream (the socket closes with 1000).
    Stop,
    Ping,
}

/// Text messages the audio socket sends; the PCM itself comes in binary frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AudioOut {
    /// First message of a stream: the format of the binary frames that follow.
    Started {
        sample_rate: u32,
        channels: u8,
    },
    /// Capture failed; the socket closes with 4500 next.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_queries() {
        assert_eq!(AudioFormat::from_query(None), Ok(DEFAULT_FORMAT));
        assert_eq!(
            AudioFormat::from_query(Some("token=x&sample_rate=48000&channels=2")),
            Ok(AudioFormat {
                sample_rate: 48000,
                channels: 2
            })
        );
        let e = AudioFormat::from_query(Some("sample_rate=96000")).unwrap_err();
        assert!(e.contains("8000 to 48000") && e.contains("96000"), "{e}");
        let e = AudioFormat::from_query(Some("sample_rate=abc")).unwrap_err();
        assert!(e.contains("sample_rate"), "{e}");
        assert!(AudioFormat::from_query(Some("sample_rate=7999")).is_err());
        let e = AudioFormat::from_query(Some("channels=3")).unwrap_err();
        assert!(e.contains("channels must be 1"), "{e}");
        assert!(AudioFormat::from_query(Some("channels=0")).is_err());
        assert!(AudioFormat::from_query(Some("channels=-1")).is_err());
    }

    #[test]
    fn frames_are_20_ms_of_s16le() {
        assert_eq!(DEFAULT_FORMAT.frame_bytes(), 960, "the contract's example");
        let stereo48 = AudioFormat {
            sample_rate: 48000,
            channels: 2,
        };
        assert_eq!(stereo48.frame_bytes(), 3840);
        let odd = AudioFormat {
            sample_rate: 11025,
            channels: 1,
        };
        assert_eq!(odd.frame_samples(), 220);
        assert_eq!(
            DEFAULT_FORMAT.path(),
            "/ws/audio?sample_rate=24000&channels=1"
        );
    }

    #[test]
    fn messages_use_spec_shapes() {
        let started = AudioOut::Started {
            sample_rate: 24000,
            channels: 1,
        };
        assert_eq!(
            serde_json::to_string(&started).unwrap(),
            r#"{"type":"started","sample_rate":24000,"channels":1}"#
        );
        let err = AudioOut::Error {
            message: CAPTURE_FAILED.into(),
            detail: None,
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"error","message":"Failed to start audio capture"}"#
        );
        assert_eq!(
            serde_json::from_str::<AudioIn>(r#"{"type":"stop"}"#).unwrap(),
            AudioIn::Stop
        );
        assert_eq!(
            serde_json::to_string(&AudioOut::Pong).unwrap(),
            r#"{"type":"pong"}"#
        );
    }
}
