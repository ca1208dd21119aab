//! Per-vCPU CPUID, derived from what KVM supports on this host.
//!
//! KVM's supported list describes the host; each vCPU gets that list with its own APIC ID and a
//! topology of `count` single-threaded cores in one package, and the hypervisor bit set. Two
//! things KVM's list can lack are added: the host's brand string (leaves 0x80000002-4, which
//! some hosts' KVM leaves empty: the guest then shows "model name: 17/01"), and the hypervisor
//! timing leaf 0x40000010 (TSC and LAPIC timer frequencies in kHz, as QEMU and Cloud Hypervisor
//! give it), so that a guest need not measure them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_EXT_MAX: u32 = 0x8000_0000;
const LEAF_BRAND: [u32; 3] = [0x8000_0002, 0x8000_0003, 0x8000_0004];
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_TIMING: u32 = 0x4000_0010;
/// KVM's in-kernel LAPIC timer counts at 1 GHz (one bus cycle per nanosecond).
const LAPIC_TIMER_KHZ: u32 = 1_000_000;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX of leaf 0x40000000.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

// Leaf 1 bits.
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const EBX_APIC_ID_SHIFT: u32 = 24;
const EBX_LOGICAL_COUNT_SHIFT: u32 = 16;
const EBX_CLFLUSH_SHIFT: u32 = 8;
/// CLFLUSH line size in 8-byte units: 64 bytes.
const CLFLUSH_LINE_8B: u32 = 8;

// Leaf 0xb / 0x1f level types (ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to hold APIC IDs 0..count-1.
fn apic_id_bits(count: u8) -> u32 {
    u32::from(count.max(1) - 1)
        .checked_ilog2()
        .map_or(0, |b| b + 1)
}

/// KVM's supported list with the host's brand string where KVM gave none. Runs the CPUID
/// instruction three times: once per machine, not per vCPU (on a nested host each one traps).
pub fn with_host_brand(mut supported: CpuId) -> CpuId {
    let max_ext = std::arch::x86_64::__cpuid(LEAF_EXT_MAX).eax;
    if max_ext < LEAF_BRAND[2] {
        return supported;
    }
    let has_brand = supported
        .as_slice()
        .iter()
        .any(|e| LEAF_BRAND.contains(&e.function) && (e.eax | e.ebx | e.ecx | e.edx) != 0);
    if has_brand {
        return supported;
    }
    for function in LEAF_BRAND {
        let host = std::arch::x86_64::__cpuid(function);
        set_leaf(
            &mut supported,
            function,
            [host.eax, host.ebx, host.ecx, host.edx],
        );
    }
    for entry in supported.as_mut_slice() {
        if entry.function == LEAF_EXT_MAX {
            entry.eax = entry.eax.max(LEAF_BRAND[2]);
        }
    }
    supported
}

/// Sets leaf `function` (subleaf 0) to `regs`, adding it when missing; a full table stays as
/// it is (KVM's own limit on entries).
fn set_leaf(cpuid: &mut CpuId, function: u32, [eax, ebx, ecx, edx]: [u32; 4]) {
    if let Some(entry) = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == function && e.index == 0)
    {
        (entry.eax, entry.ebx, entry.ecx, entry.edx) = (eax, ebx, ecx, edx);
        return;
    }
    let entry = kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    if cpuid.push(entry).is_err() {
        log::debug!("CPUID: no room for leaf {function:#x}");
    }
}

