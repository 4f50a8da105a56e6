//! Unwinding a thread from its registers and a window of its stack: DWARF CFI
//! (`.eh_frame` through `.eh_frame_hdr`, else `.debug_frame`) from the cached binaries,
//! then frame pointers, then bounded stack scanning for return addresses that follow a
//! call instruction (as breakpad does); through signal trampolines (CFI marked `S`, or
//! the `rt_sigreturn` code of `__restore_rt` found without CFI).
//!
//! Invariants: every step reads memory only through [`Memory`] (the core's windows) and
//! binaries only through [`Binary`]; at most `max_frames` frames; a step whose stack
//! pointer does not move up (except a frame-pointer step to another stack, as Go's
//! `systemstack` makes), or that repeats a (pc, sp) pair, ends the walk with a reason. A
//! broken table (corrupt CFI) falls back to the next method instead of failing.

use std::collections::HashSet;

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, EvaluationResult, LittleEndian,
    Register, RegisterRule, UnwindContext, UnwindSection, UnwindTableRow, Value,
};

use super::elfcore::{Memory, NUM_REGS};
use super::symbolize::{Binary, Slice};

/// DWARF register numbers (x86_64): rax rdx rcx rbx rsi rdi rbp rsp r8..r15, 16 = RA.
pub const DW_RBP: usize = 6;
pub const DW_RSP: usize = 7;
pub const DW_RA: usize = 16;
pub type Regs = [Option<u64>; 17];

/// `user_regs_struct` order → DWARF order.
pub fn dwarf_regs(pr: &[u64; NUM_REGS]) -> Regs {
    let map = [
        10usize, 12, 11, 5, 13, 14, 4, 19, 9, 8, 7, 6, 3, 2, 1, 0, 16,
    ];
    let mut r = [None; 17];
    for (d, p) in map.iter().enumerate() {
        r[d] = Some(pr[*p]);
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Context,
    Cfi,
    FramePointer,
    Scan,
}

impl Trust {
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Context => "context",
            Trust::Cfi => "cfi",
            Trust::FramePointer => "framePointer",
            Trust::Scan => "scan",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    pub pc: u64,
    pub sp: u64,
    pub trust: Trust,
    /// The address to symbolize: pc for the first frame and after a signal frame, pc−1
    /// (inside the call) for return addresses.
    pub lookup: u64,
}

/// A file mapped into the process.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub module: usize,
}

pub struct Module {
    pub path: String,
    pub build_id: Option<String>,
    /// Address of the mapping at file offset 0.
    pub base: u64,
    pub binary: Option<Binary>,
}

impl Module {
    /// AVMA − SVMA.
    pub fn bias(&self) -> u64 {
        self.binary
            .as_ref()
            .map_or(self.base, |b| self.base.wrapping_sub(b.first_vaddr))
    }
}

/// The process's mappings and modules.
#[derive(Default)]
pub struct AddressSpace {
    pub mappings: Vec<Mapping>,
    pub modules: Vec<Module>,
}

impl AddressSpace {
    pub fn lookup(&self, addr: u64) -> Option<(&Mapping, &Module)> {
        let i = self
            .mappings
            .partition_point(|m| m.start <= addr)
            .checked_sub(1)?;
        let m = &self.mappings[i];
        (addr < m.end).then(|| (m, &self.modules[m.module]))
    }

    /// Whether `addr` can be a return address: in a mapped module and, where its binary
    /// is known, in an executable segment.
    pub fn is_code(&self, addr: u64) -> bool {
        match self.lookup(addr) {
            Some((_, m)) => match &m.binary {
                Some(b) => b.is_exec(addr.wrapping_sub(m.bias())),
                None => true,
            },
            None => false,
        }
    }

    /// Whether the bytes before `ra` are a call instruction (when the binary is known).
    fn follows_call(&self, ra: u64) -> bool {
        let Some((_, m)) = self.lookup(ra) else {
            return false;
        };
        let Some(b) = &m.binary else { return true };
        let svma = ra.wrapping_sub(m.bias());
        let Some(before) = svma.checked_sub(7).and_then(|s| b.bytes_at(s, 7)) else {
            return false;
        };
        // before[6] is the byte just before ra.
        let modrm_call = |i: usize| before[i] == 0xff && (before[i + 1] & 0x38) == 0x10;
        before[2] == 0xe8 || modrm_call(5) || modrm_call(4) || modrm_call(1) || modrm_call(0)
    }
}

