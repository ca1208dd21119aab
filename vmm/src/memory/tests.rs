use std::os::fd::AsRawFd;

use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

use super::*;

#[test]
fn small_guests_get_one_low_region() {
    assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
}

#[test]
fn large_guests_skip_the_mmio_gap() {
    let ranges = ram_ranges(4 << 30);
    assert_eq!(
        ranges,
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (1 << 30) as usize)
        ]
    );
    let total: usize = ranges.iter().map(|r| r.1).sum();
    assert_eq!(total, 4 << 30);
}

#[test]
fn created_memory_has_the_requested_size() {
    for backend in [MemoryBackend::Anonymous, MemoryBackend::Memfd] {
        let ram = create(16, backend).unwrap();
        let total: u64 = ram.memory.iter().map(|r| r.len()).sum();
        assert_eq!(total, 16 << 20, "{backend:?}");
    }
}

/// Maps `len` bytes of `file` from `offset` again, shared, and copies them out.
fn map_again(file: &File, offset: u64, len: usize) -> Vec<u8> {
    // SAFETY: a fresh shared read-only mapping of a live fd; the kernel picks the address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
    // SAFETY: the mapping is `len` readable bytes and stays mapped until the munmap below.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec();
    // SAFETY: unmaps exactly the mapping made above, which nothing else refers to.
    unsafe { libc::munmap(ptr, len) };
    bytes
}

#[test]
fn memfd_memory_reads_back_and_its_fd_maps_the_same_bytes() {
    let ram = create(8, MemoryBackend::Memfd).unwrap();
    assert_eq!(ram.backend(), MemoryBackend::Memfd);
    let pattern: Vec<u8> = (0..=255u8).cycle().take(8192).collect();
    let at = GuestAddress(0x10_0000);
    ram.memory.write_slice(&pattern, at).unwrap();
    let mut back = vec![0u8; pattern.len()];
    ram.memory.read_slice(&mut back, at).unwrap();
    assert_eq!(back, pattern);

    // Another mapping of the same fd (as a snapshot writer or a second process would make)
    // sees the guest's bytes, and a write through it reaches the guest.
    let memfd = ram.memfd().expect("a memfd backend has a memfd");
    assert_eq!(memfd.metadata().unwrap().len(), 8 << 20);
    assert_eq!(map_again(memfd, 0x10_0000, pattern.len()), pattern);
    std::os::unix::fs::FileExt::write_all_at(memfd, b"shared", 0x20_0000).unwrap();
    let mut word = [0u8; 6];
    ram.memory
        .read_slice(&mut word, GuestAddress(0x20_0000))
        .unwrap();
    assert_eq!(&word, b"shared");
}

#[test]
fn memfd_regions_sit_at_increasing_offsets_of_one_file() {
    // Virtual size only: MAP_NORESERVE and a sparse memfd, nothing is touched.
    let ram = create(4 << 10, MemoryBackend::Memfd).unwrap();
    let offsets: Vec<u64> = ram
        .memory
        .iter()
        .map(|r| r.file_offset().unwrap().start())
        .collect();
    assert_eq!(offsets, vec![0, MMIO_GAP_START]);
    assert!(create(4 << 10, MemoryBackend::Anonymous)
        .unwrap()
        .memfd()
        .is_none());
}

#[test]
fn guest_memfd_memory_or_a_clear_refusal() {
    const TEST: &str = "guest_memfd_memory_or_a_clear_refusal";
    let kvm = match crate::hypervisor::kvm::open() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("SKIPPED {TEST}: no KVM here ({e})");
            return;
        }
    };
    let vm = crate::hypervisor::Hypervisor::create_vm(&kvm, hypervisor::VmType::Plain).unwrap();
    let mut ram = create(16, MemoryBackend::GuestMemfd).unwrap();
    assert!(ram.memfd().is_some());
    // SAFETY: `ram` is declared after `vm`, so it is dropped after it.
    match unsafe { ram.register_slots(vm.as_ref()) } {
        Ok(()) => {
            assert_eq!(ram.guest_memfds().len(), 1);
            ram.memory.write_slice(b"shared", GuestAddress(0)).unwrap();
            eprintln!(
                "{TEST}: this host's KVM made a guest_memfd per region and took the private slots (pvm: {})",
                crate::hypervisor::kvm::is_pvm_host()
            );
        }
        Err(e @ MemoryError::NoGuestMemfd { .. }) => {
            let message = e.to_string();
            assert!(
                message.starts_with("the host's KVM has no guest_memfd"),
                "{message}"
            );
            let MemoryError::NoGuestMemfd { source, .. } = &e else {
                unreachable!()
            };
            eprintln!("SKIPPED {TEST}: errno {}: {message}", source.errno());
        }
        Err(e) => panic!("guest_memfd refused without saying why clearly: {e}"),
    }
}

#[test]
fn a_kvm_without_guest_memfd_is_named_as_such() {
    for errno in [libc::ENOTTY, libc::ENOTSUP, libc::EINVAL] {
        let e = backend::guest_memfd_error(16 << 20, hypervisor::Error::new(errno));
        assert!(
            e.to_string()
                .starts_with("the host's KVM has no guest_memfd (KVM_CREATE_GUEST_MEMFD: "),
            "{e}"
        );
    }
    let e = backend::guest_memfd_error(16 << 20, hypervisor::Error::new(libc::ENOMEM));
    assert!(
        e.to_string()
            .starts_with("cannot create a guest_memfd of 16777216 bytes: "),
        "{e}"
    );
    let e = backend::private_slot_error(hypervisor::Error::new(libc::EINVAL));
    assert!(e.to_string().contains("KVM_SET_USER_MEMORY_REGION2"), "{e}");
}
