//! `drizzle/meta/_journal.json` and the snapshots: reading them and finding the faults that make drizzle-kit
//! skip, repeat or invent migrations without a word.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Drift;
use crate::safefs::{self, Folder, SpecialKind};

/// The largest journal, snapshot or migration read (real ones are kilobytes; a 1,000-migration journal is 150 KB).
pub const MAX_FILE: u64 = 64 << 20;

/// How a migration folder is laid out: by drizzle-kit 0.x or by drizzle-kit 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// drizzle-kit 0.x: `meta/_journal.json`, `NNNN_name.sql`, `meta/NNNN_snapshot.json`; migrate applies what is
    /// newer than the newest applied `created_at`.
    Journal,
    /// drizzle-kit 1.0: one folder per migration, `<YYYYMMDDHHMMSS>_<name>/{migration.sql,snapshot.json}`; migrate
    /// applies every folder whose name the database does not hold.
    Folders,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Journal => "journal",
            Layout::Folders => "folders",
        }
    }

    /// Said to people.
    pub fn described(self) -> &'static str {
        match self {
            Layout::Journal => "drizzle-kit 0.x's journal layout (meta/_journal.json)",
            Layout::Folders => "drizzle-kit 1.0's folder-per-migration layout",
        }
    }

    /// The layout of a push, from the paths of its files: `None` for an empty folder.
    pub fn of_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<Layout> {
        let mut found = None;
        for p in paths {
            if p == "meta/_journal.json" {
                return Some(Layout::Journal);
            }
            if p.ends_with("/migration.sql") && p.matches('/').count() == 1 {
                found = Some(Layout::Folders);
            }
        }
        found
    }

    /// The layout a drizzle-kit version writes and reads (`1.0.0-rc.5`: folders; `0.31.11`: journal).
    pub fn of_kit(version: &str) -> Option<Layout> {
        match version.split(['.', '-']).next()?.parse::<u32>().ok()? {
            0 => Some(Layout::Journal),
            _ => Some(Layout::Folders),
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One migration: a journal entry (0.x), or a migration folder (1.0) read as one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    /// The journal's idx; for a migration folder, its place in name order.
    pub idx: i64,
    /// ms since the epoch; `created_at` in the database once applied. A migration folder's is the time its name
    /// starts with (whole seconds), as 1.0's migrator computes it; -1 when the name starts with no time.
    pub when: i64,
    /// The .sql file's name without `.sql`; a migration folder's name (what 1.0's migrator stores as `name`).
    pub tag: String,
    /// Its SQL, relative to the migration folder: `NNNN_name.sql` or `<folder>/migration.sql`.
    #[serde(skip)]
    pub file: String,
    /// sha256 of its SQL, once read (matching rows of a table 1.0 has not upgraded needs it).
    #[serde(skip)]
    pub hash: Option<String>,
}

#[derive(Deserialize)]
struct JournalFile {
    #[serde(default)]
    entries: Vec<Entry>,
}

/// The journal of a drizzle/ folder: `Ok(None)` when there is none (never generated).
pub fn read(drizzle: &Path) -> Result<Option<Vec<Entry>>, String> {
    match Folder::open(drizzle) {
        Ok(Some(folder)) => read_in(&folder),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("{} cannot be read: {e}", drizzle.display())),
    }
}

/// The layout of an open migration folder: `None` when it holds no migration of either kind (never generated).
pub fn layout_in(folder: &Folder) -> Option<Layout> {
    if folder.kind("meta/_journal.json").ok().flatten().is_some() {
        Some(Layout::Journal)
    } else if super::folders::any_migration_folder(folder) {
        Some(Layout::Folders)
    } else {
        None
    }
}

/// [`layout_in`] of the folder at `drizzle`.
pub fn layout(drizzle: &Path) -> Option<Layout> {
    Folder::open(drizzle).ok().flatten().as_ref().and_then(layout_in)
}

