//! `runm exec`: another process in a running container. In the foreground this process
//! relays its stdio and exits with its status; with `--detach` a host process
//! (`runm exec-host`) does that, and its pid goes to `--pid-file`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use oci_spec::runtime::{Capability, Process};
use runm_protocol::{ProcessKey, Request};

use crate::cli::{ExecArgs, ExecHostArgs, GlobalOpts};
use crate::host;
use crate::ready::{ReadyListener, Reporter};
use crate::spec::{self, Bundle};
use crate::state::{Root, Status};

const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub fn exec(global: &GlobalOpts, args: &ExecArgs) -> anyhow::Result<i32> {
    if args.preserve_fds > 0 {
        bail!("--preserve-fds: host file descriptors cannot be passed into a microVM");
    }
    let root = Root::new(&global.root);
    let (dir, sockets, bundle_dir) = {
        let locked = root.lock(&args.id)?;
        let state = locked.load()?;
        match state.status {
            Status::Running => {}
            Status::Paused if args.ignore_paused => {}
            Status::Paused => bail!("cannot exec in a paused container (use --ignore-paused)"),
            status => bail!("cannot exec in a {status} container"),
        }
        (
            locked.dir().to_path_buf(),
            locked.sockets().to_path_buf(),
            state.bundle,
        )
    };
    let process = spec::without_host_lsm(build_process(&bundle_dir, args)?);
    let terminal = process.terminal().unwrap_or(false);
    if terminal && args.detach && args.console_socket.is_none() {
        bail!("--tty with --detach needs --console-socket");
    }
    if (!args.detach || !terminal) && args.console_socket.is_some() {
        bail!("cannot use --console-socket if runm will not detach or allocate a tty (it is for exec --detach --tty)");
    }
    let exec_id = random_id()?;
    let spec = serde_json::to_value(&process)?;
    if args.detach {
        return spawn_detached(global, args, (&dir, &sockets), &exec_id, &spec);
    }
    let key = ProcessKey::exec(&args.id, &exec_id);
    let uds = host::vsock_path(&sockets);
    let (stdio, _raw) = host::host_stdio(terminal, args.console_socket.as_deref())?;
    let request = Request::Exec {
        process: key.clone(),
        spec,
    };
    let (relay, _guest_pid) = host::launch(&uds, &key, stdio, &request)?;
    if terminal && args.console_socket.is_none() {
        // The process runs already: its first output may come before this (as with runc).
        host::plain_newlines(&sockets, &key);
    }
    if let Some(path) = &args.pid_file {
        super::create::write_pid_file(path, std::process::id())?;
    }
    if let Err(e) = crate::signals::forward_to_guest(uds.clone(), key.clone()) {
        log::warn!("cannot forward signals: {e}");
    }
    Ok(host::wait_exit(&uds, &key, relay))
}

