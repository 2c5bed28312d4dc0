//! A private PulseAudio server for tests: the image's own speaker script
//! (images/rootfs/etc/pulse/default.pa.d/deskd-speaker.pa: the null sink `speaker`, made the
//! default) plus a native-protocol socket in a temporary directory, and a tone played into it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// The image's speaker script, relative to this crate.
const SPEAKER_PA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../images/rootfs/etc/pulse/default.pa.d/deskd-speaker.pa"
);

/// A running `pulseaudio`, killed on drop.
pub struct PulseServer {
    child: Child,
    /// `unix:/...`: what `--server=` and `PULSE_SERVER` take.
    pub server: String,
    pub dir: PathBuf,
    _dir: TempDir,
}

impl Drop for PulseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(program: &str, package: &str, why: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!(
            "\n*** SKIPPED {why}: {program} is not installed (apt-get install -y {package}) ***\n"
        );
    }
    found
}

/// Starts PulseAudio as the image sets up its speaker, or returns None (printing why) when
/// PulseAudio or its tools are not installed.
pub fn pulseaudio(why: &str) -> Option<PulseServer> {
    if !installed("pulseaudio", "pulseaudio", why)
        || !installed("parec", "pulseaudio-utils", why)
        || !installed("pactl", "pulseaudio-utils", why)
        || !installed("paplay", "pulseaudio-utils", why)
    {
        return None;
    }
    let dir = TempDir::new("pulse");
    let socket = dir.0.join("native");
    let log = std::fs::File::create(dir.0.join("pulseaudio.log")).expect("log file");
    // Its own HOME and runtime directory: nothing is shared with a desktop session on this
    // machine. -n: no default script, only the image's speaker, the socket and suspend-on-idle.
    let child = Command::new("pulseaudio")
        .args([
            "--daemonize=no",
            "--exit-idle-time=-1",
            "-n",
            "--use-pid-file=no",
        ])
        .args(["--disable-shm=yes", "--log-target=stderr", "-F", SPEAKER_PA])
        // As Debian's default.pa loads it in the image: an idle speaker is suspended.
        .arg("--load=module-suspend-on-idle")
        .arg(format!(
            "--load=module-native-protocol-unix socket={} auth-anonymous=1",
            socket.display()
        ))
        .env("HOME", &dir.0)
        .env("XDG_RUNTIME_DIR", &dir.0)
        .env_remove("PULSE_SERVER")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn pulseaudio");
    let p = PulseServer {
        child,
        server: format!("unix:{}", socket.display()),
        dir: dir.0.clone(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = Command::new("pactl")
            .arg(format!("--server={}", p.server))
            .args(["list", "short", "sinks"])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains("speaker")
            });
        if up {
            return Some(p);
        }
        assert!(
            Instant::now() < deadline,
            "pulseaudio did not come up with the speaker sink: {}",
            std::fs::read_to_string(p.dir.join("pulseaudio.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WAV file of `secs` seconds of a `hz` sine at 48 kHz mono, at half full scale.
pub fn tone_wav(path: &Path, hz: f64, secs: f64) {
    let rate = 48_000u32;
    let n = (f64::from(rate) * secs) as u32;
    let mut b = Vec::with_capacity(44 + n as usize * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + n * 2).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(n * 2).to_le_bytes());
    for i in 0..n {
        let v = (std::f64::consts::TAU * hz * f64::from(i) / f64::from(rate)).sin() * 16000.0;
        b.extend_from_slice(&(v as i16).to_le_bytes());
    }
    std::fs::write(path, b).expect("write the tone");
}

/// `paplay` of `wav` into the speaker, killed on drop.
pub struct Playing(Child);

impl Drop for Playing {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl PulseServer {
    /// Plays `wav` into the `speaker` sink.
    pub fn play(&self, wav: &Path) -> Playing {
        Playing(
            Command::new("paplay")
                .arg(format!("--server={}", self.server))
                .arg("--device=speaker")
                .arg(wav)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn paplay"),
        )
    }
}
