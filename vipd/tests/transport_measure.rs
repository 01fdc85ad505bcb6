//! Ad-hoc measurements of the peer transport on loopback: round-trip latency of a small message
//! and throughput of 1 MiB messages between two transports. Not tests: they assert only that
//! the traffic arrived, and are ignored by default. Run them with
//! `cargo test -p vipd --release --test transport_measure -- --ignored --nocapture`.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a measurement reports failure"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vipd::transport::{Event, Transport, TransportConfig};

fn config(node: u64) -> TransportConfig {
    TransportConfig {
        node,
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: BTreeMap::new(),
        secret: b"a cluster secret for measurements".to_vec(),
        cluster_name: "measure".into(),
        max_message: 16 << 20,
        idle_timeout: Duration::from_secs(5),
    }
}

/// Two connected transports and their event receivers.
async fn pair() -> [(Transport, mpsc::Receiver<Event>); 2] {
    let (one, mut one_events) = Transport::start(config(1)).await.unwrap();
    let (two, two_events) = Transport::start(config(2)).await.unwrap();
    two.set_peers(BTreeMap::from([(1, one.local_addr())]));
    one.set_peers(BTreeMap::from([(2, two.local_addr())]));
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), one_events.recv())
            .await
            .unwrap()
            .unwrap();
        if event == (Event::Connected { peer: 2 }) {
            break;
        }
    }
    [(one, one_events), (two, two_events)]
}

/// The next message, skipping other events.
async fn next_message(events: &mut mpsc::Receiver<Event>) -> Vec<u8> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        if let Event::Message { payload, .. } = event {
            return payload;
        }
    }
}

/// Node 2 echoes every message back to node 1.
fn spawn_echo(two: Transport, mut two_events: mpsc::Receiver<Event>) {
    tokio::spawn(async move {
        while let Some(event) = two_events.recv().await {
            if let Event::Message { from, payload } = event {
                two.send(from, payload);
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture, in release"]
async fn round_trip_latency_of_a_small_message() {
    let [(one, mut one_events), (two, two_events)] = pair().await;
    spawn_echo(two, two_events);
    const WARM_UP: usize = 500;
    const ROUNDS: usize = 10_000;
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..WARM_UP + ROUNDS {
        let payload = (round as u64).to_be_bytes().to_vec();
        let sent_at = Instant::now();
        one.send(2, payload.clone());
        assert_eq!(next_message(&mut one_events).await, payload);
        if round >= WARM_UP {
            samples.push(sent_at.elapsed());
        }
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / ROUNDS as u32;
    eprintln!(
        "round trip of an 8-byte message, {ROUNDS} rounds: \
         median {:?}, p99 {:?}, mean {mean:?}, max {:?}",
        samples[ROUNDS / 2],
        samples[ROUNDS * 99 / 100],
        samples[ROUNDS - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture, in release"]
async fn throughput_of_one_mebibyte_messages() {
    let [(one, mut one_events), (two, mut two_events)] = pair().await;
    // Node 2 acknowledges every payload with 8 bytes; node 1 keeps at most WINDOW unacknowledged,
    // so the send queue never overflows.
    tokio::spawn(async move {
        while let Some(event) = two_events.recv().await {
            if let Event::Message { from, payload } = event {
                two.send(from, (payload.len() as u64).to_be_bytes().to_vec());
            }
        }
    });
    const MESSAGE: usize = 1 << 20;
    const COUNT: usize = 512;
    const WINDOW: usize = 32;
    let payload = vec![0x5a; MESSAGE];
    let started = Instant::now();
    let mut in_flight = 0;
    let mut acknowledged = 0;
    let mut sent = 0;
    while acknowledged < COUNT {
        while sent < COUNT && in_flight < WINDOW {
            one.send(2, payload.clone());
            sent += 1;
            in_flight += 1;
        }
        let ack = next_message(&mut one_events).await;
        assert_eq!(ack, (MESSAGE as u64).to_be_bytes());
        acknowledged += 1;
        in_flight -= 1;
    }
    let elapsed = started.elapsed();
    let megabytes = (COUNT * MESSAGE) as f64 / 1e6;
    eprintln!(
        "{COUNT} messages of 1 MiB in {elapsed:?}: {:.0} MB/s, {:.0} messages/s",
        megabytes / elapsed.as_secs_f64(),
        COUNT as f64 / elapsed.as_secs_f64()
    );
}

/// The same two measurements over plain TCP on loopback (length-prefixed, no encryption, one
/// task per side), as the floor the transport is compared with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture, in release"]
async fn plain_tcp_baseline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // The echo side answers each length-prefixed message with its first 8 bytes.
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let Ok(length) = stream.read_u32().await else {
                return;
            };
            let length = length as usize;
            stream.read_exact(&mut buffer[..length]).await.unwrap();
            stream.write_all(&buffer[..8]).await.unwrap();
        }
    });
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut answer = [0u8; 8];
    const ROUNDS: usize = 10_000;
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..500 + ROUNDS {
        let sent_at = Instant::now();
        let mut message = 8u32.to_be_bytes().to_vec();
        message.extend_from_slice(&(round as u64).to_be_bytes());
        stream.write_all(&message).await.unwrap();
        stream.read_exact(&mut answer).await.unwrap();
        if round >= 500 {
            samples.push(sent_at.elapsed());
        }
    }
    samples.sort();
    eprintln!(
        "plain tcp round trip of 8 bytes: median {:?}, p99 {:?}",
        samples[ROUNDS / 2],
        samples[ROUNDS * 99 / 100]
    );

    const MESSAGE: usize = 1 << 20;
    const COUNT: usize = 512;
    // TCP's own window bounds what is in flight here.
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut message = (MESSAGE as u32).to_be_bytes().to_vec();
        message.resize(4 + MESSAGE, 0x5a);
        for _ in 0..COUNT {
            writer.write_all(&message).await.unwrap();
        }
        writer
    });
    for _ in 0..COUNT {
        reader.read_exact(&mut answer).await.unwrap();
    }
    let elapsed = started.elapsed();
    sender.await.unwrap();
    eprintln!(
        "plain tcp: {COUNT} messages of 1 MiB in {elapsed:?}: {:.0} MB/s",
        (COUNT * MESSAGE) as f64 / 1e6 / elapsed.as_secs_f64()
    );
}
