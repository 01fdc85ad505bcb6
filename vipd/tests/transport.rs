//! The peer transport over loopback: real transports, real TCP, and hostile clients and
//! men-in-the-middle built here. Every wait is for a condition, with a deadline.

#![allow(clippy::unwrap_used, reason = "a panic is how a test reports failure")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use vipd::transport::{Event, MAX_PENDING_HANDSHAKES, Transport, TransportConfig};

const SECRET: &[u8] = b"a cluster secret for the tests";
const CLUSTER: &str = "test";
/// How long any expected condition may take.
const DEADLINE: Duration = Duration::from_secs(15);
const IDLE: Duration = Duration::from_secs(2);
const MAX_MESSAGE: usize = 16 << 20;

struct Node {
    id: u64,
    transport: Transport,
    events: mpsc::Receiver<Event>,
    /// Every event taken from `events` so far, in order, and whether a wait has used it.
    seen: Vec<(Event, bool)>,
}

impl Node {
    /// The first event not yet used by a wait that satisfies `wanted`, looking at events seen
    /// already first; `None` at `deadline`. Every event received is kept in `seen`.
    async fn take(
        &mut self,
        deadline: tokio::time::Instant,
        mut wanted: impl FnMut(&Event) -> bool,
    ) -> Option<Event> {
        if let Some((event, used)) = self
            .seen
            .iter_mut()
            .find(|(event, used)| !*used && wanted(event))
        {
            *used = true;
            return Some(event.clone());
        }
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    let matched = wanted(&event);
                    self.seen.push((event.clone(), matched));
                    if matched {
                        return Some(event);
                    }
                }
                Ok(None) => panic!("event channel of node {} closed", self.id),
                Err(_) => return None,
            }
        }
    }

    /// Takes every event already waiting into `seen`.
    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push((event, false));
        }
    }

    /// Marks everything received so far as used, so that later waits see only newer events.
    fn forget(&mut self) {
        self.drain();
        for (_, used) in &mut self.seen {
            *used = true;
        }
    }

    /// Every event received so far.
    fn history(&mut self) -> impl Iterator<Item = &Event> {
        self.drain();
        self.seen.iter().map(|(event, _)| event)
    }
}

fn config(id: u64, listen: SocketAddr) -> TransportConfig {
    TransportConfig {
        node: id,
        listen,
        peers: BTreeMap::new(),
        secret: SECRET.to_vec(),
        cluster_name: CLUSTER.into(),
        max_message: MAX_MESSAGE,
        idle_timeout: IDLE,
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(config: TransportConfig) -> Node {
    let id = config.node;
    let (transport, events) = Transport::start(config).await.unwrap();
    Node {
        id,
        transport,
        events,
        seen: Vec::new(),
    }
}

/// Starts one node per config (listening on port 0), then tells each the addresses of all the
/// others.
async fn start_cluster(configs: Vec<TransportConfig>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for config in configs {
        nodes.push(start(config).await);
    }
    let addresses: BTreeMap<u64, SocketAddr> = nodes
        .iter()
        .map(|node| (node.id, node.transport.local_addr()))
        .collect();
    for node in &nodes {
        let mut peers = addresses.clone();
        peers.remove(&node.id);
        node.transport.set_peers(peers);
    }
    nodes
}

/// Waits for the first unused event satisfying `wanted`; panics after [`DEADLINE`].
async fn wait_for(node: &mut Node, what: &str, wanted: impl FnMut(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    match node.take(deadline, wanted).await {
        Some(event) => event,
        None => panic!("no {what} at node {} within {DEADLINE:?}", node.id),
    }
}

async fn wait_connected(node: &mut Node, peer: u64) {
    let what = format!("connected {peer}");
    wait_for(node, &what, |event| *event == Event::Connected { peer }).await;
}

async fn wait_unreachable(node: &mut Node, peer: u64) {
    let what = format!("unreachable {peer}");
    wait_for(node, &what, |event| *event == Event::Unreachable { peer }).await;
}

/// Sends `payload` from `sender` until `receiver` gets it. Messages sent before a link is up
/// may be dropped (and reported), so this resends every 200 ms; earlier copies may still
/// arrive later, so callers use a distinct payload each time.
async fn deliver(sender: &Node, receiver: &mut Node, payload: &[u8]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        sender.transport.send(receiver.id, payload.to_vec());
        let resend_at = tokio::time::Instant::now() + Duration::from_millis(200);
        let wanted = |event: &Event| match event {
            Event::Message { from, payload: got } => *from == sender.id && got == payload,
            _ => false,
        };
        if receiver.take(resend_at, wanted).await.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} never received {payload:?} from node {}",
            receiver.id,
            sender.id
        );
    }
}

