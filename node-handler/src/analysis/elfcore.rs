//! Reading an ELF core as it streams (one forward pass over a `Read`, such as the zstd
//! decoder of `core.zst`): the ELF header, the program headers, the notes
//! (`NT_PRSTATUS` per thread, `NT_SIGINFO`, `NT_FILE`, `NT_PRPSINFO`, `NT_AUXV`) and, from
//! the `PT_LOAD` data, bounded windows of memory (each thread's stack around its SP).
//!
//! Invariants: the input is hostile (a crashed process's memory, written by the kernel but
//! possibly cut short or forged). Every count and size read from it is checked against
//! [`CoreLimits`] before anything is allocated for it; reading never seeks backwards; the
//! memory kept is at most `max_memory_bytes`; nothing here panics on any input (the
//! property tests feed it arbitrary bytes). What could not be read is reported in
//! `Core::warnings`, and the parts read before stay usable.

use std::io::{self, Read};

/// ELF machine numbers this reader understands the registers of.
pub const EM_X86_64: u16 = 62;
pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const NT_PRSTATUS: u32 = 1;
pub const NT_PRPSINFO: u32 = 3;
pub const NT_AUXV: u32 = 6;
pub const NT_SIGINFO: u32 = 0x5349_4749;
pub const NT_FILE: u32 = 0x4649_4c45;
/// `e_phnum` saying that the real count is in section header 0 (written at the end of the
/// core, so out of reach of one forward pass).
const PN_XNUM: u16 = 0xffff;

/// Offsets in `struct elf_prstatus` (x86_64) and `user_regs_struct`.
const PRSTATUS_SIZE: usize = 336;
const PRSTATUS_CURSIG: usize = 12;
const PRSTATUS_PID: usize = 32;
const PRSTATUS_REGS: usize = 112;
pub const NUM_REGS: usize = 27;
pub const REG_RBP: usize = 4;
pub const REG_RBX: usize = 5;
pub const REG_RIP: usize = 16;
pub const REG_RSP: usize = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("not an ELF core: {0}")]
    NotACore(String),
    #[error("unsupported core: {0}")]
    Unsupported(String),
    #[error("core cut short at byte {0}")]
    Truncated(u64),
    #[error("bad program headers: {0}")]
    BadHeaders(String),
    #[error("reading the core: {0}")]
    Io(String),
}

/// Bounds on what a core may make the reader do.
#[derive(Debug, Clone)]
pub struct CoreLimits {
    pub max_phnum: usize,
    /// All PT_NOTE data together.
    pub max_notes_bytes: u64,
    pub max_threads: usize,
    pub max_files: usize,
    /// Stack window kept below SP (red zone and what a fault touched).
    pub stack_below: u64,
    /// Stack window kept above SP (the callers' frames).
    pub stack_above: u64,
    /// All memory windows together.
    pub max_memory_bytes: u64,
}

