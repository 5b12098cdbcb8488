//! WebSocket framing (RFC 6455 section 5), sans-IO: the frame header parser, the unmasking
//! copier, the reader that turns a client's bytes into the MQTT byte stream and control frames,
//! and the header of the (unmasked) frames the server sends. Nothing here allocates by a length
//! the client announces: data payloads are unmasked straight into the caller's buffer as their
//! bytes arrive, and only a control frame's payload (at most 125 bytes) is held.

use bytes::BytesMut;

/// The longest frame header: 2 bytes, a 64-bit length and the masking key.
pub(crate) const MAX_HEADER: usize = 14;
/// The longest header of a frame the server sends (no masking key).
pub(crate) const MAX_SERVER_HEADER: usize = 10;
/// The longest payload of a control frame (RFC 6455 section 5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode (RFC 6455 section 5.2); the reserved ones are errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub(crate) fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) fin: bool,
    pub(crate) opcode: Opcode,
    /// The masking key, if the MASK bit is set.
    pub(crate) mask: Option<[u8; 4]>,
    pub(crate) len: u64,
}

/// Why the client's frames are refused; each cause has its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("a frame with reserved bits set (no extension was negotiated)")]
    Reserved,
    #[error("a frame with the reserved opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("an unmasked frame from the client (RFC 6455 section 5.1)")]
    Unmasked,
    #[error("a fragmented control frame")]
    FragmentedControl,
    #[error("a control frame over {MAX_CONTROL_PAYLOAD} bytes")]
    ControlTooLong,
    #[error("a 64-bit frame length with its most significant bit set")]
    BadLength,
    #[error("a continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    #[error("a new message before the fragmented one ended")]
    ExpectedContinuation,
    #[error("a close frame with a 1-byte payload")]
    ShortClose,
    #[error("a close frame with the code {0}, which may not be sent")]
    BadCloseCode(u16),
    #[error("a close frame whose reason is not UTF-8")]
    CloseReasonNotUtf8,
    #[error("a text frame: MQTT travels in binary frames [MQTT-6.0.0-1]")]
    Text,
    #[error("a frame of {0} bytes, over the limit")]
    TooBig(u64),
}

impl FrameError {
    /// The close code that says why (RFC 6455 section 7.4.1).
    pub(crate) fn close_code(self) -> u16 {
        match self {
            FrameError::Text => 1003,
            FrameError::CloseReasonNotUtf8 => 1007,
            FrameError::TooBig(_) => 1009,
            _ => 1002,
        }
    }
}

/// Parses the frame header at the start of `bytes`: the header and its length, or `None` if
/// more bytes are needed. The first two bytes are checked as soon as they are there (reserved
/// bits, opcode, control frame rules), so a bad frame is refused without waiting for the rest.
/// A length need not be in its shortest encoding.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let [b0, b1, rest @ ..] = bytes else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    let short = b1 & 0x7F;
    if opcode.is_control() && !fin {
        return Err(FrameError::FragmentedControl);
    }
    let (len, len_bytes) = match short {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.first_chunk::<8>() {
            Some(bytes) => {
                let len = u64::from_be_bytes(*bytes);
                if len >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    // Checked on the length, whatever its encoding.
    if opcode.is_control() && len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(FrameError::ControlTooLong);
    }
    let rest = &rest[len_bytes..];
    let mask = if masked {
        match rest.first_chunk::<4>() {
            Some(key) => Some(*key),
            None => return Ok(None),
        }
    } else {
        None
    };
    let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
    Ok(Some((
        FrameHeader {
            fin,
            opcode,
            mask,
            len,
        },
        header_len,
    )))
}

/// Writes the header of an unmasked frame with FIN set (what the server sends) into `out`;
/// its length.
pub(crate) fn encode_header(
    opcode: Opcode,
    len: usize,
    out: &mut [u8; MAX_SERVER_HEADER],
) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        // Under 126: fits the 7 bits.
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// XORs `data` with the masking key (RFC 6455 section 5.3), `data` starting at byte `phase`
/// (mod 4) of the payload; the phase after it.
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase % 4;
    let mut rotated = key;
    rotated.rotate_left(phase);
    // 16 bytes at a time: fast in an unoptimised build too (twice 8 at a time there), and
    // vectorised by the compiler in an optimised one.
    // The key four times over (the same bytes whatever the byte order: the lanes are equal).
    let lane = u128::from(u32::from_ne_bytes(rotated));
    let word = lane | lane << 32 | lane << 64 | lane << 96;
    let mut chunks = data.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u128::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    let tail = chunks.into_remainder();
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
    (phase + data.len()) % 4
}

