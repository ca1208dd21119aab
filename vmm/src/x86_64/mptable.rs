//! The Intel MultiProcessor table: how a kernel without ACPI finds its CPUs, the IOAPIC and the
//! routing of the 24 ISA/IOAPIC interrupt lines.
//!
//! Layout (MP spec 1.4): a 16-byte floating pointer at the start of the EBDA, then the
//! configuration table: a 44-byte header followed by processor, bus, IOAPIC, I/O interrupt and
//! local interrupt entries. Both parts carry a checksum that makes their bytes sum to zero.

use super::layout::{EBDA_START, HIMEM_START, IOAPIC_START, LAPIC_START};
use crate::boot::{Piece, PieceKind};

/// IOAPIC pins 0..=23.
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

// Interrupt types.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6 signature and the FPU + APIC feature bits, as a real CPU entry would carry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum MpTableError {
    /// the MP table for {0} vCPUs does not fit below 1 MiB
    TooLarge(u8),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

/// The MP floating pointer and configuration table for `vcpus` CPUs, placed at `base`.
pub fn build(vcpus: u8, base: u64) -> Vec<u8> {
    let ioapic_id = vcpus; // The first ID after the CPUs' APIC IDs.
    let table_addr = base as u32 + FLOATING_POINTER_LEN as u32;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut entry = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        let mut e = vec![ENTRY_PROCESSOR, cpu, APIC_VERSION, flags];
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        entry(&e);
    }
    entry(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    let mut ioapic = vec![ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1];
    ioapic.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry(&ioapic);
    for pin in 0..IOAPIC_PINS {
        // Type, flags (conforming polarity and trigger), source bus and IRQ, IOAPIC and pin.
        entry(&[
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
    }
    // ExtINT on LINT0 and NMI on LINT1 of every local APIC (0xff).
    entry(&[ENTRY_LOCAL_INTERRUPT, INT_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entry(&[ENTRY_LOCAL_INTERRUPT, INT_NMI, 0, 0, 0, 0, 0xff, 1]);

    let table_len = (HEADER_LEN + entries.len()) as u16;
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"TESSERA ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&[0; 6]); // OEM table pointer and size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // features: a table follows, no IMCR
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

/// The MP table for `vcpus` CPUs at the start of the EBDA, as a boot plan piece.
pub fn piece(vcpus: u8) -> Result<Piece, MpTableError> {
    let bytes = build(vcpus, EBDA_START);
    if EBDA_START + bytes.len() as u64 > HIMEM_START {
        return Err(MpTableError::TooLarge(vcpus));
    }
    Ok(Piece::bytes(PieceKind::MpTable, EBDA_START, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn both_checksums_make_their_bytes_sum_to_zero() {
        for vcpus in [1, 2, 4, 32] {
            let bytes = build(vcpus, EBDA_START);
            assert_eq!(&bytes[..4], b"_MP_");
            assert_eq!(
                sum(&bytes[..FLOATING_POINTER_LEN]),
                0,
                "floating pointer, {vcpus} vCPUs"
            );
            let table = &bytes[FLOATING_POINTER_LEN..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table, {vcpus} vCPUs");
        }
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let bytes = build(2, EBDA_START);
        let ptr = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), EBDA_START + FLOATING_POINTER_LEN as u64);
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_only_the_first_boots() {
        let bytes = build(4, EBDA_START);
        let table = &bytes[FLOATING_POINTER_LEN..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        let cpus: Vec<&[u8]> = table[HEADER_LEN..].chunks(20).take(4).collect();
        for (id, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu[0], ENTRY_PROCESSOR);
            assert_eq!(cpu[1] as usize, id);
            assert_eq!(cpu[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(cpu[3] & CPU_BOOTSTRAP != 0, id == 0);
        }
        // After the CPUs: the ISA bus, then the IOAPIC with the next free ID.
        let after = &table[HEADER_LEN + 4 * 20..];
        assert_eq!(
            &after[..8],
            &[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']
        );
        assert_eq!(&after[8..10], &[ENTRY_IOAPIC, 4]);
    }

    #[test]
    fn the_largest_table_fits_below_1_mib() {
        use crate::boot::{BootPlan, EntryPoint, LaunchBackend, Plain};
        use crate::memory::{self, MemoryBackend};
        use vm_memory::{Bytes, GuestAddress};
        let mem = memory::create(8, MemoryBackend::Anonymous).unwrap().memory;
        let plan = BootPlan {
            pieces: vec![piece(crate::config::MAX_VCPUS).unwrap()],
            entry: EntryPoint::Pvh(0),
        };
        Plain.apply(&plan, &mem).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
