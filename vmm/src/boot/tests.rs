use std::path::Path;

use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, EM_AARCH64, EM_X86_64, PT_LOAD, PT_NOTE};
use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::*;
use crate::memory::{self, GuestMemory, MemoryBackend};
use crate::x86_64::layout::HIMEM_START;

fn test_memory(mib: u64) -> GuestMemory {
    memory::create(mib, MemoryBackend::Anonymous)
        .unwrap()
        .memory
}

/// A file under the temporary directory that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("tessera-boot-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One program header of a crafted ELF: type, physical address, file bytes, memory size.
struct Segment {
    p_type: u32,
    paddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

/// A little-endian ELF64 with `segments`, each segment's bytes after the headers.
fn crafted_elf(machine: u16, entry: u64, segments: &[Segment]) -> Vec<u8> {
    let ehdr_len = size_of::<Elf64_Ehdr>();
    let phdr_len = size_of::<Elf64_Phdr>();
    let mut ehdr = Elf64_Ehdr::default();
    ehdr.e_ident[..4].copy_from_slice(b"\x7fELF");
    ehdr.e_ident[4] = 2; // ELFCLASS64
    ehdr.e_ident[5] = 1; // ELFDATA2LSB
    ehdr.e_ident[6] = 1;
    ehdr.e_type = 2;
    ehdr.e_machine = machine;
    ehdr.e_version = 1;
    ehdr.e_entry = entry;
    ehdr.e_phoff = ehdr_len as u64;
    ehdr.e_ehsize = ehdr_len as u16;
    ehdr.e_phentsize = phdr_len as u16;
    ehdr.e_phnum = segments.len() as u16;
    let mut out = ehdr.as_slice().to_vec();
    let mut offset = (ehdr_len + phdr_len * segments.len()) as u64;
    for s in segments {
        let phdr = Elf64_Phdr {
            p_type: s.p_type,
            p_flags: 5,
            p_offset: offset,
            p_vaddr: s.paddr,
            p_paddr: s.paddr,
            p_filesz: s.data.len() as u64,
            p_memsz: s.memsz,
            p_align: 8,
        };
        out.extend_from_slice(phdr.as_slice());
        offset += s.data.len() as u64;
    }
    for s in segments {
        out.extend_from_slice(&s.data);
    }
    out
}

fn load(paddr: u64, data: &[u8], memsz: u64) -> Segment {
    Segment {
        p_type: PT_LOAD,
        paddr,
        data: data.to_vec(),
        memsz,
    }
}

/// A PT_NOTE segment with a "Linux" note and the Xen PVH entry note.
fn pvh_notes(pvh_entry: u32) -> Segment {
    let mut data = Vec::new();
    let mut note = |name: &[u8], kind: u32, desc: &[u8]| {
        data.extend_from_slice(&(name.len() as u32).to_le_bytes());
        data.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        data.extend_from_slice(&kind.to_le_bytes());
        data.extend_from_slice(name);
        data.resize(data.len().div_ceil(4) * 4, 0);
        data.extend_from_slice(desc);
        data.resize(data.len().div_ceil(4) * 4, 0);
    };
    note(b"Linux\0", 6, b"6.1\0");
    note(b"Xen\0", 18, &pvh_entry.to_le_bytes());
    Segment {
        p_type: PT_NOTE,
        paddr: 0,
        data,
        memsz: 0,
    }
}

fn two_segment_kernel(notes: Option<Segment>) -> Vec<u8> {
    let text: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let data: Vec<u8> = (0..300u32).map(|i| (i ^ 0x5a) as u8).collect();
    let mut segments = vec![
        load(0x10_0000, &text, 0x2000),
        load(0x20_0000, &data, 0x8000),
    ];
    segments.extend(notes);
    crafted_elf(EM_X86_64, 0x10_0040, &segments)
}

fn plan_error(image: &[u8], name: &str) -> (String, String) {
    let file = TempFile::new(name, image);
    let err = plan_kernel(&file.0, KernelFormat::Elf).unwrap_err();
    (err.to_string(), file.0.display().to_string())
}

#[test]
fn an_elf_for_another_machine_is_named_in_one_line() {
    let image = crafted_elf(EM_AARCH64, 0x10_0000, &[load(0x10_0000, &[1; 64], 64)]);
    let (message, path) = plan_error(&image, "aarch64");
    assert_eq!(
        message,
        format!("kernel {path} is an ELF for machine 183 (AArch64), not x86_64")
    );
    let image = crafted_elf(0x1234, 0x10_0000, &[load(0x10_0000, &[1; 64], 64)]);
    let (message, path) = plan_error(&image, "unknown-machine");
    assert_eq!(
        message,
        format!("kernel {path} is an ELF for machine 4660 (unknown), not x86_64")
    );
}

#[test]
fn an_elf_without_a_loadable_segment_is_refused() {
    let (message, path) = plan_error(&crafted_elf(EM_X86_64, 0x10_0000, &[]), "no-segments");
    assert_eq!(message, format!("kernel {path} has no loadable segment"));
    // Notes and empty PT_LOADs load nothing either.
    let image = crafted_elf(
        EM_X86_64,
        0x10_0000,
        &[pvh_notes(0x10_0000), load(0x10_0000, &[], 0x1000)],
    );
    let (message, path) = plan_error(&image, "notes-only");
    assert_eq!(message, format!("kernel {path} has no loadable segment"));
}

#[test]
fn linux_loader_checks_keep_their_messages() {
    let mut image = two_segment_kernel(None);
    image[5] = 2; // big endian
    let (message, path) = plan_error(&image, "big-endian");
    assert_eq!(
        message,
        format!(
            "cannot load kernel {path}: Kernel Loader: failed to load ELF kernel image: Kernel Loader: Trying to load big-endian binary on little-endian machine"
        )
    );
    let image = crafted_elf(EM_X86_64, 0xf_f000, &[load(0x10_0000, &[1; 8], 8)]);
    let (message, path) = plan_error(&image, "low-entry");
    assert_eq!(
        message,
        format!("cannot load kernel {path}: Kernel Loader: failed to load ELF kernel image: Kernel Loader: Invalid entry address")
    );
}

/// The plan, applied by `Plain`, leaves guest memory as linux-loader's `Elf::load` does, with
/// the same entry and end.
fn assert_same_as_linux_loader(image: &[u8], name: &str) {
    let file = TempFile::new(name, image);
    let kernel = plan_kernel(&file.0, KernelFormat::Elf).unwrap();
    let ours = test_memory(8);
    let plan = BootPlan {
        pieces: kernel.pieces,
        entry: kernel.entry,
    };
    Plain.apply(&plan, &ours).unwrap();

    let theirs = test_memory(8);
    let mut f = std::fs::File::open(&file.0).unwrap();
    let result = Elf::load(&theirs, None, &mut f, Some(GuestAddress(HIMEM_START))).unwrap();
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr.0),
        _ => EntryPoint::Linux64(result.kernel_load.0),
    };
    assert_eq!(plan.entry, entry);
    assert_eq!(kernel.end, result.kernel_end);
    let mut a = vec![0u8; 8 << 20];
    let mut b = vec![0u8; 8 << 20];
    ours.read_slice(&mut a, GuestAddress(0)).unwrap();
    theirs.read_slice(&mut b, GuestAddress(0)).unwrap();
    assert!(a == b, "guest memory differs from linux-loader's");
}

