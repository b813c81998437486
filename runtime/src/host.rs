//! Host processes: the one per container that owns the microVM (`runm create` spawns
//! it as `runm sandbox <id>`), and the one per exec'd process. Each relays its process's
//! stdio, forwards signals to it, and exits with its status, so a caller that knows
//! runc (containerd's shim reaping the `--pid-file` pid) sees a container's end as it
//! would with runc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use runm_protocol::{ProcessKey, Request, Response, Rootfs, SHARED_DIR};
use vmm::devices::virtio::block::BlockConfig;
use vmm::devices::virtio::fs::FsConfig;
use vmm::devices::virtio::vsock::VsockConfig;
use vmm::VmConfig;

use crate::agent_client::AgentClient;
use crate::config::Config;
use crate::console::{self, RawGuard};
use crate::guest_assets::{self, Asset};
use crate::hooks::{self, HookPoint};
use crate::mounts::{Plan, RootSource};
use crate::namespaces::{self, HostNamespaces};
use crate::network::{self, Network};
use crate::relay::{HostStdio, Relay};
use crate::sandbox::Sandbox;
use crate::spec::Bundle;
use crate::state::{self, Root, Status};
use crate::virtiofs::{self, CacheMode, FsServer};
use crate::watch::{Watch, KILLED};

pub const READY_SOCK: &str = "ready.sock";
pub const VSOCK_SOCK: &str = "vsock.sock";
const CONSOLE_LOG: &str = "console.log";
const GUEST_CID: u32 = 3;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the output may trail the exit status.
const OUTPUT_GRACE: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Logs how long a phase took, for the benchmarks' breakdown.
pub fn phase(name: &str, since: std::time::Instant) {
    log::debug!("phase {name} {:.1}", since.elapsed().as_secs_f64() * 1000.0);
}

/// The vsock socket of a container's VM, in its socket directory `sockets`.
pub fn vsock_path(sockets: &Path) -> PathBuf {
    sockets.join(VSOCK_SOCK)
}

/// A client for the agent of the container whose sockets are in `sockets`.
pub fn agent(sockets: &Path) -> anyhow::Result<AgentClient> {
    AgentClient::connect(
        &vsock_path(sockets),
        runm_protocol::AGENT_PORT,
        Duration::from_secs(10),
    )
    .context("cannot reach the container's VM")
}

/// Where a process's terminal or stdio goes on the host: the pty sent to
/// `console_socket`, or our own stdin and stdout with the host console (see
/// [`console::host_console`]) in raw mode.
pub fn host_stdio(
    terminal: bool,
    console_socket: Option<&Path>,
) -> anyhow::Result<(HostStdio, Option<RawGuard>)> {
    if !terminal {
        return Ok((HostStdio::inherited()?, None));
    }
    match console_socket {
        Some(path) => Ok((HostStdio::pty(console::send_to_socket(path)?)?, None)),
        None => {
            let tty = console::host_console()?;
            let guard = RawGuard::new(std::os::fd::AsFd::as_fd(&tty));
            Ok((HostStdio::own_terminal(tty)?, guard))
        }
    }
}

/// Turns off the CRLF mapping of the process's terminal, as runc does when it relays a
/// terminal to its own stdout (a pipe then gets the process's bytes unchanged).
pub fn plain_newlines(sockets: &Path, key: &ProcessKey) {
    let request = Request::SetTtyOnlcr {
        process: key.clone(),
        onlcr: false,
    };
    if let Err(e) = agent(sockets).and_then(|mut a| Ok(a.call_ok(&request, CALL_TIMEOUT)?)) {
        log::warn!("cannot turn off the terminal's CRLF mapping: {e:#}");
    }
}

/// Attaches `stdio` and sends `create` (`CreateContainer` or `Exec`); returns the relay
/// and the guest pid.
pub fn launch(
    uds: &Path,
    key: &ProcessKey,
    stdio: HostStdio,
    create: &Request,
) -> anyhow::Result<(Relay, i32)> {
    let relay = Relay::attach(uds, key, stdio).context("cannot attach the process's stdio")?;
    let mut agent = AgentClient::connect(uds, runm_protocol::AGENT_PORT, CALL_TIMEOUT)?;
    match agent.call(create, CALL_TIMEOUT)? {
        Response::Created { pid } => Ok((relay, pid)),
        other => bail!("the agent answered {other:?} to a create request"),
    }
}

