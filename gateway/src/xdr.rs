//! XDR (RFC 4506), the byte encoding beneath every ONC-RPC protocol the gateway speaks: a
//! [`Decoder`] that reads big-endian 4-byte units from a borrowed buffer and an [`Encoder`] that
//! appends them to a `Vec<u8>`.
//!
//! The decoder is zero-copy: variable and fixed opaque data and strings come back as slices of
//! the input, so decoding allocates nothing except the `Vec` an [`Decoder::array`] returns. Every
//! length read from the wire is checked twice *before* anything is sliced or allocated
//! (DESIGN.md invariant 7): against the maximum the caller gives (the bound the protocol's `.x`
//! file writes as `<N>`, or a bound we choose where it writes `<>`) and against the bytes that
//! remain. A peer can therefore never make us reserve more than it actually sent.
//!
//! # Padding
//!
//! Opaque data and strings are padded to a multiple of four bytes. The padding bytes must be
//! *present* (a missing pad is [`XdrError::ShortInput`]) but their *values* are not checked on
//! decode: RFC 4506 asks the sender to write zeros, and the [`Encoder`] always does, but the
//! reference implementations (libtirpc's `xdr_opaque` reads the pad into a scratch buffer and
//! ignores it; the Linux kernel's sunrpc skips it) accept any value, and rejecting a call for a
//! byte that carries no meaning would only turn a sloppy client into a broken mount. The price is
//! that decoding is not injective (two byte strings may decode to the same value), which nothing in
//! ONC-RPC relies on.
//!
//! # Strings
//!
//! [`Decoder::string`] requires UTF-8 and fails with [`XdrError::NotUtf8`] otherwise. NFS file
//! names and paths are *not* text: POSIX names are arbitrary bytes, so NFS handlers read them
//! with [`Decoder::opaque`], which has the same wire format.

use thiserror::Error;

/// XDR's unit: every item occupies a multiple of four bytes.
const UNIT: usize = 4;

/// Bytes of padding that follow `length` bytes of opaque data.
fn padding(length: usize) -> usize {
    (UNIT - length % UNIT) % UNIT
}

/// A length or count from the wire as a `usize`; saturating keeps the later comparison with the
/// limit correct on a (theoretical) 16-bit target instead of wrapping.
fn wire_length(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Why XDR data could not be decoded or encoded.
///
/// Offsets are byte positions in the decoder's input (or the encoder's output), which makes a
/// logged error point at the culprit in a packet capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum XdrError {
    /// The input ends before the item does.
    #[error("input ends early at offset {offset}: {needed} bytes needed, {remaining} left")]
    ShortInput {
        offset: usize,
        needed: usize,
        remaining: usize,
    },
    /// A length or element count is larger than the caller's maximum.
    #[error("length {length} at offset {offset} is over the limit of {limit}")]
    LengthOverLimit {
        offset: usize,
        length: usize,
        limit: usize,
    },
    /// A boolean that is neither 0 (FALSE) nor 1 (TRUE).
    #[error("boolean at offset {offset} has value {value}, not 0 or 1")]
    BadBool { offset: usize, value: u32 },
    /// An enumeration value the type does not define.
    #[error("value {value} at offset {offset} is not a valid {name}")]
    BadEnum {
        offset: usize,
        name: &'static str,
        value: u32,
    },
    /// A string that must be UTF-8 is not.
    #[error("string at offset {offset} is not valid UTF-8")]
    NotUtf8 { offset: usize },
    /// Bytes are left over after an item that must fill its buffer exactly.
    #[error("{count} unexpected bytes left at offset {offset}")]
    TrailingBytes { offset: usize, count: usize },
}

