//! `drizzle/meta/_journal.json` and the snapshots: reading them and finding the faults that make drizzle-kit
//! skip, repeat or invent migrations without a word.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::Drift;
use crate::safefs::{self, Folder, SpecialKind};

/// The largest journal, snapshot or migration read (real ones are kilobytes; a 1,000-migration journal is 150 KB).
pub const MAX_FILE: u64 = 64 << 20;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    pub idx: i64,
    /// ms since the epoch; `created_at` in the database once applied.
    pub when: i64,
    /// The .sql file's name without `.sql`.
    pub tag: String,
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

/// The journal of an open migration folder. Every tag is checked to be a plain file name before it is used as a
/// path: a tag like `../x` makes the journal unreadable rather than a way out of the folder.
pub fn read_in(folder: &Folder) -> Result<Option<Vec<Entry>>, String> {
    let text = match folder.read("meta/_journal.json", MAX_FILE) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("meta/_journal.json cannot be read: {e}")),
    };
    let entries = serde_json::from_slice::<JournalFile>(&text)
        .map(|j| j.entries)
        .map_err(|e| format!("meta/_journal.json is not a drizzle journal: {e}"))?;
    if let Some(bad) = entries.iter().find(|e| !safefs::plain_name(&e.tag)) {
        return Err(format!(
            "meta/_journal.json is not a drizzle journal: entry {} has the tag {:?}, which is not a file name",
            bad.idx, bad.tag
        ));
    }
    Ok(Some(entries))
}

/// The text of a migration's `.sql`, as the migrator reads it.
pub fn sql(folder: &Folder, tag: &str) -> Result<Option<Vec<u8>>, String> {
    if !safefs::plain_name(tag) {
        return Err(format!("{tag:?} is not a migration name"));
    }
    folder.read(&format!("{tag}.sql"), MAX_FILE).map_err(|e| e.to_string())
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

/// [`faults`] of an open migration folder.
pub fn faults_in(drizzle: &Folder) -> Vec<Drift> {
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
        if !matches!(drizzle.kind(&snapshot), Ok(Some(SpecialKind::File))) {
            out.push(Drift::new(
                "journal-missing-snapshot",
                format!(
                    "journal entry {} has no {snapshot}: the next generate diffs against the wrong schema",
                    e.tag
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
    out.extend(snapshot_chain(drizzle, &entries));
    out
}

#[derive(Deserialize)]
struct Snapshot {
    id: String,
    #[serde(rename = "prevId")]
    prev_id: String,
}

/// Each snapshot's prevId must be the id of the one before it.
fn snapshot_chain(drizzle: &Folder, entries: &[Entry]) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut previous: Option<(String, String)> = None; // (tag, id)
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.idx);
    for e in sorted {
        let name = format!("meta/{}_snapshot.json", number(&e.tag));
        let text = match drizzle.read(&name, MAX_FILE) {
            Ok(Some(t)) => t,
            Ok(None) => {
                previous = None; // reported as journal-missing-snapshot
                continue;
            }
            Err(err) => {
                out.push(Drift::new(
                    "snapshot-invalid",
                    format!("{name} cannot be read: {err}"),
                    Some(&e.tag),
                ));
                previous = None;
                continue;
            }
        };
        let snapshot: Snapshot = match serde_json::from_slice(&text) {
            Ok(s) => s,
            Err(err) => {
                out.push(Drift::new(
                    "snapshot-invalid",
                    format!("{name} is not a drizzle snapshot: {err}"),
                    Some(&e.tag),
                ));
                previous = None;
                continue;
            }
        };
        if let Some((prev_tag, prev_id)) = &previous
            && &snapshot.prev_id != prev_id
        {
            out.push(Drift::new(
                "snapshot-chain",
                format!(
                    "{name} says its previous snapshot is {}, but {prev_tag}'s is {prev_id}",
                    snapshot.prev_id
                ),
                Some(&e.tag),
            ));
        }
        previous = Some((e.tag.clone(), snapshot.id));
    }
    out
}

/// The .sql files at the top of drizzle/ (regular files only; anything else there is a violation already).
fn sql_files(drizzle: &Folder) -> BTreeSet<String> {
    drizzle
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|n| n.ends_with(".sql"))
        .filter(|n| matches!(drizzle.kind(n), Ok(Some(SpecialKind::File))))
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
}
