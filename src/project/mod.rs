//! A drizzle project: where its root is, which drizzle config it uses, what that config resolves to (the
//! migration folder, the schema, the database), and its identity in the committed project file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod cache;
pub mod layout;

pub use layout::{Env, Layout, Secret, Source};

use crate::error::{Error, IoContext, Result, check_format};
use crate::fsutil;
use crate::safefs::Folder;
use crate::store::valid_id;

/// The project file: identity, the chosen default config, and the layout each config had at its last push.
/// Committed with the project, so a clone finds its backups and a CI without node_modules knows the layout.
pub const ID_FILE: &str = ".dreamerd.toml";

/// The project file's format. 1: `id` only (dreamerd 0.1.0 wrote it without `format`); 2: adds `default`, `layout`
/// and `[configs."path"]` for the other configs of the repository; 3: adds `known_faults` (the historical faults
/// the first push accepted).
pub const PROJECT_FORMAT: u32 = 3;

/// The largest project file read.
const MAX_PROJECT_FILE: u64 = 1 << 20;

/// The project file as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    #[serde(default = "first_format")]
    pub format: u32,
    /// The identity of the default config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The config commands use when none is named (relative to the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// The default config's layout at its last push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// Every other config of the repository, by its path relative to the root.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, ConfigEntry>,
    /// The project's own settings, in the shape of the user configuration's tables: `[push]` (the generate and
    /// migrate commands, `timeout_secs`), `[store]` (an `s3://` store shared by the team; never a local path),
    /// `[database]`. They win over the user's file, and lose to an explicit `--config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<toml::Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<toml::Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<toml::Table>,
    /// The default config's known faults: what its history held when dreamerd first pushed it, and migrate
    /// tolerates. Checks leave them out and report only new ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_faults: Vec<KnownFault>,
}

/// One config other than the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_faults: Vec<KnownFault>,
}

/// A fault of a migration folder's history that the first push accepted (see the README's drift codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownFault {
    pub code: String,
    /// The migration concerned (its journal tag, or the stray file's name without `.sql`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// What it was, for people reading the file (and to tell faults apart that name no migration).
    pub message: String,
}

impl KnownFault {
    /// Whether `drift` is this fault.
    pub fn is(&self, drift: &crate::drizzle::Drift) -> bool {
        self.code == drift.code
            && self.migration == drift.migration
            && (self.migration.is_some() || self.message == drift.message)
    }
}

fn first_format() -> u32 {
    1
}

/// A resolved project.
#[derive(Clone)]
pub struct Project {
    /// Canonical absolute root: the folder of the project file and, by default, of the config.
    pub root: PathBuf,
    /// The drizzle config in use, relative to the root; `None` for a project without one (found by its
    /// `src/schema.ts`), which gets the layout dreamerd 0.1.0 assumed.
    pub config: Option<String>,
    pub layout: Layout,
    /// How the layout was obtained (`None` without a config).
    pub source: Option<Source>,
    /// The database URL the config resolved to: in memory only.
    pub db_url: Option<Secret>,
    /// The environment of the command that asked (drizzle-kit runs with it); `None` for work the daemon does by
    /// itself before any command carried one.
    pub env: Option<Env>,
    /// Why the config could not be evaluated. With a recorded layout the project is still guarded (and says so);
    /// without one it is `unresolved`.
    pub problem: Option<String>,
    /// Whether `config` is the root's default config (see [`Project::is_default_config`]).
    default_config: bool,
}

impl std::fmt::Debug for Project {
    // The environment may hold secrets: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Project")
            .field("root", &self.root)
            .field("config", &self.config)
            .field("layout", &self.layout)
            .field("source", &self.source)
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Project {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root && self.config == other.config
    }
}

/// Drizzle configs with other names near `root` (it and its subfolders two deep, `node_modules` left out): files
/// named `*.config.{ts,js,mjs,cjs}` that import drizzle-kit. Relative paths, sorted.
fn candidates(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, depth: usize, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() && depth > 0 && !name.starts_with('.') && name != "node_modules" {
                walk(&e.path(), depth - 1, root, out);
            } else if t.is_file()
                && [".config.ts", ".config.js", ".config.mjs", ".config.cjs"]
                    .iter()
                    .any(|x| name.ends_with(x))
                && crate::safefs::read_file(&e.path(), 1 << 20, false)
                    .ok()
                    .flatten()
                    .is_some_and(|b| String::from_utf8_lossy(&b).contains("drizzle-kit"))
            {
                out.push(layout::relative(&e.path(), root));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, 2, root, &mut out);
    out.sort();
    out
}

