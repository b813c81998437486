//! A vCPU: its boot state, and the thread loop that runs it and routes its exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::vm::Vm;
use crate::arch::x86_64::boot::BootEntry;
use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::devices::Bus;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {id} failed: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("vCPU {id}: {op} failed: {source}")]
    Ioctl {
        id: u8,
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: {source}")]
    Msr { id: u8, source: msr::MsrError },
    #[error("vCPU {id}: KVM accepted only {set} of {wanted} boot MSRs")]
    MsrCount { id: u8, set: usize, wanted: usize },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    SignalHandler(vmm_sys_util::errno::Error),
}

/// Why a vCPU thread stopped running its vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest triple-faulted (a `reboot=t` reboot, or a fatal guest bug).
    TripleFault,
    /// The host asked the vCPU to stop.
    Kicked,
    /// KVM could not go on running the guest.
    Failed(String),
}

/// Sent by a vCPU thread when it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuExited {
    pub id: u8,
    pub why: VcpuStop,
}

/// The buses a vCPU's I/O exits are routed to.
#[derive(Debug, Default)]
pub struct IoBuses {
    pub pio: Bus,
    pub mmio: Bus,
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("id", &self.id).finish()
    }
}

/// The signal that knocks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick signal handler once per process: its only job is to make
/// KVM_RUN return EINTR, so the thread sees its stop flag.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result =
            register_signal_handler(kick_signal(), noop_handler).map_err(VcpuError::SignalHandler);
    });
    result
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Self { id, fd })
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    fn ioctl<T>(&self, op: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuError> {
        r.map_err(|source| VcpuError::Ioctl {
            id: self.id,
            op,
            source,
        })
    }

    /// Sets CPUID, MSRs, FPU and LAPIC for every vCPU, and the PVH entry state for the
    /// boot vCPU (the others wait for the kernel's INIT/SIPI).
    pub fn configure(&self, vm: &Vm, count: u8, boot: BootEntry) -> Result<(), VcpuError> {
        let id = self.id;
        let mut cpuid = self.ioctl(
            "KVM_GET_SUPPORTED_CPUID",
            vm.kvm().get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        )?;
        let tsc_deadline = vm.kvm().check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        cpuid::patch_for_vcpu(&mut cpuid, id, count, tsc_deadline);
        self.ioctl("KVM_SET_CPUID2", self.fd.set_cpuid2(&cpuid))?;

        let msrs = msr::boot_msrs().map_err(|source| VcpuError::Msr { id, source })?;
        let set = self.ioctl("KVM_SET_MSRS", self.fd.set_msrs(&msrs))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::MsrCount {
                id,
                set,
                wanted: msrs.as_slice().len(),
            });
        }

        self.ioctl("KVM_SET_FPU", self.fd.set_fpu(&regs::boot_fpu()))?;
        let mut lapic = self.ioctl("KVM_GET_LAPIC", self.fd.get_lapic())?;
        interrupts::set_lint(&mut lapic);
        self.ioctl("KVM_SET_LAPIC", self.fd.set_lapic(&lapic))?;

        if id == 0 {
            let sregs = self.ioctl("KVM_GET_SREGS", self.fd.get_sregs())?;
            self.ioctl("KVM_SET_SREGS", self.fd.set_sregs(&regs::pvh_sregs(sregs)))?;
            let r = regs::pvh_regs(boot.entry, boot.start_info);
            self.ioctl("KVM_SET_REGS", self.fd.set_regs(&r))?;
        }
        Ok(())
    }

    /// The registers that place a guest crash: instruction and stack pointers, the page
    /// table root, the descriptor tables, the mode.
    fn where_now(&self) -> String {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "its registers cannot be read".into();
        };
        // KVM on AMD clears the VMCB and resets the vCPU when it sees the shutdown, so
        // the registers read back are the reset vector's, not the crash's.
        if r.rip == 0xfff0 && s.cs.selector == 0xf000 && s.cr0 & 1 == 0 {
            return "KVM reset the vCPU on the shutdown (as on AMD), so where it faulted is lost"
                .into();
        }
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} \
             efer={:#x} idt={:#x}/{:#x} gdt={:#x}/{:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            s.cs.selector,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.idt.base,
            s.idt.limit,
            s.gdt.base,
            s.gdt.limit
        )
    }

    /// Runs the vCPU until the guest stops it, KVM fails, or `stop` is set and the thread
    /// is kicked; says why.
    pub fn run(mut self, buses: &IoBuses, stop: &AtomicBool) -> VcpuExited {
        let mut exits = ExitCounts::default();
        let why = loop {
            if stop.load(Ordering::Acquire) {
                break VcpuStop::Kicked;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    exits.count("pio-out", u64::from(port));
                    buses.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    exits.count("pio-in", u64::from(port));
                    buses.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    exits.count("mmio-read", addr);
                    buses.mmio.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    exits.count("mmio-write", addr);
                    buses.mmio.write(addr, data);
                }
                Ok(VcpuExit::Shutdown) => {
                    // runm guests reboot through the i8042 (`reboot=k`), so a triple fault is a
                    // guest crash: where it happened is the first thing to debug it.
                    log::warn!(
                        "vCPU {}: the guest triple-faulted; {}",
                        self.id,
                        self.where_now()
                    );
                    break VcpuStop::TripleFault;
                }
                Ok(VcpuExit::Hlt) => break VcpuStop::Failed("vCPU halted".into()),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    break VcpuStop::Failed(format!(
                        "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    ))
                }
                Ok(VcpuExit::InternalError) => {
                    break VcpuStop::Failed("KVM internal error (emulation failure)".into())
                }
                Ok(other) => break VcpuStop::Failed(format!("unexpected KVM exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => break VcpuStop::Failed(format!("KVM_RUN failed: {e}")),
            }
        };
        log::debug!(
            "vCPU {} stopped: {why:?}; exits to the VMM: {exits}",
            self.id
        );
        VcpuExited { id: self.id, why }
    }
}

/// Exits to the VMM by kind and address: each is costly (more so on nested hosts), so
/// this is where boot time hides. Logged at debug level when the vCPU stops.
#[derive(Debug, Default)]
struct ExitCounts {
    by_addr: std::collections::HashMap<(&'static str, u64), u64>,
}

impl ExitCounts {
    fn count(&mut self, kind: &'static str, addr: u64) {
        *self.by_addr.entry((kind, addr)).or_default() += 1;
    }
}

impl std::fmt::Display for ExitCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut all: Vec<_> = self.by_addr.iter().collect();
        all.sort_by(|a, b| b.1.cmp(a.1));
        let total: u64 = all.iter().map(|(_, n)| **n).sum();
        write!(f, "{total} in all")?;
        for ((kind, addr), n) in all.iter().take(12) {
            write!(f, ", {kind} {addr:#x}: {n}")?;
        }
        Ok(())
    }
}
