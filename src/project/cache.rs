//! Evaluated drizzle configs kept on disk between commands, so that a `check` runs no node when nothing the config
//! read has changed.
//!
//! An entry is valid while a hash of everything the evaluation depended on is the same: the evaluator, the runtime,
//! the bytes of every file the config read, the `.env` files beside it, drizzle-kit's package.json, and the values of
//! the environment variables it read (the evaluator records their names; all of them when it listed the
//! environment). That hash is never stored: the entry keeps one key derived from it to recognise it, and the database
//! URL (which may hold a password) only sealed under another key derived from it. Reading the cache therefore needs
//! the very inputs that would give the URL anyway; the file alone gives nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layout::{Env, Layout, Resolved, Source};
use crate::{fsutil, safefs};

/// The format of a cache entry; an entry of another format is simply evaluated again.
pub const FORMAT: u32 = 1;
const MAX_ENTRY: u64 = 1 << 20;
const CHECK: &str = "dreamerd 2026-11-26 config cache: check";
const SEAL: &str = "dreamerd 2026-11-26 config cache: seal database url";

#[derive(Serialize, Deserialize)]
struct Entry {
    format: u32,
    config: PathBuf,
    /// The files the config read.
    inputs: Vec<PathBuf>,
    /// The environment variables the config read; `None`: all of them.
    env: Option<Vec<String>>,
    check: String,
    layout: Layout,
    source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    db_url: Option<String>,
}

/// The cache folder: `$XDG_CACHE_HOME/dreamerd/configs`.
fn folder() -> Option<PathBuf> {
    crate::dirs::Dirs::from_env().ok().map(|d| d.cache.join("configs"))
}

fn entry_path(dir: &Path, config: &Path, env: Option<&Env>) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(config.as_os_str().as_encoded_bytes());
    h.update(if env.is_some() { b"\0command" } else { b"\0daemon" });
    dir.join(format!("{}.json", &h.finalize().to_hex()[..32]))
}

/// The hash of everything an evaluation depended on: the files it read (`files`, their fingerprint), and the
/// values of the environment variables `names` (all of `env` when `None`).
fn material(
    salt: &str,
    config: &Path,
    files: &blake3::Hash,
    names: Option<&[String]>,
    env: Option<&Env>,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(salt.as_bytes());
    h.update(b"\0");
    h.update(config.as_os_str().as_encoded_bytes());
    h.update(files.as_bytes());
    let value = |k: &str| env.and_then(|e| e.get(k));
    match names {
        Some(names) => {
            for k in names {
                h.update(b"\0e");
                h.update(k.as_bytes());
                match value(k) {
                    Some(v) => h.update(b"=").update(v.as_bytes()),
                    None => h.update(b"!"),
                };
            }
        }
        None => {
            h.update(b"\0all");
            for (k, v) in env.into_iter().flatten() {
                h.update(k.as_bytes()).update(b"=").update(v.as_bytes()).update(b"\0");
            }
        }
    }
    *h.finalize().as_bytes()
}

