//! Checks of a config that need no guest, made on the host before anything is created,
//! so a bad bundle is refused in milliseconds rather than after a VM boots. They follow
//! what runc refuses (its spec conversion and config validation), worded to name the
//! field; anything only the guest's kernel can judge is left to the guest.

use std::collections::HashMap;

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

/// A problem: (the field's path in config.json, what is wrong and what was expected).
pub type Problem = (String, String);

/// `ociVersion` must name a 1.x spec: the format runm reads.
pub fn oci_version(spec: &Spec) -> Result<(), Problem> {
    let version = spec.version();
    let mut parts = version.splitn(3, '.');
    let numeric = |p: Option<&str>| {
        p.is_some_and(|p| {
            // A pre-release or build suffix ("1.0.2-dev", "1.1.0+abc") is allowed.
            let digits = p.split(['-', '+']).next().unwrap_or("");
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        })
    };
    let (major, minor, patch) = (parts.next(), parts.next(), parts.next());
    if major == Some("1") && numeric(minor) && numeric(patch) {
        return Ok(());
    }
    Err((
        "ociVersion".into(),
        format!(
            "{version:?} is not a version of the OCI runtime spec 1.x (runm implements {})",
            super::OCI_VERSION
        ),
    ))
}

/// `linux.namespaces` and what depends on them.
pub fn namespaces(spec: &Spec) -> Result<(), Problem> {
    if crate::network::requested(spec).is_none() {
        return Err((
            "linux.namespaces".into(),
            "has no network namespace (host networking): a microVM cannot share the host's \
             network stack; give the container a network namespace (with or without a path)"
                .into(),
        ));
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err((
            "linux.netDevices".into(),
            "moves host network devices into the container, which runm does not do: give \
             the container's network namespace the interface instead (runm mirrors every \
             interface there into the VM)"
                .into(),
        ));
    }
    let list = linux.namespaces().clone().unwrap_or_default();
    let mut seen: HashMap<LinuxNamespaceType, usize> = HashMap::new();
    for (i, ns) in list.iter().enumerate() {
        if let Some(first) = seen.insert(ns.typ(), i) {
            return Err((
                format!("linux.namespaces[{i}].type"),
                format!(
                    "{} is listed twice (also at linux.namespaces[{first}]); each type may appear once",
                    type_name(ns.typ())
                ),
            ));
        }
    }
    for (i, ns) in list.iter().enumerate() {
        if let Some(path) = ns.path() {
            super::nspath::check(ns.typ(), &type_name(ns.typ()), path)
                .map_err(|m| (format!("linux.namespaces[{i}].path"), m))?;
        }
    }
    let has = |t: LinuxNamespaceType| seen.contains_key(&t);
    for (field, value) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        if value.as_deref().is_some_and(|v| !v.is_empty()) && !has(LinuxNamespaceType::Uts) {
            return Err((
                field.into(),
                "cannot be set without a private UTS namespace: add {\"type\": \"uts\"} to linux.namespaces".into(),
            ));
        }
    }
    let mapped = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if mapped && !has(LinuxNamespaceType::User) {
        return Err((
            "linux.uidMappings".into(),
            "uid or gid mappings need a user namespace: add {\"type\": \"user\"} to linux.namespaces".into(),
        ));
    }
    for (key, _) in linux.sysctl().clone().unwrap_or_default() {
        if let Some(needed) = sysctl_namespace(&key) {
            if !has(needed) {
                return Err((
                    format!("linux.sysctl.{key}"),
                    format!(
                        "needs a private {} namespace (add it to linux.namespaces)",
                        type_name(needed)
                    ),
                ));
            }
        } else {
            return Err((
                format!("linux.sysctl.{key}"),
                "is not a namespaced sysctl: only net.*, kernel.hostname, kernel.domainname, \
                 the IPC ones (kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*) may be set, as with runc"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// What runc refuses in a process (`config.json`'s or `exec`'s): fields relative to it.
pub fn process(process: &Process) -> Result<(), Problem> {
    for (i, var) in process.env().iter().flatten().enumerate() {
        if !var.contains('=') || var.starts_with('=') {
            return Err((format!("env[{i}]"), format!("{var:?} is not NAME=VALUE")));
        }
    }
    for (i, limit) in process.rlimits().iter().flatten().enumerate() {
        if limit.soft() > limit.hard() {
            return Err((
                format!("rlimits[{i}]"),
                format!(
                    "the soft limit {} is above the hard limit {}",
                    limit.soft(),
                    limit.hard()
                ),
            ));
        }
    }
    if let Some(adj) = process
        .oom_score_adj()
        .filter(|a| !(-1000..=1000).contains(a))
    {
        return Err((
            "oomScoreAdj".into(),
            format!("{adj} is not from -1000 to 1000"),
        ));
    }
    Ok(())
}

/// `linux.resources.memory.limit`: -1 (no limit) or enough to start a process.
pub fn memory(spec: &Spec) -> Result<(), Problem> {
    /// Below this the container's init is OOM-killed before it runs (runc then reports
    /// "container init was OOM-killed (memory limit too low?)").
    const MIN_LIMIT: i64 = 1 << 20;
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    match limit {
        Some(l) if l < -1 => Err((
            "linux.resources.memory.limit".into(),
            format!("{l} is not a size in bytes (or -1 for no limit)"),
        )),
        Some(l) if (1..MIN_LIMIT).contains(&l) => Err((
            "linux.resources.memory.limit".into(),
            format!("{l} bytes is too low to start a process (at least {MIN_LIMIT})"),
        )),
        _ => Ok(()),
    }
}

/// `linux.rootfsPropagation`: one of the mount propagation kinds.
pub fn rootfs_propagation(spec: &Spec) -> Result<(), Problem> {
    const KINDS: [&str; 8] = [
        "shared",
        "slave",
        "private",
        "unbindable",
        "rshared",
        "rslave",
        "rprivate",
        "runbindable",
    ];
    let value = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone());
    match value {
        Some(v) if !v.is_empty() && !KINDS.contains(&v.as_str()) => Err((
            "linux.rootfsPropagation".into(),
            format!("{v:?} is not one of {}", KINDS.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// The namespace a sysctl belongs to (runc's list), `None` for a global one.
fn sysctl_namespace(key: &str) -> Option<LinuxNamespaceType> {
    const IPC: [&str; 5] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
    ];
    const IPC_MORE: [&str; 3] = ["kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"];
    if IPC.contains(&key) || IPC_MORE.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if key.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

/// A namespace type as config.json spells it.
pub fn type_name(t: LinuxNamespaceType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(patch: serde_json::Value) -> Spec {
        let mut c = serde_json::to_value(Spec::default()).unwrap();
        json_patch(&mut c, patch);
        serde_json::from_value(c).unwrap()
    }

    fn json_patch(base: &mut serde_json::Value, patch: serde_json::Value) {
        match (base, patch) {
            (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    json_patch(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, p) => *b = p,
        }
    }

    #[test]
    fn versions() {
        for good in ["1.0.0", "1.0.2-dev", "1.2.0", "1.1.0+dirty"] {
            assert!(
                oci_version(&spec(serde_json::json!({"ociVersion": good}))).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "", "banana", "2.0.0", "0.1.0", "1", "1.0", "1.x.0", "v1.0.0",
        ] {
            let (field, msg) =
                oci_version(&spec(serde_json::json!({"ociVersion": bad}))).unwrap_err();
            assert_eq!(field, "ociVersion");
            assert!(msg.contains("1.x"), "{msg}");
        }
    }

    #[test]
    fn default_spec_passes() {
        let s = Spec::default();
        assert!(namespaces(&s).is_ok());
        assert!(rootfs_propagation(&s).is_ok());
    }

    #[test]
    fn duplicate_namespaces_are_named() {
        let mut c = serde_json::to_value(Spec::default()).unwrap();
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "pid"}));
        let s: Spec = serde_json::from_value(c).unwrap();
        let (field, msg) = namespaces(&s).unwrap_err();
        assert!(field.starts_with("linux.namespaces["), "{field}");
        assert!(msg.contains("pid") && msg.contains("twice"), "{msg}");
    }

    #[test]
    fn what_needs_a_namespace_is_named() {
        let only_mount = serde_json::json!([{"type": "mount"}, {"type": "network"}]);
        let s = spec(serde_json::json!({"hostname": "h", "linux": {"namespaces": only_mount}}));
        assert_eq!(namespaces(&s).unwrap_err().0, "hostname");
        let s = spec(
            serde_json::json!({"hostname": null, "linux": {"namespaces": only_mount,
            "sysctl": {"kernel.shmmax": "1000"}}}),
        );
        assert_eq!(namespaces(&s).unwrap_err().0, "linux.sysctl.kernel.shmmax");
        let s = spec(
            serde_json::json!({"hostname": null, "linux": {"namespaces": only_mount,
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}}),
        );
        assert_eq!(namespaces(&s).unwrap_err().0, "linux.uidMappings");
        let s = spec(serde_json::json!({"linux": {"sysctl": {"vm.swappiness": "10"}}}));
        assert_eq!(namespaces(&s).unwrap_err().0, "linux.sysctl.vm.swappiness");
        let s = spec(
            serde_json::json!({"linux": {"sysctl": {"kernel.shmmax": "1000", "fs.mqueue.msg_max": "10"}}}),
        );
        assert!(namespaces(&s).is_ok());
        let s = spec(serde_json::json!({"linux": {"netDevices": {"eth1": {"name": "eth1"}}}}));
        assert_eq!(namespaces(&s).unwrap_err().0, "linux.netDevices");
    }

    #[test]
    fn processes_runc_refuses() {
        let p = |patch: serde_json::Value| {
            let mut c = serde_json::to_value(Spec::default()).unwrap();
            json_patch(&mut c["process"], patch);
            let s: Spec = serde_json::from_value(c).unwrap();
            process(s.process().as_ref().unwrap()).map_err(|(f, _)| f)
        };
        assert!(p(serde_json::json!({})).is_ok());
        assert_eq!(
            p(serde_json::json!({"env": ["A=1", "NOEQUALS"]})),
            Err("env[1]".into())
        );
        let rl = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
        assert_eq!(
            p(serde_json::json!({"rlimits": rl})),
            Err("rlimits[0]".into())
        );
        assert_eq!(
            p(serde_json::json!({"oomScoreAdj": 5000})),
            Err("oomScoreAdj".into())
        );
        // Host LSM settings are dropped with a warning (without_host_lsm), not refused.
        assert!(p(serde_json::json!({"selinuxLabel": "x", "apparmorProfile": "y"})).is_ok());
    }

    #[test]
    fn memory_limits() {
        let m = |limit: i64| {
            memory(&spec(
                serde_json::json!({"linux": {"resources": {"memory": {"limit": limit}}}}),
            ))
        };
        assert!(m(-1).is_ok() && m(0).is_ok() && m(64 << 20).is_ok());
        assert!(m(-5).is_err() && m(4096).is_err());
    }

    #[test]
    fn namespace_paths_are_checked_naming_the_entry() {
        let s = spec(serde_json::json!({"linux": {"namespaces": [
            {"type": "network", "path": "/proc/self/ns/net"},
            {"type": "cgroup", "path": "/proc/self/ns/ipc"}
        ]}}));
        let (field, msg) = namespaces(&s).unwrap_err();
        assert_eq!(field, "linux.namespaces[1].path");
        assert!(msg.contains("not cgroup"), "{msg}");
        let s = spec(serde_json::json!({"linux": {"namespaces": [
            {"type": "network", "path": "/proc/999999999/ns/net"}
        ]}}));
        assert_eq!(namespaces(&s).unwrap_err().0, "linux.namespaces[0].path");
    }

    #[test]
    fn host_networking_is_refused() {
        let s = spec(serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}));
        let (field, msg) = namespaces(&s).unwrap_err();
        assert_eq!(field, "linux.namespaces");
        assert!(msg.contains("network"), "{msg}");
    }

    #[test]
    fn propagation_kinds() {
        let s = spec(serde_json::json!({"linux": {"rootfsPropagation": "rslave"}}));
        assert!(rootfs_propagation(&s).is_ok());
        let s = spec(serde_json::json!({"linux": {"rootfsPropagation": "sideways"}}));
        assert_eq!(
            rootfs_propagation(&s).unwrap_err().0,
            "linux.rootfsPropagation"
        );
    }
}
