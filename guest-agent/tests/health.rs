#![cfg(feature = "agent")]
//! `/health` against a real X server: each part of the desktop session is reported on its own,
//! and `ready` (the readiness contract) holds only when all are up. First with windows this test
//! makes itself (a window manager's selection, a dock window before and after it draws, a desktop
//! window), then with the image's own session programs (openbox, tint2, pcmanfm --desktop).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{request, start_agent, xvfb, TempDir};
use deskd_agent::protocol::{paths, DesktopParts, Health};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::*;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

/// How long a session program may take to show its part (generous for a loaded CI machine).
const PART_TIMEOUT: Duration = Duration::from_secs(60);

async fn health(socket: &Path) -> Health {
    let r = request(socket, "GET", paths::HEALTH, None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "/health is not a Health ({e}): {}",
            String::from_utf8_lossy(&r.body)
        )
    })
}

/// Polls `/health` until `want` holds, or fails saying what was last seen.
async fn wait_for(socket: &Path, what: &str, want: impl Fn(&DesktopParts) -> bool) -> Health {
    let deadline = Instant::now() + PART_TIMEOUT;
    loop {
        let h = health(socket).await;
        if want(&h.desktop) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {PART_TIMEOUT:?}; last /health: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn parts(x_server: bool, window_manager: bool, panel: bool, desktop: bool) -> DesktopParts {
    DesktopParts {
        x_server,
        window_manager,
        panel,
        desktop,
    }
}

fn atom(conn: &RustConnection, name: &str) -> Atom {
    conn.intern_atom(false, name.as_bytes())
        .unwrap()
        .reply()
        .unwrap()
        .atom
}

/// A mapped top-level window of this EWMH type, filled with `pixel`.
fn typed_window(
    conn: &RustConnection,
    kind: &str,
    rect: (i16, i16, u16, u16),
    pixel: u32,
) -> Window {
    let screen = &conn.setup().roots[0];
    let w = conn.generate_id().unwrap();
    let (x, y, width, height) = rect;
    conn.create_window(
        screen.root_depth,
        w,
        screen.root,
        x,
        y,
        width,
        height,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().background_pixel(pixel),
    )
    .unwrap();
    let type_atom = atom(conn, "_NET_WM_WINDOW_TYPE");
    let value = atom(conn, kind);
    conn.change_property32(PropMode::REPLACE, w, type_atom, AtomEnum::ATOM, &[value])
        .unwrap();
    conn.map_window(w).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_part_is_reported_and_ready_needs_all() {
    let Some(x) = xvfb(640, 480) else { return };
    let agent = start_agent(&x.display).await;

    // A bare X server: only the X server is up.
    let h = health(&agent.socket).await;
    assert_eq!(h.desktop, parts(true, false, false, false));
    assert!(h.display && !h.ready);
    assert_eq!((h.width, h.height), (Some(640), Some(480)));

    let (conn, _) = RustConnection::connect(Some(&x.display)).unwrap();
    let root = conn.setup().roots[0].root;

    // A desktop window that is mapped counts; unmapped it does not.
    let desk = typed_window(
        &conn,
        "_NET_WM_WINDOW_TYPE_DESKTOP",
        (0, 0, 640, 480),
        0x3b4252,
    );
    assert_eq!(
        health(&agent.socket).await.desktop,
        parts(true, false, false, true)
    );
    conn.unmap_window(desk).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    assert!(!health(&agent.socket).await.desktop.desktop);
    conn.map_window(desk).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();

    // A dock window that has not drawn yet (one colour) is not a panel; once it draws, it is.
    let dock = typed_window(&conn, "_NET_WM_WINDOW_TYPE_DOCK", (0, 448, 640, 32), 0);
    let h = health(&agent.socket).await;
    assert_eq!(
        h.desktop,
        parts(true, false, false, true),
        "an undrawn panel"
    );
    let gc = conn.generate_id().unwrap();
    conn.create_gc(gc, dock, &CreateGCAux::new().foreground(0xeceff4))
        .unwrap();
    conn.poly_fill_rectangle(
        dock,
        gc,
        &[Rectangle {
            x: 600,
            y: 8,
            width: 30,
            height: 16,
        }],
    )
    .unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    let h = health(&agent.socket).await;
    assert_eq!(h.desktop, parts(true, false, true, true));
    assert!(!h.ready, "no window manager yet: {h:?}");

    // A window manager: the owner of the WM_S0 selection (ICCCM).
    let wm = conn.generate_id().unwrap();
    conn.create_window(
        0,
        wm,
        root,
        -1,
        -1,
        1,
        1,
        0,
        WindowClass::INPUT_ONLY,
        0,
        &CreateWindowAux::new(),
    )
    .unwrap();
    conn.set_selection_owner(wm, atom(&conn, "WM_S0"), x11rb::CURRENT_TIME)
        .unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    let h = health(&agent.socket).await;
    assert_eq!(h.desktop, parts(true, true, true, true));
    assert!(h.ready, "every part is up: {h:?}");

    // Parts go away again: the selection's owner window is destroyed, the panel unmapped.
    conn.destroy_window(wm).unwrap();
    conn.unmap_window(dock).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    let h = health(&agent.socket).await;
    assert_eq!(h.desktop, parts(true, false, false, true));
    assert!(!h.ready);

    // An EWMH check window that names itself also means a window manager runs; a stale property
    // naming a window that is gone does not.
    let check = conn.generate_id().unwrap();
    conn.create_window(
        0,
        check,
        root,
        -1,
        -1,
        1,
        1,
        0,
        WindowClass::INPUT_ONLY,
        0,
        &CreateWindowAux::new(),
    )
    .unwrap();
    let prop = atom(&conn, "_NET_SUPPORTING_WM_CHECK");
    for w in [root, check] {
        conn.change_property32(PropMode::REPLACE, w, prop, AtomEnum::WINDOW, &[check])
            .unwrap();
    }
    conn.get_input_focus().unwrap().reply().unwrap();
    assert!(health(&agent.socket).await.desktop.window_manager);
    conn.destroy_window(check).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    assert!(!health(&agent.socket).await.desktop.window_manager);

    // The X server goes away: no part is up, and the agent still answers.
    drop(conn);
    drop(x);
    let h = health(&agent.socket).await;
    assert_eq!(h.desktop, DesktopParts::default());
    assert!(!h.display && !h.ready);
}

/// A session program, killed on drop.
struct Program {
    name: &'static str,
    child: Child,
}

impl Program {
    fn start(name: &'static str, args: &[&str], display: &str, home: &Path) -> Program {
        let log = std::fs::File::create(home.join(format!("{name}.log"))).expect("log file");
        let runtime = home.join("runtime");
        std::fs::create_dir_all(&runtime).expect("runtime dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A private home and no session bus: the programs write their configuration here, not
        // in the real home, and start no D-Bus daemon that would outlive the test.
        let child = Command::new(name)
            .args(args)
            .env("DISPLAY", display)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("DBUS_SESSION_BUS_ADDRESS", "disabled:")
            .env("NO_AT_BRIDGE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Program { name, child }
    }

    /// Ends it at once (SIGKILL), as a crash would: it leaves its X resources to the server.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Still running?
    fn alive(&mut self, home: &Path) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{} exited ({other:?}); its log: {}",
                self.name,
                std::fs::read_to_string(home.join(format!("{}.log", self.name)))
                    .unwrap_or_default()
            )),
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_session_becomes_ready() {
    let missing: Vec<&str> = ["openbox", "tint2", "pcmanfm"]
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "\n*** SKIPPED the_image_session_becomes_ready: {} not installed (apt-get install -y \
             openbox tint2 pcmanfm, or tests/install-deps); this test needs the image's session \
             programs ***\n",
            missing.join(", ")
        );
        return;
    }
    let Some(x) = xvfb(1024, 768) else { return };
    let agent = start_agent(&x.display).await;
    let home = TempDir::new("session");
    assert!(!health(&agent.socket).await.ready, "a bare X server");

    // In the image's order (session, session-apps): the window manager, then panel and desktop.
    let mut wm = Program::start("openbox", &[], &x.display, &home.0);
    let h = wait_for(&agent.socket, "openbox as the window manager", |p| {
        p.window_manager
    })
    .await;
    assert!(!h.desktop.panel && !h.desktop.desktop && !h.ready, "{h:?}");

    let mut panel = Program::start("tint2", &[], &x.display, &home.0);
    let h = wait_for(&agent.socket, "tint2's panel", |p| p.panel).await;
    assert!(!h.desktop.desktop && !h.ready, "{h:?}");
    panel.alive(&home.0).unwrap();

    let mut desktop = Program::start("pcmanfm", &["--desktop"], &x.display, &home.0);
    let h = wait_for(&agent.socket, "pcmanfm's desktop", |p| p.desktop).await;
    assert!(h.ready, "every part is up: {h:?}");
    assert_eq!(h.desktop, parts(true, true, true, true));
    desktop.alive(&home.0).unwrap();

    // The window manager crashes: the desktop is no longer ready (its selection and check window
    // die with it). The server maps its windows back onto the root window, the desktop possibly
    // above the panel, hiding it; when openbox is back it restacks them and the panel redraws.
    wm.kill();
    let h = wait_for(&agent.socket, "the window manager gone", |p| {
        !p.window_manager
    })
    .await;
    assert!(!h.ready && h.desktop.desktop, "{h:?}");
    let _wm = Program::start("openbox", &[], &x.display, &home.0);
    let h = wait_for(&agent.socket, "ready again under a new openbox", |p| {
        p.all_up()
    })
    .await;
    assert!(h.ready, "{h:?}");
    panel.alive(&home.0).unwrap();
    desktop.alive(&home.0).unwrap();
}