#[test]
fn elf_plan_matches_linux_loader() {
    assert_same_as_linux_loader(&two_segment_kernel(None), "elf-match");
}

#[test]
fn pvh_elf_plan_matches_linux_loader() {
    let image = two_segment_kernel(Some(pvh_notes(0x10_0010)));
    assert_same_as_linux_loader(&image, "pvh-match");
    let file = TempFile::new("pvh-entry", &image);
    let kernel = plan_kernel(&file.0, KernelFormat::Elf).unwrap();
    assert_eq!(kernel.entry, EntryPoint::Pvh(0x10_0010));
    assert_eq!(kernel.end, 0x20_8000);
    let info = inspect_kernel(&file.0).unwrap();
    assert_eq!(
        info,
        KernelInfo {
            format: KernelFormat::Elf,
            is_linux: true
        }
    );
}

#[test]
fn a_segment_outside_guest_memory_fails_with_the_old_message() {
    let image = crafted_elf(EM_X86_64, 0x10_0000, &[load(0x4000_0000, &[1; 64], 64)]);
    let file = TempFile::new("outside", &image);
    let kernel = plan_kernel(&file.0, KernelFormat::Elf).unwrap();
    let plan = BootPlan {
        pieces: kernel.pieces,
        entry: kernel.entry,
    };
    let err = LoaderError::from(Plain.apply(&plan, &test_memory(8)).unwrap_err());
    assert_eq!(
        err.to_string(),
        format!(
            "cannot load kernel {}: Kernel Loader: failed to load ELF kernel image: Kernel Loader: Unable to read kernel image",
            file.0.display()
        )
    );
}

