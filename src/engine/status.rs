//! Status and check: how drizzle/ and src/schema.ts compare with the last successful push.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Engine;
use crate::drizzle::{Drift, database};
use crate::error::{IoContext, Result};
use crate::manifest::{self, Violation};
use crate::project::Project;

/// The state of a project, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectState {
    Clean,
    Violated,
    NoBaseline,
    Busy,
}

/// The last successful push, briefly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPush {
    pub id: String,
    pub at: String,
    pub files: usize,
}

/// One project's status, in the contract's JSON shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectStatus {
    pub root: PathBuf,
    pub state: ProjectState,
    pub violations: Vec<Violation>,
    pub schema_pending: bool,
    pub last_push: Option<LastPush>,
    /// Journal faults and disagreements between the database and drizzle/.
    pub drift: Vec<Drift>,
}

impl ProjectStatus {
    /// True when check should exit 0.
    pub fn is_clean(&self) -> bool {
        matches!(self.state, ProjectState::Clean | ProjectState::NoBaseline) && self.drift.is_empty()
    }
}

impl Engine {
    /// Compares drizzle/ and src/schema.ts with the last successful push. Read-only; needs no lock.
    pub fn status(&self, project: &Project) -> Result<ProjectStatus> {
        let baseline = self.baseline(project)?;
        let last_push =
            baseline.as_ref().map(|b| LastPush { id: b.id.clone(), at: b.at.clone(), files: b.files.len() });
        let schema = project.schema_hash()?;
        let mut status = ProjectStatus {
            root: project.root.clone(),
            state: ProjectState::NoBaseline,
            violations: Vec::new(),
            schema_pending: schema.is_some(),
            last_push,
            drift: Vec::new(),
        };
        if self.is_busy(project) {
            status.state = ProjectState::Busy;
            status.schema_pending = false;
            return Ok(status);
        }
        status.drift = database::check(&project.root, self.config.database.url.as_deref());
        if let Some(base) = baseline {
            let drizzle = project.drizzle();
            let tree = manifest::scan(&drizzle).ctx("read", &drizzle)?;
            status.violations = manifest::diff(&base.files, &tree);
            status.schema_pending = schema != base.schema_blake3;
            status.state =
                if status.violations.is_empty() { ProjectState::Clean } else { ProjectState::Violated };
        }
        Ok(status)
    }
}
