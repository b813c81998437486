//! The agent's state and its answer to every request but `AttachStream` (which takes
//! the connection, see `server.rs`) and `Shutdown`'s power-off.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runm_protocol::{AgentInfo, ProcessKey, Request, Response, Rootfs, StreamKind};
use vsock::VsockStream;

use crate::helper::{self, HelperOp};
use crate::network::Network;
use crate::process::{Proc, ProcessTable, OUTPUT_GRACE};
use crate::reaper::Reaper;
use crate::streams::{Attached, StreamRegistry};
use crate::{cgroup, init, relay, spec};

/// One directory per container: `config.json` and the mounted `rootfs`.
pub const BUNDLES_DIR: &str = "/run/runm/bundles";
/// Console sockets live apart from bundles, on a short path (a socket path has 108 bytes).
const CONSOLE_DIR: &str = "/run/runm/console";

#[derive(Debug)]
struct ContainerEntry {
    bundle: PathBuf,
    cgroup: PathBuf,
}

/// Everything the agent keeps.
#[derive(Debug)]
pub struct Agent {
    reaper: Arc<Reaper>,
    streams: StreamRegistry<VsockStream>,
    procs: ProcessTable,
    /// Containers by id; `None` while being created (the id is taken).
    containers: Mutex<HashMap<String, Option<ContainerEntry>>>,
    /// The sandbox network namespace the containers share.
    network: Network,
}

type Result<T> = std::result::Result<T, String>;

fn describe(key: &ProcessKey) -> String {
    match &key.exec {
        None => format!("container {}", key.container),
        Some(e) => format!("exec {e} of container {}", key.container),
    }
}

impl Agent {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        Self {
            reaper,
            streams: StreamRegistry::default(),
            procs: ProcessTable::default(),
            containers: Mutex::new(HashMap::new()),
            network: Network::guest(),
        }
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Option<ContainerEntry>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `stream` for the process until its `CreateContainer` or `Exec`.
    pub fn attach(&self, process: ProcessKey, kind: StreamKind, stream: VsockStream) -> Result<()> {
        spec::validate_id("container", &process.container).map_err(|e| e.to_string())?;
        if let Some(exec) = &process.exec {
            spec::validate_id("exec", exec).map_err(|e| e.to_string())?;
        }
        match self.streams.attach(process, kind, stream) {
            Ok(replaced) => {
                drop(replaced);
                Ok(())
            }
            Err(_) => Err("too many streams attached and not used".into()),
        }
    }

    /// Answers one request (not `AttachStream`).
    pub fn handle(&self, request: Request) -> Response {
        let outcome = match request {
            Request::Ping => Ok(Response::Pong(AgentInfo {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                protocol_version: runm_protocol::PROTOCOL_VERSION,
                kernel: init::kernel_release(),
            })),
            Request::Shutdown => Ok(Response::Ok),
            Request::AttachStream { .. } => Err("attach_stream is handled by the server".into()),
            Request::CreateContainer {
                id,
                spec,
                rootfs,
                shared_fs,
            } => self.create(&id, spec, &rootfs, shared_fs.as_deref()),
            Request::StartContainer { id } => self.start(&id),
            Request::Exec { process, spec } => self.exec(&process, &spec),
            Request::Wait { process } => self.proc(&process).map(|p| Response::Exited {
                status: p.wait(OUTPUT_GRACE),
            }),
            Request::Signal {
                process,
                signal,
                all,
            } => self.signal(&process, signal, all),
            Request::ResizeTty {
                process,
                rows,
                cols,
            } => self.resize(&process, rows, cols),
            Request::SetTtyOnlcr { process, onlcr } => self.set_onlcr(&process, onlcr),
            Request::Pause { id } => self.freeze(&id, true),
            Request::Resume { id } => self.freeze(&id, false),
            Request::Processes { id } => self.cgroup(&id).and_then(|cg| {
                cgroup::processes(&cg)
                    .map(|processes| Response::Processes { processes })
                    .map_err(|e| format!("processes of container {id}: {e}"))
            }),
            Request::Stats { id } => self.cgroup(&id).and_then(|cg| {
                cgroup::stats(&cg)
                    .map(Response::Stats)
                    .map_err(|e| format!("stats of container {id}: {e}"))
            }),
            Request::AddInterface { iface } => self
                .network
                .add_interface::<rtnl::Rtnl>(&iface)
                .map(|()| Response::Ok)
                .map_err(|e| e.to_string()),
        };
        outcome.unwrap_or_else(|message| Response::Error { message })
    }

