//! The bench payload: a fixed header (magic, publisher id, sequence number, send time) followed
//! by padding up to `--size`. Every message a subscriber receives is checked against it, so the
//! layout is the contract between publishers, subscribers and the delivery checker.

/// Marks a payload as ours, so a stray message on the bench topics is reported, not misread.
pub const MAGIC: [u8; 4] = *b"TBn1";

/// Bytes of the header: magic (4), publisher id (u32), sequence number (u64), send time (u64).
pub const HEADER_LEN: usize = 4 + 4 + 8 + 8;

/// What a payload says about the message it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Index of the publisher in this bench run.
    pub publisher: u32,
    /// 0, 1, 2, ... per publisher, in the order of sending.
    pub seq: u64,
    /// Nanoseconds since the bench's shared start instant, taken when the message was encoded.
    pub sent_ns: u64,
}

/// Why a payload is not one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than the header.
    TooShort,
    /// Does not start with [`MAGIC`].
    BadMagic,
    /// Not the size every publisher of the run sends.
    WrongSize,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    ///
    /// `out` is the payload of a message being built, at least `HEADER_LEN` long by construction
    /// (the size is checked against `HEADER_LEN` when the arguments are read).
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.publisher.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads the header of a received payload of `expected_size` bytes.
    pub fn read(payload: &[u8], expected_size: usize) -> Result<Header, PayloadError> {
        let Some(head) = payload.get(..HEADER_LEN) else {
            return Err(PayloadError::TooShort);
        };
        if head[0..4] != MAGIC {
            return Err(PayloadError::BadMagic);
        }
        if payload.len() != expected_size {
            return Err(PayloadError::WrongSize);
        }
        let mut publisher = [0; 4];
        let mut seq = [0; 8];
        let mut sent_ns = [0; 8];
        publisher.copy_from_slice(&head[4..8]);
        seq.copy_from_slice(&head[8..16]);
        sent_ns.copy_from_slice(&head[16..24]);
        Ok(Header {
            publisher: u32::from_be_bytes(publisher),
            seq: u64::from_be_bytes(seq),
            sent_ns: u64::from_be_bytes(sent_ns),
        })
    }
}

/// A payload of `size` bytes (at least [`HEADER_LEN`]) with a zero header and a fixed padding
/// pattern; publishers copy it and write the header of each message over its start.
pub fn template(size: usize) -> Vec<u8> {
    let size = size.max(HEADER_LEN);
    let mut payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    payload[..HEADER_LEN].fill(0);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut payload = template(64);
        let header = Header {
            publisher: 7,
            seq: 0x0102_0304_0506_0708,
            sent_ns: u64::MAX - 1,
        };
        header.write(&mut payload);
        assert_eq!(payload.len(), 64);
        assert_eq!(Header::read(&payload, 64), Ok(header));
        // The padding is left as it was.
        assert_eq!(payload[HEADER_LEN], b'a' + (HEADER_LEN % 26) as u8);
    }

    #[test]
    fn smallest_payload_is_the_header() {
        let mut payload = template(1);
        assert_eq!(payload.len(), HEADER_LEN);
        let header = Header {
            publisher: 0,
            seq: 0,
            sent_ns: 0,
        };
        header.write(&mut payload);
        assert_eq!(Header::read(&payload, HEADER_LEN), Ok(header));
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert_eq!(Header::read(b"hello", 64), Err(PayloadError::TooShort));
        let other = vec![b'x'; 64];
        assert_eq!(Header::read(&other, 64), Err(PayloadError::BadMagic));
        let mut ours = template(64);
        Header {
            publisher: 1,
            seq: 2,
            sent_ns: 3,
        }
        .write(&mut ours);
        assert_eq!(Header::read(&ours, 65), Err(PayloadError::WrongSize));
        assert_eq!(Header::read(&ours[..40], 64), Err(PayloadError::WrongSize));
    }
}
