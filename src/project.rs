//! A drizzle project: where its root is, its migration folder, its schema, and its identity.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result, check_format};
use crate::fsutil;
use crate::safefs::Folder;
use crate::store::valid_id;

/// Files whose presence marks a directory as a project root.
const ROOT_MARKERS: &[&str] = &[
    "drizzle.config.ts",
    "drizzle.config.js",
    "drizzle.config.mjs",
    "drizzle.config.cjs",
    "drizzle.config.json",
    "src/schema.ts",
];

/// The project file that carries the identity. Committed with the project, so a clone finds its backups.
pub const ID_FILE: &str = ".dreamerd.toml";

/// The project file's format. 1: `id` (dreamerd 0.1.0 wrote it without a `format` key).
pub const PROJECT_FORMAT: u32 = 1;

/// The largest project file read.
const MAX_PROJECT_FILE: u64 = 1 << 20;

/// A discovered project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Canonical absolute root.
    pub root: PathBuf,
}

impl Project {
    /// Finds the project at `dir` (default: the current directory) or its nearest ancestor with a marker.
    pub fn discover(dir: Option<&Path>) -> Result<Project> {
        let start = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_dir().ctx("read", Path::new("the current directory"))?,
        };
        let canonical = fs::canonicalize(&start).map_err(|e| {
            Error::Usage(format!("cannot use {} as a project directory: {e}", start.display()))
        })?;
        for candidate in canonical.ancestors() {
            if ROOT_MARKERS.iter().any(|m| candidate.join(m).is_file()) {
                return Ok(Project { root: candidate.to_path_buf() });
            }
        }
        Err(Error::Usage(format!(
            "no drizzle project at or above {}: none of drizzle.config.{{ts,js,mjs,cjs,json}} or src/schema.ts \
             was found; run dreamerd inside the project or pass its directory",
            canonical.display()
        )))
    }

    /// `<root>/drizzle`
    pub fn drizzle(&self) -> PathBuf {
        self.root.join("drizzle")
    }

    /// `<root>/src/schema.ts`
    pub fn schema(&self) -> PathBuf {
        self.root.join("src/schema.ts")
    }

    /// The blake3 of `src/schema.ts`, read without following a link; `None` when there is none.
    pub fn schema_hash(&self) -> Result<Option<String>> {
        let read = Folder::open(&self.root).and_then(|f| match f {
            Some(folder) => crate::manifest::hash_in(&folder, "src/schema.ts"),
            None => Ok(None),
        });
        read.ctx("read", &self.schema())
    }

    /// A short, readable key for this checkout in the state directory: folder name plus a hash of the path.
    pub fn local_key(&self) -> String {
        let name: String = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .take(40)
            .collect();
        let hash = blake3::hash(self.root.as_os_str().as_encoded_bytes()).to_hex();
        format!("{name}-{}", &hash[..12])
    }

    /// The project's identity, if it has one yet.
    pub fn id(&self) -> Result<Option<String>> {
        let path = self.root.join(ID_FILE);
        let read = Folder::open(&self.root).and_then(|f| match f {
            Some(folder) => folder.read_string(ID_FILE, MAX_PROJECT_FILE),
            None => Ok(None),
        });
        let text = match read {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e).ctx("read", &path),
        };
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct IdFile {
            #[serde(default = "first_format")]
            format: u32,
            id: String,
        }
        fn first_format() -> u32 {
            1
        }
        let parsed: IdFile = toml::from_str(&text).map_err(|e| Error::Config {
            message: format!("{} is not a dreamerd project file: {}", path.display(), e.message().trim()),
        })?;
        check_format(parsed.format, PROJECT_FORMAT, || format!("the project file {}", path.display()))?;
        if !valid_id(&parsed.id) {
            return Err(Error::Config {
                message: format!("{}: id {:?} is not a valid project id", path.display(), parsed.id),
            });
        }
        Ok(Some(parsed.id))
    }

    /// The project's identity, created on first use: a random id in the project file, so two different projects
    /// never share backups (whatever their package names) and a clone of this one finds them.
    pub fn ensure_id(&self) -> Result<String> {
        self.ensure_id_as(&uuid::Uuid::new_v4().simple().to_string())
    }

    /// The project's identity; if it has none, `id` is written as its identity.
    pub fn ensure_id_as(&self, id: &str) -> Result<String> {
        if let Some(existing) = self.id()? {
            return Ok(existing);
        }
        let text = format!(
            "# dreamerd project file: ties this project to its backups.\n\
             # Commit this file. Do not copy it into another project.\n\
             format = {PROJECT_FORMAT}\n\
             id = \"{id}\"\n"
        );
        let path = self.root.join(ID_FILE);
        fsutil::write_new(&path, text.as_bytes()).ctx("write", &path)?;
        // Another process may have won the race: its id is the one.
        self.id()?.ok_or_else(|| Error::failed(format!("{} vanished", path.display()), "try again"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_nearest_root_from_a_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("app/src/deep")).unwrap();
        fs::write(dir.path().join("app/drizzle.config.ts"), "").unwrap();
        let p = Project::discover(Some(&dir.path().join("app/src/deep"))).unwrap();
        assert_eq!(p.root, fs::canonicalize(dir.path().join("app")).unwrap());
    }

    #[test]
    fn no_project_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Project::discover(Some(dir.path())).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pa = Project { root: a.path().into() };
        let pb = Project { root: b.path().into() };
        let id = pa.ensure_id().unwrap();
        assert_eq!(pa.ensure_id().unwrap(), id);
        assert_ne!(pb.ensure_id().unwrap(), id);
        assert!(fs::read_to_string(a.path().join(ID_FILE)).unwrap().contains("format = 1\n"));
        fs::write(a.path().join(ID_FILE), "id = \"../../x\"\n").unwrap();
        assert!(pa.id().is_err());
    }

    #[test]
    fn project_files_of_the_first_release_and_of_a_newer_one() {
        let a = tempfile::tempdir().unwrap();
        let p = Project { root: a.path().into() };
        let release = include_str!("../tests/formats/0.1.0/project/.dreamerd.toml");
        fs::write(a.path().join(ID_FILE), release).unwrap();
        assert_eq!(p.id().unwrap().as_deref(), Some("101d1916aaa745a4b7647f0c28c8525f"));
        fs::write(a.path().join(ID_FILE), "format = 2\nid = \"abc\"\n").unwrap();
        let err = p.id().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("format 2"), "{err}");
        fs::remove_file(a.path().join(ID_FILE)).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            a.path().join(ID_FILE),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(p.id().unwrap_err().to_string().contains("fifo"));
    }
}