/// The migrations of an open migration folder, in the order its migrator reads them: the journal's entries, or the
/// migration folders by name. Every tag is checked to be a plain file name before it is used as a path: a tag like
/// `../x` makes the journal unreadable rather than a way out of the folder.
pub fn read_in(folder: &Folder) -> Result<Option<Vec<Entry>>, String> {
    let text = match folder.read("meta/_journal.json", MAX_FILE) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(super::folders::entries(folder)),
        Err(e) => return Err(format!("meta/_journal.json cannot be read: {e}")),
    };
    let mut entries = serde_json::from_slice::<JournalFile>(&text)
        .map(|j| j.entries)
        .map_err(|e| format!("meta/_journal.json is not a drizzle journal: {e}"))?;
    if let Some(bad) = entries.iter().find(|e| !safefs::plain_name(&e.tag)) {
        return Err(format!(
            "meta/_journal.json is not a drizzle journal: entry {} has the tag {:?}, which is not a file name",
            bad.idx, bad.tag
        ));
    }
    for e in &mut entries {
        e.file = format!("{}.sql", e.tag);
    }
    Ok(Some(entries))
}

/// A tag is a file name, never a path out of the folder.
fn plain_tag(entry: &Entry) -> Result<(), String> {
    if safefs::plain_name(&entry.tag) {
        Ok(())
    } else {
        Err(format!("{:?} is not a migration name", entry.tag))
    }
}

/// The sha256 of a migration's SQL (what the migrator records), read only when the file changed since it was last
/// hashed.
pub fn sql_hash(folder: &Folder, entry: &Entry) -> Result<Option<String>, String> {
    plain_tag(entry)?;
    crate::facts::cached("sql-sha256", folder, &entry.file, MAX_FILE, super::database::sql_hash)
        .map_err(|e| e.to_string())
}

/// The text of a migration's SQL, as the migrator reads it.
pub fn sql(folder: &Folder, entry: &Entry) -> Result<Option<Vec<u8>>, String> {
    plain_tag(entry)?;
    folder.read(&entry.file, MAX_FILE).map_err(|e| e.to_string())
}

/// The `NNNN` number prefix of a tag or file name.
fn number(name: &str) -> &str {
    name.split('_').next().unwrap_or(name)
}

/// Faults of the journal against the folder: order, duplicates, missing files, strays, the snapshot chain.
pub fn faults(drizzle: &Path) -> Vec<Drift> {
    match Folder::open(drizzle) {
        Ok(Some(folder)) => faults_in(&folder),
        Ok(None) => Vec::new(),
        Err(e) => {
            vec![Drift::new("journal-unreadable", format!("{} cannot be read: {e}", drizzle.display()), None)]
        }
    }
}

/// [`faults`] of an open migration folder, of either layout.
pub fn faults_in(drizzle: &Folder) -> Vec<Drift> {
    if drizzle.kind("meta/_journal.json").ok().flatten().is_none()
        && let Some(faults) = super::folders::faults(drizzle)
    {
        return faults;
    }
    let mut out = journal_faults(drizzle);
    let folders = super::folders::migration_folders(drizzle);
    if let Some(first) = folders.first() {
        out.push(Drift::new(
            "layout-mixed",
            format!(
                "meta/_journal.json and {} drizzle-kit 1.0 migration folder(s) (from {first}) are side by side: \
                 drizzle-kit 0.x ignores the folders, and 1.0's migrator refuses to run while meta/_journal.json \
                 exists",
                folders.len()
            ),
            Some(first),
        ));
    }
    out
}

