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

/// The strict sandbox's drop-in, beside the unit.
const STRICT_DROPIN: &str = "dreamerd.service.d/strict.conf";
/// The strict sandbox's options without which it is not offered: a user namespace (which user units need for any
/// of the others), no capabilities in it, and the file system read-only but for the paths dreamerd writes.
const STRICT_BASE: &[&str] =
    &["PrivateUsers=yes", "CapabilityBoundingSet=", "ProtectSystem=strict", "ProtectHome=read-only"];
/// The options added where the probe shows they work here (some kernels or containers refuse one or another).
/// Never `ProcSubset=pid` (node reads /proc/meminfo) nor `MemoryDenyWriteExecute=` (node's JIT).
const STRICT_EXTRA: &[&str] = &[
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "PrivateMounts=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
];

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
    /// The strict sandbox's drop-in, when installed (`service install --strict`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<Strict>,
    /// What was done, or what to run, in order.
    pub steps: Vec<String>,
}

/// The strict sandbox as installed: its drop-in, the options the probe kept, those it left out, and the paths
/// dreamerd (and the drizzle-kit it runs) may write.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Strict {
    pub dropin: PathBuf,
    pub options: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    pub writable: Vec<PathBuf>,
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

pub(crate) fn systemctl(args: &[&str]) -> std::result::Result<String, String> {
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
        strict: read_strict(dirs),
        steps,
    })
}

/// `service install [--now] [--socket] [--strict]`: writes the unit (and shell completions), then reloads and
/// enables it when a user manager runs; says what to run otherwise. `--strict` first probes the strict sandbox under
/// the user manager and refuses, changing nothing, where it does not work.
pub fn install(
    dirs: &Dirs,
    options: &InstallOptions,
    completions: impl Fn(clap_complete::Shell, &str) -> Vec<u8>,
) -> Result<ServiceReport> {
    let InstallOptions { now, socket, strict } = *options;
    let exe = current_exe()?;
    let exe_text = exe.to_str().filter(|s| !s.contains(char::is_whitespace)).ok_or_else(|| {
        Error::Usage(format!("{} has spaces or is not UTF-8: systemd cannot start it as is", exe.display()))
    })?;
    let dir = units_dir(dirs);
    // The sandbox is probed before anything is written: a refusal leaves everything as it was.
    let sandbox = if strict {
        if !manager_runs() {
            return Err(Error::Usage(
                "--strict probes the sandbox under your user service manager, and none runs in this session: run \
                 it in a login session (or install without --strict)"
                    .into(),
            ));
        }
        // dreamerd's own folders are made first: the probe writes in them as the daemon will.
        for dir in own_dirs(dirs) {
            fsutil::create_private_dir(&dir).ctx("create", &dir)?;
        }
        let writable = strict_paths(dirs, &[], &[])?;
        Some(probe_strict(&exe, &writable)?)
    } else {
        None
    };
    fsutil::create_private_dir(&dir).ctx("create", &dir)?;
    let unit = dir.join(UNIT);
    fsutil::atomic_write(&unit, SERVICE.replace("@BINARY@", exe_text).as_bytes()).ctx("write", &unit)?;
    let mut steps = vec![format!("wrote {}", unit.display())];
    let dropin = dir.join(STRICT_DROPIN);
    match &sandbox {
        Some(sandbox) => {
            write_strict(dirs, &dropin, sandbox)?;
            steps.push(format!(
                "wrote {} (the strict sandbox: {})",
                dropin.display(),
                sandbox.options.join(" ")
            ));
            if !sandbox.left_out.is_empty() {
                steps.push(format!(
                    "left out of the sandbox, as the probe showed they do not work here: {}",
                    sandbox.left_out.join(" ")
                ));
            }
        }
        None if dropin.exists() => {
            std::fs::remove_file(&dropin).ctx("remove", &dropin)?;
            let _ = std::fs::remove_dir(dropin.parent().expect("in a folder"));
            steps.push(format!("removed {} (the strict sandbox)", dropin.display()));
        }
        None => {}
    }
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
        if now && (!socket || sandbox.is_some()) {
            // A daemon started by a command before is replaced by the service's; a sandbox applies from a start.
            let _ = systemctl(&["restart", UNIT]);
        }
        if sandbox.is_none() && probe_strict(&exe, &strict_paths(dirs, &[], &[])?).is_ok() {
            steps.push(
                "the strict sandbox works here: `dreamerd service install --strict` confines the service further \
                 (README: Running as a user service)"
                    .into(),
            );
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

/// `service install`'s switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstallOptions {
    pub now: bool,
    pub socket: bool,
    pub strict: bool,
}

/// The paths the strict sandbox leaves writable: dreamerd's state, data, cache and runtime folders, the configured
/// local store, `/tmp` where a project or database lives under it (then without `PrivateTmp=`), every watched project
/// (the watch list), the `extra` roots, and the folders of `databases` outside their projects. Sorted, without a
/// path under another.
pub fn strict_paths(dirs: &Dirs, extra: &[PathBuf], databases: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut paths = own_dirs(dirs);
    paths.extend(watched_roots(dirs));
    paths.extend(extra.iter().cloned());
    for db in databases {
        if let Some(parent) = db.parent() {
            paths.push(parent.to_path_buf());
        }
    }
    if paths.iter().any(|p| p.starts_with("/tmp") || p.starts_with("/var/tmp")) {
        paths.push("/tmp".into());
        paths.push("/var/tmp".into());
    }
    paths.sort();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.iter().any(|kept| p.starts_with(kept)) {
            out.push(p);
        }
    }
    Ok(out)
}

