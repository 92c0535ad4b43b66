//! Hostile archives from a store (issue 17, second part). Whoever controls a store controls a push's record,
//! manifest and archive together, so each archive here comes with a record and a manifest that match it: the archive
//! reader itself must refuse it. One test per kind; each restore is refused with a clear error, the migration folder
//! is byte for byte as it was, and nothing is written outside it.

use std::fs;
use std::io::Read;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::{World, stand_in_world};

/// A push whose archive is `archive` and whose manifest lists `files` (path, size, blake3 of `body`), added to the
/// project's local store as its newest generation, as a hostile store would serve it; returns its id.
fn inject(w: &World, files: &[(&str, &[u8])], archive: &[u8]) -> String {
    let project_file = w.read(".dreamerd.toml");
    let id = project_file.split('"').nth(1).unwrap().to_string();
    let dir = w.store().join("projects").join(&id);
    let head: Value = serde_json::from_str(&fs::read_to_string(dir.join("head.json")).unwrap()).unwrap();
    let n = head["generation"].as_u64().unwrap();
    let last: Value =
        serde_json::from_str(&fs::read_to_string(dir.join(format!("generations/{n:012}.json"))).unwrap())
            .unwrap();
    let entries: Vec<dreamerd::manifest::FileEntry> = files
        .iter()
        .map(|(path, body)| dreamerd::manifest::FileEntry {
            path: path.to_string(),
            size: body.len() as u64,
            blake3: blake3::hash(body).to_hex().to_string(),
        })
        .collect();
    let tree = dreamerd::manifest::tree_hash(&entries);
    fs::write(dir.join(format!("manifests/{tree}.json")), json!({"format": 1, "files": entries}).to_string())
        .unwrap();
    let archive_blake3 = blake3::hash(archive).to_hex().to_string();
    fs::write(dir.join(format!("archives/{archive_blake3}.tar.zst")), archive).unwrap();
    let push = format!("20991231T000000Z-{:08x}", n + 1);
    let mut generation = last.clone();
    generation["generation"] = json!(n + 1);
    generation["push"] = json!(push);
    generation["parent"] = last["push"].clone();
    generation["tree"] = json!(tree);
    generation["files"] = json!(entries.len());
    generation["archive_blake3"] = json!(archive_blake3);
    generation["archive_size"] = json!(archive.len());
    fs::write(dir.join(format!("generations/{:012}.json", n + 1)), generation.to_string()).unwrap();
    fs::write(dir.join("head.json"), json!({"generation": n + 1, "push": push}).to_string()).unwrap();
    push
}

/// zstd over a tar built by `build`, headers written as a hostile tool writes them.
fn tar_zst(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let raw = b.into_inner().unwrap();
    zstd::encode_all(&raw[..], 3).unwrap()
}

fn header(size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    h
}

/// A header whose name is written byte for byte (the tar crate refuses `..` and absolute names itself).
fn raw_name(mut h: tar::Header, name: &[u8]) -> tar::Header {
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    h
}

/// A pushed project, the hostile push injected, and its restore: refused, saying `says`, the folder unchanged and
/// nothing written beside the project.
fn refused(files: &[(&str, &[u8])], archive: &[u8], says: &str) {
    let w = stand_in_world();
    w.push_ok();
    let before = w.tree("drizzle");
    let around = listing(w.tmp.path());
    let push = inject(&w, files, archive);
    let (code, v) = w.json("dreamerd", &["restore", "--push", &push]);
    assert_ne!(code, 0, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "expected {says:?} in {v}");
    assert_eq!(w.tree("drizzle"), before, "the folder is byte for byte as it was");
    assert_eq!(listing(w.tmp.path()), around, "nothing written outside the state and store");
    assert!(!Path::new("/tmp/dreamerd-hostile-evil").exists());
}

/// Every path under `dir`, but the dreamerd folders that a refused restore may touch (its state, store, runtime).
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("xdg") || rel.contains("node_modules") {
                continue;
            }
            out.push(rel);
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, base, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_path_leaving_the_folder_is_refused() {
    let archive = tar_zst(|b| {
        let h = raw_name(header(4, tar::EntryType::Regular), b"../evil.sql");
        b.append(&h, &b"evil"[..]).unwrap();
    });
    refused(&[("../evil.sql", b"evil")], &archive, "unsafe path");
}

