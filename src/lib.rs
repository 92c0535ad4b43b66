//! dreamerd guards the `drizzle/` migration folder of drizzle-orm projects: it detects hand edits against the
//! manifest of the last successful push, and makes push and restore safe.
//!
//! All behaviour lives in this library; the `dreamerd` and `dreamer` binaries only parse arguments and call
//! [`cli::main`].

pub mod alerts;
pub mod archive;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dirs;
pub mod drizzle;
pub mod engine;
pub mod error;
pub mod facts;
pub mod fault;
pub mod fsutil;
pub mod ipc;
pub mod logging;
pub mod manifest;
pub mod project;
pub mod safefs;
pub mod service;
pub mod store;
