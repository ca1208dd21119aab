//! KVM: the hypervisor behind the seam. Opening `/dev/kvm` checks that it can run a Tessera
//! guest; every failure becomes a one-line error that tells the user what to do about it.

mod vcpu;
mod vm;

use std::path::Path;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};

use super::{CpuId, Hypervisor, Result, Vm, VmType};

pub const KVM_PATH: &str = "/dev/kvm";
/// The stable KVM API version; every kernel since 2.6.22 reports it.
const KVM_API_VERSION: i32 = 12;
/// Present when `/dev/kvm` is served by the PVM software hypervisor.
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// What the VMM relies on, with the reason shown when it is missing.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (
        Cap::Irqchip,
        "KVM_CAP_IRQCHIP (in-kernel interrupt controller)",
    ),
    (
        Cap::Irqfd,
        "KVM_CAP_IRQFD (device interrupts through eventfds)",
    ),
    (
        Cap::Ioeventfd,
        "KVM_CAP_IOEVENTFD (device notifications through eventfds)",
    ),
    (
        Cap::UserMemory,
        "KVM_CAP_USER_MEMORY (guest memory from the VMM)",
    ),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2 (in-kernel timer)"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID (CPUID configuration)"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum KvmError {
    /// {path} does not exist: load the kvm_intel or kvm_amd module (`modprobe kvm_intel`) or enable virtualization in the firmware
    NotFound { path: String },
    /// no permission to open {path}: add your user to the group that owns it (`sudo usermod -aG kvm $USER`, then log in again) or grant access with `setfacl -m u:$USER:rw {path}`
    PermissionDenied { path: String },
    /// cannot open {path}: {source}
    Open {
        path: String,
        source: kvm_ioctls::Error,
    },
    /// {path} is not a KVM device
    NotKvm { path: String },
    /// KVM API version {found} is not the supported version 12: the host kernel is too old or unusual
    ApiVersion { found: i32 },
    /// the host KVM lacks {cap}: the host kernel is too old
    MissingCap { cap: &'static str },
    /// /dev/kvm is served by kvm_pvm (a software hypervisor) which cannot boot an unmodified Linux kernel: boot it on a host with hardware KVM (kvm_intel/kvm_amd), e.g. the nested test host
    PvmCannotBootLinux,
}

/// CPUID leaf 1 ECX: the LAPIC timer's TSC-deadline mode.
const ECX_TSC_DEADLINE_TIMER: u32 = 1 << 24;

/// `/dev/kvm`, checked.
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl Hypervisor for KvmHypervisor {
    fn create_vm(&self, vm_type: VmType) -> Result<Box<dyn Vm>> {
        let fd = match vm_type {
            VmType::Plain => self.kvm.create_vm()?,
            VmType::SevSnp => self
                .kvm
                .create_vm_with_type(u64::from(kvm_bindings::KVM_X86_SNP_VM))?,
            VmType::Tdx => self
                .kvm
                .create_vm_with_type(u64::from(kvm_bindings::KVM_X86_TDX_VM))?,
        };
        Ok(Box::new(vm::KvmVm::new(fd)))
    }

    fn supported_cpuid(&self) -> Result<CpuId> {
        let mut cpuid = self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
        // KVM never reports the TSC deadline timer (leaf 1 ECX bit 24) in this list: it needs the
        // in-kernel LAPIC, which every Tessera VM has, and is announced by a capability instead.
        // Without it Linux calibrates its LAPIC timer against the PIT (~100 ms of PIT ticks).
        if self.kvm.check_extension(Cap::TscDeadlineTimer) {
            for entry in cpuid.as_mut_slice() {
                if entry.function == 1 {
                    entry.ecx |= ECX_TSC_DEADLINE_TIMER;
                }
            }
        }
        Ok(cpuid)
    }
}

/// Opens `/dev/kvm` and checks the API version and the capabilities Tessera needs.
pub fn open() -> std::result::Result<KvmHypervisor, KvmError> {
    open_path(Path::new(KVM_PATH)).map(|kvm| KvmHypervisor { kvm })
}

fn open_path(path: &Path) -> std::result::Result<Kvm, KvmError> {
    let shown = path.display().to_string();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        KvmError::NotFound {
            path: shown.clone(),
        }
    })?;
    let kvm = Kvm::new_with_path(c_path).map_err(|source| match source.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmError::NotFound {
            path: shown.clone(),
        },
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied {
            path: shown.clone(),
        },
        _ => KvmError::Open {
            path: shown.clone(),
            source,
        },
    })?;
    let found = kvm.get_api_version();
    if found < 0 {
        return Err(KvmError::NotKvm { path: shown });
    }
    if found != KVM_API_VERSION {
        return Err(KvmError::ApiVersion { found });
    }
    for &(cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap { cap: name });
        }
    }
    Ok(kvm)
}

/// Whether `/dev/kvm` on this host is the PVM software hypervisor.
pub fn is_pvm_host() -> bool {
    Path::new(PVM_MODULE).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_says_how_to_get_one() {
        let err = open_path(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(err, KvmError::NotFound { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("/nonexistent/kvm does not exist"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn a_file_that_is_not_kvm_is_an_open_error() {
        // /dev/null opens but is not KVM: KVM_GET_API_VERSION fails on it.
        let err = open_path(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, KvmError::NotKvm { .. }), "{err:?}");
    }
}