#[test]
fn an_absolute_path_is_refused() {
    let archive = tar_zst(|b| {
        let h = raw_name(header(4, tar::EntryType::Regular), b"/tmp/dreamerd-hostile-evil");
        b.append(&h, &b"evil"[..]).unwrap();
    });
    refused(&[("/tmp/dreamerd-hostile-evil", b"evil")], &archive, "unsafe path");
}

#[test]
fn a_symlink_and_a_file_written_through_it_are_refused() {
    let archive = tar_zst(|b| {
        let mut link = header(0, tar::EntryType::Symlink);
        link.set_link_name("/tmp").unwrap();
        b.append_data(&mut link, "meta", &b""[..]).unwrap();
        b.append_data(&mut header(4, tar::EntryType::Regular), "meta/dreamerd-hostile-evil", &b"evil"[..])
            .unwrap();
    });
    refused(&[("meta", b""), ("meta/dreamerd-hostile-evil", b"evil")], &archive, "only regular files");
}

#[test]
fn a_hard_link_is_refused() {
    let archive = tar_zst(|b| {
        let mut link = header(0, tar::EntryType::Link);
        link.set_link_name("/etc/passwd").unwrap();
        b.append_data(&mut link, "0000_a.sql", &b""[..]).unwrap();
    });
    refused(&[("0000_a.sql", b"")], &archive, "only regular files");
}

#[test]
fn a_device_is_refused() {
    let archive = tar_zst(|b| {
        let mut dev = header(0, tar::EntryType::Char);
        dev.set_device_major(1).unwrap();
        dev.set_device_minor(3).unwrap();
        b.append_data(&mut dev, "0000_a.sql", &b""[..]).unwrap();
    });
    refused(&[("0000_a.sql", b"")], &archive, "only regular files");
}

#[test]
fn a_fifo_is_refused() {
    let archive = tar_zst(|b| {
        b.append_data(&mut header(0, tar::EntryType::Fifo), "0000_a.sql", &b""[..]).unwrap();
    });
    refused(&[("0000_a.sql", b"")], &archive, "only regular files");
}

#[test]
fn a_duplicate_entry_is_refused() {
    let archive = tar_zst(|b| {
        b.append_data(&mut header(1, tar::EntryType::Regular), "0000_a.sql", &b"1"[..]).unwrap();
        b.append_data(&mut header(1, tar::EntryType::Regular), "0000_a.sql", &b"2"[..]).unwrap();
    });
    refused(&[("0000_a.sql", b"1")], &archive, "duplicate entry");
}

#[test]
fn a_bomb_far_larger_than_its_compressed_size_is_refused_before_it_is_written() {
    // 300 MiB of zeros in a few hundred KiB: past the 256 MiB a file may have.
    let size: u64 = 300 << 20;
    let archive = tar_zst(|b| {
        let mut h = header(size, tar::EntryType::Regular);
        b.append_data(&mut h, "0000_a.sql", std::io::repeat(0).take(size)).unwrap();
    });
    assert!(archive.len() as u64 * 1000 < size, "compressed {} bytes", archive.len());
    let zeros = vec![0u8; 1];
    refused(&[("0000_a.sql", &zeros)], &archive, "limit");
}

#[test]
fn a_truncated_archive_is_refused() {
    let archive = tar_zst(|b| {
        b.append_data(&mut header(4000, tar::EntryType::Regular), "0000_a.sql", &vec![b'x'; 4000][..])
            .unwrap();
    });
    let cut = &archive[..archive.len() / 2];
    refused(&[("0000_a.sql", &vec![b'x'; 4000])], cut, "refused");
}

#[test]
fn a_bit_flipped_archive_is_refused() {
    let body: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut archive = tar_zst(|b| {
        b.append_data(&mut header(4000, tar::EntryType::Regular), "0000_a.sql", &body[..]).unwrap();
    });
    let middle = archive.len() / 2;
    archive[middle] ^= 0x10;
    refused(&[("0000_a.sql", &body)], &archive, "refused");
}

#[test]
fn a_name_that_is_not_utf8_is_refused() {
    let archive = tar_zst(|b| {
        let h = raw_name(header(4, tar::EntryType::Regular), b"0000_\xff\xfe.sql");
        b.append(&h, &b"evil"[..]).unwrap();
    });
    refused(&[("0000_\u{fffd}\u{fffd}.sql", b"evil")], &archive, "unsafe path");
}
