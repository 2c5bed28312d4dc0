#![cfg(feature = "agent")]
//! bash and exec through the agent: exit codes, order, timeouts, caps, Python exceptions.

mod common;

use std::time::{Duration, Instant};

use common::{post, request, start_agent, start_agent_with, xvfb};

async fn bash(sock: &std::path::Path, cmd: &str, timeout: Option<f64>) -> serde_json::Value {
    let mut body = serde_json::json!({ "command": cmd });
    if let Some(t) = timeout {
        body["timeout"] = t.into();
    }
    let r = post(sock, "/bash", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_exit_codes_environment_and_order() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    let j = bash(&agent.socket, "exit 7", None).await;
    assert_eq!(
        (j["success"].as_bool(), j["exit_code"].as_i64()),
        (Some(true), Some(7))
    );
    assert_eq!(j["action"], "bash");
    assert_eq!(j["command"], "exit 7");
    assert_eq!(bash(&agent.socket, "true", None).await["exit_code"], 0);
    assert_eq!(
        bash(&agent.socket, "kill -TERM $$", None).await["exit_code"],
        128 + 15
    );

    let j = bash(
        &agent.socket,
        "echo one; echo two >&2; echo three; echo four >&2",
        None,
    )
    .await;
    assert_eq!(j["output"], "one\ntwo\nthree\nfour\n");

    let j = bash(&agent.socket, "pwd; echo $DISPLAY; echo $HOME", None).await;
    let home = agent.home.to_string_lossy().to_string();
    assert_eq!(j["output"], format!("{home}\n{}\n{home}\n", agent.display));

    let j = bash(
        &agent.socket,
        "printf 'h\\xc3\\xa9llo \\xe2\\x9c\\x93'",
        None,
    )
    .await;
    assert_eq!(j["output"], "héllo ✓");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_timeout_kills_the_whole_process_group() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    let marker = agent.home.join("child.pid");
    let cmd = format!(
        "sleep 300 & echo $! > {}; echo started; wait",
        marker.display()
    );
    let t0 = Instant::now();
    let j = bash(&agent.socket, &cmd, Some(1.0)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(j["timed_out"], true);
    assert_eq!(j["success"], false);
    assert_eq!(j["output"], "started\n");
    assert!(j["error"].as_str().unwrap().contains("timed out"));
    let pid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background child must be gone too (allow a moment for the kernel to reap it).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "child {pid} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_output_is_capped_with_a_flag() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent_with(&x.display, |c| c.output_cap = 1000).await;
    let j = bash(
        &agent.socket,
        "head -c 5000000 /dev/zero | tr '\\0' a; echo; exit 3",
        None,
    )
    .await;
    assert_eq!(j["truncated"], true);
    assert_eq!(j["output"].as_str().unwrap().len(), 1000);
    assert_eq!(j["exit_code"], 3, "the command still runs to its end");
    let j = bash(&agent.socket, "echo small", None).await;
    assert_eq!(j["truncated"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_and_input_work_during_a_long_bash() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    let sock = agent.socket.clone();
    let long = tokio::spawn(async move { bash(&sock, "sleep 8; echo done", None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(
            request(&agent.socket, "GET", "/screenshot", None)
                .await
                .status,
            200
        );
        assert_eq!(
            post(&agent.socket, "/click", r#"{"x":5,"y":5}"#)
                .await
                .status,
            200
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "blocked behind bash: {:?}",
        t0.elapsed()
    );
    assert!(!long.is_finished());
    assert_eq!(long.await.unwrap()["output"], "done\n");
}

async fn exec(sock: &std::path::Path, code: &str, timeout: Option<f64>) -> serde_json::Value {
    let mut body = serde_json::json!({ "code": code });
    if let Some(t) = timeout {
        body["timeout"] = t.into();
    }
    let r = post(sock, "/exec", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_exec_output_errors_and_timeout() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    let j = exec(
        &agent.socket,
        "import sys\nprint('hi', 6*7)\nprint('err', file=sys.stderr)\nprint('✓')",
        None,
    )
    .await;
    assert_eq!(j["success"], true);
    assert_eq!(j["timeout"], false);
    assert_eq!(j["action"], "exec");
    assert_eq!(j["output"], "hi 42\nerr\n✓\n");
    assert!(j.get("error").is_none());

    let j = exec(&agent.socket, "print('before')\nundefined_name", None).await;
    assert_eq!(j["success"], false);
    assert_eq!(j["output"], "before\n");
    assert_eq!(j["error_type"], "NameError");
    assert!(j["error"].as_str().unwrap().contains("undefined_name"));

    let j = exec(
        &agent.socket,
        "class MyProblem(Exception): pass\nraise MyProblem('custom text')",
        None,
    )
    .await;
    assert_eq!(j["error_type"], "MyProblem");
    assert_eq!(j["error"], "custom text");

    let j = exec(&agent.socket, "def f(:\n  pass", None).await;
    assert_eq!(j["error_type"], "SyntaxError");

    let t0 = Instant::now();
    let j = exec(
        &agent.socket,
        "import time\nprint('start', flush=True)\ntime.sleep(100)",
        Some(5.0),
    )
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(j["timeout"], true);
    assert_eq!(j["success"], false);
    assert_eq!(j["output"], "start\n");
}

/// As root (the agent in the guest), commands run as the configured desktop user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_and_exec_run_as_the_desktop_user() {
    if !nix::unistd::Uid::current().is_root() {
        eprintln!(
            "\n*** SKIPPED bash_and_exec_run_as_the_desktop_user: needs root to switch users ***\n"
        );
        return;
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        eprintln!("\n*** SKIPPED bash_and_exec_run_as_the_desktop_user: no user `nobody` ***\n");
        return;
    };
    let Some(x) = xvfb(320, 240) else { return };
    let home = common::TempDir::new("nobody-home");
    std::fs::set_permissions(&home.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let home_path = home.0.clone();
    let agent = start_agent_with(&x.display, |c| {
        c.user = Some("nobody".into());
        c.home = Some(home_path);
    })
    .await;
    let j = bash(&agent.socket, "id -u; echo $USER; pwd", None).await;
    assert_eq!(
        j["output"],
        format!("{}\nnobody\n{}\n", nobody.uid, home.0.display())
    );
    let j = exec(&agent.socket, "import os\nprint(os.getuid())", None).await;
    assert_eq!(j["output"], format!("{}\n", nobody.uid));
}
