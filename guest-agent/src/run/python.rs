//! `/exec`: Python 3 code as the desktop user. A small wrapper runs the code and reports the
//! outcome as JSON on fd 3, so printed output and the error report never mix.

use std::time::Duration;

use serde::Deserialize;

use super::{run, DesktopUser, RunError, RunSpec};
use crate::protocol::ExecResponse;

/// Reads the code from stdin, runs it as `__main__`, and writes `{"ok", "error", "error_type"}`
/// to fd 3. `-u` keeps stdout unbuffered so prints and tracebacks stay in order.
const WRAPPER: &str = r#"
import sys, os, json
src = sys.stdin.read()
sys.stdin = open(os.devnull)
report = os.fdopen(3, "w")
result = {"ok": True}
try:
    code = compile(src, "<exec>", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as e:
    if e.code not in (None, 0):
        result = {"ok": False, "error": "SystemExit: %s" % (e.code,), "error_type": "SystemExit"}
except BaseException as e:
    result = {"ok": False, "error": str(e), "error_type": type(e).__name__}
try:
    sys.stdout.flush()
    sys.stderr.flush()
except Exception:
    pass
report.write(json.dumps(result))
report.close()
"#;

#[derive(Deserialize)]
struct Report {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_type: Option<String>,
}

pub async fn exec(
    user: &DesktopUser,
    code: &str,
    timeout: Duration,
    output_cap: usize,
) -> Result<ExecResponse, RunError> {
    let out = run(RunSpec {
        program: "python3".into(),
        args: vec!["-u".into(), "-c".into(), WRAPPER.into()],
        user: user.clone(),
        extra_env: vec![("PYTHONIOENCODING".into(), "utf-8".into())],
        stdin: Some(code.as_bytes().to_vec()),
        timeout,
        output_cap,
        result_fd: true,
    })
    .await?;
    let output = String::from_utf8_lossy(&out.output).into_owned();
    if out.timed_out {
        return Ok(ExecResponse {
            output,
            success: false,
            action: "exec".into(),
            timeout: true,
            error: Some(format!(
                "execution timed out after {} s",
                timeout.as_secs_f64()
            )),
            error_type: Some("TimeoutError".into()),
            truncated: out.truncated,
        });
    }
    let (success, error, error_type) = match serde_json::from_slice::<Report>(&out.result) {
        Ok(r) => (r.ok, r.error, r.error_type),
        // No report: the interpreter died before finishing (os._exit, a signal, a crash).
        Err(_) => (
            false,
            Some(format!(
                "python3 ended without a result (exit code {})",
                out.exit_code
            )),
            Some("ProcessExit".to_string()),
        ),
    };
    Ok(ExecResponse {
        output,
        success,
        action: "exec".into(),
        timeout: false,
        error,
        error_type,
        truncated: out.truncated,
    })
}
