//! `GET /health`: what the agent sees of the desktop session, and the readiness contract.
//!
//! # The readiness contract
//!
//! The agent answers `/health` with 200 and a [`Health`] body as soon as it runs, whatever state
//! the desktop is in. A computer is `running` (and the wait that actions do while a computer
//! boots ends) only when that body's [`Health::ready`] is true: the X server answers, a window
//! manager runs, the panel has mapped its window and drawn on it, and the desktop (icons and
//! background) has mapped its window. Until then the desktop is not usable: a screenshot shows a
//! bare background and there is nothing to click. [`DesktopParts`] says which part is missing.
//!
//! A client of `/health` deserializes [`Health`] and waits for `ready`; a body without `ready`
//! (an agent older than this contract) does not deserialize, which the client reports as such,
//! never as ready.

use serde::{Deserialize, Serialize};

/// Each part of the desktop session, true once it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DesktopParts {
    /// The X server (Xvfb) accepts a connection and answers requests.
    pub x_server: bool,
    /// A window manager runs: the `WM_S0` selection has an owner (ICCCM), or
    /// `_NET_SUPPORTING_WM_CHECK` names a live window that names itself (EWMH).
    pub window_manager: bool,
    /// A panel runs: a viewable window of `_NET_WM_WINDOW_TYPE_DOCK` (tint2) whose pixels are not
    /// all one colour (it has drawn its contents, not only been mapped).
    pub panel: bool,
    /// The desktop runs: a viewable window of `_NET_WM_WINDOW_TYPE_DESKTOP`
    /// (`pcmanfm --desktop`).
    pub desktop: bool,
}

impl DesktopParts {
    /// True when every part is up.
    pub fn all_up(&self) -> bool {
        self.missing().is_empty()
    }

    /// The parts not up yet, by field name, for messages ("window_manager, panel").
    pub fn missing(&self) -> Vec<&'static str> {
        [
            ("x_server", self.x_server),
            ("window_manager", self.window_manager),
            ("panel", self.panel),
            ("desktop", self.desktop),
        ]
        .into_iter()
        .filter(|(_, up)| !up)
        .map(|(name, _)| name)
        .collect()
    }
}

/// Answer of `GET /health` (always status 200 while the agent runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"`: the agent itself answers.
    pub status: String,
    /// The agent's version (its crate version).
    pub version: String,
    /// Whether the X display answers; the agent serves shell routes even when it does not.
    pub display: bool,
    /// Screen size in pixels, when the display answers.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Each part of the desktop session.
    pub desktop: DesktopParts,
    /// True only when every part of `desktop` is up: the readiness contract (see the module).
    pub ready: bool,
}

impl Health {
    /// The answer for this screen size (None: the display does not answer) and these parts;
    /// `display` and `ready` follow from them, so they can never disagree.
    pub fn new(version: &str, size: Option<(u32, u32)>, desktop: DesktopParts) -> Health {
        Health {
            status: "ok".into(),
            version: version.into(),
            display: size.is_some(),
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            desktop,
            ready: size.is_some() && desktop.all_up(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: DesktopParts = DesktopParts {
        x_server: true,
        window_manager: true,
        panel: true,
        desktop: true,
    };

    #[test]
    fn ready_only_when_every_part_is_up() {
        assert!(Health::new("1", Some((800, 600)), UP).ready);
        assert!(!Health::new("1", None, UP).ready);
        for missing in ["x_server", "window_manager", "panel", "desktop"] {
            let mut parts = UP;
            match missing {
                "x_server" => parts.x_server = false,
                "window_manager" => parts.window_manager = false,
                "panel" => parts.panel = false,
                _ => parts.desktop = false,
            }
            let h = Health::new("1", Some((800, 600)), parts);
            assert!(!h.ready, "{missing}");
            assert_eq!(parts.missing(), vec![missing]);
        }
        assert_eq!(DesktopParts::default().missing().len(), 4);
    }

    #[test]
    fn wire_shape() {
        let h = Health::new("0.1.0", Some((1280, 720)), UP);
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "status": "ok", "version": "0.1.0", "display": true, "width": 1280, "height": 720,
                "desktop": {"x_server": true, "window_manager": true, "panel": true, "desktop": true},
                "ready": true,
            })
        );
        assert_eq!(serde_json::from_value::<Health>(v).unwrap(), h);
        // An agent from before the contract says nothing about readiness: not taken as ready.
        let old = r#"{"status":"ok","version":"0.1.0","display":true,"width":1,"height":1}"#;
        assert!(serde_json::from_str::<Health>(old).is_err());
    }
}
