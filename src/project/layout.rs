//! What a drizzle config resolves to (the migration folder, the schema, the dialect, the migrations table),
//! evaluated the way drizzle-kit evaluates it: by the project's own JavaScript runtime, in the folder where
//! drizzle-kit runs, with the environment of the command that asked.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{NullSink, runner};
use crate::safefs::{self, Folder};

/// The script run by node: registers drizzle-kit's own TypeScript loader (tsx) and requires the config, as
/// drizzle-kit 0.31 does, then prints what dreamerd needs after a marker line.
const EVALUATOR: &str = include_str!("evaluate.js");
const MARKER: &str = "@@dreamerd-config@@";
/// How long evaluating a config may take.
const EVALUATE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest config read statically.
const MAX_CONFIG: u64 = 1 << 20;

/// Config file names drizzle-kit finds by itself in its working folder, in its order of preference.
pub const FOUND_BY_DRIZZLE_KIT: &[&str] = &["drizzle.config.ts", "drizzle.config.js", "drizzle.config.json"];
/// The names that make a folder a project root (drizzle-kit needs `--config` for `.mjs` and `.cjs`).
pub const CONFIG_NAMES: &[&str] = &[
    "drizzle.config.ts",
    "drizzle.config.js",
    "drizzle.config.mjs",
    "drizzle.config.cjs",
    "drizzle.config.json",
];

/// The environment of the command that asked: evaluation and drizzle-kit run with it, never with the daemon's.
pub type Env = BTreeMap<String, String>;

/// Where a project's files are, as its config says. Paths are relative to the project root and use `/`, so the
/// layout can be recorded in the committed project file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The drizzle config.
    pub config: String,
    /// Where drizzle-kit runs: the folder of the package.json that owns the config ("" for the root).
    pub workdir: String,
    /// The migration folder (`out`, default `drizzle`).
    pub out: String,
    /// The schema as the config names it (files, folders or globs), relative to `workdir`.
    pub schema: Vec<String>,
    pub dialect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `migrations.table` (default `__drizzle_migrations`).
    pub table: String,
    /// `migrations.schema` (default `drizzle`; PostgreSQL only).
    pub table_schema: String,
}

impl Layout {
    /// The layout dreamerd 0.1.0 assumed for every project: `drizzle/`, `src/schema.ts`, SQLite.
    pub fn legacy(config: &str) -> Layout {
        Layout {
            config: config.to_string(),
            workdir: String::new(),
            out: "drizzle".into(),
            schema: vec!["src/schema.ts".into()],
            dialect: "sqlite".into(),
            driver: None,
            table: "__drizzle_migrations".into(),
            table_schema: "drizzle".into(),
        }
    }
}

/// How a layout was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The config was run by the project's runtime, as drizzle-kit runs it.
    Evaluated,
    /// A JSON config, read as it is.
    Static,
    /// The config could not be evaluated here; the layout recorded by the last push is used.
    Recorded,
}

/// A value that must never be printed, logged or persisted (a database URL may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that needs it (opening the database).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// A resolved config.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub layout: Layout,
    pub source: Source,
    /// `dbCredentials.url`, in memory only.
    pub db_url: Option<Secret>,
    /// Files the config read (itself, what it imported, the `.env` files beside it): a change to any of them
    /// changes what it resolves to.
    pub inputs: Vec<PathBuf>,
    /// The environment variables the evaluation read (`PATH` always: it chooses the runtime); `None` when it listed
    /// the whole environment.
    pub env_read: Option<Vec<String>>,
}

