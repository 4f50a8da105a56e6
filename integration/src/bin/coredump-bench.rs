//! `make bench` (being written).
fn main() {}
