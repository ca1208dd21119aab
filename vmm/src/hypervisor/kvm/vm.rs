//! A KVM VM behind the [`Vm`] seam.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use kvm_bindings::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_pit_config, kvm_userspace_memory_region,
    kvm_userspace_memory_region2, KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEM_GUEST_MEMFD,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::vcpu::KvmVcpu;
use crate::hypervisor::{MemorySlot, NotifyAddress, Result, SevCommand, Vcpu, Vm};

pub struct KvmVm {
    fd: VmFd,
}

impl KvmVm {
    pub fn new(fd: VmFd) -> Self {
        Self { fd }
    }
}

impl Vm for KvmVm {
    unsafe fn set_memory_slot(&self, slot: &MemorySlot) -> Result<()> {
        match slot.private {
            None => {
                let region = kvm_userspace_memory_region {
                    slot: slot.slot,
                    guest_phys_addr: slot.guest_addr,
                    memory_size: slot.size,
                    userspace_addr: slot.host_addr,
                    flags: 0,
                };
                // SAFETY: the caller keeps the mapping alive and unshared for the VM's life.
                unsafe { self.fd.set_user_memory_region(region) }
            }
            Some(private) => {
                let region = kvm_userspace_memory_region2 {
                    slot: slot.slot,
                    flags: KVM_MEM_GUEST_MEMFD,
                    guest_phys_addr: slot.guest_addr,
                    memory_size: slot.size,
                    userspace_addr: slot.host_addr,
                    guest_memfd_offset: private.offset,
                    guest_memfd: private.guest_memfd.as_raw_fd() as u32,
                    ..Default::default()
                };
                // SAFETY: as above; the guest_memfd is borrowed for the call, and KVM takes
                // its own reference to it.
                unsafe { self.fd.set_user_memory_region2(region) }
            }
        }
    }

    fn set_tss_address(&self, address: u64) -> Result<()> {
        self.fd.set_tss_address(address as usize)
    }

    fn create_irq_chip(&self) -> Result<()> {
        self.fd.create_irq_chip()
    }

    fn create_pit(&self) -> Result<()> {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit)
    }

    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd.register_irqfd(evt, gsi)
    }

    fn register_notifier(
        &self,
        evt: &EventFd,
        address: NotifyAddress,
        datamatch: u32,
    ) -> Result<()> {
        let address = match address {
            NotifyAddress::Pio(port) => IoEventAddress::Pio(port),
            NotifyAddress::Mmio(addr) => IoEventAddress::Mmio(addr),
        };
        self.fd.register_ioevent(evt, &address, datamatch)
    }

    fn descriptor(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn create_vcpu(&self, index: u8) -> Result<Box<dyn Vcpu>> {
        Ok(Box::new(KvmVcpu::new(
            self.fd.create_vcpu(u64::from(index))?,
        )))
    }

    fn create_guest_memfd(&self, size: u64) -> Result<File> {
        let fd = self.fd.create_guest_memfd(kvm_create_guest_memfd {
            size,
            ..Default::default()
        })?;
        // SAFETY: KVM just returned this descriptor; nothing else owns it.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn set_memory_private(&self, guest_addr: u64, size: u64, private: bool) -> Result<()> {
        self.fd.set_memory_attributes(kvm_memory_attributes {
            address: guest_addr,
            size,
            attributes: if private {
                u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE)
            } else {
                0
            },
            flags: 0,
        })
    }

    fn sev_command(&self, command: &mut SevCommand) -> Result<()> {
        self.fd.encrypt_op_sev(command)
    }
}
