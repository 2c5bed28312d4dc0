//! The official `orgo` Python SDK, unmodified, against a real daemon on loopback TCP
//! (`--listen`), as users of the hosted service would point it with `base_api_url`.
//! Needs `tests/sdk/setup.sh` (a venv with the SDK); without it the test is skipped loudly.

mod common;

use std::path::Path;
use std::process::Command;

use common::Daemon;

#[test]
fn the_orgo_sdk_works_unmodified() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import orgo"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "SKIPPED the_orgo_sdk_works_unmodified: no orgo SDK in {} (run tests/sdk/setup.sh; it needs Python >= 3.12)",
            python.display()
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let d = Daemon::start_with_args(
        common::RELAXED,
        &["--listen".into(), format!("127.0.0.1:{port}")],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/orgo_sdk_flow.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("DESKD_BASE", format!("http://127.0.0.1:{port}/api"))
        .env("DESKD_KEY", &d.key)
        .env(
            "DESKD_HW",
            if deskd::vmm::host::cpu_has_hardware_virtualization() {
                "1"
            } else {
                "0"
            },
        )
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("all steps passed"),
        "the SDK flow failed:\n{stdout}\n{stderr}\ndaemon log:\n{}",
        d.log_text()
    );
}
