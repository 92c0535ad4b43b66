//! The command line of both binaries: argument parsing, output (human or `--json`) and exit codes.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, Settings};
use crate::daemon;
use crate::dirs::Dirs;
use crate::engine::{
    Engine, ProjectState, ProjectStatus, PruneReport, PushReport, Relation, RestoreReport, Source, Via,
};
use crate::error::{Error, Result};
use crate::ipc::{self, Client, Reply, Request};
use crate::logging;
use crate::manifest::escaped;
use crate::project::Project;

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Dreamerd,
    Dreamer,
}

/// Options every command takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct Global {
    /// Print one JSON document on stdout instead of human text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Read the configuration from FILE (default: $DREAMERD_CONFIG, then $XDG_CONFIG_HOME/dreamerd/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Never start a daemon; fail with exit 3 if none runs.
    #[arg(long, global = true)]
    pub no_spawn: bool,
    /// Say more: which files the settings came from, and debug logs (on stderr; the daemon's log).
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Say less: only errors from a command; warnings and errors from the daemon.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The drizzle config to use (default: the project root's drizzle.config.*, or the default the project file
    /// names). Several configs in one repository are several guarded projects.
    #[arg(long, global = true, value_name = "PATH")]
    pub drizzle_config: Option<PathBuf>,
}

impl Global {
    pub fn verbosity(&self) -> logging::Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => logging::Verbosity::Quiet,
            (_, true) => logging::Verbosity::Verbose,
            _ => logging::Verbosity::Normal,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "dreamerd",
    version,
    about = "Guards drizzle/ migration folders: detects hand edits, makes push and restore safe"
)]
struct DreamerdCli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: DreamerdCommand,
}

#[derive(Debug, Subcommand)]
enum DreamerdCommand {
    /// Run the daemon in the foreground (what the systemd unit starts).
    Daemon(DaemonArgs),
    /// State of one project, or of every watched project (from the daemon).
    Status(StatusArgs),
    /// Verify drizzle/ against the last successful push, in-process (CI, git hooks). Exit 1 on violations.
    Check(CheckArgs),
    /// Add a project to the daemon's watch list (it persists across restarts).
    Watch(RequiredDir),
    /// Remove a project from the daemon's watch list.
    Unwatch(RequiredDir),
    /// Run drizzle-kit generate and migrate, then back up drizzle/. Rolls back on any failure.
    Push(PushArgs),
    /// Upgrade snapshots of an outdated version with drizzle-kit's `up`, recorded as a push; with drizzle-kit 1.0
    /// installed, convert a 0.x journal to 1.0's layout, guarded (folder and database backed up, every migration's
    /// SQL kept, the migrations table upgraded by migrate), rolled back on any failure.
    Up(UpArgs),
    /// Put drizzle/ back to the last successful push (or --push ID), keeping what it replaces.
    Restore(RestoreArgs),
    /// After git merged two branches that each pushed: put drizzle/ back to this checkout's last push (the branch
    /// merged into) and push the merged schema, so the other branch's changes become one new migration after it.
    Rebase(DreamerPushArgs),
    /// List the successful pushes of a project, newest first.
    History(DirArg),
    /// Violations, pushes and restores as they happen (JSON lines with --json).
    Events(EventsArgs),
    /// Ask the daemon to shut down cleanly.
    Stop,
    /// Remove quarantined files older than the retention age (retention.quarantine_days, default 30).
    Prune(PruneArgs),
    /// The backup store: prove it honours conditional writes, or copy a project's history to another store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The systemd user service: install (and enable), uninstall, or say how it stands.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Print the shell completion script of a binary (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff) of a binary.
    Man(ManArgs),
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Write the user unit with this binary's path into $XDG_CONFIG_HOME/systemd/user/ (and shell completions), then
    /// reload and enable it when a user manager runs.
    Install(InstallArgs),
    /// Stop, disable and remove the unit and the completions.
    Uninstall,
    /// Whether the unit is installed, starts this binary, and runs.
    Status,
    /// What `install --strict` runs under the sandbox it probes: says READY=1 as the daemon does, after writing in
    /// the state folder. Not for people.
    #[command(hide = true)]
    Probe,
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// Start (or restart) the service now too.
    #[arg(long)]
    now: bool,
    /// Install dreamerd.socket too and enable it instead: the first command starts the service (socket activation).
    #[arg(long)]
    socket: bool,
    /// Confine the service further (a user namespace, a read-only file system but for the paths dreamerd writes,
    /// ...), after probing that it works under this user manager; refused, changing nothing, where it does not.
    #[arg(long)]
    strict: bool,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    shell: clap_complete::Shell,
    /// The binary: dreamerd or dreamer.
    #[arg(long, default_value = "dreamerd")]
    binary: String,
}

#[derive(Debug, Args)]
struct ManArgs {
    /// The binary: dreamerd or dreamer.
    #[arg(long, default_value = "dreamerd")]
    binary: String,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Prove that the project's store answers, takes writes and refuses a second create-only write and a stale
    /// If-Match (what concurrent pushers rely on).
    Check(DirArg),
    /// Copy the project's whole history (every push, verified) to the store at URL; then point store.url at it.
    Migrate(StoreMigrateArgs),
}

#[derive(Debug, Args)]
struct StoreMigrateArgs {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
    /// The store to copy to: `s3://bucket/prefix` (reached with the [store] endpoint, region and credentials) or
    /// `file:///abs/path`.
    #[arg(long, value_name = "URL")]
    to: String,
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// Log to FILE, rotated by size (log.max_bytes, log.files), instead of stderr; what a command that starts the
    /// daemon in the background passes.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
    /// Every watched project.
    #[arg(long, conflicts_with = "dir")]
    all: bool,
}

#[derive(Debug, Args)]
struct RequiredDir {
    /// The project directory.
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Keep streaming new events until interrupted.
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
    /// Read every file's metadata even when the daemon, which watches the folder, vouches that nothing in it changed
    /// since its last scan (`verified` says which was done).
    #[arg(long)]
    full: bool,
}