/// What the evaluator prints.
#[derive(Deserialize)]
struct Printed {
    config: Option<RawConfig>,
    #[serde(default)]
    loaded: Vec<PathBuf>,
    /// The environment variables read; absent when the whole environment was listed.
    #[serde(default)]
    env: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    out: Option<String>,
    schema: Option<OneOrMany>,
    dialect: Option<String>,
    driver: Option<String>,
    db_credentials: Option<serde_json::Value>,
    migrations: Option<RawMigrations>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawMigrations {
    table: Option<String>,
    schema: Option<String>,
}

/// The folder where drizzle-kit runs for `config`: that of the nearest package.json above it (where `npm run`
/// and `bun run` run scripts), else the config's own folder.
pub fn workdir_of(config: &Path) -> PathBuf {
    let dir = config.parent().unwrap_or(Path::new("/"));
    dir.ancestors().find(|d| safefs::is_regular_file(&d.join("package.json"))).unwrap_or(dir).to_path_buf()
}

/// Where drizzle-kit is installed for `workdir`: the first `node_modules/drizzle-kit` above it, as node resolves
/// it (a monorepo hoists it to its root).
pub fn drizzle_kit_dir(workdir: &Path) -> Option<PathBuf> {
    workdir
        .ancestors()
        .map(|d| d.join("node_modules/drizzle-kit"))
        .find(|d| safefs::is_regular_file(&d.join("package.json")) || d.join("package.json").is_file())
}

/// The version of the drizzle-kit installed for `workdir` (from its package.json; node_modules may be links, as pnpm
/// makes them, so this one read follows them, capped and never blocking).
pub fn drizzle_kit_version(workdir: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Package {
        version: String,
    }
    let dir = drizzle_kit_dir(workdir)?;
    let bytes = safefs::read_file(&dir.join("package.json"), 1 << 20, true).ok()??;
    let version = serde_json::from_slice::<Package>(&bytes).ok()?.version;
    (version.len() <= 64 && version.chars().all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c)))
        .then_some(version)
}

/// `a/./b/../c` as `a/c`, without touching the filesystem (the folder may not exist yet).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `path` relative to `base` with `/`, `..` where it lies outside.
pub fn relative(path: &Path, base: &Path) -> String {
    let (path, base) = (normalize(path), normalize(base));
    let common = path.components().zip(base.components()).take_while(|(a, b)| a == b).count();
    let ups = base.components().count() - common;
    let mut parts: Vec<String> = vec!["..".to_string(); ups];
    parts.extend(path.components().skip(common).map(|c| c.as_os_str().to_string_lossy().into_owned()));
    parts.join("/")
}

fn trim_dot(p: &str) -> String {
    let p = p.strip_prefix("./").unwrap_or(p);
    p.trim_end_matches('/').to_string()
}

/// Cached evaluations: (config, environment) to the inputs it read, their fingerprint and the result.
type CacheMap = HashMap<(PathBuf, blake3::Hash), (blake3::Hash, Resolved)>;

fn cache() -> &'static Mutex<CacheMap> {
    static CACHE: std::sync::OnceLock<Mutex<CacheMap>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A hash of the bytes of `files` (a missing file counts as missing).
#[cfg(test)]
pub(super) fn fingerprint(files: &[PathBuf]) -> blake3::Hash {
    fingerprint_with(files, &mut |f| content_hash(f))
}

/// [`fingerprint`] with each file's content hash from `hash_of` (`None`: not a readable regular file).
fn fingerprint_with(
    files: &[PathBuf],
    hash_of: &mut dyn FnMut(&Path) -> Option<blake3::Hash>,
) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match hash_of(f) {
            Some(hash) => {
                h.update(b"\x01");
                h.update(hash.as_bytes());
            }
            None => {
                h.update(b"\x00");
            }
        }
    }
    h.finalize()
}

fn content_hash(file: &Path) -> Option<blake3::Hash> {
    match safefs::read_file(file, MAX_CONFIG * 16, true) {
        Ok(Some(bytes)) => Some(blake3::hash(&bytes)),
        _ => None,
    }
}

fn env_hash(env: Option<&Env>) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for (k, v) in env.into_iter().flatten() {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\0");
    }
    h.finalize()
}

