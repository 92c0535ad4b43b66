//! One integration-test binary: every scenario runs the real `dreamerd` and `dreamer` binaries.

mod support;

mod daemon;
mod diagnosis_e2e;
mod drizzle_e2e;
mod push_restore;
mod safety;