/// The CPUID table for vCPU `index` of `count`, from KVM's supported list (after
/// [`with_host_brand`]); with the vCPU's TSC frequency, the timing leaf too.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, count: u8, tsc_khz: Option<u32>) -> CpuId {
    let mut cpuid = supported.clone();
    let is_kvm = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_HYPERVISOR && [e.ebx, e.ecx, e.edx] == KVM_SIGNATURE);
    if let (Some(khz), true) = (tsc_khz, is_kvm) {
        set_leaf(&mut cpuid, LEAF_TIMING, [khz, LAPIC_TIMER_KHZ, 0, 0]);
        for entry in cpuid.as_mut_slice() {
            if entry.function == LEAF_HYPERVISOR {
                entry.eax = entry.eax.max(LEAF_TIMING);
            }
        }
    }
    let apic_id = u32::from(index);
    let count32 = u32::from(count);
    let core_bits = apic_id_bits(count);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (apic_id << EBX_APIC_ID_SHIFT)
                    | (count32 << EBX_LOGICAL_COUNT_SHIFT)
                    | (CLFLUSH_LINE_8B << EBX_CLFLUSH_SHIFT);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1. EAX[25:14]: logical CPUs sharing this cache
                // - 1: L1/L2 are per core, L3 is shared by the package.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | ((count32 - 1) << 26) | (sharing << 14);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                set_ext_topology(entry, apic_id, count32, core_bits)
            }
            LEAF_AMD_SIZES => {
                // ECX[15:12]: APIC ID bits for cores; ECX[7:0]: cores - 1.
                entry.ecx = (core_bits << 12) | (count32 - 1);
            }
            LEAF_AMD_EXT_APIC_ID => {
                entry.eax = apic_id;
                // EBX[15:8]: threads per core - 1 (0); EBX[7:0]: core ID.
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
            }
            _ => {}
        }
    }
    cpuid
}

/// Leaves 0xb and 0x1f: subleaf 0 is the SMT level (one thread per core), subleaf 1 the core
/// level (`count` cores), later subleaves are invalid. EDX is the x2APIC ID everywhere.
fn set_ext_topology(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_bits: u32) {
    let subleaf = entry.index;
    (entry.eax, entry.ebx, entry.ecx) = match subleaf {
        0 => (0, 1, (LEVEL_SMT << 8) | subleaf),
        1 => (core_bits, count, (LEVEL_CORE << 8) | subleaf),
        _ => (0, 0, subleaf),
    };
    entry.edx = apic_id;
}

