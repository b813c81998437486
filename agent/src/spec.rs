//! What the agent checks and rewrites in the host's requests before it acts on them: ids,
//! devices, and the parts of an OCI config that name host things.

use std::path::Path;

use libcontainer::oci_spec::runtime::{Process, Spec};
use runm_protocol::MAX_ID_LEN;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid {what} id {id:?}: {why}")]
    Id {
        what: &'static str,
        id: String,
        why: &'static str,
    },
    #[error("invalid rootfs device {0:?}: only virtio-blk disks (/dev/vd[a-z]+) may be mounted")]
    Device(String),
    #[error("invalid rootfs filesystem type {0:?}")]
    FsType(String),
    #[error("invalid OCI config: {0}")]
    Config(String),
    #[error("invalid OCI process: {0}")]
    Process(String),
}

/// Checks a container or exec id as runc does (`^[\w+\-.]+$`, not `.` or `..`), and
/// its length: ids name directories in the guest.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), SpecError> {
    let bad = |why| {
        Err(SpecError::Id {
            what,
            id: id.chars().take(64).collect(),
            why,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("it is too long");
    }
    if id == "." || id == ".." {
        return bad("it is a path component");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
    {
        return bad("only letters, digits, '_', '+', '-' and '.' are allowed");
    }
    Ok(())
}

/// Checks that `device` is a virtio-blk disk, `/dev/vd[a-z]+`, and that `fstype`, if
/// given, is a plain filesystem name.
pub fn validate_rootfs(device: &str, fstype: Option<&str>) -> Result<(), SpecError> {
    let ok = device
        .strip_prefix("/dev/vd")
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()));
    if !ok {
        return Err(SpecError::Device(device.to_string()));
    }
    let Some(fstype) = fstype else {
        return Ok(());
    };
    if !runm_protocol::is_fstype_name(fstype) {
        return Err(SpecError::FsType(fstype.chars().take(64).collect()));
    }
    Ok(())
}

/// The cgroup of container `id` in the guest, relative to the cgroup2 root.
pub fn cgroup_path(id: &str) -> String {
    format!("/runm/{id}")
}

/// Makes the host's OCI config fit the guest, and parses it to check it:
/// - `root.path` is `rootfs`, where the agent mounts the disk beside `config.json`;
/// - namespaces are new ones, a `path` names a host namespace; but the `network` one,
///   given `network_ns`, is that guest namespace (the sandbox's, see `network/`);
/// - no hooks: the host runs them;
/// - `linux.cgroupsPath` is `/runm/<id>`: the host's (often systemd-style) path means
///   nothing in the guest.
///
/// Returns whether the process wants a terminal.
pub fn rewrite_config(
    config: &mut Value,
    id: &str,
    network_ns: Option<&Path>,
) -> Result<bool, SpecError> {
    let obj = config
        .as_object_mut()
        .ok_or_else(|| SpecError::Config("not a JSON object".into()))?;
    let readonly = obj
        .get("root")
        .and_then(|r| r.get("readonly"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    obj.insert(
        "root".into(),
        serde_json::json!({"path": "rootfs", "readonly": readonly}),
    );
    obj.remove("hooks");
    let linux = obj
        .entry("linux")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| SpecError::Config("`linux` is not an object".into()))?;
    linux.insert("cgroupsPath".into(), Value::String(cgroup_path(id)));
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        for ns in namespaces.iter_mut().filter_map(Value::as_object_mut) {
            let network = ns.get("type").and_then(Value::as_str) == Some("network");
            match network_ns {
                Some(path) if network => {
                    let path = path.to_string_lossy().into_owned();
                    ns.insert("path".into(), Value::String(path));
                }
                _ => {
                    ns.remove("path");
                }
            }
        }
    }
    let spec: Spec =
        serde_json::from_value(config.clone()).map_err(|e| SpecError::Config(e.to_string()))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::Config("it has no `process`".into()))?;
    check_process(process).map_err(SpecError::Config)?;
    Ok(process.terminal().unwrap_or(false))
}

/// Whether the OCI config asks for a namespace of type `kind` (`network`, `pid`, ...).
pub fn has_namespace(config: &Value, kind: &str) -> bool {
    config["linux"]["namespaces"]
        .as_array()
        .is_some_and(|all| all.iter().any(|ns| ns["type"].as_str() == Some(kind)))
}

/// Parses an exec'd process (an OCI `process` object). Returns whether it wants a
/// terminal.
pub fn check_exec_process(process: &Value) -> Result<bool, SpecError> {
    let parsed: Process =
        serde_json::from_value(process.clone()).map_err(|e| SpecError::Process(e.to_string()))?;
    check_process(&parsed).map_err(SpecError::Process)?;
    Ok(parsed.terminal().unwrap_or(false))
}

