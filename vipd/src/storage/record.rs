//! The bytes of a log file: its header, its records, and the scan that finds where the valid
//! records end. Pure: byte slices in, values out; the file I/O lives in `disk`.
//!
//! The layout and the argument for it are in the `storage` module documentation. Everything read
//! here is bounded by the bytes actually present before it is sliced or allocated, so a damaged
//! file produces an error, never a panic or a huge allocation.

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

/// The first bytes of every log file.
pub(crate) const MAGIC: &[u8; 8] = b"VIPDRAFT";
/// The format this code writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Magic, version, salt, and the header's own CRC.
pub(crate) const FILE_HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// Payload length, payload CRC, kind, and the record header's own CRC.
pub(crate) const RECORD_HEADER_LEN: usize = 4 + 4 + 1 + 4;
/// No record is written or read with a longer payload: the cluster state and a Ready's entries
/// are far smaller, and this bounds what recovery allocates for one record.
pub(crate) const MAX_RECORD_LEN: usize = 64 << 20;

/// The kinds of record, the byte after the payload CRC.
pub(crate) const KIND_BASE: u8 = 1;
pub(crate) const KIND_APPEND: u8 = 2;
pub(crate) const KIND_COMMIT: u8 = 3;
pub(crate) const KIND_CONF_STATE: u8 = 4;

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// The whole log as of a compaction or an installed snapshot; only ever a file's first
    /// record.
    Base {
        hard_state: HardState,
        conf_state: ConfState,
        snapshot: Snapshot,
        entries: Vec<Entry>,
    },
    /// One `persist` without a snapshot: entries to append (replacing any suffix they conflict
    /// with) and the hard state after the call, if it changed.
    Append {
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    },
    /// A commit index reported by a `LightReady`, written on shutdown if no later record
    /// carried it.
    Commit(u64),
    /// The configuration after a conf change (or the initial one).
    ConfState(ConfState),
}

/// Why bytes are not a valid record or header. The caller adds the file and offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("cannot decode {what}: {reason}")]
    Protobuf { what: &'static str, reason: String },
}

fn invalid(reason: &'static str) -> DecodeError {
    DecodeError::Invalid(reason)
}