impl Default for CoreLimits {
    fn default() -> Self {
        Self {
            max_phnum: 65_535,
            max_notes_bytes: 16 << 20,
            max_threads: 4096,
            max_files: 65_535,
            stack_below: 128,
            stack_above: 128 << 10,
            max_memory_bytes: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfHeader {
    pub machine: u16,
    pub phoff: u64,
    pub phentsize: u16,
    pub phnum: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl Segment {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.vaddr && addr - self.vaddr < self.memsz
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// `pr_pid`: the thread's ID in the crasher's PID namespace.
    pub tid: i32,
    pub cursig: i32,
    pub regs: [u64; NUM_REGS],
}

impl Thread {
    pub fn pc(&self) -> u64 {
        self.regs[REG_RIP]
    }
    pub fn sp(&self) -> u64 {
        self.regs[REG_RSP]
    }
    pub fn fp(&self) -> u64 {
        self.regs[REG_RBP]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SigInfo {
    pub signo: i32,
    pub errno: i32,
    pub code: i32,
    /// `si_addr`: meaningful for SIGSEGV, SIGBUS, SIGILL, SIGFPE (and SIGTRAP).
    pub addr: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    /// Offset in the file, bytes.
    pub offset: u64,
    pub path: Vec<u8>,
}

/// Windows of the process's memory, sorted by address, not overlapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    chunks: Vec<(u64, Vec<u8>)>,
}

impl Memory {
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let i = self
            .chunks
            .partition_point(|(s, _)| *s <= addr)
            .checked_sub(1)?;
        let (start, data) = &self.chunks[i];
        let off = usize::try_from(addr - start).ok()?;
        data.get(off..off.checked_add(len)?)
    }
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let b = self.read(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(|(_, d)| d.len()).sum()
    }
    pub fn contains(&self, addr: u64) -> bool {
        self.read(addr, 1).is_some()
    }
    /// Adds windows read later (a second pass); existing bytes win.
    pub fn merge(&mut self, other: Memory) {
        for (start, data) in other.chunks {
            if !self.contains(start) {
                self.chunks.push((start, data));
            }
        }
        self.chunks.sort_by_key(|(s, _)| *s);
    }
    fn push(&mut self, start: u64, data: Vec<u8>) {
        self.chunks.push((start, data));
        self.chunks.sort_by_key(|(s, _)| *s);
    }
}

/// What was read from a core.
#[derive(Debug, Clone, Default)]
pub struct Core {
    pub machine: u16,
    pub segments: Vec<Segment>,
    pub threads: Vec<Thread>,
    pub siginfo: Option<SigInfo>,
    pub files: Vec<MappedFile>,
    /// `pr_fname` of NT_PRPSINFO (the process's comm).
    pub fname: Option<Vec<u8>>,
    pub auxv: Vec<(u64, u64)>,
    pub memory: Memory,
    /// What could not be read, in order.
    pub warnings: Vec<String>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], o: usize) -> Option<i32> {
    u32_at(b, o).map(|v| v as i32)
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The 64-byte ELF header of a little-endian 64-bit core.
pub fn parse_header(b: &[u8]) -> Result<ElfHeader, CoreError> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err(CoreError::NotACore("no ELF magic".into()));
    }
    if b[4] != 2 || b[5] != 1 {
        return Err(CoreError::Unsupported(
            "only 64-bit little-endian cores are read".into(),
        ));
    }
    let bad = || CoreError::NotACore("short header".into());
    let e_type = u16_at(b, 16).ok_or_else(bad)?;
    if e_type != 4 {
        return Err(CoreError::NotACore(format!("e_type {e_type}, not ET_CORE")));
    }
    let h = ElfHeader {
        machine: u16_at(b, 18).ok_or_else(bad)?,
        phoff: u64_at(b, 32).ok_or_else(bad)?,
        phentsize: u16_at(b, 54).ok_or_else(bad)?,
        phnum: u16_at(b, 56).ok_or_else(bad)?,
    };
    if h.phnum == PN_XNUM {
        return Err(CoreError::Unsupported(
            "more than 65534 mappings (PN_XNUM)".into(),
        ));
    }
    if h.phnum > 0 && (h.phentsize != 56 || h.phoff < 64) {
        return Err(CoreError::BadHeaders(format!(
            "phentsize {} at offset {}",
            h.phentsize, h.phoff
        )));
    }
    Ok(h)
}

/// Program headers (`n` entries of 56 bytes in `b`).
pub fn parse_phdrs(b: &[u8], n: usize) -> Result<Vec<Segment>, CoreError> {
    let mut out = Vec::with_capacity(n.min(b.len() / 56));
    for i in 0..n {
        let p = b
            .get(i * 56..i * 56 + 56)
            .ok_or_else(|| CoreError::BadHeaders(format!("program header {i} missing")))?;
        let seg = Segment {
            kind: u32_at(p, 0).unwrap_or(0),
            flags: u32_at(p, 4).unwrap_or(0),
            offset: u64_at(p, 8).unwrap_or(0),
            vaddr: u64_at(p, 16).unwrap_or(0),
            filesz: u64_at(p, 32).unwrap_or(0),
            memsz: u64_at(p, 40).unwrap_or(0),
        };
        if seg.offset.checked_add(seg.filesz).is_none()
            || seg.vaddr.checked_add(seg.memsz).is_none()
        {
            return Err(CoreError::BadHeaders(format!(
                "program header {i} overflows"
            )));
        }
        out.push(seg);
    }
    Ok(out)
}

/// One note: (type, name without NUL, desc).
pub type Note<'a> = (u32, &'a [u8], &'a [u8]);

/// The notes of a PT_NOTE segment, and why the rest could not be read.
pub fn parse_notes(b: &[u8]) -> (Vec<Note<'_>>, Option<String>) {
    let mut out = Vec::new();
    let mut o = 0usize;
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while o + 12 <= b.len() {
        let (Some(namesz), Some(descsz), Some(kind)) =
            (u32_at(b, o), u32_at(b, o + 4), u32_at(b, o + 8))
        else {
            break;
        };
        let name_start = o + 12;
        let Some(name_end) = name_start.checked_add(namesz as usize) else {
            return (out, Some("note name size overflows".into()));
        };
        let Some(desc_start) = align4(name_end) else {
            return (out, Some("note name size overflows".into()));
        };
        let Some(desc_end) = desc_start.checked_add(descsz as usize) else {
            return (out, Some("note desc size overflows".into()));
        };
        if desc_end > b.len() {
            return (
                out,
                Some(format!(
                    "note at {o} (type {kind:#x}) claims {descsz} bytes past the notes' end"
                )),
            );
        }
        let mut name = &b[name_start..name_end];
        if let Some(stripped) = name.strip_suffix(b"\0") {
            name = stripped;
        }
        out.push((kind, name, &b[desc_start..desc_end]));
        match align4(desc_end) {
            Some(n) => o = n,
            None => break,
        }
    }
    (out, None)
}

pub fn parse_prstatus(d: &[u8]) -> Option<Thread> {
    if d.len() < PRSTATUS_SIZE - 8 {
        return None;
    }
    let mut regs = [0u64; NUM_REGS];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = u64_at(d, PRSTATUS_REGS + i * 8)?;
    }
    Some(Thread {
        tid: i32_at(d, PRSTATUS_PID)?,
        cursig: i32::from(u16_at(d, PRSTATUS_CURSIG)? as i16),
        regs,
    })
}

pub fn parse_siginfo(d: &[u8]) -> Option<SigInfo> {
    Some(SigInfo {
        signo: i32_at(d, 0)?,
        errno: i32_at(d, 4)?,
        code: i32_at(d, 8)?,
        addr: u64_at(d, 16).unwrap_or(0),
    })
}

/// `NT_FILE`: count, page size, count × (start, end, page offset), then count paths.
pub fn parse_nt_file(d: &[u8], max: usize) -> Result<Vec<MappedFile>, String> {
    let count = u64_at(d, 0).ok_or("NT_FILE too short")?;
    let page = u64_at(d, 8).ok_or("NT_FILE too short")?;
    let count = usize::try_from(count).map_err(|_| "NT_FILE count overflows")?;
    if count > max {
        return Err(format!("NT_FILE claims {count} files (at most {max} read)"));
    }
    let table_end = count
        .checked_mul(24)
        .and_then(|n| n.checked_add(16))
        .ok_or("NT_FILE count overflows")?;
    if table_end > d.len() {
        return Err(format!("NT_FILE claims {count} files, has room for fewer"));
    }
    let mut names = d[table_end..].split(|b| *b == 0);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let e = 16 + i * 24;
        let (Some(start), Some(end), Some(pgoff)) =
            (u64_at(d, e), u64_at(d, e + 8), u64_at(d, e + 16))
        else {
            break;
        };
        let Some(path) = names.next() else {
            return Err(format!("NT_FILE has paths for {i} of {count} files"));
        };
        if end < start {
            continue;
        }
        out.push(MappedFile {
            start,
            end,
            offset: pgoff.saturating_mul(page),
            path: path.to_vec(),
        });
    }
    Ok(out)
}

