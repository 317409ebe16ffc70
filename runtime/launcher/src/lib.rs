//! Ray's cluster launcher and autoscaler for rayish: `rayish up/down/exec/submit/attach`
//! from Ray's cluster YAML ([`launcher`]), and the autoscaler a head started with
//! `--autoscaling-config` runs ([`autoscaler`]).
//!
//! A client of the cluster like `rayish status`: it runs commands on machines over ssh
//! and speaks to the head through `rayish-core`'s protocol and transport only. Kept
//! out of the `rayish` library so that programs using rayish never compile its YAML
//! and ssh dependencies.

#![warn(missing_docs)]

pub mod autoscaler;
pub mod launcher;