/// The file header: magic, version, a salt that every record CRC includes (so bytes of an
/// older file, or a record copied to another offset, never pass as a record of this one), and
/// a CRC of the three.
pub(crate) fn encode_file_header(salt: u64) -> [u8; FILE_HEADER_LEN] {
    let mut header = [0u8; FILE_HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&header[..20]);
    header[20..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What a file header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileHeader {
    Valid {
        salt: u64,
    },
    /// A well-formed header of a format this code does not read.
    OtherVersion(u32),
    /// Not a log file header at all (or a damaged one).
    NotALog,
}

pub(crate) fn decode_file_header(bytes: &[u8]) -> FileHeader {
    let Some(header) = bytes.get(..FILE_HEADER_LEN) else {
        return FileHeader::NotALog;
    };
    if &header[..8] != MAGIC || crc32fast::hash(&header[..20]) != read_u32(&header[20..24]) {
        return FileHeader::NotALog;
    }
    let version = read_u32(&header[8..12]);
    if version != FORMAT_VERSION {
        return FileHeader::OtherVersion(version);
    }
    FileHeader::Valid {
        salt: read_u64(&header[12..20]),
    }
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut buffer = [0u8; 4];
    buffer.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(buffer)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(buffer)
}

fn header_crc(salt: u64, offset: u64, len: u32, payload_crc: u32, kind: u8) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(&offset.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(&payload_crc.to_le_bytes());
    hasher.update(&[kind]);
    hasher.finalize()
}

/// Frames `payload` as a record of `kind` that starts at byte `offset` of a file with `salt`.
/// The caller has checked the payload against [`MAX_RECORD_LEN`].
pub(crate) fn frame_record(salt: u64, offset: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let payload_crc = crc32fast::hash(payload);
    let mut record = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&payload_crc.to_le_bytes());
    record.push(kind);
    record.extend_from_slice(&header_crc(salt, offset, len, payload_crc, kind).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// A record header that passed its own CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) len: usize,
    pub(crate) payload_crc: u32,
    pub(crate) kind: u8,
}

/// Reads the record header at `offset` of `file`, if there is a complete one whose CRC matches.
pub(crate) fn record_header_at(file: &[u8], salt: u64, offset: usize) -> Option<RecordHeader> {
    let end = offset.checked_add(RECORD_HEADER_LEN)?;
    let header = file.get(offset..end)?;
    let len = read_u32(&header[0..4]);
    let payload_crc = read_u32(&header[4..8]);
    let kind = header[8];
    // Cheap first: while looking for any valid header after damage, most offsets fail here.
    if !(KIND_BASE..=KIND_CONF_STATE).contains(&kind) {
        return None;
    }
    let crc = read_u32(&header[9..13]);
    if crc != header_crc(salt, offset as u64, len, payload_crc, kind) {
        return None;
    }
    Some(RecordHeader {
        len: usize::try_from(len).ok()?,
        payload_crc,
        kind,
    })
}

/// Where a scan of the records stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte after the header belongs to a valid record.
    Clean,
    /// The record at `offset` is incomplete or damaged and nothing valid follows it: the tail of
    /// a write that never finished (and so was never acknowledged). Truncate here.
    TornTail { offset: usize, reason: &'static str },
}

/// Damage before the tail, or a record that cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanError {
    pub(crate) offset: usize,
    pub(crate) reason: String,
}

/// Walks the records of `file` (whose header has been checked), handing each valid one to
/// `replay` with its offset. A record that is damaged is the torn tail if no valid record header
/// can be found at any later offset; otherwise acknowledged data after it would be lost, and the
/// scan fails.
pub(crate) fn scan_records(
    file: &[u8],
    salt: u64,
    mut replay: impl FnMut(usize, Record) -> Result<(), String>,
) -> Result<ScanEnd, ScanError> {
    let mut offset = FILE_HEADER_LEN;
    while offset < file.len() {
        let damage = match record_header_at(file, salt, offset) {
            None if file.len() - offset < RECORD_HEADER_LEN => Some("incomplete record header"),
            None => Some("record header fails its checksum"),
            Some(header) if header.len > MAX_RECORD_LEN => {
                // The header CRC passed, so this length was written by us: not a torn write.
                return Err(ScanError {
                    offset,
                    reason: format!("record length {} exceeds the limit", header.len),
                });
            }
            Some(header) => {
                let start = offset + RECORD_HEADER_LEN;
                match file.get(start..start + header.len) {
                    None => Some("incomplete record"),
                    Some(payload) if crc32fast::hash(payload) != header.payload_crc => {
                        Some("record payload fails its checksum")
                    }
                    Some(payload) => {
                        let record =
                            decode_payload(header.kind, payload).map_err(|error| ScanError {
                                offset,
                                reason: error.to_string(),
                            })?;
                        if matches!(record, Record::Base { .. }) && offset != FILE_HEADER_LEN {
                            return Err(ScanError {
                                offset,
                                reason: "a base record after the first record".to_owned(),
                            });
                        }
                        replay(offset, record).map_err(|reason| ScanError { offset, reason })?;
                        offset = start + header.len;
                        None
                    }
                }
            }
        };
        if let Some(reason) = damage {
            if let Some(later) = (offset + 1..file.len())
                .find(|&later| record_header_at(file, salt, later).is_some())
            {
                return Err(ScanError {
                    offset,
                    reason: format!("{reason}, yet a valid record follows at byte {later}"),
                });
            }
            return Ok(ScanEnd::TornTail { offset, reason });
        }
    }
    Ok(ScanEnd::Clean)
}

/// Builds record payloads: fixed-width little-endian integers and length-prefixed protobuf
/// messages.
#[derive(Debug, Default)]
pub(crate) struct PayloadWriter {
    bytes: Vec<u8>,
}

impl PayloadWriter {
    pub(crate) fn new() -> PayloadWriter {
        PayloadWriter::default()
    }

    pub(crate) fn put_u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    pub(crate) fn put_u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn put_u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// Appends `message` behind a 4-byte length.
    pub(crate) fn put_message(&mut self, message: &impl Message) -> Result<(), String> {
        let length_at = self.bytes.len();
        self.put_u32(0);
        message
            .write_to_vec(&mut self.bytes)
            .map_err(|error| error.to_string())?;
        let written = self.bytes.len() - length_at - 4;
        let written = u32::try_from(written)
            .map_err(|_| format!("a message of {written} bytes is too long"))?;
        self.bytes[length_at..length_at + 4].copy_from_slice(&written.to_le_bytes());
        Ok(())
    }

    pub(crate) fn put_entries(&mut self, entries: &[Entry]) -> Result<(), String> {
        let count = u32::try_from(entries.len())
            .map_err(|_| format!("{} entries are too many for one record", entries.len()))?;
        self.put_u32(count);
        for entry in entries {
            self.put_message(entry)?;
        }
        Ok(())
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads a payload written by [`PayloadWriter`], refusing to read past its end.
struct PayloadReader<'a> {
    bytes: &'a [u8],
}

impl<'a> PayloadReader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        if count > self.bytes.len() {
            return Err(invalid("record payload is shorter than its fields"));
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(read_u32(self.take(4)?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(read_u64(self.take(8)?))
    }

    fn message<M: Message>(&mut self, what: &'static str) -> Result<M, DecodeError> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        let bytes = self.take(len)?;
        M::parse_from_bytes(bytes).map_err(|error| DecodeError::Protobuf {
            what,
            reason: error.to_string(),
        })
    }

    fn entries(&mut self) -> Result<Vec<Entry>, DecodeError> {
        let count = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        // Every entry takes at least its 4-byte length, so the bytes left bound the count.
        if count > self.bytes.len() / 4 {
            return Err(invalid("entry count exceeds the record"));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(self.message("entry")?);
        }
        Ok(entries)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(invalid("record payload has bytes after its fields"))
        }
    }
}

pub(crate) fn encode_base(
    hard_state: &HardState,
    conf_state: &ConfState,
    snapshot: &Snapshot,
    entries: &[Entry],
) -> Result<Vec<u8>, String> {
    let mut writer = PayloadWriter::new();
    writer.put_message(hard_state)?;
    writer.put_message(conf_state)?;
    writer.put_message(snapshot)?;
    writer.put_entries(entries)?;
    Ok(writer.into_bytes())
}

pub(crate) fn encode_append(
    entries: &[Entry],
    hard_state: Option<&HardState>,
) -> Result<Vec<u8>, String> {
    let mut writer = PayloadWriter::new();
    writer.put_entries(entries)?;
    match hard_state {
        Some(hard_state) => {
            writer.put_u8(1);
            writer.put_message(hard_state)?;
        }
        None => writer.put_u8(0),
    }
    Ok(writer.into_bytes())
}

pub(crate) fn encode_commit(commit: u64) -> Vec<u8> {
    let mut writer = PayloadWriter::new();
    writer.put_u64(commit);
    writer.into_bytes()
}

pub(crate) fn encode_conf_state(conf_state: &ConfState) -> Result<Vec<u8>, String> {
    let mut writer = PayloadWriter::new();
    writer.put_message(conf_state)?;
    Ok(writer.into_bytes())
}

/// Decodes the payload of a record whose CRCs have passed.
pub(crate) fn decode_payload(kind: u8, payload: &[u8]) -> Result<Record, DecodeError> {
    let mut reader = PayloadReader { bytes: payload };
    let record = match kind {
        KIND_BASE => Record::Base {
            hard_state: reader.message("hard state")?,
            conf_state: reader.message("conf state")?,
            snapshot: reader.message("snapshot")?,
            entries: reader.entries()?,
        },
        KIND_APPEND => {
            let entries = reader.entries()?;
            let hard_state = match reader.u8()? {
                0 => None,
                1 => Some(reader.message("hard state")?),
                _ => return Err(invalid("bad hard-state flag")),
            };
            Record::Append {
                entries,
                hard_state,
            }
        }
        KIND_COMMIT => Record::Commit(reader.u64()?),
        KIND_CONF_STATE => Record::ConfState(reader.message("conf state")?),
        _ => return Err(invalid("unknown record kind")),
    };
    reader.finish()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u64 = 0x5eed;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    fn file_with(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut file = encode_file_header(SALT).to_vec();
        for (kind, payload) in records {
            let offset = file.len() as u64;
            file.extend(frame_record(SALT, offset, *kind, payload));
        }
        file
    }

    fn scan(file: &[u8]) -> (Vec<Record>, Result<ScanEnd, ScanError>) {
        let mut records = Vec::new();
        let end = scan_records(file, SALT, |_, record| {
            records.push(record);
            Ok(())
        });
        (records, end)
    }

    #[test]
    fn every_record_kind_round_trips() {
        let hard_state = HardState {
            term: 3,
            vote: 2,
            commit: 9,
            ..HardState::default()
        };
        let conf_state = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..ConfState::default()
        };
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 8;
        snapshot.mut_metadata().term = 3;
        snapshot.mut_metadata().set_conf_state(conf_state.clone());
        snapshot.data = b"machine".to_vec().into();
        let entries = vec![entry(9, 3, b"a"), entry(10, 3, b"")];
        let records = vec![
            Record::Base {
                hard_state: hard_state.clone(),
                conf_state: conf_state.clone(),
                snapshot,
                entries: entries.clone(),
            },
            Record::Append {
                entries: entries.clone(),
                hard_state: Some(hard_state.clone()),
            },
            Record::Append {
                entries: Vec::new(),
                hard_state: None,
            },
            Record::Commit(10),
            Record::ConfState(conf_state.clone()),
        ];
        for record in records {
            let (kind, payload) = match &record {
                Record::Base {
                    hard_state,
                    conf_state,
                    snapshot,
                    entries,
                } => (
                    KIND_BASE,
                    encode_base(hard_state, conf_state, snapshot, entries).unwrap(),
                ),
                Record::Append {
                    entries,
                    hard_state,
                } => (
                    KIND_APPEND,
                    encode_append(entries, hard_state.as_ref()).unwrap(),
                ),
                Record::Commit(commit) => (KIND_COMMIT, encode_commit(*commit)),
                Record::ConfState(conf_state) => {
                    (KIND_CONF_STATE, encode_conf_state(conf_state).unwrap())
                }
            };
            assert_eq!(decode_payload(kind, &payload), Ok(record.clone()));
            let (scanned, end) = scan(&file_with(&[(kind, payload)]));
            assert_eq!(end, Ok(ScanEnd::Clean));
            assert_eq!(scanned, vec![record]);
        }
    }

    #[test]
    fn file_headers_are_recognised() {
        let header = encode_file_header(SALT);
        assert_eq!(
            decode_file_header(&header),
            FileHeader::Valid { salt: SALT }
        );
        assert_eq!(decode_file_header(&header[..10]), FileHeader::NotALog);
        assert_eq!(
            decode_file_header(b"not a log file at all, really"),
            FileHeader::NotALog
        );
        let mut other = header;
        other[8..12].copy_from_slice(&7u32.to_le_bytes());
        let crc = crc32fast::hash(&other[..20]);
        other[20..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_file_header(&other), FileHeader::OtherVersion(7));
        for position in 0..FILE_HEADER_LEN {
            let mut flipped = header;
            flipped[position] ^= 0x10;
            assert_ne!(
                decode_file_header(&flipped),
                FileHeader::Valid { salt: SALT },
                "flip at {position}"
            );
        }
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let cases: Vec<(u8, Vec<u8>)> = vec![
            (KIND_COMMIT, vec![1, 2, 3]),
            (KIND_COMMIT, vec![0; 9]),
            (KIND_APPEND, vec![]),
            // A count of 2^32-1 entries in a 5-byte payload must not allocate.
            (KIND_APPEND, vec![0xff, 0xff, 0xff, 0xff, 0]),
            // An entry whose length runs past the payload.
            (KIND_APPEND, vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]),
            (KIND_APPEND, vec![0, 0, 0, 0, 2]),
            (KIND_CONF_STATE, vec![3, 0, 0, 0, 0xff, 0xff, 0xff]),
            (KIND_BASE, vec![0, 0, 0, 0]),
            (99, vec![]),
        ];
        for (kind, payload) in cases {
            assert!(
                decode_payload(kind, &payload).is_err(),
                "kind {kind} payload {payload:?} decoded"
            );
        }
    }

    #[test]
    fn a_torn_last_record_is_the_tail_at_every_cut() {
        let first = encode_append(&[entry(1, 1, b"one")], None).unwrap();
        let second = encode_append(&[entry(2, 1, b"two")], None).unwrap();
        let file = file_with(&[(KIND_APPEND, first), (KIND_APPEND, second)]);
        let (_, full_end) = scan(&file);
        assert_eq!(full_end, Ok(ScanEnd::Clean));
        let (records, _) = scan(&file);
        let second_offset = {
            let header = record_header_at(&file, SALT, FILE_HEADER_LEN).unwrap();
            FILE_HEADER_LEN + RECORD_HEADER_LEN + header.len
        };
        for cut in second_offset..file.len() {
            let (scanned, end) = scan(&file[..cut]);
            assert_eq!(scanned, records[..1].to_vec(), "cut at {cut}");
            if cut == second_offset {
                assert_eq!(end, Ok(ScanEnd::Clean));
            } else {
                assert!(
                    matches!(end, Ok(ScanEnd::TornTail { offset, .. }) if offset == second_offset),
                    "cut at {cut}: {end:?}"
                );
            }
            // The same cut, with the missing bytes read back as zeros (a file whose size was
            // extended but whose last blocks never reached the disk).
            let mut zeroed = file[..cut].to_vec();
            zeroed.resize(file.len(), 0);
            if zeroed == file {
                // The cut-off bytes were zeros already (the append's "no hard state" flag).
                continue;
            }
            let (scanned, end) = scan(&zeroed);
            assert_eq!(scanned, records[..1].to_vec(), "zeroed from {cut}");
            assert!(
                matches!(end, Ok(ScanEnd::TornTail { offset, .. }) if offset == second_offset),
                "zeroed from {cut}: {end:?}"
            );
        }
    }

    #[test]
    fn damage_before_the_tail_is_an_error_at_every_byte() {
        let records: Vec<(u8, Vec<u8>)> = (1..=3)
            .map(|index| {
                (
                    KIND_APPEND,
                    encode_append(&[entry(index, 1, b"payload")], None).unwrap(),
                )
            })
            .collect();
        let file = file_with(&records);
        let last_offset = {
            let mut offset = FILE_HEADER_LEN;
            for _ in 0..2 {
                offset += RECORD_HEADER_LEN + record_header_at(&file, SALT, offset).unwrap().len;
            }
            offset
        };
        for position in FILE_HEADER_LEN..last_offset {
            for flip in [0x01u8, 0x80] {
                let mut damaged = file.clone();
                damaged[position] ^= flip;
                let (_, end) = scan(&damaged);
                assert!(end.is_err(), "flip {flip:#x} at byte {position}: {end:?}");
            }
        }
    }

    #[test]
    fn a_record_at_another_offset_or_in_another_file_does_not_pass() {
        let payload = encode_commit(5);
        let record = frame_record(SALT, FILE_HEADER_LEN as u64, KIND_COMMIT, &payload);
        let mut file = encode_file_header(SALT).to_vec();
        file.push(0);
        file.extend(&record);
        assert!(record_header_at(&file, SALT, FILE_HEADER_LEN + 1).is_none());
        let mut other_salt = encode_file_header(SALT + 1).to_vec();
        other_salt.extend(&record);
        assert!(record_header_at(&other_salt, SALT + 1, FILE_HEADER_LEN).is_none());
    }

    #[test]
    fn a_valid_record_that_cannot_be_replayed_is_an_error() {
        let file = file_with(&[
            (KIND_COMMIT, encode_commit(1)),
            (KIND_BASE, {
                encode_base(
                    &HardState::default(),
                    &ConfState::default(),
                    &Snapshot::default(),
                    &[],
                )
                .unwrap()
            }),
        ]);
        let (_, end) = scan(&file);
        assert!(
            matches!(&end, Err(error) if error.reason.contains("base record")),
            "{end:?}"
        );
        let file = file_with(&[(KIND_COMMIT, encode_commit(1))]);
        let end = scan_records(&file, SALT, |_, _| Err("commit beyond the log".to_owned()));
        assert_eq!(
            end,
            Err(ScanError {
                offset: FILE_HEADER_LEN,
                reason: "commit beyond the log".to_owned()
            })
        );
    }
}
