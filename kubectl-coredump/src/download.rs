//! Downloading a core through the aggregator: in pieces sized to finish well inside the
//! request timeout (adapted to the measured rate), resumable, verified.
//!
//! Invariants: the file under its final name is always the whole core with the sha256 the
//! Coredump's spec names (raw, or after decompression with `--compressed`); until then the
//! bytes live in `FILE.part`, and `FILE.part.json` records each piece's sha256 so a resumed
//! download first re-checks what is there and keeps only the prefix that still matches (a
//! corrupt or foreign partial file is cut back, never trusted).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::Error;

/// Smallest and largest piece asked for.
const MIN_PIECE: u64 = 1 << 20;
const MAX_PIECE: u64 = 2 << 30;
/// The first piece, before any rate is known.
const FIRST_PIECE: u64 = 16 << 20;

/// What is being fetched.
#[derive(Clone, Debug)]
pub struct Source {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// sha256 of the raw core (spec.sha256).
    pub sha256: String,
    /// Bytes to fetch: spec.size, or spec.storedSize with `compressed`.
    pub total: u64,
    pub compressed: bool,
}

impl Source {
    fn path(&self, offset: u64, length: u64) -> String {
        format!(
            "/apis/coredump.io/v1alpha1/namespaces/{}/coredumps/{}/download?offset={offset}&length={length}{}",
            self.namespace,
            self.name,
            if self.compressed { "&compressed=true" } else { "" }
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Piece {
    offset: u64,
    len: u64,
    sha256: String,
}

/// `FILE.part.json`: which core the partial file is of, and its pieces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    uid: String,
    sha256: String,
    compressed: bool,
    total: u64,
    pieces: Vec<Piece>,
}

/// How a download went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub path: PathBuf,
    /// Bytes already there and still valid when it started.
    pub resumed_at: u64,
    /// Bytes fetched this time.
    pub fetched: u64,
    pub pieces: usize,
}

/// The next piece's length: what the measured rate moves in `target` seconds.
pub fn next_piece(rate_bytes_per_sec: f64, target: Duration, cut: bool, last: u64) -> u64 {
    if cut {
        // The window closed mid-piece: ask for much less next time.
        return (last / 4).clamp(MIN_PIECE, MAX_PIECE);
    }
    let want = rate_bytes_per_sec * target.as_secs_f64();
    if !want.is_finite() || want <= 0.0 {
        return FIRST_PIECE;
    }
    (want as u64).clamp(MIN_PIECE, MAX_PIECE)
}

/// The longest prefix of `file` whose recorded pieces still match. (The whole file is
/// hashed again at the end, against the spec.)
fn verified_prefix(file: &mut File, state: &State) -> Result<(u64, Vec<Piece>), Error> {
    let mut good = Vec::new();
    let mut at = 0u64;
    let len = file
        .metadata()
        .map_err(Error::io("stat the partial file"))?
        .len();
    file.seek(SeekFrom::Start(0))
        .map_err(Error::io("read the partial file"))?;
    let mut buf = vec![0u8; 1 << 20];
    for p in &state.pieces {
        if p.offset != at || at.saturating_add(p.len) > len {
            break;
        }
        let mut h = Sha256::new();
        let mut left = p.len;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            file.read_exact(&mut buf[..n])
                .map_err(Error::io("read the partial file"))?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        if hex::encode(h.finalize()) != p.sha256 {
            break;
        }
        at += p.len;
        good.push(p.clone());
    }
    Ok((at, good))
}

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar (bytes, rate, ETA) only when stderr is a terminal.
    pub fn new(total: u64, name: &str) -> Self {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = indicatif::ProgressBar::new(total);
        let style = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(name.to_string());
        Self { bar: Some(bar) }
    }
    fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn part_paths(out: &Path) -> (PathBuf, PathBuf) {
    let mut part = out.as_os_str().to_owned();
    part.push(".part");
    let mut state = part.clone();
    state.push(".json");
    (PathBuf::from(part), PathBuf::from(state))
}

fn save_state(path: &Path, state: &State) -> Result<(), Error> {
    let body = serde_json::to_vec(state).map_err(|e| Error::Verify(e.to_string()))?;
    // 0o666 less the umask, as std::fs::write made it.
    coredump_durable::write_atomic(path, &body, 0o666)
        .map_err(|e| Error::io("write the download state")(e.into_io()))
}

/// Hashes the raw core: the file itself, or what it decompresses to.
fn raw_sha256(path: &Path, compressed: bool) -> Result<String, Error> {
    let file = File::open(path).map_err(Error::io("read the download"))?;
    let mut h = Sha256::new();
    let mut reader: Box<dyn Read> = if compressed {
        Box::new(zstd::stream::read::Decoder::new(file).map_err(Error::io("decompress"))?)
    } else {
        Box::new(file)
    };
    std::io::copy(&mut reader, &mut HashWriter(&mut h)).map_err(Error::io("hash the download"))?;
    Ok(hex::encode(h.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fetches `src` into `out`.
pub async fn download(
    client: &kube::Client,
    src: &Source,
    out: &Path,
    target: Duration,
) -> Result<Outcome, Error> {
    let (part, state_path) = part_paths(out);
    let fresh = State {
        uid: src.uid.clone(),
        sha256: src.sha256.clone(),
        compressed: src.compressed,
        total: src.total,
        pieces: Vec::new(),
    };
    let mut state = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        .filter(|s| {
            (s.uid.as_str(), s.sha256.as_str(), s.compressed, s.total)
                == (
                    src.uid.as_str(),
                    src.sha256.as_str(),
                    src.compressed,
                    src.total,
                )
        })
        .unwrap_or_else(|| fresh.clone());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .map_err(Error::io(format!("open {}", part.display())))?;
    let (resumed_at, good) = verified_prefix(&mut file, &state)?;
    state.pieces = good;
    file.set_len(resumed_at)
        .map_err(Error::io("cut the partial file"))?;
    file.seek(SeekFrom::Start(resumed_at))
        .map_err(Error::io("seek the partial file"))?;
    save_state(&state_path, &state)?;

    let progress = Progress::new(src.total, &src.name);
    progress.set(resumed_at);
    let mut offset = resumed_at;
    let mut want = FIRST_PIECE;
    let mut fetched = 0u64;
    let mut pieces = 0usize;
    let mut failures = 0u32;
    while offset < src.total {
        let len = want.min(src.total - offset);
        let started = Instant::now();
        let req = http::Request::get(src.path(offset, len))
            .body(kube::client::Body::empty())
            .map_err(|e| Error::Transport(e.to_string()))?;
        let resp = client.send(req).await.map_err(Error::from)?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            return Err(Error::from_status(status.as_u16(), &bytes));
        }
        let mut h = Sha256::new();
        let mut got = 0u64;
        let mut cut = false;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(_) => {
                    // Cut by a timeout on the way: what arrived is still good.
                    cut = true;
                    break;
                }
            };
            if let Some(data) = frame.data_ref() {
                let room = len - got;
                let data = &data[..data.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
                file.write_all(data)
                    .map_err(Error::io(format!("write {}", part.display())))?;
                h.update(data);
                got += data.len() as u64;
                progress.set(offset + got);
            }
        }
        if got < len {
            cut = true;
        }
        if got == 0 {
            failures += 1;
            if failures >= 5 {
                return Err(Error::Transport(format!(
                    "no bytes arrived at offset {offset} in 5 attempts"
                )));
            }
        } else {
            failures = 0;
            state.pieces.push(Piece {
                offset,
                len: got,
                sha256: hex::encode(h.finalize()),
            });
            save_state(&state_path, &state)?;
            offset += got;
            fetched += got;
            pieces += 1;
        }
        let secs = started.elapsed().as_secs_f64().max(0.001);
        want = next_piece(got as f64 / secs, target, cut, len);
    }
    file.sync_all().map_err(Error::io("flush the download"))?;
    drop(file);
    progress.finish();
    let got = raw_sha256(&part, src.compressed)?;
    if got != src.sha256 {
        // Never under the final name; and not resumable either (the pieces matched what
        // the server sent, so start over).
        let _ = std::fs::remove_file(&state_path);
        let bad = part.with_extension("bad");
        let _ = std::fs::rename(&part, &bad);
        return Err(Error::Verify(format!(
            "the download's sha256 is {got}, the Coredump's spec.sha256 is {}: kept as {} for inspection",
            src.sha256,
            bad.display()
        )));
    }
    // The part file is synced above; the rename is too, with the directory.
    coredump_durable::rename(&part, out)
        .map_err(|e| Error::io(format!("rename into {}", out.display()))(e.into_io()))?;
    let _ = std::fs::remove_file(&state_path);
    Ok(Outcome {
        path: out.to_path_buf(),
        resumed_at,
        fetched,
        pieces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_the_rate_and_shrink_when_cut() {
        let t = Duration::from_secs(10);
        assert_eq!(next_piece(10.0 * 1024.0 * 1024.0, t, false, 0), 100 << 20);
        assert_eq!(next_piece(1.0, t, false, 0), MIN_PIECE);
        assert_eq!(next_piece(1e15, t, false, 0), MAX_PIECE);
        assert_eq!(next_piece(0.0, t, false, 0), FIRST_PIECE);
        assert_eq!(next_piece(1e9, t, true, 64 << 20), 16 << 20);
    }

    #[test]
    fn a_partial_file_is_kept_only_as_far_as_its_pieces_match() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.part");
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let piece = |o: usize, l: usize| Piece {
            offset: o as u64,
            len: l as u64,
            sha256: hex::encode(Sha256::digest(&data[o..o + l])),
        };
        let mut state = State {
            pieces: vec![piece(0, 1000), piece(1000, 1000), piece(2000, 1000)],
            ..Default::default()
        };
        let mut f = OpenOptions::new().read(true).open(&path).expect("open");
        let (at, good) = verified_prefix(&mut f, &state).expect("verify");
        assert_eq!((at, good.len()), (3000, 3));
        // A flipped byte in the second piece: only the first is kept.
        let mut bad = data.clone();
        bad[1500] ^= 0xff;
        std::fs::write(&path, &bad).expect("write");
        let mut f = OpenOptions::new().read(true).open(&path).expect("open");
        let (at, good) = verified_prefix(&mut f, &state).expect("verify");
        assert_eq!((at, good.len()), (1000, 1));
        // A state longer than the file: stops where the file ends.
        state.pieces.push(piece(2000, 1000));
        std::fs::write(&path, &data[..2500]).expect("write");
        let mut f = OpenOptions::new().read(true).open(&path).expect("open");
        let (at, _) = verified_prefix(&mut f, &state).expect("verify");
        assert_eq!(at, 2000);
    }
}