/// Waits for the process to end and its output to arrive; returns its status. A VM or
/// agent that goes away counts as a kill.
pub fn wait_exit(uds: &Path, key: &ProcessKey, mut relay: Relay) -> i32 {
    let status =
        AgentClient::connect(uds, runm_protocol::AGENT_PORT, CALL_TIMEOUT).and_then(|mut a| {
            a.call_blocking(&Request::Wait {
                process: key.clone(),
            })
        });
    let status = match status {
        Ok(Response::Exited { status }) => status,
        Ok(other) => {
            log::error!("the agent answered {other:?} to wait");
            255
        }
        Err(e) => {
            log::error!("lost the guest while waiting for the process: {e}");
            KILLED
        }
    };
    if !relay.wait_output(OUTPUT_GRACE) {
        log::warn!("the process's output did not all arrive within {OUTPUT_GRACE:?}");
    }
    status
}

/// `runm sandbox <id>`: boots the VM, creates the container, reports to `runm create`,
/// then waits for the container to end and exits with its status.
pub fn run_sandbox(root: &Root, id: &str, console_socket: Option<&Path>) -> i32 {
    let sockets = root.sockets_dir(id);
    // Recorded first, so that `delete` can end this process even while it creates.
    if let Err(e) = claim(root, id) {
        log::error!("cannot record the container's host process: {e}");
        return 1;
    }
    let reporter = match crate::ready::Reporter::connect(&sockets.join(READY_SOCK)) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot report to runm create (it is gone?): {e}");
            abandon(root, id);
            return 1;
        }
    };
    // Before any thread starts (a new mount namespace needs it).
    let host_ns = match own_namespaces(root, id) {
        Ok(ns) => ns,
        Err(e) => {
            reporter.fail(&crate::error_message(&e));
            return 1;
        }
    };
    let (root_copy, id_copy) = (root.clone(), id.to_string());
    let watched = reporter.on_hang_up(move || {
        log::error!("runm create went away before the container was created; giving up");
        abandon(&root_copy, &id_copy);
        // The VM and virtiofsd (by its parent-death signal) end with this process.
        std::process::exit(1);
    });
    if let Err(e) = watched {
        log::warn!("cannot watch runm create: {e}");
    }
    let started = start_container(root, id, console_socket, &host_ns);
    let (sandbox, relay, _raw, mut fs, network) = match started {
        Ok(s) => s,
        Err(e) => {
            reporter.fail(&crate::error_message(&e));
            return 1;
        }
    };
    if let Err(e) = reporter.ok() {
        log::error!("cannot report to runm create (it is gone?): {e}; giving up");
        let _ = sandbox.stop(SHUTDOWN_GRACE);
        drop(fs);
        network.release();
        abandon(root, id);
        return 1;
    }
    let uds = vsock_path(&sockets);
    let key = ProcessKey::init(id);
    // Docker 28 configures the network after create and start.
    network.watch();
    if let Err(e) = crate::signals::forward_to_guest(uds.clone(), key.clone()) {
        log::warn!("cannot forward signals: {e}");
    }
    // Whichever ends first: the container's process, the VM under it, or the file
    // server its files come from. `fs` serves the container's files until the end.
    let watch = Watch::new(sandbox, uds);
    watch.process(key, relay);
    if let Some(exited) = fs.as_mut().and_then(FsServer::exited) {
        watch.fs_server(exited);
    }
    let status = watch.until_the_end(root, id);
    network.release();
    status
}

/// Takes the new namespaces the container's config asks for (see `namespaces`).
fn own_namespaces(root: &Root, id: &str) -> anyhow::Result<HostNamespaces> {
    guest_assets::own_exe()?;
    let bundle_dir = root.lock(id)?.load_raw()?.bundle;
    let bundle = Bundle::load(&bundle_dir)?;
    Ok(namespaces::isolate(&bundle.spec)?)
}