/// Whether the host CPU is AMD (or Hygon), from the vendor string in leaf 0.
pub fn is_amd(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .is_some_and(|e| {
            let vendor = [e.ebx, e.edx, e.ecx];
            vendor == [0x6874_7541, 0x6974_6e65, 0x444d_4163] // "AuthenticAMD"
                || vendor == [0x6f67_7948, 0x6e65_476e, 0x656e_6975] // "HygonGenuine"
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn host() -> CpuId {
        let mut cache_l1 = leaf(LEAF_CACHE_PARAMS, 0);
        cache_l1.eax = 1 << 5 | 1; // level 1 data cache
        let mut cache_l3 = leaf(LEAF_CACHE_PARAMS, 3);
        cache_l3.eax = 3 << 5 | 3; // level 3 unified cache
        CpuId::from_entries(&[
            leaf(LEAF_VENDOR, 0),
            leaf(LEAF_FEATURES, 0),
            cache_l1,
            cache_l3,
            leaf(LEAF_EXT_TOPOLOGY, 0),
            leaf(LEAF_EXT_TOPOLOGY, 1),
            leaf(LEAF_EXT_TOPOLOGY, 2),
            leaf(LEAF_AMD_SIZES, 0),
            leaf(LEAF_AMD_EXT_APIC_ID, 0),
            leaf(0x4000_0000, 0),
        ])
        .unwrap()
    }

    fn get(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_id_bits_cover_the_count() {
        assert_eq!(apic_id_bits(1), 0);
        assert_eq!(apic_id_bits(2), 1);
        assert_eq!(apic_id_bits(3), 2);
        assert_eq!(apic_id_bits(4), 2);
        assert_eq!(apic_id_bits(5), 3);
        assert_eq!(apic_id_bits(32), 5);
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_package_size() {
        let host = host();
        for index in 0..4u8 {
            let c = vcpu_cpuid(&host, index, 4, None);
            let l1 = get(&c, LEAF_FEATURES, 0);
            assert_eq!(l1.ebx >> 24, u32::from(index));
            assert_eq!((l1.ebx >> 16) & 0xff, 4);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & EDX_HTT, 0);
            assert_eq!(get(&c, LEAF_EXT_TOPOLOGY, 1).edx, u32::from(index));
            assert_eq!(get(&c, LEAF_AMD_EXT_APIC_ID, 0).eax, u32::from(index));
        }
    }

    #[test]
    fn extended_topology_describes_single_threaded_cores() {
        let c = vcpu_cpuid(&host(), 2, 6, None);
        let smt = get(&c, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, LEVEL_SMT << 8));
        let core = get(&c, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.ecx), (3, 6, LEVEL_CORE << 8 | 1));
        let end = get(&c, LEAF_EXT_TOPOLOGY, 2);
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
        assert_eq!(get(&c, LEAF_AMD_SIZES, 0).ecx, (3 << 12) | 5);
    }

    #[test]
    fn cache_leaf_reports_cores_and_sharing() {
        let c = vcpu_cpuid(&host(), 0, 4, None);
        let l1 = get(&c, LEAF_CACHE_PARAMS, 0);
        assert_eq!(l1.eax >> 26, 3);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        let l3 = get(&c, LEAF_CACHE_PARAMS, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
    }

    #[test]
    fn single_vcpu_has_no_htt_and_other_leaves_pass_through() {
        let host = host();
        let c = vcpu_cpuid(&host, 0, 1, None);
        assert_eq!(get(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(get(&c, 0x4000_0000, 0), get(&host, 0x4000_0000, 0));
    }

    fn kvm_host() -> CpuId {
        let mut cpuid = host();
        for entry in cpuid.as_mut_slice() {
            if entry.function == LEAF_HYPERVISOR {
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (
                    0x4000_0001,
                    KVM_SIGNATURE[0],
                    KVM_SIGNATURE[1],
                    KVM_SIGNATURE[2],
                );
            }
        }
        cpuid
    }

    #[test]
    fn the_timing_leaf_gives_the_tsc_and_lapic_timer_frequencies_under_kvm() {
        let c = vcpu_cpuid(&kvm_host(), 0, 1, Some(2_596_134));
        let timing = get(&c, LEAF_TIMING, 0);
        assert_eq!((timing.eax, timing.ebx), (2_596_134, 1_000_000));
        assert_eq!(get(&c, LEAF_HYPERVISOR, 0).eax, LEAF_TIMING);
        // Without a known frequency, or under a hypervisor that is not KVM: no timing leaf.
        let none = vcpu_cpuid(&kvm_host(), 0, 1, None);
        assert!(!none.as_slice().iter().any(|e| e.function == LEAF_TIMING));
        let other = vcpu_cpuid(&host(), 0, 1, Some(2_596_134));
        assert!(!other.as_slice().iter().any(|e| e.function == LEAF_TIMING));
    }

    #[test]
    fn a_missing_brand_string_is_the_host_cpus() {
        let max_ext = std::arch::x86_64::__cpuid(LEAF_EXT_MAX).eax;
        let mut table = host();
        set_leaf(&mut table, LEAF_EXT_MAX, [0x8000_0001, 0, 0, 0]);
        let c = with_host_brand(table);
        if max_ext < LEAF_BRAND[2] {
            assert!(!c.as_slice().iter().any(|e| e.function == LEAF_BRAND[0]));
            return;
        }
        let brand: Vec<u8> = LEAF_BRAND
            .iter()
            .flat_map(|&f| {
                let e = get(&c, f, 0);
                [e.eax, e.ebx, e.ecx, e.edx]
            })
            .flat_map(u32::to_le_bytes)
            .collect();
        let host_brand: Vec<u8> = LEAF_BRAND
            .iter()
            .map(|&f| std::arch::x86_64::__cpuid(f))
            .flat_map(|r| [r.eax, r.ebx, r.ecx, r.edx])
            .flat_map(u32::to_le_bytes)
            .collect();
        assert_eq!(brand, host_brand);
        assert!(get(&c, LEAF_EXT_MAX, 0).eax >= LEAF_BRAND[2]);
        // A brand KVM gave is kept.
        let mut given = host();
        set_leaf(&mut given, LEAF_BRAND[0], [0x6f6f_6f6f, 0, 0, 0]);
        assert_eq!(
            get(&with_host_brand(given), LEAF_BRAND[0], 0).eax,
            0x6f6f_6f6f
        );
    }
}
