//! The local directory store: one file per object, written atomically.

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::fsutil;

/// Objects as files under a root directory (mode 0700 for what it creates).
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn new(root: PathBuf) -> LocalBlobs {
        LocalBlobs { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys are built by Store from validated ids, never from user paths.
        self.root.join(key)
    }
}

fn store_failed(what: &str, key: &str, e: io::Error) -> Error {
    Error::failed(
        format!("cannot {what} {key} in the local store: {e}"),
        "check that the store directory is writable and the disk is not full",
    )
}

impl super::Blobs for LocalBlobs {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            fsutil::create_private_dir(parent).map_err(|e| store_failed("create the folder of", key, e))?;
        }
        fsutil::atomic_write(&path, data).map_err(|e| store_failed("write", key, e))
    }

    fn create(&self, key: &str, data: &[u8]) -> Result<super::Created> {
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            fsutil::create_private_dir(parent).map_err(|e| store_failed("create the folder of", key, e))?;
        }
        match fsutil::write_new(&path, data) {
            Ok(true) => Ok(super::Created::New),
            Ok(false) => Ok(super::Created::Exists),
            Err(e) => Err(store_failed("write", key, e)),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(store_failed("remove", key, e)),
        }
        // Folders left empty go too (never the store's own folder).
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&self.root) && *d != self.root) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        // Never through a link, never blocking on a fifo someone put in the store, never past the cap.
        match crate::safefs::read_file(&path, max, false) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(Error::Corrupt(e.to_string())),
            Err(e) => Err(store_failed("read", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        walk(&self.root.join(dir_part), dir_part, &mut out).map_err(|e| store_failed("list", prefix, e))?;
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("the local store {}", self.root.display())
    }

    fn reachable(&self) -> Result<bool> {
        Ok(self.root.is_dir())
    }
}

fn walk(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(String::from) else { continue };
        if name.starts_with('.') {
            continue; // temp files of an atomic write in progress
        }
        let key = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else {
            out.push(key);
        }
    }
    Ok(())
}
