//! One integration-test binary: every scenario runs the real `dreamerd` and `dreamer` binaries.

mod support;

mod baselines;
mod daemon;
mod diagnosis_e2e;
mod drizzle_e2e;
mod layouts;
mod push_restore;
mod safety;
mod verify;