/// The default config in a folder, in drizzle-kit's order of preference (then `.mjs`, `.cjs`).
fn default_config_in(dir: &Path) -> Option<&'static str> {
    layout::CONFIG_NAMES.iter().copied().find(|n| crate::safefs::is_regular_file(&dir.join(n)))
}

impl Project {
    /// A project with the layout dreamerd 0.1.0 assumed (`drizzle/`, `src/schema.ts`) and no config.
    pub fn legacy(root: &Path) -> Project {
        Project {
            root: root.to_path_buf(),
            config: None,
            layout: Layout::legacy(""),
            source: None,
            db_url: None,
            env: None,
            problem: None,
            default_config: true,
        }
    }

    /// Finds the project root at `dir` (default: the current directory) or its nearest ancestor holding a drizzle
    /// config, a project file or `src/schema.ts`; and the config to use: `drizzle_config` when given (a path, from
    /// the current directory), else the root's default config. Nothing is evaluated.
    pub fn locate(dir: Option<&Path>, drizzle_config: Option<&Path>) -> Result<(PathBuf, Option<String>)> {
        let (root, explicit) = Project::find_root(dir, drizzle_config)?;
        let config = match explicit {
            Some(c) => Some(layout::relative(&c, &root)),
            None => Project::default_config(&root)?,
        };
        Ok((root, config))
    }

