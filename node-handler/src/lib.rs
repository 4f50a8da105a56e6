//! Node handler: `capture` (run by the kernel) and `agent` (the
//! DaemonSet). Both share the spool format in [`spool`].

pub mod agent;
pub mod analysis;
pub mod buildid;
pub mod capture;
pub mod cgroup;
pub mod config;
pub mod deliver;
pub mod escape;
pub mod events;
pub mod install;
pub mod limits;
pub mod logtail;
pub mod metrics;
pub mod pattern;
pub mod pods;
pub mod procinfo;
pub mod spool;
pub mod wakeup;
