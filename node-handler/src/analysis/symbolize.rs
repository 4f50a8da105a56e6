//! The binaries of a crashed process, as the build-id cache holds them: where their
//! unwind tables are, their symbols (`.symtab`, `.dynsym`, else a Go binary's
//! `.gopclntab`), and file:line from DWARF where present; and the demangling of Rust (v0 and legacy) and C++ names.
//!
//! Invariants: a binary is hostile input (it came from a container image). It is read
//! whole, at most [`MAX_BINARY_BYTES`], and parsed only by `object`, `gimli` and
//! `addr2line`, which check every offset; a part that does not parse is left out (no
//! symbols, no CFI) rather than failing the analysis. This code runs in the `analyze`
//! child, whose time and memory are limited: the binaries' bytes are leaked to get
//! `'static` slices, and go when the child exits. Compressed sections (`SHF_COMPRESSED`
//! zlib or zstd, as Go's linker and `gcc -gz` write DWARF) are inflated only when the
//! size their header claims is at most [`MAX_SECTION_BYTES`], and only to that size.

use std::path::Path;

use gimli::{EndianSlice, LittleEndian};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

/// Largest binary read.
pub const MAX_BINARY_BYTES: u64 = 512 << 20;
/// Largest section inflated from its compressed form.
pub const MAX_SECTION_BYTES: u64 = 256 << 20;
/// Longest function name kept.
pub const MAX_NAME: usize = 512;

pub type Slice = EndianSlice<'static, LittleEndian>;

/// Demangles Rust (v0 and legacy, without the hash) and C++ names; others as they are.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name.as_bytes()) {
            let opts = cpp_demangle::DemangleOptions::new().recursion_limit(128);
            if let Ok(s) = sym.demangle_with_options(&opts) {
                return s;
            }
        }
    }
    name.to_string()
}

/// A section's bytes and its address in the binary (SVMA).
#[derive(Clone, Copy)]
pub struct Sect {
    pub addr: u64,
    pub data: &'static [u8],
}

/// One binary: unwind tables, symbols, line tables.
pub struct Binary {
    pub data: &'static [u8],
    /// p_vaddr of the PT_LOAD at file offset 0, page-aligned: the load base minus this is
    /// the bias from SVMA to AVMA.
    pub first_vaddr: u64,
    pub eh_frame: Option<Sect>,
    pub eh_frame_hdr: Option<Sect>,
    pub debug_frame: Option<Sect>,
    pub text: Option<u64>,
    /// (address, size, name) of functions, sorted by address.
    symbols: Vec<(u64, u64, &'static str)>,
    /// (vaddr, filesz, offset) of PT_LOADs: maps SVMA to file bytes.
    loads: Vec<(u64, u64, u64)>,
    /// (vaddr, memsz) of executable PT_LOADs.
    exec: Vec<(u64, u64)>,
    dwarf: Option<addr2line::Context<Slice>>,
    /// A Go binary's function table (names without a symbol table).
    go: Option<super::gopclntab::GoPcln>,
}

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("{0}: {1}")]
    Read(String, String),
    #[error("{0} is larger than {MAX_BINARY_BYTES} bytes")]
    TooLarge(String),
    #[error("{0}: not an ELF file: {1}")]
    Parse(String, String),
}

impl Binary {
    pub fn load(path: &Path) -> Result<Self, BinaryError> {
        use std::io::Read;
        let name = path.display().to_string();
        let f = std::fs::File::open(path)
            .map_err(|e| BinaryError::Read(name.clone(), e.to_string()))?;
        let mut buf = Vec::new();
        f.take(MAX_BINARY_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| BinaryError::Read(name.clone(), e.to_string()))?;
        if buf.len() as u64 > MAX_BINARY_BYTES {
            return Err(BinaryError::TooLarge(name));
        }
        Self::parse(Box::leak(buf.into_boxed_slice()), &name)
    }

