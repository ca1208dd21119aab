//! What the kernel is told at entry: the e820 memory map, the command line and the initrd, as a
//! Linux zero page (`boot_params`) or, for PVH entry, an `hvm_start_info`.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::ByteValued;

use super::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::boot::{Piece, PieceKind};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum BootParamsError {
    /// the e820 map has {0} entries; the zero page holds 128
    TooManyE820Entries(usize),
}

/// One range of the guest physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Where the loader put the command line and the initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Length of the command line without its NUL.
    pub cmdline_len: usize,
    /// Guest address and size of the initrd.
    pub initrd: Option<(u64, u64)>,
}

/// The memory map for `mem_size` bytes of RAM: low RAM up to the EBDA, the EBDA and BIOS area
/// reserved, RAM from 1 MiB up to the MMIO gap, and the rest from 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let low_end = mem_size.min(MMIO_GAP_START);
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > low_end {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - low_end,
            kind: E820_RAM,
        });
    }
    map
}

/// The Linux zero page. `header` is the bzImage's setup header, or `None` for an ELF vmlinux.
pub fn zero_page(
    header: Option<setup_header>,
    info: &BootInfo,
    e820: &[E820Entry],
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if e820.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(e820.len()));
    }
    params.hdr = header.unwrap_or_else(|| setup_header {
        kernel_alignment: KERNEL_ALIGNMENT,
        ..Default::default()
    });
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// The zero page for 64-bit Linux boot, as a boot plan piece.
pub fn zero_page_piece(params: &boot_params) -> Piece {
    Piece::bytes(
        PieceKind::ZeroPage,
        ZERO_PAGE_START,
        params.as_slice().to_vec(),
    )
}

/// The PVH start info, its memory map and (with an initrd) its module list, as boot plan
/// pieces: memory map, module list, start info.
pub fn pvh_start_info_pieces(info: &BootInfo, e820: &[E820Entry]) -> Vec<Piece> {
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let mut memmap = Vec::with_capacity(e820.len() * size_of::<hvm_memmap_table_entry>());
    for e in e820 {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        memmap.extend_from_slice(entry.as_slice());
    }
    let mut pieces = vec![Piece::bytes(PieceKind::PvhMemmap, PVH_MEMMAP_START, memmap)];
    if let Some((paddr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        pieces.push(Piece::bytes(
            PieceKind::PvhModlist,
            PVH_MODLIST_START,
            module.as_slice().to_vec(),
        ));
        start.nr_modules = 1;
        start.modlist_paddr = PVH_MODLIST_START;
    }
    pieces.push(Piece::bytes(
        PieceKind::PvhStartInfo,
        PVH_INFO_START,
        start.as_slice().to_vec(),
    ));
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{BootPlan, EntryPoint, LaunchBackend, Plain};
    use crate::memory::{self, GuestMemory, MemoryBackend};
    use vm_memory::{Bytes, GuestAddress};

    fn test_memory(mib: u64) -> GuestMemory {
        memory::create(mib, MemoryBackend::Anonymous)
            .unwrap()
            .memory
    }

    fn apply(mem: &GuestMemory, pieces: Vec<Piece>) {
        let plan = BootPlan {
            pieces,
            entry: EntryPoint::Pvh(0),
        };
        Plain.apply(&plan, mem).unwrap();
    }

    #[test]
    fn e820_leaves_the_mmio_gap_out() {
        let map = e820_map(4 << 30);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: MMIO_GAP_START - HIMEM_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: MMIO_GAP_END,
                    size: (4 << 30) - MMIO_GAP_START,
                    kind: E820_RAM
                },
            ]
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (HIMEM_START - EBDA_START));
        for e in &map {
            let end = e.addr + e.size;
            assert!(
                end <= MMIO_GAP_START || e.addr >= MMIO_GAP_END,
                "{e:?} crosses the gap"
            );
        }
    }

    #[test]
    fn small_guest_e820_has_no_high_ram() {
        let map = e820_map(128 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[2],
            E820Entry {
                addr: HIMEM_START,
                size: (128 << 20) - HIMEM_START,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let e820 = e820_map(256 << 20);
        let info = BootInfo {
            cmdline_len: 42,
            initrd: Some((0x0ff0_0000, 0x1234)),
        };
        let params = zero_page(None, &info, &e820).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.type_of_loader }, LOADER_TYPE_UNDEFINED);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x0ff0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.kernel_alignment }, KERNEL_ALIGNMENT);
        assert_eq!(params.e820_entries as usize, e820.len());
        let last = params.e820_table[e820.len() - 1];
        assert_eq!(
            ({ last.addr }, { last.size }),
            (HIMEM_START, (256 << 20) - HIMEM_START)
        );

        // Written at the zero page address, it reads back byte for byte.
        let mem = test_memory(16);
        apply(&mem, vec![zero_page_piece(&params)]);
        let back: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(back.e820_entries, params.e820_entries);
        assert_eq!({ back.hdr.cmd_line_ptr }, CMDLINE_START as u32);
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header() {
        let header = setup_header {
            version: 0x20f,
            code32_start: 0x10_0000,
            ..Default::default()
        };
        let info = BootInfo {
            cmdline_len: 1,
            initrd: None,
        };
        let params = zero_page(Some(header), &info, &e820_map(64 << 20)).unwrap();
        assert_eq!({ params.hdr.version }, 0x20f);
        assert_eq!({ params.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn pvh_start_info_has_magic_memmap_and_module() {
        let mem = test_memory(16);
        let e820 = e820_map(16 << 20);
        let info = BootInfo {
            cmdline_len: 3,
            initrd: Some((0x80_0000, 0x1000)),
        };
        apply(&mem, pvh_start_info_pieces(&info, &e820));
        let start: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(start.magic, XEN_HVM_START_MAGIC);
        assert_eq!(start.memmap_entries as usize, e820.len());
        assert_eq!(start.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(start.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x80_0000, 0x1000));
        let second: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(start.memmap_paddr + 24)).unwrap();
        assert_eq!((second.addr, second.type_), (EBDA_START, E820_RESERVED));
    }
}