    fn proc(&self, key: &ProcessKey) -> Result<Arc<Proc>> {
        self.procs
            .get(key)
            .ok_or_else(|| format!("{} not found", describe(key)))
    }

    fn cgroup(&self, id: &str) -> Result<PathBuf> {
        match self.containers().get(id) {
            Some(Some(c)) => Ok(c.cgroup.clone()),
            Some(None) => Err(format!("container {id} is being created")),
            None => Err(format!("container {id} not found")),
        }
    }

    fn bundle(&self, id: &str) -> Result<PathBuf> {
        match self.containers().get(id) {
            Some(Some(c)) => Ok(c.bundle.clone()),
            Some(None) => Err(format!("container {id} is being created")),
            None => Err(format!("container {id} not found")),
        }
    }

    fn create(
        &self,
        id: &str,
        mut config: serde_json::Value,
        rootfs: &Rootfs,
        shared_fs: Option<&str>,
    ) -> Result<Response> {
        spec::validate_id("container", id).map_err(|e| e.to_string())?;
        if let Some(tag) = shared_fs {
            crate::rootfs::mount_shared(tag).map_err(|e| e.to_string())?;
        }
        let network_ns = if spec::has_namespace(&config, "network") {
            Some(self.network.sandbox_path().map_err(|e| e.to_string())?)
        } else {
            None
        };
        let terminal =
            spec::rewrite_config(&mut config, id, network_ns).map_err(|e| e.to_string())?;
        {
            let mut containers = self.containers();
            if containers.contains_key(id) {
                return Err(format!("container {id} already exists"));
            }
            containers.insert(id.to_string(), None);
        }
        let bundle = Path::new(BUNDLES_DIR).join(id);
        let key = ProcessKey::init(id);
        match self.create_in(id, &bundle, config, rootfs, terminal, &key) {
            Ok(pid) => {
                let entry = ContainerEntry {
                    bundle,
                    cgroup: cgroup::dir(&spec::cgroup_path(id)),
                };
                self.containers().insert(id.to_string(), Some(entry));
                Ok(Response::Created { pid })
            }
            Err(e) => {
                self.procs.remove(&key);
                let rootfs = bundle.join("rootfs");
                let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
                crate::copyup::cleanup(&bundle);
                let _ = std::fs::remove_dir_all(&bundle);
                self.containers().remove(id);
                Err(e)
            }
        }
    }

    fn create_in(
        &self,
        id: &str,
        bundle: &Path,
        mut config: serde_json::Value,
        rootfs: &Rootfs,
        terminal: bool,
        key: &ProcessKey,
    ) -> Result<i32> {
        crate::precheck::check(&config).map_err(|e| format!("config.json: {e}"))?;
        let target = bundle.join("rootfs");
        std::fs::create_dir_all(&target)
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        crate::rootfs::mount_rootfs(rootfs, &target).map_err(|e| e.to_string())?;
        crate::copyup::prepare(&mut config, &target, bundle).map_err(|e| e.to_string())?;
        crate::rootfs::make_cwd(&config, &target);
        let config_path = bundle.join("config.json");
        let json = serde_json::to_vec_pretty(&config).map_err(|e| format!("config.json: {e}"))?;
        std::fs::write(&config_path, json)
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let proc = self
            .procs
            .insert_new(key)
            .ok_or_else(|| format!("{} already exists", describe(key)))?;
        let stdio = self.stdio(key, terminal, &proc)?;
        let op = HelperOp::Create {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            console_socket: stdio.console_path.clone(),
        };
        let pid = helper::run(&self.reaper, &op, stdio.helper)
            .map_err(|e| format!("cannot create container {id}: {e}"))?
            .ok_or("the helper reported no pid")?;
        self.started(pid, &proc, stdio.console, stdio.tty)?;
        Ok(pid)
    }

