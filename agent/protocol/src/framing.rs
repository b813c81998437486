//! Length-prefixed JSON frames.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame either side accepts (1 MiB).
pub const MAX_FRAME_LEN: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(u64),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one message as a frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLarge(body.len() as u64))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it. A clean EOF before the length is [`FrameError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(u64::from(len)));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Ping).unwrap();
        write_frame(&mut buf, &Request::Shutdown).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame::<_, Request>(&mut r).unwrap(), Request::Ping);
        assert_eq!(read_frame::<_, Request>(&mut r).unwrap(), Request::Shutdown);
        assert!(matches!(
            read_frame::<_, Request>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let frame = u32::MAX.to_be_bytes();
        let err = read_frame::<_, Response>(&mut frame.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == u64::from(u32::MAX)));
    }

    #[test]
    fn truncated_frames_and_garbage_are_errors_not_panics() {
        let mut short = 10u32.to_be_bytes().to_vec();
        short.extend_from_slice(b"{\"ty");
        assert!(matches!(
            read_frame::<_, Response>(&mut short.as_slice()),
            Err(FrameError::Io(_))
        ));
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0x00, 0x7b]);
        assert!(matches!(
            read_frame::<_, Response>(&mut garbage.as_slice()),
            Err(FrameError::Json(_))
        ));
        assert!(read_frame::<_, Response>(&mut [0u8, 0].as_slice()).is_err());
    }

    #[test]
    fn unknown_message_types_are_rejected() {
        let body = br#"{"type":"format_disk"}"#;
        let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        assert!(matches!(
            read_frame::<_, Request>(&mut frame.as_slice()),
            Err(FrameError::Json(_))
        ));
    }
}
