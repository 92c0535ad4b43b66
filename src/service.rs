//! Running as a systemd user service: `dreamerd service install | uninstall | status`, shell completions and the man
//! page. The unit is `systemd/dreamerd.service`, embedded, with the running binary's absolute path filled in.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::dirs::Dirs;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// The unit, as shipped in `systemd/`.
const SERVICE: &str = include_str!("../systemd/dreamerd.service");
const SOCKET: &str = include_str!("../systemd/dreamerd.socket");
const UNIT: &str = "dreamerd.service";
const SOCKET_UNIT: &str = "dreamerd.socket";

/// What `service install`, `uninstall` and `status` report.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub ok: bool,
    /// The unit file.
    pub unit: PathBuf,
    pub installed: bool,
    /// The binary the unit starts, and whether it is the one running this command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathBuf>,
    pub binary_exists: bool,
    pub current: bool,
    /// Whether a user manager (`systemd --user`) runs for this user, and the unit's state in it.
    pub manager: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Shell completion files written (install) or removed (uninstall).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub completions: Vec<PathBuf>,
    /// What was done, or what to run, in order.
    pub steps: Vec<String>,
}

/// `$XDG_CONFIG_HOME/systemd/user`.
fn units_dir(dirs: &Dirs) -> PathBuf {
    let config_home = dirs.config_file.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    config_home.join("systemd/user")
}

/// The shell completion files `install` writes, with the shell each is for.
fn completion_files(dirs: &Dirs) -> Vec<(clap_complete::Shell, &'static str, PathBuf)> {
    let data_home = dirs.data.parent().unwrap_or(Path::new("."));
    let config_home = dirs.config_file.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for bin in ["dreamerd", "dreamer"] {
        out.push((
            clap_complete::Shell::Bash,
            bin,
            data_home.join(format!("bash-completion/completions/{bin}")),
        ));
        out.push((clap_complete::Shell::Fish, bin, config_home.join(format!("fish/completions/{bin}.fish"))));
    }
    out
}

/// Whether this user's service manager runs (its private socket exists).
fn manager_runs() -> bool {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .is_some_and(|run| run.join("systemd/private").exists())
}

fn systemctl(args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "systemctl --user {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The binary an installed unit starts.
fn installed_binary(unit: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(unit).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("ExecStart="))?;
    line.strip_suffix(" daemon").map(PathBuf::from)
}

fn current_exe() -> Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(|e| Error::failed(format!("cannot find this binary: {e}"), ""))?;
    Ok(std::fs::canonicalize(&exe).unwrap_or(exe))
}

/// `service status`.
pub fn status(dirs: &Dirs) -> Result<ServiceReport> {
    let unit = units_dir(dirs).join(UNIT);
    let binary = installed_binary(&unit);
    let exe = current_exe()?;
    let manager = manager_runs();
    let mut steps = Vec::new();
    let installed = unit.is_file();
    let binary_exists = binary.as_ref().is_some_and(|b| b.is_file());
    let current = binary.as_ref() == Some(&exe);
    if !installed {
        steps.push("not installed: `dreamerd service install --now` installs and starts it".into());
    } else if !binary_exists {
        steps.push(
            "the unit starts a binary that no longer exists: `dreamerd service install` points it here"
                .into(),
        );
    } else if !current {
        steps.push(format!(
            "the unit starts {}, not this dreamerd ({}): `dreamerd service install` points it here (an upgrade)",
            binary.as_ref().map(|b| b.display().to_string()).unwrap_or_default(),
            exe.display()
        ));
    }
    let active = manager
        .then(|| systemctl(&["is-active", UNIT]).unwrap_or_else(|e| e))
        .map(|s| s.lines().last().unwrap_or("unknown").trim().to_string());
    Ok(ServiceReport {
        ok: true,
        unit,
        installed,
        binary,
        binary_exists,
        current,
        manager,
        active,
        completions: Vec::new(),
        steps,
    })
}

