//! Debian's stock vmlinuz (a bzImage) through the loader: header parsed, kernel placed, entry
//! set. A real boot needs hardware KVM (the nested test host, next issue); on a PVM host the CLI
//! must refuse it with the documented one-line error.

use std::time::Duration;

use vmm::boot::{self, BootPlan, KernelFormat, LaunchBackend, Plain};
use vmm::x86_64::layout::HIMEM_START;
use vmm::x86_64::regs::EntryPoint;

fn vmlinuz_or_skip(test: &str) -> Option<std::path::PathBuf> {
    let found = tests::debian_vmlinuz();
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: no Debian vmlinuz (run scripts/debian-kernel or set TESSERA_DEBIAN_VMLINUZ)"
        );
    }
    found
}

#[test]
fn debian_bzimage_is_parsed_placed_and_given_a_64_bit_entry() {
    let Some(path) = vmlinuz_or_skip("debian_bzimage_is_parsed_placed_and_given_a_64_bit_entry")
    else {
        return;
    };
    let info = boot::inspect_kernel(&path).unwrap();
    assert_eq!(info.format, KernelFormat::BzImage);
    assert!(info.is_linux);

    let mem = vmm::memory::create(256, vmm::memory::MemoryBackend::Anonymous)
        .unwrap()
        .memory;
    let kernel = boot::plan_kernel(&path, info.format).unwrap();
    let plan = BootPlan {
        pieces: kernel.pieces.clone(),
        entry: kernel.entry,
    };
    Plain.apply(&plan, &mem).unwrap();
    let header = kernel.setup_header.expect("a bzImage has a setup header");
    assert!(header.version >= 0x20c, "boot protocol {:#x}", {
        header.version
    });
    assert_eq!({ header.header }, 0x5372_6448, "HdrS magic");
    assert_eq!(kernel.entry, EntryPoint::Linux64(HIMEM_START + 0x200));
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert!(
        kernel.end > HIMEM_START && kernel.end < HIMEM_START + file_len,
        "end {:#x}",
        kernel.end
    );

    // The protected-mode kernel now sits at 1 MiB: its first bytes match the file after the
    // setup sectors.
    let setup_len = (u64::from(header.setup_sects.max(4)) + 1) * 512;
    let mut expected = [0u8; 64];
    let mut file = std::fs::File::open(&path).unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(setup_len)).unwrap();
    std::io::Read::read_exact(&mut file, &mut expected).unwrap();
    let mut loaded = [0u8; 64];
    vm_memory::Bytes::read_slice(&mem, &mut loaded, vm_memory::GuestAddress(HIMEM_START)).unwrap();
    assert_eq!(loaded, expected);

    // An initrd goes below the kernel's initrd_addr_max and above the kernel.
    let top = boot::initrd_top(256 << 20, Some(&header));
    let addr = boot::initrd_address(16 << 20, kernel.end, top).unwrap();
    assert!(addr >= kernel.end && addr + (16 << 20) <= top && addr.is_multiple_of(4096));
}

#[test]
fn pvm_host_refuses_to_boot_linux_with_a_one_line_error() {
    let Some(path) = vmlinuz_or_skip("pvm_host_refuses_to_boot_linux_with_a_one_line_error") else {
        return;
    };
    if !vmm::hypervisor::kvm::is_pvm_host() {
        eprintln!("SKIPPED pvm_host_refuses_to_boot_linux_with_a_one_line_error: /dev/kvm here is not kvm_pvm");
        return;
    }
    if tests::skip_without_kvm("pvm_host_refuses_to_boot_linux_with_a_one_line_error") {
        return;
    }
    let out = tests::Run::new(&path).output(Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with("tessera: error: /dev/kvm is served by kvm_pvm"),
        "{out}"
    );
}
