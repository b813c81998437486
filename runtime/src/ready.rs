//! How a host process tells the command that spawned it whether it got the container
//! (or exec'd process) going: one line over a Unix socket in the state directory.
//! `create` must return only once the container is created, and with the guest's error
//! when it is not; the socket also tells it when the child died without a word.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(10);

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
}

impl Reporter {
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            stream: vmm::uds::connect(path)?,
        })
    }

    pub fn ok(mut self) {
        let _ = self.stream.write_all(b"ok\n");
    }

    pub fn fail(mut self, message: &str) {
        let one_line = message.replace('\n', " ");
        let _ = self
            .stream
            .write_all(format!("error {one_line}\n").as_bytes());
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
                Some("ok") => r.ok(),
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
}
