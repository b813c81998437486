//! A Linux tap device with a virtio-net header on every frame (`IFF_VNET_HDR`), so that
//! the guest's header reaches the host stack as it is, offloads included.
//!
//! The tap is not persistent: it exists while its file descriptor is open, which is how
//! runm removes it (the VMM exits, the fd closes, the interface is gone). It is created in
//! the network namespace of the thread that opens it.

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::raw::{c_int, c_uint, c_ulong};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_iow_nr;

use super::{NetError, VNET_HDR_LEN};

/// The longest interface name, NUL excluded (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

const TUNTAP: c_uint = b'T' as c_uint;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);

/// `ifr_flags` for TUNSETIFF (`linux/if_tun.h`): an Ethernet tap, no packet-info prefix,
/// a virtio-net header on each frame, and never someone else's existing device.
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const IFF_TUN_EXCL: u16 = 0x8000;

/// The most iovecs one `writev` takes (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;

/// `struct ifreq` as TUNSETIFF reads and writes it: the name, then the flags (a `short`)
/// at the start of the 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; MAX_NAME_LEN + 1],
    flags: u16,
    _pad: [u8; 22],
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates tap `name` in the calling thread's network namespace. `name` may be a
    /// pattern such as `tap%d`, which the kernel completes; [`Tap::name`] says what it
    /// chose. An existing interface of that name is an error, never reused.
    pub fn open(name: &str) -> Result<Tap, NetError> {
        let bad_name = |why| NetError::TapName {
            name: name.to_owned(),
            why,
        };
        if name.is_empty() {
            return Err(bad_name("is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad_name("is longer than 15 bytes"));
        }
        if name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            return Err(bad_name("contains a NUL, a slash or white space"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(NetError::OpenTun)?;
        let mut req = IfReq {
            name: [0; MAX_NAME_LEN + 1],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let ioctl_err = |what| NetError::TapIoctl {
            name: name.to_owned(),
            what,
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: `file` is an open /dev/net/tun; TUNSETIFF reads and writes at most a
        // `struct ifreq`, which `req` is (40 bytes, C layout), borrowed for the call.
        if unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) } < 0 {
            return Err(ioctl_err("TUNSETIFF"));
        }
        let len = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAX_NAME_LEN);
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let hdr_len = c_int::try_from(VNET_HDR_LEN).unwrap_or(c_int::MAX);
        let tap = Tap { file, name };
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is `hdr_len`,
        // alive for the call; the fd is the tap's.
        if unsafe { ioctl_with_ref(&tap.file, TUNSETVNETHDRSZ(), &hdr_len) } < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ"));
        }
        Ok(tap)
    }

    /// The tap's file, for a kernel backend to serve (VHOST_NET_SET_BACKEND).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads (`TUN_F_*`) the reader takes, i.e. what frames
    /// it may hand us with partial checksums or as GSO super-frames.
    pub fn set_offload(&self, flags: u32) -> Result<(), NetError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is the tap's.
        let ret = unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), c_ulong::from(flags)) };
        if ret < 0 {
            return Err(NetError::TapIoctl {
                name: self.name.clone(),
                what: "TUNSETOFFLOAD",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame, its vnet header first; `WouldBlock` when there is none.
    pub(crate) fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame, vnet header first, gathered from guest memory.
    pub(crate) fn write_slices<B: BitmapSlice>(
        &self,
        slices: &[VolatileSlice<'_, B>],
    ) -> std::io::Result<usize> {
        if slices.len() > MAX_IOVECS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "frame in too many pieces",
            ));
        }
        let guards: Vec<_> = slices.iter().map(VolatileSlice::ptr_guard).collect();
        let iovecs: Vec<libc::iovec> = guards
            .iter()
            .zip(slices)
            .map(|(guard, slice)| libc::iovec {
                iov_base: guard.as_ptr().cast_mut().cast::<c_void>(),
                iov_len: slice.len(),
            })
            .collect();
        let count = c_int::try_from(iovecs.len()).unwrap_or(c_int::MAX);
        // SAFETY: each iovec covers a slice of guest memory that stays mapped while the
        // slices borrow it (and `guards` pins it for the call); writev only reads them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), count) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// A tap stand-in over any fd (a socket pair in tests).
    #[cfg(test)]
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd, name: &str) -> Tap {
        Tap {
            file: File::from(fd),
            name: name.to_owned(),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::devices::virtio::net::test_utils::{
        if_index, in_new_netns, set_link_up, PacketSocket, TEST_ETHERTYPE,
    };
    use crate::devices::virtio::net::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for (name, why) in [
            ("", "is empty"),
            ("a-very-long-tap0", "is longer than 15 bytes"),
            ("ta/p", "contains a NUL, a slash or white space"),
            ("tap 0", "contains a NUL, a slash or white space"),
            ("ta\0p", "contains a NUL, a slash or white space"),
        ] {
            let err = Tap::open(name).unwrap_err();
            assert!(matches!(err, NetError::TapName { .. }), "{err}");
            assert!(err.to_string().ends_with(why), "{err}");
        }
    }

    /// A frame of our test ethertype, from `src`, with `payload`.
    fn frame(src: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, src]);
        f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Reads tap frames until one has our ethertype (the kernel sends its own IPv6
    /// chatter once the link is up).
    fn read_test_frame(tap: &Tap) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 2048];
        loop {
            match tap.read_frame(&mut buf) {
                Ok(n)
                    if n >= VNET_HDR_LEN + 14
                        && buf[VNET_HDR_LEN + 12..][..2] == TEST_ETHERTYPE.to_be_bytes() =>
                {
                    return buf[..n].to_vec()
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no frame from the tap");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_real_tap_carries_frames_with_vnet_headers_and_goes_away_with_its_fd() {
        in_new_netns("a_real_tap_carries_frames", || {
            let tap = Tap::open("rtap%d").unwrap();
            assert_eq!(tap.name(), "rtap0");
            // The name is taken now: opening it again does not share the device.
            let err = Tap::open("rtap0").unwrap_err();
            assert!(err.to_string().contains("TUNSETIFF"), "{err}");

            // The kernel takes segmentation offloads only with checksum offload.
            tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO)
                .unwrap();
            tap.set_offload(0).unwrap();
            let err = tap.set_offload(TUN_F_TSO4).unwrap_err();
            assert!(err.to_string().contains("TUNSETOFFLOAD"), "{err}");

            set_link_up("rtap0");
            let host = PacketSocket::bind(if_index("rtap0"));

            // Host to guest: the tap reads the frame behind a zeroed vnet header.
            let out = frame(1, b"to the guest");
            host.send(&out);
            let got = read_test_frame(&tap);
            assert_eq!(&got[VNET_HDR_LEN..], &out[..]);
            assert_eq!(got[0], 0, "no offload flags");

            // Guest to host: a vnet header, then the frame, in pieces.
            let back = frame(2, b"to the host, from the guest");
            let (a, b) = back.split_at(9);
            let mut hdr_buf = [0u8; VNET_HDR_LEN];
            let mut a_buf = a.to_vec();
            let mut b_buf = b.to_vec();
            let pieces = [
                VolatileSlice::from(&mut hdr_buf[..]),
                VolatileSlice::from(&mut a_buf[..]),
                VolatileSlice::from(&mut b_buf[..]),
            ];
            assert_eq!(
                tap.write_slices(&pieces).unwrap(),
                VNET_HDR_LEN + back.len()
            );
            assert_eq!(host.recv(Duration::from_secs(5)), back);

            drop(tap);
            assert_eq!(if_index("rtap0"), 0, "the tap went away with its fd");
        });
    }
}
