//! `start`, `kill`, `delete`, `pause` and `resume`: state transitions, checked against
//! the recorded state under the container's lock, carried out by the guest agent.

use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runm_protocol::{ProcessKey, Request};

use crate::cli::{DeleteArgs, GlobalOpts, IdArg, KillArgs};
use crate::hooks::{self, HookPoint};
use crate::host;
use crate::spec::Bundle;
use crate::state::{Locked, Root, StateError, Status};

const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a killed host process may take to go.
const KILL_WAIT: Duration = Duration::from_secs(10);

pub fn start(global: &GlobalOpts, args: &IdArg) -> anyhow::Result<i32> {
    start_container(global, &args.id)?;
    Ok(0)
}

pub fn start_container(global: &GlobalOpts, id: &str) -> anyhow::Result<()> {
    let locked = Root::new(&global.root).lock(id)?;
    let mut state = locked.load()?;
    match state.status {
        Status::Created => {}
        Status::Creating => bail!("container {id} is still being created"),
        Status::Stopped => bail!("cannot start a container that has stopped"),
        Status::Running | Status::Paused => bail!("cannot start an already running container"),
    }
    let hooks = Bundle::load(&state.bundle)
        .ok()
        .and_then(|b| b.spec.hooks().clone());
    hooks::run(
        hooks.as_ref(),
        HookPoint::StartContainer,
        &state.oci_json(),
        None,
    )?;
    host::agent(locked.sockets())?
        .call_ok(&Request::StartContainer { id: id.into() }, CALL_TIMEOUT)?;
    state.status = Status::Running;
    locked.save(&state)?;
    // The spec: a failing poststart hook is a warning; the others run, the container
    // keeps running.
    hooks::run_all(hooks.as_ref(), HookPoint::Poststart, &state.oci_json());
    Ok(())
}

pub fn kill_cmd(global: &GlobalOpts, args: &KillArgs) -> anyhow::Result<i32> {
    let signal = crate::signals::parse(&args.signal).map_err(anyhow::Error::msg)?;
    let locked = Root::new(&global.root).lock(&args.id)?;
    let state = locked.load()?;
    if matches!(state.status, Status::Stopped | Status::Creating) {
        bail!("container {} is not running", args.id);
    }
    let request = Request::Signal {
        process: ProcessKey::init(&args.id),
        signal,
        all: args.all,
    };
    host::agent(locked.sockets())?.call_ok(&request, CALL_TIMEOUT)?;
    Ok(0)
}

pub fn delete(global: &GlobalOpts, args: &DeleteArgs) -> anyhow::Result<i32> {
    match delete_container(global, &args.id, args.force) {
        // As runc: `delete --force` of a container that does not exist succeeds, so that
        // clients (conmon, the containerd shim) can clean up after a failed create.
        Err(e) if args.force && matches!(e.downcast_ref(), Some(StateError::NotFound(_))) => Ok(0),
        Err(e) => Err(e),
        Ok(()) => Ok(0),
    }
}

pub fn delete_container(global: &GlobalOpts, id: &str, force: bool) -> anyhow::Result<()> {
    let locked = Root::new(&global.root).lock(id)?;
    let state = match locked.load() {
        // A directory without a state: a create that was aborted; nothing runs there.
        Err(StateError::NotFound(id)) => {
            locked.remove()?;
            return Err(StateError::NotFound(id).into());
        }
        other => other?,
    };
    match state.status {
        // runc deletes a created container: its process never ran.
        Status::Stopped | Status::Created | Status::Creating => {}
        Status::Running | Status::Paused if force => {}
        status => bail!("cannot delete container {id} that is not stopped: {status}"),
    }
    let bundle = Bundle::load(&state.bundle).ok();
    if state.host_alive() {
        stop_host(&locked, state.pid)?;
    }
    // A namespace the client made outlives the host process; undo what it left there.
    if let Some(path) = bundle
        .as_ref()
        .and_then(|b| crate::network::requested(&b.spec).flatten())
    {
        crate::network::clean_up_after(&path);
    }
    let hooks = bundle.and_then(|b| b.spec.hooks().clone());
    let mut stopped = state.clone();
    stopped.status = Status::Stopped;
    // The spec: a failing poststop hook is a warning; the others run, the delete goes on.
    hooks::run_all(hooks.as_ref(), HookPoint::Poststop, &stopped.oci_json());
    locked.remove()?;
    Ok(())
}

/// Ends the container's host process (and so its VM): SIGKILL, then wait until it is
/// gone (a zombie waiting for its parent counts as gone).
fn stop_host(locked: &Locked, pid: i32) -> anyhow::Result<()> {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + KILL_WAIT;
    while locked.load_raw()?.host_alive() {
        if Instant::now() >= deadline {
            bail!("the host process {pid} did not end within {KILL_WAIT:?} of SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

pub fn pause(global: &GlobalOpts, args: &IdArg) -> anyhow::Result<i32> {
    freeze(global, &args.id, true)
}

pub fn resume(global: &GlobalOpts, args: &IdArg) -> anyhow::Result<i32> {
    freeze(global, &args.id, false)
}

fn freeze(global: &GlobalOpts, id: &str, pause: bool) -> anyhow::Result<i32> {
    let locked = Root::new(&global.root).lock(id)?;
    let mut state = locked.load()?;
    let (from, to, request) = if pause {
        (
            Status::Running,
            Status::Paused,
            Request::Pause { id: id.into() },
        )
    } else {
        (
            Status::Paused,
            Status::Running,
            Request::Resume { id: id.into() },
        )
    };
    if state.status != from {
        bail!("container {id} is {}, not {from}", state.status);
    }
    host::agent(locked.sockets())?.call_ok(&request, CALL_TIMEOUT)?;
    state.status = to;
    locked.save(&state)?;
    Ok(0)
}
