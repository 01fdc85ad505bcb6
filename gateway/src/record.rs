//! TCP record marking (RFC 5531 §11): how ONC-RPC messages are delimited on a byte stream.
//!
//! A record is sent as one or more fragments, each behind a 4-byte big-endian header whose top
//! bit marks the last fragment of the record and whose low 31 bits give the fragment's length.
//! [`RecordDecoder`] is a pure, incremental decoder: the connection task feeds it whatever the
//! socket returned and gets complete records back, however the bytes were split. It does no I/O
//! and keeps no more than the current partial record plus a 4-byte header.
//!
//! Memory is bounded twice (DESIGN.md invariant 7). A record whose fragments add up to more than
//! the configured maximum is refused as soon as the header announcing it arrives
//! ([`RecordError::TooLarge`]); the caller then closes the connection, since the stream cannot be
//! resynchronised — that is what the Linux kernel's server does for an oversized record too.
//! And a declared length never reserves memory by itself: the buffer grows only with bytes that
//! have actually arrived (amortised doubling, so its capacity stays within twice what has arrived
//! and never beyond the end of the announced fragment), so a peer that announces a megabyte and
//! sends one byte costs us a few bytes.
//!
//! [`encode_record`] frames an outgoing message, splitting it into fragments no larger than a
//! chosen maximum. Replies should normally go out as a single fragment: libnfs, one of the
//! clients we must serve, reads one record marker per message and treats its length as the whole
//! message without looking at the last-fragment bit, so [`DEFAULT_MAX_FRAGMENT`] is large enough
//! for any reply we produce.

use thiserror::Error;

/// The last-fragment flag in a fragment header.
pub const LAST_FRAGMENT: u32 = 0x8000_0000;

/// The largest length a fragment header can express (31 bits).
pub const MAX_FRAGMENT_LENGTH: u32 = 0x7fff_ffff;

/// Default maximum size of an incoming record: 1 MiB of payload (the rsize/wsize the gateway
/// offers, so an NFSv3 WRITE or an NFSv4 COMPOUND with a 1 MiB WRITE fits) plus 64 KiB for
/// everything around it — the RPC header with two 400-byte authenticators, file handles,
/// offsets, and the other operations of a compound. The Linux server allows its maximum payload
/// plus one page; we give more headroom because a refused record costs the client its
/// connection.
pub const DEFAULT_MAX_RECORD: usize = 1024 * 1024 + 64 * 1024;

/// Default maximum fragment for outgoing records: as large as the largest record we accept, so
/// every reply we build (a 1 MiB READ plus headers at most) goes out as a single fragment.
pub const DEFAULT_MAX_FRAGMENT: usize = DEFAULT_MAX_RECORD;

/// Why the incoming stream cannot be decoded; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The fragments announced so far add up to more than the maximum record size.
    #[error("record of at least {length} bytes is over the limit of {limit} bytes")]
    TooLarge { length: u64, limit: usize },
}

/// Incremental decoder of a record-marked byte stream.
///
/// Feed it with [`RecordDecoder::decode`] until it returns `Ok(None)` (all input consumed,
/// no complete record pending), then read more from the socket. After an error the stream is
/// out of step for good: every later call returns the same error and the caller must close the
/// connection.
#[derive(Debug)]
pub struct RecordDecoder {
    max_record: usize,
    /// The header being read, valid up to `header_filled`.
    header: [u8; 4],
    header_filled: usize,
    /// True while reading a fragment's body (the header is complete).
    in_fragment: bool,
    /// Body bytes of the current fragment not yet received.
    fragment_remaining: usize,
    /// Whether the current fragment is the record's last.
    last_fragment: bool,
    /// The record assembled so far, from all its fragments.
    record: Vec<u8>,
    failed: Option<RecordError>,
}

impl RecordDecoder {
    /// A decoder that refuses records larger than `max_record` bytes.
    pub fn new(max_record: usize) -> Self {
        RecordDecoder {
            max_record,
            header: [0; 4],
            header_filled: 0,
            in_fragment: false,
            fragment_remaining: 0,
            last_fragment: false,
            record: Vec::new(),
            failed: None,
        }
    }

    /// The maximum record size this decoder accepts.
    pub fn max_record(&self) -> usize {
        self.max_record
    }

    /// Bytes of the current, incomplete record received so far (excluding headers).
    pub fn buffered(&self) -> usize {
        self.record.len()
    }

    /// Capacity of the buffer holding the incomplete record; exposed so tests and metrics can
    /// check that it follows what arrived rather than what was announced.
    pub fn buffer_capacity(&self) -> usize {
        self.record.capacity()
    }