/// Records this process as the container's host process.
fn claim(root: &Root, id: &str) -> anyhow::Result<()> {
    let locked = root.lock(id)?;
    let mut st = locked.load_raw()?;
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    st.pid = pid;
    st.pid_start = state::process_start_time(pid).unwrap_or(0);
    locked.save(&st)?;
    Ok(())
}

/// Removes the container of a `create` that is gone: nobody else will.
fn abandon(root: &Root, id: &str) {
    let removed = root.lock(id).map_err(anyhow::Error::from).and_then(|l| {
        l.remove()?;
        Ok(())
    });
    if let Err(e) = removed {
        log::warn!("cannot remove the container's state: {e}");
    }
}

type Started = (Sandbox, Relay, Option<RawGuard>, Option<FsServer>, Network);

/// The guest console's last lines, for an error message (the state directory, and the
/// log with it, is removed when create fails).
fn console_tail(path: &Path) -> String {
    let tail = crate::last_lines(path, 8);
    if tail.is_empty() {
        return " (the guest console said nothing)".into();
    }
    format!(" (guest console: {tail})")
}

fn start_container(
    root: &Root,
    id: &str,
    console_socket: Option<&Path>,
    host_ns: &HostNamespaces,
) -> anyhow::Result<Started> {
    let (dir, sockets) = (root.dir(id), root.sockets_dir(id));
    let bundle_dir = root.lock(id)?.load_raw()?.bundle;
    let bundle = Bundle::load(&bundle_dir)?;
    // On this (the main) thread, so state's pid is in the container's network namespace.
    let netns = network::requested(&bundle.spec).flatten();
    network::enter(netns.as_deref())?;
    let config = Config::load()?;
    let mut network = Network::plan(config.net_backend())?;
    let (vcpus, mem_mib) = bundle.vm_size(config.host_limits())?;
    let plan = crate::mounts::plan(&bundle, Path::new(SHARED_DIR))?;
    let t = std::time::Instant::now();
    let fs = start_fs_server((&dir, &sockets), &bundle, &plan, &config)?;
    phase("fs_server", t);
    let console_log = dir.join(CONSOLE_LOG);
    let vm = vm_config(
        &config,
        (vcpus, mem_mib),
        &plan,
        fs.as_ref(),
        &network,
        &console_log,
        &sockets,
    )?;
    let t = std::time::Instant::now();
    let sandbox = boot(vm, &config, fs.as_ref(), &console_log)?;
    phase("boot_to_agent", t);
    let t = std::time::Instant::now();
    let result = network
        .connect(sandbox.net_attacher(), &vsock_path(&sockets))
        .map_err(anyhow::Error::from)
        .and_then(|()| create_in_guest(root, id, (&bundle, &plan), console_socket, host_ns))
        // Docker up to 27 configures the network from a hook.
        .and_then(|started| Ok(network.sync().map(|()| started)?));
    phase("create_in_guest", t);
    match result {
        Ok((relay, raw)) => Ok((sandbox, relay, raw, fs, network)),
        Err(e) => {
            let _ = sandbox.stop(SHUTDOWN_GRACE);
            network.release();
            Err(e)
        }
    }
}

/// The VM a container gets: its size, the rootfs disk or file server, the vsock to its
/// agent, and a network device for each of its interfaces.
fn vm_config(
    config: &Config,
    (vcpus, mem_mib): (u8, u32),
    plan: &Plan,
    fs: Option<&FsServer>,
    network: &Network,
    console_log: &Path,
    sockets: &Path,
) -> anyhow::Result<VmConfig> {
    let serial = std::fs::File::create(console_log)
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    let disks = match &plan.root {
        RootSource::Block { path, readonly, .. } => vec![BlockConfig {
            path: path.clone(),
            read_only: *readonly,
        }],
        RootSource::Shared { .. } => Vec::new(),
    };
    Ok(VmConfig {
        kernel: guest_assets::locate(Asset::Kernel, config.kernel.clone())?,
        initrd: Some(guest_assets::locate(
            Asset::Initramfs,
            config.initrd.clone(),
        )?),
        cmdline: format!("{} quiet", vmm::config::DEFAULT_CMDLINE),
        vcpus,
        mem_mib,
        serial_out: Box::new(serial),
        disks,
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: vsock_path(sockets),
        }),
        fs: fs
            .iter()
            .map(|server| FsConfig {
                tag: virtiofs::TAG.into(),
                socket: server.socket().to_path_buf(),
            })
            .collect(),
        net: network.vm_devices(),
    })
}

