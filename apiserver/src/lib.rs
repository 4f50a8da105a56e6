//! The coredump.io extension API server.
