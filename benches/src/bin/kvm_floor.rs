//! The bare-KVM floor: create a VM, one 128 MiB memslot and one vCPU, run to the first exit.
//!
//! The guest is two real-mode instructions at 0x1000 that write the boot-done port, the same
//! first instruction Tessera's `reset64` guest runs. Prints `first_exit_monotonic_us=N` on the
//! first exit (and `main_monotonic_us=N`, when its `main` began: the VM's creation and first
//! instruction without the process's own start). Nothing else a VMM needs (IRQ chip, CPUID, boot structures) is done, so the
//! spawn -> first exit time of this process is the floor any KVM VMM pays on this host.
//! `--irqchip` also creates the in-kernel IRQ chip and PIT after the memslot, as a VMM does:
//! the floor of a whole launch, teardown included, for the creation-rate figures.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

const MEM_SIZE: usize = 128 << 20;
const CODE_ADDR: usize = 0x1000;
/// mov $0x3f0, %dx; mov $1, %al; out %al, %dx; hlt
const CODE: [u8; 7] = [0xba, 0xf0, 0x03, 0xb0, 0x01, 0xee, 0xf4];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let main_started = benches::monotonic_us();
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let mem = mem.cast::<u8>();
    // SAFETY: CODE fits well inside the mapping at CODE_ADDR.
    unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.add(CODE_ADDR), CODE.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the mapping lives until the process exits.
    unsafe { vm.set_user_memory_region(region)? };
    if std::env::args().any(|a| a == "--irqchip") {
        vm.create_irq_chip()?;
        vm.create_pit2(kvm_bindings::kvm_pit_config::default())?;
    }
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE_ADDR as u64;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;
    match vcpu.run()? {
        VcpuExit::IoOut(0x3f0, _) => {
            println!("first_exit_monotonic_us={}", benches::monotonic_us());
            println!("main_monotonic_us={main_started}");
            Ok(())
        }
        other => Err(format!("unexpected first exit {other:?}").into()),
    }
}