    /// The project root at `dir` (see [`Project::locate`]), and the named config made canonical; no config is
    /// chosen, so a root with several configs is still a root.
    pub fn find_root(
        dir: Option<&Path>,
        drizzle_config: Option<&Path>,
    ) -> Result<(PathBuf, Option<PathBuf>)> {
        let start = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_dir().ctx("read", Path::new("the current directory"))?,
        };
        let canonical = fs::canonicalize(&start).map_err(|e| {
            Error::Usage(format!("cannot use {} as a project directory: {e}", start.display()))
        })?;
        let explicit = match drizzle_config {
            Some(c) => Some(
                fs::canonicalize(c)
                    .map_err(|e| Error::Usage(format!("--drizzle-config {}: {e}", c.display())))?,
            ),
            None => None,
        };
        let is_root = |d: &Path| {
            default_config_in(d).is_some()
                || crate::safefs::is_regular_file(&d.join(ID_FILE))
                || crate::safefs::is_regular_file(&d.join("src/schema.ts"))
        };
        // Else a package whose drizzle configs have other names (`configs/sqlite.config.ts`).
        let root = canonical.ancestors().find(|d| is_root(d)).map(Path::to_path_buf).or_else(|| {
            canonical
                .ancestors()
                .find(|d| {
                    crate::safefs::is_regular_file(&d.join("package.json")) && !candidates(d).is_empty()
                })
                .map(Path::to_path_buf)
        });
        let root = match (root, &explicit) {
            (Some(r), Some(c)) if c.starts_with(&r) => r,
            // A config outside any project: its own folder is the root.
            (_, Some(c)) => layout::workdir_of(c),
            (Some(r), None) => r,
            (None, None) => {
                return Err(Error::Usage(format!(
                    "no drizzle project at or above {}: none of drizzle.config.{{ts,js,mjs,cjs,json}}, {ID_FILE} or \
                     src/schema.ts was found; run dreamerd inside the project, pass its directory, or name the \
                     config with --drizzle-config",
                    canonical.display()
                )));
            }
        };
        Ok((root, explicit))
    }

    /// The config a root uses when none is named: the project file's `default`, else its drizzle.config.*, else
    /// its only listed config. Several and no choice is an error listing them.
    fn default_config(root: &Path) -> Result<Option<String>> {
        let file = ProjectFile::read(root)?.unwrap_or_default();
        if let Some(d) = file.default {
            return Ok(Some(d));
        }
        if let Some(name) = default_config_in(root) {
            return Ok(Some(name.to_string()));
        }
        let mut known: Vec<String> = file.configs.keys().cloned().collect();
        if known.is_empty() && file.id.is_none() {
            known = candidates(root);
        }
        match known.len() {
            0 => Ok(None),
            1 => Ok(known.pop()),
            _ => Err(Error::Usage(format!(
                "{} has several drizzle configs ({}) and none is the default: pass --drizzle-config PATH, or set \
                 default = \"PATH\" in {ID_FILE}",
                root.display(),
                known.join(", ")
            ))),
        }
    }

    /// Resolves the project at `root` with `config`: evaluates the config with `env` (see [`layout::evaluate`]);
    /// when that fails, uses the layout recorded at the last push and says why.
    pub fn resolve(root: &Path, config: Option<&str>, env: Option<Env>) -> Result<Project> {
        let mut project = Project::legacy(root);
        let Some(config) = config else { return Ok(project) };
        project.config = Some(config.to_string());
        project.layout.config = config.to_string();
        project.default_config = Project::decide_default(root, Some(config));
        let path = layout::normalize(&root.join(config));
        match layout::evaluate(root, &path, env.as_ref()) {
            Ok(resolved) => {
                project.layout = resolved.layout;
                project.source = Some(resolved.source);
                project.db_url = resolved.db_url;
            }
            Err(problem) => {
                let recorded =
                    ProjectFile::read(root).ok().flatten().and_then(|f| f.layout_of(config, &project));
                if let Some(layout) = recorded {
                    project.layout = layout;
                    project.source = Some(Source::Recorded);
                }
                project.problem = Some(problem);
            }
        }
        project.env = env;
        Ok(project)
    }

    /// [`Project::locate`] then [`Project::resolve`] with this process's environment (the command's own).
    pub fn discover(dir: Option<&Path>) -> Result<Project> {
        Project::discover_with(dir, None)
    }

    /// [`Project::discover`] with a config named on the command line.
    pub fn discover_with(dir: Option<&Path>, drizzle_config: Option<&Path>) -> Result<Project> {
        let (root, config) = Project::locate(dir, drizzle_config)?;
        Project::resolve(&root, config.as_deref(), Some(std::env::vars().collect()))
    }

    /// The migration folder the last push recorded for this config, when it was recorded.
    pub fn recorded_out(&self) -> Option<String> {
        let file = ProjectFile::read(&self.root).ok()??;
        file.layout_of(self.config.as_deref()?, self).map(|l| l.out)
    }

    /// The project file's settings as a configuration layer.
    pub fn settings(&self) -> Result<Option<crate::config::Layer>> {
        match ProjectFile::read(&self.root)? {
            Some(file) => file.settings_layer(&self.root),
            None => Ok(None),
        }
    }

    /// True when the config could not be evaluated and no layout was recorded: nothing can be guarded.
    pub fn unresolved(&self) -> bool {
        self.problem.is_some() && self.source != Some(Source::Recorded)
    }

    /// Whether this is the root's default config, the one whose identity is the project file's `id` (decided once,
    /// when the project is resolved).
    pub fn is_default_config(&self) -> bool {
        self.default_config
    }

    /// Whether `config` is `root`'s default config: the project file's `default`, else the root's drizzle.config.*,
    /// else (neither exists) a config that is not listed among the others while the file has no `id` yet.
    fn decide_default(root: &Path, config: Option<&str>) -> bool {
        let Some(c) = config else { return true };
        let file = ProjectFile::read(root).ok().flatten().unwrap_or_default();
        match (&file.default, default_config_in(root)) {
            (Some(d), _) => d == c,
            (None, Some(name)) => name == c,
            (None, None) => !file.configs.contains_key(c) && file.id.is_none(),
        }
    }

    /// The migration folder.
    pub fn drizzle(&self) -> PathBuf {
        layout::normalize(&self.root.join(&self.layout.out))
    }

    /// The folder drizzle-kit runs in.
    pub fn workdir(&self) -> PathBuf {
        layout::normalize(&self.root.join(&self.layout.workdir))
    }

    /// The migration folder as messages name it (`migrations/`).
    pub fn out_shown(&self) -> String {
        format!("{}/", self.layout.out)
    }

    /// The schema files, sorted.
    pub fn schema_files(&self) -> Vec<PathBuf> {
        layout::schema_files(&self.root, &self.layout)
    }

    /// The schema as messages name it (`src/db/schema.ts`, or its patterns).
    pub fn schema_shown(&self) -> String {
        self.layout.schema.join(", ")
    }

    /// Paths inside the migration folder that are not migrations: schema files kept there, and the `schema.ts` and
    /// `relations.ts` that `drizzle-kit pull` writes. Never violations, never replaced by a restore.
    pub fn not_migrations(&self) -> Vec<String> {
        let out = self.drizzle();
        let mut names: Vec<String> = self
            .schema_files()
            .iter()
            .filter_map(|f| f.strip_prefix(&out).ok())
            .map(|r| r.to_string_lossy().into_owned())
            .collect();
        names.extend(["schema.ts".to_string(), "relations.ts".to_string()]);
        names.sort();
        names.dedup();
        names
    }

    /// A hash of the schema: the blake3 of the schema file when there is one (as dreamerd 0.1.0 recorded it), else
    /// of every file's path and blake3 in order. Files are read without following a link. `None` when there is
    /// no schema file.
    pub fn schema_hash(&self) -> Result<Option<String>> {
        let files = self.schema_files();
        let mut hashes = Vec::new();
        for file in &files {
            let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else { continue };
            let read = Folder::open(dir).and_then(|f| match f {
                Some(folder) => crate::manifest::hash_in(&folder, &name.to_string_lossy()),
                None => Ok(None),
            });
            if let Some(h) = read.ctx("read", file)? {
                hashes.push((layout::relative(file, &self.root), h));
            }
        }
        Ok(match hashes.len() {
            0 => None,
            1 => Some(hashes.remove(0).1),
            _ => {
                let mut all = blake3::Hasher::new();
                for (path, h) in &hashes {
                    all.update(path.as_bytes());
                    all.update(b"\0");
                    all.update(h.as_bytes());
                    all.update(b"\n");
                }
                Some(all.finalize().to_hex().to_string())
            }
        })
    }

    /// A short, readable key for this checkout and config in the state directory: folder name plus a hash of the
    /// path (and, for a config other than the default, of the config's path).
    pub fn local_key(&self) -> String {
        let name: String = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .take(40)
            .collect();
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.root.as_os_str().as_encoded_bytes());
        if let Some(config) = self.config.as_deref().filter(|_| !self.is_default_config()) {
            hasher.update(b"\0");
            hasher.update(config.as_bytes());
        }
        format!("{name}-{}", &hasher.finalize().to_hex()[..12])
    }

    /// The project's identity, if it has one yet.
    pub fn id(&self) -> Result<Option<String>> {
        let Some(file) = ProjectFile::read(&self.root)? else { return Ok(None) };
        let id = if self.is_default_config() {
            file.id
        } else {
            self.config.as_ref().and_then(|c| file.configs.get(c)).and_then(|e| e.id.clone())
        };
        match id {
            Some(id) if !valid_id(&id) => Err(Error::Config {
                message: format!(
                    "{}: id {id:?} is not a valid project id",
                    self.root.join(ID_FILE).display()
                ),
            }),
            other => Ok(other),
        }
    }

    /// The project's identity, created on first use: a random id in the project file, so two different projects
    /// never share backups (whatever their package names) and a clone of this one finds them.
    pub fn ensure_id(&self) -> Result<String> {
        self.ensure_id_as(&uuid::Uuid::new_v4().simple().to_string())
    }

    /// The project's identity; if it has none, `id` is written as its identity.
    pub fn ensure_id_as(&self, id: &str) -> Result<String> {
        if let Some(existing) = self.id()? {
            return Ok(existing);
        }
        let path = self.root.join(ID_FILE);
        match ProjectFile::read(&self.root)? {
            None => {
                let mut file = ProjectFile { format: PROJECT_FORMAT, ..ProjectFile::default() };
                self.set_id(&mut file, id);
                // Create-only: another process may win the race, and then its id is the one.
                fsutil::write_new(&path, file.text().as_bytes()).ctx("write", &path)?;
            }
            Some(mut file) => {
                self.set_id(&mut file, id);
                file.write(&self.root)?;
            }
        }
        self.id()?.ok_or_else(|| Error::failed(format!("{} vanished", path.display()), "try again"))
    }

    fn set_id(&self, file: &mut ProjectFile, id: &str) {
        match self.config.as_ref().filter(|_| !self.is_default_config()) {
            Some(c) => file.configs.entry(c.clone()).or_default().id = Some(id.to_string()),
            None => {
                file.id = Some(id.to_string());
                // A default that is not a drizzle.config.* is named, so it stays the default when others come.
                if let Some(c) = &self.config
                    && default_config_in(&self.root) != Some(c.as_str())
                {
                    file.default = Some(c.clone());
                }
            }
        }
    }

    /// Records the layout in the project file (after a push), when it was evaluated and differs from what is there.
    /// The config's known faults (none without a project file).
    pub fn known_faults(&self) -> Result<Vec<KnownFault>> {
        let Some(file) = ProjectFile::read(&self.root)? else { return Ok(Vec::new()) };
        Ok(match self.config.as_ref().filter(|_| !self.is_default_config()) {
            Some(c) => file.configs.get(c).map(|e| e.known_faults.clone()).unwrap_or_default(),
            None => file.known_faults,
        })
    }

    /// Records faults as known for this config (the first push accepted them).
    pub fn record_known_faults(&self, faults: &[crate::drizzle::Drift]) -> Result<()> {
        let Some(mut file) = ProjectFile::read(&self.root)? else { return Ok(()) };
        let slot = match self.config.as_ref().filter(|_| !self.is_default_config()) {
            Some(c) => &mut file.configs.entry(c.clone()).or_default().known_faults,
            None => &mut file.known_faults,
        };
        let before = slot.len();
        for f in faults {
            if !slot.iter().any(|k| k.is(f)) {
                slot.push(KnownFault {
                    code: f.code.clone(),
                    migration: f.migration.clone(),
                    message: f.message.clone(),
                });
            }
        }
        if slot.len() == before {
            return Ok(());
        }
        file.write(&self.root)
    }

    pub fn record_layout(&self) -> Result<()> {
        if !matches!(self.source, Some(Source::Evaluated | Source::Static)) {
            return Ok(());
        }
        let Some(mut file) = ProjectFile::read(&self.root)? else { return Ok(()) };
        let slot = match self.config.as_ref().filter(|_| !self.is_default_config()) {
            Some(c) => &mut file.configs.entry(c.clone()).or_default().layout,
            None => &mut file.layout,
        };
        if slot.as_ref() == Some(&self.layout) {
            return Ok(());
        }
        *slot = Some(self.layout.clone());
        file.write(&self.root)
    }
}