/// Reads forward only, counting the offset.
struct Stream<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Stream<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), CoreError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(CoreError::Truncated(self.pos))
            }
            Err(e) => Err(CoreError::Io(e.to_string())),
        }
    }
    fn skip_to(&mut self, off: u64) -> Result<(), CoreError> {
        if off < self.pos {
            return Err(CoreError::BadHeaders(format!(
                "data at {off} lies before {} (out of order)",
                self.pos
            )));
        }
        let n = off - self.pos;
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())
            .map_err(|e| CoreError::Io(e.to_string()))?;
        self.pos += got;
        if got < n {
            return Err(CoreError::Truncated(self.pos));
        }
        Ok(())
    }
}

/// Address ranges to keep, merged and cut to what the PT_LOADs hold in the file.
fn plan_windows(segments: &[Segment], wanted: &[(u64, u64)], budget: u64) -> Vec<(u64, u64, u64)> {
    let mut w: Vec<(u64, u64)> = wanted.iter().copied().filter(|(s, e)| e > s).collect();
    w.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in w {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    // (file offset, vaddr, len)
    let mut plan = Vec::new();
    let mut left = budget;
    for (s, e) in merged {
        for seg in segments
            .iter()
            .filter(|g| g.kind == PT_LOAD && g.filesz > 0)
        {
            let lo = s.max(seg.vaddr);
            let hi = e.min(seg.vaddr.saturating_add(seg.filesz));
            if lo >= hi || left == 0 {
                continue;
            }
            let len = (hi - lo).min(left);
            left -= len;
            plan.push((seg.offset + (lo - seg.vaddr), lo, len));
        }
    }
    plan.sort();
    plan
}

fn read_windows<R: Read>(
    s: &mut Stream<R>,
    plan: &[(u64, u64, u64)],
    warnings: &mut Vec<String>,
) -> Memory {
    let mut mem = Memory::default();
    for &(off, vaddr, len) in plan {
        // Overlapping segments in a forged core: keep what is still ahead.
        let (off, vaddr, len) = if off < s.pos {
            let d = s.pos - off;
            if d >= len {
                continue;
            }
            (s.pos, vaddr + d, len - d)
        } else {
            (off, vaddr, len)
        };
        let Ok(n) = usize::try_from(len) else {
            continue;
        };
        let mut buf = vec![0u8; n];
        if let Err(e) = s.skip_to(off).and_then(|()| s.read_exact(&mut buf)) {
            warnings.push(format!("memory at {vaddr:#x}: {e}"));
            break;
        }
        mem.push(vaddr, buf);
    }
    mem
}

/// Reads the headers and notes, then each thread's stack window.
pub fn read_core<R: Read>(input: R, limits: &CoreLimits) -> Result<Core, CoreError> {
    let mut s = Stream {
        inner: input,
        pos: 0,
    };
    let mut hdr = [0u8; 64];
    s.read_exact(&mut hdr)?;
    let h = parse_header(&hdr)?;
    if h.machine != EM_X86_64 {
        return Err(CoreError::Unsupported(format!(
            "machine {} (only x86_64 registers are read)",
            h.machine
        )));
    }
    let n = usize::from(h.phnum);
    if n > limits.max_phnum {
        return Err(CoreError::Unsupported(format!("{n} program headers")));
    }
    s.skip_to(h.phoff)?;
    let mut ph = vec![0u8; n * 56];
    s.read_exact(&mut ph)?;
    let segments = parse_phdrs(&ph, n)?;
    let mut core = Core {
        machine: h.machine,
        segments,
        ..Core::default()
    };
    let mut notes: Vec<Segment> = core
        .segments
        .iter()
        .filter(|g| g.kind == PT_NOTE && g.filesz > 0)
        .copied()
        .collect();
    notes.sort_by_key(|g| g.offset);
    let mut note_bytes = 0u64;
    for seg in notes {
        note_bytes = note_bytes.saturating_add(seg.filesz);
        if note_bytes > limits.max_notes_bytes {
            core.warnings.push(format!(
                "notes larger than {} bytes; the rest skipped",
                limits.max_notes_bytes
            ));
            break;
        }
        if seg.offset < s.pos {
            core.warnings.push(format!(
                "note segment at {} overlaps the headers",
                seg.offset
            ));
            continue;
        }
        let mut buf = vec![0u8; seg.filesz as usize];
        if let Err(e) = s.skip_to(seg.offset).and_then(|()| s.read_exact(&mut buf)) {
            core.warnings.push(format!("notes: {e}"));
            return Ok(core);
        }
        take_notes(&mut core, &buf, limits);
    }
    if core.threads.is_empty() {
        core.warnings
            .push("no NT_PRSTATUS (no thread registers)".into());
    }
    let wanted: Vec<(u64, u64)> = core
        .threads
        .iter()
        .map(|t| {
            (
                t.sp().saturating_sub(limits.stack_below),
                t.sp().saturating_add(limits.stack_above),
            )
        })
        .collect();
    let plan = plan_windows(&core.segments, &wanted, limits.max_memory_bytes);
    let mut warnings = Vec::new();
    core.memory = read_windows(&mut s, &plan, &mut warnings);
    core.warnings.extend(warnings);
    Ok(core)
}

/// A later pass over the same core for more windows (say, a goroutine's stack that the
/// frame pointers lead to): headers are read again and not believed past the segments
/// already known.
pub fn read_more<R: Read>(
    input: R,
    segments: &[Segment],
    wanted: &[(u64, u64)],
    budget: u64,
    warnings: &mut Vec<String>,
) -> Memory {
    let mut s = Stream {
        inner: input,
        pos: 0,
    };
    let plan = plan_windows(segments, wanted, budget);
    read_windows(&mut s, &plan, warnings)
}

fn take_notes(core: &mut Core, buf: &[u8], limits: &CoreLimits) {
    let (notes, err) = parse_notes(buf);
    if let Some(e) = err {
        core.warnings.push(e);
    }
    for (kind, name, desc) in notes {
        if name != b"CORE" && name != b"LINUX" {
            continue;
        }
        match kind {
            NT_PRSTATUS if name == b"CORE" => {
                if core.threads.len() >= limits.max_threads {
                    if core.threads.len() == limits.max_threads {
                        core.warnings
                            .push(format!("more than {} threads", limits.max_threads));
                    }
                    continue;
                }
                match parse_prstatus(desc) {
                    Some(t) => core.threads.push(t),
                    None => core
                        .warnings
                        .push(format!("NT_PRSTATUS of {} bytes", desc.len())),
                }
            }
            NT_SIGINFO => match parse_siginfo(desc) {
                Some(si) if core.siginfo.is_none() => core.siginfo = Some(si),
                Some(_) => {}
                None => core.warnings.push("short NT_SIGINFO".into()),
            },
            NT_FILE => match parse_nt_file(desc, limits.max_files) {
                Ok(f) => core.files = f,
                Err(e) => core.warnings.push(e),
            },
            NT_PRPSINFO if desc.len() >= 56 => {
                let f = &desc[40..56];
                let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
                core.fname = Some(f[..end].to_vec());
            }
            NT_AUXV => {
                core.auxv = desc
                    .chunks_exact(16)
                    .take(256)
                    .filter_map(|c| Some((u64_at(c, 0)?, u64_at(c, 8)?)))
                    .collect();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a small core: header, phdrs, one PT_NOTE, one PT_LOAD of `stack` at `sp`.
    pub(crate) fn synth_core(
        threads: &[(i32, u64, u64, u64)],
        siginfo: (i32, i32, u64),
        stack_base: u64,
        stack: &[u8],
    ) -> Vec<u8> {
        let mut notes = Vec::new();
        let mut note = |kind: u32, name: &[u8], desc: &[u8]| {
            notes.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            notes.extend_from_slice(name);
            notes.push(0);
            while notes.len() % 4 != 0 {
                notes.push(0);
            }
            notes.extend_from_slice(desc);
            while notes.len() % 4 != 0 {
                notes.push(0);
            }
        };
        for &(tid, pc, sp, fp) in threads {
            let mut d = vec![0u8; PRSTATUS_SIZE];
            d[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&tid.to_le_bytes());
            d[PRSTATUS_CURSIG..PRSTATUS_CURSIG + 2]
                .copy_from_slice(&(siginfo.0 as u16).to_le_bytes());
            for (i, v) in [(REG_RIP, pc), (REG_RSP, sp), (REG_RBP, fp)] {
                let o = PRSTATUS_REGS + i * 8;
                d[o..o + 8].copy_from_slice(&v.to_le_bytes());
            }
            note(NT_PRSTATUS, b"CORE", &d);
        }
        let mut si = vec![0u8; 128];
        si[0..4].copy_from_slice(&siginfo.0.to_le_bytes());
        si[8..12].copy_from_slice(&siginfo.1.to_le_bytes());
        si[16..24].copy_from_slice(&siginfo.2.to_le_bytes());
        note(NT_SIGINFO, b"CORE", &si);
        let mut f = Vec::new();
        f.extend_from_slice(&1u64.to_le_bytes());
        f.extend_from_slice(&4096u64.to_le_bytes());
        for v in [0x40_0000u64, 0x40_1000, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(b"/app/bin\0");
        note(NT_FILE, b"CORE", &f);
        let phoff = 64u64;
        let notes_off = phoff + 2 * 56;
        let load_off = (notes_off + notes.len() as u64 + 4095) & !4095;
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&4u16.to_le_bytes());
        out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = |kind: u32, flags: u32, off: u64, vaddr: u64, size: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&kind.to_le_bytes());
            p[4..8].copy_from_slice(&flags.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            p[40..48].copy_from_slice(&size.to_le_bytes());
            p
        };
        out.extend(ph(PT_NOTE, 0, notes_off, 0, notes.len() as u64));
        out.extend(ph(PT_LOAD, 6, load_off, stack_base, stack.len() as u64));
        out.extend_from_slice(&notes);
        out.resize(load_off as usize, 0);
        out.extend_from_slice(stack);
        out
    }

    #[test]
    fn reads_threads_siginfo_files_and_stack() {
        let mut stack = vec![0u8; 8192];
        stack[4096..4104].copy_from_slice(&0xdead_beefu64.to_le_bytes());
        let core = synth_core(
            &[
                (7, 0x40_1234, 0x7000_1000, 0),
                (8, 0x40_1000, 0x7000_1800, 0),
            ],
            (11, 1, 0x10),
            0x7000_0000,
            &stack,
        );
        let c = read_core(&core[..], &CoreLimits::default()).unwrap();
        assert_eq!(c.threads.len(), 2);
        assert_eq!(c.threads[0].tid, 7);
        assert_eq!(c.threads[0].pc(), 0x40_1234);
        assert_eq!(c.siginfo.unwrap().signo, 11);
        assert_eq!(c.siginfo.unwrap().addr, 0x10);
        assert_eq!(c.files[0].path, b"/app/bin");
        assert_eq!(c.memory.read_u64(0x7000_1000), Some(0xdead_beef));
        // SP−128 is kept; the window stops at the segment's end.
        assert!(c.memory.contains(0x7000_1000 - 128));
        assert!(!c.memory.contains(0x7000_2000));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn truncated_cores_keep_what_was_read() {
        let core = synth_core(
            &[(7, 1, 0x7000_1000, 0)],
            (6, -6, 0),
            0x7000_0000,
            &[0u8; 8192],
        );
        for cut in [10, 64, 100, 200, 400, core.len() - 100] {
            match read_core(&core[..cut], &CoreLimits::default()) {
                Ok(c) => assert!(!c.warnings.is_empty(), "cut {cut}"),
                Err(e) => assert!(matches!(e, CoreError::Truncated(_)), "cut {cut}: {e}"),
            }
        }
    }

    #[test]
    fn lying_notes_are_bounded() {
        // NT_FILE claiming 2^40 entries, a note claiming 4 GiB.
        let mut d = vec![0u8; 64];
        d[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(parse_nt_file(&d, 65535).is_err());
        d[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(parse_nt_file(&d, 65535).is_err());
        let mut n = vec![0u8; 12];
        n[..4].copy_from_slice(&5u32.to_le_bytes());
        n[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let (notes, err) = parse_notes(&n);
        assert!(notes.is_empty());
        assert!(err.is_some());
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = read_core(&b[..], &CoreLimits::default());
            let _ = parse_notes(&b);
            let _ = parse_nt_file(&b, 1000);
            let _ = parse_prstatus(&b);
            let _ = parse_phdrs(&b, b.len() / 56 + 1);
        }

        #[test]
        fn a_real_shaped_core_with_bytes_replaced_never_panics(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..32),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut core = synth_core(&[(7, 0x40_1234, 0x7000_1000, 0x7000_1010)], (11, 1, 0), 0x7000_0000, &[0u8; 8192]);
            for (i, v) in &edits {
                let i = i.index(core.len());
                core[i] = *v;
            }
            let cut = cut.index(core.len() + 1);
            if let Ok(c) = read_core(&core[..cut], &CoreLimits::default()) {
                prop_assert!(c.memory.bytes() as u64 <= CoreLimits::default().max_memory_bytes);
                prop_assert!(c.threads.len() <= CoreLimits::default().max_threads);
            }
        }

        #[test]
        fn header_round_trips(phnum in 0u16..0xffff, machine in any::<u16>()) {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(b"\x7fELF");
            h[4] = 2; h[5] = 1;
            h[16..18].copy_from_slice(&4u16.to_le_bytes());
            h[18..20].copy_from_slice(&machine.to_le_bytes());
            h[32..40].copy_from_slice(&64u64.to_le_bytes());
            h[54..56].copy_from_slice(&56u16.to_le_bytes());
            h[56..58].copy_from_slice(&phnum.to_le_bytes());
            let p = parse_header(&h).unwrap();
            prop_assert_eq!(p.phnum, phnum);
            prop_assert_eq!(p.machine, machine);
        }
    }
}
