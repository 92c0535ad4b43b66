//! drizzle-kit 1.0's questions and their answers. Without a terminal, 1.0's generate asks nothing: it exits 2 and
//! lists what it cannot decide (`missing_hints: N unresolved decisions`), each with the JSON that answers it, and
//! takes the answers as a JSON array (`--hints-file`). Entities are tuples that start with the schema (`public` on
//! SQLite too): `["public", "users", "mail"]` for a column, `["public", "articles"]` for a table.

use serde_json::{Value, json};

/// One decision drizzle-kit asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// `column`, `table`, `index`...
    pub kind: String,
    /// The new entity, schema first.
    pub entity: Vec<String>,
}

impl Question {
    /// The entity without its schema, as the schema file names it (`users.mail`).
    pub fn shown(&self) -> String {
        self.entity.iter().skip(1).cloned().collect::<Vec<_>>().join(".")
    }

    /// The question, as a person would ask it.
    pub fn asked(&self) -> String {
        format!("is {} {} renamed from another {}, or created?", self.kind, self.shown(), self.kind)
    }

    /// The flags that answer it.
    pub fn flags(&self) -> String {
        let shown = self.shown();
        let old = match shown.rsplit_once('.') {
            Some((parent, _)) => format!("{parent}.OLD"),
            None => "OLD".to_string(),
        };
        format!("`--rename {old}={shown}` if it was renamed from OLD, `--create {shown}` if it is new")
    }
}

/// The questions of a generate that stopped for them (exit 2), from its output: each is listed with the `create`
/// answer as a line of JSON.
pub fn questions(output: &str) -> Vec<Question> {
    if !output.contains("missing_hints") {
        return Vec::new();
    }
    let mut out = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        // `--output json`: the whole answer on one line.
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            if let Some(items) = v.get("unresolved").and_then(Value::as_array) {
                out.extend(items.iter().filter_map(question_of));
            } else if v.get("type").and_then(Value::as_str) == Some("create") {
                out.extend(question_of(&v));
            }
        }
    }
    out.dedup();
    out
}

fn question_of(v: &Value) -> Option<Question> {
    let entity: Vec<String> =
        v.get("entity")?.as_array()?.iter().map(|s| s.as_str().map(String::from)).collect::<Option<_>>()?;
    Some(Question { kind: v.get("kind")?.as_str()?.to_string(), entity })
}

fn parts(name: &str) -> Vec<String> {
    name.split('.').map(|s| s.trim().to_string()).collect()
}

/// Whether `name` (dotted) names the entity: it is the entity's tail.
fn names(name: &[String], entity: &[String]) -> bool {
    !name.is_empty() && name.len() <= entity.len() && entity[entity.len() - name.len()..] == *name
}

/// A `--rename OLD=NEW` or `--create NAME` that is not well formed.
pub fn check(renames: &[String], creates: &[String]) -> Result<(), String> {
    for r in renames {
        let Some((old, new)) = r.split_once('=') else {
            return Err(format!(
                "--rename {r:?} is not OLD=NEW (for instance --rename users.email=users.mail)"
            ));
        };
        if parts(old).iter().chain(parts(new).iter()).any(|p| p.is_empty()) {
            return Err(format!("--rename {r:?} names an empty table or column"));
        }
    }
    if let Some(c) = creates.iter().find(|c| parts(c).iter().any(|p| p.is_empty())) {
        return Err(format!("--create {c:?} names an empty table or column"));
    }
    Ok(())
}

/// The answers to `questions` from `--rename` and `--create`, as drizzle-kit's hints; `Err` with the questions left
/// unanswered.
pub fn answer(
    questions: &[Question],
    renames: &[String],
    creates: &[String],
) -> Result<Vec<Value>, Vec<Question>> {
    let mut hints = Vec::new();
    let mut open = Vec::new();
    for q in questions {
        let renamed =
            renames.iter().filter_map(|r| r.split_once('=')).find(|(_, new)| names(&parts(new), &q.entity));
        if let Some((old, _)) = renamed {
            // OLD replaces as many trailing parts as it has: `email` the column, `users.email` table and column.
            let old = parts(old);
            let k = old.len().min(q.entity.len());
            let mut from: Vec<String> = q.entity[..q.entity.len() - k].to_vec();
            from.extend(old[old.len() - k..].iter().cloned());
            hints.push(json!({"type": "rename", "kind": q.kind, "from": from, "to": q.entity}));
        } else if creates.iter().any(|c| names(&parts(c), &q.entity)) {
            hints.push(json!({"type": "create", "kind": q.kind, "entity": q.entity}));
        } else {
            open.push(q.clone());
        }
    }
    if open.is_empty() { Ok(hints) } else { Err(open) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASKED: &str = r#"No config path provided, using default 'drizzle.config.ts'
+ mail column will be created
--- all column conflicts resolved ---

missing_hints: 2 unresolved decisions

1. Rename or create  —  column  public.users.mail
   Add to --hints:
     { "type": "rename", "kind": "column", "from": ["<schema>", "<table>", "<old_name>"], "to": ["public", "users", "mail"] }
     OR
     { "type": "create", "kind": "column", "entity": ["public", "users", "mail"] }

2. Rename or create  —  table  public.articles
   Add to --hints:
     { "type": "rename", "kind": "table", "from": ["<schema>", "<old_name>"], "to": ["public", "articles"] }
     OR
     { "type": "create", "kind": "table", "entity": ["public", "articles"] }

Re-run with --hints '<json-array>'. Exit code 2.
"#;

    #[test]
    fn questions_from_text_and_json() {
        let q = questions(ASKED);
        assert_eq!(q.len(), 2);
        assert_eq!(
            q[0],
            Question { kind: "column".into(), entity: vec!["public".into(), "users".into(), "mail".into()] }
        );
        assert_eq!(q[1].shown(), "articles");
        let json = r#"{"status":"missing_hints","unresolved":[{"type":"rename_or_create","kind":"table","entity":["public","articles"]}]}"#;
        assert_eq!(questions(json), vec![q[1].clone()]);
        assert!(questions("Everything's fine").is_empty());
    }

    #[test]
    fn answers_renames_and_creates() {
        let q = questions(ASKED);
        let renames = vec!["users.email=users.mail".to_string(), "posts=articles".to_string()];
        let hints = answer(&q, &renames, &[]).unwrap();
        assert_eq!(
            hints[0],
            json!({"type": "rename", "kind": "column", "from": ["public", "users", "email"], "to": ["public", "users", "mail"]})
        );
        assert_eq!(
            hints[1],
            json!({"type": "rename", "kind": "table", "from": ["public", "posts"], "to": ["public", "articles"]})
        );
        // The short forms.
        let hints = answer(&q, &["email=mail".to_string()], &["articles".to_string()]).unwrap();
        assert_eq!(hints[0]["from"], json!(["public", "users", "email"]));
        assert_eq!(hints[1], json!({"type": "create", "kind": "table", "entity": ["public", "articles"]}));
        // Unanswered.
        let open = answer(&q, &["users.email=users.mail".to_string()], &[]).unwrap_err();
        assert_eq!(open, vec![q[1].clone()]);
        assert_eq!(
            open[0].flags(),
            "`--rename OLD=articles` if it was renamed from OLD, `--create articles` if it is new"
        );
        assert_eq!(
            q[0].flags(),
            "`--rename users.OLD=users.mail` if it was renamed from OLD, `--create users.mail` if it is new"
        );
        assert!(check(&["nope".into()], &[]).is_err());
        assert!(check(&["a.=b".into()], &[]).is_err());
    }
}
