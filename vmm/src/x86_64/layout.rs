//! Where things live in guest physical memory.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_9000  PML4 (identity page tables, 64-bit boot)
//! 0x0000_0520  IDT (empty)              0x0000_a000  PDPT
//! 0x0000_6000  PVH start info           0x0000_b000  PD: 512 x 2 MiB = first 1 GiB
//! 0x0000_6040  PVH module list          0x0002_0000  kernel command line (2 KiB)
//! 0x0000_6100  PVH memory map           0x0009_fc00  EBDA: MP table; reserved up to 1 MiB
//! 0x0000_7000  zero page (boot_params)  0x0010_0000  kernel
//! 0x0000_8ff0  boot stack top           top of low RAM - initrd (page aligned)
//! 0xc000_0000 .. 0x1_0000_0000  MMIO gap (virtio-mmio windows from 0xd000_0000, IOAPIC
//!                               0xfec0_0000, LAPIC 0xfee0_0000); RAM resumes at 4 GiB
//! ```

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6100;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's COMMAND_LINE_SIZE on x86, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives in its first KiB.
pub const EBDA_START: u64 = 0x9fc00;
/// First address above the legacy BIOS area; kernels load here.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap: no RAM between these addresses.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Guest page size used for alignment.
pub const PAGE_SIZE: u64 = 0x1000;

/// IRQ lines of the legacy devices (GSIs on the in-kernel IOAPIC).
pub const KEYBOARD_IRQ: u32 = 1;
pub const SERIAL_IRQ: u32 = 4;

/// virtio-mmio devices: 4 KiB windows from here, one IRQ each from `VIRTIO_IRQ_FIRST` up to
/// the last IOAPIC pin.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_IRQ_FIRST: u32 = 5;
pub const VIRTIO_IRQ_LAST: u32 = 23;
