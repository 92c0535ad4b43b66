//! Test-only fault points: at a named point, a debug build kills itself with SIGKILL (as `kill -9` or a power cut
//! would, nothing flushed or cleaned) when the file named by `DREAMERD_FAULT_FILE` holds that name. The file is
//! removed first, so the next start runs through. Release builds compile this to nothing: the variable is ignored.

/// A point where the process may be killed in tests (see the module).
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    {
        let Some(file) = std::env::var_os("DREAMERD_FAULT_FILE") else { return };
        let Ok(wanted) = std::fs::read_to_string(&file) else { return };
        if wanted.trim() == name && std::fs::remove_file(&file).is_ok() {
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