    /// Wires the process's stdio: pipes relayed to the attached streams, or a console
    /// socket on which the container will send its terminal.
    fn stdio(&self, key: &ProcessKey, terminal: bool, proc: &Arc<Proc>) -> Result<ProcStdio> {
        let Attached {
            stdin,
            stdout,
            stderr,
            tty,
        } = self.streams.take(key);
        let pipe_err = |e: nix::Error| format!("cannot create a pipe: {e}");
        if terminal {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            std::fs::create_dir_all(CONSOLE_DIR)
                .map_err(|e| format!("cannot create {CONSOLE_DIR}: {e}"))?;
            let path = Path::new(CONSOLE_DIR)
                .join(format!("{}.sock", SEQ.fetch_add(1, Ordering::Relaxed)));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            return Ok(ProcStdio {
                helper: [Stdio::null(), Stdio::null(), Stdio::null()],
                console_path: Some(path),
                console: Some(listener),
                tty,
            });
        }
        let stdin = match stdin {
            Some(s) => {
                let (r, w) = pipe().map_err(pipe_err)?;
                relay::input(s, File::from(w));
                Stdio::from(r)
            }
            None => Stdio::null(),
        };
        let output = |stream: Option<VsockStream>| -> Result<Stdio> {
            Ok(match stream {
                Some(s) => {
                    let (r, w) = pipe().map_err(pipe_err)?;
                    relay::output(File::from(r), Some(s), Arc::clone(proc));
                    Stdio::from(w)
                }
                None => Stdio::null(),
            })
        };
        let stdout = output(stdout)?;
        let stderr = output(stderr)?;
        Ok(ProcStdio {
            helper: [stdin, stdout, stderr],
            console_path: None,
            console: None,
            tty: None,
        })
    }

    /// Records a new process's pid, and relays its terminal if it has one.
    fn started(
        &self,
        pid: i32,
        proc: &Arc<Proc>,
        console: Option<UnixListener>,
        tty: Option<VsockStream>,
    ) -> Result<()> {
        proc.set_pid(pid);
        let p = Arc::clone(proc);
        self.reaper.watch(pid, move |status| p.set_exited(status));
        if let Some(listener) = console {
            let master = helper::receive_console(&listener)?;
            if let Ok(addr) = listener.local_addr() {
                if let Some(path) = addr.as_pathname() {
                    let _ = std::fs::remove_file(path);
                }
            }
            proc.set_tty(Arc::clone(&master));
            match tty {
                Some(stream) => relay::tty(master, stream, Arc::clone(proc)),
                None => relay::output(ArcFile(master), None, Arc::clone(proc)),
            }
        }
        Ok(())
    }

    fn start(&self, id: &str) -> Result<Response> {
        self.bundle(id)?;
        let op = HelperOp::Start { id: id.to_string() };
        let null = || Stdio::null();
        helper::run(&self.reaper, &op, [null(), null(), null()])
            .map_err(|e| format!("cannot start container {id}: {e}"))?;
        Ok(Response::Ok)
    }