#[test]
fn the_whole_plan_records_what_plain_writes() {
    let kernel = TempFile::new("whole-kernel", &two_segment_kernel(None));
    let initrd = TempFile::new("whole-initrd", &[0xab; 10_000]);
    let boot = BootSource {
        kernel_image_path: kernel.0.clone(),
        initrd_path: Some(initrd.0.clone()),
        boot_args: "console=ttyS0 reboot=k".into(),
        initrd_append: Vec::new(),
    };
    let machine = MachineConfig {
        vcpu_count: 2,
        mem_size_mib: 16,
    };
    let info = inspect_kernel(&kernel.0).unwrap();
    let plan = plan(&info, &boot, &machine).unwrap();
    let kinds: Vec<PieceKind> = plan.pieces.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            PieceKind::Kernel(KernelFormat::Elf),
            PieceKind::Kernel(KernelFormat::Elf),
            PieceKind::Initrd,
            PieceKind::Cmdline,
            PieceKind::MpTable,
            PieceKind::ZeroPage,
            PieceKind::Gdt,
            PieceKind::Idt,
            PieceKind::PageTables,
            PieceKind::PageTables,
            PieceKind::PageTables,
        ]
    );
    let initrd_piece = &plan.pieces[2];
    assert_eq!(initrd_piece.addr, (16 << 20) - 0x3000);
    assert_eq!(initrd_piece.len(), 10_000);

    let mem = test_memory(16);
    Plain.apply(&plan, &mem).unwrap();
    let mut recording = Recording::default();
    recording.apply(&plan, &mem).unwrap();
    assert_eq!(recording.records.len(), plan.pieces.len());
    for record in &recording.records {
        let mut back = vec![0u8; record.bytes.len()];
        mem.read_slice(&mut back, GuestAddress(record.addr))
            .unwrap();
        assert!(
            back == record.bytes,
            "{:?} at {:#x}",
            record.kind,
            record.addr
        );
    }
}

#[test]
fn initrd_goes_to_the_top_page_aligned() {
    assert_eq!(
        initrd_address(0x1800, 0x20_0000, 0x800_0000),
        Some(0x7ff_e000)
    );
    assert_eq!(
        initrd_address(0x1000, 0x20_0000, 0x800_0000),
        Some(0x7ff_f000)
    );
}

#[test]
fn initrd_that_would_overlap_the_kernel_is_refused() {
    assert_eq!(initrd_address(0x700_0000, 0x200_0000, 0x800_0000), None);
    assert_eq!(initrd_address(0x900_0000, 0, 0x800_0000), None);
    // Exactly filling the space between kernel and top is fine.
    assert_eq!(
        initrd_address(0x600_0000, 0x200_0000, 0x800_0000),
        Some(0x200_0000)
    );
}

#[test]
fn initrd_top_respects_the_mmio_gap_and_initrd_addr_max() {
    assert_eq!(initrd_top(128 << 20, None), 128 << 20);
    assert_eq!(initrd_top(8 << 30, None), MMIO_GAP_START);
    let header = setup_header {
        initrd_addr_max: 0x37ff_ffff,
        ..Default::default()
    };
    assert_eq!(initrd_top(2 << 30, Some(&header)), 0x3800_0000);
}

#[test]
fn unknown_formats_are_named() {
    let file = TempFile::new("unknown", b"not a kernel at all");
    let err = inspect_kernel(&file.0).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("is neither an ELF vmlinux nor a bzImage"),
        "{err}"
    );
    let err = inspect_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot open kernel /nonexistent/vmlinux"),
        "{err}"
    );
}

