//! vCPU register state at boot: GDT, identity page tables, long-mode or PVH (32-bit protected
//! mode) segment and control registers, general registers, FPU, MSRs and LAPIC LINT pins.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};

use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDPT_START, PD_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};
use crate::boot::{Piece, PieceKind};
use crate::hypervisor::{self, Vcpu};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum RegsError {
    /// cannot {what} on a vCPU: {source}
    Kvm {
        what: &'static str,
        source: hypervisor::Error,
    },
    /// the host KVM refused boot MSR {0:#x}
    Msr(u32),
}

fn kvm(what: &'static str) -> impl FnOnce(hypervisor::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit Linux boot protocol: long mode, paging on, RSI = zero page.
    Linux64(u64),
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh(u64),
}

// GDT access/flags words (bits 8..15 access byte, 12..15 of the upper word: G, D/B, L, AVL).
const CODE64: u16 = 0xa09b;
const CODE32: u16 = 0xc09b;
const DATA: u16 = 0xc093;
const TSS64: u16 = 0x808b;
const TSS32: u16 = 0x008b;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_HUGE: u64 = 0x80;

/// A GDT descriptor from its flags word, base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM segment register that loading GDT slot `index` would produce.
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let granular = bit(55) == 1;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// GDT for an entry point: null, code, data, TSS.
fn gdt(entry: &EntryPoint) -> [u64; 4] {
    match entry {
        EntryPoint::Linux64(_) => [
            0,
            gdt_entry(CODE64, 0, 0xfffff),
            gdt_entry(DATA, 0, 0xfffff),
            gdt_entry(TSS64, 0, 0xfffff),
        ],
        EntryPoint::Pvh(_) => [
            0,
            gdt_entry(CODE32, 0, 0xfffff),
            gdt_entry(DATA, 0, 0xfffff),
            gdt_entry(TSS32, 0, 0x67),
        ],
    }
}

/// An identity map of the first 1 GiB with 2 MiB pages: PML4, PDPT and PD pieces.
fn page_tables() -> [Piece; 3] {
    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PAGE_HUGE | PAGE_PRESENT_RW).to_le_bytes())
        .collect();
    [
        Piece::bytes(
            PieceKind::PageTables,
            PML4_START,
            (PDPT_START | PAGE_PRESENT_RW).to_le_bytes().to_vec(),
        ),
        Piece::bytes(
            PieceKind::PageTables,
            PDPT_START,
            (PD_START | PAGE_PRESENT_RW).to_le_bytes().to_vec(),
        ),
        Piece::bytes(PieceKind::PageTables, PD_START, pd),
    ]
}

/// The memory the boot vCPU's registers point at, as boot plan pieces: GDT and (empty) IDT,
/// and the identity page tables for the 64-bit entry.
pub fn boot_tables(entry: &EntryPoint) -> Vec<Piece> {
    let gdt_bytes: Vec<u8> = gdt(entry).iter().flat_map(|d| d.to_le_bytes()).collect();
    let mut pieces = vec![
        Piece::bytes(PieceKind::Gdt, GDT_START, gdt_bytes),
        Piece::bytes(PieceKind::Idt, IDT_START, 0u64.to_le_bytes().to_vec()),
    ];
    if let EntryPoint::Linux64(_) = entry {
        pieces.extend(page_tables());
    }
    pieces
}

/// Boot-processor state for `entry`: segment, control and general registers. The GDT, IDT
/// and page tables they point at are boot plan pieces ([`boot_tables`]).
pub fn setup_boot_vcpu(vcpu: &dyn Vcpu, entry: &EntryPoint) -> Result<(), RegsError> {
    let table = gdt(entry);
    let mut sregs: kvm_sregs = vcpu.sregs().map_err(kvm("read segment registers"))?;
    let code = segment(table[1], 1);
    let data = segment(table[2], 2);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(table[3], 3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match *entry {
        EntryPoint::Linux64(rip) => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryPoint::Pvh(rip) => {
            sregs.cr0 = CR0_PE;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = PVH_INFO_START;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(kvm("set segment registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("set registers"))
}

// MSR indices.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// MSRs every vCPU starts with: syscall MSRs cleared, fast strings on, write-back memory.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Loads the boot MSRs; names the first one KVM refuses.
pub fn setup_msrs(vcpu: &dyn Vcpu) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msr(0))?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
    match entries.get(written) {
        Some(refused) => Err(RegsError::Msr(refused.index)),
        None => Ok(()),
    }
}

/// x87 control word and SSE control/status as after FNINIT and a reset.
pub fn setup_fpu(vcpu: &dyn Vcpu) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set FPU state"))
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        state.regs[offset + i] = b as _;
    }
}

/// Sets a LVT entry's delivery mode (bits 8..10), keeping its other bits.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as the MP table says.
pub fn setup_lint(vcpu: &dyn Vcpu) -> Result<(), RegsError> {
    let mut state = vcpu.lapic().map_err(kvm("read the local APIC"))?;
    let lint0 = lapic_reg(&state, APIC_LVT_LINT0);
    let lint1 = lapic_reg(&state, APIC_LVT_LINT1);
    set_lapic_reg(
        &mut state,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    set_lapic_reg(
        &mut state,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&state).map_err(kvm("set the local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_back_to_flat_segments() {
        let code = segment(gdt_entry(CODE64, 0, 0xfffff), 1);
        assert_eq!((code.base, code.limit, code.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (code.type_, code.s, code.present, code.l, code.db, code.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        let data = segment(gdt_entry(DATA, 0, 0xfffff), 2);
        assert_eq!(
            (data.type_, data.db, data.l, data.selector),
            (0x3, 1, 0, 16)
        );
        let code32 = segment(gdt_entry(CODE32, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let tss = segment(gdt_entry(TSS32, 0x1234_5678, 0x67), 3);
        assert_eq!(
            (tss.base, tss.limit, tss.g, tss.s),
            (0x1234_5678, 0x67, 0, 0)
        );
    }

    #[test]
    fn known_descriptor_encodings() {
        assert_eq!(gdt_entry(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        use crate::boot::{BootPlan, LaunchBackend, Plain};
        use crate::memory::{self, MemoryBackend};
        use vm_memory::{Bytes, GuestAddress};
        let mem = memory::create(16, MemoryBackend::Anonymous).unwrap().memory;
        let plan = BootPlan {
            pieces: page_tables().to_vec(),
            entry: EntryPoint::Linux64(0),
        };
        Plain.apply(&plan, &mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_START);
        let last: u64 = mem.read_obj(GuestAddress(PD_START + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 511 << 21);
        assert_ne!(last & PAGE_HUGE, 0);
    }

    #[test]
    fn lint_delivery_modes() {
        assert_eq!(
            with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(with_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
        let mut state = kvm_lapic_state::default();
        set_lapic_reg(&mut state, APIC_LVT_LINT1, 0xdead_beef);
        assert_eq!(lapic_reg(&state, APIC_LVT_LINT1), 0xdead_beef);
    }
}