/// dreamerd's own folders: state, data, cache, runtime, and the configured local store.
fn own_dirs(dirs: &Dirs) -> Vec<PathBuf> {
    let mut own =
        vec![dirs.state.clone(), dirs.data.clone(), dirs.cache.clone(), crate::ipc::runtime_dir(dirs)];
    if let Ok((config, _)) = crate::config::Config::load(None, dirs)
        && let crate::config::StoreLocation::Local(store) = config.store_location(dirs)
    {
        own.push(store);
    }
    own
}

/// The roots in the daemon's watch list (`state/watchlist.json`), as far as it can be read.
fn watched_roots(dirs: &Dirs) -> Vec<PathBuf> {
    let path = dirs.state.join("watchlist.json");
    let Ok(Some(bytes)) = crate::safefs::read_file(&path, 16 << 20, false) else { return Vec::new() };
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    value["projects"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(PathBuf::from)).collect()
}

/// A path as one `ReadWritePaths=` word: quoted, `%` doubled (systemd's specifiers), `-` so a folder that does not
/// exist yet is no error.
fn unit_path(path: &Path) -> Result<String> {
    let text = path.to_str().filter(|t| !t.contains(['\n', '\r'])).ok_or_else(|| {
        Error::Usage(format!(
            "{} is not UTF-8 or has a line break: a unit file cannot name it",
            path.display()
        ))
    })?;
    Ok(format!("\"-{}\"", text.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%")))
}

fn strict_properties(options: &[String], writable: &[PathBuf]) -> Result<Vec<String>> {
    let private_tmp = !writable.iter().any(|p| p == Path::new("/tmp"));
    let mut props: Vec<String> =
        options.iter().filter(|o| private_tmp || o.as_str() != "PrivateTmp=yes").cloned().collect();
    for path in writable {
        props.push(format!("ReadWritePaths={}", unit_path(path)?));
    }
    Ok(props)
}

/// Runs `binary service probe` as a `Type=notify` service under the user manager with `options` and `writable`
/// (`systemd-run --user --wait`): it must start, write in the state folder and reach READY=1 as the daemon would.
/// `Err` says how it failed.
fn probe(binary: &Path, options: &[String], writable: &[PathBuf]) -> std::result::Result<(), String> {
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "dreamerd-probe-{}-{}.service",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut cmd = Command::new("systemd-run");
    cmd.args(["--user", "--wait", "--quiet", "-p", "Type=notify", "-p", "TimeoutStartSec=30"]);
    cmd.arg(format!("--unit={name}"));
    for (key, var) in [
        ("XDG_CONFIG_HOME", "XDG_CONFIG_HOME"),
        ("XDG_STATE_HOME", "XDG_STATE_HOME"),
        ("XDG_DATA_HOME", "XDG_DATA_HOME"),
    ] {
        if let Some(value) = std::env::var_os(var).and_then(|v| v.into_string().ok()) {
            cmd.arg(format!("--setenv={key}={value}"));
        }
    }
    for prop in strict_properties(options, writable).map_err(|e| e.to_string())? {
        cmd.arg("-p").arg(prop);
    }
    cmd.arg(binary).args(["service", "probe"]);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run systemd-run: {e}"))?;
    // The failed unit stays until it is looked at: how it ended says why.
    let ended =
        systemctl(&["show", "-p", "Result", "-p", "ExecMainStatus", "--value", &name]).unwrap_or_default();
    let _ = systemctl(&["reset-failed", &name]);
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let mut lines = ended.lines();
    let result = lines.next().unwrap_or("").to_string();
    let code: i32 = lines.next().and_then(|c| c.trim().parse().ok()).unwrap_or(-1);
    if result == "protocol" {
        return Err("it started but its READY=1 never reached the manager (result: protocol)".into());
    }
    // systemd's exit codes for a unit that could not be set up (systemd.exec(5), "Process Exit Codes").
    let why = match code {
        226 => {
            "226/NAMESPACE: the namespaces could not be set up (user namespaces blocked, by AppArmor or a sysctl?)"
        }
        218 => "218/CAPABILITIES: the capabilities could not be dropped",
        228 => "228/SECCOMP",
        _ => "",
    };
    Err(format!("{result}, exit status {code} {why} {said}").trim().to_string())
}

/// `service probe`, inside the sandbox being probed: writes in the state folder, then says READY=1 (some options
/// keep a service's notifications from reaching the manager on some hosts).
pub fn probe_here(dirs: &Dirs) -> Result<()> {
    let file = dirs.state.join(format!(".probe-{}", std::process::id()));
    fsutil::atomic_write(&file, b"probe").ctx("write", &file)?;
    std::fs::remove_file(&file).ctx("remove", &file)?;
    sd_notify::notify(&[sd_notify::NotifyState::Ready])
        .map_err(|e| Error::failed(format!("cannot notify the service manager: {e}"), ""))?;
    // The manager reads the notification before it sees the process exit.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(())
}

/// Probes the strict sandbox: its base must work; each extra option is kept where it works too.
fn probe_strict(binary: &Path, writable: &[PathBuf]) -> Result<Strict> {
    let base: Vec<String> = STRICT_BASE.iter().map(|s| s.to_string()).collect();
    probe(binary, &base, writable).map_err(|why| {
        Error::failed(
            format!("the strict sandbox does not work under this user manager ({why}); nothing was changed"),
            "install without --strict: the default unit needs no user namespaces",
        )
    })?;
    let all: Vec<String> = base.iter().cloned().chain(STRICT_EXTRA.iter().map(|s| s.to_string())).collect();
    let (options, left_out) = if probe(binary, &all, writable).is_ok() {
        (all, Vec::new())
    } else {
        let mut options = base.clone();
        let mut left_out = Vec::new();
        for extra in STRICT_EXTRA {
            let mut trial = base.clone();
            trial.push(extra.to_string());
            if probe(binary, &trial, writable).is_ok() {
                options.push(extra.to_string());
            } else {
                left_out.push(extra.to_string());
            }
        }
        (options, left_out)
    };
    Ok(Strict { dropin: PathBuf::new(), options, left_out, writable: writable.to_vec() })
}

fn write_strict(dirs: &Dirs, dropin: &Path, strict: &Strict) -> Result<()> {
    // A folder missing when the service starts would stay read-only (its parent is): dreamerd's own are made now.
    for dir in own_dirs(dirs) {
        fsutil::create_private_dir(&dir).ctx("create", &dir)?;
    }
    let mut text = String::from(
        "# The strict sandbox, written by `dreamerd service install --strict` with the options its probe showed to\n\
         # work under this user manager. dreamerd rewrites the ReadWritePaths= lines when a project outside them is\n\
         # watched or pushed (and restarts the service once running operations finish); `dreamerd service install`\n\
         # without --strict removes this file.\n",
    );
    if !strict.left_out.is_empty() {
        text += &format!(
            "# Left out, as the probe showed they do not work here: {}\n",
            strict.left_out.join(" ")
        );
    }
    text += "[Service]\n";
    for prop in strict_properties(&strict.options, &strict.writable)? {
        text += &prop;
        text += "\n";
    }
    let dir = dropin.parent().expect("in a folder");
    fsutil::create_private_dir(dir).ctx("create", dir)?;
    fsutil::atomic_write(dropin, text.as_bytes()).ctx("write", dropin)
}

/// Whether the strict sandbox's drop-in is installed.
pub fn strict_installed(dirs: &Dirs) -> bool {
    units_dir(dirs).join(STRICT_DROPIN).is_file()
}

/// The strict sandbox as its drop-in says, if installed.
fn read_strict(dirs: &Dirs) -> Option<Strict> {
    let dropin = units_dir(dirs).join(STRICT_DROPIN);
    let text = std::fs::read_to_string(&dropin).ok()?;
    let mut strict = Strict { dropin, ..Strict::default() };
    for line in text.lines() {
        if let Some(word) = line.strip_prefix("ReadWritePaths=") {
            let inner = word.trim_matches('"').trim_start_matches('-');
            let path = inner.replace("%%", "%").replace("\\\"", "\"").replace("\\\\", "\\");
            strict.writable.push(PathBuf::from(path));
        } else if let Some(left) =
            line.strip_prefix("# Left out, as the probe showed they do not work here: ")
        {
            strict.left_out = left.split_whitespace().map(String::from).collect();
        } else if line.contains('=') && !line.starts_with('#') {
            strict.options.push(line.to_string());
        }
    }
    if !strict.options.iter().any(|o| o == "PrivateTmp=yes")
        && strict.writable.iter().any(|p| p == Path::new("/tmp"))
    {
        // PrivateTmp= was dropped for /tmp's sake: it comes back when /tmp no longer needs to be writable.
        if STRICT_EXTRA.contains(&"PrivateTmp=yes") && !strict.left_out.iter().any(|o| o == "PrivateTmp=yes")
        {
            strict.options.push("PrivateTmp=yes".into());
        }
    }
    Some(strict)
}

/// Under the strict sandbox: makes sure `root` and `databases` are writable in it. When they are not, rewrites the
/// drop-in with the paths it had and those needed now, and reloads the manager; returns the paths added (the
/// service then needs a restart, once its running operations finish). `None` without the strict sandbox or when nothing changes.
pub fn strict_widen(dirs: &Dirs, root: &Path, databases: &[PathBuf]) -> Result<Option<Vec<PathBuf>>> {
    let Some(mut strict) = read_strict(dirs) else { return Ok(None) };
    let covered = |p: &Path| strict.writable.iter().any(|w| p.starts_with(w));
    let needs: Vec<&Path> =
        std::iter::once(root).chain(databases.iter().filter_map(|d| d.parent())).collect();
    if needs.iter().all(|p| covered(p)) {
        return Ok(None);
    }
    // Never narrowed here (a project unwatched meanwhile keeps its paths until `service install --strict` again), so
    // the paths of other projects' databases are kept without reading them again.
    let mut extra = strict.writable.clone();
    extra.push(root.to_path_buf());
    let writable = strict_paths(dirs, &extra, databases)?;
    let added: Vec<PathBuf> = writable.iter().filter(|p| !covered(p)).cloned().collect();
    strict.writable = writable;
    write_strict(dirs, &strict.dropin, &strict)?;
    if manager_runs() {
        systemctl(&["daemon-reload"]).map_err(|e| Error::failed(e, "check `systemctl --user status`"))?;
    }
    Ok(Some(added))
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
    let dropin = units_dir(dirs).join(STRICT_DROPIN);
    if dropin.exists() {
        std::fs::remove_file(&dropin).ctx("remove", &dropin)?;
        let _ = std::fs::remove_dir(dropin.parent().expect("in a folder"));
        steps.push(format!("removed {}", dropin.display()));
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
