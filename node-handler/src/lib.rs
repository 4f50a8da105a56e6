//! Node handler: `capture` (run by the kernel) and `agent` (the DaemonSet).
