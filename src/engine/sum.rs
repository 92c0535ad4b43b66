//! The committed sum of the migration folder: every file with its blake3 and size at the last push, so that
//! `dreamerd check` verifies the folder in a fresh clone with no store (a CI gate, as `atlas.sum` is), and a push
//! never takes hand-made files for a baseline when the store knows nothing.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result, check_format};
use crate::fsutil;
use crate::manifest::FileEntry;
use crate::project::Project;
use crate::safefs::Folder;
use crate::store::PushRecord;

/// The sum file's format.
pub const SUM_FORMAT: u32 = 1;
const MAX_SUM: u64 = 16 << 20;

/// What a sum file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sum {
    pub push: String,
    pub schema: Option<String>,
    pub files: Vec<FileEntry>,
}

/// The sum file of a project's config: `.dreamerd.sum` for the default config, `.dreamerd.<config>.sum` for another.
pub fn path(project: &Project) -> PathBuf {
    match project.config.as_ref().filter(|_| !project.is_default_config()) {
        Some(c) => project.root.join(format!(".dreamerd.{}.sum", c.replace('/', "-"))),
        None => project.root.join(".dreamerd.sum"),
    }
}

use crate::manifest::{file_line, tree_hash as root_hash};

impl Sum {
    /// The sum of a push.
    pub fn of(record: &PushRecord) -> Sum {
        Sum { push: record.id.clone(), schema: record.schema_blake3.clone(), files: record.files.clone() }
    }

    /// The file's text.
    pub fn text(&self) -> String {
        let mut out = format!(
            "# dreamerd: the migration folder at push {}. Commit this file: `dreamerd check` verifies the folder\n\
             # against it without any store. Two branches that both pushed conflict here; the merge needs a push.\n\
             format {SUM_FORMAT}\npush {}\nschema {}\nroot {}\n",
            self.push,
            self.push,
            self.schema.as_deref().unwrap_or("-"),
            root_hash(&self.files)
        );
        for f in &self.files {
            out += &file_line(f);
            out.push('\n');
        }
        out
    }

    /// Parses a sum file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Sum> {
        let shown = origin.display();
        if text.lines().any(|l| l.starts_with("<<<<<<<") || l.starts_with(">>>>>>>") || l == "=======") {
            return Err(Error::failed(
                format!("{shown} holds git conflict markers: two branches each pushed, and git merged both"),
                "keep the side of the branch you merged into, `dreamer database restore` its push, then \
                 `dreamer push` with the merged schema so the other branch's changes become one new migration",
            ));
        }
        let bad = |why: &str| Error::Corrupt(format!("{shown} is not a dreamerd sum: {why}"));
        let (mut format, mut push, mut schema, mut root) = (None, None, None, None);
        let mut files = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (key, rest) = line.split_once(' ').ok_or_else(|| bad("a line has no value"))?;
            match key {
                "format" => format = rest.parse::<u32>().ok(),
                "push" => push = Some(rest.to_string()),
                "schema" => schema = Some((rest != "-").then(|| rest.to_string())),
                "root" => root = Some(rest.to_string()),
                hash if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    let (size, path) =
                        rest.split_once(' ').ok_or_else(|| bad("a file line is incomplete"))?;
                    let size = size.parse().map_err(|_| bad("a file size is not a number"))?;
                    let path: String =
                        serde_json::from_str(path).map_err(|_| bad("a file path is not quoted"))?;
                    files.push(FileEntry { path, size, blake3: hash.to_string() });
                }
                _ => return Err(bad(&format!("unknown line {key:?}"))),
            }
        }
        check_format(format.ok_or_else(|| bad("no format line"))?, SUM_FORMAT, || {
            format!("the sum {shown}")
        })?;
        let push = push.ok_or_else(|| bad("no push line"))?;
        if root.as_deref() != Some(root_hash(&files).as_str()) {
            return Err(Error::Corrupt(format!(
                "{shown} was edited by hand: its file lines do not match its root hash"
            )));
        }
        Ok(Sum { push, schema: schema.flatten(), files })
    }

    /// The project's sum, read without following a link; `None` when there is none.
    pub fn read(project: &Project) -> Result<Option<Sum>> {
        let path = path(project);
        let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
        let text = Folder::open(&project.root)
            .and_then(|f| match f {
                Some(folder) => folder.read_string(&name, MAX_SUM),
                None => Ok(None),
            })
            .ctx("read", &path)?;
        text.map(|t| Sum::parse(&t, &path)).transpose()
    }

    /// Writes the project's sum for `record`, when it says something else.
    pub fn write(project: &Project, record: &PushRecord) -> Result<()> {
        let sum = Sum::of(record);
        if Sum::read(project).ok().flatten().as_ref() == Some(&sum) {
            return Ok(());
        }
        let path = path(project);
        fsutil::atomic_write(&path, sum.text().as_bytes()).ctx("write", &path)
    }

    /// The sum as a baseline record (no archive: it only verifies).
    pub fn as_record(&self, project_id: &str) -> PushRecord {
        PushRecord {
            format: crate::store::RECORD_FORMAT,
            id: self.push.clone(),
            project_id: project_id.to_string(),
            at: String::new(),
            at_ms: 0,
            files: self.files.clone(),
            schema_blake3: self.schema.clone(),
            archive_blake3: String::new(),
            archive_size: 0,
            host: String::new(),
            root: String::new(),
            parent: None,
            generation: None,
            branch: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum() -> Sum {
        Sum {
            push: "20261125T000000Z-abcd1234".into(),
            schema: Some("ab".repeat(32)),
            files: vec![
                FileEntry { path: "0000_a.sql".into(), size: 3, blake3: "cd".repeat(32) },
                FileEntry { path: "odd name\n.sql".into(), size: 1, blake3: "ef".repeat(32) },
            ],
        }
    }

    #[test]
    fn round_trip_and_hand_edits_and_conflicts() {
        let s = sum();
        assert_eq!(Sum::parse(&s.text(), Path::new("s")).unwrap(), s);
        let edited = s.text().replace(" 3 ", " 4 ");
        assert!(Sum::parse(&edited, Path::new("s")).unwrap_err().to_string().contains("edited by hand"));
        let conflict = format!("<<<<<<< HEAD\n{}=======\n{}>>>>>>> other\n", s.text(), s.text());
        let err = Sum::parse(&conflict, Path::new("s")).unwrap_err();
        assert!(err.to_string().contains("conflict markers"), "{err}");
        let newer = s.text().replace("format 1", "format 9");
        assert_eq!(Sum::parse(&newer, Path::new("s")).unwrap_err().exit_code(), 2);
    }
}
