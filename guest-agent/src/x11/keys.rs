//! Turns key names (`Return`, `Enter`, `ctrl+shift+t`, `é`) and text characters into keysyms.
//! Pure functions: no X connection needed, so they are unit tested here.

use super::keysym_names::KEYSYM_NAMES;

pub const XK_RETURN: u32 = 0xff0d;
pub const XK_TAB: u32 = 0xff09;
pub const XK_SHIFT_L: u32 = 0xffe1;
pub const XK_CONTROL_L: u32 = 0xffe3;
pub const XK_ALT_L: u32 = 0xffe9;
pub const XK_SUPER_L: u32 = 0xffeb;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("unknown key: {0:?} (use a keysym name like Return, Page_Up, F5, a friendly name like Enter, Esc, PageUp, or a single character)")]
    Unknown(String),
    #[error("empty key name")]
    Empty,
}

/// A parsed key combination: modifiers pressed in order, then the main key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combo {
    pub modifiers: Vec<u32>,
    pub key: u32,
}

/// Friendly names accepted in any case, mapped to keysym names.
const ALIASES: &[(&str, &str)] = &[
    ("enter", "Return"),
    ("return", "Return"),
    ("esc", "Escape"),
    ("escape", "Escape"),
    ("backspace", "BackSpace"),
    ("bksp", "BackSpace"),
    ("del", "Delete"),
    ("delete", "Delete"),
    ("ins", "Insert"),
    ("insert", "Insert"),
    ("tab", "Tab"),
    ("space", "space"),
    ("spacebar", "space"),
    ("pageup", "Page_Up"),
    ("pgup", "Page_Up"),
    ("page_up", "Page_Up"),
    ("pagedown", "Page_Down"),
    ("pgdn", "Page_Down"),
    ("page_down", "Page_Down"),
    ("home", "Home"),
    ("end", "End"),
    ("up", "Up"),
    ("down", "Down"),
    ("left", "Left"),
    ("right", "Right"),
    ("arrowup", "Up"),
    ("arrowdown", "Down"),
    ("arrowleft", "Left"),
    ("arrowright", "Right"),
    ("capslock", "Caps_Lock"),
    ("numlock", "Num_Lock"),
    ("scrolllock", "Scroll_Lock"),
    ("printscreen", "Print"),
    ("print", "Print"),
    ("prtsc", "Print"),
    ("pause", "Pause"),
    ("menu", "Menu"),
    ("plus", "plus"),
    ("minus", "minus"),
    ("ctrl", "Control_L"),
    ("control", "Control_L"),
    ("alt", "Alt_L"),
    ("option", "Alt_L"),
    ("shift", "Shift_L"),
    ("super", "Super_L"),
    ("win", "Super_L"),
    ("windows", "Super_L"),
    ("cmd", "Super_L"),
    ("command", "Super_L"),
    ("meta", "Super_L"),
];

fn modifier(name: &str) -> Option<u32> {
    match name.to_ascii_lowercase().as_str() {
        "ctrl" | "control" | "control_l" | "ctl" => Some(XK_CONTROL_L),
        "alt" | "alt_l" | "option" | "opt" => Some(XK_ALT_L),
        "shift" | "shift_l" => Some(XK_SHIFT_L),
        "super" | "super_l" | "win" | "windows" | "cmd" | "command" | "meta" => Some(XK_SUPER_L),
        _ => None,
    }
}

fn by_name(name: &str) -> Option<u32> {
    KEYSYM_NAMES
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| KEYSYM_NAMES[i].1)
}

/// Resolves one key name (no `+`) to a keysym.
pub fn keysym_for_name(name: &str) -> Result<u32, KeyError> {
    if name.is_empty() {
        return Err(KeyError::Empty);
    }
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return Ok(keysym_for_char(c));
    }
    if let Some(k) = by_name(name) {
        return Ok(k);
    }
    let lower = name.to_ascii_lowercase();
    if let Some((_, target)) = ALIASES.iter().find(|(a, _)| *a == lower) {
        if let Some(k) = by_name(target) {
            return Ok(k);
        }
    }
    // Function keys in any case: f5, F12.
    if let Some(n) = lower.strip_prefix('f').and_then(|d| d.parse::<u32>().ok()) {
        if (1..=35).contains(&n) {
            return Ok(0xffbe + n - 1);
        }
    }
    // Raw keysym numbers: 0xff0d.
    if let Some(hex) = lower.strip_prefix("0x") {
        if let Ok(v) = u32::from_str_radix(hex, 16) {
            if v != 0 {
                return Ok(v);
            }
        }
    }
    // Last resort: a unique case-insensitive keysym name (page_up, return).
    let mut found = KEYSYM_NAMES
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name));
    match (found.next(), found.next()) {
        (Some((_, k)), None) => Ok(*k),
        _ => Err(KeyError::Unknown(name.to_string())),
    }
}

