//! Zero-copy READ replies (`gateway::splice`) over TCP against a real gateway serving a
//! temporary directory on loopback: sizes that need padding, reads at and past the end of the
//! file, holes, a file truncated while it is read, many READs in flight, a client that stops
//! reading, and a connection closed in the middle of a reply. Every reply is decoded as a whole
//! record (count equal to the opaque's length, nothing after it) and its bytes compared with the
//! file; the service's pipe counters say which path served each READ and that no pipe with data
//! left in it is ever used again. Needs root (the gateway opens files by handle).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{Args, Nfs, Outcome, RpcClient, TestServer, root};
use gateway::nfs3::SPLICE_MIN_READ;
use gateway::record::encode_record;
use gateway::rpc::{Call, NFS_PROGRAM, OpaqueAuth};
use gateway::splice::PipeStats;
use gateway::xdr::{Decoder, Encoder};

const READ: u32 = 6;
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// Bytes no two offsets of a few MiB share by accident (not a multiple of 4 or of a page).
fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| ((index % 251) as u8) ^ seed ^ ((index / 4093) as u8))
        .collect()
}

/// A file of `content` in the export, and its handle.
fn file(volume: &tempfile::TempDir, nfs: &mut Nfs, name: &str, content: &[u8]) -> Vec<u8> {
    std::fs::write(volume.path().join("data").join(name), content).unwrap();
    let root_fh = nfs.mnt("/data").unwrap();
    nfs.lookup(&root_fh, name.as_bytes()).unwrap().0
}

/// A READ reply's results, checked whole: OK, attributes, then count, eof and an opaque of
/// exactly `count` bytes and nothing after it.
fn read_results(results: &[u8]) -> (Vec<u8>, bool) {
    let decoder = &mut Decoder::new(results);
    assert_eq!(decoder.u32().unwrap(), 0, "READ status");
    assert!(common::post_op_attr(decoder).is_some());
    let count = decoder.u32().unwrap();
    let eof = decoder.bool().unwrap();
    let data = decoder.opaque(u32::MAX).unwrap().to_vec();
    assert_eq!(count as usize, data.len(), "count and opaque length");
    decoder.finish().unwrap();
    (data, eof)
}

fn read_args(handle: &[u8], offset: u64, count: u32) -> Vec<u8> {
    Args::new().opaque(handle).u64(offset).u32(count).0
}

/// Polls `condition` until it holds, for at most 20 s.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client whose receive buffer is small, so that the server's replies back up quickly.
fn narrow_client(server: &TestServer) -> RpcClient {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&server.address.into()).unwrap();
    RpcClient::from_stream(TcpStream::from(socket))
}

fn stats(server: &TestServer) -> PipeStats {
    server.service.pipe_stats()
}

#[test]
fn spliced_reads_match_the_file_whatever_their_size_and_offset() {
    if !common::root_or_skip("spliced_reads_match_the_file_whatever_their_size_and_offset") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    // 3 MiB and 3 bytes: the last READ's data needs padding.
    let content = pattern(3 * MIB + 3, 0);
    let size = content.len() as u64;
    let handle = file(&volume, &mut nfs, "big", &content);
    // (offset, count asked, spliced?)
    let cases: &[(u64, u32, bool)] = &[
        (0, MIB as u32, true),
        (MIB as u64, MIB as u32, true),
        (3 * PAGE as u64, SPLICE_MIN_READ as u32 + 1, true),
        (3 * PAGE as u64, SPLICE_MIN_READ as u32 + 2, true),
        (3 * PAGE as u64, SPLICE_MIN_READ as u32 + 3, true),
        // Starts inside a page: 500,001 bytes fit the pipe, a whole MiB does not (copied).
        (1, 500_001, true),
        (1, MIB as u32, false),
        // Below the threshold: copied.
        (0, SPLICE_MIN_READ as u32 - 1, false),
        (17, 1001, false),
        // The end of the file: a short read with eof, 70,001 bytes (3 of padding).
        (size - 70_001, MIB as u32, true),
        (size - 1, MIB as u32, false),
        // At and past the end: no data, eof.
        (size, MIB as u32, false),
        (size + 4096, MIB as u32, false),
        (u64::MAX - 5, MIB as u32, false),
        // More than MAX_IO asked: MAX_IO served.
        (0, 4 * MIB as u32, true),
    ];
    let before = stats(&server);
    let mut spliced = 0;
    for &(offset, count, splices) in cases {
        let results = nfs.call(READ, Args(read_args(&handle, offset, count)));
        let (data, eof) = read_results(&results);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(content.len());
        let end = start
            .saturating_add(count.min(MIB as u32) as usize)
            .min(content.len());
        assert!(
            data == content[start..end],
            "READ {count} at {offset}: {} bytes, not the file's",
            data.len()
        );
        assert_eq!(eof, end == content.len(), "eof of READ {count} at {offset}");
        spliced += u64::from(splices);
        assert_eq!(
            stats(&server).filled - before.filled,
            spliced,
            "after READ {count} at {offset}, spliced READs"
        );
    }
    // The client may read a reply's last byte before the server gives its pipe back.
    wait_for("every pipe back", || stats(&server).lent == 0);
    let after = stats(&server);
    assert_eq!(after.discarded, 0, "{after:?}");
    assert!(
        after.created <= 2,
        "one call at a time: pipes are reused, {after:?}"
    );
}

