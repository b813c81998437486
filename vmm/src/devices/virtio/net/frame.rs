//! Frames in and out of descriptor chains, checked against guest memory, knowing nothing
//! of taps or event loops.
//!
//! Both ways a frame is a 12-byte `virtio_net_hdr_v1` followed by an Ethernet frame, which
//! is also what the tap reads and writes, so the header is passed through untouched except
//! for `num_buffers` on rx, which the device owns.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions, VolatileSlice,
};

use super::{ETH_HLEN, MAX_BUFFER_LEN, NUM_BUFFERS_OFFSET, VNET_HDR_LEN};

/// Why a chain (or the frame bound for it) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a device-writable descriptor in a tx chain")]
    WriteOnly,
    #[error("a device-readable descriptor in an rx chain")]
    ReadOnly,
    #[error("{len} bytes at {addr:#x} are not all guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("{0} bytes are too few for a virtio-net header and an Ethernet header")]
    TooShort(usize),
    #[error("more than {MAX_BUFFER_LEN} bytes")]
    TooLong,
    #[error("an rx chain of {0} bytes has no room for the virtio-net header")]
    NoRoomForHeader(usize),
    #[error("a frame of {frame} bytes does not fit the rx buffer of {room} bytes")]
    DoesNotFit { frame: usize, room: usize },
    #[error("cannot return the chain to the driver: {0}")]
    Used(String),
}

/// The frame of a tx chain (header included) as guest slices, every byte readable, in
/// order, for one `writev`. Zero-length descriptors are skipped.
pub fn tx_frame<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&'a GuestMemoryMmap>,
) -> Result<Vec<VolatileSlice<'a, ()>>, FrameError> {
    let mut slices = Vec::new();
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(FrameError::WriteOnly);
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        total = total.saturating_add(len);
        if total > MAX_BUFFER_LEN {
            return Err(FrameError::TooLong);
        }
        let outside = || FrameError::OutsideMemory {
            addr: desc.addr().0,
            len: desc.len(),
        };
        let pieces = GuestMemory::get_slices(mem, desc.addr(), len, Permissions::Read)
            .map_err(|_| outside())?;
        for piece in pieces {
            slices.push(piece.map_err(|_| outside())?);
        }
    }
    if total < VNET_HDR_LEN + ETH_HLEN {
        return Err(FrameError::TooShort(total));
    }
    Ok(slices)
}

/// Where one rx chain takes bytes.
#[derive(Debug)]
struct RxChain {
    head: u16,
    segments: Vec<(GuestAddress, usize)>,
    room: usize,
}

fn rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<RxChain, FrameError> {
    let head = chain.head_index();
    let mut segments = Vec::new();
    let mut room = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(FrameError::ReadOnly);
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        if !GuestMemory::check_range(mem, desc.addr(), len, Permissions::Write) {
            return Err(FrameError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        segments.push((desc.addr(), len));
        room = room.saturating_add(len);
    }
    Ok(RxChain {
        head,
        segments,
        room,
    })
}

/// What became of a frame offered to the rx queue.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// The frame is in the guest, over `buffers` chains.
    Delivered { buffers: u16 },
    /// The guest has too few rx buffers for it now; every chain taken was put back.
    /// Keep the frame and wait for the driver to add buffers.
    NoBuffers,
    /// The frame is lost: it does not fit the guest's buffer (which stays available),
    /// or an rx chain was malformed (it was returned, with every chain taken before it).
    Dropped(FrameError),
}

/// Copies `frame` (header and Ethernet frame) into the next rx chain, or, when
/// `mergeable` (VIRTIO_NET_F_MRG_RXBUF), as many chains as it takes; sets `num_buffers`.
pub fn deliver_frame(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut [u8],
    mergeable: bool,
) -> RxOutcome {
    deliver_frame_racing(mem, queue, frame, mergeable, || {})
}

