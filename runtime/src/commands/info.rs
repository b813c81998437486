//! Read-only commands: `state`, `list`, `ps`, `events`, and the static `spec` and
//! `features`.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use runm_protocol::{Request, Response};

use crate::cli::{EventsArgs, GlobalOpts, IdArg, ListArgs, PsArgs, SpecArgs};
use crate::host;
use crate::state::{Root, Status};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn state(global: &GlobalOpts, args: &IdArg) -> anyhow::Result<i32> {
    let locked = Root::new(&global.root).lock(&args.id)?;
    let state = locked.load()?;
    println!("{}", serde_json::to_string_pretty(&state.oci_json())?);
    Ok(0)
}

fn check_format(format: &str) -> anyhow::Result<bool> {
    match format {
        "table" => Ok(false),
        "json" => Ok(true),
        other => bail!("invalid format {other:?}: use table or json"),
    }
}

pub fn list(global: &GlobalOpts, args: &ListArgs) -> anyhow::Result<i32> {
    let json = check_format(&args.format.format)?;
    let root = Root::new(&global.root);
    let mut states = Vec::new();
    for id in root.ids()? {
        // A container deleted meanwhile is simply not listed.
        if let Ok(s) = root.lock(&id).and_then(|l| l.load()) {
            states.push(s);
        }
    }
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
    } else if json {
        let all: Vec<_> = states.iter().map(|s| s.oci_json()).collect();
        writeln!(out, "{}", serde_json::to_string(&all)?)?;
    } else {
        writeln!(
            out,
            "{:<12} {:<10} {:<10} {:<40} {:<30} OWNER",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        )?;
        for s in &states {
            let pid = if s.status == Status::Stopped {
                0
            } else {
                s.pid
            };
            writeln!(
                out,
                "{:<12} {:<10} {:<10} {:<40} {:<30} root",
                s.id,
                pid,
                s.status,
                s.bundle.display(),
                s.created
            )?;
        }
    }
    Ok(0)
}

pub fn ps(global: &GlobalOpts, args: &PsArgs) -> anyhow::Result<i32> {
    let json = check_format(&args.format.format)?;
    let locked = Root::new(&global.root).lock(&args.id)?;
    let state = locked.load()?;
    if matches!(state.status, Status::Stopped | Status::Creating) {
        bail!("container {} is not running", args.id);
    }
    let response = host::agent(locked.sockets())?.call(
        &Request::Processes {
            id: args.id.clone(),
        },
        CALL_TIMEOUT,
    )?;
    let Response::Processes { processes } = response else {
        bail!("the agent answered {response:?} to ps");
    };
    let mut out = std::io::stdout().lock();
    if json {
        let pids: Vec<i32> = processes.iter().map(|p| p.pid).collect();
        writeln!(out, "{}", serde_json::to_string(&pids)?)?;
    } else {
        writeln!(out, "{:<8} {:<8} {:<8} CMD", "UID", "PID", "PPID")?;
        for p in &processes {
            writeln!(out, "{:<8} {:<8} {:<8} {}", p.uid, p.pid, p.ppid, p.cmd)?;
        }
    }
    Ok(0)
}

pub fn events(global: &GlobalOpts, args: &EventsArgs) -> anyhow::Result<i32> {
    let interval = humantime::parse_duration(&args.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| {
            format!(
                "--interval {:?}: expected a duration like 5s",
                args.interval
            )
        })?;
    let root = Root::new(&global.root);
    loop {
        let event = {
            let locked = root.lock(&args.id)?;
            let state = locked.load()?;
            if matches!(state.status, Status::Stopped | Status::Creating) {
                bail!("container {} is not running", args.id);
            }
            let response = host::agent(locked.sockets())?.call(
                &Request::Stats {
                    id: args.id.clone(),
                },
                CALL_TIMEOUT,
            )?;
            let Response::Stats(s) = response else {
                bail!("the agent answered {response:?} to stats");
            };
            // runc's event shape, with the figures runm has.
            serde_json::json!({
                "type": "stats",
                "id": args.id,
                "data": {
                    "cpu": {"usage": {"total": s.cpu_usage_ns}},
                    "memory": {"usage": {"usage": s.memory_usage_bytes, "limit": s.memory_limit_bytes}},
                    "pids": {"current": s.pids_current},
                }
            })
        };
        println!("{event}");
        if args.stats {
            return Ok(0);
        }
        std::thread::sleep(interval);
    }
}

pub fn spec(args: &SpecArgs) -> anyhow::Result<i32> {
    if args.rootless {
        bail!("--rootless: runm does not support rootless containers");
    }
    let path = args.bundle.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default())?;
    // The version every runtime in use accepts (crun 1.8 refuses newer ones), so that
    // one bundle can be run by runm and its peers alike.
    spec["ociVersion"] = "1.0.2".into();
    std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(0)
}

pub fn features() -> anyhow::Result<i32> {
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": crate::spec::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec", "relatime",
                         "strictatime", "mode", "size", "private", "rprivate", "slave", "rslave"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": all_capabilities(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                              "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.runm.version": env!("CARGO_PKG_VERSION"),
            "io.runm.isolation": "kvm-microvm"
        }
    });
    println!("{}", serde_json::to_string_pretty(&features)?);
    Ok(0)
}

fn all_capabilities() -> Vec<String> {
    (0..64)
        .map_while(capability_name)
        .map(|n| format!("CAP_{n}"))
        .collect()
}

fn capability_name(n: u32) -> Option<&'static str> {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES.get(usize::try_from(n).ok()?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_checked() {
        assert!(!check_format("table").unwrap());
        assert!(check_format("json").unwrap());
        assert!(check_format("yaml")
            .unwrap_err()
            .to_string()
            .contains("yaml"));
    }

    #[test]
    fn every_capability_is_listed() {
        let caps = all_capabilities();
        assert_eq!(caps.len(), 41);
        assert_eq!(caps[0], "CAP_CHOWN");
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
    }
}
