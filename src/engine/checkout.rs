//! Per-checkout state: the push this checkout (this folder, this config) last had. Backups are shared by project id
//! (every clone and worktree of a project sees them all), but which of them a checkout stands on is its own: a push
//! in one git worktree never moves another's baseline, and an automatic restore only ever puts back a tree the
//! checkout had.
//!
//! The baseline of a checkout, in order: its own last push (`checkouts/<key>.json`); a push whose backup waits for the
//! store; for a checkout that pushed with an earlier release (which kept no such file), its newest push in the store
//! made from this folder; in a fresh clone, the push its committed sum names; in a checkout without one, the newest
//! push in the store.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Engine, Sum, rfc3339};
use crate::error::{Error, IoContext, Result, check_format};
use crate::fsutil;
use crate::manifest::{self, Tree};
use crate::project::Project;
use crate::safefs;
use crate::store::PushRecord;

/// The format of a checkout's state file.
pub const CHECKOUT_FORMAT: u32 = 1;
const MAX_CHECKOUT: u64 = 64 << 20;

/// How the checkout came to stand on its last push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// It made the push.
    Push,
    /// `dreamerd restore` put it there.
    Restore,
    /// The folder arrived holding exactly that push (a pull, a checkout, a copy) and was taken as it is.
    Arrived,
}

/// How a checkout's baseline was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The checkout's own last push.
    Checkout,
    /// A push of this checkout whose backup waits for the store.
    Pending,
    /// The newest push stored from this folder by an earlier release, which kept no per-checkout state.
    Earlier,
    /// The push the committed sum names (a fresh clone).
    Committed,
    /// The newest push in the store: a checkout with no push of its own and no committed sum.
    Newest,
}

/// How the folder relates to the checkout's last push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relation {
    Same,
    /// An ancestor of the last push (an earlier push on its line).
    Older,
    /// A descendant of the last push (pushed after it, elsewhere).
    Newer,
    /// On another line of pushes (another branch or worktree).
    Other,
}

/// What `checkouts/<key>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkout {
    pub format: u32,
    /// The checkout's folder and config, for people reading the state directory.
    pub root: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub via: Via,
    /// When it came to stand there (RFC 3339).
    pub since: String,
    /// For `arrived`: the last push before, and how the arrived one relates to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<Relation>,
    pub push: PushRecord,
    /// A custom migration `dreamerd push --custom` opened, which the next push applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenCustom>,
}

/// A custom migration opened by `dreamerd push --custom NAME`: drizzle-kit wrote an empty migration for the user to
/// fill; until the next push applies it, its `.sql` may change freely and everything else must stay as generate left
/// it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenCustom {
    /// Its journal tag.
    pub migration: String,
    /// Its `.sql`, relative to the migration folder.
    pub file: String,
    /// The folder as generate left it.
    pub files: Vec<manifest::FileEntry>,
    pub since: String,
}

impl Baseline {
    /// What the folder must hold: the push, or the folder as `push --custom` left it.
    pub fn expected(&self) -> &[manifest::FileEntry] {
        match self.open() {
            Some(open) => &open.files,
            None => &self.record.files,
        }
    }

    /// The open custom migration, if any.
    pub fn open(&self) -> Option<&OpenCustom> {
        self.checkout.as_ref().and_then(|c| c.open.as_ref())
    }

    /// The violations of `tree` against it: the open custom migration's `.sql` is the user's to write.
    pub fn violations(&self, tree: &Tree) -> Vec<manifest::Violation> {
        let mut out = manifest::diff(self.expected(), tree);
        if let Some(open) = self.open() {
            out.retain(|v| !(v.path == open.file && v.kind == manifest::ViolationKind::Modified));
        }
        out
    }
}

/// A checkout's baseline and where it came from.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub record: PushRecord,
    pub source: Source,
    /// What the checkout file says besides its push, when the baseline is the checkout's own.
    pub checkout: Option<Standing>,
}

/// What a checkout file says besides the push it stands on.
#[derive(Debug, Clone)]
pub struct Standing {
    pub via: Via,
    pub previous: Option<String>,
    pub relation: Option<Relation>,
    pub open: Option<OpenCustom>,
}

impl Engine {
    pub(super) fn checkout_path(&self, project: &Project) -> PathBuf {
        self.dirs.state.join("checkouts").join(format!("{}.json", project.local_key()))
    }

