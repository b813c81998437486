//! Framing of the kernel's datagrams: the netlink messages in one datagram, checked
//! against its length before use, and what they mean for the request in flight. Kept
//! apart from the socket so that it can be fed crafted bytes in tests.

use netlink_packet_core::{
    NetlinkBuffer, NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    NLM_F_DUMP_INTR,
};

/// The size of a netlink message header (struct nlmsghdr).
const NETLINK_HEADER_LEN: usize = 16;
/// NLM_F_CAPPED on an NLMSG_ERROR: only the request's header is quoted back.
const NLM_F_CAPPED: u16 = 0x100;
/// NLM_F_ACK_TLVS on an NLMSG_ERROR: extended ack attributes follow the quote.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// NLMSGERR_ATTR_MSG: the kernel's reason, as a string.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Where one datagram left the request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// More datagrams are to come.
    More { interrupted: bool },
    /// The request's NLMSG_DONE or ack was in it.
    Done { interrupted: bool },
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScanError {
    Kernel { errno: i32, message: Option<String> },
    Malformed(String),
}

/// Goes through the messages of `datagram`, handing those answering `seq` (other than
/// the control messages) to `on_message` as type and payload.
pub(crate) fn scan(
    datagram: &[u8],
    seq: u32,
    on_message: &mut dyn FnMut(u16, &[u8]),
) -> Result<Scan, ScanError> {
    let mut rest = datagram;
    let mut interrupted = false;
    while rest.len() >= NETLINK_HEADER_LEN {
        let message = NetlinkBuffer::new_checked(rest)
            .map_err(|e| ScanError::Malformed(format!("bad netlink header: {e}")))?;
        let len = message.length() as usize;
        if message.sequence_number() == seq {
            interrupted |= message.flags() & NLM_F_DUMP_INTR != 0;
            let payload = message.payload();
            match message.message_type() {
                NLMSG_NOOP => {}
                NLMSG_DONE => {
                    // A dump can end with an error (its first four bytes), e.g. when
                    // its filter was refused.
                    match read_i32(payload) {
                        Some(code) if code < 0 => {
                            return Err(ScanError::Kernel {
                                errno: code.saturating_neg(),
                                message: ext_ack(message.flags(), payload),
                            })
                        }
                        _ => return Ok(Scan::Done { interrupted }),
                    }
                }
                NLMSG_ERROR => {
                    let code = read_i32(payload).ok_or_else(|| {
                        ScanError::Malformed("NLMSG_ERROR shorter than its code".into())
                    })?;
                    if code == 0 {
                        return Ok(Scan::Done { interrupted });
                    }
                    return Err(ScanError::Kernel {
                        errno: code.saturating_abs(),
                        message: ext_ack(message.flags(), payload),
                    });
                }
                NLMSG_OVERRUN => {
                    return Err(ScanError::Malformed(
                        "the kernel reported an overrun".into(),
                    ))
                }
                kind => on_message(kind, payload),
            }
        }
        // Messages are 4-byte aligned; the last may omit its padding.
        let step = len.saturating_add(3) & !3;
        rest = rest.get(step..).unwrap_or_default();
    }
    if !rest.is_empty() {
        return Err(ScanError::Malformed(format!(
            "{} stray bytes after the last message",
            rest.len()
        )));
    }
    Ok(Scan::More { interrupted })
}

