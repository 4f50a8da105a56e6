//! Node handler: `capture` (run by the kernel) and, later, `agent` (the
//! DaemonSet). Both share the spool format in [`spool`].

pub mod capture;
pub mod cgroup;
pub mod config;
pub mod install;
pub mod limits;
pub mod pattern;
pub mod procinfo;
pub mod spool;
