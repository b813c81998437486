//! The CPUID the guest sees: what KVM supports, with each vCPU's identity and topology.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
/// CPUID.1:EDX.HTT: EBX[23:16] holds a valid logical processor count.
const EDX_HTT: u32 = 1 << 28;
/// CPUID.1:ECX.HYPERVISOR: tells the kernel to look for KVM's paravirt leaves.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX.TSC-Deadline: KVM emulates the LAPIC timer's TSC-deadline mode, but
/// reports it through KVM_CAP_TSC_DEADLINE_TIMER rather than the supported CPUID.
/// With it the guest skips calibrating the LAPIC timer against the PIT: a slow step
/// of every boot, and one that fails outright on slow (nested) hosts.
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Intel architectural performance monitoring.
const LEAF_ARCH_PERFMON: u32 = 0xa;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
/// AMD PerfMonV2.
const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;
/// CPUID.80000001h:ECX: PerfCtrExtCore, PerfCtrExtNB, PerfCtrExtLLC.
const ECX_AMD_PERF_COUNTERS: u32 = (1 << 23) | (1 << 24) | (1 << 28);

/// Adjusts the supported CPUID for vCPU `id` of `count`: one package of `count`
/// single-threaded cores, APIC id equal to the vCPU index, the TSC-deadline timer when
/// KVM has it, and no performance monitoring unit. A microVM has no use for guest PMU access (it would measure the host's other
/// tenants), and hiding it keeps the guest's PMU probe away from counter MSRs that
/// some KVM hosts (nested ones among them) do not handle.
pub fn patch_for_vcpu(cpuid: &mut CpuId, id: u8, count: u8, tsc_deadline: bool) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
                // Level 0: SMT (1 thread a core); level 1: core (count cores).
                entry.edx = u32::from(id);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 0x100;
                    }
                    1 => {
                        entry.eax = u32::from(count).next_power_of_two().trailing_zeros();
                        entry.ebx = u32::from(count);
                        entry.ecx = 0x200 | 1;
                    }
                    n => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = n;
                    }
                }
            }
            LEAF_ARCH_PERFMON | LEAF_AMD_PERFMON_V2 => {
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
            }
            LEAF_EXT_FEATURES => entry.ecx &= !ECX_AMD_PERF_COUNTERS,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn the_pmu_is_hidden() {
        let leaf = |function, ecx| kvm_cpuid_entry2 {
            function,
            eax: 0xffff_ffff,
            ecx,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[
            leaf(LEAF_ARCH_PERFMON, 0),
            leaf(LEAF_EXT_FEATURES, u32::MAX),
            leaf(LEAF_AMD_PERFMON_V2, 0),
        ])
        .unwrap();
        patch_for_vcpu(&mut cpuid, 0, 1, false);
        let e = cpuid.as_slice();
        assert_eq!(e[0].eax, 0, "no architectural perfmon");
        assert_eq!(e[1].ecx & ECX_AMD_PERF_COUNTERS, 0);
        assert_ne!(e[1].ecx, 0, "other extended features stay");
        assert_eq!(e[2].eax, 0, "no PerfMonV2");
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: LEAF_FEATURES,
            ebx: 0xffff_ffff,
            ..Default::default()
        }])
        .unwrap();
        let plain = cpuid.clone();
        patch_for_vcpu(&mut cpuid, 3, 4, true);
        let e = cpuid.as_slice()[0];
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0);
        let mut without = plain;
        patch_for_vcpu(&mut without, 3, 4, false);
        assert_eq!(without.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0xffff);
        assert_ne!(e.edx & EDX_HTT, 0);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
    }
}