/// Reads XDR items from a borrowed buffer, front to back.
///
/// On error the decoder's position is unspecified; callers abandon the message.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    input: &'a [u8],
    position: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder positioned at the start of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Decoder { input, position: 0 }
    }

    /// Bytes consumed so far, i.e. the offset of the next item in the input.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.position)
    }

    /// The unconsumed rest of the input, e.g. a procedure's arguments after the RPC header.
    pub fn rest(&self) -> &'a [u8] {
        self.input.get(self.position..).unwrap_or_default()
    }

    /// Succeeds only when every byte has been consumed; for items that must fill a buffer
    /// exactly, such as an AUTH_SYS credential body.
    pub fn finish(&self) -> Result<(), XdrError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(XdrError::TrailingBytes {
                offset: self.position,
                count,
            }),
        }
    }

    /// Consumes exactly `count` bytes.
    fn take(&mut self, count: usize) -> Result<&'a [u8], XdrError> {
        let short = XdrError::ShortInput {
            offset: self.position,
            needed: count,
            remaining: self.remaining(),
        };
        let end = self.position.checked_add(count).ok_or(short)?;
        let bytes = self.input.get(self.position..end).ok_or(short)?;
        self.position = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let bytes = self.take(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// Consumes `length` bytes of data plus their padding, checking that both are present
    /// before consuming either, and returns the data.
    fn take_padded(&mut self, length: usize) -> Result<&'a [u8], XdrError> {
        let padded = length.saturating_add(padding(length));
        if padded > self.remaining() {
            return Err(XdrError::ShortInput {
                offset: self.position,
                needed: padded,
                remaining: self.remaining(),
            });
        }
        let data = self.take(length)?;
        // The pad's values are deliberately ignored; see the module documentation.
        self.take(padding(length))?;
        Ok(data)
    }

    /// An `unsigned int`.
    pub fn u32(&mut self) -> Result<u32, XdrError> {
        self.take_array().map(u32::from_be_bytes)
    }

    /// An `int`.
    pub fn i32(&mut self) -> Result<i32, XdrError> {
        self.take_array().map(i32::from_be_bytes)
    }

    /// An `unsigned hyper`.
    pub fn u64(&mut self) -> Result<u64, XdrError> {
        self.take_array().map(u64::from_be_bytes)
    }

    /// A `hyper`.
    pub fn i64(&mut self) -> Result<i64, XdrError> {
        self.take_array().map(i64::from_be_bytes)
    }

    /// A `bool`: exactly 0 or 1. Anything else is an error rather than "true", because a peer
    /// that sends 7 for a boolean has lost track of the message layout.
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        let offset = self.position;
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(XdrError::BadBool { offset, value }),
        }
    }

    /// An `enum`, converted to `T`; `name` names the type in the error.
    ///
    /// XDR enums are signed on the wire, but every enum in the ONC-RPC, MOUNT and NFS
    /// specifications is non-negative, so a negative value reads as a large `u32` and is rejected
    /// by `T`'s conversion like any other undefined value.
    pub fn enumeration<T: TryFrom<u32>>(&mut self, name: &'static str) -> Result<T, XdrError> {
        let offset = self.position;
        let value = self.u32()?;
        T::try_from(value).map_err(|_| XdrError::BadEnum {
            offset,
            name,
            value,
        })
    }

    /// Fixed-length `opaque[length]`, where `length` comes from the protocol, not the wire.
    pub fn fixed_opaque(&mut self, length: usize) -> Result<&'a [u8], XdrError> {
        self.take_padded(length)
    }

    /// Fixed-length `opaque[N]` copied into an array, for verifiers and similar small fields.
    pub fn fixed_array<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let bytes = self.take_padded(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// Variable-length `opaque<max>`. Use `u32::MAX` only where the remaining input is
    /// itself bounded, e.g. inside a record already limited by the record decoder.
    pub fn opaque(&mut self, max: u32) -> Result<&'a [u8], XdrError> {
        let offset = self.position;
        let length = wire_length(self.u32()?);
        let limit = wire_length(max);
        if length > limit {
            return Err(XdrError::LengthOverLimit {
                offset,
                length,
                limit,
            });
        }
        self.take_padded(length)
    }

    /// `string<max>`, which must be UTF-8. File names are not strings; see the module docs.
    pub fn string(&mut self, max: u32) -> Result<&'a str, XdrError> {
        let data_offset = self.position.saturating_add(UNIT);
        let bytes = self.opaque(max)?;
        std::str::from_utf8(bytes).map_err(|error| XdrError::NotUtf8 {
            offset: data_offset.saturating_add(error.valid_up_to()),
        })
    }

    /// Variable-length array `T<max>`, each element read by `element`.
    ///
    /// The count is checked against `max` and against the remaining input, assuming every
    /// element occupies at least one 4-byte unit (true of every XDR type except `void` and
    /// zero-length fixed opaque, which no ONC-RPC protocol puts in arrays). Only then is the
    /// `Vec` reserved, so its capacity is at most `remaining / 4` elements.
    pub fn array<T>(
        &mut self,
        max: u32,
        mut element: impl FnMut(&mut Self) -> Result<T, XdrError>,
    ) -> Result<Vec<T>, XdrError> {
        let offset = self.position;
        let count = wire_length(self.u32()?);
        let limit = wire_length(max);
        if count > limit {
            return Err(XdrError::LengthOverLimit {
                offset,
                length: count,
                limit,
            });
        }
        let needed = count.saturating_mul(UNIT);
        if needed > self.remaining() {
            return Err(XdrError::ShortInput {
                offset: self.position,
                needed,
                remaining: self.remaining(),
            });
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(element(self)?);
        }
        Ok(items)
    }

    /// Optional data `T *name`: a boolean followed by the item when it is TRUE.
    pub fn optional<T>(
        &mut self,
        element: impl FnOnce(&mut Self) -> Result<T, XdrError>,
    ) -> Result<Option<T>, XdrError> {
        if self.bool()? {
            element(self).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Appends XDR items to a caller's `Vec<u8>`, so a reply can be built after a record-marking
/// header or an RPC header already in the buffer.
///
/// Fixed-size items cannot fail. Variable-length items take the same maximum as their decoder
/// counterpart and refuse to write anything longer, so we never send what a peer following the
/// same `.x` file must reject.
#[derive(Debug)]
pub struct Encoder<'a> {
    output: &'a mut Vec<u8>,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `output`.
    pub fn new(output: &'a mut Vec<u8>) -> Self {
        Encoder { output }
    }

    /// Bytes in the output buffer, including any that were there before this encoder.
    pub fn position(&self) -> usize {
        self.output.len()
    }

    /// An `unsigned int`.
    pub fn u32(&mut self, value: u32) {
        self.output.extend_from_slice(&value.to_be_bytes());
    }

    /// An `int`.
    pub fn i32(&mut self, value: i32) {
        self.output.extend_from_slice(&value.to_be_bytes());
    }

    /// An `unsigned hyper`.
    pub fn u64(&mut self, value: u64) {
        self.output.extend_from_slice(&value.to_be_bytes());
    }

    /// A `hyper`.
    pub fn i64(&mut self, value: i64) {
        self.output.extend_from_slice(&value.to_be_bytes());
    }

    /// A `bool`.
    pub fn bool(&mut self, value: bool) {
        self.u32(u32::from(value));
    }

    /// Fixed-length opaque data followed by zero padding.
    pub fn fixed_opaque(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
        self.output
            .extend_from_slice(&[0u8; UNIT][..padding(bytes.len())]);
    }

    /// Variable-length `opaque<max>`: length, data, zero padding.
    pub fn opaque(&mut self, bytes: &[u8], max: u32) -> Result<(), XdrError> {
        let length = self.checked_length(bytes.len(), max)?;
        self.u32(length);
        self.fixed_opaque(bytes);
        Ok(())
    }

    /// `string<max>`.
    pub fn string(&mut self, text: &str, max: u32) -> Result<(), XdrError> {
        self.opaque(text.as_bytes(), max)
    }

    /// Variable-length array `T<max>`, each element written by `element`.
    pub fn array<T>(
        &mut self,
        items: &[T],
        max: u32,
        mut element: impl FnMut(&mut Self, &T) -> Result<(), XdrError>,
    ) -> Result<(), XdrError> {
        let count = self.checked_length(items.len(), max)?;
        self.u32(count);
        for item in items {
            element(self, item)?;
        }
        Ok(())
    }

    /// Optional data `T *name`.
    pub fn optional<T>(
        &mut self,
        item: Option<&T>,
        element: impl FnOnce(&mut Self, &T) -> Result<(), XdrError>,
    ) -> Result<(), XdrError> {
        self.bool(item.is_some());
        match item {
            Some(item) => element(self, item),
            None => Ok(()),
        }
    }

    /// The output buffer, for callers that fill a large item in place (a READ reply's data is
    /// read from the file straight into it) and patch lengths afterwards.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        self.output
    }

    /// Bytes that are already XDR (a procedure's encoded results), appended as they are.
    pub fn raw(&mut self, encoded: &[u8]) {
        self.output.extend_from_slice(encoded);
    }

    fn checked_length(&self, length: usize, max: u32) -> Result<u32, XdrError> {
        u32::try_from(length)
            .ok()
            .filter(|length| *length <= max)
            .ok_or(XdrError::LengthOverLimit {
                offset: self.position(),
                length,
                limit: wire_length(max),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian() {
        let bytes = [
            0x00, 0x01, 0x86, 0xa3, // u32 100003
            0xff, 0xff, 0xff, 0xfe, // i32 -2
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, // u64 2^32 + 2
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // i64 -1
        ];
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.u32(), Ok(100_003));
        assert_eq!(decoder.i32(), Ok(-2));
        assert_eq!(decoder.u64(), Ok((1 << 32) + 2));
        assert_eq!(decoder.i64(), Ok(-1));
        assert_eq!(decoder.finish(), Ok(()));

        let mut output = Vec::new();
        let mut encoder = Encoder::new(&mut output);
        encoder.u32(100_003);
        encoder.i32(-2);
        encoder.u64((1 << 32) + 2);
        encoder.i64(-1);
        assert_eq!(output, bytes);
    }

    #[test]
    fn short_input_reports_offset_and_need() {
        let mut decoder = Decoder::new(&[0, 0, 0, 1, 0, 0]);
        assert_eq!(decoder.u32(), Ok(1));
        assert_eq!(
            decoder.u32(),
            Err(XdrError::ShortInput {
                offset: 4,
                needed: 4,
                remaining: 2
            })
        );
        assert_eq!(
            Decoder::new(&[0; 7]).u64(),
            Err(XdrError::ShortInput {
                offset: 0,
                needed: 8,
                remaining: 7
            })
        );
    }

    #[test]
    fn booleans_are_zero_or_one_only() {
        let cases: &[(&[u8], Result<bool, XdrError>)] = &[
            (&[0, 0, 0, 0], Ok(false)),
            (&[0, 0, 0, 1], Ok(true)),
            (
                &[0, 0, 0, 2],
                Err(XdrError::BadBool {
                    offset: 0,
                    value: 2,
                }),
            ),
            (
                &[0xff, 0xff, 0xff, 0xff],
                Err(XdrError::BadBool {
                    offset: 0,
                    value: u32::MAX,
                }),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Decoder::new(bytes).bool(), *expected, "{bytes:?}");
        }
    }

    #[derive(Debug, PartialEq)]
    enum Colour {
        Red,
        Green,
    }

    impl TryFrom<u32> for Colour {
        type Error = ();
        fn try_from(value: u32) -> Result<Self, ()> {
            match value {
                0 => Ok(Colour::Red),
                1 => Ok(Colour::Green),
                _ => Err(()),
            }
        }
    }

    #[test]
    fn enumerations_reject_undefined_values() {
        assert_eq!(
            Decoder::new(&[0, 0, 0, 1]).enumeration::<Colour>("colour"),
            Ok(Colour::Green)
        );
        assert_eq!(
            Decoder::new(&[0xff, 0xff, 0xff, 0xff]).enumeration::<Colour>("colour"),
            Err(XdrError::BadEnum {
                offset: 0,
                name: "colour",
                value: u32::MAX
            })
        );
    }

    #[test]
    fn variable_opaque_table() {
        // (input, max, expected data, bytes consumed)
        type Case = (&'static [u8], u32, Result<&'static [u8], XdrError>, usize);
        let cases: &[Case] = &[
            (&[0, 0, 0, 0], 8, Ok(b""), 4),
            (&[0, 0, 0, 3, b'a', b'b', b'c', 0], 8, Ok(b"abc"), 8),
            (&[0, 0, 0, 4, b'a', b'b', b'c', b'd'], 4, Ok(b"abcd"), 8),
            // Non-zero padding is accepted (lenient decode; see the module docs).
            (&[0, 0, 0, 1, b'x', 0xde, 0xad, 0xbe], 8, Ok(b"x"), 8),
            // Over the caller's maximum: refused before looking at the data.
            (
                &[0, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0],
                4,
                Err(XdrError::LengthOverLimit {
                    offset: 0,
                    length: 5,
                    limit: 4,
                }),
                0,
            ),
            // A huge declared length within the maximum but beyond the input.
            (
                &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3, 4],
                u32::MAX,
                Err(XdrError::ShortInput {
                    offset: 4,
                    needed: 0x8000_0000,
                    remaining: 4,
                }),
                0,
            ),
            // Data present but its padding missing.
            (
                &[0, 0, 0, 3, b'a', b'b', b'c'],
                8,
                Err(XdrError::ShortInput {
                    offset: 4,
                    needed: 4,
                    remaining: 3,
                }),
                0,
            ),
            // u32::MAX length: padding arithmetic must not overflow.
            (
                &[0xff, 0xff, 0xff, 0xff],
                u32::MAX,
                Err(XdrError::ShortInput {
                    offset: 4,
                    needed: 0x1_0000_0000,
                    remaining: 0,
                }),
                0,
            ),
        ];
        for (bytes, max, expected, consumed) in cases {
            let mut decoder = Decoder::new(bytes);
            assert_eq!(decoder.opaque(*max), *expected, "{bytes:?}");
            if expected.is_ok() {
                assert_eq!(decoder.position(), *consumed, "{bytes:?}");
            }
        }
    }

    #[test]
    fn fixed_opaque_is_padded() {
        let bytes = [1, 2, 3, 0, 9, 9, 9, 9];
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.fixed_opaque(3), Ok(&[1u8, 2, 3][..]));
        assert_eq!(decoder.fixed_array::<4>(), Ok([9, 9, 9, 9]));
        assert_eq!(decoder.finish(), Ok(()));

        let mut output = Vec::new();
        Encoder::new(&mut output).fixed_opaque(&[1, 2, 3]);
        assert_eq!(output, [1, 2, 3, 0]);
    }

    #[test]
    fn strings_require_utf8_but_opaque_names_do_not() {
        let latin1_name = [0, 0, 0, 3, b'c', 0xe9, b'!', 0];
        assert_eq!(
            Decoder::new(&latin1_name).string(255),
            Err(XdrError::NotUtf8 { offset: 5 })
        );
        assert_eq!(
            Decoder::new(&latin1_name).opaque(255),
            Ok(&[b'c', 0xe9, b'!'][..])
        );
        assert_eq!(
            Decoder::new(&[0, 0, 0, 2, b'h', b'i', 0, 0]).string(2),
            Ok("hi")
        );
    }

    #[test]
    fn arrays_are_bounded_by_max_and_by_input() {
        let two = [0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 8];
        assert_eq!(Decoder::new(&two).array(16, Decoder::u32), Ok(vec![7, 8]));
        assert_eq!(
            Decoder::new(&two).array(1, Decoder::u32),
            Err(XdrError::LengthOverLimit {
                offset: 0,
                length: 2,
                limit: 1
            })
        );
        // A count of a billion in an eight-byte message must fail before reserving anything.
        assert_eq!(
            Decoder::new(&[0x3b, 0x9a, 0xca, 0x00, 0, 0, 0, 1]).array(u32::MAX, Decoder::u32),
            Err(XdrError::ShortInput {
                offset: 4,
                needed: 4_000_000_000,
                remaining: 4
            })
        );
    }

    #[test]
    fn optional_data() {
        let bytes = [0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0];
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.optional(Decoder::u32), Ok(Some(5)));
        assert_eq!(decoder.optional(Decoder::u32), Ok(None));

        let mut output = Vec::new();
        let mut encoder = Encoder::new(&mut output);
        encoder
            .optional(Some(&5u32), |encoder, value| {
                encoder.u32(*value);
                Ok(())
            })
            .unwrap();
        encoder
            .optional(None::<&u32>, |_, _| unreachable!())
            .unwrap();
        assert_eq!(output, bytes);
    }

    #[test]
    fn finish_reports_trailing_bytes() {
        let mut decoder = Decoder::new(&[0, 0, 0, 1, 0xaa]);
        decoder.u32().unwrap();
        assert_eq!(
            decoder.finish(),
            Err(XdrError::TrailingBytes {
                offset: 4,
                count: 1
            })
        );
        assert_eq!(decoder.rest(), &[0xaa]);
    }

    #[test]
    fn encoder_refuses_what_a_peer_would_reject() {
        let mut output = Vec::new();
        let mut encoder = Encoder::new(&mut output);
        assert_eq!(
            encoder.opaque(&[0; 5], 4),
            Err(XdrError::LengthOverLimit {
                offset: 0,
                length: 5,
                limit: 4
            })
        );
        assert_eq!(
            encoder.array(&[1u32, 2, 3], 2, |encoder, value| {
                encoder.u32(*value);
                Ok(())
            }),
            Err(XdrError::LengthOverLimit {
                offset: 0,
                length: 3,
                limit: 2
            })
        );
        assert!(output.is_empty(), "nothing written on refusal");
    }

    #[test]
    fn encoder_writes_zero_padding_and_lengths() {
        let mut output = vec![0xee]; // Something already in the buffer stays.
        let mut encoder = Encoder::new(&mut output);
        encoder.string("abcde", 8).unwrap();
        encoder.bool(true);
        encoder.raw(&[1, 2, 3, 4]);
        assert_eq!(encoder.position(), 1 + 12 + 4 + 4);
        assert_eq!(
            output,
            [
                0xee, 0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4
            ]
        );
    }
}
