//! Function names from a Go binary's `.gopclntab`, for Go binaries without a symbol
//! table (`go build -ldflags=-s -w`, common in container images): the runtime's own
//! table of functions, which every Go binary keeps because tracebacks need it.
//!
//! Layouts read (the header's magic tells them apart; see the Go runtime's
//! `runtime/symtab.go`, `pcHeader` and `_func`):
//! - Go 1.18–1.19 (`0xfffffff0`) and 1.20+ (`0xfffffff1`): entries are 32-bit offsets
//!   from the header's `textStart` (0 in a PIE file, where `.text`'s address is used);
//! - Go 1.16–1.17 (`0xfffffffa`): entries are absolute pointer-sized addresses.
//!
//! Older tables (Go 1.2–1.15) are not read. Invariants: the section is hostile input;
//! every offset is checked against it (a lookup that runs off it finds nothing), the
//! function table is only binary-searched (no loop over `nfunc`), and names are cut at
//! [`super::symbolize::MAX_NAME`].

/// A parsed `.gopclntab` header: where its tables are.
#[derive(Debug, Clone)]
pub struct GoPcln {
    data: &'static [u8],
    ptr: usize,
    nfunc: usize,
    /// Entries relative to this (1.18+), or absolute (`None`, 1.16–1.17).
    text_start: Option<u64>,
    funcnames: usize,
    functab: usize,
}

const GO118: u32 = 0xffff_fff0;
const GO120: u32 = 0xffff_fff1;
const GO116: u32 = 0xffff_fffa;

impl GoPcln {
    /// `text` is the `.text` section's address, used when the header's is 0 (PIE).
    pub fn parse(data: &'static [u8], text: Option<u64>) -> Option<Self> {
        let magic = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
        let (pad, min_lc, ptr) = (data.get(4..6)?, *data.get(6)?, usize::from(*data.get(7)?));
        if pad != [0, 0] || !matches!(min_lc, 1 | 2 | 4) || !matches!(ptr, 4 | 8) {
            return None;
        }
        let word = |i: usize| read_word(data, 8 + i * ptr, ptr);
        let nfunc = usize::try_from(word(0)?).ok()?;
        let (text_start, names, pcln) = match magic {
            GO118 | GO120 => {
                let t = word(2)?;
                let t = if t == 0 { text? } else { t };
                (Some(t), word(3)?, word(7)?)
            }
            GO116 => (None, word(2)?, word(6)?),
            _ => return None,
        };
        let g = Self {
            data,
            ptr,
            nfunc,
            text_start,
            funcnames: usize::try_from(names).ok()?,
            functab: usize::try_from(pcln).ok()?,
        };
        // The table must hold nfunc + 1 entries (the last one ends the last function).
        g.entry(nfunc)?;
        Some(g)
    }

    /// Width of one functab field: 32-bit offsets since 1.18, pointers before.
    fn field(&self) -> usize {
        if self.text_start.is_some() {
            4
        } else {
            self.ptr
        }
    }

    /// (entry address, offset of its `_func` in the pcln table) of function `i`.
    fn entry(&self, i: usize) -> Option<(u64, usize)> {
        let f = self.field();
        let at = self.functab.checked_add(i.checked_mul(2 * f)?)?;
        let entry = read_word(self.data, at, f)?;
        let func = usize::try_from(read_word(self.data, at.checked_add(f)?, f)?).ok()?;
        let entry = match self.text_start {
            Some(t) => t.checked_add(entry)?,
            None => entry,
        };
        Some((entry, func))
    }

