//! Unix socket paths of any length. `sun_path` holds 107 bytes and a NUL, and a
//! container's state directory (a client's root, say `/run/docker/runtime-runm/moby`,
//! and a 64-character id) often passes that. Such a path is reached through an open
//! descriptor of its directory instead: `/proc/self/fd/<n>/<name>`, which the kernel
//! resolves to the same place.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path `sun_path` takes, without its NUL.
const MAX_LEN: usize = 107;

/// Runs `f` (a bind or connect) with a path to `path` that fits in `sun_path`.
pub fn with_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    if path.as_os_str().len() <= MAX_LEN {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    // Open only while `f` runs: the socket file itself lives in `dir`.
    let dir = File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    f(&short)
}

/// `UnixListener::bind` for a path of any length.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    with_path(path, |p| UnixListener::bind(p))
}

/// `UnixStream::connect` for a path of any length.
pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    with_path(path, |p| UnixStream::connect(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_deeper_than_sun_path_binds_and_connects() {
        let mut dir = std::env::temp_dir().join(format!("runm-uds-{}", std::process::id()));
        let top = dir.clone();
        while dir.as_os_str().len() <= MAX_LEN {
            dir.push("a-long-directory-name");
        }
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        assert!(
            UnixListener::bind(&path).is_err(),
            "the path should be too long"
        );
        let listener = bind(&path).unwrap();
        assert!(path.exists(), "the socket is in its own directory");
        let _client = connect(&path).unwrap();
        assert!(listener.accept().is_ok());
        std::fs::remove_dir_all(top).unwrap();
    }

    #[test]
    fn a_short_path_is_used_as_it_is() {
        let seen = with_path(Path::new("/run/x.sock"), |p| Ok(p.to_path_buf())).unwrap();
        assert_eq!(seen, Path::new("/run/x.sock"));
    }
}