#[test]
fn holes_read_as_zeros() {
    if !common::root_or_skip("holes_read_as_zeros") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let path = volume.path().join("data/sparse");
    let data = pattern(100_000, 7);
    let mut expected = vec![0u8; 5 * MIB];
    expected[2 * MIB + 1000..2 * MIB + 1000 + data.len()].copy_from_slice(&data);
    {
        let sparse = std::fs::File::create(&path).unwrap();
        sparse.set_len(expected.len() as u64).unwrap();
        sparse.write_all_at(&data, (2 * MIB + 1000) as u64).unwrap();
    }
    let root_fh = nfs.mnt("/data").unwrap();
    let handle = nfs.lookup(&root_fh, b"sparse").unwrap().0;
    let before = stats(&server).filled;
    let mut read = Vec::new();
    loop {
        let results = nfs.call(
            READ,
            Args(read_args(&handle, read.len() as u64, MIB as u32)),
        );
        let (data, eof) = read_results(&results);
        read.extend_from_slice(&data);
        if eof {
            break;
        }
    }
    assert!(read == expected, "the sparse file read back differs");
    assert_eq!(stats(&server).filled - before, 5);
}

#[test]
fn a_file_truncated_while_it_is_read_gets_well_formed_replies() {
    if !common::root_or_skip("a_file_truncated_while_it_is_read_gets_well_formed_replies") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let content = pattern(4 * MIB, 3);
    let handle = file(&volume, &mut nfs, "shrinking", &content);
    let path = volume.path().join("data/shrinking");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Truncates the file to ever other lengths and writes it back whole, as fast as it can.
    let truncator = {
        let stop = stop.clone();
        let content = content.clone();
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let length = (rounds * 300_007) % content.len() as u64;
                file.set_len(length).unwrap();
                file.write_all_at(&content[length as usize..], length)
                    .unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let mut short = 0;
    for round in 0..200u64 {
        let offset = (round % 4) * MIB as u64;
        let results = nfs.call(READ, Args(read_args(&handle, offset, MIB as u32)));
        let (data, _) = read_results(&results);
        short += usize::from(data.len() < MIB);
        // Every byte is the file's or, cut off by a truncation after the splice, zero.
        let start = offset as usize;
        for (index, &byte) in data.iter().enumerate() {
            let original = content[start + index];
            assert!(
                byte == original || byte == 0,
                "byte {} of READ at {offset}: {byte}, neither {original} nor 0",
                start + index
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = truncator.join().unwrap();
    eprintln!("{short} short READs of 200, {rounds} truncations");
    wait_for("every pipe back", || stats(&server).lent == 0);
    let after = stats(&server);
    // Most READs were spliced (those that found the file cut short before them copied).
    assert!(after.filled > 0, "{after:?}");
}

#[test]
fn many_reads_in_flight_on_one_connection_arrive_whole() {
    if !common::root_or_skip("many_reads_in_flight_on_one_connection_arrive_whole") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let contents = [pattern(3 * MIB + 1, 1), pattern(2 * MIB + 2, 2)];
    let handles: Vec<Vec<u8>> = contents
        .iter()
        .enumerate()
        .map(|(index, content)| file(&volume, &mut nfs, &format!("f{index}"), content))
        .collect();
    // 120 READs back to back before any reply is read: spliced and copied, padded and not,
    // short at the end of the file.
    let counts = [
        MIB,
        SPLICE_MIN_READ + 1,
        100,
        MIB - 2,
        SPLICE_MIN_READ - 1,
        300_003,
    ];
    let mut expected = BTreeMap::new();
    for round in 0..120usize {
        let file = round % 2;
        let count = counts[round % counts.len()];
        let offset = ((round * 7) % 12) * 256 * 1024;
        let xid = nfs.rpc.send(
            NFS_PROGRAM,
            3,
            READ,
            &root(),
            &read_args(&handles[file], offset as u64, count as u32),
        );
        expected.insert(xid, (file, offset, count));
    }
    while !expected.is_empty() {
        let (xid, outcome) = nfs.rpc.receive();
        let (file, offset, count) = expected.remove(&xid).expect("a reply for each call, once");
        let Outcome::Results(results) = outcome else {
            panic!("READ rejected");
        };
        let (data, eof) = read_results(&results);
        let content = &contents[file];
        let start = offset.min(content.len());
        let end = (offset + count).min(content.len());
        assert!(data == content[start..end], "READ {count} at {offset}");
        assert_eq!(eof, end == content.len());
    }
    let after = stats(&server);
    assert!(after.filled > 40, "{after:?}");
    wait_for("every pipe back", || stats(&server).lent == 0);
    assert_eq!(stats(&server).discarded, 0);
}

#[test]
fn a_client_that_stops_reading_holds_no_more_pipes_than_its_slots() {
    if !common::root_or_skip("a_client_that_stops_reading_holds_no_more_pipes_than_its_slots") {
        return;
    }
    let (volume, server) = common::data_server();
    let slots = gateway::Limits::default().requests_per_connection;
    let mut nfs = server.nfs(root());
    let content = pattern(2 * MIB, 5);
    let handle = file(&volume, &mut nfs, "big", &content);
    let mut stalled = narrow_client(&server);
    let mut sent = Vec::new();
    for round in 0..100u64 {
        let offset = (round % 2) * MIB as u64;
        let xid = stalled.send(
            NFS_PROGRAM,
            3,
            READ,
            &root(),
            &read_args(&handle, offset, MIB as u32),
        );
        sent.push((xid, offset as usize));
    }
    // The server reads calls until the connection's slots are taken by replies the client does
    // not read; their data waits in pipes, one per queued reply.
    wait_for("replies to back up", || stats(&server).lent >= slots / 2);
    for _ in 0..50 {
        let now = stats(&server);
        // The other client's last reply may not have given its pipe back yet.
        assert!(now.lent <= slots + 1, "{now:?}");
        // Another client is served meanwhile, spliced too.
        let (data, _) = nfs.read(&handle, MIB as u64, MIB as u32).unwrap();
        assert!(data == content[MIB..]);
    }
    // Then the stalled client reads everything, whole and right.
    let mut expected: BTreeMap<u32, usize> = sent.into_iter().collect();
    while !expected.is_empty() {
        let (xid, outcome) = stalled.receive();
        let offset = expected.remove(&xid).expect("a reply for each call, once");
        let Outcome::Results(results) = outcome else {
            panic!("READ rejected");
        };
        let (data, _) = read_results(&results);
        assert!(data == content[offset..offset + MIB], "READ at {offset}");
    }
    wait_for("every pipe back", || stats(&server).lent == 0);
    let after = stats(&server);
    assert_eq!(after.discarded, 0, "{after:?}");
    assert!(after.created as usize <= slots + 2, "{after:?}");
}

#[test]
fn a_connection_closed_mid_reply_never_returns_a_dirty_pipe() {
    if !common::root_or_skip("a_connection_closed_mid_reply_never_returns_a_dirty_pipe") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let contents = [pattern(2 * MIB, 9), pattern(2 * MIB, 10)];
    let handles: Vec<Vec<u8>> = contents
        .iter()
        .enumerate()
        .map(|(index, content)| file(&volume, &mut nfs, &format!("f{index}"), content))
        .collect();
    for _ in 0..3 {
        let before = stats(&server);
        let mut leaving = narrow_client(&server);
        // Eight READs of 1 MiB in one write, so the server reads them all at once.
        let mut calls = Vec::new();
        for round in 0..8u32 {
            let call = Call {
                xid: round + 1,
                program: NFS_PROGRAM,
                version: 3,
                procedure: READ,
                credential: root(),
                verifier: OpaqueAuth::none(),
            };
            let mut message = Vec::new();
            call.encode(&mut Encoder::new(&mut message)).unwrap();
            message.extend(read_args(&handles[(round % 2) as usize], 0, MIB as u32));
            encode_record(&message, 1 << 30, &mut calls);
        }
        leaving.stream.write_all(&calls).unwrap();
        // Every READ spliced before the client goes: 8 MiB do not fit the socket buffers, so
        // some replies wait in the queue with their data in pipes.
        wait_for("every READ to be spliced", || {
            stats(&server).filled == before.filled + 8
        });
        // Part of the first reply, then gone with data unread (a reset).
        let mut some = [0u8; 1000];
        leaving.stream.read_exact(&mut some).unwrap();
        drop(leaving);
        wait_for("the server to drop the connection's replies", || {
            stats(&server).lent == 0
        });
        let now = stats(&server);
        assert!(now.discarded > before.discarded, "{now:?}");
    }
    let dropped = stats(&server);
    // Every pipe that goes back out must be empty: READs on another connection, reusing the
    // pooled pipes, get exactly their own data.
    for round in 0..40usize {
        let file = round % 2;
        let offset = (round % 3) * 512 * 1024;
        let (data, _) = nfs.read(&handles[file], offset as u64, MIB as u32).unwrap();
        let end = (offset + MIB).min(contents[file].len());
        assert!(data == contents[file][offset..end], "READ {round}");
    }
    wait_for("every pipe back", || stats(&server).lent == 0);
    let after = stats(&server);
    assert!(after.filled >= dropped.filled + 40, "{after:?}");
    assert_eq!(after.discarded, dropped.discarded, "{after:?}");
}
