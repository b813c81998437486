//! `runm create` and `runm run`: check the bundle, make the state directory, spawn the
//! container's host process (`runm sandbox`) and wait until it reports the container
//! created in the guest. Any failure leaves nothing behind.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
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
use crate::terminal::Foreground;

/// Time for the host process beyond the boot timeout: rootfs image, container set-up.
const CREATE_SLACK: Duration = Duration::from_secs(120);

/// How long the output may trail the host process's exit.
const OUTPUT_GRACE: Duration = Duration::from_secs(10);
/// The private console socket of a foreground `run`, in the container's socket dir.
const CONSOLE_SOCK: &str = "console.sock";

pub fn create(global: &GlobalOpts, args: &CreateArgs) -> anyhow::Result<i32> {
    create_container(global, args, false)?;
    Ok(0)
}

pub fn run(global: &GlobalOpts, args: &RunArgs) -> anyhow::Result<i32> {
    let id = &args.create.id;
    let t = std::time::Instant::now();
    let (mut child, master) = create_container(global, &args.create, !args.detach)?;
    crate::host::phase("create_total", t);
    if master.is_some() {
        let key = runm_protocol::ProcessKey::init(id);
        crate::host::plain_newlines(&Root::new(&global.root).sockets_dir(id), &key);
    }
    // Before start, so that the container's first output finds our terminal raw.
    let terminal = match master
        .map(|(m, console)| Foreground::start(m, console))
        .transpose()
    {
        Ok(t) => t,
        Err(e) => {
            let _ = super::lifecycle::delete_container(global, id, true);
            return Err(anyhow::Error::from(e).context("cannot relay the container's terminal"));
        }
    };
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
    if let Some(t) = &terminal {
        if !t.wait_output(OUTPUT_GRACE) {
            log::warn!("the terminal's output did not all arrive within {OUTPUT_GRACE:?}");
        }
    }
    // Our terminal's modes come back before anything else is said.
    drop(terminal);
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

/// A container's pty master, and the host console this process relays it through.
type OwnTerminal = (OwnedFd, OwnedFd);

/// Creates the container; returns its host process (a child of this one) and, for a
/// terminal relayed by this process (`foreground` and no `--console-socket`), the pty
/// master and the host console.
fn create_container(
    global: &GlobalOpts,
    args: &CreateArgs,
    foreground: bool,
) -> anyhow::Result<(Child, Option<OwnTerminal>)> {
    if args.preserve_fds > 0 {
        bail!("--preserve-fds: host file descriptors cannot be passed into a microVM");
    }
    let bundle = Bundle::load(&args.bundle)?;
    for warning in bundle.namespace_warnings() {
        log::warn!("{warning}");
    }
    // runc's rules for a terminal, with runc's reasons.
    let terminal = bundle.terminal();
    if terminal && args.console_socket.is_none() && !foreground {
        bail!("process.terminal is true, so --console-socket is required");
    }
    if (foreground || !terminal) && args.console_socket.is_some() {
        bail!(
            "cannot use --console-socket if runm will not detach or allocate a tty \
             (it is for create or run --detach of a process.terminal container)"
        );
    }
    let own_terminal = foreground && terminal;
    // Found first, so that a run that cannot have it leaves nothing behind.
    let console = own_terminal
        .then(crate::console::host_console)
        .transpose()?;
    let config = Config::load()?;
    bundle.vm_size(config.host_limits())?;
    crate::mounts::plan(&bundle, Path::new(runm_protocol::SHARED_DIR))?;
    if let Some(why) = super::check::kvm_unusable() {
        bail!("this host cannot run microVMs: {why}");
    }
    let root = Root::new(&global.root);
    root.create_dir(&args.id)?;
    let result = spawn_and_wait(global, &root, args, &bundle, &config, own_terminal)
        .map(|(child, master)| (child, master.zip(console)));
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
    own_terminal: bool,
) -> anyhow::Result<(Child, Option<OwnedFd>)> {
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
    // The host process hands the pty to us as it would to a caller's console socket.
    let console = own_terminal
        .then(|| {
            let path = locked.sockets().join(CONSOLE_SOCK);
            UnixListener::bind(&path)
                .map(|l| (l, path))
                .context("cannot make the terminal's console socket")
        })
        .transpose()?;
    drop(locked);
    let mut cmd = self_command(global)?;
    cmd.arg("sandbox").arg(&args.id);
    let console_socket = match &console {
        Some((_, path)) => Some(path.as_path()),
        None => args.console_socket.as_deref(),
    };
    let mut child = spawn_host(
        cmd,
        (console_socket, own_terminal),
        &ready,
        config.boot_timeout() + CREATE_SLACK,
        args.pid_file.as_deref(),
    )?;
    let Some((listener, path)) = console else {
        return Ok((child, None));
    };
    let _ = std::fs::remove_file(&path);
    match crate::console::receive_master(&listener) {
        Ok(master) => Ok((child, Some(master))),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.into())
        }
    }
}

/// Spawns a host process (`cmd`, with this process's stdio), waits for its report and
/// writes its pid to `pid_file`; on any failure the child is killed and reaped. With a
/// console socket it gets none of our stdio, but our stderr if `keep_stderr`.
pub fn spawn_host(
    mut cmd: Command,
    (console_socket, keep_stderr): (Option<&Path>, bool),
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
        .stderr(if keep_stderr {
            Stdio::inherit()
        } else {
            stdio()
        })
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
