//! The guest side of runm, as a library: PID-1 set-up shared by the agent and the test
//! guest used by the integration tests.

pub mod init;