/// `bytes` sealed, or unsealed (the same operation), under a key derived from the material: XOR with blake3's
/// keyed output stream.
fn seal(material: &[u8; 32], bytes: &[u8]) -> Vec<u8> {
    let key = blake3::derive_key(SEAL, material);
    let mut stream = vec![0; bytes.len()];
    blake3::Hasher::new_keyed(&key).finalize_xof().fill(&mut stream);
    bytes.iter().zip(stream).map(|(a, b)| a ^ b).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The entries kept for one config (newest first: one per environment it was evaluated in, a few at most).
fn read_entries(path: &Path) -> Vec<Entry> {
    let Ok(Some(bytes)) = safefs::read_file(path, MAX_ENTRY, false) else { return Vec::new() };
    serde_json::from_slice::<Vec<Entry>>(&bytes).unwrap_or_default()
}

/// How many environments' evaluations are kept per config (a shell, an IDE, the daemon's command...).
const KEPT: usize = 4;

/// The cached evaluation of `config` with `env`, when nothing it depended on changed. `files` gives the
/// fingerprint of what an evaluation with these inputs depends on (the inputs, the `.env` files there are now,
/// drizzle-kit's package.json).
pub fn lookup(
    salt: &str,
    config: &Path,
    env: Option<&Env>,
    files: impl Fn(&[PathBuf]) -> blake3::Hash,
) -> Option<Resolved> {
    let path = entry_path(&folder()?, config, env);
    let (entry, m) = read_entries(&path).into_iter().find_map(|entry| {
        if entry.format != FORMAT || entry.config != config {
            return None;
        }
        let m = material(salt, config, &files(&entry.inputs), entry.env.as_deref(), env);
        (hex(blake3::derive_key(CHECK, &m).as_slice()) == entry.check).then_some((entry, m))
    })?;
    let db_url = match &entry.db_url {
        None => None,
        Some(sealed) => Some(super::Secret::new(String::from_utf8(seal(&m, &unhex(sealed)?)).ok()?)),
    };
    Some(Resolved {
        layout: entry.layout,
        source: entry.source,
        db_url,
        inputs: entry.inputs,
        env_read: entry.env,
    })
}

/// Keeps an evaluation for the next command. Best effort: a cache that cannot be written only costs time.
pub fn store(
    salt: &str,
    config: &Path,
    env: Option<&Env>,
    resolved: &Resolved,
    files: impl Fn(&[PathBuf]) -> blake3::Hash,
) {
    let Some(dir) = folder() else { return };
    let m = material(salt, config, &files(&resolved.inputs), resolved.env_read.as_deref(), env);
    let db_url = resolved.db_url.as_ref().map(|url| hex(&seal(&m, url.expose().as_bytes())));
    let entry = Entry {
        format: FORMAT,
        config: config.to_path_buf(),
        inputs: resolved.inputs.clone(),
        env: resolved.env_read.clone(),
        check: hex(blake3::derive_key(CHECK, &m).as_slice()),
        layout: resolved.layout.clone(),
        source: resolved.source,
        db_url,
    };
    if fsutil::create_private_dir(&dir).is_err() {
        return;
    }
    let path = entry_path(&dir, config, env);
    let mut entries = read_entries(&path);
    entries.retain(|e| e.format == FORMAT && e.check != entry.check);
    entries.insert(0, entry);
    entries.truncate(KEPT);
    let json = serde_json::to_vec(&entries).expect("serialises");
    let _ = fsutil::atomic_write_mode(&path, &json, 0o600);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }

    #[test]
    fn sealing_round_trips_only_under_the_same_material() {
        let url = b"postgres://me:hunter2@db/app";
        let sealed = seal(&[1; 32], url);
        assert_ne!(&sealed[..], &url[..]);
        assert_eq!(seal(&[1; 32], &sealed), url);
        assert_ne!(seal(&[2; 32], &sealed), url);
    }

    #[test]
    fn the_material_depends_on_what_was_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("drizzle.config.ts");
        std::fs::write(&f, "x").unwrap();
        let env =
            |v: &str| -> Env { [("DB".to_string(), v.to_string()), ("PWD".into(), "/a".into())].into() };
        let names = vec!["DB".to_string()];
        let read = |f: &PathBuf| super::super::layout::fingerprint(std::slice::from_ref(f));
        let a = material("s", &f, &read(&f), Some(&names), Some(&env("1")));
        let mut other = env("1");
        other.insert("PWD".into(), "/b".into());
        assert_eq!(a, material("s", &f, &read(&f), Some(&names), Some(&other)), "PWD was not read");
        assert_ne!(a, material("s", &f, &read(&f), Some(&names), Some(&env("2"))));
        assert_ne!(a, material("s", &f, &read(&f), None, Some(&other)), "all of it was read");
        std::fs::write(&f, "y").unwrap();
        assert_ne!(a, material("s", &f, &read(&f), Some(&names), Some(&env("1"))));
    }
}