impl ProjectFile {
    /// The project file at `root`, read without following a link; `None` when there is none.
    pub fn read(root: &Path) -> Result<Option<ProjectFile>> {
        // One command asks for it several times (the layout, the id, the settings, the known faults): parsed once
        // per identity, as long as that identity has settled (a rewrite within the same timestamp tick could keep it).
        type Parsed = std::collections::HashMap<PathBuf, (crate::facts::Identity, ProjectFile)>;
        static PARSED: std::sync::Mutex<Option<Parsed>> = std::sync::Mutex::new(None);
        let path = root.join(ID_FILE);
        let identity = crate::facts::identity(&path);
        if let Some(id) = identity
            && let Some((_, file)) = PARSED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_default()
                .get(&path)
                .filter(|(known, _)| *known == id)
        {
            return Ok(Some(file.clone()));
        }
        let parsed = Self::read_afresh(root, &path)?;
        if let (Some(id), Some(file)) = (identity, &parsed)
            && id.settled_at(crate::facts::now_ns())
        {
            PARSED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_default()
                .insert(path, (id, file.clone()));
        }
        Ok(parsed)
    }

    fn read_afresh(root: &Path, path: &Path) -> Result<Option<ProjectFile>> {
        let read = Folder::open(root).and_then(|f| match f {
            Some(folder) => folder.read_string(ID_FILE, MAX_PROJECT_FILE),
            None => Ok(None),
        });
        let text = match read {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e).ctx("read", path),
        };
        let parsed: ProjectFile = toml::from_str(&text).map_err(|e| Error::Config {
            message: format!("{} is not a dreamerd project file: {}", path.display(), e.message().trim()),
        })?;
        check_format(parsed.format, PROJECT_FORMAT, || format!("the project file {}", path.display()))?;
        Ok(Some(parsed))
    }

    /// The project's settings as a configuration layer, `None` when it has none. A store at a local path is refused:
    /// a committed file must not make everyone's backups go to a folder of one machine.
    pub fn settings_layer(&self, root: &Path) -> Result<Option<crate::config::Layer>> {
        let origin = root.join(ID_FILE);
        if let Some(url) = self.store.as_ref().and_then(|s| s.get("url")).and_then(|u| u.as_str())
            && !url.starts_with("s3://")
        {
            return Err(Error::Config {
                message: format!(
                    "{}: key store.url: a committed project file may only name a shared store (s3://...), not {url:?}; \
                     set a local store in your own configuration instead",
                    origin.display()
                ),
            });
        }
        let mut table = toml::Table::new();
        for (key, value) in [("push", &self.push), ("store", &self.store), ("database", &self.database)] {
            if let Some(v) = value {
                table.insert(key.into(), toml::Value::Table(v.clone()));
            }
        }
        if table.is_empty() {
            return Ok(None);
        }
        Ok(Some(crate::config::Layer { origin, text: toml::to_string(&table).expect("a table serialises") }))
    }

    /// The recorded layout of `config`.
    fn layout_of(&self, config: &str, project: &Project) -> Option<Layout> {
        if project.is_default_config() {
            self.layout.clone().filter(|l| l.config == config)
        } else {
            self.configs.get(config).and_then(|e| e.layout.clone())
        }
    }

    fn text(&self) -> String {
        let body =
            toml::to_string(&ProjectFile { format: PROJECT_FORMAT, ..self.clone() }).expect("serialises");
        format!(
            "# dreamerd project file: ties this project to its backups, and records what its drizzle configs\n\
             # resolved to at their last push. Commit this file. Do not copy it into another project.\n{body}"
        )
    }

    fn write(&self, root: &Path) -> Result<()> {
        let path = root.join(ID_FILE);
        fsutil::atomic_write(&path, self.text().as_bytes()).ctx("write", &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_nearest_root_from_a_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("app/src/deep")).unwrap();
        fs::write(dir.path().join("app/drizzle.config.ts"), "").unwrap();
        let p = Project::discover(Some(&dir.path().join("app/src/deep"))).unwrap();
        assert_eq!(p.root, fs::canonicalize(dir.path().join("app")).unwrap());
    }

    #[test]
    fn no_project_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Project::discover(Some(dir.path())).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pa = Project::legacy(a.path());
        let pb = Project::legacy(b.path());
        let id = pa.ensure_id().unwrap();
        assert_eq!(pa.ensure_id().unwrap(), id);
        assert_ne!(pb.ensure_id().unwrap(), id);
        assert!(fs::read_to_string(a.path().join(ID_FILE)).unwrap().contains("format = 3\n"));
        fs::write(a.path().join(ID_FILE), "id = \"../../x\"\n").unwrap();
        assert!(pa.id().is_err());
    }

    #[test]
    fn project_files_of_the_first_release_and_of_a_newer_one() {
        let a = tempfile::tempdir().unwrap();
        let p = Project::legacy(a.path());
        let release = include_str!("../../tests/formats/0.1.0/project/.dreamerd.toml");
        fs::write(a.path().join(ID_FILE), release).unwrap();
        assert_eq!(p.id().unwrap().as_deref(), Some("101d1916aaa745a4b7647f0c28c8525f"));
        // The previous release's file (format 2) is read as it is.
        let previous = include_str!("../../tests/formats/af1d4f6/project/.dreamerd.toml");
        fs::write(a.path().join(ID_FILE), previous).unwrap();
        assert_eq!(p.id().unwrap().as_deref(), Some("fadb9229240c410489fea6e9fe6c9da9"));
        fs::write(a.path().join(ID_FILE), "format = 4\nid = \"abc\"\n").unwrap();
        let err = p.id().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("format 4"), "{err}");
        fs::remove_file(a.path().join(ID_FILE)).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            a.path().join(ID_FILE),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(p.id().unwrap_err().to_string().contains("fifo"));
    }
}
