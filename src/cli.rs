//! The command line of both binaries: argument parsing, output (human or `--json`) and exit codes.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::Config;
use crate::dirs::Dirs;
use crate::engine::{Engine, ProjectState, ProjectStatus, PushReport, RestoreReport, Sink, Stream};
use crate::error::{Error, Result};
use crate::project::Project;

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Dreamerd,
    Dreamer,
}

/// Options every command takes.
#[derive(Debug, Clone, Default, Args)]
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
    /// Verify drizzle/ against the last successful push, in-process (CI, git hooks). Exit 1 on violations.
    Check(DirArg),
    /// Run drizzle-kit generate and migrate, then back up drizzle/. Rolls back on any failure.
    Push(DirArg),
    /// Put drizzle/ back to the last successful push (or --push ID), keeping what it replaces.
    Restore(RestoreArgs),
    /// List the successful pushes of a project, newest first.
    History(DirArg),
}

#[derive(Debug, Args)]
struct DirArg {
    /// The project directory (default: the current directory, or its nearest ancestor that is a project).
    dir: Option<PathBuf>,
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
    Push(DirArg),
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
    Check(Option<PathBuf>),
    Push(Option<PathBuf>),
    Restore(RestoreArgs),
    History(Option<PathBuf>),
}

/// Runs the binary and returns its exit code.
pub fn main(flavor: Flavor) -> i32 {
    let (global, action) = match flavor {
        Flavor::Dreamerd => {
            let cli = DreamerdCli::parse();
            let action = match cli.command {
                DreamerdCommand::Check(d) => Action::Check(d.dir),
                DreamerdCommand::Push(d) => Action::Push(d.dir),
                DreamerdCommand::Restore(r) => Action::Restore(r),
                DreamerdCommand::History(d) => Action::History(d.dir),
            };
            (cli.global, action)
        }
        Flavor::Dreamer => {
            let cli = DreamerCli::parse();
            let action = match cli.command {
                DreamerCommand::Push(d) => Action::Push(d.dir),
                DreamerCommand::Database { command: DatabaseCommand::Restore(r) } => Action::Restore(r),
            };
            (cli.global, action)
        }
    };
    init_logging();
    match run(&global, action) {
        Ok(code) => code,
        Err(e) => report_error(&global, &e),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DREAMERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn engine(global: &Global) -> Result<Engine> {
    let dirs = Dirs::from_env()?;
    let (config, _) = Config::load(global.config.as_deref(), &dirs)?;
    Engine::new(config, dirs)
}

fn run(global: &Global, action: Action) -> Result<i32> {
    let sink = TerminalSink;
    match action {
        Action::Check(dir) => {
            let engine = engine(global)?;
            let project = Project::discover(dir.as_deref())?;
            let status = engine.status(&project)?;
            emit(global, &status, || human_status(&status));
            Ok(if status.is_clean() { 0 } else { 1 })
        }
        Action::Push(dir) => {
            let engine = engine(global)?;
            let project = Project::discover(dir.as_deref())?;
            let report = engine.push(&project, &sink)?;
            emit(global, &report, || human_push(&report));
            Ok(if report.ok() { 0 } else { 1 })
        }
        Action::Restore(args) => {
            let engine = engine(global)?;
            let project = Project::discover(args.dir.as_deref())?;
            let report = engine.restore(&project, args.push.as_deref(), args.dry_run, &sink)?;
            emit(global, &report, || human_restore(&report));
            Ok(0)
        }
        Action::History(dir) => {
            let engine = engine(global)?;
            let project = Project::discover(dir.as_deref())?;
            let history = match project.id()? {
                Some(id) => engine.store.history(&id)?,
                None => Vec::new(),
            };
            let doc = HistoryDoc {
                root: project.root.clone(),
                pushes: history
                    .iter()
                    .map(|r| HistoryEntry {
                        id: r.id.clone(),
                        at: r.at.clone(),
                        files: r.files.len(),
                        host: r.host.clone(),
                    })
                    .collect(),
            };
            emit(global, &doc, || human_history(&doc));
            Ok(0)
        }
    }
}

#[derive(Serialize)]
struct HistoryDoc {
    root: PathBuf,
    pushes: Vec<HistoryEntry>,
}

#[derive(Serialize)]
struct HistoryEntry {
    id: String,
    at: String,
    files: usize,
    host: String,
}

/// Prints the result: JSON on stdout with `--json`, human text otherwise.
fn emit<T: Serialize>(global: &Global, value: &T, human: impl FnOnce() -> String) {
    let mut out = std::io::stdout().lock();
    if global.json {
        let _ = writeln!(out, "{}", serde_json::to_string(value).expect("reports serialise"));
    } else {
        let _ = write!(out, "{}", human());
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
        println!("{}", serde_json::to_string(&doc).expect("serialises"));
    }
    eprintln!("dreamerd: error: {err}");
    if let Some(h) = hint {
        eprintln!("dreamerd: hint: {h}");
    }
    err.exit_code()
}

/// Streams drizzle-kit's output and dreamerd's steps to stderr, so stdout stays the result alone.
struct TerminalSink;

impl Sink for TerminalSink {
    fn output(&self, _stream: Stream, line: &str) {
        eprintln!("  {line}");
    }
    fn progress(&self, message: &str) {
        eprintln!("dreamerd: {message}");
    }
}

fn human_status(s: &ProjectStatus) -> String {
    let mut out = String::new();
    let root = s.root.display();
    match s.state {
        ProjectState::Clean => {
            let p = s.last_push.as_ref().expect("clean has a push");
            out += &format!("{root}: clean (push {} of {}, {} files)\n", p.id, p.at, p.files);
        }
        ProjectState::NoBaseline => out += &format!("{root}: never pushed (run `dreamer push`)\n"),
        ProjectState::Busy => out += &format!("{root}: busy (a push or restore is running)\n"),
        ProjectState::Violated => {
            let p = s.last_push.as_ref().expect("violated has a push");
            out += &format!(
                "{root}: VIOLATED: {} change(s) to drizzle/ by hand since push {}:\n",
                s.violations.len(),
                p.id
            );
            for v in &s.violations {
                out += &format!("  {}\n", v.human());
            }
            out += "drizzle/ is written only by `dreamer push`. Run `dreamer database restore` to put it back \
                    (your edits are kept in quarantine), move schema changes into src/schema.ts, then push.\n";
        }
    }
    if s.schema_pending && s.state != ProjectState::NoBaseline {
        out += "src/schema.ts changed since the last push: run `dreamer push` to apply it.\n";
    }
    out
}

fn human_push(r: &PushReport) -> String {
    match r {
        PushReport::Ok { push_id, files, unchanged: false, .. } => {
            format!("pushed: {push_id} ({files} files backed up)\n")
        }
        PushReport::Ok { push_id, files, unchanged: true, .. } => {
            format!(
                "nothing changed: drizzle/ and src/schema.ts are exactly push {push_id} ({files} files)\n"
            )
        }
        PushReport::Failed(f) => {
            let stage = serde_json::to_value(f.stage)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let mut out = format!(
                "push FAILED at {stage}: [{}] {}\nhint: {}\n",
                f.diagnosis.code, f.diagnosis.message, f.diagnosis.hint
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
    out
}

fn human_history(h: &HistoryDoc) -> String {
    if h.pushes.is_empty() {
        return format!("{}: no successful push yet\n", h.root.display());
    }
    let mut out = format!("{}: {} successful push(es), newest first\n", h.root.display(), h.pushes.len());
    for (i, p) in h.pushes.iter().enumerate() {
        let latest = if i == 0 { "  (latest)" } else { "" };
        out += &format!("  {}  {}  {:>3} files  {}{latest}\n", p.id, p.at, p.files, p.host);
    }
    out
}
