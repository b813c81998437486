//! One module per group of subcommands.

pub mod boot;
pub mod check;
pub mod create;
pub mod exec;
pub mod info;
pub mod lifecycle;
