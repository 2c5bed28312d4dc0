//! `/bash`: `bash -lc COMMAND` as the desktop user.

use std::time::Duration;

use super::{run, DesktopUser, RunError, RunSpec};
use crate::protocol::BashResponse;

pub async fn bash(
    user: &DesktopUser,
    command: &str,
    timeout: Duration,
    output_cap: usize,
) -> Result<BashResponse, RunError> {
    let out = run(RunSpec {
        program: "bash".into(),
        args: vec!["-lc".into(), command.into()],
        user: user.clone(),
        extra_env: vec![],
        stdin: None,
        timeout,
        output_cap,
        result_fd: false,
    })
    .await?;
    Ok(BashResponse {
        success: !out.timed_out,
        action: "bash".into(),
        command: command.to_string(),
        output: String::from_utf8_lossy(&out.output).into_owned(),
        exit_code: out.exit_code,
        truncated: out.truncated,
        timed_out: out.timed_out,
        error: out.timed_out.then(|| {
            format!(
                "command timed out after {} s; its process group was killed",
                timeout.as_secs_f64()
            )
        }),
    })
}