fn read_i32(bytes: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// The kernel's reason in an NLMSG_ERROR or NLMSG_DONE payload, if it gave one.
fn ext_ack(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The code, then the request's header (and its payload unless capped).
    let quoted = payload.get(4..)?;
    let skip = if quoted.len() < NETLINK_HEADER_LEN {
        0
    } else if flags & NLM_F_CAPPED != 0 {
        NETLINK_HEADER_LEN
    } else {
        let len = u32::from_ne_bytes(quoted.get(..4)?.try_into().ok()?) as usize;
        len.saturating_add(3) & !3
    };
    let tlvs = quoted.get(skip..)?;
    NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let value = nla.value();
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(text).into_owned()
        })
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: header and payload, padded to 4 bytes.
    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(NETLINK_HEADER_LEN + payload.len()).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    /// The messages handed over, as type and payload.
    type Handed = Vec<(u16, Vec<u8>)>;

    fn collect(datagram: &[u8], seq: u32) -> (Result<Scan, ScanError>, Handed) {
        let mut got = Vec::new();
        let result = scan(datagram, seq, &mut |kind, payload| {
            got.push((kind, payload.to_vec()))
        });
        (result, got)
    }

    #[test]
    fn multipart_dump_is_handed_over_until_done() {
        let mut first = message(16, 2, 7, b"link");
        first.extend(message(16, 2, 7, b"two"));
        let (result, got) = collect(&first, 7);
        assert_eq!(result, Ok(Scan::More { interrupted: false }));
        assert_eq!(got, vec![(16, b"link".to_vec()), (16, b"two".to_vec())]);

        let done = message(NLMSG_DONE, 2, 7, &0i32.to_ne_bytes());
        assert_eq!(collect(&done, 7).0, Ok(Scan::Done { interrupted: false }));
        // Old kernels send an empty NLMSG_DONE.
        let done = message(NLMSG_DONE, 2, 7, &[]);
        assert_eq!(collect(&done, 7).0, Ok(Scan::Done { interrupted: false }));
    }

    #[test]
    fn stale_replies_are_skipped() {
        let mut datagram = message(16, 2, 6, b"old");
        datagram.extend(message(NLMSG_ERROR, 0, 6, &(-17i32).to_ne_bytes()));
        datagram.extend(message(NLMSG_DONE, 2, 6, &0i32.to_ne_bytes()));
        let (result, got) = collect(&datagram, 7);
        assert_eq!(result, Ok(Scan::More { interrupted: false }));
        assert!(got.is_empty());
    }

    #[test]
    fn ack_and_error() {
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&[0; 16]);
        let datagram = message(NLMSG_ERROR, NLM_F_CAPPED, 3, &ack);
        assert_eq!(
            collect(&datagram, 3).0,
            Ok(Scan::Done { interrupted: false })
        );

        let mut nack = (-17i32).to_ne_bytes().to_vec();
        nack.extend_from_slice(&[0; 16]);
        let datagram = message(NLMSG_ERROR, NLM_F_CAPPED, 3, &nack);
        assert_eq!(
            collect(&datagram, 3).0,
            Err(ScanError::Kernel {
                errno: 17,
                message: None
            })
        );
    }

    #[test]
    fn extended_ack_message_is_read() {
        let mut nack = (-22i32).to_ne_bytes().to_vec();
        nack.extend_from_slice(&[0; 16]); // the quoted, capped header
        let text = b"Invalid prefix\0";
        let nla_len = u16::try_from(4 + text.len()).unwrap();
        nack.extend_from_slice(&nla_len.to_ne_bytes());
        nack.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        nack.extend_from_slice(text);
        let datagram = message(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 3, &nack);
        assert_eq!(
            collect(&datagram, 3).0,
            Err(ScanError::Kernel {
                errno: 22,
                message: Some("Invalid prefix".into())
            })
        );
    }

    #[test]
    fn interrupted_dump_is_flagged() {
        let datagram = message(16, 2 | NLM_F_DUMP_INTR, 1, b"x");
        assert_eq!(
            collect(&datagram, 1).0,
            Ok(Scan::More { interrupted: true })
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        // A length past the datagram's end.
        let mut datagram = message(16, 2, 1, b"abcd");
        datagram[0] = 200;
        assert!(matches!(
            collect(&datagram, 1).0,
            Err(ScanError::Malformed(_))
        ));
        // A length shorter than a header.
        let mut datagram = message(16, 2, 1, b"abcd");
        datagram[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(
            collect(&datagram, 1).0,
            Err(ScanError::Malformed(_))
        ));
        // Trailing bytes too short for a header.
        let mut datagram = message(16, 2, 1, b"abcd");
        datagram.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            collect(&datagram, 1).0,
            Err(ScanError::Malformed(_))
        ));
        // A short NLMSG_ERROR.
        let datagram = message(NLMSG_ERROR, 0, 1, &[1]);
        assert!(matches!(
            collect(&datagram, 1).0,
            Err(ScanError::Malformed(_))
        ));
        // Extended ack TLVs cut short.
        let mut nack = (-22i32).to_ne_bytes().to_vec();
        nack.extend_from_slice(&[0; 16]);
        nack.extend_from_slice(&[200, 0, 1, 0, b'x']);
        let datagram = message(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 1, &nack);
        assert_eq!(
            collect(&datagram, 1).0,
            Err(ScanError::Kernel {
                errno: 22,
                message: None
            })
        );
    }
}