    /// The checkout's state file, refusing one of a newer format.
    pub fn checkout(&self, project: &Project) -> Result<Option<Checkout>> {
        let path = self.checkout_path(project);
        let Some(bytes) = safefs::read_file(&path, MAX_CHECKOUT, false).ctx("read", &path)? else {
            return Ok(None);
        };
        let checkout: Checkout = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Corrupt(format!(
                "{} is unreadable: {e}; it says which push this checkout stands on: remove it and run \
                 `dreamer database restore --push ID` with the push you want (`dreamerd history` lists them)",
                path.display()
            ))
        })?;
        check_format(checkout.format, CHECKOUT_FORMAT, || format!("the checkout state {}", path.display()))?;
        Ok(Some(checkout))
    }

    /// Records the push the checkout now stands on.
    pub(crate) fn set_last_push(
        &self,
        project: &Project,
        record: &PushRecord,
        via: Via,
        arrived: Option<(String, Relation)>,
    ) -> Result<()> {
        let (previous, relation) = arrived.map(|(p, r)| (Some(p), Some(r))).unwrap_or_default();
        self.write_checkout(
            project,
            Checkout {
                format: CHECKOUT_FORMAT,
                root: project.root.clone(),
                config: project.config.clone(),
                via,
                since: rfc3339(std::time::SystemTime::now()),
                previous,
                relation,
                push: record.clone(),
                open: None,
            },
        )
    }

    fn write_checkout(&self, project: &Project, checkout: Checkout) -> Result<()> {
        self.prepare_state()?;
        let path = self.checkout_path(project);
        fsutil::create_private_dir(path.parent().expect("has a parent")).ctx("create", &path)?;
        let json = serde_json::to_vec_pretty(&checkout).expect("serialises");
        fsutil::atomic_write(&path, &json).ctx("write", &path)
    }

    /// Records a custom migration `push --custom` opened on top of `base` (the push the checkout stands on).
    pub(crate) fn set_open(&self, project: &Project, base: &PushRecord, open: OpenCustom) -> Result<()> {
        let current = self.checkout(project)?.filter(|c| c.push.id == base.id);
        let checkout = match current {
            Some(c) => Checkout { open: Some(open), ..c },
            None => Checkout {
                format: CHECKOUT_FORMAT,
                root: project.root.clone(),
                config: project.config.clone(),
                via: Via::Arrived,
                since: rfc3339(std::time::SystemTime::now()),
                previous: None,
                relation: None,
                push: base.clone(),
                open: Some(open),
            },
        };
        self.write_checkout(project, checkout)
    }

    /// The checkout's baseline: what its folder must hold (see the module's documentation).
    pub fn baseline_of(&self, project: &Project) -> Result<Option<Baseline>> {
        let id = self.project_id(project)?;
        let Some(id) = id else {
            // Never pushed anywhere: only a committed sum can say what the folder must be.
            return Ok(Sum::read(project)?.map(|s| Baseline {
                record: s.as_record(""),
                source: Source::Committed,
                checkout: None,
            }));
        };
        if let Some(checkout) = self.checkout(project)?
            && checkout.push.project_id == id
        {
            let Checkout { push, via, previous, relation, open, .. } = checkout;
            return Ok(Some(Baseline {
                record: push,
                source: Source::Checkout,
                checkout: Some(Standing { via, previous, relation, open }),
            }));
        }
        if let Some(record) = self.pending_record(project)?
            && record.project_id == id
        {
            return Ok(Some(Baseline { record, source: Source::Pending, checkout: None }));
        }
        // `check` never needs the store: one that does not answer only leaves out what it would add.
        let reachable = self.store.reachable().unwrap_or(false);
        if reachable && self.remembered_id_path(project).exists() {
            // This checkout pushed with a release that kept no checkout file: its newest push from this folder.
            let root = project.root.display().to_string();
            let history = self.store.history(&id)?;
            if let Some(g) = history.iter().find(|g| g.root == root).or(history.first()) {
                return Ok(Some(Baseline {
                    record: self.store.full(g)?,
                    source: Source::Earlier,
                    checkout: None,
                }));
            }
        }
        let Some(sum) = Sum::read(project)? else {
            if !reachable {
                return Ok(None);
            }
            return match self.store.history(&id)?.first() {
                Some(g) => {
                    Ok(Some(Baseline { record: self.store.full(g)?, source: Source::Newest, checkout: None }))
                }
                None => Ok(None),
            };
        };
        // A fresh clone: the committed sum's push, with its backup when the store has it.
        if reachable && let Some(record) = self.store.record(&id, &sum.push).ok().flatten() {
            return Ok(Some(Baseline { record, source: Source::Committed, checkout: None }));
        }
        Ok(Some(Baseline { record: sum.as_record(&id), source: Source::Committed, checkout: None }))
    }

    /// Every push the project's folder may legitimately hold: a push waiting for the store, the store's history (from
    /// the local index), and the committed sum's.
    fn known_trees(&self, project: &Project) -> Vec<Known> {
        let mut out = Vec::new();
        let Ok(Some(id)) = self.project_id(project) else { return out };
        if let Ok(Some(pending)) = self.pending_record(project)
            && pending.project_id == id
        {
            out.push(Known {
                tree: pending.tree(),
                push: pending.id.clone(),
                parent: pending.parent.clone(),
                record: Held::Whole(pending),
            });
        }
        if self.store.reachable().unwrap_or(false)
            && let Ok(history) = self.store.history(&id)
        {
            out.extend(history.into_iter().map(|g| Known {
                tree: g.tree.clone(),
                push: g.push.clone(),
                parent: g.parent.clone(),
                record: Held::Stored(g),
            }));
        }
        if let Ok(Some(sum)) = Sum::read(project) {
            let record = sum.as_record(&id);
            out.push(Known {
                tree: record.tree(),
                push: sum.push,
                parent: None,
                record: Held::Whole(record),
            });
        }
        out
    }

    /// The push whose files the tree holds exactly (no links, fifos or the like in it), and how it relates to
    /// `base` (the checkout's last push).
    pub(crate) fn matching_push(
        &self,
        project: &Project,
        tree: &Tree,
        base: Option<&str>,
    ) -> Option<(PushRecord, Relation)> {
        if !tree.exists || tree.nodes.contains_key(".") || tree.specials().next().is_some() {
            return None;
        }
        let files = tree.files();
        let hash = manifest::tree_hash(&files);
        let known = self.known_trees(project);
        let found = known.iter().find(|k| k.tree == hash)?;
        // The tree hashes to the push's tree: its files are the tree's, no manifest to fetch.
        let record = match &found.record {
            Held::Whole(record) => record.clone(),
            Held::Stored(g) => g.record(files),
        };
        let relation = match base {
            Some(base) => relation(&known, base, &found.push),
            None => Relation::Other,
        };
        Some((record, relation))
    }

    /// The known push with the fewest differences from `tree`, with how many (only asked when the tree matches
    /// none).
    pub(crate) fn closest_push(&self, project: &Project, tree: &Tree) -> Option<(String, usize)> {
        let id = self.project_id(project).ok()??;
        let mut seen = std::collections::BTreeSet::new();
        let mut best: Option<(String, usize)> = None;
        let mut consider = |push: String, files: &[manifest::FileEntry]| {
            let n = manifest::diff(files, tree).len();
            if best.as_ref().is_none_or(|(_, b)| n < *b) {
                best = Some((push, n));
            }
        };
        if let Ok(Some(pending)) = self.pending_record(project)
            && pending.project_id == id
        {
            seen.insert(pending.tree());
            consider(pending.id.clone(), &pending.files);
        }
        if self.store.reachable().unwrap_or(false)
            && let Ok(history) = self.store.history(&id)
        {
            // Newest first: among equally close pushes, the newest wins.
            for g in history {
                if seen.insert(g.tree.clone())
                    && let Ok(files) = self.store.manifest(&id, &g.tree)
                {
                    consider(g.push, &files);
                }
            }
        }
        best
    }

    /// The push whose migrations are exactly what the database applied (by time or name, and hash): after a switch
    /// of branches with one development database, the push the database is at. Pushes are read newest first, at
    /// most [`DATABASE_PUSHES`]; each one's migrations are read once from its archive and kept (a push never
    /// changes).
    pub(crate) fn database_push(
        &self,
        project: &Project,
        rows: &[crate::drizzle::database::Applied],
    ) -> Option<String> {
        let id = self.project_id(project).ok()??;
        let history = self.store.history(&id).ok()?;
        for g in history.into_iter().take(DATABASE_PUSHES) {
            let Some(migrations) = self.migrations_cached(&id, &g.push, || {
                self.store.manifest(&id, &g.tree).ok().map(|f| g.record(f))
            }) else {
                continue;
            };
            let (layout, entries) = (&migrations.0, &migrations.1);
            let matched = crate::drizzle::database::matching(*layout, entries, rows);
            let all = matched.unapplied.is_empty()
                && matched
                    .rows
                    .iter()
                    .all(|(row, e)| e.is_some_and(|e| e.hash.as_deref() == Some(row.hash.as_str())));
            if all {
                return Some(g.push);
            }
        }
        None
    }

    /// A push's migrations with their hashes (read once per process from its archive).
    pub(crate) fn entries_of_push(&self, record: &PushRecord) -> Option<MigrationsOf> {
        self.migrations_cached(&record.project_id, &record.id, || Some(record.clone()))
    }

    /// [`Engine::migrations_of`] through the per-process cache; `record` is asked only on a miss.
    fn migrations_cached(
        &self,
        project_id: &str,
        push: &str,
        record: impl FnOnce() -> Option<PushRecord>,
    ) -> Option<MigrationsOf> {
        let key = format!("{project_id}/{push}");
        if let Some(m) = MIGRATIONS_OF.lock().expect("cache").get(&key) {
            return Some(m.clone());
        }
        let m = std::sync::Arc::new(self.migrations_of(&record()?)?);
        MIGRATIONS_OF.lock().expect("cache").insert(key, m.clone());
        Some(m)
    }

    /// A push's migrations with their hashes, from its archive (unpacked into a private scratch folder).
    fn migrations_of(
        &self,
        record: &PushRecord,
    ) -> Option<(crate::drizzle::journal::Layout, Vec<crate::drizzle::journal::Entry>)> {
        let layout = record.layout()?;
        let bytes = self.store.archive(record).ok()?;
        self.prepare_state().ok()?;
        let scratch = self.dirs.state.join("tmp");
        crate::fsutil::create_private_dir(&scratch).ok()?;
        let dest = scratch.join(format!("push-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        crate::archive::unpack_verified(&bytes, &record.files, &dest, crate::archive::Limits::default())
            .ok()?;
        let read = || {
            let folder = crate::safefs::Folder::open(&dest).ok()??;
            let mut entries = crate::drizzle::journal::read_in(&folder).ok()??;
            crate::drizzle::database::with_hashes(&folder, &mut entries);
            Some(entries)
        };
        let entries = read();
        let _ = std::fs::remove_dir_all(&dest);
        Some((layout, entries?))
    }

    /// Takes a folder that arrived holding exactly a known push as the checkout's last push, if no operation runs
    /// on the project right now (it would decide the last push itself). Best effort: status stays read-only when it
    /// cannot.
    pub(crate) fn adopt_arrived(
        &self,
        project: &Project,
        record: &PushRecord,
        previous: Option<(String, Relation)>,
    ) {
        let Ok(Some(_lock)) = self.try_lock_now(project) else { return };
        // An interrupted operation decides the last push when it is finished, not a status.
        if fsutil::exists_nofollow(&self.journal_path(project)) {
            return;
        }
        // Looked at again under the lock: a push may have finished in between.
        let still = self.scan_out(project).ok().is_some_and(|t| manifest::diff(&record.files, &t).is_empty());
        let current = self.checkout(project).ok().flatten().map(|c| c.push.id);
        let expected = previous.as_ref().map(|(p, _)| p.clone());
        if still
            && (current.is_none() || current == expected)
            && current.as_deref() != Some(record.id.as_str())
        {
            let _ = self.set_last_push(project, record, Via::Arrived, previous);
        }
    }
}

/// A push the folder may legitimately hold.
struct Known {
    tree: String,
    push: String,
    parent: Option<String>,
    record: Held,
}

/// What is at hand of a known push's record.
enum Held {
    /// The whole record (a pending push, the committed sum's).
    Whole(PushRecord),
    /// A stored generation; its files are those of any tree that hashes to it.
    Stored(crate::store::Generation),
}

/// How `push` relates to `base` along the parents the known pushes name.
fn relation(known: &[Known], base: &str, push: &str) -> Relation {
    if base == push {
        return Relation::Same;
    }
    let parent = |id: &str| known.iter().find(|k| k.push == id).and_then(|k| k.parent.clone());
    let descends = |from: &str, to: &str| {
        let mut at = parent(from);
        let mut steps = 0;
        while let Some(p) = at {
            if p == to {
                return true;
            }
            steps += 1;
            if steps > known.len() {
                return false; // a cycle in hostile data
            }
            at = parent(&p);
        }
        false
    };
    if descends(base, push) {
        Relation::Older
    } else if descends(push, base) {
        Relation::Newer
    } else {
        Relation::Other
    }
}

/// One push in `dreamerd history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: String,
    pub at: String,
    pub files: usize,
    pub host: String,
    /// Its place in the store's history; absent for a push whose backup waits for the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The push it was made on top of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The folder it was pushed from.
    #[serde(default)]
    pub root: String,
    /// The push this checkout stands on (what a plain restore brings back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last: bool,
    /// The push the committed sum names.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub committed: bool,
    /// Its backup waits locally for the store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// This checkout has a copy of the database as this push left it (`restore --with-database` reaches it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub database_copy: bool,
}