/// Waits until the server closes `stream` (end of file or reset).
async fn assert_closed_by_server(stream: &mut TcpStream, what: &str) {
    let mut buffer = [0u8; 1024];
    match tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(read)) => panic!("{what}: the server sent {read} bytes"),
        Err(_) => panic!("{what}: connection still open after {DEADLINE:?}"),
    }
}

fn numbered(sender: u64, index: u32) -> Vec<u8> {
    let mut payload = sender.to_be_bytes().to_vec();
    payload.extend_from_slice(&index.to_be_bytes());
    payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_messages_in_order_both_ways() {
    let mut nodes = start_cluster((1..=3).map(|id| config(id, loopback())).collect()).await;
    for node in &mut nodes {
        for peer in 1..=3 {
            if peer != node.id {
                wait_connected(node, peer).await;
            }
        }
    }

    const COUNT: u32 = 300;
    const BIG_AT: u32 = 150;
    // Many Noise messages long (each carries at most 64 KiB), yet small enough that the debug
    // build's unoptimised ciphers get six of them through quickly on a loaded machine.
    let big: Vec<u8> = (0..1 << 20).map(|index: u32| (index % 253) as u8).collect();
    for index in 0..COUNT {
        for node in &nodes {
            for peer in 1..=3 {
                if peer == node.id {
                    continue;
                }
                if index == BIG_AT {
                    node.transport.send(peer, big.clone());
                } else {
                    node.transport.send(peer, numbered(node.id, index));
                }
            }
        }
    }

    for node in &mut nodes {
        let mut next_from: BTreeMap<u64, u32> = BTreeMap::new();
        let expected_total = 2 * COUNT as usize;
        let mut received = 0;
        while received < expected_total {
            let event = wait_for(node, "a message", |event| {
                matches!(event, Event::Message { .. })
            })
            .await;
            let Event::Message { from, payload } = event else {
                unreachable!()
            };
            let index = next_from.entry(from).or_default();
            if *index == BIG_AT {
                assert!(
                    payload == big,
                    "node {} got a corrupt 1 MiB payload",
                    node.id
                );
            } else {
                assert_eq!(
                    payload,
                    numbered(from, *index),
                    "node {} got message out of order from {from}",
                    node.id
                );
            }
            *index += 1;
            received += 1;
        }
        let expected: BTreeMap<u64, u32> = (1..=3)
            .filter(|peer| *peer != node.id)
            .map(|peer| (peer, COUNT))
            .collect();
        assert_eq!(next_from, expected, "node {}", node.id);
    }
    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_with_a_wrong_secret_or_cluster_name_learn_and_inject_nothing() {
    // Node 1 has another secret and dials everyone; node 4 belongs to another cluster with the
    // same secret and is dialled by everyone.
    let mut wrong_secret = config(1, loopback());
    wrong_secret.secret = b"not the cluster secret at all".to_vec();
    let mut wrong_cluster = config(4, loopback());
    wrong_cluster.cluster_name = "other".into();
    let mut nodes = start_cluster(vec![
        wrong_secret,
        config(2, loopback()),
        config(3, loopback()),
        wrong_cluster,
    ])
    .await;

    // Everyone tries to talk to everyone.
    for round in 0..3u32 {
        for node in &nodes {
            for peer in 1..=4 {
                if peer != node.id {
                    node.transport.send(peer, numbered(node.id, round));
                }
            }
        }
    }
    // The members talk to each other...
    let (left, right) = nodes.split_at_mut(2);
    deliver(&left[1], &mut right[0], b"from 2").await;
    deliver(&right[0], &mut left[1], b"from 3").await;
    // ...and their attempts with the outsiders fail: node 1 could not complete a dial to
    // either member, and the members could not complete one to node 4.
    wait_unreachable(&mut nodes[0], 2).await;
    wait_unreachable(&mut nodes[0], 3).await;
    wait_unreachable(&mut nodes[1], 4).await;
    wait_unreachable(&mut nodes[2], 4).await;

    for node in &mut nodes {
        let id = node.id;
        for event in node.history() {
            let outsider_involved = match event {
                Event::Message { from, .. } => [1, 4].contains(from) || [1, 4].contains(&id),
                Event::Connected { peer } => [1, 4].contains(peer) || [1, 4].contains(&id),
                Event::Unreachable { .. } => false,
            };
            assert!(!outsider_involved, "node {id} got {event:?}");
        }
    }
    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_huge_lengths_drop_the_connection_not_the_node() {
    let mut nodes = start_cluster(vec![config(1, loopback()), config(2, loopback())]).await;
    wait_connected(&mut nodes[1], 1).await;
    let target = nodes[1].transport.local_addr();

    let mut garbage: Vec<u8> = (0..4000u32).map(|index| (index * 7 + 3) as u8).collect();
    garbage[0] = 0;
    garbage[1] = 64;
    let attempts: Vec<(&str, Vec<u8>)> = vec![
        ("largest length prefix", vec![0xff, 0xff, 1, 2, 3]),
        ("length prefix zero", vec![0, 0]),
        (
            "plausible message 1 of random bytes",
            garbage[..66].to_vec(),
        ),
        ("a stream of garbage", garbage.clone()),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in attempts {
        let mut stream = TcpStream::connect(target).await.unwrap();
        // The server may close while we still write: that is what we want.
        let _ = stream.write_all(&bytes).await;
        assert_closed_by_server(&mut stream, what).await;
    }
    // A client that connects and says nothing is dropped at the handshake timeout.
    let mut silent = TcpStream::connect(target).await.unwrap();
    assert_closed_by_server(&mut silent, "silent client").await;

    let (left, right) = nodes.split_at_mut(1);
    deliver(&left[0], &mut right[0], b"still here").await;
    deliver(&right[0], &mut left[0], b"me too").await;
    for event in nodes[1].history() {
        assert!(
            !matches!(event, Event::Connected { peer } if *peer != 1),
            "a raw client became {event:?}"
        );
    }
    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_bounded_and_does_not_hurt_established_links() {
    let mut nodes = start_cluster(vec![config(1, loopback()), config(2, loopback())]).await;
    wait_connected(&mut nodes[1], 1).await;
    let target = nodes[1].transport.local_addr();

    // Pending handshakes last up to the handshake timeout (2 s); should opening the flood take
    // longer than that on a starved machine, the slots empty on their own and the attempt is
    // inconclusive, so it is repeated.
    let mut proven = false;
    for _attempt in 0..3 {
        let opened_at = Instant::now();
        let mut flood = Vec::new();
        for _ in 0..MAX_PENDING_HANDSHAKES {
            flood.push(TcpStream::connect(target).await.unwrap());
        }
        // The listener takes connections in order: once this one is closed, every earlier one
        // has been given a slot.
        let mut extra = TcpStream::connect(target).await.unwrap();
        assert_closed_by_server(&mut extra, "connection beyond the bound").await;
        // Without a bound the extra connection, silent like the others, could only be closed by
        // its handshake timeout, which ends after theirs.
        if opened_at.elapsed() < vipd::transport::HANDSHAKE_TIMEOUT {
            let mut still_open = 0;
            for stream in &flood {
                let mut buffer = [0u8; 1];
                let result = stream.try_read(&mut buffer);
                if matches!(result, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock) {
                    still_open += 1;
                }
            }
            assert_eq!(
                still_open, MAX_PENDING_HANDSHAKES,
                "flood connections were closed early"
            );
            proven = true;
            break;
        }
    }
    assert!(
        proven,
        "the machine was too slow to hold a flood open for 2 s"
    );

    // The established link carried on through it.
    let (left, right) = nodes.split_at_mut(1);
    deliver(&left[0], &mut right[0], b"after flood").await;
    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peers_are_reached_again() {
    let mut nodes = start_cluster(vec![config(1, loopback()), config(2, loopback())]).await;
    wait_connected(&mut nodes[0], 2).await;
    let address_1 = nodes[0].transport.local_addr();
    let address_2 = nodes[1].transport.local_addr();

    // The acceptor (node 2) restarts on the same address.
    nodes[0].forget();
    let old = nodes.pop().unwrap();
    old.transport.shutdown().await;
    nodes[0].transport.send(2, b"into the void".to_vec());
    wait_unreachable(&mut nodes[0], 2).await;
    let restarted_at = Instant::now();
    let mut new_2 = config(2, address_2);
    new_2.peers = BTreeMap::from([(1, address_1)]);
    nodes.push(start(new_2).await);
    wait_connected(&mut nodes[0], 2).await;
    eprintln!(
        "acceptor restart: link back {:?} after the new transport started",
        restarted_at.elapsed()
    );
    let (left, right) = nodes.split_at_mut(1);
    deliver(&left[0], &mut right[0], b"hello again").await;
    deliver(&right[0], &mut left[0], b"welcome back").await;

    // The dialer (node 1) restarts on the same address.
    nodes[1].forget();
    let old = nodes.remove(0);
    old.transport.shutdown().await;
    let restarted_at = Instant::now();
    let mut new_1 = config(1, address_1);
    new_1.peers = BTreeMap::from([(2, address_2)]);
    nodes.insert(0, start(new_1).await);
    wait_connected(&mut nodes[1], 1).await;
    eprintln!(
        "dialer restart: link back {:?} after the new transport started",
        restarted_at.elapsed()
    );
    let (left, right) = nodes.split_at_mut(1);
    deliver(&left[0], &mut right[0], b"hi").await;
    deliver(&right[0], &mut left[0], b"hi back").await;
    for node in nodes {
        node.transport.shutdown().await;
    }
}

/// A free port on loopback with nothing listening.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_a_dead_or_unknown_peer_reports_unreachable() {
    let dead = dead_address().await;
    // Node 2 dials node 3, which is dead; node 1 would dial node 2 but never does.
    let mut node = config(2, loopback());
    node.peers = BTreeMap::from([(1, dead), (3, dead)]);
    let mut node = start(node).await;

    node.transport.send(3, b"anyone?".to_vec());
    wait_unreachable(&mut node, 3).await;
    node.transport.send(42, b"who?".to_vec());
    wait_unreachable(&mut node, 42).await;
    node.transport.send(1, b"are you there?".to_vec());
    wait_unreachable(&mut node, 1).await;
    node.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_peers_follows_moved_and_removed_peers() {
    let mut nodes = start_cluster(vec![config(1, loopback()), config(2, loopback())]).await;
    wait_connected(&mut nodes[0], 2).await;
    let address_1 = nodes[0].transport.local_addr();

    // Node 2 moves to another port: node 1 learns of it through set_peers.
    let old = nodes.pop().unwrap();
    old.transport.shutdown().await;
    let mut moved = config(2, loopback());
    moved.peers = BTreeMap::from([(1, address_1)]);
    let moved = start(moved).await;
    let new_address = moved.transport.local_addr();
    nodes.push(moved);
    nodes[0]
        .transport
        .set_peers(BTreeMap::from([(2, new_address)]));
    wait_connected(&mut nodes[0], 2).await;
    let (left, right) = nodes.split_at_mut(1);
    deliver(&left[0], &mut right[0], b"found you").await;
    deliver(&right[0], &mut left[0], b"yes").await;

    // Node 2 removes node 1: the link closes on both sides and node 1's redials are refused.
    nodes[0].forget();
    nodes[1].forget();
    nodes[1].transport.set_peers(BTreeMap::new());
    wait_unreachable(&mut nodes[0], 2).await;
    nodes[1].transport.send(1, b"gone".to_vec());
    wait_unreachable(&mut nodes[1], 1).await;
    // Node 1 keeps trying; each attempt is refused by node 2 after message 1. Put node 1 back
    // and the link returns, proving node 1 was still dialling all along.
    nodes[1]
        .transport
        .set_peers(BTreeMap::from([(1, address_1)]));
    wait_connected(&mut nodes[1], 1).await;
    for node in nodes {
        node.transport.shutdown().await;
    }
}

/// Established TCP connections of this network namespace with `address` at either end.
fn connections_with(address: std::net::Ipv4Addr) -> usize {
    // /proc/net/tcp writes an IPv4 address as the hex of its bytes in memory order.
    let hex = format!("{:08X}", u32::from_le_bytes(address.octets()));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state; 01 is ESTABLISHED.
            fields.get(3) == Some(&"01") && [1, 2].iter().any(|&at| fields[at].starts_with(&hex))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_node_takes_its_links_to_the_new_address_without_dropping_them() {
    // Node 2 dials node 3 and is dialled by node 1. It moves from 127.0.0.2 to 127.0.0.4.
    let listen = |ip: &str| format!("{ip}:0").parse::<SocketAddr>().unwrap();
    let old_ip = "127.0.0.2".parse().unwrap();
    let mut nodes = start_cluster(vec![
        config(1, listen("127.0.0.1")),
        config(2, listen("127.0.0.2")),
        config(3, listen("127.0.0.3")),
    ])
    .await;
    wait_connected(&mut nodes[0], 2).await;
    wait_connected(&mut nodes[2], 2).await;
    assert!(connections_with(old_ip) > 0);
    for node in &mut nodes {
        node.forget();
    }

    let new_address = nodes[1]
        .transport
        .rebind(listen("127.0.0.4"))
        .await
        .unwrap();
    // Node 3 (dialled by node 2) sees node 2 dial again, from its new address.
    wait_connected(&mut nodes[2], 2).await;
    // Node 1 dials node 2 at the new address once it learns it.
    let peers_of_1 = BTreeMap::from([(2, new_address), (3, nodes[2].transport.local_addr())]);
    nodes[0].transport.set_peers(peers_of_1);
    wait_connected(&mut nodes[0], 2).await;
    let deadline = Instant::now() + DEADLINE;
    while connections_with(old_ip) > 0 {
        assert!(Instant::now() < deadline, "links still use the old address");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The links moved over, make before break: nobody saw node 2 unreachable.
    for index in [0, 2] {
        let id = nodes[index].id;
        let down = nodes[index]
            .history()
            .any(|event| *event == Event::Unreachable { peer: 2 });
        assert!(!down, "node {id} lost node 2 during the move");
    }
    let (left, right) = nodes.split_at_mut(1);
    deliver(&left[0], &mut right[0], b"over the new path").await;
    let (two, three) = right.split_at_mut(1);
    deliver(&three[0], &mut two[0], b"and this one").await;
    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_receivers_limit_drops_the_link_which_then_recovers() {
    let mut small = config(2, loopback());
    small.max_message = 1024;
    let mut nodes = start_cluster(vec![config(1, loopback()), small]).await;
    wait_connected(&mut nodes[0], 2).await;
    nodes[0].forget();

    nodes[0].transport.send(2, vec![1; 2048]);
    // Node 2 refuses the record's header and closes the link; node 1 notices.
    wait_unreachable(&mut nodes[0], 2).await;
    let (left, right) = nodes.split_at_mut(1);
    deliver(&left[0], &mut right[0], b"small").await;
    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_peers_work() {
    let v6: SocketAddr = "[::1]:0".parse().unwrap();
    let mut nodes = start_cluster(vec![config(1, v6), config(2, v6)]).await;
    let (left, right) = nodes.split_at_mut(1);
    deliver(&left[0], &mut right[0], b"over v6").await;
    deliver(&right[0], &mut left[0], b"and back").await;
    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_listener_and_the_links() {
    let mut nodes = start_cluster(vec![config(1, loopback()), config(2, loopback())]).await;
    wait_connected(&mut nodes[0], 2).await;
    let address_2 = nodes[1].transport.local_addr();
    nodes[0].forget();
    let node_2 = nodes.pop().unwrap();
    let Node {
        transport,
        mut events,
        ..
    } = node_2;
    transport.shutdown().await;
    let refused = TcpStream::connect(address_2).await;
    assert!(refused.is_err(), "listener still accepts after shutdown");
    // With every task and the handle gone, the event channel ends.
    let end =
        tokio::time::timeout(DEADLINE, async { while events.recv().await.is_some() {} }).await;
    assert!(end.is_ok(), "event channel still open after shutdown");
    nodes[0].transport.send(2, b"after".to_vec());
    wait_unreachable(&mut nodes[0], 2).await;
    nodes.pop().unwrap().transport.shutdown().await;
}

/// A TCP relay between a dialer and an acceptor that can flip a bit of what the dialer sends
/// on its first connection, and freeze the connections it carries (forward nothing more, close
/// nothing) to play a peer that vanished without a word.
struct Proxy {
    address: SocketAddr,
    /// The index of each relayed connection whose acceptor side was closed by the acceptor.
    closed_by_acceptor: mpsc::UnboundedReceiver<usize>,
    accepted: Arc<AtomicUsize>,
    frozen_below: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(target: SocketAddr, flip_first_at: Option<usize>) -> Proxy {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (closed_sender, closed_by_acceptor) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let accepted = accepted.clone();
            let frozen_below = frozen_below.clone();
            async move {
                let mut relays = JoinSet::new();
                loop {
                    let (client, _) = listener.accept().await.unwrap();
                    let index = accepted.fetch_add(1, Ordering::SeqCst);
                    let upstream = TcpStream::connect(target).await.unwrap();
                    let (client_read, client_write) = client.into_split();
                    let (upstream_read, upstream_write) = upstream.into_split();
                    let flip = if index == 0 { flip_first_at } else { None };
                    let closed_sender = closed_sender.clone();
                    let frozen_below = frozen_below.clone();
                    relays.spawn(async move {
                        tokio::select! {
                            () = pipe(client_read, upstream_write, index, flip, &frozen_below) => {}
                            () = pipe(upstream_read, client_write, index, None, &frozen_below) => {
                                let _ = closed_sender.send(index);
                            }
                        }
                    });
                }
            }
        });
        Proxy {
            address,
            closed_by_acceptor,
            accepted,
            frozen_below,
            task,
        }
    }

    fn freeze_existing(&self) {
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    index: usize,
    flip_at: Option<usize>,
    frozen_below: &AtomicUsize,
) {
    let mut offset = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if index < frozen_below.load(Ordering::SeqCst) {
            // Keep both sockets open and forward nothing, forever.
            std::future::pending::<()>().await;
        }
        if let Some(position) = flip_at
            && (offset..offset + read).contains(&position)
        {
            buffer[position - offset] ^= 0x01;
        }
        offset += read;
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_ciphertext_bit_drops_the_connection_and_is_never_delivered() {
    let mut acceptor = start(config(2, loopback())).await;
    // The dialer sends message 1 (66 bytes with its prefix) and the confirmation (18): byte 94
    // lies inside the ciphertext of the first message after the handshake.
    let mut proxy = Proxy::start(acceptor.transport.local_addr(), Some(94)).await;
    // The acceptor learns of the dialer before the dialer dials, so that the first connection
    // through the proxy completes its handshake and the flip hits a transport message.
    let dialer = start(config(1, loopback())).await;
    acceptor
        .transport
        .set_peers(BTreeMap::from([(1, dialer.transport.local_addr())]));
    dialer
        .transport
        .set_peers(BTreeMap::from([(2, proxy.address)]));

    let mut sent = Vec::new();
    for index in 0..5u32 {
        sent.push(numbered(1, index));
        dialer.transport.send(2, numbered(1, index));
    }
    // The acceptor closed the tampered connection...
    let closed = tokio::time::timeout(DEADLINE, proxy.closed_by_acceptor.recv())
        .await
        .unwrap();
    assert_eq!(
        closed,
        Some(0),
        "the tampered connection was not closed by the acceptor"
    );
    // ...the dialer redials through the proxy, untouched this time, and messages flow.
    deliver(&dialer, &mut acceptor, b"after the attack").await;
    sent.push(b"after the attack".to_vec());
    for event in acceptor.history() {
        if let Event::Message { payload, .. } = event {
            assert!(
                sent.contains(payload),
                "a payload nobody sent was delivered: {payload:?}"
            );
        }
    }
    let connections = acceptor
        .history()
        .filter(|event| **event == Event::Connected { peer: 1 })
        .count();
    assert_eq!(
        connections, 2,
        "the acceptor should have seen the tampered and the new link"
    );
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 2);
    dialer.transport.shutdown().await;
    acceptor.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_silently_is_redialled_and_its_old_link_replaced() {
    // The acceptor would wait 60 s before giving up on a silent link; the dialer gives up after
    // 1.5 s and dials again. The acceptor must then switch to the new connection at once.
    let mut acceptor = config(2, loopback());
    acceptor.idle_timeout = Duration::from_secs(60);
    let mut acceptor = start(acceptor).await;
    let proxy = Proxy::start(acceptor.transport.local_addr(), None).await;
    let mut dialer = config(1, loopback());
    dialer.idle_timeout = Duration::from_millis(1500);
    let mut dialer = start(dialer).await;
    acceptor
        .transport
        .set_peers(BTreeMap::from([(1, dialer.transport.local_addr())]));
    dialer
        .transport
        .set_peers(BTreeMap::from([(2, proxy.address)]));
    wait_connected(&mut acceptor, 1).await;
    deliver(&dialer, &mut acceptor, b"before").await;

    proxy.freeze_existing();
    let frozen_at = Instant::now();
    // The deadline of this wait (15 s) is far below the acceptor's idle timeout (60 s): only
    // replacement, not its own timeout, can bring the new connection in time.
    wait_connected(&mut acceptor, 1).await;
    let replaced_after = frozen_at.elapsed();
    eprintln!("silent peer: link replaced {replaced_after:?} after the freeze");
    deliver(&acceptor, &mut dialer, b"on the new link").await;
    deliver(&dialer, &mut acceptor, b"both ways").await;
    dialer.transport.shutdown().await;
    acceptor.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_send_queue_drops_and_reports_unreachable_without_blocking() {
    // Long idle timeouts: the link stays up while the proxy swallows everything, so a report
    // can only come from the full queue.
    let mut acceptor = config(2, loopback());
    acceptor.idle_timeout = Duration::from_secs(60);
    let acceptor = start(acceptor).await;
    let proxy = Proxy::start(acceptor.transport.local_addr(), None).await;
    let mut dialer = config(1, loopback());
    dialer.idle_timeout = Duration::from_secs(60);
    let mut dialer = start(dialer).await;
    acceptor
        .transport
        .set_peers(BTreeMap::from([(1, dialer.transport.local_addr())]));
    dialer
        .transport
        .set_peers(BTreeMap::from([(2, proxy.address)]));
    wait_connected(&mut dialer, 2).await;
    dialer.forget();
    proxy.freeze_existing();

    let payload = vec![0u8; 16 * 1024];
    let mut sends = 0;
    let reported = loop {
        dialer.transport.send(2, payload.clone());
        sends += 1;
        dialer.drain();
        if dialer
            .history()
            .any(|event| *event == Event::Unreachable { peer: 2 })
        {
            break true;
        }
        if sends % 64 == 0 {
            // Let the writer move what it can into the sockets.
            tokio::task::yield_now().await;
        }
        if sends >= 200_000 {
            break false;
        }
    };
    assert!(
        reported,
        "no unreachable after {sends} sends into a stalled link"
    );
    eprintln!("stalled link: unreachable after {sends} sends of 16 KiB");
    assert!(
        sends > vipd::transport::SEND_QUEUE,
        "reported before the queue could fill"
    );
    dialer.transport.shutdown().await;
    acceptor.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_learns_its_id_from_a_member_and_then_links_normally() {
    // The joining node's address is known to the members; its id is not known to it.
    let probe = TcpListener::bind(loopback()).await.unwrap();
    let joining_address = probe.local_addr().unwrap();
    drop(probe);
    let mut member = config(1, loopback());
    member.peers = BTreeMap::from([(5, joining_address)]);
    let mut member = start(member).await;
    // An outsider with the wrong secret dials first: it teaches nothing.
    let outsider = tokio::spawn(async move {
        let mut wrong = config(9, loopback());
        wrong.secret = b"not the cluster secret at all".to_vec();
        wrong.peers = BTreeMap::from([(10, joining_address)]);
        let (transport, _events) = Transport::start(wrong).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        transport.shutdown().await;
    });
    let introduction = tokio::time::timeout(
        DEADLINE,
        vipd::transport::learn_identity(joining_address, SECRET, CLUSTER),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        introduction,
        vipd::transport::Introduction { node: 5, by: 1 }
    );
    // Now the real transport, with the learnt id; lower ids are accepted whatever their
    // address says until the state tells it the real ones.
    let mut joined = config(5, joining_address);
    joined.peers = BTreeMap::from([(1, "0.0.0.0:9".parse().unwrap())]);
    let mut joined = start(joined).await;
    wait_connected(&mut joined, 1).await;
    deliver(&member, &mut joined, b"welcome").await;
    deliver(&joined, &mut member, b"thanks").await;
    // Learning the real address of a peer that dials us keeps the link.
    joined.forget();
    joined
        .transport
        .set_peers(BTreeMap::from([(1, member.transport.local_addr())]));
    deliver(&member, &mut joined, b"still here").await;
    assert!(
        !joined
            .seen
            .iter()
            .any(|(event, _)| *event == Event::Unreachable { peer: 1 }),
        "{:?}",
        joined.seen
    );
    outsider.await.unwrap();
    member.transport.shutdown().await;
    joined.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_address_changes_rebinds_and_is_reached_there() {
    let mut nodes = start_cluster(vec![config(1, loopback()), config(2, loopback())]).await;
    wait_connected(&mut nodes[0], 2).await;
    let old = nodes[1].transport.local_addr();
    let new = nodes[1].transport.rebind(loopback()).await.unwrap();
    assert_ne!(old, new);
    // The old address still answers, for peers that have not heard of the move yet, and the
    // link that is up stays up: over it the moved node may be hearing of its own move.
    assert!(TcpStream::connect(old).await.is_ok());
    nodes[0].transport.set_peers(BTreeMap::from([(2, new)]));
    {
        let (left, right) = nodes.split_at_mut(1);
        deliver(&left[0], &mut right[0], b"over the old link").await;
    }
    // A new connection goes to the new address.
    let first = nodes.remove(0);
    first.transport.shutdown().await;
    let mut restarted = config(1, loopback());
    restarted.peers = BTreeMap::from([(2, new)]);
    let mut restarted = start(restarted).await;
    nodes[0]
        .transport
        .set_peers(BTreeMap::from([(1, restarted.transport.local_addr())]));
    wait_connected(&mut restarted, 2).await;
    deliver(&nodes[0], &mut restarted, b"at the new address").await;
    // A second move retires the first address for good.
    let newer = nodes[0].transport.rebind(loopback()).await.unwrap();
    assert!(TcpStream::connect(old).await.is_err());
    assert!(TcpStream::connect(new).await.is_ok());
    restarted.transport.set_peers(BTreeMap::from([(2, newer)]));
    deliver(&nodes[0], &mut restarted, b"at the newer address").await;
    restarted.transport.shutdown().await;
    for node in nodes {
        node.transport.shutdown().await;
    }
}
