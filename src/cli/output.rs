//! Human output: the `ls` table, the `show` summary, and writing to stdout (a closed pipe, as in
//! `deskd ls | head -1`, ends the output quietly instead of panicking).

use std::io::Write;

use serde_json::Value;

use super::error::CliError;

/// A field as text: strings bare, `null` or absent as `-`, anything else as JSON.
pub fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The `ls` table: one line per computer, columns padded to their widest cell.
pub fn table(computers: &[Value]) -> String {
    let header = ["ID", "NAME", "WORKSPACE", "STATUS", "CPU", "RAM", "DISK"];
    let mut rows = vec![header.map(String::from).to_vec()];
    for c in computers {
        rows.push(vec![
            text(c, "id"),
            text(c, "name"),
            text(c, "project_name"),
            text(c, "status"),
            text(c, "cpu"),
            format!("{} GB", text(c, "ram")),
            format!("{} GB", text(c, "disk_size_gb")),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The `show` summary: the fields an operator looks at (`--json` has them all).
pub fn summary(c: &Value) -> String {
    let mut status = text(c, "status");
    if let Some(reason) = c.get("status_reason").and_then(Value::as_str) {
        status.push_str(": ");
        status.push_str(reason);
    }
    let auto_stop = match c.get("auto_stop_minutes").and_then(Value::as_u64) {
        None | Some(0) => "off".to_string(),
        Some(n) => format!("after {n} idle minutes"),
    };
    let lines = [
        ("id", text(c, "id")),
        ("name", text(c, "name")),
        (
            "workspace",
            format!("{} ({})", text(c, "project_name"), text(c, "workspace_id")),
        ),
        ("status", status),
        ("cpu", text(c, "cpu")),
        ("ram", format!("{} GB", text(c, "ram"))),
        ("disk", format!("{} GB", text(c, "disk_size_gb"))),
        ("resolution", text(c, "resolution")),
        ("template", text(c, "template_ref")),
        ("instance_id", text(c, "instance_id")),
        ("url", text(c, "url")),
        ("vnc", text(c, "connection_url")),
        ("auto_stop", auto_stop),
        ("created_at", text(c, "created_at")),
    ];
    lines
        .iter()
        .map(|(k, v)| format!("{k:<12} {v}\n"))
        .collect()
}

/// Writes `bytes` to stdout.
pub fn stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Failed(format!("cannot write to stdout: {e}"))),
    }
}

/// Prints a JSON value, pretty, with a final newline.
pub fn json(v: &Value) -> Result<(), CliError> {
    let mut s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Failed(format!("cannot print the daemon's JSON: {e}")))?;
    s.push('\n');
    stdout(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_pads_columns_to_the_widest_cell() {
        let t = table(&[
            json!({"id": "a", "name": "long-name", "project_name": "w", "status": "error",
                   "cpu": 1, "ram": 4, "disk_size_gb": 8}),
            json!({"id": "bb", "name": "x", "project_name": "w", "status": "running",
                   "cpu": 16, "ram": 64, "disk_size_gb": 100}),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "ID  NAME       WORKSPACE  STATUS   CPU  RAM    DISK"
        );
        assert_eq!(
            lines[1],
            "a   long-name  w          error    1    4 GB   8 GB"
        );
        assert_eq!(
            lines[2],
            "bb  x          w          running  16   64 GB  100 GB"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(table(&[]), "ID  NAME  WORKSPACE  STATUS  CPU  RAM  DISK\n");
    }

    #[test]
    fn the_summary_shows_why_a_computer_is_in_error() {
        let s = summary(
            &json!({"id": "i", "status": "error", "status_reason": "no KVM",
                                "auto_stop_minutes": null, "vnc_password": "secret"}),
        );
        assert!(s.contains("status       error: no KVM\n"), "{s}");
        assert!(s.contains("auto_stop    off\n"), "{s}");
        assert!(
            !s.contains("secret"),
            "the VNC password stays out of the summary: {s}"
        );
    }
}