    /// True when no partial header or record is pending, i.e. the peer may close the
    /// connection here without cutting a record in half.
    pub fn is_at_record_boundary(&self) -> bool {
        self.failed.is_none()
            && !self.in_fragment
            && self.header_filled == 0
            && self.record.is_empty()
    }

    /// Consumes bytes from the front of `input` until one record is complete (returned, with
    /// `input` advanced past it) or `input` is used up (`Ok(None)`, everything buffered).
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, RecordError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        loop {
            if !self.in_fragment {
                let wanted = self.header.len() - self.header_filled;
                let (head, tail) = input.split_at(wanted.min(input.len()));
                self.header[self.header_filled..self.header_filled + head.len()]
                    .copy_from_slice(head);
                self.header_filled += head.len();
                *input = tail;
                if self.header_filled < self.header.len() {
                    return Ok(None);
                }
                self.header_filled = 0;
                self.start_fragment(u32::from_be_bytes(self.header))?;
            }

            let taken = self.fragment_remaining.min(input.len());
            let (body, tail) = input.split_at(taken);
            self.grow_for(body.len());
            self.record.extend_from_slice(body);
            self.fragment_remaining -= taken;
            *input = tail;
            if self.fragment_remaining > 0 {
                return Ok(None);
            }
            self.in_fragment = false;
            if self.last_fragment {
                return Ok(Some(std::mem::take(&mut self.record)));
            }
        }
    }

    /// Checks a complete fragment header against the record limit and enters the fragment.
    fn start_fragment(&mut self, header: u32) -> Result<(), RecordError> {
        let length = header & MAX_FRAGMENT_LENGTH;
        let record_length = u64::try_from(self.record.len())
            .unwrap_or(u64::MAX)
            .saturating_add(u64::from(length));
        let within_limit = usize::try_from(record_length)
            .map(|record_length| record_length <= self.max_record)
            .unwrap_or(false);
        if !within_limit {
            let error = RecordError::TooLarge {
                length: record_length,
                limit: self.max_record,
            };
            self.failed = Some(error);
            // Release what was buffered: the connection is going away.
            self.record = Vec::new();
            return Err(error);
        }
        self.in_fragment = true;
        // Cannot fail: `record_length` fits in usize, and so does its part `length`.
        self.fragment_remaining = usize::try_from(length).unwrap_or(usize::MAX);
        self.last_fragment = header & LAST_FRAGMENT != 0;
        Ok(())
    }

    /// Makes room for `additional` arrived bytes. Growth doubles (so feeding a byte at a time
    /// stays linear) but is capped at the end of the announced fragment, and is driven only by
    /// arrived bytes: capacity ≤ max(2 × buffered, buffered + arrived) and ≤ announced end.
    fn grow_for(&mut self, additional: usize) {
        let length = self.record.len();
        let needed = length + additional;
        if needed <= self.record.capacity() {
            return;
        }
        // `fragment_remaining` still includes `additional` here.
        let fragment_end = length + self.fragment_remaining;
        let target = needed.max(length.saturating_mul(2).min(fragment_end));
        self.record.reserve_exact(target - length);
    }
}

