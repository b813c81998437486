//! Assembles a microVM from a [`VmConfig`]: memory, kernel, devices, vCPUs, in that order,
//! each step a small `attach_*`/`create_*` function.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::boot::{self, BootEntry, BootError};
use crate::arch::x86_64::layout::{MMIO_START, VIRTIO_IRQ_START};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::{self, RegsError};
use crate::config::{ConfigError, VmConfig};
use crate::devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use crate::devices::legacy::serial::{COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::devices::legacy::{EventFdTrigger, Serial, I8042};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, MMIO_LEN, NOTIFY_OFFSET};
use crate::devices::virtio::net::{Net, NetAttacher, NetConfig, NetError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{Bus, BusError};
use crate::event_loop::{DeviceThread, EventLoopError, Subscriber};
use crate::microvm::{Microvm, ResetTrigger, VmEvent, VmStopper};
use crate::vstate::memory::{create_guest_memory, Backing, MemoryError};
use crate::vstate::vcpu::{install_kick_handler, IoBuses, Vcpu, VcpuError, VcpuExited, VcpuStop};
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
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("cannot attach virtio device: {0}")]
    Mmio(#[from] MmioError),
    #[error("no room for another virtio device (at most {0})")]
    TooManyDevices(u32),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot start vCPU thread {id}: {source}")]
    SpawnVcpu { id: u8, source: std::io::Error },
}

/// Boots a microVM and returns once its vCPUs run.
pub fn start_microvm(config: VmConfig) -> Result<Microvm, StartMicrovmError> {
    config.validate()?;
    let vm = Vm::new()?;
    // vhost-user backends map guest RAM themselves: it must be a shareable file.
    let backing = if config.fs.is_empty() {
        Backing::Anonymous
    } else {
        Backing::SharedMemfd
    };
    let mem = create_guest_memory(config.mem_bytes(), backing)?;
    vm.register_memory(&mem)?;

    let (events_tx, events) = channel();
    let mut buses = IoBuses::default();
    let serial = attach_serial(&vm, &mut buses.pio, config.serial_out)?;
    attach_i8042(&mut buses.pio, events_tx.clone())?;
    let mut virtio = VirtioSlots::default();
    for disk in config.disks {
        let block = Block::new(disk)?;
        attach_virtio_device(
            &vm,
            &mem,
            &mut buses.mmio,
            &mut virtio,
            Arc::new(Mutex::new(block)),
        )?;
    }
    if let Some(vsock) = config.vsock {
        let vsock = Vsock::new(vsock)?;
        attach_virtio_device(
            &vm,
            &mem,
            &mut buses.mmio,
            &mut virtio,
            Arc::new(Mutex::new(vsock)),
        )?;
    }
    for fs in config.fs {
        let fs = Fs::new(fs)?;
        attach_virtio_device(
            &vm,
            &mem,
            &mut buses.mmio,
            &mut virtio,
            Arc::new(Mutex::new(fs)),
        )?;
    }
    let net = attach_net(&vm, &mem, &mut buses.mmio, &mut virtio, config.net)?;
    let cmdline = format!("{}{}", config.cmdline, virtio.cmdline);

    let boot = boot::load(&mem, &config.kernel, config.initrd.as_deref(), &cmdline)?;
    regs::write_boot_tables(&mem)?;
    mptable::setup(&mem, config.vcpus)?;
    let devices = DeviceThread::spawn(virtio.subscribers, events_tx.clone())?;

    let vcpus = create_vcpus(&vm, config.vcpus, boot)?;
    install_kick_handler()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut microvm = Microvm {
        vcpus: Vec::with_capacity(vcpus.len()),
        stop: stop.clone(),
        events,
        stopper: VmStopper(events_tx.clone()),
        serial,
        exit: None,
        devices,
        net,
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
                // A thread that unwinds (a panic, in builds that unwind) still reports.
                let report = VcpuReport { id, tx: Some(tx) };
                let exited = vcpu.run(&buses, &stop);
                report.send(exited);
            })
            // Dropping `microvm` on this error path stops the vCPUs already started.
            .map_err(|source| StartMicrovmError::SpawnVcpu { id, source })?;
        microvm.vcpus.push(handle);
    }
    Ok(microvm)
}

/// Sends a vCPU thread's exit to the VM's owner, or, if the thread unwinds before it
/// can, reports the vCPU failed: a vCPU that silently disappears would hang the guest.
struct VcpuReport {
    id: u8,
    tx: Option<Sender<VmEvent>>,
}

impl VcpuReport {
    fn send(mut self, exited: VcpuExited) {
        if let Some(tx) = self.tx.take() {
            // The receiver is gone only when the VM is already torn down.
            let _ = tx.send(VmEvent::Vcpu(exited));
        }
    }
}

impl Drop for VcpuReport {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(VmEvent::Vcpu(VcpuExited {
                id: self.id,
                why: VcpuStop::Failed("its thread panicked".into()),
            }));
        }
    }
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
    let i8042 = I8042::new(ResetTrigger(events));
    bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(i8042)))?;
    Ok(())
}

/// Where the next virtio device goes, and what has been attached so far.
#[derive(Default)]
struct VirtioSlots {
    count: u32,
    cmdline: String,
    subscribers: Vec<Subscriber>,
}

/// GSIs from VIRTIO_IRQ_START up to the last IOAPIC pin.
const MAX_VIRTIO_DEVICES: u32 = mptable::IOAPIC_PINS as u32 - VIRTIO_IRQ_START;

/// Puts a virtio device behind a virtio-mmio transport: its register window on the MMIO
/// bus, queue notifications as ioeventfds, its interrupt as an irqfd, a declaration on
/// the kernel command line, and the device on the event loop.
fn attach_virtio_device<D>(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slots: &mut VirtioSlots,
    device: Arc<Mutex<D>>,
) -> Result<(), StartMicrovmError>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
{
    if slots.count >= MAX_VIRTIO_DEVICES {
        return Err(StartMicrovmError::TooManyDevices(MAX_VIRTIO_DEVICES));
    }
    let base = MMIO_START + u64::from(slots.count) * MMIO_LEN;
    let irq = VIRTIO_IRQ_START + slots.count;
    let irq_evt = eventfd("virtio interrupt")?;
    vm.register_irqfd(&irq_evt, irq)?;
    let transport = MmioTransport::new(
        device.clone(),
        mem.clone(),
        Arc::new(Interrupt::new(irq_evt)),
    )?;
    for (queue, evt) in (0u32..).zip(transport.notify_evts()) {
        vm.register_ioevent(evt, base + NOTIFY_OFFSET, queue)?;
    }
    mmio.insert(base, MMIO_LEN, Arc::new(Mutex::new(transport)))?;
    slots.count += 1;
    slots.cmdline += &format!(" virtio_mmio.device=4K@{base:#x}:{irq}");
    slots.subscribers.push(device);
    Ok(())
}

/// The virtio-net devices, in order, and the handle that attaches their taps later.
fn attach_net(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slots: &mut VirtioSlots,
    configs: Vec<NetConfig>,
) -> Result<NetAttacher, StartMicrovmError> {
    let mut attacher = NetAttacher::default();
    for (index, config) in configs.into_iter().enumerate() {
        let net = Arc::new(Mutex::new(Net::new(index, config, mem)?));
        attacher.devices.push(Arc::downgrade(&net));
        attach_virtio_device(vm, mem, mmio, slots, net)?;
    }
    Ok(attacher)
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