/// `dreamerd history`: every push of the project, newest first, and which of them this checkout and its committed
/// sum name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    pub root: PathBuf,
    pub pushes: Vec<HistoryEntry>,
    /// The push this checkout stands on: what status calls `last_push` and a plain restore brings back.
    #[serde(default)]
    pub last_push: Option<String>,
    /// The push the committed sum names.
    #[serde(default)]
    pub committed: Option<String>,
}

impl Engine {
    /// The project's history. Needs the store (exit 2 when it is gone).
    pub fn history(&self, project: &Project) -> Result<History> {
        self.require_store(project)?;
        let last = self.baseline_of(project)?.map(|b| b.record.id);
        let committed = Sum::read(project).ok().flatten().map(|s| s.push);
        let mut pushes = Vec::new();
        if let Some(id) = self.project_id(project)? {
            if let Some(p) = self.pending_record(project)?.filter(|p| p.project_id == id) {
                pushes.push(HistoryEntry {
                    id: p.id.clone(),
                    at: p.at.clone(),
                    files: p.files.len(),
                    host: p.host.clone(),
                    generation: None,
                    parent: p.parent.clone(),
                    root: p.root.clone(),
                    last: false,
                    committed: false,
                    pending: true,
                    database_copy: false,
                });
            }
            if self.store.reachable()? {
                for g in self.store.history(&id)? {
                    pushes.push(HistoryEntry {
                        id: g.push,
                        at: g.at,
                        files: g.files,
                        host: g.host,
                        generation: Some(g.generation),
                        parent: g.parent,
                        root: g.root,
                        last: false,
                        committed: false,
                        pending: false,
                        database_copy: false,
                    });
                }
            }
        }
        let copies = self.database_copies(project);
        for p in &mut pushes {
            p.database_copy = copies.iter().any(|c| c.meta.base.as_ref() == Some(&p.id));
            p.last = last.as_ref() == Some(&p.id);
            p.committed = committed.as_ref() == Some(&p.id);
        }
        Ok(History { root: project.root.clone(), pushes, last_push: last, committed })
    }
}

