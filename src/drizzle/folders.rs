//! drizzle-kit 1.0's folder-per-migration layout: `<out>/<YYYYMMDDHHMMSS>_<name>/{migration.sql, snapshot.json}`,
//! no journal. Its migrator runs every folder holding a `migration.sql` whose name the database does not hold, in
//! name order; generate diffs against the snapshot of the folder whose name sorts last and names every snapshot it
//! builds on in `prevIds` (two after a merge of branches).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Drift;
use super::journal::{Entry, MAX_FILE};
use crate::safefs::{self, Folder, SpecialKind};

/// The `prevIds` of a first snapshot.
pub const ZERO_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The migration folders of a migration folder, by name: its sub-folders that hold a regular `migration.sql`
/// (what 1.0's migrator runs; anything else in a sub-folder is ignored by it).
pub fn migration_folders(folder: &Folder) -> Vec<String> {
    let mut names: Vec<String> = candidates(folder).filter(|n| is_migration(folder, n)).collect();
    names.sort();
    names
}

/// Whether the folder holds at least one migration folder (stops at the first: the layout is asked on every scan).
pub fn any_migration_folder(folder: &Folder) -> bool {
    candidates(folder).any(|n| is_migration(folder, &n))
}

fn candidates(folder: &Folder) -> impl Iterator<Item = String> {
    folder
        .entries()
        .unwrap_or_default()
        .into_iter()
        // Only folders can be migrations (the type from the directory itself where the filesystem gives it).
        .filter(|(_, hint)| hint.is_none_or(|t| t == rustix::fs::FileType::Directory))
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|n| safefs::plain_name(n) && n != "meta")
}

fn is_migration(folder: &Folder, name: &str) -> bool {
    matches!(folder.kind(&format!("{name}/migration.sql")), Ok(Some(SpecialKind::File)))
}

/// The time a migration folder's name starts with (`YYYYMMDDHHMMSS`, UTC), in ms since the epoch, as 1.0's
/// migrator reads it (its `created_at`).
pub fn millis_of(name: &str) -> Option<i64> {
    let digits = name.get(..14)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let stamp = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &digits[..4],
        &digits[4..6],
        &digits[6..8],
        &digits[8..10],
        &digits[10..12],
        &digits[12..14]
    );
    let t = humantime::parse_rfc3339(&stamp).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as i64)
}

/// The migrations of a folder in the 1.0 layout, in the migrator's order; `None` when it holds no migration folder.
pub fn entries(folder: &Folder) -> Option<Vec<Entry>> {
    let names = migration_folders(folder);
    if names.is_empty() {
        return None;
    }
    Some(
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Entry {
                idx: i as i64,
                when: millis_of(&name).unwrap_or(-1),
                file: format!("{name}/migration.sql"),
                hash: None,
                tag: name,
            })
            .collect(),
    )
}

