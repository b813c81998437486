//! Assembles a microVM from a [`VmConfig`]: memory, kernel, devices, vCPUs, in that order,
//! each step a small `attach_*`/`create_*` function.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::boot::{self, BootEntry, BootError};
use crate::arch::x86_64::regs::{self, RegsError};
use crate::config::{ConfigError, VmConfig};
use crate::devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use crate::devices::legacy::serial::{COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::devices::legacy::{EventFdTrigger, Serial, I8042};
use crate::devices::{Bus, BusError};
use crate::microvm::{Microvm, ResetTrigger, VmEvent};
use crate::vstate::memory::{create_guest_memory, MemoryError};
use crate::vstate::vcpu::{install_kick_handler, IoBuses, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

/// Why a microVM could not be started. Nothing is left running when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum StartMicrovmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot attach device: {0}")]
    Bus(#[from] BusError),
    #[error("cannot create the {what} eventfd: {source}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start vCPU thread {id}: {source}")]
    SpawnVcpu { id: u8, source: std::io::Error },
}

/// Boots a microVM and returns once its vCPUs run.
pub fn start_microvm(config: VmConfig) -> Result<Microvm, StartMicrovmError> {
    config.validate()?;
    let vm = Vm::new()?;
    let mem = create_guest_memory(config.mem_bytes())?;
    vm.register_memory(&mem)?;

    let boot = boot::load(
        &mem,
        &config.kernel,
        config.initrd.as_deref(),
        &config.cmdline,
    )?;
    regs::write_boot_tables(&mem)?;

    let (events_tx, events) = channel();
    let mut buses = IoBuses::default();
    let serial = attach_serial(&vm, &mut buses.pio, config.serial_out)?;
    attach_i8042(&mut buses.pio, events_tx.clone())?;

    let vcpus = create_vcpus(&vm, config.vcpus, boot)?;
    install_kick_handler()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut microvm = Microvm {
        vcpus: Vec::with_capacity(vcpus.len()),
        stop: stop.clone(),
        events,
        serial,
        exit: None,
        _vm: vm,
        _mem: mem,
    };
    let buses = Arc::new(buses);
    for vcpu in vcpus {
        let id = vcpu.id();
        let (buses, stop, tx) = (buses.clone(), stop.clone(), events_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let exited = vcpu.run(&buses, &stop);
                // The receiver is gone only when the VM is already torn down.
                let _ = tx.send(VmEvent::Vcpu(exited));
            })
            // Dropping `microvm` on this error path stops the vCPUs already started.
            .map_err(|source| StartMicrovmError::SpawnVcpu { id, source })?;
        microvm.vcpus.push(handle);
    }
    Ok(microvm)
}

fn eventfd(what: &'static str) -> Result<EventFd, StartMicrovmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| StartMicrovmError::EventFd { what, source })
}

/// COM1, wired to IRQ 4 through an irqfd.
fn attach_serial(
    vm: &Vm,
    bus: &mut Bus,
    out: Box<dyn std::io::Write + Send>,
) -> Result<Arc<Mutex<Serial>>, StartMicrovmError> {
    let irq = eventfd("serial interrupt")?;
    vm.register_irqfd(&irq, COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(Serial::new(EventFdTrigger(irq), out)));
    bus.insert(COM1_BASE, COM1_LEN, serial.clone())?;
    Ok(serial)
}

/// The i8042, whose reset command ends the VM's run.
fn attach_i8042(bus: &mut Bus, events: Sender<VmEvent>) -> Result<(), StartMicrovmError> {
    let i8042 = I8042::new(ResetTrigger(Mutex::new(events)));
    bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(i8042)))?;
    Ok(())
}

fn create_vcpus(vm: &Vm, count: u8, boot: BootEntry) -> Result<Vec<Vcpu>, StartMicrovmError> {
    (0..count)
        .map(|id| {
            let vcpu = Vcpu::new(vm, id)?;
            vcpu.configure(vm, count, boot)?;
            Ok(vcpu)
        })
        .collect()
}
