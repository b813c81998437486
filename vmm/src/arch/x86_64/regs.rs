//! Initial vCPU registers for the PVH entry: flat 32-bit protected mode, paging off.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START};

const X86_CR0_PE: u64 = 0x1;
/// Reserved bit 1 of RFLAGS is always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// Boot GDT: null, 32-bit code, 32-bit data, TSS. The kernel replaces it at once; KVM
/// only needs the descriptors to be consistent with the segment registers.
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0xfffff),
];

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT into guest memory: {0}")]
    WriteTables(vm_memory::GuestMemoryError),
}

/// Packs a segment descriptor (flags in the Intel layout: G, D/B, L, AVL, P, DPL, S, type).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Expands a descriptor into the form KVM keeps in segment registers.
fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    // Every field extracted here is masked to at most 4 bits.
    #[allow(clippy::cast_possible_truncation)]
    let bits = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = bits(55, 1);
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages: expand it to bytes.
        limit: u32::try_from(if g == 1 { (limit << 12) | 0xfff } else { limit })
            .unwrap_or(u32::MAX),
        selector: u16::from(index) * 8,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 0x3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g,
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::WriteTables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteTables)
}

/// Segment and control registers for the PVH entry, based on the vCPU's current ones.
pub fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = kvm_segment_from_gdt(GDT[1], 1);
    let data = kvm_segment_from_gdt(GDT[2], 2);
    let tss = kvm_segment_from_gdt(GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&GDT) - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers: the entry point, and %ebx pointing at `hvm_start_info`.
pub fn pvh_regs(entry: GuestAddress, start_info: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.0,
        rbx: start_info.0,
        ..Default::default()
    }
}

/// FPU in its power-on state (x87 control word and MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = kvm_segment_from_gdt(GDT[1], 1);
        assert_eq!((code.base, code.limit, code.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (code.type_, code.present, code.db, code.s, code.g),
            (0xb, 1, 1, 1, 1)
        );
        let data = kvm_segment_from_gdt(GDT[2], 2);
        assert_eq!((data.type_, data.selector), (0x3, 16));
        let tss = kvm_segment_from_gdt(GDT[3], 3);
        assert_eq!((tss.type_, tss.s, tss.selector), (0xb, 0, 24));
    }

    #[test]
    fn pvh_state_is_protected_mode_without_paging() {
        let sregs = pvh_sregs(kvm_sregs::default());
        assert_eq!(sregs.cr0, X86_CR0_PE);
        assert_eq!(sregs.efer, 0);
        let regs = pvh_regs(GuestAddress(0x100_0000), GuestAddress(0x6000));
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0000, 0x6000, 2));
    }

    #[test]
    fn boot_tables_land_in_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let e: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(e, GDT[1]);
    }
}