fn check_process(process: &Process) -> Result<(), String> {
    match process.args() {
        Some(args) if !args.is_empty() => Ok(()),
        _ => Err("`process.args` is empty".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_follow_runc_rules() {
        for ok in ["c1", "a.b", "A_b+c-d", "...", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(validate_id("container", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(validate_id("container", bad).is_err(), "{bad:?}");
        }
        let msg = validate_id("exec", "../x").unwrap_err().to_string();
        assert!(msg.starts_with("invalid exec id \"../x\""), "{msg}");
    }

    #[test]
    fn only_virtio_disks_are_mounted() {
        assert_eq!(validate_rootfs("/dev/vda", Some("ext4")), Ok(()));
        assert_eq!(validate_rootfs("/dev/vdab", Some("xfs")), Ok(()));
        for dev in [
            "/dev/vd",
            "/dev/sda",
            "/dev/vda1",
            "/dev/vda/../sda",
            "vda",
            "/dev/vdA",
        ] {
            assert!(validate_rootfs(dev, Some("ext4")).is_err(), "{dev}");
        }
        for fs in ["", "ext4,ro", "../x", "ext 4"] {
            assert!(validate_rootfs("/dev/vda", Some(fs)).is_err(), "{fs}");
        }
    }

    fn minimal() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "/var/lib/host/rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/host-hook"}]},
            "linux": {
                "cgroupsPath": "system.slice:runm:c1",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/proc/42/ns/net"}
                ]
            }
        })
    }

    #[test]
    fn host_parts_are_rewritten() {
        let mut config = minimal();
        assert_eq!(rewrite_config(&mut config, "c1", None), Ok(false));
        assert_eq!(config["root"], json!({"path": "rootfs", "readonly": true}));
        assert!(config.get("hooks").is_none());
        assert_eq!(config["linux"]["cgroupsPath"], "/runm/c1");
        assert_eq!(
            config["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "network"}])
        );
    }

    #[test]
    fn the_network_namespace_is_the_sandbox_one() {
        let mut config = minimal();
        assert!(has_namespace(&config, "network"));
        assert!(!has_namespace(&config, "user"));
        let sandbox = Path::new("/run/runm/netns/sandbox");
        assert_eq!(rewrite_config(&mut config, "c1", Some(sandbox)), Ok(false));
        assert_eq!(
            config["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "network", "path": "/run/runm/netns/sandbox"}])
        );
        // Only a namespace the config asks for is joined: none is added.
        let mut config = minimal();
        config["linux"]["namespaces"] = json!([{"type": "pid", "path": "/proc/1/ns/pid"}]);
        assert!(!has_namespace(&config, "network"));
        assert_eq!(rewrite_config(&mut config, "c1", Some(sandbox)), Ok(false));
        assert_eq!(config["linux"]["namespaces"], json!([{"type": "pid"}]));
        config.as_object_mut().unwrap().remove("linux");
        assert!(!has_namespace(&config, "network"));
        assert_eq!(rewrite_config(&mut config, "c", Some(sandbox)), Ok(false));
        assert!(config["linux"].get("namespaces").is_none());
    }

    #[test]
    fn missing_linux_and_terminal_are_handled() {
        let mut config = minimal();
        config.as_object_mut().unwrap().remove("linux");
        config["process"]["terminal"] = json!(true);
        assert_eq!(rewrite_config(&mut config, "c", None), Ok(true));
        assert_eq!(config["linux"]["cgroupsPath"], "/runm/c");
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let mut config = json!([1]);
        assert!(rewrite_config(&mut config, "c", None).is_err());
        let mut config = minimal();
        config.as_object_mut().unwrap().remove("process");
        let msg = rewrite_config(&mut config, "c", None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no `process`"), "{msg}");
        let mut config = minimal();
        config["process"]["args"] = json!("sh");
        assert!(rewrite_config(&mut config, "c", None).is_err());
    }

    #[test]
    fn exec_processes_are_parsed() {
        let p = json!({"args": ["ls", "-l"], "cwd": "/", "terminal": true,
                       "user": {"uid": 1000, "gid": 1000}});
        assert_eq!(check_exec_process(&p), Ok(true));
        let p = json!({"args": [], "cwd": "/"});
        assert!(check_exec_process(&p).is_err());
        assert!(check_exec_process(&json!({"args": 3})).is_err());
    }
}
