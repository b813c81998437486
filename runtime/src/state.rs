//! Container state on the host: one directory per container under `--root`, holding
//! `state.json`, the console and file-server logs and the shared directory, and one
//! directory per container under [`SOCKETS_BASE`] holding its Unix sockets (the VM's
//! vsock socket, virtiofsd's, the host processes' report sockets).
//!
//! The sockets live apart because a `--root` may be on any filesystem (an NFS home, a
//! 9p or virtio-fs share, overlayfs), and not all of them can hold a socket; and
//! `sun_path` is short. Their directory is named by a hash of the root and the id, so
//! it is found again from those two alone, even after a killed `create` left no state
//! (containerd keeps its shims' sockets under `/run/containerd/s/` the same way).
//!
//! Commands on one container serialize on an exclusive `flock` of `<dir>/lock`. The
//! host process that owns the VM records the container's end itself; when it died
//! without doing so, [`ContainerState::refresh`] notices (its pid is gone or reused) and
//! the container reads as stopped, as runc's does when its init is gone.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
/// The longest a command waits for another's lock: longer than any one command holds it
/// (an agent call is bounded by 60 s).
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);
const LOCK_POLL: Duration = Duration::from_millis(20);
/// Where the containers' socket directories are made.
pub const SOCKETS_BASE: &str = "/run/runm-sockets";
/// Hex digits of the hash that names a socket directory (128 bits).
const SOCKETS_NAME_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid container id {0:?}: use letters, digits, and _ + - . only")]
    InvalidId(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container with id {0} already exists")]
    Exists(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot lock {}: {source}", .path.display())]
    Lock { path: PathBuf, source: nix::Error },
    #[error("container {id} is busy: another runm command has held its lock for {waited:?}")]
    Busy { id: String, waited: Duration },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The OCI lifecycle states, plus runc's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub status: Status,
    /// The host process that owns the VM (what `--pid-file` names), 0 before it exists.
    pub pid: i32,
    /// Its start time in clock ticks (`/proc/<pid>/stat` field 22), to tell a reused pid.
    pub pid_start: u64,
    /// The container's init in the guest.
    pub guest_pid: i32,
    /// RFC 3339.
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The init's status once it ended (exit code, or 128 + signal).
    #[serde(default)]
    pub exit_status: Option<i32>,
}

impl ContainerState {
    /// The state as the OCI runtime spec (and runc) prints it.
    pub fn oci_json(&self) -> serde_json::Value {
        let pid = match self.status {
            Status::Stopped => 0,
            _ => self.pid,
        };
        serde_json::json!({
            "ociVersion": crate::spec::OCI_VERSION,
            "id": self.id,
            "pid": pid,
            "status": self.status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.bundle.join("rootfs"),
            "created": self.created,
            "annotations": self.annotations,
            "owner": "",
        })
    }

    /// Marks the container stopped if its host process is gone (while creating, once
    /// the host process has recorded itself).
    pub fn refresh(&mut self) {
        if self.status == Status::Stopped {
            return;
        }
        if self.pid > 0 && !process_alive(self.pid, self.pid_start) {
            self.status = Status::Stopped;
        }
    }

    /// Whether the host process still runs (and is the same process).
    pub fn host_alive(&self) -> bool {
        self.pid > 0 && process_alive(self.pid, self.pid_start)
    }
}

/// Takes an exclusive flock of `file`, waiting up to `timeout` for another holder.
fn lock_within(
    mut file: File,
    path: &Path,
    id: &str,
    timeout: Duration,
) -> Result<Flock<File>, StateError> {
    let deadline = Instant::now() + timeout;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::Error::EWOULDBLOCK)) if Instant::now() < deadline => file = f,
            Err((_, nix::Error::EWOULDBLOCK)) => {
                return Err(StateError::Busy {
                    id: id.to_string(),
                    waited: timeout,
                })
            }
            Err((_, source)) => {
                return Err(StateError::Lock {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// runc's rule for ids.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= runm_protocol::MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

/// The start time of `pid` in clock ticks, or None if it is gone or a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Makes `dir` (and its parents) readable by root alone.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn process_alive(pid: i32, start: u64) -> bool {
    process_start_time(pid).is_some_and(|s| start == 0 || s == start)
}

/// The state directory tree under `--root`.
#[derive(Debug, Clone)]
pub struct Root {
    path: PathBuf,
}

impl Root {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    /// The directory of the container's Unix sockets: [`SOCKETS_BASE`]`/<hash>`, the
    /// hash of this root's absolute path and the id.
    pub fn sockets_dir(&self, id: &str) -> PathBuf {
        use sha2::Digest;
        let root = self
            .path
            .canonicalize()
            .or_else(|_| std::path::absolute(&self.path))
            .unwrap_or_else(|_| self.path.clone());
        let mut hash = sha2::Sha256::new();
        hash.update(root.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update(id.as_bytes());
        let name: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Path::new(SOCKETS_BASE).join(&name[..SOCKETS_NAME_LEN])
    }

    /// Makes the directories of a new container; fails if the id is taken.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        std::fs::create_dir_all(&self.path).map_err(io(&self.path))?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()))
            }
            Err(e) => return Err(io(&dir)(e)),
        }
        let sockets = self.sockets_dir(id);
        let made = make_private_dir(Path::new(SOCKETS_BASE)).and_then(|()| {
            // A socket directory without a state directory is a killed create's leftover.
            match std::fs::remove_dir_all(&sockets) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            make_private_dir(&sockets)
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io(&sockets)(e));
        }
        Ok(dir)
    }

    /// Removes a container's directories and everything in them; a missing one is no
    /// error.
    pub fn remove_dirs(&self, id: &str) -> Result<(), StateError> {
        for dir in [self.sockets_dir(id), self.dir(id)] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&dir)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Locks an existing container for the rest of a command.
    pub fn lock(&self, id: &str) -> Result<Locked, StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        let path = dir.join(LOCK_FILE);
        let file = match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let lock = lock_within(file, &path, id, LOCK_TIMEOUT)?;
        // A delete may have removed the directory while we waited.
        if !dir.join(STATE_FILE).exists() && !dir.exists() {
            return Err(StateError::NotFound(id.to_string()));
        }
        Ok(Locked {
            dir,
            sockets: self.sockets_dir(id),
            root: self.clone(),
            id: id.to_string(),
            _lock: lock,
        })
    }

    /// Ids of all containers, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.path)(e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// A container directory held under its lock.