#[derive(Debug, Args)]
struct DirArg {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PushArgs {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
    /// Open a custom migration (`drizzle-kit generate --custom --name=NAME`) for you to write, data migrations
    /// for instance; the next `dreamer push` applies and records it. Nothing is migrated now.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["rename", "create"])]
    custom: Option<String>,
    #[command(flatten)]
    answers: AnswerArgs,
}

/// Answers to drizzle-kit 1.0's questions, which it asks only on a terminal (passed to it as `--hints-file`).
#[derive(Debug, Args)]
struct AnswerArgs {
    /// NEW was renamed from OLD: a table (`--rename posts=articles`) or a column (`--rename users.email=users.mail`,
    /// or `users.email=mail`); a schema may lead (`auth.users.email=mail`). Repeatable. drizzle-kit 1.0 only.
    #[arg(long, value_name = "OLD=NEW")]
    rename: Vec<String>,
    /// NAME (`articles`, `users.mail`) is new, not renamed from what was dropped. Repeatable. drizzle-kit 1.0 only.
    #[arg(long, value_name = "NAME")]
    create: Vec<String>,
}

impl AnswerArgs {
    fn options(self) -> crate::engine::PushOptions {
        crate::engine::PushOptions { renames: self.rename, creates: self.create, backed_up: false }
    }
}

#[derive(Debug, Args)]
struct DreamerPushArgs {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
    #[command(flatten)]
    answers: AnswerArgs,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
    /// You have your own backup of the server database (pg_dump, mysqldump, a snapshot): the conversion to drizzle-kit
    /// 1.0's layout upgrades its migrations table, and dreamerd copies only SQLite files.
    #[arg(long)]
    backed_up: bool,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
    /// Restore this push instead of the latest (ids come from `dreamerd history`).
    #[arg(long = "push", value_name = "ID")]
    push: Option<String>,
    /// Show what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Put the database back too, to the copy taken before the next push's migrate (the database as that push left
    /// it); both the folder and the database being replaced are kept in quarantine.
    #[arg(long)]
    with_database: bool,
}

#[derive(Debug, Parser)]
#[command(
    name = "dreamer",
    version,
    about = "Push the schema and restore drizzle/ safely (dreamerd's short commands)"
)]
struct DreamerCli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: DreamerCommand,
}

