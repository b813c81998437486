//! How a host process tells the command that spawned it whether it got the container
//! (or exec'd process) going: one line over a Unix socket in the state directory.
//! `create` must return only once the container is created, and with the guest's error
//! when it is not; the socket also tells it when the child died without a word.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(10);
/// How often the host process looks whether its spawner is still there.
const HANG_UP_POLL: Duration = Duration::from_millis(200);
/// A report is one line into a socket buffer; a spawner that does not take it is stuck.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The spawning side: waits for the child's word.
#[derive(Debug)]
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = vmm::uds::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Waits for `child` to report; Err carries its error message (or why none came).
    pub fn wait(&self, child: &mut Child, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => return read_report(stream, deadline),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("waiting for the host process: {e}")),
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the host process exited early ({status})"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the host process did not report within {} s",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_report(stream: UnixStream, deadline: Instant) -> Result<(), String> {
    stream
        .set_nonblocking(false)
        .and_then(|()| {
            stream.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1)),
            ))
        })
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    // Bounded: a report is one short line.
    BufReader::new(stream.take_bounded())
        .read_line(&mut line)
        .map_err(|e| format!("reading the host process's report: {e}"))?;
    match line.trim_end().split_once(' ') {
        _ if line.trim_end() == "ok" => Ok(()),
        Some(("error", msg)) => Err(msg.to_string()),
        _ => Err("the host process ended without reporting".into()),
    }
}

trait TakeBounded {
    fn take_bounded(self) -> std::io::Take<UnixStream>;
}

impl TakeBounded for UnixStream {
    fn take_bounded(self) -> std::io::Take<UnixStream> {
        std::io::Read::take(self, 64 * 1024)
    }
}

/// The child's side.
#[derive(Debug)]
pub struct Reporter {
    stream: UnixStream,
    /// Set (under the lock) once the report is being sent: the spawner's hang-up after
    /// that is its normal end.
    reported: Arc<Mutex<bool>>,
}

impl Reporter {
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            stream: vmm::uds::connect(path)?,
            reported: Arc::default(),
        })
    }

    /// Runs `gone` on a thread of its own if the spawner goes away (it was killed)
    /// before the report is sent: nobody will take the result, or clean up after it.
    /// `gone` runs with the report held back, so it may end the process.
    pub fn on_hang_up(&self, gone: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let stream = self.stream.try_clone()?;
        let reported = self.reported.clone();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || loop {
                let hung_up = hung_up(&stream, HANG_UP_POLL);
                let reported = reported.lock().unwrap_or_else(|e| e.into_inner());
                if *reported {
                    return;
                }
                if hung_up {
                    gone();
                    return;
                }
            })?;
        Ok(())
    }

    /// Reports success; an error means the spawner is gone.
    pub fn ok(self) -> std::io::Result<()> {
        self.send(b"ok\n")
    }

    pub fn fail(self, message: &str) {
        let one_line = message.replace('\n', " ");
        let _ = self.send(format!("error {one_line}\n").as_bytes());
    }

    fn send(mut self, line: &[u8]) -> std::io::Result<()> {
        *self.reported.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stream.set_write_timeout(Some(REPORT_TIMEOUT))?;
        self.stream.write_all(line)
    }
}

/// Whether the peer of `stream` hung up, waiting up to `wait` for it. The spawner never
/// writes, so the stream turning readable means its end (EOF or a reset).
fn hung_up(stream: &UnixStream, wait: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, ms) {
        Ok(0) | Err(nix::Error::EINTR) => false,
        Ok(_) => fds[0].revents().is_some_and(|r| !r.is_empty()),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_travel_and_silence_is_an_error() {
        let dir = std::env::temp_dir().join(format!("runm-ready-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready.sock");
        for (report, want) in [
            (Some("ok"), Ok(())),
            (Some("bad"), Err("cannot mount /dev/vda".to_string())),
        ] {
            let l = ReadyListener::bind(&path).unwrap();
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let r = Reporter::connect(&path).unwrap();
            match report {
                Some("ok") => r.ok().unwrap(),
                _ => r.fail("cannot mount /dev/vda"),
            }
            assert_eq!(l.wait(&mut child, Duration::from_secs(5)), want);
            child.kill().unwrap();
            child.wait().unwrap();
        }
        let l = ReadyListener::bind(&path).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let e = l.wait(&mut child, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("exited early"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_spawner_that_goes_away_before_the_report_is_noticed() {
        let dir = std::env::temp_dir().join(format!("runm-ready-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready.sock");
        // The spawner dies without accepting: the connection waits in its backlog.
        let l = ReadyListener::bind(&path).unwrap();
        let r = Reporter::connect(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        r.on_hang_up(move || tx.send(()).unwrap()).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(600)).is_err());
        drop(l);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the hang-up is seen");
        assert!(r.ok().is_err(), "nobody takes the report");

        // After the report, the spawner's normal end is no hang-up to act on.
        let l = ReadyListener::bind(&path).unwrap();
        let r = Reporter::connect(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        r.on_hang_up(move || tx.send(()).unwrap()).unwrap();
        r.ok().unwrap();
        drop(l);
        assert!(rx.recv_timeout(Duration::from_secs(1)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
