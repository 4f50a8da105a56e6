//! `make bench`: each figure beside a baseline measured in the same run on the same
//! machine, reported as a ratio. `make test` runs every benchmark once at [`Scale::Tiny`]
//! so the code cannot rot; nothing here asserts anything about time.
//!
//! - [`capture`]: crash → reaped through the real kernel path, our handler against
//!   `cat > /dev/null`, `cat > file`, raw file then gzip, and the zstd CLI.
//! - [`api`]: creates, lists and a watch of Coredumps against the same objects as a
//!   CustomResourceDefinition in the same kube-apiserver.
//! - [`transfer`]: upload and download of one core, direct and through the aggregator,
//!   against `cat` of the stored file.
//! - [`backends`]: upload and download of one core on the filesystem and the S3 backend,
//!   with the server's RSS growth during each transfer.
//! - [`e2e`]: crash → `Stored` through agent and server.
//! - [`insight`]: the crash analysis's time per crash for each test program, and the
//!   build-id cache after many crashes of one program.

pub mod api;
pub mod backends;
pub mod capture;
pub mod e2e;
pub mod insight;
pub mod report;
pub mod transfer;

use std::time::Duration;

/// How big a run is: `Full` for `make bench`, `Tiny` for `make test`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Tiny,
    Full,
}

/// The `p`-th percentile (0–100) of `samples` by nearest rank; zero when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The median of `samples`.
pub fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

/// MB/s (10^6 bytes per second) for `bytes` moved in `d`.
pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s == 0.0 {
        return f64::INFINITY;
    }
    bytes as f64 / 1e6 / s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let s = ms(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(10));
        assert_eq!(percentile(&s, 0.0), Duration::from_millis(1));
        assert_eq!(median(&[]), Duration::ZERO);
        assert!((mb_per_s(2_000_000, Duration::from_secs(2)) - 1.0).abs() < 1e-9);
    }
}
