//! `runm create` and `runm run`: check the bundle, make the state directory, spawn the
//! container's host process (`runm sandbox`) and wait until it reports the container
//! created in the guest. Any failure leaves nothing behind.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::{CreateArgs, GlobalOpts, RunArgs};
use crate::config::Config;
use crate::host::READY_SOCK;
use crate::ready::ReadyListener;
use crate::spec::Bundle;
use crate::state::{ContainerState, Root, Status};

/// Time for the host process beyond the boot timeout: rootfs image, container set-up.
const CREATE_SLACK: Duration = Duration::from_secs(120);

pub fn create(global: &GlobalOpts, args: &CreateArgs) -> anyhow::Result<i32> {
    create_container(global, args, false)?;
    Ok(0)
}

pub fn run(global: &GlobalOpts, args: &RunArgs) -> anyhow::Result<i32> {
    let id = &args.create.id;
    let t = std::time::Instant::now();
    let mut child = create_container(global, &args.create, !args.detach)?;
    crate::host::phase("create_total", t);
    let t = std::time::Instant::now();
    if let Err(e) = super::lifecycle::start_container(global, id) {
        let _ = super::lifecycle::delete_container(global, id, true);
        return Err(e);
    }
    crate::host::phase("start", t);
    if args.detach {
        return Ok(0);
    }
    let pid = i32::try_from(child.id()).unwrap_or(0);
    if let Err(e) = crate::signals::forward_to_pid(pid) {
        log::warn!("cannot forward signals: {e}");
    }
    let t = std::time::Instant::now();
    let status = child
        .wait()
        .context("waiting for the container's host process")?;
    crate::host::phase("run_to_exit", t);
    let code = status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    });
    if !args.keep {
        let t = std::time::Instant::now();
        super::lifecycle::delete_container(global, id, true)?;
        crate::host::phase("delete", t);
    }
    Ok(code)
}

/// Creates the container; returns its host process (a child of this one).
fn create_container(
    global: &GlobalOpts,
    args: &CreateArgs,
    own_terminal: bool,
) -> anyhow::Result<Child> {
    if args.preserve_fds > 0 {
        bail!("--preserve-fds: host file descriptors cannot be passed into a microVM");
    }
    let bundle = Bundle::load(&args.bundle)?;
    for warning in bundle.namespace_warnings() {
        log::warn!("{warning}");
    }
    if bundle.terminal() && args.console_socket.is_none() && !own_terminal {
        bail!("process.terminal is true, so --console-socket is required");
    }
    let config = Config::load()?;
    bundle.vm_size(config.host_limits())?;
    crate::mounts::plan(&bundle, Path::new(runm_protocol::SHARED_DIR))?;
    if let Some(why) = super::check::kvm_unusable() {
        bail!("this host cannot run microVMs: {why}");
    }
    let root = Root::new(&global.root);
    root.create_dir(&args.id)?;
    let result = spawn_and_wait(global, &root, args, &bundle, &config);
    if result.is_err() {
        if let Err(e) = root.remove_dirs(&args.id) {
            log::warn!("{e}");
        }
    }
    result
}

fn spawn_and_wait(
    global: &GlobalOpts,
    root: &Root,
    args: &CreateArgs,
    bundle: &Bundle,
    config: &Config,
) -> anyhow::Result<Child> {
    let locked = root.lock(&args.id)?;
    locked.save(&ContainerState {
        id: args.id.clone(),
        bundle: bundle.dir.clone(),
        status: Status::Creating,
        pid: 0,
        pid_start: 0,
        guest_pid: 0,
        created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        annotations: bundle.annotations(),
        exit_status: None,
    })?;
    let ready = ReadyListener::bind(&locked.sockets().join(READY_SOCK))
        .context("cannot make the host process's report socket")?;
    drop(locked);
    let mut cmd = self_command(global)?;
    cmd.arg("sandbox").arg(&args.id);
    spawn_host(
        cmd,
        args.console_socket.as_deref(),
        &ready,
        config.boot_timeout() + CREATE_SLACK,
        args.pid_file.as_deref(),
    )
}

/// Spawns a host process (`cmd`, with this process's stdio), waits for its report and
/// writes its pid to `pid_file`; on any failure the child is killed and reaped.
pub fn spawn_host(
    mut cmd: Command,
    console_socket: Option<&Path>,
    ready: &ReadyListener,
    timeout: Duration,
    pid_file: Option<&Path>,
) -> anyhow::Result<Child> {
    // The process's stdio is this command's (as runc's init inherits it), unless it has
    // a terminal: then it talks through the pty alone and must not hold this command's
    // stdio open, which clients read to its end (containerd's shim waits for EOF there).
    let stdio = || match console_socket {
        Some(_) => Stdio::null(),
        None => Stdio::inherit(),
    };
    if let Some(cs) = console_socket {
        cmd.arg("--console-socket").arg(cs);
    }
    // Its own process group: a terminal's ^C goes to the foreground `run` or `exec`,
    // which forwards it once, rather than to both.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio())
        .spawn()
        .context("cannot start a runm host process")?;
    let reported = ready
        .wait(&mut child, timeout)
        .map_err(anyhow::Error::msg)
        .and_then(|()| match pid_file {
            Some(path) => write_pid_file(path, child.id()),
            None => Ok(()),
        });
    if let Err(e) = reported {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

/// This executable with the global flags that must reach a spawned host process.
pub fn self_command(global: &GlobalOpts) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the runm executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root").arg(&global.root);
    if let Some(log) = &global.log {
        cmd.arg("--log").arg(log);
    }
    cmd.arg("--log-format").arg(&global.log_format);
    if global.debug {
        cmd.arg("--debug");
    }
    Ok(cmd)
}

/// runc writes the bare number, atomically.
pub fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("runm-tmp");
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write pid file {}", path.display()))
}
