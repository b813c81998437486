//! One module per `runm` verb.

pub mod boot;
