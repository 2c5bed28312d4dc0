//! Long-running helpers the agent supervises (`parec` for audio, `ffmpeg` for RTMP) end with the
//! agent: the unit's `KillMode=process` leaves the user's programs running over an agent restart,
//! but a helper left behind would stream on with nobody to stop it or report on it.

/// Makes the child of `cmd` get SIGTERM when the agent's thread that spawned it ends (the kernel's
/// parent-death signal; tokio's worker threads live as long as the agent), besides tokio's
/// kill on drop for the orderly cases.
pub fn die_with_agent(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    // SAFETY: the closure runs in the child between fork and exec and only makes one prctl system
    // call, which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    cmd.kill_on_drop(true)
}