/// [`deliver_frame`], with `looked_empty` run each time the available ring has just been
/// found empty, before the device asks for the driver's next notification: where a
/// driver adding buffers at that moment races the device (tests add buffers there).
fn deliver_frame_racing(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut [u8],
    mergeable: bool,
    mut looked_empty: impl FnMut(),
) -> RxOutcome {
    if frame.len() < VNET_HDR_LEN {
        return RxOutcome::Dropped(FrameError::TooShort(frame.len()));
    }
    let mut chains: Vec<RxChain> = Vec::new();
    let mut room = 0usize;
    // Whether notifications were enabled since the last chain was taken.
    let mut asked = false;
    while room < frame.len() && (mergeable || chains.is_empty()) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Out of buffers: ask the driver to notify when it adds the next one
            // (EVENT_IDX: avail_event = next_avail), then look again, since it may
            // have added some meanwhile; those are taken now. The request is made
            // again after every chain taken, so that a frame held for buffers has
            // avail_event at the end of all the driver has made available: one made
            // before a recheck that found more buffers, but still too few, would lie
            // behind them, and the driver, which notifies only when its available
            // index crosses avail_event, would never notify again (the frame, and
            // every one behind it in the tap, would wait for the next frame from the
            // tap). An available index that says there are more but yields none
            // (corrupt) is not waited on.
            if !asked {
                asked = true;
                looked_empty();
                if queue.enable_notification(mem).unwrap_or(false) {
                    continue;
                }
            }
            for _ in &chains {
                queue.go_to_previous_position();
            }
            return RxOutcome::NoBuffers;
        };
        asked = false;
        let head = chain.head_index();
        let bad = match rx_chain(mem, chain) {
            Ok(c) if chains.is_empty() && c.room < VNET_HDR_LEN => {
                Some(FrameError::NoRoomForHeader(c.room))
            }
            Ok(c) if c.room == 0 => Some(FrameError::NoRoomForHeader(0)),
            Ok(c) => {
                room = room.saturating_add(c.room);
                chains.push(c);
                None
            }
            Err(e) => Some(e),
        };
        if let Some(e) = bad {
            // The driver broke its own buffers: they go back unused, the frame is lost.
            let heads = chains.iter().map(|c| c.head).chain([head]);
            for head in heads {
                if let Err(used) = queue.add_used(mem, head, 0) {
                    return RxOutcome::Dropped(FrameError::Used(used.to_string()));
                }
            }
            return RxOutcome::Dropped(e);
        }
    }
    if room < frame.len() {
        // One buffer (no MRG_RXBUF) too small for this frame: it may fit the next.
        queue.go_to_previous_position();
        return RxOutcome::Dropped(FrameError::DoesNotFit {
            frame: frame.len(),
            room,
        });
    }
    let buffers = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&buffers.to_le_bytes());
    let mut rest: &[u8] = frame;
    let mut used = Vec::with_capacity(chains.len());
    for chain in &chains {
        let mut written = 0usize;
        for &(addr, len) in &chain.segments {
            let n = len.min(rest.len());
            if n == 0 {
                break;
            }
            // The range was checked when the chain was taken.
            if let Err(e) = mem.write_slice(&rest[..n], addr) {
                return RxOutcome::Dropped(FrameError::Used(e.to_string()));
            }
            rest = &rest[n..];
            written += n;
        }
        used.push((chain.head, u32::try_from(written).unwrap_or(u32::MAX)));
    }
    if let Err(e) = publish_used(mem, queue, &used) {
        return RxOutcome::Dropped(FrameError::Used(e.to_string()));
    }
    RxOutcome::Delivered { buffers }
}

