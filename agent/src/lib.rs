//! The guest side of runm, as a library: PID-1 set-up shared by the agent and the test
//! guest used by the integration tests, and the agent's container machinery.

pub mod agent;
pub mod cgroup;
pub mod copyup;
pub mod deadline;
pub mod debug;
pub mod helper;
pub mod init;
pub mod network;
pub mod precheck;
pub mod process;
pub mod reaper;
pub mod relay;
pub mod rootfs;
pub mod spec;
pub mod streams;
