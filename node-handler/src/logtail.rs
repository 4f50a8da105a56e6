//! The last lines a crashed container wrote, from the kubelet's log files
//! (`/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`, CRI format:
//! `<RFC3339 time> <stdout|stderr> <F|P> <text>`, `P` marking a line the runtime split).
//!
//! Invariants: at most [`READ_BYTES`] are read from the end of one file, and at most
//! `max` bytes of text are returned, cut on a character boundary (invalid UTF-8 is
//! replaced). Path parts come from the API (namespace, pod, UID, container): each must be
//! a single path component, else nothing is read. Whether to read at all is the agent's
//! setting (`--no-log-tail`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Bytes read from the end of the log file: enough for 4 KiB of text under the
/// prefixes of many short lines.
pub const READ_BYTES: u64 = 64 << 10;
pub const DEFAULT_ROOT: &str = "/var/log/pods";

fn component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains('\0')
        && s.len() <= 253
}

/// The directory of one container's logs, if the names are plain components.
pub fn container_dir(
    root: &Path,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
) -> Option<PathBuf> {
    [namespace, pod, uid, container]
        .iter()
        .all(|c| component(c))
        .then(|| {
            root.join(format!("{namespace}_{pod}_{uid}"))
                .join(container)
        })
}

/// The log file of the run that crashed: the newest `N.log` written no later than a
/// little after the dump (a restarted container writes the next one), else the newest.
pub fn pick_file(dir: &Path, dump_time: SystemTime) -> Option<PathBuf> {
    let mut files: Vec<(u64, SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n: u64 = name.to_str()?.strip_suffix(".log")?.parse().ok()?;
            let m = e.metadata().ok()?;
            m.is_file()
                .then(|| (n, m.modified().unwrap_or(SystemTime::UNIX_EPOCH), e.path()))
        })
        .collect();
    files.sort();
    let slack = dump_time + Duration::from_secs(2);
    files
        .iter()
        .rev()
        .find(|(_, m, _)| *m <= slack)
        .or(files.last())
        .map(|(_, _, p)| p.clone())
}

/// The text of CRI log lines: prefixes stripped, split lines joined.
pub fn strip_cri(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for line in raw.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(4, |b| *b == b' ');
        let (Some(_time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if stream != b"stdout" && stream != b"stderr" {
            continue;
        }
        let text = parts.next().unwrap_or(&[]);
        out.extend_from_slice(text);
        if !tag.starts_with(b"P") {
            out.push(b'\n');
        }
    }
    out
}

/// The last `max` bytes of text of a CRI log file.
pub fn read_tail(path: &Path, max: usize) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(READ_BYTES);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut raw = Vec::new();
    f.take(READ_BYTES).read_to_end(&mut raw).ok()?;
    if from > 0 {
        // The first line is cut: skip to the next whole one.
        let nl = raw
            .iter()
            .position(|b| *b == b'\n')
            .map_or(raw.len(), |i| i + 1);
        raw.drain(..nl);
    }
    let text = String::from_utf8_lossy(&strip_cri(&raw)).into_owned();
    let t = crate::analysis::tail_bound(&text, max);
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cri_prefixes_go_and_split_lines_join() {
        let raw = b"2026-01-01T00:00:00.1Z stdout F starting\n2026-01-01T00:00:00.2Z stderr P panic: run\n2026-01-01T00:00:00.2Z stderr F time error\nnot a cri line\n2026-01-01T00:00:00.3Z stderr F \n";
        assert_eq!(
            String::from_utf8(strip_cri(raw)).unwrap(),
            "starting\npanic: runtime error\n\n"
        );
    }

    #[test]
    fn picks_the_crashed_run_and_bounds_the_tail() {
        let root = tempfile::tempdir().unwrap();
        assert!(container_dir(root.path(), "ns", "../x", "u", "c").is_none());
        let dir = container_dir(root.path(), "ns", "pod", "uid", "app").unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("2026-01-01T00:00:00Z stderr F line {i} é\n"));
        }
        std::fs::write(dir.join("0.log"), &text).unwrap();
        let dump = SystemTime::now();
        assert_eq!(pick_file(&dir, dump).unwrap(), dir.join("0.log"));
        let t = read_tail(&dir.join("0.log"), 4096).unwrap();
        assert!(t.len() <= 4096);
        assert!(t.ends_with("line 4999 é\n"));
        assert!(!t.contains("stderr F"));
        // A file of the next run, written after the dump, is not the crashed one.
        std::fs::write(dir.join("1.log"), "x").unwrap();
        let later = SystemTime::now() + Duration::from_secs(60);
        File::options()
            .write(true)
            .open(dir.join("1.log"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(pick_file(&dir, dump).unwrap(), dir.join("0.log"));
    }

    proptest! {
        #[test]
        fn any_bytes_strip_without_panic(raw in any::<Vec<u8>>()) {
            let out = strip_cri(&raw);
            prop_assert!(out.len() <= raw.len() + raw.len() / 2 + 1);
        }
    }
}
