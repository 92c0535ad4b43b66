//! The configuration file: its keys, their defaults, and errors that point at the line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dirs::Dirs;
use crate::error::{Error, Result};

/// The documented configuration; parsing it must give exactly [`Config::default`].
pub const DOCUMENTED: &str = include_str!("../config/dreamerd.toml");

/// The whole configuration. Every key is optional.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub push: PushConfig,
    pub store: StoreConfig,
    pub notify: NotifyConfig,
    pub watch: WatchConfig,
    pub check: CheckConfig,
    pub database: DatabaseConfig,
    pub retention: RetentionConfig,
    pub log: LogConfig,
}

/// `[check]`: `dreamerd check`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// A watching daemon is asked to vouch for the folder only when its last scan here saw at least this many files
    /// (below that, stat'ing them costs less than the round trip); 0: always asked.
    pub vouch_min_files: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig { vouch_min_files: 500 }
    }
}

/// `[retention]`: how long quarantined files are kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub quarantine_days: u64,
    pub auto_prune: bool,
    /// Database copies kept per checkout (the newest), at most this old and this large in total.
    pub database_copies: usize,
    pub database_copy_days: u64,
    pub database_copy_max_bytes: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            quarantine_days: 30,
            auto_prune: true,
            database_copies: 10,
            database_copy_days: 30,
            database_copy_max_bytes: 4 << 30,
        }
    }
}

/// `[log]`: the background daemon's log file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub max_bytes: u64,
    pub files: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { max_bytes: 10 << 20, files: 3 }
    }
}

/// `[database]`: the SQLite database drizzle-kit migrates (read only, for drift checks and diagnosis).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: Option<String>,
    /// Copy a SQLite database before every migrate (and guard its rows after).
    pub copy: bool,
    /// A database larger than this is migrated without a copy (with a warning).
    pub copy_max_bytes: u64,
    /// How long the copy waits for another process's write transaction.
    pub copy_wait_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: None, copy: true, copy_max_bytes: 1 << 30, copy_wait_secs: 30 }
    }
}

/// `[push]`: how drizzle-kit is run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    pub generate: Vec<String>,
    pub migrate: Vec<String>,
    /// `dreamerd up`: drizzle-kit's `up`, which upgrades outdated snapshots.
    pub up: Vec<String>,
    pub timeout_secs: u64,
}

/// `[store]`: where backups live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: Option<String>,
    /// An S3-compatible endpoint other than AWS (MinIO, R2, Ceph...): `https://host:port`.
    pub endpoint: Option<String>,
    pub region: String,
    /// Whether an `http://` endpoint is allowed (never for AWS itself).
    pub allow_http: bool,
    /// The named profile of `~/.aws/credentials` and `~/.aws/config` to take credentials from (else `AWS_PROFILE`,
    /// else `default`).
    pub profile: Option<String>,
    /// How long one request to the store is retried (with backoff) before it fails.
    pub timeout_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            endpoint: None,
            region: "us-east-1".into(),
            allow_http: false,
            profile: None,
            timeout_secs: 30,
        }
    }
}

/// `[notify]`: desktop notifications.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    pub desktop: bool,
}

/// `[watch]`: the daemon's file watching.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    pub debounce_ms: u64,
    pub on_violation: OnViolation,
    /// How long one project's scan may take before the daemon reports it as stalled (it goes on with the others).
    pub scan_limit_secs: u64,
}

/// What the daemon does when it finds drizzle/ changed by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Log a warning and show a desktop notification.
    #[default]
    Warn,
    /// Also restore drizzle/ to the last push at once, keeping the edited files in quarantine.
    Restore,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig { desktop: true }
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig { debounce_ms: 100, on_violation: OnViolation::Warn, scan_limit_secs: 30 }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        let kit = |cmd: &str| vec!["./node_modules/.bin/drizzle-kit".to_string(), cmd.to_string()];
        PushConfig { generate: kit("generate"), migrate: kit("migrate"), up: kit("up"), timeout_secs: 300 }
    }
}

impl Config {
    /// Loads the configuration: `explicit` (from `--config`), else `DREAMERD_CONFIG`, else the XDG file if it
    /// exists, else the embedded defaults. Returns the file that was read, if any.
    pub fn load(explicit: Option<&Path>, dirs: &Dirs) -> Result<(Config, Option<PathBuf>)> {
        let settings = Settings::load(explicit, dirs)?;
        let (config, _) = Config::layered(&settings, None)?;
        Ok((config, settings.file.map(|f| f.origin)))
    }