/// The faults of a folder in the journal layout.
fn journal_faults(drizzle: &Folder) -> Vec<Drift> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(i64::MAX - FUTURE_MS);
    let entries = match read_in(drizzle) {
        Ok(Some(e)) => e,
        Ok(None) => {
            let strays = sql_files(drizzle);
            return strays
                .iter()
                .map(|f| {
                    Drift::new(
                        "sql-not-in-journal",
                        format!("{f} is not in meta/_journal.json (there is none): migrate ignores it"),
                        None,
                    )
                })
                .collect();
        }
        Err(why) => return vec![Drift::new("journal-unreadable", why, None)],
    };
    let mut out = Vec::new();
    for pair in entries.windows(2) {
        if pair[1].when <= pair[0].when {
            out.push(Drift::new(
                "journal-order",
                format!(
                    "journal entry {} has when {} not greater than {} of {}: on a database that applied the \
                     earlier one, the migrator silently skips it",
                    pair[1].tag, pair[1].when, pair[0].when, pair[0].tag
                ),
                Some(&pair[1].tag),
            ));
        }
    }
    let mut idx_seen = BTreeMap::new();
    let mut number_seen: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &entries {
        if let Some(first) = idx_seen.insert(e.idx, &e.tag) {
            out.push(Drift::new(
                "journal-duplicate",
                format!("journal idx {} is used by both {first} and {}", e.idx, e.tag),
                Some(&e.tag),
            ));
        }
        if let Some(first) = number_seen.insert(number(&e.tag), &e.tag) {
            out.push(Drift::new(
                "journal-duplicate",
                format!("migration number {} is used by both {first} and {}", number(&e.tag), e.tag),
                Some(&e.tag),
            ));
        }
    }
    let on_disk = sql_files(drizzle);
    let snapshots_on_disk =
        drizzle.folder("meta").ok().flatten().map(|m| regular_files(&m)).unwrap_or_default();
    let journaled: BTreeSet<String> = entries.iter().map(|e| format!("{}.sql", e.tag)).collect();
    for e in &entries {
        if !on_disk.contains(&format!("{}.sql", e.tag)) {
            out.push(Drift::new(
                "journal-missing-sql",
                format!("journal entry {} has no {}.sql: migrate fails without saying why", e.tag, e.tag),
                Some(&e.tag),
            ));
        }
        let snapshot = format!("meta/{}_snapshot.json", number(&e.tag));
        if !snapshots_on_disk.contains(&snapshot["meta/".len()..]) {
            let newest = entries.last().is_some_and(|last| last.tag == e.tag);
            let why = if newest {
                "it is the newest, so the next generate diffs against an older schema and repeats its changes"
            } else {
                "an old snapshot is never read again, so migrate and generate do not mind"
            };
            out.push(Drift::new(
                "journal-missing-snapshot",
                format!("journal entry {} has no {snapshot}: {why}", e.tag),
                Some(&e.tag),
            ));
        }
        if e.when > now_ms + FUTURE_MS {
            out.push(Drift::new(
                "journal-future",
                format!(
                    "journal entry {} has when {}, more than 5 minutes in the future (made on a machine whose clock \
                     is ahead): every migration generated before that time will be skipped by migrate on a database \
                     that applied it",
                    e.tag, e.when
                ),
                Some(&e.tag),
            ));
        }
    }
    for f in on_disk.difference(&journaled) {
        let same_number = entries.iter().find(|e| number(&e.tag) == number(f));
        let message = match same_number {
            Some(e) => format!(
                "{f} is not in the journal, and {} has the same number {}: migrate ignores {f}",
                e.tag,
                number(f)
            ),
            None => format!("{f} is not in meta/_journal.json: migrate ignores it"),
        };
        out.push(Drift::new("sql-not-in-journal", message, Some(f.trim_end_matches(".sql"))));
    }
    let snapshots = snapshots(drizzle, &mut out);
    out.extend(snapshot_chain(&snapshots, &entries));
    out.extend(snapshot_set(&snapshots, &entries));
    out
}

/// The number of the snapshot whose name sorts last in `meta/` (the one generate diffs against).
pub fn last_snapshot(drizzle: &Path) -> Option<String> {
    let folder = Folder::open(drizzle).ok()??;
    let meta = folder.folder("meta").ok()??;
    meta.entries()
        .ok()?
        .into_iter()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|n| n.ends_with("_snapshot.json"))
        .max()
        .map(|n| number(&n).to_string())
}

/// How far in the future a journal entry's `when` may be (clock skew between machines) before it is a fault.
const FUTURE_MS: i64 = 5 * 60 * 1000;

