//! How big a container's microVM is: the container's own limits (CPU quota, cpuset,
//! memory limit) or the `io.runm.vm.*` annotations, within what the host can give.

use super::{Bundle, SpecError};

/// Annotations that size the VM, overriding what the resources imply.
pub const ANNOTATION_VCPUS: &str = "io.runm.vm.vcpus";
pub const ANNOTATION_MEMORY_MIB: &str = "io.runm.vm.memory_mib";

const DEFAULT_VCPUS: u8 = 1;
/// The most vCPUs an annotation may ask for.
pub const MAX_VCPUS: u8 = 32;
const DEFAULT_MEMORY_MIB: u32 = 512;
/// Guest memory beyond the container's limit: kernel, agent, page cache.
pub const MEMORY_OVERHEAD_MIB: u32 = 128;
const MIN_MEMORY_MIB: u32 = 64;

/// What the host offers a VM.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// Online CPUs: more vCPUs than this only slow the guest down.
    pub cpus: u8,
    /// The configured ceiling of guest memory (`max_memory_mib` in runm's config).
    pub max_memory_mib: u32,
}

impl HostLimits {
    /// This host's online CPUs and `max_memory_mib`.
    pub fn of_host(max_memory_mib: u32) -> Self {
        let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .unwrap_or(1);
        let cpus = u8::try_from(online.clamp(1, i64::from(MAX_VCPUS))).unwrap_or(MAX_VCPUS);
        Self {
            cpus,
            max_memory_mib,
        }
    }
}

impl Bundle {
    /// vCPUs and memory (MiB). Annotations are the operator's explicit choice and win
    /// (within their ranges); otherwise the CPU quota and cpuset give the vCPUs, capped
    /// at the host's online CPUs (the cgroup limit inside the guest stays as asked, as
    /// runc keeps it on a host with fewer CPUs), and the memory limit plus the guest's
    /// own overhead gives the memory, capped at `max_memory_mib`.
    pub fn vm_size(&self, host: HostLimits) -> Result<(u8, u32), SpecError> {
        let annotations = self.annotations();
        let resources = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone());
        let cpu = resources.as_ref().and_then(|r| r.cpu().clone());
        let from_quota = cpu
            .as_ref()
            .and_then(|c| Some((c.quota()?, c.period()?)))
            .filter(|&(quota, period)| quota > 0 && period > 0)
            .map(|(quota, period)| quota.unsigned_abs().div_ceil(period));
        let from_cpuset = cpu
            .as_ref()
            .and_then(|c| c.cpus().as_deref().and_then(highest_cpu))
            .map(|highest| u64::from(highest) + 1);
        let wanted = from_quota
            .into_iter()
            .chain(from_cpuset)
            .max()
            .unwrap_or(u64::from(DEFAULT_VCPUS));
        let mut vcpus = u8::try_from(wanted.min(u64::from(host.cpus))).unwrap_or(host.cpus);
        if wanted > u64::from(vcpus) {
            log::debug!(
                "the container's CPU limits ask for {wanted} CPUs; the VM gets {vcpus} vCPUs, \
                 the host's online CPUs (the guest's cgroup keeps the limit as asked)"
            );
        }
        let mut mem = DEFAULT_MEMORY_MIB.min(host.max_memory_mib);
        if let Some(limit) = resources
            .as_ref()
            .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
            .filter(|&l| l > 0)
        {
            let mib = u32::try_from(limit.unsigned_abs().div_ceil(1 << 20)).unwrap_or(u32::MAX);
            mem = mib
                .saturating_add(MEMORY_OVERHEAD_MIB)
                .min(host.max_memory_mib);
        }
        if let Some(v) = annotations.get(ANNOTATION_VCPUS) {
            vcpus = v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_VCPUS).contains(n))
                .ok_or_else(|| {
                    SpecError::Invalid(
                        format!("annotation {ANNOTATION_VCPUS}"),
                        format!("{v:?} is not a vCPU count from 1 to {MAX_VCPUS}"),
                    )
                })?;
        }
        if let Some(v) = annotations.get(ANNOTATION_MEMORY_MIB) {
            let max = host.max_memory_mib;
            mem = v
                .parse()
                .ok()
                .filter(|n| (MIN_MEMORY_MIB..=max).contains(n))
                .ok_or_else(|| {
                    SpecError::Invalid(
                        format!("annotation {ANNOTATION_MEMORY_MIB}"),
                        format!("{v:?} is not a size from {MIN_MEMORY_MIB} to {max} MiB"),
                    )
                })?;
        }
        Ok((vcpus, mem))
    }
}

/// The highest CPU a cpuset list ("0-3,6") names; `None` when it names none or does
/// not parse (the guest's cgroup then refuses it, with the kernel's words).
fn highest_cpu(list: &str) -> Option<u32> {
    list.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let last = part.rsplit_once('-').map_or(part, |(_, hi)| hi);
            last.trim().parse::<u32>().ok()
        })
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{bundle_with, default_config};

    const HOST: HostLimits = HostLimits {
        cpus: 2,
        max_memory_mib: 3072,
    };

    fn size(resources: serde_json::Value, annotations: serde_json::Value) -> (u8, u32) {
        let mut c = default_config();
        c["linux"]["resources"] = resources;
        c["annotations"] = annotations;
        let (dir, b) = bundle_with(&c.to_string());
        let size = b.unwrap().vm_size(HOST);
        std::fs::remove_dir_all(dir).unwrap();
        size.unwrap()
    }

    #[test]
    fn limits_size_the_vm_within_the_host() {
        let none = serde_json::json!({});
        assert_eq!(size(none.clone(), none.clone()), (1, DEFAULT_MEMORY_MIB));
        let r = serde_json::json!({
            "memory": {"limit": 256 * 1024 * 1024},
            "cpu": {"quota": 150000, "period": 100000}
        });
        assert_eq!(size(r, none.clone()), (2, 256 + MEMORY_OVERHEAD_MIB));
        // A million CPUs' quota on a 2-CPU host: 2 vCPUs, not 32.
        let r = serde_json::json!({"cpu": {"quota": 100_000_000_000_i64, "period": 100000}});
        assert_eq!(size(r, none.clone()).0, 2);
        let r = serde_json::json!({"cpu": {"cpus": "1"}});
        assert_eq!(size(r, none.clone()).0, 2);
        let r = serde_json::json!({"cpu": {"cpus": "0-5,7"}});
        assert_eq!(size(r, none.clone()).0, 2);
        let r = serde_json::json!({"memory": {"limit": 64_i64 << 30}});
        assert_eq!(size(r, none.clone()).1, 3072);
        let a = serde_json::json!({ANNOTATION_VCPUS: "4", ANNOTATION_MEMORY_MIB: "1024"});
        assert_eq!(size(none, a), (4, 1024));
    }

    #[test]
    fn bad_annotations_are_named() {
        let mut c = default_config();
        c["annotations"] = serde_json::json!({ANNOTATION_VCPUS: "0"});
        let (dir, b) = bundle_with(&c.to_string());
        let e = b.unwrap().vm_size(HOST).unwrap_err().to_string();
        assert!(e.contains(ANNOTATION_VCPUS), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cpusets_name_their_highest_cpu() {
        assert_eq!(highest_cpu("0-3,6"), Some(6));
        assert_eq!(highest_cpu("2"), Some(2));
        assert_eq!(highest_cpu(" 1 , 0-1 "), Some(1));
        assert_eq!(highest_cpu(""), None);
        assert_eq!(highest_cpu("a-b"), None);
    }
}
