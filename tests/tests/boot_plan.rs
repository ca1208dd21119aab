//! The launch-backend seam: for ELF (64-bit Linux entry), PVH and bzImage kernels, the
//! Recording backend is handed exactly the addresses and bytes the Plain backend writes, and
//! Plain writes nothing else.

use std::path::{Path, PathBuf};

use tests::api_client::TempDir;
use tests::tiny_guest;
use vm_memory::{Bytes, GuestAddress};
use vmm::boot::{self, EntryPoint, KernelFormat, LaunchBackend, PieceKind, Plain, Recording};
use vmm::memory::{self, MemoryBackend};
use vmm::{BootSource, MachineConfig};

const MEM_MIB: u64 = 64;

/// Plans `kernel` (with a small initrd), applies Plain to fresh memory and Recording to the
/// same plan, and checks the two agree byte for byte; returns the plan's entry and pieces.
fn plain_matches_recording(kernel: &Path, vcpus: u8) -> (EntryPoint, Vec<PieceKind>) {
    let dir = TempDir::new("plan");
    let initrd = dir.join("initrd");
    let initrd_bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&initrd, &initrd_bytes).unwrap();
    let source = BootSource {
        kernel_image_path: kernel.to_path_buf(),
        initrd_path: Some(initrd),
        boot_args: "console=ttyS0 reboot=k panic=1".into(),
        // Stands in for the workload spec's archive: an appendix piece after the initrd.
        initrd_append: b"07070100appendix".to_vec(),
    };
    let machine = MachineConfig {
        vcpu_count: vcpus,
        mem_size_mib: MEM_MIB,
    };
    let info = boot::inspect_kernel(kernel).unwrap();
    let plan = boot::plan(&info, &source, &machine).unwrap();

    let mem = memory::create(MEM_MIB, MemoryBackend::Anonymous)
        .unwrap()
        .memory;
    Plain.apply(&plan, &mem).unwrap();
    let mut recording = Recording::default();
    recording.apply(&plan, &mem).unwrap();

    let kinds: Vec<PieceKind> = plan.pieces.iter().map(|p| p.kind).collect();
    let recorded: Vec<PieceKind> = recording.records.iter().map(|r| r.kind).collect();
    assert_eq!(recorded, kinds, "one record per piece, in plan order");

    let mut all = vec![0u8; (MEM_MIB << 20) as usize];
    mem.read_slice(&mut all, GuestAddress(0)).unwrap();
    for (record, piece) in recording.records.iter().zip(&plan.pieces) {
        assert_eq!(record.addr, piece.addr);
        assert_eq!(record.bytes.len() as u64, piece.len(), "{:?}", record.kind);
        let at = record.addr as usize;
        let written = &all[at..at + record.bytes.len()];
        assert!(
            written == record.bytes.as_slice(),
            "{:?} at {:#x}: memory differs from the record",
            record.kind,
            record.addr
        );
        if record.kind == PieceKind::Initrd {
            assert_eq!(record.bytes, initrd_bytes);
        }
    }
    for record in &recording.records {
        let at = record.addr as usize;
        all[at..at + record.bytes.len()].fill(0);
    }
    if let Some(at) = all.iter().position(|b| *b != 0) {
        panic!("Plain wrote {:#x}, which no record covers", at);
    }
    (plan.entry, kinds)
}

fn has(kinds: &[PieceKind], kind: PieceKind) -> bool {
    kinds.contains(&kind)
}

#[test]
fn elf_kernel_plain_writes_exactly_what_recording_receives() {
    let (entry, kinds) = plain_matches_recording(&tiny_guest("report64"), 2);
    assert!(matches!(entry, EntryPoint::Linux64(_)), "{entry:?}");
    assert!(has(&kinds, PieceKind::Kernel(KernelFormat::Elf)));
    assert!(has(&kinds, PieceKind::ZeroPage));
    assert!(has(&kinds, PieceKind::PageTables));
    assert!(!has(&kinds, PieceKind::PvhStartInfo));
}

#[test]
fn pvh_kernel_plain_writes_exactly_what_recording_receives() {
    let (entry, kinds) = plain_matches_recording(&tiny_guest("pvh"), 1);
    assert!(matches!(entry, EntryPoint::Pvh(_)), "{entry:?}");
    for kind in [
        PieceKind::PvhStartInfo,
        PieceKind::PvhMemmap,
        PieceKind::PvhModlist,
        PieceKind::Gdt,
        PieceKind::Idt,
    ] {
        assert!(has(&kinds, kind), "{kind:?} missing from {kinds:?}");
    }
    assert!(!has(&kinds, PieceKind::ZeroPage));
    assert!(!has(&kinds, PieceKind::PageTables));
}

/// A minimal bzImage: 4 setup sectors after the boot sector, a boot protocol 2.15 header
/// loading high with a 64-bit entry, and `payload` as the protected-mode kernel.
fn crafted_bzimage(dir: &TempDir, payload: &[u8]) -> PathBuf {
    let mut image = vec![0u8; 5 * 512];
    image[0x1f1] = 4; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    image.extend_from_slice(payload);
    let path = dir.join("bzImage");
    std::fs::write(&path, image).unwrap();
    path
}

#[test]
fn bzimage_plain_writes_exactly_what_recording_receives() {
    let dir = TempDir::new("bzimage");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8 + 1).collect();
    let kernel = crafted_bzimage(&dir, &payload);
    let (entry, kinds) = plain_matches_recording(&kernel, 1);
    assert_eq!(entry, EntryPoint::Linux64(0x10_0200));
    assert!(has(&kinds, PieceKind::Kernel(KernelFormat::BzImage)));
    assert!(has(&kinds, PieceKind::ZeroPage));
}

#[test]
fn debian_bzimage_plain_writes_exactly_what_recording_receives() {
    const TEST: &str = "debian_bzimage_plain_writes_exactly_what_recording_receives";
    let Some(kernel) = tests::debian_vmlinuz() else {
        eprintln!(
            "SKIPPED {TEST}: no Debian vmlinuz (run scripts/debian-kernel or set TESSERA_DEBIAN_VMLINUZ)"
        );
        return;
    };
    let (entry, kinds) = plain_matches_recording(&kernel, 2);
    assert_eq!(entry, EntryPoint::Linux64(0x10_0200));
    assert!(has(&kinds, PieceKind::Kernel(KernelFormat::BzImage)));
}