/// The snapshot version drizzle-kit 0.31 writes for a dialect (`None`: a dialect it is not known for).
pub fn latest_snapshot_version(dialect: &str) -> Option<u32> {
    match dialect {
        "sqlite" | "turso" => Some(6),
        "postgresql" | "pg" => Some(7),
        "mysql" => Some(5),
        "singlestore" => Some(1),
        _ => None,
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    id: String,
    #[serde(rename = "prevId")]
    prev_id: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    dialect: Option<String>,
}

/// One readable snapshot of `meta/`.
struct Snapshot {
    /// Its file name.
    name: String,
    id: String,
    prev_id: String,
    version: Option<u32>,
    dialect: Option<String>,
}

/// Every `meta/NNNN_snapshot.json` that is a regular file, by number, read once; one that cannot be read or parsed is a
/// `snapshot-invalid` fault (drizzle-kit refuses to generate with it).
fn snapshots(drizzle: &Folder, out: &mut Vec<Drift>) -> BTreeMap<String, Snapshot> {
    let mut found = BTreeMap::new();
    let Ok(Some(meta)) = drizzle.folder("meta") else { return found };
    let mut names: Vec<String> = meta
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|n| n.ends_with("_snapshot.json"))
        .collect();
    names.sort();
    for name in names {
        let number = number(&name).to_string();
        let tag = Some(number.as_str());
        // Read and parsed only when it changed since the last check.
        let parsed = crate::facts::cached("journal-snapshot", &meta, &name, MAX_FILE, |text| {
            serde_json::from_slice::<SnapshotFile>(text).map_err(|e| e.to_string())
        });
        let parsed = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(err) => {
                out.push(Drift::new("snapshot-invalid", format!("meta/{name} cannot be read: {err}"), tag));
                continue;
            }
        };
        match parsed {
            Ok(f) => {
                let version = f.version.as_deref().and_then(|v| v.parse().ok());
                found.insert(
                    number,
                    Snapshot { name, id: f.id, prev_id: f.prev_id, version, dialect: f.dialect },
                );
            }
            Err(err) => out.push(Drift::new(
                "snapshot-invalid",
                format!("meta/{name} is not a drizzle snapshot: {err}"),
                tag,
            )),
        }
    }
    found
}

/// Faults of the set of snapshots as drizzle-kit's generate sees it: it validates every snapshot in `meta/` and diffs
/// against the one whose name sorts last.
fn snapshot_set(snapshots: &BTreeMap<String, Snapshot>, entries: &[Entry]) -> Vec<Drift> {
    let mut out = Vec::new();
    let numbers: BTreeSet<&str> = entries.iter().map(|e| number(&e.tag)).collect();
    let last = snapshots.keys().next_back();
    for (n, snap) in snapshots {
        if !numbers.contains(n.as_str()) {
            let why = if Some(n) == last {
                "it sorts last, so the next generate diffs against it, a schema no migration made: it leaves those \
                 changes out of the migration and reuses its number"
            } else {
                "no migration uses it"
            };
            out.push(Drift::new(
                "snapshot-not-in-journal",
                format!("meta/{} belongs to no journal entry: {why}", snap.name),
                Some(n),
            ));
        }
    }
    let mut by_parent: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
    for snap in snapshots.values() {
        by_parent.entry(snap.prev_id.as_str()).or_default().push(snap);
    }
    for (parent, children) in by_parent.iter().filter(|(_, c)| c.len() > 1) {
        let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
        out.push(Drift::new(
            "snapshot-fork",
            format!(
                "{} all name {parent} as their previous snapshot (two branches each generated a migration): \
                 drizzle-kit generate stops on this collision, writes nothing and exits 0",
                names.join(", ")
            ),
            Some(number(&children[children.len() - 1].name)),
        ));
    }
    out.extend(outdated(
        snapshots.values().map(|s| (format!("meta/{}", s.name), s.version, s.dialect.as_deref())),
        latest_snapshot_version,
        "drizzle-kit 0.31",
        "generate writes no migration until they are upgraded (it says \"Run drizzle-kit up\" and exits 0)",
    ));
    out
}