/// `service install [--now]`: writes the unit (and shell completions), then reloads and enables it when a user
/// manager runs; says what to run otherwise.
pub fn install(
    dirs: &Dirs,
    now: bool,
    socket: bool,
    completions: impl Fn(clap_complete::Shell, &str) -> Vec<u8>,
) -> Result<ServiceReport> {
    let exe = current_exe()?;
    let exe_text = exe.to_str().filter(|s| !s.contains(char::is_whitespace)).ok_or_else(|| {
        Error::Usage(format!("{} has spaces or is not UTF-8: systemd cannot start it as is", exe.display()))
    })?;
    let dir = units_dir(dirs);
    fsutil::create_private_dir(&dir).ctx("create", &dir)?;
    let unit = dir.join(UNIT);
    fsutil::atomic_write(&unit, SERVICE.replace("@BINARY@", exe_text).as_bytes()).ctx("write", &unit)?;
    let mut steps = vec![format!("wrote {}", unit.display())];
    let socket_unit = dir.join(SOCKET_UNIT);
    if socket {
        fsutil::atomic_write(&socket_unit, SOCKET.as_bytes()).ctx("write", &socket_unit)?;
        steps.push(format!("wrote {}", socket_unit.display()));
    }
    let enabled = if socket { SOCKET_UNIT } else { UNIT };
    let mut written = Vec::new();
    for (shell, bin, path) in completion_files(dirs) {
        if let Some(parent) = path.parent()
            && fsutil::create_private_dir(parent).is_ok()
            && fsutil::atomic_write(&path, &completions(shell, bin)).is_ok()
        {
            written.push(path);
        }
    }
    if manager_runs() {
        systemctl(&["daemon-reload"]).map_err(|e| Error::failed(e, "check `systemctl --user status`"))?;
        steps.push("systemctl --user daemon-reload".into());
        let mut enable = vec!["enable", enabled];
        if now {
            enable.insert(1, "--now");
        }
        systemctl(&enable).map_err(|e| Error::failed(e, "check `systemctl --user status dreamerd`"))?;
        steps.push(format!("systemctl --user {}", enable.join(" ")));
        if now && !socket {
            // A daemon started by a command before is replaced by the service's.
            let _ = systemctl(&["restart", UNIT]);
        }
    } else {
        steps.push(format!(
            "no user service manager runs for this session: run `systemctl --user daemon-reload && systemctl --user \
             enable --now {enabled}` in a login session"
        ));
    }
    steps.push(
        "to guard projects without a login session too (after a reboot), run `loginctl enable-linger $USER` once"
            .into(),
    );
    let mut report = status(dirs)?;
    report.completions = written;
    report.steps = steps;
    Ok(report)
}

/// `service uninstall`: stops and disables the unit when a manager runs, removes it and the completions.
pub fn uninstall(dirs: &Dirs) -> Result<ServiceReport> {
    let unit = units_dir(dirs).join(UNIT);
    let mut steps = Vec::new();
    let socket_unit = units_dir(dirs).join(SOCKET_UNIT);
    if manager_runs() && unit.exists() {
        if socket_unit.exists() {
            let _ = systemctl(&["disable", "--now", SOCKET_UNIT]);
        }
        let _ = systemctl(&["disable", "--now", UNIT]);
        steps.push(format!("systemctl --user disable --now {UNIT}"));
    }
    if socket_unit.exists() {
        std::fs::remove_file(&socket_unit).ctx("remove", &socket_unit)?;
        steps.push(format!("removed {}", socket_unit.display()));
    }
    if unit.exists() {
        std::fs::remove_file(&unit).ctx("remove", &unit)?;
        steps.push(format!("removed {}", unit.display()));
        if manager_runs() {
            let _ = systemctl(&["daemon-reload"]);
        }
    }
    let mut removed = Vec::new();
    for (_, _, path) in completion_files(dirs) {
        if std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    let mut report = status(dirs)?;
    report.completions = removed;
    report.steps = steps;
    Ok(report)
}
