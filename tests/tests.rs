//! One integration-test binary: every scenario runs the real `dreamerd` and `dreamer` binaries.

mod baselines;
mod crash;
mod daemon;
mod database_safety;
mod diagnosis_e2e;
mod drizzle_e2e;
mod drizzle_v1;
mod full_disk;
mod fuzz;
mod git;
mod hostile;
mod layouts;
mod load;
mod performance;
mod push_restore;
mod s3;
mod safety;
mod servers;
mod service;
mod support;
mod systemd;
mod verify;