/// `snapshot-outdated` when some snapshots (where, version, dialect) are older than `kit` writes for their dialect
/// (`latest`); `consequence` says what generate does about it.
pub(super) fn outdated<'a>(
    snapshots: impl Iterator<Item = (String, Option<u32>, Option<&'a str>)>,
    latest: fn(&str) -> Option<u32>,
    kit: &str,
    consequence: &str,
) -> Option<Drift> {
    let old: Vec<(String, u32, &'a str, u32)> = snapshots
        .filter_map(|(at, version, dialect)| {
            let dialect = dialect?;
            let (v, l) = (version?, latest(dialect)?);
            (v < l).then_some((at, v, dialect, l))
        })
        .collect();
    let (at, version, dialect, latest) = old.first()?;
    Some(Drift::new(
        "snapshot-outdated",
        format!(
            "{} snapshot(s) (from {at}) are of version {version}, older than the {latest} {kit} writes for \
             {dialect}: {consequence}",
            old.len()
        ),
        None,
    ))
}

/// Each snapshot's prevId must be the id of the one before it, in journal order.
fn snapshot_chain(snapshots: &BTreeMap<String, Snapshot>, entries: &[Entry]) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut previous: Option<(String, String)> = None; // (tag, id)
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.idx);
    for e in sorted {
        let Some(snapshot) = snapshots.get(number(&e.tag)) else {
            previous = None; // missing (journal-missing-snapshot) or unreadable (snapshot-invalid)
            continue;
        };
        if let Some((prev_tag, prev_id)) = &previous
            && &snapshot.prev_id != prev_id
        {
            out.push(Drift::new(
                "snapshot-chain",
                format!(
                    "meta/{} says its previous snapshot is {}, but {prev_tag}'s is {prev_id}",
                    snapshot.name, snapshot.prev_id
                ),
                Some(&e.tag),
            ));
        }
        previous = Some((e.tag.clone(), snapshot.id.clone()));
    }
    out
}

/// The .sql files at the top of drizzle/ (regular files only; anything else there is a violation already).
fn sql_files(drizzle: &Folder) -> BTreeSet<String> {
    regular_files(drizzle).into_iter().filter(|n| n.ends_with(".sql")).collect()
}