/// Boots the VM and waits for its agent; a failure says what the guest and virtiofsd
/// said last.
fn boot(
    vm: VmConfig,
    config: &Config,
    fs: Option<&FsServer>,
    console_log: &Path,
) -> anyhow::Result<Sandbox> {
    Sandbox::start(vm, config.boot_timeout()).with_context(|| {
        let fs_log = fs
            .map(|s| s.log_tail())
            .filter(|t| !t.is_empty())
            .map(|t| format!(" (virtiofsd: {t})"))
            .unwrap_or_default();
        format!(
            "the microVM did not boot{}{fs_log}",
            console_tail(console_log)
        )
    })
}

/// Starts virtiofsd when anything of the host's is shared into the guest.
fn start_fs_server(
    (dir, sockets): (&Path, &Path),
    bundle: &Bundle,
    plan: &Plan,
    config: &Config,
) -> anyhow::Result<Option<FsServer>> {
    if plan.shares.is_empty() {
        return Ok(None);
    }
    let cache = match bundle.annotations().get(virtiofs::ANNOTATION_CACHE) {
        Some(v) => CacheMode::parse(v).with_context(|| {
            format!(
                "annotation {}: {v:?} is not one of never, metadata, auto, always",
                virtiofs::ANNOTATION_CACHE
            )
        })?,
        None => config.virtiofs_cache.unwrap_or_default(),
    };
    let binary = guest_assets::locate(Asset::Virtiofsd, config.virtiofsd.clone())?;
    Ok(Some(FsServer::start(
        dir,
        sockets,
        &plan.shares,
        &binary,
        cache,
    )?))
}

fn create_in_guest(
    root: &Root,
    id: &str,
    (bundle, plan): (&Bundle, &Plan),
    console_socket: Option<&Path>,
    host_ns: &HostNamespaces,
) -> anyhow::Result<(Relay, Option<RawGuard>)> {
    let sockets = root.sockets_dir(id);
    let (stdio, raw) = host_stdio(bundle.terminal(), console_socket)?;
    let rootfs = match &plan.root {
        RootSource::Shared { name } => Rootfs::Shared { path: name.clone() },
        RootSource::Block {
            fstype, readonly, ..
        } => Rootfs::Block {
            device: "/dev/vda".into(),
            fstype: fstype.clone(),
            readonly: *readonly,
        },
    };
    let create = Request::CreateContainer {
        id: id.to_string(),
        spec: bundle.guest_spec(plan.guest_mounts.clone())?,
        rootfs,
        shared_fs: (!plan.shares.is_empty()).then(|| virtiofs::TAG.to_string()),
    };
    let (relay, guest_pid) = launch(&vsock_path(&sockets), &ProcessKey::init(id), stdio, &create)
        .context("cannot create the container in the guest")?;
    let locked = root.lock(id)?;
    // `claim` recorded this process's pid before the boot.
    let mut st = locked.load_raw()?;
    st.guest_pid = guest_pid;
    st.status = Status::Created;
    locked.save(&st)?;
    let oci = st.oci_json();
    // Hooks run in the runtime's namespaces, as runc runs them.
    let hooks = bundle.spec.hooks().as_ref();
    hooks::run(hooks, HookPoint::CreateRuntime, &oci, Some(host_ns))?;
    hooks::run(hooks, HookPoint::CreateContainer, &oci, Some(host_ns))?;
    Ok((relay, raw))
}