/// A control frame read whole, for the caller to act on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    Pong,
    /// The client closes, with this code if it gave one.
    Close(Option<u16>),
}

/// What one call of [`FrameReader::read`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Bytes of the input used.
    pub(crate) consumed: usize,
    /// Payload bytes appended to the data buffer.
    pub(crate) data: usize,
    /// The control frame that ended the call, if one did.
    pub(crate) control: Option<Control>,
}

/// The payload being read.
#[derive(Debug, Clone, Copy)]
struct Payload {
    opcode: Opcode,
    key: [u8; 4],
    phase: u8,
    remaining: u64,
}

/// Reads a client's frames from the bytes as they come: binary and continuation payloads are
/// unmasked to the end of the caller's buffer (an MQTT packet may span frames, a frame may
/// hold several packets: the payloads are one byte stream), control frames are returned whole.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Largest frame payload accepted; a longer one is refused at its header.
    max_frame: u64,
    /// The start of a header whose rest has not come yet.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The frame whose payload is being read.
    payload: Option<Payload>,
    /// A fragmented binary message has begun and not ended.
    in_message: bool,
    /// The payload of the control frame being read (allocated only while one is).
    control: Vec<u8>,
}

impl FrameReader {
    pub(crate) fn new(max_frame: u64) -> FrameReader {
        FrameReader {
            max_frame,
            header: [0; MAX_HEADER],
            header_len: 0,
            payload: None,
            in_message: false,
            control: Vec::new(),
        }
    }