/// The snapshot version drizzle-kit 1.0 writes for a dialect.
pub fn latest_snapshot_version(dialect: &str) -> Option<u32> {
    match dialect {
        "sqlite" | "turso" => Some(7),
        "postgresql" | "postgres" | "pg" => Some(9),
        "mysql" => Some(6),
        "singlestore" | "mssql" => Some(2),
        "cockroach" => Some(1),
        _ => None,
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    id: String,
    #[serde(rename = "prevIds")]
    prev_ids: Vec<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    dialect: Option<String>,
}

struct Snapshot {
    folder: String,
    id: String,
    prev_ids: Vec<String>,
    version: Option<u32>,
    dialect: Option<String>,
}

/// Whether a name is that of a migration folder as drizzle-kit 1.0 makes them: a time and a name.
fn well_named(name: &str) -> bool {
    millis_of(name).is_some() && name.as_bytes().get(14) == Some(&b'_')
}

/// The faults of a folder in the 1.0 layout; `None` when it holds neither a migration folder nor a folder named like
/// one (then it is not in this layout).
pub fn faults(drizzle: &Folder) -> Option<Vec<Drift>> {
    let migrations = migration_folders(drizzle);
    let all: Vec<(String, Option<SpecialKind>)> = drizzle
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, _)| name.into_string().ok())
        .map(|n| {
            let kind = drizzle.kind(&n).ok().flatten();
            (n, kind)
        })
        .collect();
    let empty: Vec<&String> = all
        .iter()
        .filter(|(n, k)| *k == Some(SpecialKind::Directory) && well_named(n) && !migrations.contains(n))
        .map(|(n, _)| n)
        .collect();
    if migrations.is_empty() && empty.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for n in &empty {
        out.push(Drift::new(
            "folder-missing-sql",
            format!("{n}/ holds no migration.sql: the migrator skips it without a word"),
            Some(n),
        ));
    }
    for n in migrations.iter().filter(|n| !well_named(n)) {
        out.push(Drift::new(
            "folder-name",
            format!(
                "{n}/ holds a migration.sql but its name does not start with a time (YYYYMMDDHHMMSS_): the migrator \
                 runs it, in name order, and records no time for it"
            ),
            Some(n),
        ));
    }
    for (n, _) in all.iter().filter(|(n, k)| n.ends_with(".sql") && *k == Some(SpecialKind::File)) {
        out.push(Drift::new(
            "sql-not-in-migration",
            format!("{n} is not in a migration folder: migrate ignores it"),
            Some(n.trim_end_matches(".sql")),
        ));
    }
    let mut snapshots = Vec::new();
    for n in &migrations {
        let rel = format!("{n}/snapshot.json");
        let parsed = crate::facts::cached("folders-snapshot", drizzle, &rel, MAX_FILE, |text| {
            serde_json::from_slice::<SnapshotFile>(text).map_err(|e| e.to_string())
        });
        let parsed = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => {
                let newest = migrations.last() == Some(n);
                let why = if newest {
                    "it is the newest, so the next generate diffs against an older schema and repeats its changes"
                } else {
                    "an old snapshot is read again only to find the branches of the history"
                };
                out.push(Drift::new(
                    "folder-missing-snapshot",
                    format!("{n}/ has no snapshot.json: {why}"),
                    Some(n),
                ));
                continue;
            }
            Err(e) => {
                out.push(Drift::new("snapshot-invalid", format!("{rel} cannot be read: {e}"), Some(n)));
                continue;
            }
        };
        match parsed {
            Ok(f) => snapshots.push(Snapshot {
                folder: n.clone(),
                id: f.id,
                prev_ids: f.prev_ids,
                version: f.version.as_deref().and_then(|v| v.parse().ok()),
                dialect: f.dialect,
            }),
            Err(e) => out.push(Drift::new(
                "snapshot-invalid",
                format!("{rel} is not a drizzle-kit 1.0 snapshot: {e}"),
                Some(n),
            )),
        }
    }
    out.extend(graph(&snapshots));
    out.extend(super::journal::outdated(
        snapshots.iter().map(|s| (format!("{}/", s.folder), s.version, s.dialect.as_deref())),
        latest_snapshot_version,
        "drizzle-kit 1.0",
        "generate refuses to run until they are upgraded",
    ));
    Some(out)
}