/// Parses `ctrl+shift+t`, `alt+Tab`, `Return`, `ctrl++` (the plus key).
pub fn parse_combo(spec: &str) -> Result<Combo, KeyError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(KeyError::Empty);
    }
    if spec == "+" {
        return Ok(Combo {
            modifiers: vec![],
            key: keysym_for_char('+'),
        });
    }
    let (body, trailing_plus) = match spec.strip_suffix("++") {
        Some(b) => (b, true),
        None => (spec, false),
    };
    let mut parts: Vec<&str> = body.split('+').map(str::trim).collect();
    let main = if trailing_plus {
        "+".to_string()
    } else {
        let last = parts.pop().unwrap_or_default();
        if last.is_empty() {
            return Err(KeyError::Unknown(spec.to_string()));
        }
        last.to_string()
    };
    let mut modifiers = Vec::new();
    for p in parts {
        match modifier(p) {
            Some(m) => modifiers.push(m),
            None => return Err(KeyError::Unknown(p.to_string())),
        }
    }
    let key = keysym_for_name(&main)?;
    Ok(Combo { modifiers, key })
}

/// The keysym that types `c`: Latin-1 keysyms equal their code point, control characters map to
/// their keys, everything else uses the Unicode keysym range (0x01000000 + code point).
pub fn keysym_for_char(c: char) -> u32 {
    let cp = c as u32;
    match c {
        '\n' | '\r' => XK_RETURN,
        '\t' => XK_TAB,
        '\u{8}' => 0xff08,
        '\u{1b}' => 0xff1b,
        _ if (0x20..=0x7e).contains(&cp) || (0xa0..=0xff).contains(&cp) => cp,
        _ => 0x0100_0000 | cp,
    }
}

/// The character a keysym types, if it is a printable one (inverse of `keysym_for_char`).
pub fn char_for_keysym(ks: u32) -> Option<char> {
    match ks {
        XK_RETURN => Some('\n'),
        XK_TAB => Some('\t'),
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(ks),
        0x0100_0000..=0x0110_ffff => char::from_u32(ks - 0x0100_0000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_aliases_and_case() {
        assert_eq!(keysym_for_name("Return"), Ok(0xff0d));
        assert_eq!(keysym_for_name("Enter"), Ok(0xff0d));
        assert_eq!(keysym_for_name("ENTER"), Ok(0xff0d));
        assert_eq!(keysym_for_name("Esc"), Ok(0xff1b));
        assert_eq!(keysym_for_name("BackSpace"), Ok(0xff08));
        assert_eq!(keysym_for_name("backspace"), Ok(0xff08));
        assert_eq!(keysym_for_name("PageUp"), Ok(0xff55));
        assert_eq!(keysym_for_name("Page_Down"), Ok(0xff56));
        assert_eq!(keysym_for_name("F5"), Ok(0xffc2));
        assert_eq!(keysym_for_name("f12"), Ok(0xffc9));
        assert_eq!(keysym_for_name("XF86AudioMute"), Ok(0x1008ff12));
        assert_eq!(keysym_for_name("a"), Ok(0x61));
        assert_eq!(keysym_for_name("A"), Ok(0x41));
        assert_eq!(keysym_for_name("é"), Ok(0xe9));
        assert_eq!(keysym_for_name("✓"), Ok(0x0100_2713));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = keysym_for_name("Bogus_Key").unwrap_err();
        assert!(e.to_string().contains("Bogus_Key"), "{e}");
        let e = parse_combo("ctrl+nokey").unwrap_err();
        assert!(e.to_string().contains("nokey"), "{e}");
        let e = parse_combo("hyperx+a").unwrap_err();
        assert!(e.to_string().contains("hyperx"), "{e}");
    }

    #[test]
    fn combos_in_any_case() {
        let c = parse_combo("ctrl+shift+t").unwrap();
        assert_eq!(c.modifiers, vec![XK_CONTROL_L, XK_SHIFT_L]);
        assert_eq!(c.key, 't' as u32);
        let c = parse_combo("CTRL+Alt+Delete").unwrap();
        assert_eq!(c.modifiers, vec![XK_CONTROL_L, XK_ALT_L]);
        assert_eq!(c.key, 0xffff);
        let c = parse_combo("Super+e").unwrap();
        assert_eq!(c.modifiers, vec![XK_SUPER_L]);
        let c = parse_combo("ctrl++").unwrap();
        assert_eq!(c.modifiers, vec![XK_CONTROL_L]);
        assert_eq!(c.key, '+' as u32);
        assert_eq!(parse_combo("+").unwrap().key, '+' as u32);
        assert!(parse_combo("ctrl+").is_err());
        assert!(parse_combo("").is_err());
    }

    #[test]
    fn chars_round_trip() {
        for c in "héllo ✓ 世界\n\tA~".chars() {
            assert_eq!(
                char_for_keysym(keysym_for_char(c)),
                Some(if c == '\r' { '\n' } else { c })
            );
        }
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(KEYSYM_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