/// The `.env*` files in `dir` (dotenv reads them from drizzle-kit's working folder).
fn env_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".env"))
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Evaluates the config at `config` (canonical) for the project at `root`, as drizzle-kit would with `env` (the
/// asking command's environment; `None` for work the daemon does by itself, which then gets only PATH and HOME).
/// Cached by the config, the files it read, the `.env` files and the environment.
pub fn evaluate(root: &Path, config: &Path, env: Option<&Env>) -> Result<Resolved, String> {
    let key = (config.to_path_buf(), env_hash(env));
    // Each file is read once however many fingerprints below ask for it (one per evaluation kept on disk, and the
    // print of the one taken), the folder is listed and drizzle-kit found once.
    let workdir = workdir_of(config);
    let hashes = std::cell::RefCell::new(HashMap::<PathBuf, Option<blake3::Hash>>::new());
    let envs = std::cell::OnceCell::new();
    let kit = std::cell::OnceCell::new();
    let print_of = |inputs: &[PathBuf], with_kit: bool| {
        let mut files = inputs.to_vec();
        files.extend(envs.get_or_init(|| env_files(&workdir)).iter().cloned());
        if with_kit {
            files.extend(
                kit.get_or_init(|| drizzle_kit_dir(&workdir).map(|k| k.join("package.json"))).clone(),
            );
        }
        files.sort();
        files.dedup();
        let mut hashes = hashes.borrow_mut();
        fingerprint_with(&files, &mut |f| *hashes.entry(f.to_path_buf()).or_insert_with(|| content_hash(f)))
    };
    // What the config read, and the .env files there are now (a new one may change it too).
    let watched = |inputs: &[PathBuf]| print_of(inputs, false);
    if let Some((print, resolved)) = cache().lock().expect("cache").get(&key).cloned()
        && watched(&resolved.inputs) == print
    {
        return Ok(resolved);
    }
    // Between commands: the evaluation kept on disk, valid while nothing it read changed (nor drizzle-kit).
    let salt = format!("{} {}", env!("CARGO_PKG_VERSION"), blake3::hash(EVALUATOR.as_bytes()).to_hex());
    let depends = |inputs: &[PathBuf]| print_of(inputs, true);
    let resolved = match super::cache::lookup(&salt, config, env, depends) {
        Some(resolved) => resolved,
        None => {
            let resolved = evaluate_uncached(root, config, env)?;
            // The evaluation read the files afresh: so does its fingerprint.
            hashes.borrow_mut().clear();
            super::cache::store(&salt, config, env, &resolved, depends);
            resolved
        }
    };
    let print = watched(&resolved.inputs);
    cache().lock().expect("cache").insert(key, (print, resolved.clone()));
    Ok(resolved)
}

fn evaluate_uncached(root: &Path, config: &Path, env: Option<&Env>) -> Result<Resolved, String> {
    let workdir = workdir_of(config);
    let shown = relative(config, root);
    let (raw, loaded, env_read, source) = if config.extension().is_some_and(|e| e == "json") {
        let folder = Folder::open(config.parent().unwrap_or(Path::new("/")))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{shown} does not exist"))?;
        let name = config.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let bytes = folder
            .read(&name, MAX_CONFIG)
            .map_err(|e| e.to_string())?
            .ok_or(format!("{shown} does not exist"))?;
        let raw: RawConfig =
            serde_json::from_slice(&bytes).map_err(|e| format!("{shown} is not a drizzle config: {e}"))?;
        (raw, vec![config.to_path_buf()], Some(Vec::new()), Source::Static)
    } else {
        let (raw, loaded, env_read) = run_evaluator(config, &workdir, env, &shown)?;
        let env_read = env_read.map(|mut names| {
            names.push("PATH".into());
            names.sort();
            names.dedup();
            names
        });
        (raw, loaded, env_read, Source::Evaluated)
    };
    let dialect = raw.dialect.clone().ok_or_else(|| {
        format!("{shown} names no dialect (drizzle-kit says: Please specify 'dialect' param in config file)")
    })?;
    let schema = match &raw.schema {
        Some(OneOrMany::One(s)) => vec![trim_dot(s)],
        Some(OneOrMany::Many(v)) => v.iter().map(|s| trim_dot(s)).collect(),
        None => return Err(format!("{shown} names no schema")),
    };
    let out_dir = normalize(&workdir.join(raw.out.as_deref().unwrap_or("drizzle")));
    // `url`, or the parts a server database may be given as (host, port, user, password, database, ssl).
    let url = raw.db_credentials.as_ref().and_then(|c| {
        c.get("url")
            .and_then(|u| u.as_str())
            .map(String::from)
            .or_else(|| crate::drizzle::server::url_from_parts(&dialect, c))
    });
    // bun lists its `-e` script as `[eval]`: only real files are inputs.
    let mut inputs: Vec<PathBuf> = loaded.into_iter().filter(|p| p.is_absolute() && p.exists()).collect();
    inputs.extend(env_files(&workdir));
    inputs.sort();
    inputs.dedup();
    let migrations = raw.migrations.as_ref();
    Ok(Resolved {
        layout: Layout {
            config: shown,
            workdir: relative(&workdir, root),
            out: relative(&out_dir, root),
            schema,
            dialect,
            driver: raw.driver.clone(),
            table: migrations.and_then(|m| m.table.clone()).unwrap_or_else(|| "__drizzle_migrations".into()),
            table_schema: migrations.and_then(|m| m.schema.clone()).unwrap_or_else(|| "drizzle".into()),
        },
        source,
        db_url: url.map(Secret::new),
        inputs,
        env_read,
    })
}

/// What the evaluator found: the config, the files it loaded, the environment variables it read (`None`: all).
type Evaluated = (RawConfig, Vec<PathBuf>, Option<Vec<String>>);

/// Runs the evaluator with node in `workdir`.
fn run_evaluator(config: &Path, workdir: &Path, env: Option<&Env>, shown: &str) -> Result<Evaluated, String> {
    let mut run_env: Env = match env {
        Some(e) => e.clone(),
        None => ["PATH", "HOME"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect(),
    };
    run_env.remove("NODE_OPTIONS");
    let kit = drizzle_kit_dir(workdir);
    // The project's own runtime: bun where it uses bun (a bun.lock above it), else node; either where the other is
    // missing from the command's PATH.
    let path = run_env.get("PATH").cloned().unwrap_or_default();
    let has = |name: &str| runner::find_on_path(name, &path).is_some();
    let uses_bun = workdir.ancestors().any(|d| d.join("bun.lock").is_file() || d.join("bun.lockb").is_file());
    let runtime = match (uses_bun, has("bun"), has("node")) {
        (true, true, _) | (_, true, false) => "bun",
        _ => "node",
    };
    let argv = vec![
        runtime.to_string(),
        "-e".into(),
        EVALUATOR.into(),
        config.to_string_lossy().into_owned(),
        kit.as_ref().map(|k| k.to_string_lossy().into_owned()).unwrap_or_default(),
    ];
    let out = runner::run_with(&argv, workdir, EVALUATE_TIMEOUT, &NullSink, None, Some(&run_env), |_| {})
        .map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::NotFound {
                format!("cannot evaluate {shown}: neither node nor bun is on the PATH of the command")
            } else {
                format!("cannot evaluate {shown}: {}", e.error)
            }
        })?;
    let printed = out.stdout.lines().rev().find_map(|l| l.strip_prefix(MARKER));
    let Some(printed) = printed else {
        let why = out
            .stderr
            .lines()
            .map(str::trim)
            .find(|l| l.contains("Error") || l.contains("error"))
            .or_else(|| out.stderr.lines().map(str::trim).find(|l| !l.is_empty()))
            .unwrap_or("it printed nothing");
        let hint = if kit.is_none() { " (drizzle-kit is not installed here: run npm install)" } else { "" };
        return Err(format!("cannot evaluate {shown}{hint}: {why}"));
    };
    let printed: Printed = serde_json::from_str(printed)
        .map_err(|e| format!("cannot evaluate {shown}: unexpected output: {e}"))?;
    let raw = printed.config.ok_or_else(|| format!("{shown} exports no config"))?;
    Ok((raw, printed.loaded, printed.env))
}

