//! A full disk (issue 17, fifth part): a small tmpfs holds the store, the state folder, and the project in turn.
//! Each push or restore that runs out of space says so clearly, leaves no partial folder and loses nothing, and
//! everything works again once space is freed. Mounting needs root (CI runs as root); elsewhere the tests are
//! skipped, loudly.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{GENERATE, MIGRATE_OK, World};

/// A tmpfs of `kib` KiB mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        if rustix_euid() != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root and must run the full-disk tests");
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Some(Tmpfs(dir.to_path_buf()))
    }

    /// [`Tmpfs::mount`] over a folder that holds files already: they are copied onto the tmpfs.
    fn mount_over(dir: &Path, kib: u64) -> Option<Tmpfs> {
        let files = crate::support::tree_of(dir);
        let disk = Tmpfs::mount(dir, kib)?;
        for (rel, bytes) in files {
            let path = dir.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
        Some(disk)
    }

    /// Fills it but for `left` bytes, with a file `free` removes.
    fn fill(&self, left: u64) {
        use std::io::Write;
        let filler = self.0.join(".filler");
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&filler).unwrap();
        let chunk = vec![1u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(left)).unwrap();
    }

    fn free(&self) {
        let _ = fs::remove_file(self.0.join(".filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn rustix_euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A stand-in project whose generate writes a migration of `sql_kib` KiB, so that space matters.
fn world() -> World {
    let w = World::empty();
    let big = GENERATE.replace(
        "printf 'CREATE TABLE t%s (id integer);' \"$n\" > \"drizzle/000${n}_step.sql\"",
        "{ printf 'CREATE TABLE t%s (id integer);' \"$n\"; head -c 65536 /dev/zero | tr '\\0' ' '; } > \
         \"drizzle/000${n}_step.sql\" || exit 1",
    );
    assert_ne!(big, GENERATE, "the stand-in changed shape");
    w.stand_ins(&big, MIGRATE_OK);
    w
}

#[test]
fn a_full_store_keeps_the_backup_waiting_and_takes_it_once_space_is_freed() {
    let w = world();
    let store = w.tmp.path().join("small-store");
    let Some(disk) = Tmpfs::mount(&store, 1024) else { return };
    w.config(&format!(
        "{}[store]\nurl = \"file://{}\"\n",
        fs::read_to_string(w.xdg("config").join("dreamerd/config.toml")).unwrap(),
        store.display()
    ));
    w.push_ok();
    disk.fill(4096);
    w.write("src/schema.ts", "export const x = 2;\n");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["diagnosis"]["code"], "backup-failed", "{v}");
    let message = v["diagnosis"]["message"].as_str().unwrap();
    assert!(message.contains("No space left on device"), "{message}");
    // The database has the migration, so the folder keeps it, and its backup waits locally.
    assert_eq!(v["rolled_back"], false);
    let status = w.json("dreamerd", &["check"]).1;
    assert!(status["backup_waiting"]["push"].is_string(), "{status}");
    let kept = w.tree("drizzle");
    // Space back: the next push stores the waiting backup first.
    disk.free();
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
    let status = w.json("dreamerd", &["check"]).1;
    assert!(status.get("backup_waiting").is_none(), "{status}");
    let now = w.tree("drizzle");
    assert!(
        kept.iter().all(|(path, bytes)| now.get(path) == Some(bytes) || path.starts_with("meta/")),
        "nothing lost"
    );
}

#[test]
fn a_full_project_disk_rolls_the_push_back_and_restore_refuses_changing_nothing() {
    let w = world();
    let Some(disk) = Tmpfs::mount_over(&w.root, 1024) else { return };
    w.push_ok();
    let pushed = w.tree("drizzle");
    disk.fill(16 * 1024);
    // No room for what generate writes and for a rollback: refused before anything runs.
    w.write("src/schema.ts", "export const x = 2;\n");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        (v["diagnosis"]["code"].as_str(), v["rolled_back"].as_bool()),
        (Some("disk-full"), Some(true)),
        "{v}"
    );
    assert!(v["diagnosis"]["message"].as_str().unwrap().contains("KiB free"), "{v}");
    assert_eq!(w.tree("drizzle"), pushed, "no partial folder");
    // A hand edit, then a restore with no room to stage the push: refused, the edit still there.
    fs::remove_file(w.path("drizzle/0000_step.sql")).unwrap();
    // The file's pages are freed only once nobody has it open: a scan of the daemon that was reading it would free
    // them after the fill, room for the restore. Once the daemon reports the deletion, that scan is over.
    w.wait_for("the daemon to see the deletion", || {
        w.status()["violations"].as_array().is_some_and(|v| v.iter().any(|v| v["kind"] == "deleted"))
    });
    disk.fill(0);
    let edited = w.tree("drizzle");
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_ne!(code, 0, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("No space left on device"), "{v}");
    assert_eq!(w.tree("drizzle"), edited, "nothing changed");
    // Space back: restore and push work again.
    disk.free();
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(w.tree("drizzle"), pushed);
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn a_full_state_folder_refuses_the_push_before_anything_runs() {
    let w = world();
    let Some(disk) = Tmpfs::mount(&w.xdg("state"), 2048) else { return };
    w.push_ok();
    let pushed = w.tree("drizzle");
    // A database to copy before migrate (the stand-ins do not touch it).
    w.write("drizzle.config.json", crate::support::CONFIG_JSON_DB);
    let db = rusqlite::Connection::open(w.path("local.db")).unwrap();
    db.execute_batch("CREATE TABLE blobs (b blob); INSERT INTO blobs VALUES (zeroblob(262144));").unwrap();
    drop(db);
    disk.fill(0);
    w.write("src/schema.ts", "export const x = 2;\n");
    let (code, v) = w.json("dreamer", &["push"]);
    assert_ne!(code, 0, "{v}");
    let said = v.to_string();
    assert!(said.contains("No space left on device") || said.contains("disk is full"), "{said}");
    assert_eq!(w.tree("drizzle"), pushed, "nothing ran");
    disk.free();
    let (code, v) = w.json("dreamer", &["push"]);
    assert_eq!(code, 0, "{v}");
}