/// Puts a frame's chains in the used ring and only then moves the used index past all
/// of them. The driver reads `num_buffers` from the first and takes the rest at once:
/// one by one (`Queue::add_used`), it could see the first before the others are there,
/// and drop the frame ("buffers missing"). Does not count them for
/// `Queue::needs_notification`: rx asks [`rx_needs_notification`] instead.
fn publish_used(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    used: &[(u16, u32)],
) -> Result<(), vm_memory::GuestMemoryError> {
    let size = queue.size();
    let start = queue.next_used();
    let ring = GuestAddress(queue.used_ring());
    for (i, &(head, len)) in used.iter().enumerate() {
        let slot = start.wrapping_add(u16::try_from(i).unwrap_or(u16::MAX)) % size.max(1);
        // struct virtq_used_elem { le32 id; le32 len; } after the flags and idx.
        let at = ring.unchecked_add(4 + u64::from(slot) * 8);
        mem.write_obj(u32::from(head).to_le(), at)?;
        mem.write_obj(len.to_le(), at.unchecked_add(4))?;
    }
    let next = start.wrapping_add(u16::try_from(used.len()).unwrap_or(u16::MAX));
    // The elements must be visible before the index that publishes them.
    mem.store(next.to_le(), ring.unchecked_add(2), Ordering::Release)?;
    queue.set_next_used(next);
    Ok(())
}

/// Whether the driver wants an interrupt for the rx entries used since `old` (the used
/// index before them): with EVENT_IDX, when its `used_event` lies in `[old, next)`, as
/// `Queue::needs_notification` decides for entries it counted itself.
pub fn rx_needs_notification(
    mem: &GuestMemoryMmap,
    queue: &Queue,
    old: u16,
) -> Result<bool, vm_memory::GuestMemoryError> {
    let next = queue.next_used();
    if !queue.event_idx_enabled() {
        return Ok(next != old);
    }
    fence(Ordering::SeqCst);
    // `used_event` follows the available ring's flags, idx and `size` entries.
    let at = GuestAddress(queue.avail_ring()).unchecked_add(4 + 2 * u64::from(queue.size()));
    let used_event = u16::from_le(mem.load(at, Ordering::Acquire)?);
    Ok(next.wrapping_sub(used_event).wrapping_sub(1) < next.wrapping_sub(old))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::net::test_utils::*;
    use crate::devices::virtio::net::QUEUE_SIZE;

    /// Whether a Linux driver that moved its available index from `old` to `new` notifies
    /// the device: `vring_need_event(avail_event, new, old)` (virtio 1.2 §2.7.10), with
    /// `avail_event` where the device left it, after the used ring.
    fn driver_notifies(q: &MockQueue<'_>, mem: &GuestMemoryMmap, old: u16, new: u16) -> bool {
        let at = q.used_addr().0 + 4 + 8 * u64::from(QUEUE_SIZE);
        let avail_event: u16 = mem.read_obj(GuestAddress(at)).unwrap();
        new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// The lost rx notification: a merged frame finds the ring empty, the driver adds a
    /// buffer just then (and, reading the avail_event of before, does not notify), the
    /// device's recheck takes it, and the frame still does not fit. The frame is held
    /// for the driver's next notification, which must then come with the next buffer.
    #[test]
    fn a_frame_held_after_a_recheck_is_resumed_by_the_next_buffer() {
        let mem = guest_memory();
        let (rxq, _txq) = queues(&mem);
        let mut queue: Queue = rxq.create_queue().unwrap();
        queue.set_event_idx(true);
        post_rx_buffers(&rxq, 0, 1, 1000);
        let mut frame = vnet_frame(0, 0, 2500, 1);

        let raced = Cell::new(false);
        let outcome = deliver_frame_racing(&mem, &mut queue, &mut frame, true, || {
            if !raced.replace(true) {
                post_rx_buffers(&rxq, 1, 1, 1000);
                assert!(!driver_notifies(&rxq, &mem, 1, 2), "it raced");
            }
        });
        assert_eq!(outcome, RxOutcome::NoBuffers);
        assert!(raced.get());
        assert_eq!(queue.next_avail(), 0, "every chain taken was put back");

        post_rx_buffers(&rxq, 2, 1, 1000);
        assert!(
            driver_notifies(&rxq, &mem, 2, 3),
            "the driver would not notify: the held frame would wait for the next tap frame"
        );
        let outcome = deliver_frame(&mem, &mut queue, &mut frame, true);
        assert_eq!(outcome, RxOutcome::Delivered { buffers: 3 });
    }
}
