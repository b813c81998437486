//! Test helpers: each test runs on a thread of its own in a network namespace of its
//! own, so it never touches the machine's network, and builds what it needs there with
//! the crate or with `ip`/`tc` (a child started from that thread inherits its
//! namespace).

use std::fs::File;
use std::process::Command;
use std::thread;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};

use crate::{Link, Rtnl};

/// Runs `test` on a new thread in a new network namespace. Returns false (and says
/// so) when this process may not make one: the caller then skips, asserting nothing.
#[must_use]
pub(crate) fn in_new_netns(name: &str, test: impl FnOnce() + Send + 'static) -> bool {
    let name = name.to_owned();
    let outcome = thread::spawn(move || match unshare(CloneFlags::CLONE_NEWNET) {
        Ok(()) => {
            test();
            true
        }
        Err(e @ (Errno::EPERM | Errno::EINVAL | Errno::ENOSYS)) => {
            eprintln!("SKIPPED {name}: cannot make a network namespace ({e}); needs root");
            false
        }
        Err(e) => panic!("unshare(CLONE_NEWNET): {e}"),
    })
    .join();
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A second network namespace, made by a thread that exits at once: its file (which
/// keeps it alive) and a socket that acts in it.
pub(crate) fn other_netns() -> (File, Rtnl) {
    thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let file = File::open("/proc/thread-self/ns/net").expect("open the new netns");
        (file, Rtnl::new().expect("netlink socket in the new netns"))
    })
    .join()
    .expect("netns thread")
}

/// Runs a command (`ip ...`, `tc ...`) in the calling thread's namespace; its stdout.
pub(crate) fn run(command: &str) -> String {
    let mut words = command.split_whitespace();
    let program = words.next().expect("a command");
    let output = Command::new(program)
        .args(words)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    assert!(
        output.status.success(),
        "{command}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The link named `name`, which must exist.
pub(crate) fn link(rtnl: &mut Rtnl, name: &str) -> Link {
    rtnl.link_by_name(name)
        .expect("list links")
        .unwrap_or_else(|| panic!("no link {name}"))
}

/// `struct ifreq` as TUNSETIFF reads it: a name and flags, padded to 40 bytes.
#[repr(C)]
struct TunRequest {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches to the tap `name` (made with `ip tuntap add NAME mode tap`) in the calling
/// thread's namespace: what the tap sends out is read from the file, what is written
/// to it arrives on the tap.
pub(crate) fn attach_tap(name: &str) -> File {
    use std::os::fd::AsRawFd;
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut request = TunRequest {
        name: [0; 16],
        flags: libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap(),
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `TunRequest` matches in
    // layout and size; both it and the descriptor outlive the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    tun
}

/// Reads frames from a tap until `wanted` accepts one, for at most five seconds.
pub(crate) fn read_frame(tap: &mut File, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Read;
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut frame = vec![0; 2048];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no such frame within five seconds");
        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(millis)).expect("poll the tap") == 0 {
            continue;
        }
        let len = tap.read(&mut frame).expect("read the tap");
        if wanted(&frame[..len]) {
            frame.truncate(len);
            return frame;
        }
    }
}