    pub fn parse(data: &'static [u8], name: &str) -> Result<Self, BinaryError> {
        let obj = object::File::parse(data)
            .map_err(|e| BinaryError::Parse(name.into(), e.to_string()))?;
        let sect = |n: &str| -> Option<Sect> {
            let s = obj.section_by_name(n)?;
            let c = s.compressed_data().ok()?;
            // The claimed size is what the decompressor allocates: bound it first.
            if c.uncompressed_size > MAX_SECTION_BYTES {
                return None;
            }
            let data: &'static [u8] = match c.decompress().ok()? {
                std::borrow::Cow::Borrowed(b) => b,
                std::borrow::Cow::Owned(v) => Box::leak(v.into_boxed_slice()),
            };
            Some(Sect {
                addr: s.address(),
                data,
            })
        };
        let mut loads: Vec<(u64, u64, u64)> = obj
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (s.address(), size, off)
            })
            .collect();
        loads.sort();
        let exec: Vec<(u64, u64)> = obj
            .segments()
            .filter(
                |s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & 1 != 0),
            )
            .map(|s| (s.address(), s.size()))
            .collect();
        let first_vaddr = loads
            .iter()
            .find(|(_, _, off)| *off == 0)
            .or(loads.first())
            .map_or(0, |(v, _, off)| (v - off.min(v)) & !0xfff);
        let mut symbols: Vec<(u64, u64, &'static str)> = obj
            .symbols()
            .chain(obj.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?)))
            .filter(|(_, _, n)| !n.is_empty())
            .collect();
        symbols.sort_by_key(|(a, s, _)| (*a, std::cmp::Reverse(*s)));
        symbols.dedup_by_key(|(a, _, _)| *a);
        let dwarf = if obj.section_by_name(".debug_info").is_some() {
            let load = |id: gimli::SectionId| -> Result<Slice, gimli::Error> {
                let data = sect(id.name()).map_or(&[][..], |s| s.data);
                Ok(EndianSlice::new(data, LittleEndian))
            };
            gimli::Dwarf::load(load)
                .ok()
                .and_then(|d| addr2line::Context::from_dwarf(d).ok())
        } else {
            None
        };
        let text = obj.section_by_name(".text").map(|s| s.address());
        let go = sect(".gopclntab").and_then(|s| super::gopclntab::GoPcln::parse(s.data, text));
        let is_go = obj.section_by_name(".gopclntab").is_some();
        Ok(Self {
            data,
            first_vaddr,
            go,
            eh_frame: sect(".eh_frame"),
            eh_frame_hdr: sect(".eh_frame_hdr"),
            // Go's .debug_frame is not used: through the frame Go injects for sigpanic
            // it led the unwinder into a loop, while Go's frame pointers are reliable
            // (amd64); its .debug_info still gives file:line.
            debug_frame: if is_go { None } else { sect(".debug_frame") },
            text,
            symbols,
            loads,
            exec,
            dwarf,
        })
    }

    /// The function containing `svma`, demangled, and its start.
    pub fn function(&self, svma: u64) -> Option<(String, u64)> {
        let i = self
            .symbols
            .partition_point(|(a, _, _)| *a <= svma)
            .checked_sub(1)?;
        let (addr, size, name) = self.symbols[i];
        if size > 0 && svma >= addr.saturating_add(size) {
            return None;
        }
        let mut d = demangle(name);
        cut(&mut d, MAX_NAME);
        Some((d, addr))
    }

    /// The Go function at `svma` from `.gopclntab`, for Go binaries without symbols.
    pub fn go_function(&self, svma: u64) -> Option<String> {
        self.go.as_ref()?.function(svma)
    }

    /// file:line for `svma`, where DWARF line tables cover it.
    pub fn location(&self, svma: u64) -> Option<(String, Option<u32>)> {
        let loc = self.dwarf.as_ref()?.find_location(svma).ok()??;
        let mut f = loc.file?.to_string();
        cut(&mut f, MAX_NAME);
        Some((f, loc.line))
    }

    /// The name DWARF gives the (outermost) function at `svma`, for binaries whose symbol
    /// table is gone.
    pub fn dwarf_function(&self, svma: u64) -> Option<String> {
        let ctx = self.dwarf.as_ref()?;
        let mut frames = ctx.find_frames(svma).skip_all_loads().ok()?;
        let mut last = None;
        let mut n = 0;
        while let Ok(Some(f)) = frames.next() {
            n += 1;
            if n > 64 {
                break;
            }
            if let Some(func) = f.function {
                if let Ok(name) = func.raw_name() {
                    last = Some(name.to_string());
                }
            }
        }
        last.map(|n| {
            let mut d = demangle(&n);
            cut(&mut d, MAX_NAME);
            d
        })
    }

    /// Whether `svma` is in an executable segment.
    pub fn is_exec(&self, svma: u64) -> bool {
        self.exec.iter().any(|(v, n)| svma >= *v && svma - v < *n)
    }

    /// File bytes at `svma..svma+len`, when a PT_LOAD holds them.
    pub fn bytes_at(&self, svma: u64, len: usize) -> Option<&'static [u8]> {
        let i = self
            .loads
            .partition_point(|(v, _, _)| *v <= svma)
            .checked_sub(1)?;
        let (v, size, off) = self.loads[i];
        let rel = svma - v;
        if rel.checked_add(len as u64)? > size {
            return None;
        }
        let start = usize::try_from(off.checked_add(rel)?).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }
}

pub fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_and_cxx() {
        assert_eq!(
            demangle("_ZN4core9panicking9panic_fmt17h0123456789abcdefE"),
            "core::panicking::panic_fmt"
        );
        assert_eq!(demangle("_RNvCs1234_7crasher5parse"), "crasher::parse");
        assert_eq!(demangle("_ZN6worker3runEi"), "worker::run(int)");
        assert_eq!(demangle("main.crashHere"), "main.crashHere");
        assert_eq!(demangle("_Z"), "_Z");
    }

    #[test]
    fn reads_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let b = Binary::load(&exe).unwrap();
        assert!(b.eh_frame.is_some());
        assert!(b.eh_frame_hdr.is_some());
        assert!(!b.symbols.is_empty());
        let garbage: &'static [u8] =
            Box::leak(vec![0x7fu8, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0].into_boxed_slice());
        assert!(Binary::parse(garbage, "g").is_err());
    }
}