#[derive(Debug, Clone)]
pub struct UnwindLimits {
    pub max_frames: usize,
    /// Words scanned above SP for one frame.
    pub scan_words: usize,
}

impl Default for UnwindLimits {
    fn default() -> Self {
        Self {
            max_frames: 64,
            scan_words: 256,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Unwound {
    pub frames: Vec<RawFrame>,
    /// Why the walk ended early (not at a thread's base).
    pub stopped: Option<String>,
    /// Addresses the walk needed that the windows lacked (for another pass).
    pub wants: Vec<u64>,
}

/// `mov $15, %rax; syscall` (`__restore_rt`): a signal frame is at SP.
const RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

pub fn unwind(space: &AddressSpace, mem: &Memory, regs: Regs, limits: &UnwindLimits) -> Unwound {
    let mut out = Unwound::default();
    let (Some(pc0), Some(sp0)) = (regs[DW_RA], regs[DW_RSP]) else {
        out.stopped = Some("no pc or sp".into());
        return out;
    };
    out.frames.push(RawFrame {
        pc: pc0,
        sp: sp0,
        trust: Trust::Context,
        lookup: pc0,
    });
    let mut regs = regs;
    let mut after_signal = true; // frame 0 is not a return address
    let mut seen = HashSet::new();
    seen.insert((pc0, sp0));
    let mut ctx = Box::new(UnwindContext::<usize>::new());
    while out.frames.len() < limits.max_frames {
        let (Some(pc), Some(sp)) = (regs[DW_RA], regs[DW_RSP]) else {
            break;
        };
        let lookup = if after_signal { pc } else { pc.wrapping_sub(1) };
        // 1. CFI.
        let mut next: Option<(Regs, Trust, bool)> = None;
        let wanted_before = out.wants.len();
        if let Ok(Some((r, signal))) = cfi_step(space, mem, &regs, lookup, &mut ctx, &mut out.wants)
        {
            let read_missed = out.wants.len() > wanted_before;
            if !read_missed && (r[DW_RA] == Some(0) || r[DW_RA].is_none()) {
                // The outermost frame says so.
                return out;
            }
            if valid_step(space, sp, &r) {
                next = Some((r, Trust::Cfi, signal));
            }
        }
        // 2. A signal trampoline without CFI.
        if next.is_none() {
            if let Some(r) = sigreturn_step(space, mem, &regs) {
                next = Some((r, Trust::Cfi, true));
            }
        }
        // 3. Frame pointers.
        if next.is_none() {
            if let Some(r) = fp_step(space, mem, &regs, &mut out.wants) {
                next = Some((r, Trust::FramePointer, false));
            }
        }
        // 4. Scanning.
        if next.is_none() {
            if let Some(r) = scan_step(space, mem, &regs, limits.scan_words) {
                next = Some((r, Trust::Scan, false));
            }
        }
        let Some((r, trust, signal)) = next else {
            if space.lookup(pc).is_none() {
                out.stopped = Some(format!("pc {pc:#x} is in no mapped file"));
            } else {
                out.stopped = Some(format!("no way to unwind past {pc:#x}"));
            }
            break;
        };
        let (Some(npc), Some(nsp)) = (r[DW_RA], r[DW_RSP]) else {
            break;
        };
        if !seen.insert((npc, nsp)) {
            out.stopped = Some(format!("the stack loops at {npc:#x}"));
            break;
        }
        let lookup = if signal { npc } else { npc.wrapping_sub(1) };
        out.frames.push(RawFrame {
            pc: npc,
            sp: nsp,
            trust,
            lookup,
        });
        after_signal = signal;
        regs = r;
    }
    if out.frames.len() >= limits.max_frames && out.stopped.is_none() {
        out.stopped = Some(format!("more than {} frames", limits.max_frames));
    }
    out
}

/// A step is believed when the new SP is above the old one and the return address is
/// code.
fn valid_step(space: &AddressSpace, old_sp: u64, r: &Regs) -> bool {
    match (r[DW_RA], r[DW_RSP]) {
        (Some(pc), Some(sp)) => sp > old_sp && space.is_code(pc),
        _ => false,
    }
}

fn fp_step(space: &AddressSpace, mem: &Memory, regs: &Regs, wants: &mut Vec<u64>) -> Option<Regs> {
    let fp = regs[DW_RBP]?;
    let sp = regs[DW_RSP]?;
    if fp == 0 || fp % 8 != 0 {
        return None;
    }
    let (Some(saved_fp), Some(ra)) = (mem.read_u64(fp), mem.read_u64(fp.wrapping_add(8))) else {
        wants.push(fp);
        return None;
    };
    if !space.is_code(ra) {
        return None;
    }
    // Within one stack the chain goes up; a jump to another stack (Go's systemstack,
    // sigaltstack) must land on memory the core has.
    if fp < sp && !mem.contains(saved_fp) && saved_fp != 0 {
        return None;
    }
    let mut r: Regs = [None; 17];
    // Callee-saved registers other than rbp are unknown after an FP step.
    r[DW_RBP] = Some(saved_fp);
    r[DW_RSP] = Some(fp + 16);
    r[DW_RA] = Some(ra);
    Some(r)
}

fn scan_step(space: &AddressSpace, mem: &Memory, regs: &Regs, words: usize) -> Option<Regs> {
    let sp = regs[DW_RSP]?;
    for i in 0..words as u64 {
        let addr = sp.checked_add(i * 8)?;
        let v = mem.read_u64(addr)?;
        if space.is_code(v) && space.follows_call(v) {
            let mut r: Regs = [None; 17];
            r[DW_RSP] = Some(addr + 8);
            r[DW_RA] = Some(v);
            // rbp stays if it still points into the stack above.
            r[DW_RBP] = regs[DW_RBP].filter(|fp| *fp > addr);
            return Some(r);
        }
    }
    None
}

/// `__restore_rt` without CFI: `struct ucontext` at SP; its `mcontext` holds the
/// interrupted registers.
fn sigreturn_step(space: &AddressSpace, mem: &Memory, regs: &Regs) -> Option<Regs> {
    let pc = regs[DW_RA]?;
    let sp = regs[DW_RSP]?;
    let (_, m) = space.lookup(pc)?;
    let b = m.binary.as_ref()?;
    let code = b.bytes_at(pc.wrapping_sub(m.bias()), RESTORE_RT.len())?;
    if code != RESTORE_RT {
        return None;
    }
    sigframe_regs(mem, sp)
}

/// Registers of the signal frame at `sp` (`uc_mcontext` at +40: r8…r15, rdi, rsi, rbp,
/// rbx, rdx, rax, rcx, rsp, rip).
pub fn sigframe_regs(mem: &Memory, sp: u64) -> Option<Regs> {
    let g = |i: u64| mem.read_u64(sp.checked_add(40 + 8 * i)?);
    let mut r: Regs = [None; 17];
    let order = [
        8usize, 9, 10, 11, 12, 13, 14, 15, 5, 4, 6, 3, 1, 0, 2, 7, 16,
    ];
    for (i, d) in order.iter().enumerate() {
        r[*d] = g(i as u64);
    }
    r[DW_RA]?;
    r[DW_RSP]?;
    Some(r)
}

type Row = UnwindTableRow<usize>;

fn cfi_step(
    space: &AddressSpace,
    mem: &Memory,
    regs: &Regs,
    lookup: u64,
    ctx: &mut UnwindContext<usize>,
    wants: &mut Vec<u64>,
) -> Result<Option<(Regs, bool)>, gimli::Error> {
    let Some((_, m)) = space.lookup(lookup) else {
        return Ok(None);
    };
    let Some(b) = &m.binary else { return Ok(None) };
    let svma = lookup.wrapping_sub(m.bias());
    let mut bases = BaseAddresses::default();
    if let Some(t) = b.text {
        bases = bases.set_text(t);
    }
    if let Some(eh) = b.eh_frame {
        bases = bases.set_eh_frame(eh.addr);
        if let Some(h) = b.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(h.addr);
        }
        let section = EhFrame::new(eh.data, LittleEndian);
        let hdr = b
            .eh_frame_hdr
            .and_then(|h| EhFrameHdr::new(h.data, LittleEndian).parse(&bases, 8).ok());
        let fde = match hdr.as_ref().and_then(|h| h.table()) {
            Some(t) => t.fde_for_address(&section, &bases, svma, EhFrame::cie_from_offset),
            None => section.fde_for_address(&bases, svma, EhFrame::cie_from_offset),
        };
        if let Ok(fde) = fde {
            let signal = fde.cie().is_signal_trampoline();
            let row = fde.unwind_info_for_address(&section, &bases, ctx, svma)?;
            return Ok(apply(row, &section, regs, mem, wants).map(|r| (r, signal)));
        }
    }
    if let Some(df) = b.debug_frame {
        let section = DebugFrame::new(df.data, LittleEndian);
        let fde = section.fde_for_address(&bases, svma, DebugFrame::cie_from_offset)?;
        let signal = fde.cie().is_signal_trampoline();
        let row = fde.unwind_info_for_address(&section, &bases, ctx, svma)?;
        return Ok(apply(row, &section, regs, mem, wants).map(|r| (r, signal)));
    }
    Ok(None)
}

fn apply<S: UnwindSection<Slice>>(
    row: &Row,
    section: &S,
    regs: &Regs,
    mem: &Memory,
    wants: &mut Vec<u64>,
) -> Option<Regs> {
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => regs
            .get(register.0 as usize)
            .copied()
            .flatten()?
            .checked_add_signed(*offset)?,
        CfaRule::Expression(e) => eval(e.get(section).ok()?, regs, mem, None)?,
    };
    let mut out: Regs = [None; 17];
    for (i, slot) in out.iter_mut().enumerate() {
        let rule = row.register(Register(i as u16));
        *slot = match rule {
            None | Some(RegisterRule::Undefined) => {
                // Callee-saved registers keep their value (rbx, rbp, r12–r15).
                if matches!(i, 3 | 6 | 12..=15) {
                    regs[i]
                } else {
                    None
                }
            }
            Some(RegisterRule::SameValue) => regs[i],
            Some(RegisterRule::Offset(o)) => {
                let a = cfa.checked_add_signed(o)?;
                let v = mem.read_u64(a);
                if v.is_none() {
                    wants.push(a);
                }
                v
            }
            Some(RegisterRule::ValOffset(o)) => cfa.checked_add_signed(o),
            Some(RegisterRule::Register(r)) => regs.get(r.0 as usize).copied().flatten(),
            Some(RegisterRule::Expression(e)) => {
                let a = eval(e.get(section).ok()?, regs, mem, Some(cfa))?;
                mem.read_u64(a)
            }
            Some(RegisterRule::ValExpression(e)) => {
                eval(e.get(section).ok()?, regs, mem, Some(cfa))
            }
            Some(RegisterRule::Constant(c)) => Some(c),
            Some(_) => None,
        };
    }
    out[DW_RSP] = Some(cfa);
    if row.register(Register(DW_RA as u16)).is_none() {
        // No rule for the return address: the frame is the outermost.
        out[DW_RA] = None;
    }
    Some(out)
}

fn eval(
    expr: gimli::Expression<Slice>,
    regs: &Regs,
    mem: &Memory,
    cfa: Option<u64>,
) -> Option<u64> {
    let enc = gimli::Encoding {
        address_size: 8,
        format: gimli::Format::Dwarf32,
        version: 4,
    };
    let mut e = expr.evaluation(enc);
    e.set_max_iterations(1000);
    if let Some(c) = cfa {
        e.set_initial_value(c);
    }
    let mut r = e.evaluate().ok()?;
    for _ in 0..1000 {
        r = match r {
            EvaluationResult::Complete => break,
            EvaluationResult::RequiresMemory { address, size, .. } => {
                let v = match size {
                    8 => mem.read_u64(address)?,
                    n @ 1..=7 => {
                        let b = mem.read(address, n as usize)?;
                        let mut w = [0u8; 8];
                        w[..b.len()].copy_from_slice(b);
                        u64::from_le_bytes(w)
                    }
                    _ => return None,
                };
                e.resume_with_memory(Value::Generic(v)).ok()?
            }
            EvaluationResult::RequiresRegister { register, .. } => {
                let v = regs.get(register.0 as usize).copied().flatten()?;
                e.resume_with_register(Value::Generic(v)).ok()?
            }
            EvaluationResult::RequiresCallFrameCfa => e.resume_with_call_frame_cfa(cfa?).ok()?,
            _ => return None,
        };
    }
    let pieces = e.result();
    match pieces.first()?.location {
        gimli::Location::Address { address } => Some(address),
        gimli::Location::Value { value } => value.to_u64(u64::MAX).ok(),
        _ => None,
    }
}