/// The container's process with the command line's changes, or `--process` as given.
fn build_process(bundle_dir: &Path, args: &ExecArgs) -> anyhow::Result<Process> {
    if let Some(path) = &args.process {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let process: Process = spec::parse_json(path, &text)?;
        spec::check_process(&process).map_err(|(field, message)| spec::SpecError::Field {
            path: path.clone(),
            field,
            message,
        })?;
        return Ok(process);
    }
    if args.command.is_empty() {
        bail!("exec: no command given (pass it after the container id, or use --process)");
    }
    let bundle = Bundle::load(bundle_dir)?;
    let mut process = bundle.spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    let mut env = process.env().clone().unwrap_or_default();
    for kv in &args.env {
        if !kv.contains('=') {
            bail!("--env {kv:?}: expected KEY=VALUE");
        }
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    process.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    let mut user = process.user().clone();
    if let Some(u) = &args.user {
        let (uid, gid) = parse_user(u)?;
        user.set_uid(uid);
        user.set_gid(gid);
    }
    if !args.additional_gids.is_empty() {
        user.set_additional_gids(Some(args.additional_gids.clone()));
    }
    process.set_user(user);
    if !args.cap.is_empty() {
        let mut caps = process.capabilities().clone().unwrap_or_default();
        for name in &args.cap {
            let cap: Capability = name
                .parse()
                .map_err(|_| anyhow::anyhow!("--cap {name:?}: unknown capability"))?;
            let add = |s: &Option<std::collections::HashSet<Capability>>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
        }
        process.set_capabilities(Some(caps));
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    spec::check_process(&process)
        .map_err(|(field, message)| anyhow::anyhow!("exec: process.{field}: {message}"))?;
    Ok(process)
}

/// `UID` or `UID:GID` (numbers: the guest has no user database to look names up in).
fn parse_user(u: &str) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
    match (uid.parse(), gid.parse()) {
        (Ok(uid), Ok(gid)) => Ok((uid, gid)),
        _ => bail!("--user {u:?}: expected UID or UID:GID (numbers)"),
    }
}

fn random_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn spawn_detached(
    global: &GlobalOpts,
    args: &ExecArgs,
    (dir, sockets): (&Path, &Path),
    exec_id: &str,
    spec: &serde_json::Value,
) -> anyhow::Result<i32> {
    let spec_path = dir.join(format!("exec-{exec_id}.json"));
    std::fs::write(&spec_path, spec.to_string())
        .with_context(|| format!("cannot write {}", spec_path.display()))?;
    let ready = ReadyListener::bind(&sockets.join(format!("exec-{exec_id}.sock")))?;
    let mut cmd = super::create::self_command(global)?;
    cmd.args(["exec-host", &args.id, exec_id]);
    let spawned = super::create::spawn_host(
        cmd,
        (args.console_socket.as_deref(), false),
        &ready,
        READY_TIMEOUT,
        args.pid_file.as_deref(),
    );
    let _ = std::fs::remove_file(&spec_path);
    spawned?;
    Ok(0)
}

/// `runm exec-host <id> <exec-id>`: runs a detached exec and exits with its status.
pub fn exec_host(global: &GlobalOpts, args: &ExecHostArgs) -> i32 {
    let root = Root::new(&global.root);
    let (dir, sockets) = (root.dir(&args.id), root.sockets_dir(&args.id));
    let reporter = Reporter::connect(&sockets.join(format!("exec-{}.sock", args.exec_id)));
    let started = start_detached(&dir, &sockets, args);
    match (started, reporter) {
        (Ok((uds, key, relay)), Ok(r)) => {
            // The process runs whether or not `runm exec -d` is still there to hear it.
            if let Err(e) = r.ok() {
                log::warn!("cannot report to runm exec: {e}");
            }
            host::wait_exit(&uds, &key, relay)
        }
        (Err(e), Ok(r)) => {
            r.fail(&crate::error_message(&e));
            1
        }
        (Err(e), Err(_)) => {
            log::error!("{}", crate::error_message(&e));
            1
        }
        (Ok(_), Err(e)) => {
            log::error!("cannot report to runm exec: {e}");
            1
        }
    }
}

fn start_detached(
    dir: &Path,
    sockets: &Path,
    args: &ExecHostArgs,
) -> anyhow::Result<(PathBuf, ProcessKey, crate::relay::Relay)> {
    let spec_path = dir.join(format!("exec-{}.json", args.exec_id));
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&spec_path)
            .with_context(|| format!("cannot read {}", spec_path.display()))?,
    )?;
    let terminal = spec["terminal"].as_bool().unwrap_or(false);
    let key = ProcessKey::exec(&args.id, &args.exec_id);
    let uds = host::vsock_path(sockets);
    let (stdio, _raw) = host::host_stdio(terminal, args.console_socket.as_deref())?;
    let request = Request::Exec {
        process: key.clone(),
        spec,
    };
    let (relay, _pid) = host::launch(&uds, &key, stdio, &request)?;
    Ok((uds, key, relay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_numeric() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(parse_user("nobody").is_err());
    }
}