/// The snapshot graph: every `prevIds` must name a snapshot of the folder (or the zero id of a first one), no two
/// snapshots may share an id, and the history must have one head: two heads are branches merged without the merge
/// migration drizzle-kit 1.0 writes for them.
fn graph(snapshots: &[Snapshot]) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut by_id: BTreeMap<&str, &Snapshot> = BTreeMap::new();
    for s in snapshots {
        if let Some(first) = by_id.insert(&s.id, s) {
            out.push(Drift::new(
                "snapshot-chain",
                format!(
                    "{}/snapshot.json and {}/snapshot.json have the same id {} (a migration folder copied?)",
                    first.folder, s.folder, s.id
                ),
                Some(&s.folder),
            ));
        }
    }
    let mut parents: BTreeSet<&str> = BTreeSet::new();
    for s in snapshots {
        for p in &s.prev_ids {
            parents.insert(p);
            if p != ZERO_ID && !by_id.contains_key(p.as_str()) {
                out.push(Drift::new(
                    "snapshot-chain",
                    format!(
                        "{}/snapshot.json builds on snapshot {p}, which no migration folder holds (deleted, or brought \
                         from another branch without its parent)",
                        s.folder
                    ),
                    Some(&s.folder),
                ));
            }
        }
    }
    let heads: Vec<&Snapshot> = snapshots.iter().filter(|s| !parents.contains(s.id.as_str())).collect();
    if heads.len() > 1 {
        let names: Vec<&str> = heads.iter().map(|h| h.folder.as_str()).collect();
        out.push(Drift::new(
            "branches-unmerged",
            format!(
                "the history has {} heads ({}): branches that each generated a migration were merged, and no merge \
                 migration joins them yet; migrate runs both, and the next generate must merge them (it refuses if \
                 they change the same things)",
                heads.len(),
                names.join(", ")
            ),
            Some(heads[heads.len() - 1].folder.as_str()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, body) in files {
            let path = d.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        d
    }

    fn codes(d: &tempfile::TempDir) -> Vec<String> {
        super::super::journal::faults(d.path()).into_iter().map(|f| f.code).collect()
    }

    fn snap(id: &str, prev: &[&str]) -> String {
        serde_json::json!({"version": "7", "dialect": "sqlite", "id": id, "prevIds": prev, "ddl": []})
            .to_string()
    }

    #[test]
    fn folder_times_are_utc_seconds() {
        assert_eq!(millis_of("20240102030405_init"), Some(1_704_164_645_000));
        assert_eq!(millis_of("19700101000000_x"), Some(0));
        assert_eq!(millis_of("2024010203040_x"), None);
        assert_eq!(millis_of("0000_x"), None);
    }

    #[test]
    fn entries_and_layout() {
        let a = snap("a", &[ZERO_ID]);
        let b = snap("b", &["a"]);
        let d = folder(&[
            ("20240102030406_b/migration.sql", "B"),
            ("20240102030406_b/snapshot.json", &b),
            ("20240102030405_a/migration.sql", "A"),
            ("20240102030405_a/snapshot.json", &a),
        ]);
        let f = Folder::open(d.path()).unwrap().unwrap();
        assert_eq!(super::super::journal::layout_in(&f), Some(super::super::journal::Layout::Folders));
        let e = super::super::journal::read_in(&f).unwrap().unwrap();
        assert_eq!(
            e.iter().map(|e| e.tag.as_str()).collect::<Vec<_>>(),
            ["20240102030405_a", "20240102030406_b"]
        );
        assert_eq!(e[1].when, 1_704_164_646_000);
        assert_eq!(super::super::journal::sql(&f, &e[1]).unwrap().unwrap(), b"B");
        assert!(codes(&d).is_empty(), "{:?}", codes(&d));
    }

    #[test]
    fn each_fault_of_the_folder_layout() {
        let a = snap("a", &[ZERO_ID]);
        // Two heads: a fork without a merge migration.
        let d = folder(&[
            ("20240101000000_a/migration.sql", ""),
            ("20240101000000_a/snapshot.json", &a),
            ("20240101000001_b/migration.sql", ""),
            ("20240101000001_b/snapshot.json", &snap("b", &["a"])),
            ("20240101000002_c/migration.sql", ""),
            ("20240101000002_c/snapshot.json", &snap("c", &["a"])),
        ]);
        assert_eq!(codes(&d), ["branches-unmerged"]);
        // ...which a merge migration joins.
        let m = snap("m", &["b", "c"]);
        fs::create_dir(d.path().join("20240101000003_m")).unwrap();
        fs::write(d.path().join("20240101000003_m/migration.sql"), "").unwrap();
        fs::write(d.path().join("20240101000003_m/snapshot.json"), m).unwrap();
        assert!(codes(&d).is_empty(), "{:?}", codes(&d));
        // A parent nobody holds, a folder without its SQL, a stray .sql, a missing and a broken snapshot.
        let d = folder(&[
            ("20240101000000_a/migration.sql", ""),
            ("20240101000000_a/snapshot.json", &snap("a", &["gone"])),
            ("20240101000001_b/snapshot.json", &snap("b", &["a"])),
            ("20240101000002_c/migration.sql", ""),
            ("20240101000002_c/snapshot.json", "{not json"),
            ("20240101000003_d/migration.sql", ""),
            ("stray.sql", ""),
        ]);
        let c = codes(&d);
        for want in [
            "snapshot-chain",
            "folder-missing-sql",
            "sql-not-in-migration",
            "snapshot-invalid",
            "folder-missing-snapshot",
        ] {
            assert!(c.contains(&want.to_string()), "{want} in {c:?}");
        }
        // An old version of snapshot, and a journal beside the folders.
        let old = serde_json::json!({"version": "6", "dialect": "sqlite", "id": "a", "prevIds": [ZERO_ID]});
        let d = folder(&[
            ("20240101000000_a/migration.sql", ""),
            ("20240101000000_a/snapshot.json", &old.to_string()),
        ]);
        assert_eq!(codes(&d), ["snapshot-outdated"]);
        let d = folder(&[
            ("20240101000000_a/migration.sql", ""),
            ("20240101000000_a/snapshot.json", &a),
            ("meta/_journal.json", r#"{"entries":[]}"#),
        ]);
        assert!(codes(&d).contains(&"layout-mixed".to_string()), "{:?}", codes(&d));
    }

    #[test]
    fn layout_of_paths_and_kits() {
        use super::super::journal::Layout;
        assert_eq!(Layout::of_paths(["0000_a.sql", "meta/_journal.json"]), Some(Layout::Journal));
        assert_eq!(Layout::of_paths(["20240101000000_a/migration.sql"]), Some(Layout::Folders));
        assert_eq!(Layout::of_paths(["x/y/migration.sql"]), None);
        assert_eq!(Layout::of_kit("0.31.11"), Some(Layout::Journal));
        assert_eq!(Layout::of_kit("1.0.0-rc.5"), Some(Layout::Folders));
        assert_eq!(Layout::of_kit("beta"), None);
    }
}
