//! XDG base directories, resolved once from the environment.

use std::env;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where dreamerd keeps its configuration, state, data and socket.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `$XDG_CONFIG_HOME/dreamerd/config.toml`, read only if it exists.
    pub config_file: PathBuf,
    /// `$XDG_STATE_HOME/dreamerd`: locks, operation journals, quarantine, logs.
    pub state: PathBuf,
    /// `$XDG_DATA_HOME/dreamerd`: the default local backup store lives here.
    pub data: PathBuf,
    /// `$XDG_CACHE_HOME/dreamerd`: archives downloaded from a remote store.
    pub cache: PathBuf,
    /// `$XDG_RUNTIME_DIR/dreamerd`, if the session has a runtime directory.
    pub runtime: Option<PathBuf>,
}

/// An XDG variable counts only when it is set to an absolute path (the spec says to ignore relative ones).
fn xdg(var: &str) -> Option<PathBuf> {
    env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute())
}

impl Dirs {
    /// Resolves the directories from the process environment.
    pub fn from_env() -> Result<Dirs> {
        let home = || {
            env::var_os("HOME").map(PathBuf::from).filter(|p| p.is_absolute()).ok_or_else(|| {
                Error::Usage(
                    "HOME is not set to an absolute path, so the XDG directories cannot be found; \
                     set HOME or the XDG_*_HOME variables"
                        .into(),
                )
            })
        };
        let pick = |var: &str, fallback: &[&str]| -> Result<PathBuf> {
            match xdg(var) {
                Some(p) => Ok(p),
                None => Ok(fallback.iter().fold(home()?, |p, part| p.join(part))),
            }
        };
        Ok(Dirs {
            config_file: pick("XDG_CONFIG_HOME", &[".config"])?.join("dreamerd/config.toml"),
            state: pick("XDG_STATE_HOME", &[".local", "state"])?.join("dreamerd"),
            data: pick("XDG_DATA_HOME", &[".local", "share"])?.join("dreamerd"),
            cache: pick("XDG_CACHE_HOME", &[".cache"])?.join("dreamerd"),
            runtime: xdg("XDG_RUNTIME_DIR").map(|p| p.join("dreamerd")),
        })
    }

    /// The default backup store directory.
    pub fn default_store(&self) -> PathBuf {
        self.data.join("store")
    }
}