/// How many pushes, newest first, are compared with the database to find the one it is at.
const DATABASE_PUSHES: usize = 50;

/// Each push's migrations, by `<project id>/<push id>`: read once per process.
pub(crate) type MigrationsOf =
    std::sync::Arc<(crate::drizzle::journal::Layout, Vec<crate::drizzle::journal::Entry>)>;
static MIGRATIONS_OF: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, MigrationsOf>>> =
    std::sync::LazyLock::new(Default::default);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_follow_parents() {
        let k = |t: &str, p: &str, parent: Option<&str>| Known {
            tree: t.to_string(),
            push: p.to_string(),
            parent: parent.map(String::from),
            record: Held::Whole(
                crate::engine::Sum { push: p.into(), schema: None, files: vec![] }.as_record("p"),
            ),
        };
        let known = vec![
            k("t1", "a", None),
            k("t2", "b", Some("a")),
            k("t3", "c", Some("b")),
            k("t4", "x", Some("a")),
        ];
        assert_eq!(relation(&known, "b", "b"), Relation::Same);
        assert_eq!(relation(&known, "c", "a"), Relation::Older);
        assert_eq!(relation(&known, "a", "c"), Relation::Newer);
        assert_eq!(relation(&known, "c", "x"), Relation::Other);
        let cycle = vec![k("t1", "a", Some("b")), k("t2", "b", Some("a"))];
        assert_eq!(relation(&cycle, "a", "z"), Relation::Other);
    }
}
