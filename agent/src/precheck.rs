//! Checks of a container's config that only the guest's kernel can answer, made before
//! libcontainer runs so the error names the field: libcontainer's own errors cross a
//! process boundary as bare words ("failed to prepare rootfs") and lose which mount or
//! sysctl it was.

use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount, MsFlags};
use serde_json::Value;

/// Where trial mounts go.
const PROBE_DIR: &str = "/run/runm-probe";
/// Filesystems with no backing store, so a trial mount has no effect beyond itself.
const PSEUDO_FS: [&str; 3] = ["tmpfs", "mqueue", "devpts"];
/// Mount options libcontainer also takes as flags, beyond the ones copy-up puts on its
/// bind (`copyup::FLAG_OPTIONS`): none of them is filesystem data.
const MORE_FLAG_OPTIONS: [&str; 14] = [
    "remount",
    "mand",
    "nomand",
    "dirsync",
    "bind",
    "rbind",
    "tmpcopyup",
    "lazytime",
    "nolazytime",
    "nosymfollow",
    "idmap",
    "ridmap",
    "recursive",
    "defaults",
];

/// Every `linux.sysctl` key the guest kernel has, and every pseudo-filesystem mount's
/// options it accepts; the first problem as `field: what`.
pub fn check(config: &Value) -> Result<(), String> {
    if let Some(sysctls) = config["linux"]["sysctl"].as_object() {
        for key in sysctls.keys().filter(|k| !per_interface(k)) {
            if !sysctl_path(key).is_some_and(|p| p.exists()) {
                return Err(format!(
                    "linux.sysctl.{key}: no such sysctl in the guest kernel"
                ));
            }
        }
    }
    for (i, m) in config["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let fstype = m["type"].as_str().unwrap_or_default();
        if !PSEUDO_FS.contains(&fstype) {
            continue;
        }
        let data: Vec<&str> = m["options"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|o| !crate::copyup::FLAG_OPTIONS.contains(o) && !MORE_FLAG_OPTIONS.contains(o))
            .collect();
        if data.is_empty() {
            continue;
        }
        let data = data.join(",");
        trial_mount(fstype, &data).map_err(|e| {
            format!("mounts[{i}].options: the guest kernel refuses {data:?} for {fstype}: {e}")
        })?;
    }
    Ok(())
}

/// A sysctl of one network interface (`net.ipv4.conf.eth0.*`): the interface may exist
/// only in the container's network namespace, so the guest's own cannot tell.
fn per_interface(key: &str) -> bool {
    let parts: Vec<&str> = key.split(['.', '/']).collect();
    matches!(parts.as_slice(), ["net", "ipv4" | "ipv6", "conf" | "neigh", iface, ..]
        if !matches!(*iface, "all" | "default" | "lo"))
}

/// `/proc/sys/<key with dots as slashes>`, unless the key climbs out.
fn sysctl_path(key: &str) -> Option<PathBuf> {
    let rel = PathBuf::from(key.replace('.', "/"));
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| Path::new("/proc/sys").join(rel))
}

fn trial_mount(fstype: &str, data: &str) -> nix::Result<()> {
    let _ = std::fs::create_dir_all(PROBE_DIR);
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some(fstype), PROBE_DIR, Some(fstype), flags, Some(data))?;
    let _ = umount(PROBE_DIR);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_stay_in_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
        );
        // Dots become slashes, so no key can climb out of /proc/sys.
        let odd = sysctl_path("net/../../etc").unwrap();
        assert!(odd.starts_with("/proc/sys/net") && !odd.exists(), "{odd:?}");
        let e = check(&serde_json::json!({"linux": {"sysctl": {"net.banana.peel": "1"}}}));
        assert!(e.unwrap_err().starts_with("linux.sysctl.net.banana.peel:"));
    }

    #[test]
    fn interface_sysctls_are_left_to_the_container() {
        assert!(per_interface("net.ipv4.conf.eth0.forwarding"));
        assert!(!per_interface("net.ipv4.conf.all.forwarding"));
        assert!(!per_interface("net.core.somaxconn"));
    }

    #[test]
    fn flag_options_need_no_trial() {
        let c = serde_json::json!({"mounts": [{"type": "tmpfs", "destination": "/t",
            "options": ["nosuid", "nodev", "rw"]}]});
        assert!(check(&c).is_ok());
    }
}