    fn exec(&self, key: &ProcessKey, process: &serde_json::Value) -> Result<Response> {
        let Some(exec_id) = &key.exec else {
            return Err("exec needs an exec id".into());
        };
        spec::validate_id("exec", exec_id).map_err(|e| e.to_string())?;
        let id = &key.container;
        let bundle = self.bundle(id)?;
        let terminal = spec::check_exec_process(process).map_err(|e| e.to_string())?;
        let proc = self
            .procs
            .insert_new(key)
            .ok_or_else(|| format!("{} already exists", describe(key)))?;
        let path = bundle.join(format!("exec-{exec_id}.json"));
        let outcome = (|| {
            let json = serde_json::to_vec(process).map_err(|e| format!("process: {e}"))?;
            std::fs::write(&path, json)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let stdio = self.stdio(key, terminal, &proc)?;
            let op = HelperOp::Exec {
                id: id.clone(),
                process: path.clone(),
                console_socket: stdio.console_path.clone(),
            };
            let pid = helper::run(&self.reaper, &op, stdio.helper)
                .map_err(|e| format!("exec: {e}"))?
                .ok_or("the helper reported no pid")?;
            self.started(pid, &proc, stdio.console, stdio.tty)?;
            Ok(pid)
        })();
        let _ = std::fs::remove_file(&path);
        match outcome {
            Ok(pid) => Ok(Response::Created { pid }),
            Err(e) => {
                self.procs.remove(key);
                Err(e)
            }
        }
    }

    fn signal(&self, key: &ProcessKey, signal: i32, all: bool) -> Result<Response> {
        let sig = Signal::try_from(signal).map_err(|_| format!("invalid signal {signal}"))?;
        if all {
            let cg = self.cgroup(&key.container)?;
            let pids = cgroup::pids(&cg).map_err(|e| e.to_string())?;
            for pid in pids {
                match kill(Pid::from_raw(pid), sig) {
                    Ok(()) | Err(nix::Error::ESRCH) => {}
                    Err(e) => return Err(format!("cannot send {sig} to pid {pid}: {}", e.desc())),
                }
            }
            return Ok(Response::Ok);
        }
        let proc = self.proc(key)?;
        let pid = proc
            .pid()
            .ok_or_else(|| format!("{} has not started", describe(key)))?;
        if proc.status().is_some() {
            return Err(format!("{} has already exited", describe(key)));
        }
        kill(Pid::from_raw(pid), sig)
            .map_err(|e| format!("cannot send {sig} to {}: {}", describe(key), e.desc()))?;
        Ok(Response::Ok)
    }

    fn resize(&self, key: &ProcessKey, rows: u16, cols: u16) -> Result<Response> {
        let master = self
            .proc(key)?
            .tty()
            .ok_or_else(|| format!("{} has no terminal", describe(key)))?;
        relay::resize(&master, rows, cols)
            .map_err(|e| format!("cannot resize the terminal of {}: {e}", describe(key)))?;
        Ok(Response::Ok)
    }

    fn set_onlcr(&self, key: &ProcessKey, onlcr: bool) -> Result<Response> {
        let master = self
            .proc(key)?
            .tty()
            .ok_or_else(|| format!("{} has no terminal", describe(key)))?;
        relay::set_onlcr(&master, onlcr)
            .map_err(|e| format!("cannot set the terminal of {}: {e}", describe(key)))?;
        Ok(Response::Ok)
    }

    fn freeze(&self, id: &str, frozen: bool) -> Result<Response> {
        let cg = self.cgroup(id)?;
        cgroup::freeze(&cg, frozen).map_err(|e| {
            let what = if frozen { "pause" } else { "resume" };
            format!("cannot {what} container {id}: {e}")
        })?;
        Ok(Response::Ok)
    }
}

/// A pipe whose ends are not inherited by processes the agent starts.
fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// How a new process's stdio is wired.
struct ProcStdio {
    /// The helper's (and so the process's) stdin, stdout and stderr.
    helper: [Stdio; 3],
    /// With a terminal: where the container sends it.
    console_path: Option<PathBuf>,
    console: Option<UnixListener>,
    tty: Option<VsockStream>,
}

/// A terminal nobody attached to still needs reading, or its process blocks.
struct ArcFile(Arc<std::fs::File>);

impl std::io::Read for ArcFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}