/// The names of the regular files in a folder (the type from the directory itself where the filesystem gives it).
pub(super) fn regular_files(folder: &Folder) -> BTreeSet<String> {
    folder
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, hint)| match hint {
            Some(t) => *t == rustix::fs::FileType::RegularFile,
            None => matches!(folder.kind(&name.to_string_lossy()), Ok(Some(SpecialKind::File))),
        })
        .filter_map(|(name, _)| name.into_string().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn folder(journal: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("meta")).unwrap();
        fs::write(d.path().join("meta/_journal.json"), journal).unwrap();
        for (p, body) in files {
            fs::write(d.path().join(p), body).unwrap();
        }
        d
    }

    fn codes(d: &tempfile::TempDir) -> Vec<String> {
        faults(d.path()).into_iter().map(|f| f.code).collect()
    }

    const SNAP0: &str = r#"{"id":"a","prevId":"00000000-0000-0000-0000-000000000000"}"#;
    const SNAP1: &str = r#"{"id":"b","prevId":"a"}"#;

    #[test]
    fn coherent_folder_has_no_faults() {
        let j = r#"{"entries":[{"idx":0,"when":1,"tag":"0000_a"},{"idx":1,"when":2,"tag":"0001_b"}]}"#;
        let d = folder(
            j,
            &[
                ("0000_a.sql", ""),
                ("0001_b.sql", ""),
                ("meta/0000_snapshot.json", SNAP0),
                ("meta/0001_snapshot.json", SNAP1),
            ],
        );
        assert!(codes(&d).is_empty(), "{:?}", faults(d.path()));
    }

    #[test]
    fn each_fault() {
        let j = r#"{"entries":[{"idx":0,"when":5,"tag":"0000_a"},{"idx":0,"when":4,"tag":"0000_b"}]}"#;
        let d = folder(j, &[("0000_a.sql", ""), ("0003_stray.sql", ""), ("meta/0000_snapshot.json", SNAP1)]);
        let c = codes(&d);
        for want in ["journal-order", "journal-duplicate", "journal-missing-sql", "sql-not-in-journal"] {
            assert!(c.contains(&want.to_string()), "{want} in {c:?}");
        }
        let d = folder("{not json", &[]);
        assert_eq!(codes(&d), ["journal-unreadable"]);
        let j = r#"{"entries":[{"idx":0,"when":1,"tag":"0000_a"},{"idx":1,"when":2,"tag":"0001_b"}]}"#;
        let d = folder(j, &[("0000_a.sql", ""), ("0001_b.sql", ""), ("meta/0000_snapshot.json", SNAP0)]);
        assert_eq!(codes(&d), ["journal-missing-snapshot"]);
        let broken = r#"{"id":"b","prevId":"zzz"}"#;
        let d = folder(
            j,
            &[
                ("0000_a.sql", ""),
                ("0001_b.sql", ""),
                ("meta/0000_snapshot.json", SNAP0),
                ("meta/0001_snapshot.json", broken),
            ],
        );
        assert_eq!(codes(&d), ["snapshot-chain"]);
    }

    #[test]
    fn what_drizzle_kit_check_finds_and_more() {
        let j = r#"{"entries":[{"idx":0,"when":1,"tag":"0000_a"},{"idx":1,"when":2,"tag":"0001_b"}]}"#;
        let files = |extra: &[(&'static str, &'static str)]| {
            let mut all = vec![("0000_a.sql", ""), ("0001_b.sql", ""), ("meta/0000_snapshot.json", SNAP0)];
            all.extend_from_slice(extra);
            all
        };
        // A fork: two snapshots with one parent.
        let fork = r#"{"id":"c","prevId":"a"}"#;
        let d = folder(j, &files(&[("meta/0001_snapshot.json", SNAP1), ("meta/0002_snapshot.json", fork)]));
        let c = codes(&d);
        assert!(
            c.contains(&"snapshot-fork".into()) && c.contains(&"snapshot-not-in-journal".into()),
            "{c:?}"
        );
        let stray = faults(d.path()).into_iter().find(|f| f.code == "snapshot-not-in-journal").unwrap();
        assert!(stray.message.contains("sorts last"), "{}", stray.message);
        // Outdated: version 5 sqlite snapshots where drizzle-kit 0.31 writes 6.
        let old0 =
            r#"{"version":"5","dialect":"sqlite","id":"a","prevId":"00000000-0000-0000-0000-000000000000"}"#;
        let old1 = r#"{"version":"5","dialect":"sqlite","id":"b","prevId":"a"}"#;
        let pair = |first: &'static str, second: &'static str| {
            folder(
                j,
                &[
                    ("0000_a.sql", ""),
                    ("0001_b.sql", ""),
                    ("meta/0000_snapshot.json", first),
                    ("meta/0001_snapshot.json", second),
                ],
            )
        };
        assert_eq!(codes(&pair(old0, old1)), ["snapshot-outdated"]);
        let new1 = r#"{"version":"6","dialect":"sqlite","id":"b","prevId":"a"}"#;
        assert_eq!(codes(&pair(old0, new1)), ["snapshot-outdated"], "one old snapshot is enough");
        // Malformed: not JSON, and JSON without the fields.
        let d = folder(j, &files(&[("meta/0001_snapshot.json", "{not json")]));
        assert_eq!(codes(&d), ["snapshot-invalid"]);
        let d = folder(j, &files(&[("meta/0001_snapshot.json", r#"{"version":"6"}"#)]));
        assert_eq!(codes(&d), ["snapshot-invalid"]);
        // A when far in the future.
        let future = r#"{"entries":[{"idx":0,"when":1,"tag":"0000_a"},{"idx":1,"when":99999999999999,"tag":"0001_b"}]}"#;
        let d = folder(future, &files(&[("meta/0001_snapshot.json", SNAP1)]));
        assert_eq!(codes(&d), ["journal-future"]);
    }
}