#[derive(Debug)]
pub struct Locked {
    dir: PathBuf,
    sockets: PathBuf,
    root: Root,
    id: String,
    _lock: Flock<File>,
}

impl Locked {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the container's Unix sockets.
    pub fn sockets(&self) -> &Path {
        &self.sockets
    }

    /// Reads `state.json` as recorded (no liveness check).
    pub fn load_raw(&self) -> Result<ContainerState, StateError> {
        let path = self.dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(self.id.clone()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Reads the state, marking the container stopped if its host process is gone.
    pub fn load(&self) -> Result<ContainerState, StateError> {
        let mut state = self.load_raw()?;
        state.refresh();
        Ok(state)
    }

    /// Writes `state.json` atomically (temporary file, then rename).
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(".state.json.tmp");
        let body = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&body).map_err(io(&tmp))?;
        nix::unistd::fsync(f.as_fd()).map_err(|e| io(&tmp)(e.into()))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Removes the container's directories and everything in them.
    pub fn remove(self) -> Result<(), StateError> {
        self.root.remove_dirs(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("runm-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn sample(id: &str) -> ContainerState {
        ContainerState {
            id: id.into(),
            bundle: "/b".into(),
            status: Status::Created,
            pid: i32::try_from(std::process::id()).unwrap(),
            pid_start: process_start_time(i32::try_from(std::process::id()).unwrap()).unwrap(),
            guest_pid: 1,
            created: "2026-01-01T00:00:00Z".into(),
            annotations: HashMap::new(),
            exit_status: None,
        }
    }

    #[test]
    fn ids_follow_runcs_rule() {
        for ok in ["a", "abc-1_2.3+4", "A"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(2000)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_save_load_list_remove() {
        let root = Root::new(&temp_root("cycle"));
        root.create_dir("c1").unwrap();
        assert!(matches!(
            root.create_dir("c1").unwrap_err(),
            StateError::Exists(_)
        ));
        let locked = root.lock("c1").unwrap();
        locked.save(&sample("c1")).unwrap();
        assert_eq!(locked.load().unwrap().status, Status::Created);
        assert_eq!(root.ids().unwrap(), vec!["c1".to_string()]);
        locked.remove().unwrap();
        assert!(matches!(
            root.lock("c1").unwrap_err(),
            StateError::NotFound(_)
        ));
        std::fs::remove_dir_all(root.path).unwrap();
    }

    #[test]
    fn socket_dirs_are_short_and_one_per_root_and_id() {
        let a = Root::new(Path::new("/some/root"));
        let b = Root::new(Path::new("/other/root"));
        assert_eq!(a.sockets_dir("c"), a.sockets_dir("c"));
        assert_ne!(a.sockets_dir("c"), a.sockets_dir("d"));
        assert_ne!(a.sockets_dir("c"), b.sockets_dir("c"));
        // A relative root names the same directory as its absolute path.
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            Root::new(Path::new("rel")).sockets_dir("c"),
            Root::new(&cwd.join("rel")).sockets_dir("c")
        );
        // Room in sun_path (108 bytes) for the VMM's `vsock.sock_<port>` and more.
        let long_id = "x".repeat(runm_protocol::MAX_ID_LEN);
        let dir = a.sockets_dir(&long_id);
        assert!(dir.as_os_str().len() < 60, "{}", dir.display());
    }

    #[test]
    fn removing_a_container_removes_its_socket_dir() {
        let root = Root::new(&temp_root("sockets"));
        root.create_dir("c1").unwrap();
        let sockets = root.sockets_dir("c1");
        assert!(sockets.is_dir());
        root.lock("c1").unwrap().remove().unwrap();
        assert!(!sockets.exists() && !root.dir("c1").exists());
        // A socket directory a killed create left behind is replaced, not an error.
        std::fs::create_dir_all(root.sockets_dir("c2")).unwrap();
        root.create_dir("c2").unwrap();
        root.remove_dirs("c2").unwrap();
        root.remove_dirs("c2").unwrap();
        std::fs::remove_dir_all(root.path).unwrap();
    }

    #[test]
    fn a_held_lock_is_waited_for_a_bounded_time() {
        let root = Root::new(&temp_root("lock"));
        root.create_dir("c").unwrap();
        let held = root.lock("c").unwrap();
        let path = root.dir("c").join(LOCK_FILE);
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let e = lock_within(file, &path, "c", Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, StateError::Busy { .. }), "{e}");
        drop(held);
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        lock_within(file, &path, "c", Duration::from_millis(100)).unwrap();
        root.remove_dirs("c").unwrap();
    }

    #[test]
    fn a_dead_host_process_reads_as_stopped() {
        let mut s = sample("c");
        s.refresh();
        assert_eq!(s.status, Status::Created, "this process is alive");
        s.pid_start += 1; // as if the pid had been reused
        s.refresh();
        assert_eq!(s.status, Status::Stopped);
        assert_eq!(s.oci_json()["pid"], 0);

        // A create whose host process died (or was killed) while it booted the VM.
        let mut s = sample("c");
        s.status = Status::Creating;
        s.refresh();
        assert_eq!(s.status, Status::Creating, "this process is alive");
        s.pid_start += 1;
        s.refresh();
        assert_eq!(s.status, Status::Stopped);
        let mut s = sample("c");
        (s.status, s.pid) = (Status::Creating, 0);
        s.refresh();
        assert_eq!(s.status, Status::Creating, "no host process recorded yet");
    }

    #[test]
    fn oci_state_has_the_required_fields() {
        let j = sample("c").oci_json();
        for key in ["ociVersion", "id", "status", "pid", "bundle"] {
            assert!(j.get(key).is_some(), "{key}");
        }
        assert_eq!(j["status"], "created");
    }
}