    /// Parses and validates configuration text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| located_error(text, origin, &e))?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |key: &str, why: &str| Error::Config {
            message: format!("{}: key {key}: {why}", origin.display()),
        };
        if self.push.generate.is_empty() || self.push.generate[0].is_empty() {
            return Err(bad(
                "push.generate",
                "must name a program, e.g. [\"./node_modules/.bin/drizzle-kit\", \"generate\"]",
            ));
        }
        if self.push.migrate.is_empty() || self.push.migrate[0].is_empty() {
            return Err(bad(
                "push.migrate",
                "must name a program, e.g. [\"./node_modules/.bin/drizzle-kit\", \"migrate\"]",
            ));
        }
        if self.push.up.is_empty() || self.push.up[0].is_empty() {
            return Err(bad(
                "push.up",
                "must name a program, e.g. [\"./node_modules/.bin/drizzle-kit\", \"up\"]",
            ));
        }
        if self.push.timeout_secs == 0 {
            return Err(bad("push.timeout_secs", "must be at least 1"));
        }
        if self.log.max_bytes < 1024 {
            return Err(bad("log.max_bytes", "must be at least 1024"));
        }
        if let Some(url) = &self.store.url {
            StoreLocation::parse(url).map_err(|why| bad("store.url", &why))?;
        }
        if let Some(endpoint) = &self.store.endpoint {
            let scheme_ok = endpoint.starts_with("https://") || endpoint.starts_with("http://");
            if !scheme_ok || endpoint.contains('@') {
                return Err(bad(
                    "store.endpoint",
                    "must be an https:// (or, with store.allow_http, http://) URL without credentials",
                ));
            }
            if endpoint.starts_with("http://") && !self.store.allow_http {
                return Err(bad(
                    "store.endpoint",
                    "is http://: set store.allow_http = true to allow a store without TLS",
                ));
            }
        }
        if self.store.timeout_secs == 0 {
            return Err(bad("store.timeout_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// Where the backup store is, with the default filled in.
    pub fn store_location(&self, dirs: &Dirs) -> StoreLocation {
        match &self.store.url {
            // validate() has already accepted it.
            Some(url) => match StoreLocation::parse(url) {
                Ok(StoreLocation::S3(mut s3)) => {
                    s3.endpoint.clone_from(&self.store.endpoint);
                    s3.region.clone_from(&self.store.region);
                    s3.allow_http = self.store.allow_http;
                    s3.profile.clone_from(&self.store.profile);
                    s3.timeout_secs = self.store.timeout_secs;
                    StoreLocation::S3(s3)
                }
                Ok(local) => local,
                Err(_) => StoreLocation::Local(dirs.default_store()),
            },
            None => StoreLocation::Local(dirs.default_store()),
        }
    }
}

/// One source of settings: TOML text and the file it came from.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Layer {
    pub origin: PathBuf,
    pub text: String,
}

/// The configuration file a command found: its text, and whether it was named explicitly (`--config`,
/// `DREAMERD_CONFIG`), which makes it win over the project file for the keys it sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Settings {
    pub file: Option<Layer>,
    pub explicit: bool,
}

/// Keys only the daemon applies, when it starts.
pub const DAEMON_ONLY: &[&str] = &["watch", "notify", "log", "retention"];

impl Settings {
    /// The configuration file named by `--config` (`explicit`), else `DREAMERD_CONFIG`, else the XDG file if it
    /// exists; `None` inside when there is none. The file is checked as it is loaded.
    pub fn load(explicit: Option<&Path>, dirs: &Dirs) -> Result<Settings> {
        let named = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("DREAMERD_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
        let is_explicit = named.is_some();
        let path = match named {
            Some(p) => std::path::absolute(&p).unwrap_or(p),
            None if dirs.config_file.exists() => dirs.config_file.clone(),
            None => return Ok(Settings::default()),
        };
        let read = crate::safefs::read_file(&path, 1 << 20, true).and_then(|bytes| {
            let bytes = bytes.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
            String::from_utf8(bytes)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
        });
        let text = read.map_err(|e| Error::Config {
            message: format!("cannot read the configuration file {}: {e}", path.display()),
        })?;
        Config::parse(&text, &path)?;
        Ok(Settings { file: Some(Layer { origin: path, text }), explicit: is_explicit })
    }

    /// The keys of daemon-only tables the file sets (`watch.debounce_ms`...).
    pub fn daemon_only_keys(&self) -> Vec<String> {
        let Some(file) = &self.file else { return Vec::new() };
        let table: toml::Table = toml::from_str(&file.text).unwrap_or_default();
        DAEMON_ONLY
            .iter()
            .filter_map(|t| table.get(*t).and_then(|v| v.as_table()).map(|keys| (t, keys)))
            .flat_map(|(t, keys)| keys.keys().map(move |k| format!("{t}.{k}")))
            .collect()
    }
}

impl Config {
    /// The configuration of one operation: the defaults, then the user's file, then the project file's settings,
    /// then an explicit file (`--config`), each key of a later layer winning. Returns it with the files used.
    pub fn layered(settings: &Settings, project: Option<&Layer>) -> Result<(Config, Vec<PathBuf>)> {
        let mut layers: Vec<&Layer> = Vec::new();
        if !settings.explicit {
            layers.extend(settings.file.as_ref());
        }
        layers.extend(project);
        if settings.explicit {
            layers.extend(settings.file.as_ref());
        }
        let mut merged = toml::Table::new();
        for layer in &layers {
            Config::parse(&layer.text, &layer.origin)?;
            let table: toml::Table = toml::from_str(&layer.text).expect("parsed just above");
            deep_merge(&mut merged, table);
        }
        let text = toml::to_string(&merged).expect("a table serialises");
        let config = Config::parse(&text, Path::new("the merged configuration"))?;
        Ok((config, layers.iter().map(|l| l.origin.clone()).collect()))
    }
}

/// Merges `from` into `into`, tables key by key, anything else replaced.
fn deep_merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(key, v);
            }
        }
    }
}

