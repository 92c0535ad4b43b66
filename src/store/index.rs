//! The local index of a store's histories: every generation of a project already read, kept in the state directory
//! so that a history (and finding a push by its tree) reads only what is new. Generations are create-only and never
//! change, so an index is only ever extended; one that names a generation the store no longer has (a store wiped and
//! made again at the same place) is dropped and rebuilt.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Generation, Store};
use crate::error::Result;

/// The index file's format.
pub const INDEX_FORMAT: u32 = 1;
const MAX_INDEX: u64 = 256 << 20;

#[derive(Serialize, Deserialize)]
struct IndexFile {
    format: u32,
    store_id: String,
    project: String,
    generations: Vec<Generation>,
}

/// A project's history as far as this machine has read it, oldest first.
pub struct Index {
    path: Option<PathBuf>,
    pub generations: Vec<Generation>,
}

impl Index {
    /// The index of `project` in the store `store_id`, or an empty one (no index kept, none yet, or unreadable: it
    /// is only a cache).
    pub fn load(dir: Option<&Path>, store_id: &str, project: &str) -> Index {
        let path = dir.map(|d| d.join(store_id).join(format!("{project}.json")));
        let generations = path
            .as_deref()
            .and_then(|p| crate::safefs::read_file(p, MAX_INDEX, false).ok().flatten())
            .and_then(|bytes| serde_json::from_slice::<IndexFile>(&bytes).ok())
            .filter(|f| f.format == INDEX_FORMAT && f.store_id == store_id && f.project == project)
            .map(|f| f.generations)
            .unwrap_or_default();
        Index { path, generations }
    }

    /// Brings the index up to date with the store: reads the generations it does not have yet.
    pub fn refresh(mut self, store: &Store, project: &str) -> Result<Index> {
        let numbers = store.generation_numbers(project)?;
        let present: BTreeSet<u64> = numbers.iter().copied().collect();
        if self.generations.iter().any(|g| !present.contains(&g.generation)) {
            self.generations.clear();
        }
        let known: BTreeSet<u64> = self.generations.iter().map(|g| g.generation).collect();
        let mut changed = false;
        for n in numbers.into_iter().filter(|n| !known.contains(n)) {
            if let Some(g) = store.generation(project, n)? {
                self.generations.push(g);
                changed = true;
            }
        }
        if changed {
            self.generations.sort_by_key(|g| g.generation);
            self.save(project);
        }
        Ok(self)
    }

    fn save(&self, project: &str) {
        let Some(path) = &self.path else { return };
        let store_id = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = IndexFile {
            format: INDEX_FORMAT,
            store_id,
            project: project.to_string(),
            generations: self.generations.clone(),
        };
        let json = serde_json::to_vec(&file).expect("serialises");
        // A cache: failing to keep it only costs the next reader a full read.
        let _ = crate::fsutil::create_private_dir(path.parent().expect("has a parent"))
            .and_then(|()| crate::fsutil::atomic_write(path, &json));
    }
}
