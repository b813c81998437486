//! Where things live in guest physical memory at boot.

/// Boot GDT (4 entries of 8 bytes).
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT; the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, passed to the kernel in %ebx.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const MODLIST_START: u64 = 0x6040;
/// PVH memory map (E820-like entries).
pub const MEMMAP_START: u64 = 0x7000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room reserved for the command line, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area: low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table lives in the EBDA, where the kernel searches for it.
pub const MPTABLE_START: u64 = EBDA_START;
/// Local APIC and IOAPIC register windows (architectural defaults).
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// virtio-mmio devices: one 4 KiB window each from here, above the RAM limit and below
/// the IOAPIC.
pub const MMIO_START: u64 = 0xd000_0000;
/// First GSI for virtio devices: 0-4 belong to the PIT, keyboard, cascade and COM ports.
pub const VIRTIO_IRQ_START: u32 = 5;
/// First address above the legacy 640 KiB-1 MiB hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 8 KiB stack the PVH entry code does not need, but KVM's TSS does.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