#[derive(Debug, Subcommand)]
enum DreamerCommand {
    /// Same as `dreamerd push`.
    Push(DreamerPushArgs),
    /// Database commands.
    Database {
        #[command(subcommand)]
        command: DatabaseCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DatabaseCommand {
    /// Same as `dreamerd restore`.
    Restore(RestoreArgs),
}

/// What to do, whichever binary was asked.
enum Action {
    Daemon(Option<PathBuf>),
    Prune(bool),
    Status(StatusArgs),
    Check(Option<PathBuf>, bool),
    Watch(PathBuf),
    Unwatch(PathBuf),
    Push(Option<PathBuf>, Option<String>, crate::engine::PushOptions),
    Up(Option<PathBuf>, bool),
    Rebase(Option<PathBuf>, crate::engine::PushOptions),
    Restore(RestoreArgs),
    History(Option<PathBuf>),
    Events(bool),
    Stop,
    StoreCheck(Option<PathBuf>),
    ServiceInstall(crate::service::InstallOptions),
    ServiceProbe,
    ServiceUninstall,
    ServiceStatus,
    Completions(clap_complete::Shell, String),
    Man(String),
    StoreMigrate(Option<PathBuf>, String),
}

/// Runs the binary and returns its exit code.
pub fn main(flavor: Flavor) -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let fast = match flavor {
        Flavor::Dreamerd => plain_check(&args),
        Flavor::Dreamer => None,
    };
    let (global, action) = match (fast, flavor) {
        (Some((global, dir, full)), _) => (global, Action::Check(dir, full)),
        (None, Flavor::Dreamerd) => {
            let cli = DreamerdCli::parse_from(&args);
            let action = match cli.command {
                DreamerdCommand::Daemon(d) => Action::Daemon(d.log_file),
                DreamerdCommand::Prune(p) => Action::Prune(p.dry_run),
                DreamerdCommand::Status(s) => Action::Status(s),
                DreamerdCommand::Watch(d) => Action::Watch(d.dir),
                DreamerdCommand::Unwatch(d) => Action::Unwatch(d.dir),
                DreamerdCommand::Events(e) => Action::Events(e.follow),
                DreamerdCommand::Stop => Action::Stop,
                DreamerdCommand::Check(c) => Action::Check(c.dir, c.full),
                DreamerdCommand::Push(d) => Action::Push(d.dir, d.custom, d.answers.options()),
                DreamerdCommand::Up(d) => Action::Up(d.dir, d.backed_up),
                DreamerdCommand::Rebase(d) => Action::Rebase(d.dir, d.answers.options()),
                DreamerdCommand::Store { command: StoreCommand::Check(d) } => Action::StoreCheck(d.dir),
                DreamerdCommand::Service { command: ServiceCommand::Install(i) } => {
                    Action::ServiceInstall(crate::service::InstallOptions {
                        now: i.now,
                        socket: i.socket,
                        strict: i.strict,
                    })
                }
                DreamerdCommand::Service { command: ServiceCommand::Uninstall } => Action::ServiceUninstall,
                DreamerdCommand::Service { command: ServiceCommand::Status } => Action::ServiceStatus,
                DreamerdCommand::Service { command: ServiceCommand::Probe } => Action::ServiceProbe,
                DreamerdCommand::Completions(c) => Action::Completions(c.shell, c.binary),
                DreamerdCommand::Man(m) => Action::Man(m.binary),
                DreamerdCommand::Store { command: StoreCommand::Migrate(m) } => {
                    Action::StoreMigrate(m.dir, m.to)
                }
                DreamerdCommand::Restore(r) => Action::Restore(r),
                DreamerdCommand::History(d) => Action::History(d.dir),
            };
            (cli.global, action)
        }
        (None, Flavor::Dreamer) => {
            let cli = DreamerCli::parse_from(&args);
            let action = match cli.command {
                DreamerCommand::Push(d) => Action::Push(d.dir, None, d.answers.options()),
                DreamerCommand::Database { command: DatabaseCommand::Restore(r) } => Action::Restore(r),
            };
            (cli.global, action)
        }
    };
    // Commands only warn; the daemon logs at info (its log is the record of violations), set up once its
    // configuration says where.
    if !matches!(action, Action::Daemon(_)) {
        logging::init(global.verbosity().level("warn"), None);
    }
    match run(&global, action) {
        Ok(code) => code,
        Err(e) => report_error(&global, &e),
    }
}

/// `dreamerd check` in the forms CI and git hooks run it, read without clap: building clap's tree of every
/// subcommand (and copying the global options into each) is a tenth of a warm check of a small folder. Only the plain
/// forms: `check`, `--full`, the global flags that take no value, each at most once, and at most one DIR after
/// `check`. Anything else (an option with a value, `--`, `-vq`, `--json=…`, help, a mistake) is `None`, left to clap,
/// whose reading of the plain forms is the same (`plain_check_reads_what_clap_reads`).
fn plain_check(args: &[std::ffi::OsString]) -> Option<(Global, Option<PathBuf>, bool)> {
    let mut global = Global::default();
    let (mut check, mut full, mut dir) = (false, false, None);
    for arg in args.iter().skip(1) {
        let flag = match arg.to_str()? {
            "check" if !check => &mut check,
            "--full" if check => &mut full,
            "--json" => &mut global.json,
            "--no-spawn" => &mut global.no_spawn,
            "-q" | "--quiet" => &mut global.quiet,
            "-v" | "--verbose" => &mut global.verbose,
            s if check && dir.is_none() && !s.is_empty() && !s.starts_with('-') => {
                dir = Some(PathBuf::from(s));
                continue;
            }
            _ => return None,
        };
        if std::mem::replace(flag, true) {
            return None; // given twice: clap's error
        }
    }
    (check && !(global.quiet && global.verbose)).then_some((global, dir, full))
}

/// Writes to stdout; a reader that went away (`dreamerd status | head -1`) ends the output quietly, never a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// Writes one line to stderr, quietly giving up if it is closed.
fn err_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn engine(global: &Global) -> Result<(Engine, Option<PathBuf>)> {
    let dirs = Dirs::from_env()?;
    let (config, file) = Config::load(global.config.as_deref(), &dirs)?;
    Ok((Engine::new(config, dirs)?, file.map(|f| std::path::absolute(&f).unwrap_or(f))))
}

/// The engine of an in-process operation on `project`: this command's settings layered with the project file's.
fn project_engine(global: &Global, project: &Project) -> Result<Engine> {
    let dirs = Dirs::from_env()?;
    let settings = Settings::load(global.config.as_deref(), &dirs)?;
    let engine = Engine::for_project(&settings, project, dirs)?;
    verbose_sources(global, &engine.sources);
    Ok(engine)
}

/// With `-v`: the files the settings came from.
fn verbose_sources(global: &Global, sources: &[PathBuf]) {
    if global.verbose {
        let shown: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        let shown = if shown.is_empty() { "the built-in defaults".to_string() } else { shown.join(", ") };
        err_line(&format!("dreamerd: settings from {shown}"));
    }
}

/// Checks the configuration (so a broken file is exit 2 even while a daemon runs) and connects. The settings go
/// with each request; only the daemon-only keys of an explicit file cannot apply, and that is said.
fn client(global: &Global) -> Result<(Client, Settings)> {
    let dirs = Dirs::from_env()?;
    let settings = Settings::load(global.config.as_deref(), &dirs)?;
    let file = settings.file.as_ref().map(|l| l.origin.clone());
    let spawn_with = file.clone().or_else(|| global.config.clone());
    let client = Client::connect(&dirs, spawn_with.as_deref(), global.no_spawn)?;
    let daemon_only = settings.daemon_only_keys();
    if let Some(Reply::Hello { config, pid, .. }) = &client.hello
        && *config != file
        && settings.explicit
        && !daemon_only.is_empty()
    {
        err_line(&format!(
            "dreamerd: warning: {} of {} apply only to a daemon started with it; the running daemon (pid {pid}) was \
             not: run `dreamerd stop`, and the next command starts one with it",
            daemon_only.join(", "),
            file.as_ref().map(|f| f.display().to_string()).unwrap_or_default()
        ));
    }
    Ok((client, settings))
}

/// Sends one request and waits for its result, streaming operation output to stderr meanwhile.
/// The project root and config at `dir` (nothing evaluated: the daemon does that with this command's environment).
fn locate(global: &Global, dir: Option<&std::path::Path>) -> Result<(PathBuf, Option<String>)> {
    Project::locate(dir, global.drizzle_config.as_deref())
}

fn call(global: &Global, request: Request) -> Result<(i32, serde_json::Value)> {
    call_for(global, request, None)
}

/// Sends a request about a project with its config and this command's environment (drizzle-kit and the config
/// run with it in the daemon).
fn call_for(global: &Global, request: Request, config: Option<String>) -> Result<(i32, serde_json::Value)> {
    strict_guard(global, &request, config.as_ref())?;
    let (mut client, settings) = client(global)?;
    client.send_with(request, config, Some(std::env::vars().collect()), Some(settings))?;
    let verbose = global.verbose;
    // Transfers to and from a remote store show a spinner on a terminal (never with --json, never in a pipe).
    let terminal = !global.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut spinner: Option<indicatif::ProgressBar> = None;
    let outcome = client.finish(|reply| {
        if let Some(s) = spinner.take() {
            s.finish_and_clear();
        }
        match reply {
            Reply::Output { line, .. } => err_line(&format!("  {line}")),
            Reply::Progress { message }
                if terminal && (message.starts_with("uploading") || message.starts_with("downloading")) =>
            {
                let s = indicatif::ProgressBar::new_spinner().with_message(message.clone());
                s.enable_steady_tick(std::time::Duration::from_millis(120));
                spinner = Some(s);
            }
            Reply::Progress { message } => err_line(&format!("dreamerd: {message}")),
            _ => {}
        }
    });
    if let Some(s) = spinner.take() {
        s.finish_and_clear();
    }
    outcome.inspect(|(_, data)| {
        if verbose {
            let sources: Vec<PathBuf> = data["settings"]
                .as_array()
                .or_else(|| data["projects"][0]["settings"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(PathBuf::from))
                .collect();
            verbose_sources(global, &sources);
        }
    })
}

/// Under the strict sandbox (`service install --strict`), the project a request writes in, and its database, must
/// be writable in the service's sandbox: when they are not, the drop-in is widened and the service restarted (once
/// its running operations finish) before the request is sent, and the command says so on stderr.
fn strict_guard(global: &Global, request: &Request, config: Option<&String>) -> Result<()> {
    let root = match request {
        Request::Watch { dir }
        | Request::Push { dir, .. }
        | Request::Up { dir, .. }
        | Request::Rebase { dir, .. }
        | Request::Restore { dir, .. } => dir,
        _ => return Ok(()),
    };
    let dirs = Dirs::from_env()?;
    if !crate::service::strict_installed(&dirs) {
        return Ok(());
    }
    // This project's database, as the daemon resolves its config (the drop-in keeps the other projects' paths).
    let mut databases = Vec::new();
    let (mut asking, settings) = client(global)?;
    let ask = Request::Status { dir: Some(root.clone()), all: false };
    asking.send_with(ask, config.cloned(), Some(std::env::vars().collect()), Some(settings))?;
    if let Ok((_, data)) = asking.finish(|_| {}) {
        database_paths(&data, &mut databases);
    }
    let Some(added) = crate::service::strict_widen(&dirs, root, &databases)? else { return Ok(()) };
    let (mut client, _) = client(global)?;
    let old_pid = match &client.hello {
        Some(Reply::Hello { pid, .. }) => *pid,
        _ => 0,
    };
    client.send(Request::Restart)?;
    let shown: Vec<String> = added.iter().map(|p| p.display().to_string()).collect();
    match client.finish(|_| {}) {
        Ok((0, data)) => err_line(&format!(
            "dreamerd: the strict sandbox now lets the service write in {}; it restarts once its running operations \
             finish ({} running)",
            shown.join(", "),
            data["running_operations"].as_u64().unwrap_or(0)
        )),
        Ok((_, data)) => {
            err_line(&format!(
                "dreamerd: warning: the strict sandbox was widened to {}, but the daemon cannot restart into it: {}",
                shown.join(", "),
                data["error"].as_str().unwrap_or("")
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    // The request goes to the restarted daemon, in the widened sandbox.
    let socket = ipc::socket_path(&dirs);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    loop {
        if let Some(Client { hello: Some(Reply::Hello { pid, .. }), .. }) = Client::connect_existing(&dirs)
            && pid != old_pid
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::failed(
                format!("the service did not come back on {} within an hour", socket.display()),
                "see `systemctl --user status dreamerd`",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Every `database.path` in a status answer.
fn database_paths(value: &serde_json::Value, out: &mut Vec<PathBuf>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(path) = map.get("database").and_then(|d| d["path"].as_str()) {
                out.push(PathBuf::from(path));
            }
            map.values().for_each(|v| database_paths(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| database_paths(v, out)),
        _ => {}
    }
}

fn typed<T: serde::de::DeserializeOwned>(data: &serde_json::Value) -> Result<T> {
    serde_json::from_value(data.clone()).map_err(|e| {
        Error::failed(format!("unexpected answer from the daemon: {e}"), "run `dreamerd stop` and retry")
    })
}

fn print_raw(
    global: &Global,
    data: &serde_json::Value,
    human: impl FnOnce() -> Result<String>,
) -> Result<()> {
    if global.json {
        out(&format!("{data}\n"));
    } else {
        out(&human()?);
    }
    Ok(())
}

fn run(global: &Global, action: Action) -> Result<i32> {
    match action {
        Action::Daemon(log_file) => {
            let loaded = engine(global);
            let log = match (&loaded, log_file) {
                (Ok((engine, _)), Some(path)) => {
                    let limits = &engine.config.log;
                    Some(logging::RotatingFile::open(&path, limits.max_bytes, limits.files, true).map_err(
                        |e| Error::Environment {
                            context: format!("cannot open the log file {}", path.display()),
                            source: e,
                        },
                    )?)
                }
                _ => None,
            };
            let target = logging::init(global.verbosity().level("info"), log);
            tracing::debug!(?target, "logging");
            let (engine, config_file) = loaded?;
            let dirs = engine.dirs.clone();
            let settings = Settings::load(global.config.as_deref(), &dirs)?;
            let again = global.clone();
            let reload: daemon::Reload = Box::new(move || {
                let (engine, config_file) = self::engine(&again)?;
                let settings = Settings::load(again.config.as_deref(), &engine.dirs)?;
                Ok(daemon::Loaded { engine, config_file, settings })
            });
            let restart = daemon::run(daemon::Loaded { engine, config_file, settings }, reload, dirs)?;
            Ok(if restart { daemon::RESTART_EXIT } else { 0 })
        }
        Action::Prune(dry_run) => {
            let (engine, _) = engine(global)?;
            let report = engine.prune(dry_run, std::time::SystemTime::now())?;
            emit(global, &report, || human_prune(&report));
            Ok(0)
        }
        Action::ServiceInstall(options) => {
            let report = crate::service::install(&Dirs::from_env()?, &options, completion_script)?;
            emit(global, &report, || human_service(&report));
            Ok(0)
        }
        Action::ServiceProbe => {
            crate::service::probe_here(&Dirs::from_env()?)?;
            Ok(0)
        }
        Action::ServiceUninstall => {
            let report = crate::service::uninstall(&Dirs::from_env()?)?;
            emit(global, &report, || human_service(&report));
            Ok(0)
        }
        Action::ServiceStatus => {
            let report = crate::service::status(&Dirs::from_env()?)?;
            emit(global, &report, || human_service(&report));
            Ok(0)
        }
        Action::Completions(shell, binary) => {
            let script = completion_script(shell, command_of(&binary)?.get_name());
            out(&String::from_utf8_lossy(&script));
            Ok(0)
        }
        Action::Man(binary) => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command_of(&binary)?)
                .render(&mut page)
                .map_err(|e| Error::failed(format!("cannot render the man page: {e}"), ""))?;
            out(&String::from_utf8_lossy(&page));
            Ok(0)
        }
        Action::StoreCheck(dir) => {
            let project = Project::discover_with(dir.as_deref(), global.drizzle_config.as_deref())?;
            let engine = project_engine(global, &project)?;
            engine.store.reachable()?;
            let proved = engine.store.check_conditional()?;
            let doc = serde_json::json!({"ok": true, "store": engine.store.describe(), "proved": proved});
            emit(global, &doc, || {
                let mut out = format!("{}: answers and takes writes\n", engine.store.describe());
                for p in &proved {
                    out += &format!("  {p}\n");
                }
                out
            });
            Ok(0)
        }
        Action::StoreMigrate(dir, to) => {
            let project = Project::discover_with(dir.as_deref(), global.drizzle_config.as_deref())?;
            let engine = project_engine(global, &project)?;
            let report = engine.migrate_store(&project, &to, &mut |m| err_line(&format!("dreamerd: {m}")))?;
            emit(global, &report, || {
                format!(
                    "copied {} push(es) of {} from {} to {} ({} were there already), every archive verified; now set \
                     store.url = {:?}\n",
                    report.copied,
                    project.root.display(),
                    report.from,
                    report.to,
                    report.pushes - report.copied,
                    to
                )
            });
            Ok(0)
        }
        Action::Check(dir, full) => {
            let project = Project::discover_with(dir.as_deref(), global.drizzle_config.as_deref())?;
            let mut engine = project_engine(global, &project)?;
            // A daemon that watches the folder may vouch for it (never started for this; any doubt is a full scan).
            if !full && !project.unresolved() && engine.worth_vouching(&project) {
                engine.vouched =
                    crate::ipc::vouch(&engine.dirs, &project.drizzle(), &project.not_migrations());
            }
            let status = engine.status(&project)?;
            emit(global, &status, || human_status(&status));
            Ok(match status.state {
                ProjectState::Unresolved => 2,
                _ if status.is_clean() => 0,
                _ => 1,
            })
        }
        Action::Status(args) => {
            let (dir, config) = if args.all {
                (None, None)
            } else {
                let (root, config) = locate(global, args.dir.as_deref())?;
                (Some(root), config)
            };
            let (exit, data) = call_for(global, Request::Status { dir, all: args.all }, config)?;
            print_raw(global, &data, || {
                let projects = data["projects"].as_array().cloned().unwrap_or_default();
                if projects.is_empty() {
                    return Ok("no project is watched (add one with `dreamerd watch DIR`)\n".into());
                }
                let mut out = String::new();
                for p in &projects {
                    out += &human_status(&typed::<ProjectStatus>(p)?);
                    out += &human_watch(&p["watch"]);
                }
                Ok(out)
            })?;
            Ok(exit)
        }
        Action::Watch(dir) => {
            let (root, config) = locate(global, Some(&dir))?;
            let (exit, data) = call_for(global, Request::Watch { dir: root.clone() }, config)?;
            print_raw(global, &data, || {
                let status = typed::<ProjectStatus>(&data["project"])?;
                Ok(format!("watching {}\n{}", root.display(), human_status(&status)))
            })?;
            Ok(exit)
        }
        Action::Unwatch(dir) => {
            // The project may be gone already: use the path as given, made absolute.
            let root =
                std::fs::canonicalize(&dir).unwrap_or_else(|_| std::path::absolute(&dir).unwrap_or(dir));
            let (exit, data) = call(global, Request::Unwatch { dir: root.clone() })?;
            print_raw(global, &data, || {
                Ok(if data["was_watched"] == true {
                    format!("no longer watching {}\n", root.display())
                } else {
                    format!("{} was not watched\n", root.display())
                })
            })?;
            Ok(exit)
        }
        Action::Push(dir, custom, options) => {
            if let Ok(running) = std::env::var(daemon::RUNNING_PUSH) {
                return Err(Error::failed(
                    format!("this command runs inside a push of {running}; pushes do not nest"),
                    "the generate and migrate commands must run drizzle-kit, not `dreamer push`: check push.generate \
                     and push.migrate",
                ));
            }
            let (root, config) = locate(global, dir.as_deref())?;
            let (exit, data) = call_for(global, Request::Push { dir: root, custom, options }, config)?;
            print_raw(global, &data, || Ok(human_push(&typed(&data)?)))?;
            Ok(exit)
        }
        Action::Up(dir, backed_up) => {
            let (root, config) = locate(global, dir.as_deref())?;
            let (exit, data) = call_for(global, Request::Up { dir: root, backed_up }, config)?;
            print_raw(global, &data, || Ok(human_push(&typed(&data)?)))?;
            Ok(exit)
        }
        Action::Rebase(dir, options) => {
            let (root, config) = locate(global, dir.as_deref())?;
            let (exit, data) = call_for(global, Request::Rebase { dir: root, options }, config)?;
            print_raw(global, &data, || {
                let r: crate::engine::RebaseReport = typed(&data)?;
                Ok(format!(
                    "put back push {} ({} migration file(s) of the merged branch kept in quarantine{})\n{}",
                    r.base,
                    r.dropped.len(),
                    r.restore.quarantine.as_ref().map(|q| format!(": {}", q.display())).unwrap_or_default(),
                    human_push(&r.push)
                ))
            })?;
            Ok(exit)
        }
        Action::Restore(args) => {
            let (root, config) = locate(global, args.dir.as_deref())?;
            let request = Request::Restore {
                dir: root,
                push: args.push,
                dry_run: args.dry_run,
                with_database: args.with_database,
            };
            let (exit, data) = call_for(global, request, config)?;
            print_raw(global, &data, || Ok(human_restore(&typed(&data)?)))?;
            Ok(exit)
        }
        Action::History(dir) => {
            let (root, config) = locate(global, dir.as_deref())?;
            let (exit, data) = call_for(global, Request::History { dir: root }, config)?;
            print_raw(global, &data, || Ok(human_history(&typed(&data)?)))?;
            Ok(exit)
        }
        Action::Events(follow) => {
            let (mut client, _) = client(global)?;
            client.send(Request::Events { follow })?;
            let json = global.json;
            let (exit, _) = client.finish(|reply| {
                if let Reply::Event { event } = reply {
                    let mut out = std::io::stdout().lock();
                    let line = if json { event.to_string() } else { human_event(event) };
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            })?;
            Ok(exit)
        }
        Action::Stop => {
            let dirs = Dirs::from_env()?;
            let socket = ipc::socket_path(&dirs);
            let Some(mut client) = Client::connect_existing(&dirs) else {
                emit(global, &serde_json::json!({"ok": true, "was_running": false}), || {
                    "no daemon is running\n".into()
                });
                return Ok(0);
            };
            match client.hello.clone() {
                Some(Reply::Hello { protocol, pid, .. }) if protocol != ipc::PROTOCOL => {
                    // It would not understand our stop request: SIGTERM is a clean shutdown too.
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                }
                _ => {
                    client.send(Request::Stop)?;
                    client.finish(|_| {})?;
                }
            }
            // Return once it is really gone (socket file removed), so `dreamerd stop && dreamerd daemon` works. A
            // socket systemd passed stays, systemd's, to start the service again at the next command: then the
            // process is waited for instead.
            let (pid, activated) = match client.hello.clone() {
                Some(Reply::Hello { pid, activated, .. }) => (pid, activated),
                _ => (0, false),
            };
            let gone = || {
                if activated {
                    !std::path::Path::new(&format!("/proc/{pid}")).exists()
                } else {
                    !ipc::daemon_alive(&socket) && !socket.exists()
                }
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !gone() {
                if std::time::Instant::now() > deadline {
                    return Err(Error::failed(
                        "the daemon did not stop within 60s (an operation may still be running)",
                        "wait for it, or see the daemon's log",
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            emit(global, &serde_json::json!({"ok": true, "was_running": true}), || "daemon stopped\n".into());
            Ok(0)
        }
    }
}

/// Prints the result: JSON on stdout with `--json`, human text otherwise.
fn emit<T: Serialize>(global: &Global, value: &T, human: impl FnOnce() -> String) {
    if global.json {
        out(&format!("{}\n", serde_json::to_string(value).expect("reports serialise")));
    } else {
        out(&human());
    }
}

fn report_error(global: &Global, err: &Error) -> i32 {
    let hint = err.hint();
    if global.json {
        #[derive(Serialize)]
        struct ErrorDoc<'a> {
            ok: bool,
            error: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            hint: Option<&'a str>,
        }
        let doc = ErrorDoc { ok: false, error: err.to_string(), hint: hint.as_deref() };
        out(&format!("{}\n", serde_json::to_string(&doc).expect("serialises")));
    }
    err_line(&format!("dreamerd: error: {err}"));
    if let Some(h) = hint {
        err_line(&format!("dreamerd: hint: {h}"));
    }
    err.exit_code()
}

fn human_status(s: &ProjectStatus) -> String {
    let mut out = String::new();
    let out_dir = if s.out.is_empty() { "drizzle/".to_string() } else { format!("{}/", s.out) };
    let schema = if s.schema.is_empty() { "src/schema.ts".to_string() } else { s.schema.join(", ") };
    let root = s.root.display();
    let push = s
        .last_push
        .as_ref()
        .map(|p| format!("push {} of {}, {} files", p.id, p.at, p.files))
        .unwrap_or_default();
    match s.state {
        ProjectState::Clean => match &s.matches {
            Some(other) => {
                let how = match s.relation {
                    Some(Relation::Older) => " (older than this checkout's last push)",
                    Some(Relation::Newer) => " (newer than this checkout's last push)",
                    Some(Relation::Other) => " (on another line of pushes than this checkout's last push)",
                    _ => "",
                };
                out += &format!(
                    "{root}: clean: {out_dir} holds push {other}{how}; it is this checkout's last push from now on\n"
                )
            }
            None => {
                let how = match s.last_push.as_ref().map(|p| (p.via, p.source)) {
                    Some((Some(Via::Arrived), _)) => "; the folder arrived holding it (a pull or a copy)",
                    Some((Some(Via::Restore), _)) => "; restored",
                    Some((_, Some(Source::Committed))) => "; named by the committed sum",
                    _ => "",
                };
                out += &format!("{root}: clean ({push}{how})\n")
            }
        },
        ProjectState::NoBaseline => out += &format!("{root}: never pushed (run `dreamer push`)\n"),
        ProjectState::Busy => out += &format!("{root}: busy (a push or restore is running)\n"),
        ProjectState::Unresolved => {
            out += &format!(
                "{root}: UNRESOLVED ({}): {}\n",
                s.config.as_deref().unwrap_or("the drizzle config"),
                escaped(s.reason.as_deref().unwrap_or("unknown reason"))
            );
        }
        ProjectState::Violated => {
            out += &format!(
                "{root}: VIOLATED: {} change(s) to {out_dir} by hand since the last push ({push}):\n",
                s.violations.len()
            );
            for v in &s.violations {
                out += &format!("  {}\n", v.human());
            }
            if let Some(target) = &s.restore_target {
                out += &format!("`dreamer database restore` brings back push {target}");
                match &s.closest {
                    Some(c) => {
                        out += &format!(
                            "; the closest push is {} ({} difference(s)): `dreamerd restore --push {}`\n",
                            c.push, c.differences, c.push
                        )
                    }
                    None => out += ".\n",
                }
            }
            out += &format!(
                "{out_dir} is written only by `dreamer push`. Run `dreamer database restore` to put it back (your \
                 edits are kept in quarantine), move schema changes into {schema}, then push.\n"
            );
        }
    }
    if !s.drift.is_empty() {
        let history = match s.migration_layout {
            Some(crate::drizzle::journal::Layout::Folders) => "its migration folders",
            _ => "its journal",
        };
        out +=
            &format!("DRIFT: {} problem(s) between {out_dir}, {history} and the database:\n", s.drift.len());
        // A project never pushed has nothing to restore: its hints say so.
        let never_pushed = s.last_push.is_none() && s.matches.is_none();
        for d in &s.drift {
            let hint = if never_pushed { d.first_push_hint() } else { d.hint() };
            out += &format!("  [{}] {}\n    hint: {hint}\n", d.code, escaped(&d.message));
        }
    }
    if let Some(w) = &s.backup_waiting {
        out += &format!(
            "the backup of push {} waits for the store: the daemon stores it as soon as the store answers.\n",
            w.push
        );
        if let Some(reason) = &w.reason {
            out += &format!("  why: {}\n", escaped(reason));
        }
    }
    if let Some(c) = &s.custom {
        out += &format!(
            "custom migration {} is open: write it in {out_dir}{}, then `dreamer push` applies and records it.\n",
            c.migration,
            escaped(&c.file)
        );
    }
    if let Some(i) = &s.interrupted {
        out += &format!("INTERRUPTED: {}\n", escaped(&i.message));
        if let Some(h) = &i.hint {
            out += &format!("  hint: {h}\n");
        }
    }
    if s.schema_pending && s.state != ProjectState::NoBaseline {
        out += &format!("{schema} changed since the last push: run `dreamer push` to apply it.\n");
    }
    out
}

fn human_push(r: &PushReport) -> String {
    match r {
        PushReport::Ok { push_id, files, unchanged: false, known_faults, .. } => {
            let mut out = format!("pushed: {push_id} ({files} files backed up)\n");
            if !known_faults.is_empty() {
                out += &format!(
                    "warning: the folder's history has {} fault(s) that migrate tolerates; they are recorded as known \
                     in .dreamerd.toml and checks report only new ones:\n",
                    known_faults.len()
                );
                for d in known_faults {
                    out += &format!("  [{}] {}\n", d.code, escaped(&d.message));
                }
            }
            out
        }
        PushReport::Ok { push_id, files, unchanged: true, .. } => {
            format!(
                "nothing changed: drizzle/ and src/schema.ts are exactly push {push_id} ({files} files)\n"
            )
        }
        PushReport::Opened { custom, file, .. } => format!(
            "opened the custom migration {custom}: write it in {}, then `dreamer push` applies and records it \
             (until then that file is yours to edit; the rest of the folder is still guarded)\n",
            file.display()
        ),
        PushReport::Failed(f) => {
            let stage = serde_json::to_value(f.stage)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let mut out = format!(
                "push FAILED at {stage}: [{}] {}\nhint: {}\n",
                f.diagnosis.code,
                escaped(&f.diagnosis.message),
                f.diagnosis.hint
            );
            out += if f.rolled_back {
                "drizzle/ is exactly as it was before the push.\n"
            } else {
                "drizzle/ was NOT rolled back (see the hint).\n"
            };
            if let Some(q) = &f.quarantine {
                out += &format!("what the failed run wrote, and its output, are kept in {}\n", q.display());
            }
            out
        }
    }
}

fn human_restore(r: &RestoreReport) -> String {
    let mut out = String::new();
    if r.dry_run {
        if r.changes.is_empty() {
            out += &format!("drizzle/ already matches push {}: a restore would change nothing\n", r.push_id);
        } else {
            out += &format!("a restore to push {} would undo {} change(s):\n", r.push_id, r.changes.len());
            for v in &r.changes {
                out += &format!("  {}\n", v.human());
            }
            out += "(dry run: nothing was changed)\n";
        }
        if let Some(d) = &r.database {
            out +=
                &format!("with --with-database the database would be put back from {}\n", d.copy.display());
        }
        return out;
    }
    match &r.quarantine {
        None if r.changes.is_empty() => {
            out +=
                &format!("drizzle/ already matches push {} ({} files): nothing to do\n", r.push_id, r.files)
        }
        None => out += &format!("restored drizzle/ to push {} ({} files)\n", r.push_id, r.files),
        Some(q) => {
            out += &format!("restored drizzle/ to push {} ({} files)\n", r.push_id, r.files);
            out += &format!("the replaced files are kept in {}\n", q.display());
        }
    }
    if let Some(d) = &r.database {
        out += &format!("the database was put back from {}", d.copy.display());
        if let Some(q) = &d.quarantine {
            out += &format!("; the database it replaced is kept in {}", q.display());
        }
        out += "\n";
    }
    out
}

fn human_prune(r: &PruneReport) -> String {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut text = format!(
        "{verb} {} quarantine folder(s) older than {} days ({}); {} younger kept\n",
        r.removed.len(),
        r.retention_days,
        mb(r.freed_bytes),
        r.kept
    );
    for p in &r.removed {
        text += &format!(
            "  {}  {}  {}\n",
            p.at,
            mb(p.bytes),
            crate::manifest::escaped(&p.path.to_string_lossy())
        );
    }
    if r.dry_run {
        text += "(dry run: nothing was removed)\n";
    }
    text
}

/// The command-line definition of one of the two binaries.
fn command_of(binary: &str) -> Result<clap::Command> {
    use clap::CommandFactory;
    match binary {
        "dreamerd" => Ok(DreamerdCli::command()),
        "dreamer" => Ok(DreamerCli::command()),
        other => Err(Error::Usage(format!("{other:?} is not a dreamerd binary: use dreamerd or dreamer"))),
    }
}

/// A binary's completion script for a shell.
fn completion_script(shell: clap_complete::Shell, binary: &str) -> Vec<u8> {
    let mut script = Vec::new();
    if let Ok(mut command) = command_of(binary) {
        clap_complete::generate(shell, &mut command, binary, &mut script);
    }
    script
}

fn human_service(r: &crate::service::ServiceReport) -> String {
    let mut out = String::new();
    for step in &r.steps {
        out += &format!("{step}\n");
    }
    out += &format!(
        "{}: {}{}\n",
        r.unit.display(),
        if r.installed { "installed" } else { "not installed" },
        match &r.active {
            Some(state) => format!(", {state}"),
            None if !r.manager => ", no user service manager in this session".into(),
            None => String::new(),
        }
    );
    for c in &r.completions {
        out += &format!("completions: {}\n", c.display());
    }
    out
}

fn human_history(h: &crate::engine::History) -> String {
    if h.pushes.is_empty() {
        let mut out = format!("{}: no successful push yet\n", h.root.display());
        if let Some(c) = &h.committed {
            out += &format!("  the committed sum names push {c}, which this store does not hold\n");
        }
        return out;
    }
    let mut out = format!("{}: {} successful push(es), newest first\n", h.root.display(), h.pushes.len());
    for p in &h.pushes {
        let mut marks = Vec::new();
        if p.last {
            marks.push("this checkout's last push: what restore brings back");
        }
        if p.committed {
            marks.push("named by the committed sum");
        }
        if p.pending {
            marks.push("backup waiting for the store");
        }
        if p.database_copy {
            marks.push("database copy: restore --with-database");
        }
        let marks = if marks.is_empty() { String::new() } else { format!("  ({})", marks.join("; ")) };
        out += &format!("  {}  {}  {:>3} files  {}{marks}\n", p.id, p.at, p.files, escaped(&p.host));
    }
    if let Some(c) = h.committed.as_ref().filter(|c| !h.pushes.iter().any(|p| &&p.id == c)) {
        out += &format!("  the committed sum names push {c}, which this store does not hold\n");
    }
    out
}

fn human_watch(watch: &serde_json::Value) -> String {
    let mut out = String::new();
    if watch["overflows"].as_u64().unwrap_or(0) > 0 {
        out += &format!(
            "  note: file events were lost {} time(s) (queue overflow); full rescans were done instead\n",
            watch["overflows"]
        );
    }
    for w in watch["warnings"].as_array().into_iter().flatten() {
        out += &format!("  warning: {}\n", escaped(w.as_str().unwrap_or_default()));
    }
    if watch["watched"] == false {
        out += "  (not watched: `dreamerd watch` it to be warned of hand edits at once)\n";
    }
    out
}

fn human_event(e: &serde_json::Value) -> String {
    let at = e["at"].as_str().unwrap_or("");
    let root = e["root"].as_str().unwrap_or("");
    let kind = e["type"].as_str().unwrap_or("event");
    let detail = match kind {
        "violation" => e["violations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_value::<crate::manifest::Violation>(v.clone()).ok())
            .map(|v| v.human().split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(", "),
        "push" if e["ok"] == true => format!("ok {}", e["push_id"].as_str().unwrap_or("")),
        "push" => {
            format!("FAILED at {} [{}]", e["stage"].as_str().unwrap_or(""), e["code"].as_str().unwrap_or(""))
        }
        "restore" => format!(
            "{}{}",
            if e["automatic"] == true { "automatic " } else { "" },
            e["push_id"].as_str().unwrap_or("failed")
        ),
        _ => String::new(),
    };
    format!("{at}  {kind:<14} {root}  {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sequence of up to four of these words: wherever the plain reading of `check` answers, clap reads the
    /// same options, and every plain form clap takes for a check, no word twice, is read plainly (nothing falls
    /// back by mistake; clap takes a global flag twice, and -q with -v, when they stand on both sides of `check`: left
    /// to it).
    #[test]
    fn plain_check_reads_what_clap_reads() {
        let plain_words =
            ["check", "--full", "--json", "--no-spawn", "-q", "--quiet", "-v", "--verbose", "app"];
        let others = ["-", "--", "-vq", "--json=true", "status", "--config", ""];
        let words: Vec<&str> = plain_words.iter().chain(&others).copied().collect();
        let mut argvs: Vec<Vec<&str>> = vec![vec![]];
        let mut all = Vec::new();
        for _ in 0..4 {
            argvs = argvs
                .iter()
                .flat_map(|a| words.iter().map(move |w| a.iter().copied().chain([*w]).collect::<Vec<_>>()))
                .collect();
            all.extend(argvs.iter().cloned());
        }
        fn same(w: &str) -> &str {
            match w {
                "--quiet" => "-q",
                "--verbose" => "-v",
                w => w,
            }
        }
        let plain_form = |argv: &[&str]| {
            let words: Vec<&str> = argv.iter().map(|w| same(w)).collect();
            words.iter().all(|w| plain_words.contains(w))
                && words.iter().enumerate().all(|(i, w)| !words[..i].contains(w))
                && !(words.contains(&"-q") && words.contains(&"-v"))
        };
        let mut read = 0;
        for argv in all {
            let args: Vec<std::ffi::OsString> =
                std::iter::once("dreamerd").chain(argv.iter().copied()).map(Into::into).collect();
            let plain = plain_check(&args);
            let clap = DreamerdCli::try_parse_from(&args);
            match (plain, clap) {
                (
                    Some((global, dir, full)),
                    Ok(DreamerdCli { global: g, command: DreamerdCommand::Check(c) }),
                ) => {
                    assert_eq!((global, dir, full), (g, c.dir, c.full), "{argv:?}");
                    read += 1;
                }
                (Some(plain), other) => panic!("{argv:?}: read plainly as {plain:?}, clap says {other:?}"),
                (None, Ok(DreamerdCli { command: DreamerdCommand::Check(_), .. })) if plain_form(&argv) => {
                    panic!("{argv:?}: a plain check that was not read plainly")
                }
                (None, _) => {}
            }
        }
        assert!(read > 500, "only {read} forms were read plainly");
    }
}