    /// Bytes this reader has allocated (a control frame's payload while it is read).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.control.capacity()
    }

    /// Reads frames from `input`, unmasking data payloads to the end of `data` (reserving only
    /// what the input holds). Returns when the input is used up or a control frame is complete
    /// (the caller answers it, then calls again with the rest of the input).
    pub(crate) fn read(
        &mut self,
        input: &[u8],
        data: &mut BytesMut,
    ) -> Result<Progress, FrameError> {
        let mut progress = Progress::default();
        loop {
            if let Some(payload) = &mut self.payload {
                let available = input.len() - progress.consumed;
                let take =
                    usize::try_from(payload.remaining).map_or(available, |r| r.min(available));
                let chunk = &input[progress.consumed..progress.consumed + take];
                let phase = usize::from(payload.phase);
                let next_phase = if payload.opcode.is_control() {
                    let start = self.control.len();
                    self.control.extend_from_slice(chunk);
                    apply_mask(&mut self.control[start..], payload.key, phase)
                } else {
                    let start = data.len();
                    data.extend_from_slice(chunk);
                    progress.data += take;
                    apply_mask(&mut data[start..], payload.key, phase)
                };
                payload.phase = next_phase as u8;
                payload.remaining -= take as u64;
                progress.consumed += take;
                if payload.remaining > 0 {
                    return Ok(progress);
                }
                let opcode = payload.opcode;
                self.payload = None;
                if opcode.is_control() {
                    progress.control = Some(self.finish_control(opcode)?);
                    return Ok(progress);
                }
                continue;
            }
            if progress.consumed == input.len() {
                return Ok(progress);
            }
            let have = usize::from(self.header_len);
            let add = (MAX_HEADER - have).min(input.len() - progress.consumed);
            self.header[have..have + add]
                .copy_from_slice(&input[progress.consumed..progress.consumed + add]);
            match parse_header(&self.header[..have + add])? {
                None => {
                    // The header needs more than the input holds: all of it is kept.
                    self.header_len = (have + add) as u8;
                    progress.consumed += add;
                    return Ok(progress);
                }
                Some((header, len)) => {
                    progress.consumed += len - have;
                    self.header_len = 0;
                    self.start_frame(header)?;
                }
            }
        }
    }

    /// Checks a frame header against the state of the stream and starts its payload.
    fn start_frame(&mut self, header: FrameHeader) -> Result<(), FrameError> {
        let key = header.mask.ok_or(FrameError::Unmasked)?;
        match header.opcode {
            Opcode::Text => return Err(FrameError::Text),
            Opcode::Binary if self.in_message => return Err(FrameError::ExpectedContinuation),
            Opcode::Continuation if !self.in_message => {
                return Err(FrameError::UnexpectedContinuation);
            }
            Opcode::Binary | Opcode::Continuation => {
                if header.len > self.max_frame {
                    return Err(FrameError::TooBig(header.len));
                }
                self.in_message = !header.fin;
            }
            // At most 125 bytes (checked by the parser).
            Opcode::Close | Opcode::Ping | Opcode::Pong => {
                self.control = Vec::with_capacity(header.len as usize);
            }
        }
        self.payload = Some(Payload {
            opcode: header.opcode,
            key,
            phase: 0,
            remaining: header.len,
        });
        Ok(())
    }

    /// The control frame whose payload is complete.
    fn finish_control(&mut self, opcode: Opcode) -> Result<Control, FrameError> {
        let payload = std::mem::take(&mut self.control);
        match opcode {
            Opcode::Ping => Ok(Control::Ping(payload)),
            Opcode::Pong => Ok(Control::Pong),
            _ => match payload.as_slice() {
                [] => Ok(Control::Close(None)),
                [_] => Err(FrameError::ShortClose),
                [a, b, reason @ ..] => {
                    let code = u16::from_be_bytes([*a, *b]);
                    if !close_code_allowed(code) {
                        return Err(FrameError::BadCloseCode(code));
                    }
                    if std::str::from_utf8(reason).is_err() {
                        return Err(FrameError::CloseReasonNotUtf8);
                    }
                    Ok(Control::Close(Some(code)))
                }
            },
        }
    }
}

