//! The library's error type and how each error maps to the contract's exit codes.

use std::io;
use std::path::Path;

/// Everything that can go wrong in dreamerd, grouped by what the user has to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is malformed or holds an unknown key or a wrong type.
    #[error("{message}")]
    Config { message: String },
    /// The command line or the project layout does not make sense.
    #[error("{0}")]
    Usage(String),
    /// The machine is not set up as dreamerd needs (unreadable directories, bad permissions...).
    #[error("{context}: {source}")]
    Environment {
        context: String,
        #[source]
        source: io::Error,
    },
    /// An operation was attempted and failed; nothing was changed unless the message says so.
    #[error("{message}")]
    Failed { message: String, hint: Option<String> },
    /// Another push or restore holds the project.
    #[error("{0}")]
    Busy(String),
    /// A stored backup is damaged or hostile.
    #[error("{0}")]
    Corrupt(String),
    /// The daemon is not running and `--no-spawn` forbids starting it.
    #[error("{0}")]
    DaemonUnreachable(String),
    /// A file or store was written by a newer dreamerd, in a format this one does not know.
    #[error(
        "{what} was written by a newer dreamerd (format {found}; this dreamerd {version} knows formats up to {known})"
    )]
    NewerFormat { what: String, found: u32, known: u32, version: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code the contract assigns to this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. }
            | Error::Usage(_)
            | Error::Environment { .. }
            | Error::NewerFormat { .. } => 2,
            Error::Failed { .. } | Error::Busy(_) | Error::Corrupt(_) => 1,
            Error::DaemonUnreachable(_) => 3,
        }
    }

    /// What the user should do next, when there is something useful to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Failed { hint, .. } => hint.clone(),
            Error::Config { .. } => {
                Some("every key and its default are documented in config/dreamerd.toml".to_string())
            }
            Error::Busy(_) => Some("wait for the running operation to finish, then try again".into()),
            Error::Corrupt(_) => {
                Some("restore another push with `dreamerd restore --push ID` (see `dreamerd history`)".into())
            }
            Error::NewerFormat { .. } => {
                Some("upgrade dreamerd to the release that wrote it; nothing was changed".into())
            }
            _ => None,
        }
    }

    /// An operation failure with a hint.
    pub fn failed(message: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Failed { message: message.into(), hint: Some(hint.into()) }
    }
}

/// Refuses a format version newer than `known`; `what` names the file or store for the message. Older versions are
/// the caller's to migrate.
pub fn check_format(found: u32, known: u32, what: impl FnOnce() -> String) -> Result<()> {
    if found > known {
        return Err(Error::NewerFormat { what: what(), found, known, version: env!("CARGO_PKG_VERSION") });
    }
    Ok(())
}

/// Attaches a path and a verb to an I/O error so the message says what was being done to what.
pub trait IoContext<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Environment {
            context: format!("cannot {what} {}", path.display()),
            source,
        })
    }
}