/// The schema files a layout names, as drizzle-kit finds them: a file, the files of a folder (not its
/// subfolders), or the files a glob matches; sorted, without links.
pub fn schema_files(root: &Path, layout: &Layout) -> Vec<PathBuf> {
    let workdir = normalize(&root.join(&layout.workdir));
    let mut out = Vec::new();
    for pattern in &layout.schema {
        if pattern.contains(['*', '?', '[', '{']) {
            let Ok(glob) = globset::GlobBuilder::new(pattern).literal_separator(true).build() else {
                continue;
            };
            let matcher = glob.compile_matcher();
            let base: PathBuf = Path::new(pattern)
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[', '{']))
                .collect();
            walk_files(&workdir.join(&base), &mut |file| {
                if let Ok(rel) = file.strip_prefix(&workdir)
                    && matcher.is_match(rel)
                {
                    out.push(file.to_path_buf());
                }
            });
        } else {
            let path = normalize(&workdir.join(pattern));
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {
                    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                        .map(|d| {
                            d.flatten()
                                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                                .map(|e| e.path())
                                .collect()
                        })
                        .unwrap_or_default();
                    out.append(&mut files);
                }
                _ => out.push(path),
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every regular file below `dir`, links and `node_modules` left out.
fn walk_files(dir: &Path, each: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() && e.file_name() != "node_modules" && e.file_name() != ".git" {
            walk_files(&e.path(), each);
        } else if t.is_file() {
            each(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/r/a/b"), Path::new("/r")), "a/b");
        assert_eq!(relative(Path::new("/r"), Path::new("/r")), "");
        assert_eq!(relative(Path::new("/x/y"), Path::new("/r/s")), "../../x/y");
        assert_eq!(normalize(Path::new("/r/./a/../b")), Path::new("/r/b"));
    }

    #[test]
    fn schema_as_file_folder_and_glob() {
        let d = tempfile::tempdir().unwrap();
        for f in ["src/schema/a.ts", "src/schema/b.ts", "src/schema/sub/c.ts", "db/one.ts"] {
            std::fs::create_dir_all(d.path().join(f).parent().unwrap()).unwrap();
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let mut l = Layout::legacy("drizzle.config.ts");
        l.schema = vec!["src/schema".into()];
        let names = |l: &Layout| -> Vec<String> {
            schema_files(d.path(), l).iter().map(|p| relative(p, d.path())).collect()
        };
        assert_eq!(names(&l), ["src/schema/a.ts", "src/schema/b.ts"]);
        l.schema = vec!["src/schema/*.ts".into(), "db/one.ts".into()];
        assert_eq!(names(&l), ["db/one.ts", "src/schema/a.ts", "src/schema/b.ts"]);
        l.schema = vec!["src/**/*.ts".into()];
        assert_eq!(names(&l), ["src/schema/a.ts", "src/schema/b.ts", "src/schema/sub/c.ts"]);
    }

    #[test]
    fn a_json_config_is_read_as_it_is() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("drizzle.config.json"),
            r#"{"dialect":"sqlite","out":"./migrations","schema":["./db/a.ts"],"dbCredentials":{"url":"file:x.db"}}"#,
        )
        .unwrap();
        let r = evaluate(d.path(), &d.path().join("drizzle.config.json"), None).unwrap();
        assert_eq!(r.source, Source::Static);
        assert_eq!(r.layout.out, "migrations");
        assert_eq!(r.layout.schema, ["db/a.ts"]);
        assert_eq!(r.db_url.unwrap().expose(), "file:x.db");
        assert_eq!(format!("{:?}", Secret::new("postgres://u:pw@h/d".into())), "<secret>");
    }
}