#[test]
fn cmdline_is_nul_terminated_at_its_address() {
    let mem = test_memory(8);
    let plan = BootPlan {
        pieces: vec![cmdline("console=ttyS0")],
        entry: EntryPoint::Pvh(0),
    };
    Plain.apply(&plan, &mem).unwrap();
    let mut buf = [0xffu8; 14];
    mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
        .unwrap();
    assert_eq!(&buf, b"console=ttyS0\0");
}

#[test]
fn appended_bytes_follow_the_initrd_at_its_next_4_byte_boundary() {
    let initrd = TempFile::new("appended-initrd", &[0xaa; 5]);
    let top = 8 << 20;
    let InitrdPlan { pieces, placed } =
        plan_initrd(Some(&initrd.0), b"0707", 0x20_0000, top).unwrap();
    let (addr, size) = placed.unwrap();
    assert_eq!((addr % PAGE_SIZE, size), (0, 12));
    let mem = memory::create(8, MemoryBackend::Anonymous).unwrap().memory;
    let plan = BootPlan {
        pieces,
        entry: EntryPoint::Pvh(0),
    };
    Plain.apply(&plan, &mem).unwrap();
    let mut buf = [0xffu8; 12];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    assert_eq!(&buf, b"\xaa\xaa\xaa\xaa\xaa\x00\x00\x000707");
    // The archive alone is the initrd; nothing at all is none.
    let only = plan_initrd(None, b"0707", 0x20_0000, top).unwrap();
    assert_eq!(only.placed, Some((top - PAGE_SIZE, 4)));
    let none = plan_initrd(None, b"", 0x20_0000, top).unwrap();
    assert!(none.pieces.is_empty() && none.placed.is_none());
}

/// A segment whose size claims far more than the file holds: the Recording backend refuses it
/// from the file's own length instead of allocating what the header says (a crafted size of
/// 1 TiB would abort the process).
#[test]
fn recording_refuses_a_segment_past_the_end_of_its_file() {
    let mem = test_memory(16);
    for (claimed, what) in [(1u64 << 40, "1 TiB"), (8 << 20, "8 MiB")] {
        let mut image = crafted_elf(
            EM_X86_64,
            HIMEM_START,
            &[load(HIMEM_START, &[0x90; 64], 64)],
        );
        // p_filesz of the one program header.
        let filesz_at = size_of::<Elf64_Ehdr>() + 32;
        image[filesz_at..filesz_at + 8].copy_from_slice(&claimed.to_le_bytes());
        let kernel = TempFile::new("huge-segment", &image);
        let kernel_plan = plan_kernel(&kernel.0, KernelFormat::Elf).unwrap();
        let plan = BootPlan {
            pieces: kernel_plan.pieces,
            entry: kernel_plan.entry,
        };
        let err = Recording::default().apply(&plan, &mem).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&kernel.0.display().to_string()),
            "{what}: {message}"
        );
        // 1 TiB does not fit guest memory: Plain's message. 8 MiB fits, but not the file.
        match claimed {
            c if c > 16 << 20 => assert!(matches!(err, LaunchError::Kernel { .. }), "{message}"),
            _ => assert!(matches!(err, LaunchError::Read { .. }), "{message}"),
        }
    }
}

/// A PT_NOTE segment of empty notes is read no further than MAX_NOTES notes.
#[test]
fn a_segment_of_endless_empty_notes_is_cut_short() {
    let notes = Segment {
        p_type: PT_NOTE,
        paddr: 0,
        data: vec![0; 12 * 100_000],
        memsz: 0,
    };
    let image = crafted_elf(
        EM_X86_64,
        HIMEM_START,
        &[load(HIMEM_START, &[0x90; 64], 64), notes],
    );
    let kernel = TempFile::new("endless-notes", &image);
    let plan = plan_kernel(&kernel.0, KernelFormat::Elf).unwrap();
    assert_eq!(plan.entry, EntryPoint::Linux64(HIMEM_START));
    assert!(!inspect_kernel(&kernel.0).unwrap().is_linux);
}