    /// The Go function containing `svma` (an address as the binary lays it out).
    pub fn function(&self, svma: u64) -> Option<String> {
        let (first, _) = self.entry(0)?;
        let (end, _) = self.entry(self.nfunc)?;
        if svma < first || svma >= end {
            return None;
        }
        // The last entry at or below svma; entries are sorted by address.
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 <= svma {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (_, func) = self.entry(lo)?;
        // _func: entry (uint32 since 1.18, else a pointer), then nameOff (int32).
        let name_off = self.functab.checked_add(func)?.checked_add(self.field())?;
        let off = i32::from_le_bytes(self.data.get(name_off..name_off + 4)?.try_into().ok()?);
        let start = self.funcnames.checked_add(usize::try_from(off).ok()?)?;
        let rest = self.data.get(start..)?;
        let len = rest
            .iter()
            .take(super::symbolize::MAX_NAME)
            .position(|b| *b == 0)
            .unwrap_or(rest.len().min(super::symbolize::MAX_NAME));
        let name = String::from_utf8_lossy(&rest[..len]).into_owned();
        (!name.is_empty()).then_some(name)
    }
}

fn read_word(data: &[u8], at: usize, size: usize) -> Option<u64> {
    let b = data.get(at..at.checked_add(size)?)?;
    Some(match size {
        4 => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
        8 => u64::from_le_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.20 table of two functions at text + 0x0 and text + 0x40, ending at 0x80.
    fn table(text_start: u64) -> &'static [u8] {
        let mut d = Vec::new();
        d.extend_from_slice(&GO120.to_le_bytes());
        d.extend_from_slice(&[0, 0, 1, 8]);
        let header_words = 8; // nfunc, nfiles, textStart, names, cu, files, pctab, pcln
        let names_at = 8 + header_words * 8;
        let names = b"main.main\0main.crashHere\0";
        let pcln_at = names_at + names.len();
        for w in [
            2u64,
            0,
            text_start,
            names_at as u64,
            0,
            0,
            0,
            pcln_at as u64,
        ] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(names);
        // functab: (entryoff, funcoff) × 3, then the two _func records.
        let funcs_at = 3 * 8;
        for (entry, func) in [(0u32, funcs_at), (0x40, funcs_at + 8), (0x80, 0)] {
            d.extend_from_slice(&entry.to_le_bytes());
            d.extend_from_slice(&(func as u32).to_le_bytes());
        }
        for (entry, name) in [(0u32, 0i32), (0x40, 10)] {
            d.extend_from_slice(&entry.to_le_bytes());
            d.extend_from_slice(&name.to_le_bytes());
        }
        Box::leak(d.into_boxed_slice())
    }

    #[test]
    fn finds_the_function_of_an_address() {
        let g = GoPcln::parse(table(0x40_1000), None).unwrap();
        assert_eq!(g.function(0x40_1000).as_deref(), Some("main.main"));
        assert_eq!(g.function(0x40_103f).as_deref(), Some("main.main"));
        assert_eq!(g.function(0x40_1040).as_deref(), Some("main.crashHere"));
        assert_eq!(g.function(0x40_107f).as_deref(), Some("main.crashHere"));
        assert_eq!(g.function(0x40_1080), None);
        assert_eq!(g.function(0x40_0fff), None);
        // PIE: textStart 0 in the file, .text's address instead.
        let pie = GoPcln::parse(table(0), Some(0x2000)).unwrap();
        assert_eq!(pie.function(0x2041).as_deref(), Some("main.crashHere"));
        assert!(GoPcln::parse(table(0), None).is_none());
    }

    #[test]
    fn hostile_tables_find_nothing_and_never_panic() {
        let good = table(0x1000);
        // The second _func record cut off: its name is not found, the first one's is.
        let g = GoPcln::parse(&good[..good.len() - 8], None).unwrap();
        assert_eq!(g.function(0x1040), None);
        assert_eq!(g.function(0x1000).as_deref(), Some("main.main"));
        for cut in 0..good.len() {
            if let Some(g) = GoPcln::parse(&good[..cut], None) {
                for a in [0x1000, 0x1040, 0x107f] {
                    let _ = g.function(a);
                }
            }
        }
        // nfunc far beyond the data: refused at parse.
        let mut huge = good.to_vec();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GoPcln::parse(Box::leak(huge.into_boxed_slice()), None).is_none());
        // Wrong magic, padding, pointer size.
        for (at, v) in [(0, 0x12u8), (4, 1), (7, 3)] {
            let mut bad = good.to_vec();
            bad[at] = v;
            assert!(GoPcln::parse(Box::leak(bad.into_boxed_slice()), None).is_none());
        }
    }
}