/// Whether a peer may send this close code (RFC 6455 section 7.4; 1012-1014 registered since).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A client frame: masked with `key`.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= usize::from(u16::MAX) {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    }

    /// Feeds `input` in chunks of `chunk` bytes; the data and the control frames.
    fn read_all(
        reader: &mut FrameReader,
        input: &[u8],
        chunk: usize,
    ) -> Result<(Vec<u8>, Vec<Control>), FrameError> {
        let mut data = BytesMut::new();
        let mut controls = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            let mut at = 0;
            loop {
                let progress = reader.read(&piece[at..], &mut data)?;
                at += progress.consumed;
                match progress.control {
                    Some(control) => controls.push(control),
                    None => {
                        assert_eq!(at, piece.len(), "all input used");
                        break;
                    }
                }
            }
        }
        Ok((data.to_vec(), controls))
    }

    /// RFC 6455 section 5.2: the three length encodings, the mask, FIN and opcode; a length need
    /// not be minimal; an incomplete header asks for more.
    #[test]
    fn header_lengths_and_incomplete_headers() {
        let frame = client_frame(true, 0x2, &[7; 300], [1, 2, 3, 4]);
        let (header, len) = parse_header(&frame).unwrap().unwrap();
        assert_eq!(
            (header, len),
            (
                FrameHeader {
                    fin: true,
                    opcode: Opcode::Binary,
                    mask: Some([1, 2, 3, 4]),
                    len: 300
                },
                8
            )
        );
        for cut in 0..8 {
            assert_eq!(parse_header(&frame[..cut]).unwrap(), None, "cut at {cut}");
        }
        // 5 bytes in a 64-bit length.
        let long = [0x02, 0xFF, 0, 0, 0, 0, 0, 0, 0, 5, 9, 9, 9, 9];
        let (header, len) = parse_header(&long).unwrap().unwrap();
        assert_eq!((header.fin, header.len, len), (false, 5, 14));
        // Unmasked: parsed, refused by the reader.
        let (header, len) = parse_header(&[0x82, 3]).unwrap().unwrap();
        assert_eq!((header.mask, len), (None, 2));
    }

    /// RFC 6455 sections 5.1, 5.2 and 5.5: bad headers are refused from their first bytes,
    /// with the close code of their cause.
    #[test]
    fn header_errors() {
        assert_eq!(parse_header(&[0xC2, 0x80]), Err(FrameError::Reserved));
        assert_eq!(
            parse_header(&[0x83, 0x80]),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x09, 0x80]),
            Err(FrameError::FragmentedControl)
        );
        assert_eq!(parse_header(&[0x89, 0xFE]), Ok(None));
        assert_eq!(
            parse_header(&[0x89, 0xFE, 0, 126]),
            Err(FrameError::ControlTooLong)
        );
        let mut huge = vec![0x82, 0xFF, 0x80];
        huge.extend_from_slice(&[0; 11]);
        assert_eq!(parse_header(&huge), Err(FrameError::BadLength));
        let mut reader = FrameReader::new(1024);
        let mut data = BytesMut::new();
        assert_eq!(
            reader.read(&[0x82, 0x01, 0], &mut data),
            Err(FrameError::Unmasked)
        );
        let mut reader = FrameReader::new(1024);
        let text = client_frame(true, 0x1, b"hi", [0; 4]);
        assert_eq!(reader.read(&text, &mut data), Err(FrameError::Text));
        assert_eq!(FrameError::Text.close_code(), 1003);
        let mut reader = FrameReader::new(1024);
        let big = client_frame(true, 0x2, &[0; 1025], [0; 4]);
        // Refused at the header, before any of the payload.
        assert_eq!(
            reader.read(&big[..8], &mut data),
            Err(FrameError::TooBig(1025))
        );
        assert_eq!(FrameError::TooBig(0).close_code(), 1009);
        let mut reader = FrameReader::new(1024);
        let orphan = client_frame(true, 0x0, b"x", [0; 4]);
        assert_eq!(
            reader.read(&orphan, &mut data),
            Err(FrameError::UnexpectedContinuation)
        );
        let mut reader = FrameReader::new(1024);
        let mut two = client_frame(false, 0x2, b"a", [0; 4]);
        two.extend(client_frame(true, 0x2, b"b", [0; 4]));
        assert_eq!(
            read_all(&mut reader, &two, 100),
            Err(FrameError::ExpectedContinuation)
        );
    }

    /// RFC 6455 section 5.4: a fragmented message with control frames between its fragments;
    /// section 5.5.1: close codes and reasons checked.
    #[test]
    fn fragments_and_control_frames() {
        let key = [0x37, 0xFA, 0x21, 0x3D];
        let mut input = client_frame(false, 0x2, b"hello ", key);
        input.extend(client_frame(true, 0x9, b"ping!", key));
        input.extend(client_frame(false, 0x0, b"mqtt ", key));
        input.extend(client_frame(true, 0xA, b"", key));
        input.extend(client_frame(true, 0x0, b"world", key));
        input.extend(client_frame(true, 0x8, &[0x03, 0xE8, b'o', b'k'], key));
        for chunk in [1, 2, 3, 7, 1000] {
            let mut reader = FrameReader::new(1024);
            let (data, controls) = read_all(&mut reader, &input, chunk).unwrap();
            assert_eq!(&data[..], b"hello mqtt world");
            assert_eq!(
                controls,
                vec![
                    Control::Ping(b"ping!".to_vec()),
                    Control::Pong,
                    Control::Close(Some(1000))
                ]
            );
        }
        let close = |payload: &[u8]| {
            read_all(
                &mut FrameReader::new(16),
                &client_frame(true, 0x8, payload, key),
                99,
            )
        };
        assert_eq!(close(&[]).unwrap().1, vec![Control::Close(None)]);
        assert_eq!(close(&[3]), Err(FrameError::ShortClose));
        assert_eq!(close(&[0x03, 0xED]), Err(FrameError::BadCloseCode(1005)));
        assert_eq!(
            close(&[0x03, 0xE8, 0xFF]),
            Err(FrameError::CloseReasonNotUtf8)
        );
    }

    /// Server frames: FIN, unmasked, the shortest length encoding.
    #[test]
    fn server_headers() {
        let mut out = [0u8; MAX_SERVER_HEADER];
        assert_eq!(encode_header(Opcode::Binary, 5, &mut out), 2);
        assert_eq!(&out[..2], &[0x82, 5]);
        assert_eq!(encode_header(Opcode::Pong, 125, &mut out), 2);
        assert_eq!(&out[..2], &[0x8A, 125]);
        assert_eq!(encode_header(Opcode::Binary, 16 * 1024, &mut out), 4);
        assert_eq!(&out[..4], &[0x82, 126, 0x40, 0]);
        assert_eq!(encode_header(Opcode::Binary, 70_000, &mut out), 10);
        assert_eq!(&out[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let (header, len) = parse_header(&out).unwrap().unwrap();
        assert_eq!((header.len, header.mask, len), (70_000, None, 10));
    }

    proptest! {
        /// Arbitrary bytes, in arbitrary chunks: no panic, and never more data than input.
        #[test]
        fn arbitrary_input_is_safe(
            input in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
            max in 0u64..4096,
        ) {
            let _ = parse_header(&input);
            let mut reader = FrameReader::new(max);
            let mut data = BytesMut::new();
            let mut fed = 0;
            'outer: for piece in input.chunks(chunk) {
                let mut at = 0;
                fed += piece.len();
                while at < piece.len() {
                    match reader.read(&piece[at..], &mut data) {
                        Ok(progress) => {
                            prop_assert!(progress.consumed <= piece.len() - at);
                            at += progress.consumed;
                            if progress.control.is_none() {
                                prop_assert_eq!(at, piece.len());
                            }
                        }
                        Err(_) => break 'outer,
                    }
                }
                prop_assert!(data.len() <= fed);
                prop_assert!(data.capacity() <= fed.max(64) * 2);
            }
        }

        /// Frames of arbitrary payloads, keys and fragmentation, fed in arbitrary chunks: the
        /// data is the payloads in order, unmasked.
        #[test]
        fn frames_round_trip(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..300), 1..8),
            key in any::<[u8; 4]>(),
            fragmented in any::<bool>(),
            chunk in 1usize..512,
        ) {
            let mut input = Vec::new();
            let last = payloads.len() - 1;
            for (i, payload) in payloads.iter().enumerate() {
                let (fin, opcode) = if fragmented {
                    (i == last, if i == 0 { 0x2 } else { 0x0 })
                } else {
                    (true, 0x2)
                };
                input.extend(client_frame(fin, opcode, payload, key));
                input.extend(client_frame(true, 0x9, &payload[..payload.len().min(125)], key));
            }
            let mut reader = FrameReader::new(300);
            let (data, controls) = read_all(&mut reader, &input, chunk).unwrap();
            prop_assert_eq!(data, payloads.concat());
            prop_assert_eq!(controls.len(), payloads.len());
        }

        /// Unmasking in pieces at any phase is unmasking at once.
        #[test]
        fn mask_in_pieces(
            data in proptest::collection::vec(any::<u8>(), 0..100),
            key in any::<[u8; 4]>(),
            split in 0usize..100,
        ) {
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let expected: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            prop_assert_eq!(&whole, &expected);
            let split = split.min(data.len());
            let mut pieces = data.clone();
            let phase = apply_mask(&mut pieces[..split], key, 0);
            apply_mask(&mut pieces[split..], key, phase);
            prop_assert_eq!(pieces, expected);
        }
    }
}