/// Appends `payload` to `output` as one record, split into fragments of at most
/// `max_fragment` bytes (clamped to 1..=[`MAX_FRAGMENT_LENGTH`]). An empty payload becomes a
/// single empty last fragment.
pub fn encode_record(payload: &[u8], max_fragment: usize, output: &mut Vec<u8>) {
    let max_fragment = max_fragment.clamp(1, MAX_FRAGMENT_LENGTH as usize);
    let fragments = payload.len().div_ceil(max_fragment).max(1);
    output.reserve(payload.len() + 4 * fragments);
    let mut chunks = payload.chunks(max_fragment).peekable();
    if chunks.peek().is_none() {
        output.extend_from_slice(&LAST_FRAGMENT.to_be_bytes());
        return;
    }
    while let Some(chunk) = chunks.next() {
        // A chunk is at most `max_fragment` ≤ MAX_FRAGMENT_LENGTH bytes, so it fits in 31 bits.
        let length = u32::try_from(chunk.len()).unwrap_or(MAX_FRAGMENT_LENGTH);
        let last = if chunks.peek().is_none() {
            LAST_FRAGMENT
        } else {
            0
        };
        output.extend_from_slice(&(last | length).to_be_bytes());
        output.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut RecordDecoder, mut input: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        while let Some(record) = decoder.decode(&mut input).unwrap() {
            records.push(record);
        }
        assert!(input.is_empty());
        records
    }

    #[test]
    fn single_fragment_record() {
        let stream = [0x80, 0, 0, 3, b'a', b'b', b'c'];
        let mut decoder = RecordDecoder::new(16);
        assert_eq!(decode_all(&mut decoder, &stream), vec![b"abc".to_vec()]);
        assert!(decoder.is_at_record_boundary());
    }

    #[test]
    fn fragments_are_joined_until_the_last() {
        let stream = [
            0x00, 0, 0, 2, b'a', b'b', // first fragment, not last
            0x00, 0, 0, 0, // an empty middle fragment is legal
            0x80, 0, 0, 1, b'c', // last fragment
            0x80, 0, 0, 0, // an empty record
            0x80, 0, 0, 1, b'd', // another record
        ];
        let mut decoder = RecordDecoder::new(16);
        assert_eq!(
            decode_all(&mut decoder, &stream),
            vec![b"abc".to_vec(), Vec::new(), b"d".to_vec()]
        );
    }

    #[test]
    fn byte_at_a_time() {
        let stream = [0x00, 0, 0, 2, b'a', b'b', 0x80, 0, 0, 1, b'c'];
        let mut decoder = RecordDecoder::new(16);
        let mut records = Vec::new();
        for byte in stream {
            let mut input = &[byte][..];
            if let Some(record) = decoder.decode(&mut input).unwrap() {
                records.push(record);
            }
            assert!(input.is_empty());
            assert!(!decoder.is_at_record_boundary() || !records.is_empty());
        }
        assert_eq!(records, vec![b"abc".to_vec()]);
        assert!(decoder.is_at_record_boundary());
    }

    #[test]
    fn oversized_records_are_refused_at_the_header() {
        // One fragment announcing more than the limit.
        let mut decoder = RecordDecoder::new(8);
        let mut input = &[0x80, 0, 0, 9][..];
        let error = RecordError::TooLarge {
            length: 9,
            limit: 8,
        };
        assert_eq!(decoder.decode(&mut input), Err(error));
        // The decoder stays failed.
        assert_eq!(decoder.decode(&mut &[0x80, 0, 0, 0][..]), Err(error));

        // Fragments that are each small but add up to too much.
        let mut decoder = RecordDecoder::new(8);
        let mut input = &[0, 0, 0, 5, 1, 2, 3, 4, 5, 0x80, 0, 0, 4][..];
        assert_eq!(
            decoder.decode(&mut input),
            Err(RecordError::TooLarge {
                length: 9,
                limit: 8
            })
        );
        assert_eq!(decoder.buffer_capacity(), 0, "buffer released");

        // The largest header possible.
        let mut decoder = RecordDecoder::new(DEFAULT_MAX_RECORD);
        assert_eq!(
            decoder.decode(&mut &[0xff, 0xff, 0xff, 0xff][..]),
            Err(RecordError::TooLarge {
                length: u64::from(MAX_FRAGMENT_LENGTH),
                limit: DEFAULT_MAX_RECORD
            })
        );
    }

    #[test]
    fn announced_length_does_not_reserve_memory() {
        let mut decoder = RecordDecoder::new(DEFAULT_MAX_RECORD);
        // Announce a full megabyte, send one byte of it.
        let mut input = &[0x80, 0x10, 0, 0, 0xaa][..];
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(decoder.buffered(), 1);
        assert!(
            decoder.buffer_capacity() <= 8,
            "{}",
            decoder.buffer_capacity()
        );
    }

    #[test]
    fn encoder_splits_at_the_maximum_fragment() {
        let cases: &[(&[u8], usize, &[u8])] = &[
            (b"", 4, &[0x80, 0, 0, 0]),
            (b"abc", 4, &[0x80, 0, 0, 3, b'a', b'b', b'c']),
            (b"abcd", 4, &[0x80, 0, 0, 4, b'a', b'b', b'c', b'd']),
            (
                b"abcde",
                4,
                &[0, 0, 0, 4, b'a', b'b', b'c', b'd', 0x80, 0, 0, 1, b'e'],
            ),
            // A zero maximum is clamped to one byte per fragment.
            (b"ab", 0, &[0, 0, 0, 1, b'a', 0x80, 0, 0, 1, b'b']),
        ];
        for (payload, max_fragment, expected) in cases {
            let mut output = Vec::new();
            encode_record(payload, *max_fragment, &mut output);
            assert_eq!(output, *expected, "{payload:?} / {max_fragment}");
            let mut decoder = RecordDecoder::new(16);
            assert_eq!(decode_all(&mut decoder, &output), vec![payload.to_vec()]);
        }
    }
}
