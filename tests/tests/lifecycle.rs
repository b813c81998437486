//! The vmm library's lifecycle API on real guests: every way a VM ends (the guest shuts
//! down, the host kills it mid-boot, another thread stops it, a timeout) joins its
//! threads and closes its fds.

use std::path::PathBuf;
use std::time::Duration;

use runm_tests::*;
use vmm::devices::virtio::block::BlockConfig;
use vmm::{ExitReason, VmConfig};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Open fds and live threads of this process.
fn resources() -> (usize, usize) {
    (count("/proc/self/fd"), count("/proc/self/task"))
}

fn config(cmdline: &str, disks: Vec<BlockConfig>) -> VmConfig {
    let guest = target_profile_dir().join("../guest");
    VmConfig {
        kernel: guest.join("vmlinux"),
        initrd: Some(test_initramfs()),
        cmdline: format!("{} quiet {cmdline}", vmm::config::DEFAULT_CMDLINE),
        vcpus: 2,
        mem_mib: 128,
        serial_out: Box::new(std::io::sink()),
        disks,
        vsock: None,
        fs: Vec::new(),
        net: Vec::new(),
    }
}

#[test]
fn every_exit_path_releases_threads_and_fds() {
    require_kvm();
    let _vm = vm_lock();
    let dir = TempDir::new("lifecycle");
    let disk: PathBuf = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disks = || {
        vec![BlockConfig {
            path: disk.clone(),
            read_only: false,
        }]
    };
    let before = resources();

    // 1. The guest powers off by itself.
    let mut vm = vmm::start_microvm(config("runm.test=cpus", disks())).unwrap();
    let exit = vm.wait(Some(Duration::from_secs(600))).unwrap();
    assert_eq!(exit, ExitReason::GuestShutdown);
    drop(vm);
    assert_eq!(resources(), before, "after a guest shutdown");

    // 2. The host kills it while it boots.
    let mut vm = vmm::start_microvm(config("runm.test=cpus", disks())).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    vm.kill();
    assert_eq!(vm.wait(None).unwrap(), ExitReason::Killed);
    drop(vm);
    assert_eq!(resources(), before, "after a kill");

    // 2b. Another thread stops it (as the host process does when virtiofsd dies).
    let mut vm = vmm::start_microvm(config("runm.test=cpus", disks())).unwrap();
    let stopper = vm.stopper();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stopper.stop();
    });
    assert_eq!(vm.wait(None).unwrap(), ExitReason::Killed);
    drop(vm);
    assert_eq!(resources(), before, "after a stop from another thread");

    // 3. The guest hangs (no init, panic=0) and the wait times out.
    let mut vm = vmm::start_microvm(config("rdinit=/none panic=0", disks())).unwrap();
    let err = vm.wait(Some(Duration::from_secs(15))).unwrap_err();
    assert!(err.to_string().contains("did not stop"), "{err}");
    drop(vm);
    assert_eq!(resources(), before, "after a timeout");

    // 4. A start that fails half-way (a missing disk after a good one) leaves nothing.
    let mut bad = disks();
    bad.push(BlockConfig {
        path: dir.join("missing.img"),
        read_only: false,
    });
    let err = vmm::start_microvm(config("", bad)).unwrap_err();
    assert!(err.to_string().contains("missing.img"), "{err}");
    assert_eq!(resources(), before, "after a failed start");
}