/// A parsed `store.url`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreLocation {
    /// `file:///abs/path`
    Local(PathBuf),
    /// `s3://bucket/prefix`, with the `[store]` keys that say how to reach it.
    S3(S3Location),
}

/// An S3-compatible store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub allow_http: bool,
    pub profile: Option<String>,
    pub timeout_secs: u64,
}

impl S3Location {
    /// `s3://bucket/prefix`, and the endpoint when it is not AWS: for messages, never with credentials.
    pub fn describe(&self) -> String {
        let url = if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        };
        match &self.endpoint {
            Some(e) => format!("{url} at {e}"),
            None => url,
        }
    }
}

impl StoreLocation {
    /// Parses a store URL, saying what is wrong with it otherwise.
    pub fn parse(url: &str) -> std::result::Result<StoreLocation, String> {
        if let Some(path) = url.strip_prefix("file://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("{url:?} must be an absolute file:///path"));
            }
            return Ok(StoreLocation::Local(path));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !valid_bucket {
                return Err(format!(
                    "{url:?}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p.is_empty() || p == "." || p == "..") && !prefix.is_empty() {
                return Err(format!("{url:?}: the prefix after the bucket must be plain folder names"));
            }
            return Ok(StoreLocation::S3(S3Location {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                endpoint: None,
                region: "us-east-1".into(),
                allow_http: false,
                profile: None,
                timeout_secs: 30,
            }));
        }
        Err(format!("{url:?} is not a store URL: use file:///abs/path or s3://bucket/prefix"))
    }
}

/// Turns a TOML error into one that names the file, the line and the dotted key.
fn located_error(text: &str, origin: &Path, err: &toml::de::Error) -> Error {
    let message = err.message().trim().to_string();
    let Some(span) = err.span() else {
        return Error::Config { message: format!("{}: {message}", origin.display()) };
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(String::from)
        .or_else(|| line.find('=').map(|eq| line[..eq].trim().trim_matches('"').to_string()));
    let dotted = match (section, key) {
        // An error on a table header names the table itself.
        (_, Some(k)) if line.trim_start().starts_with('[') => Some(k),
        (Some(s), Some(k)) => Some(format!("{s}.{k}")),
        (None, k) => k,
        (Some(s), None) => Some(s),
    };
    let key_part = dotted.map(|k| format!(", key {k}")).unwrap_or_default();
    Error::Config { message: format!("{}: line {line_no}{key_part}: {message}", origin.display()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_file_is_exactly_the_defaults() {
        let parsed = Config::parse(DOCUMENTED, Path::new("config/dreamerd.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[push]\ntimeout_secs = 5\ncolour = \"red\"\n";
        let err = Config::parse(text, Path::new("/x/c.toml")).unwrap_err().to_string();
        assert!(err.contains("/x/c.toml: line 3, key push.colour"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn unknown_table_is_named() {
        let err = Config::parse("[pushh]\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("line 1, key pushh"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let text = "[watch]\n\ndebounce_ms = \"fast\"\n";
        let err = Config::parse(text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("line 3, key watch.debounce_ms"), "{err}");
    }

    #[test]
    fn store_urls() {
        assert!(StoreLocation::parse("file:///srv/store").is_ok());
        assert!(StoreLocation::parse("file://relative").is_err());
        assert!(StoreLocation::parse("ftp://x").is_err());
        let err = Config::parse("[store]\nurl = \"nope\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("key store.url"));
    }

    #[test]
    fn empty_argv_is_refused() {
        let err = Config::parse("[push]\ngenerate = []\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("push.generate"));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn layers_win_in_order_and_an_explicit_file_wins_over_the_project() {
        let user = Layer {
            origin: "/u.toml".into(),
            text: "[push]\ntimeout_secs = 7\n[watch]\ndebounce_ms = 5\n".into(),
        };
        let project = Layer { origin: "/p/.dreamerd.toml".into(), text: "[push]\ntimeout_secs = 9\n".into() };
        let implicit = Settings { file: Some(user.clone()), explicit: false };
        let (c, used) = Config::layered(&implicit, Some(&project)).unwrap();
        assert_eq!(c.push.timeout_secs, 9, "the project file wins over the user's file");
        assert_eq!(c.watch.debounce_ms, 5);
        assert_eq!(used.len(), 2);
        let explicit = Settings { file: Some(user), explicit: true };
        let (c, _) = Config::layered(&explicit, Some(&project)).unwrap();
        assert_eq!(c.push.timeout_secs, 7, "--config wins for the keys it sets");
        assert_eq!(explicit.daemon_only_keys(), ["watch.debounce_ms"]);
    }

    #[test]
    fn on_violation_values() {
        let c = Config::parse("[watch]\non_violation = \"restore\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.watch.on_violation, OnViolation::Restore);
        let err = Config::parse("[watch]\non_violation = \"panic\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("key watch.on_violation"), "{err}");
    }
}
