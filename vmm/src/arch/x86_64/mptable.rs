//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI learns its
//! CPUs, its IOAPIC and how ISA interrupt lines reach it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_START};

/// Interrupt pins on the IOAPIC; all of them are routed as ISA IRQs 0-23.
pub const IOAPIC_PINS: u8 = 24;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature and the FPU + APIC feature flags, as a BIOS would report.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const BUS_ISA: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in an MP table (1 to 254)")]
    TooManyCpus(u8),
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// The IOAPIC pin an ISA IRQ arrives on. KVM's default routing, like a PC's, wires the
/// PIT (IRQ 0) to pin 2; the guest's timer check would otherwise find no timer on pin 0
/// and fall back through slow alternatives.
fn ioapic_pin(irq: u8) -> u8 {
    match irq {
        0 => 2,
        2 => 0,
        n => n,
    }
}

/// Bytes whose sum is zero (mod 256), as every MP structure's checksum requires.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

/// Builds the floating pointer and the configuration table for `cpus` vCPUs.
pub fn build(cpus: u8) -> Result<Vec<u8>, MptableError> {
    // APIC id 255 is the broadcast id, and the IOAPIC takes the id after the last CPU.
    if cpus == 0 || cpus == u8::MAX {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus + 1;
    let mut entries = Vec::new();
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, BUS_ISA]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    for irq in 0..IOAPIC_PINS {
        let pin = ioapic_pin(irq);
        entries.extend_from_slice(&[
            ENTRY_INTSRC,
            INT_TYPE_INT,
            0,
            0,
            BUS_ISA,
            irq,
            ioapic_id,
            pin,
        ]);
    }
    // LINT0 carries the 8259's ExtINT, LINT1 NMIs, on every CPU (0xff).
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, BUS_ISA, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, BUS_ISA, 0, 0xff, 1]);
    let entry_count = u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2;

    const HEADER_LEN: usize = 44;
    let table_len =
        u16::try_from(HEADER_LEN + entries.len()).map_err(|_| MptableError::TooManyCpus(cpus))?;
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]); // checksum patched below
    table.extend_from_slice(b"RUNM    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    // The floating pointer comes first and points at the table right after it.
    let table_addr = u32::try_from(MPTABLE_START + 16).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs where the guest kernel looks for it (the EBDA).
pub fn setup(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_lengths_are_consistent() {
        for cpus in [1, 2, 4, 32] {
            let b = build(cpus).unwrap();
            assert_eq!(&b[0..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0, "floating pointer checksum");
            let table = &b[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(cpus) + 2 + 24 + 2);
            let ptr = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            assert_eq!(u64::from(ptr), MPTABLE_START + 16);
        }
    }

    #[test]
    fn only_cpu_zero_is_the_boot_processor() {
        let b = build(3).unwrap();
        let cpu = |i: usize| &b[16 + 44 + 20 * i..16 + 44 + 20 * (i + 1)];
        assert_eq!(cpu(0)[3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        assert_eq!((cpu(1)[1], cpu(1)[3]), (1, CPU_ENABLED));
        assert_eq!((cpu(2)[1], cpu(2)[3]), (2, CPU_ENABLED));
    }

    #[test]
    fn the_pit_irq_reaches_ioapic_pin_2_as_kvm_routes_it() {
        let b = build(1).unwrap();
        // Interrupt source entries follow 1 CPU (20 bytes), the bus and the IOAPIC (8 each).
        let intsrc =
            |irq: usize| &b[16 + 44 + 20 + 16 + 8 * irq..16 + 44 + 20 + 16 + 8 * (irq + 1)];
        assert_eq!(
            (intsrc(0)[0], intsrc(0)[5], intsrc(0)[7]),
            (ENTRY_INTSRC, 0, 2)
        );
        assert_eq!((intsrc(2)[5], intsrc(2)[7]), (2, 0));
        assert_eq!((intsrc(4)[5], intsrc(4)[7]), (4, 4), "COM1 keeps its pin");
        assert_eq!(
            (intsrc(5)[5], intsrc(5)[7]),
            (5, 5),
            "virtio IRQs keep theirs"
        );
    }

    #[test]
    fn refuses_zero_and_too_many_cpus() {
        assert!(build(0).is_err());
        assert!(build(255).is_err());
    }

    #[test]
    fn fits_below_the_legacy_hole() {
        let b = build(32).unwrap();
        assert!(MPTABLE_START + b.len() as u64 <= 0xa0000);
    }
}
