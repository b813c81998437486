//! OCI hooks. They are host programs (their paths name host files), so runm runs all of
//! them on the host, each with the container's state JSON on stdin, at the point of the
//! lifecycle the spec gives them.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

use crate::namespaces::HostNamespaces;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// `prestart` (deprecated) and `createRuntime`, after the container is created.
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookPoint {
    fn name(self) -> &'static str {
        match self {
            HookPoint::CreateRuntime => "createRuntime",
            HookPoint::CreateContainer => "createContainer",
            HookPoint::StartContainer => "startContainer",
            HookPoint::Poststart => "poststart",
            HookPoint::Poststop => "poststop",
        }
    }

    fn hooks(self, hooks: &Hooks) -> Vec<Hook> {
        let pick = |h: &Option<Vec<Hook>>| h.clone().unwrap_or_default();
        match self {
            #[allow(deprecated)]
            HookPoint::CreateRuntime => {
                let mut v = pick(hooks.prestart());
                v.extend(pick(hooks.create_runtime()));
                v
            }
            HookPoint::CreateContainer => pick(hooks.create_container()),
            HookPoint::StartContainer => pick(hooks.start_container()),
            HookPoint::Poststart => pick(hooks.poststart()),
            HookPoint::Poststop => pick(hooks.poststop()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{point} hook {path}: cannot run it: {source}")]
    Spawn {
        point: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{point} hook {path} failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        point: &'static str,
        path: String,
        status: String,
        stderr: String,
    },
    #[error("{point} hook {path} did not finish within {secs} s; killed it")]
    Timeout {
        point: &'static str,
        path: String,
        secs: u64,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Runs the hooks for `point` in order; the first failure stops the rest (and, for the
/// caller, the operation: creation and start fail with it). From the container's host
/// process, `host` puts each hook back into the host's namespaces.
pub fn run(
    hooks: Option<&Hooks>,
    point: HookPoint,
    state: &serde_json::Value,
    host: Option<&HostNamespaces>,
) -> Result<(), HookError> {
    let Some(hooks) = hooks else {
        return Ok(());
    };
    for hook in point.hooks(hooks) {
        run_one(&hook, point.name(), state, host)?;
    }
    Ok(())
}

/// Runs every hook for `point` (`poststart`, `poststop`) in order. The spec: a failure is
/// a warning, the remaining hooks still run and the lifecycle goes on as if it had
/// succeeded. Returns the failures, each already logged.
pub fn run_all(
    hooks: Option<&Hooks>,
    point: HookPoint,
    state: &serde_json::Value,
) -> Vec<HookError> {
    let Some(hooks) = hooks else {
        return Vec::new();
    };
    let mut failed = Vec::new();
    for hook in point.hooks(hooks) {
        if let Err(e) = run_one(&hook, point.name(), state, None) {
            log::warn!("{e}");
            failed.push(e);
        }
    }
    failed
}

fn run_one(
    hook: &Hook,
    point: &'static str,
    state: &serde_json::Value,
    host: Option<&HostNamespaces>,
) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let mut cmd = Command::new(hook.path());
    if let Some(host) = host {
        host.apply_to(&mut cmd).map_err(|source| HookError::Spawn {
            point,
            path: path.clone(),
            source,
        })?;
    }
    // args[0] is the program's argv[0], as in execve.
    if let Some(args) = hook.args() {
        if let Some((first, rest)) = args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, first);
            cmd.args(rest);
        }
    }
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for kv in env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HookError::Spawn {
            point,
            path: path.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores its stdin may close it early: that is fine.
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let secs = hook.timeout().map(|t| t.max(1).unsigned_abs());
    let deadline = secs.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                return Err(HookError::Failed {
                    point,
                    path,
                    status: status.to_string(),
                    stderr: stderr.trim().chars().take(1000).collect(),
                });
            }
            Ok(None) => {}
            Err(source) => {
                return Err(HookError::Spawn {
                    point,
                    path,
                    source,
                })
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::Timeout {
                point,
                path,
                secs: secs.unwrap_or(0),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(json: serde_json::Value) -> Hooks {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_hook_gets_the_state_on_stdin() {
        let out = std::env::temp_dir().join(format!("runm-hook-{}", std::process::id()));
        let h = hooks(serde_json::json!({"poststart": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}", out.display())]
        }]}));
        let state = serde_json::json!({"id": "c1", "status": "running"});
        run(Some(&h), HookPoint::Poststart, &state, None).unwrap();
        let got: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(got, state);
        std::fs::remove_file(out).unwrap();
    }

    #[test]
    fn a_failing_poststart_or_poststop_hook_does_not_stop_the_next() {
        let out = std::env::temp_dir().join(format!("runm-hooks-{}", std::process::id()));
        for point in ["poststart", "poststop"] {
            let _ = std::fs::remove_file(&out);
            let h = hooks(serde_json::json!({point: [
                {"path": "/bin/sh", "args": ["sh", "-c", "exit 7"]},
                {"path": "/nonexistent/hook"},
                {"path": "/bin/sh", "args": ["sh", "-c", format!("echo ran > {}", out.display())]}
            ]}));
            let p = if point == "poststart" {
                HookPoint::Poststart
            } else {
                HookPoint::Poststop
            };
            let failed = run_all(Some(&h), p, &serde_json::json!({}));
            assert_eq!(failed.len(), 2, "{point}: {failed:?}");
            assert!(matches!(failed[0], HookError::Failed { .. }), "{failed:?}");
            assert!(matches!(failed[1], HookError::Spawn { .. }), "{failed:?}");
            let ran = std::fs::read_to_string(&out).expect("the last hook ran");
            assert_eq!(ran, "ran\n", "{point}");
        }
        std::fs::remove_file(out).unwrap();
    }

    #[test]
    fn failure_and_timeout_are_reported() {
        let h = hooks(serde_json::json!({"createRuntime": [{
            "path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]
        }]}));
        let e = run(
            Some(&h),
            HookPoint::CreateRuntime,
            &serde_json::json!({}),
            None,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("createRuntime hook /bin/sh failed") && msg.contains("nope"),
            "{msg}"
        );
        let h = hooks(serde_json::json!({"poststop": [{
            "path": "/bin/sleep", "args": ["sleep", "10"], "timeout": 1
        }]}));
        let e = run_all(Some(&h), HookPoint::Poststop, &serde_json::json!({}));
        assert!(matches!(e[..], [HookError::Timeout { .. }]), "{e:?}");
    }
}
