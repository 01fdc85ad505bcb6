//! The embedded DNS server for real: three `vipgate node` processes in a namespace lab serving
//! the zone `vipgate.test` (the lab's four VIPs plus 20 more IPv6 ones, so AAAA answers outgrow
//! 512 bytes), asked with `dig` from a client namespace. Every node answers the live VIPs,
//! identically and authoritatively, in rotating order, also when asked at a VIP; names outside
//! the zone are REFUSED and never recursed; NXDOMAIN and NODATA carry the SOA; EDNS is echoed;
//! an answer that does not fit is truncated and served over TCP; garbage leaves the servers
//! answering; `vipgate dns` shows the same lists. Then an owner is killed: while its VIPs are
//! unhosted the answers stop listing them (within 1 s), and list them again within 1 s of their
//! move. Needs root and dig (dnsutils).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]
#![allow(
    clippy::zombie_processes,
    reason = "node daemons are stopped by the lab's teardown; a killed one is reaped when the test ends"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::cluster::logs;
use nix::sys::signal::Signal;
use vipgate::lab::{Lab, cluster, netns};

const NODES: [&str; 3] = ["node1", "node2", "node3"];
const VIPGATE: &str = env!("CARGO_BIN_EXE_vipgate");
const NFS: &str = "nfs.vipgate.test";
/// IPv6 VIPs added to the lab's four, so that `nfs` AAAA (21 records) needs more than 512 bytes.
const EXTRA_V6: u32 = 20;
/// How long after a change the answers may still show the old set (DESIGN.md invariant 6).
const DNS_DEADLINE: Duration = Duration::from_secs(1);

fn all_vips() -> BTreeSet<IpAddr> {
    let mut vips: BTreeSet<IpAddr> = cluster::vip_addresses().into_iter().collect();
    vips.extend((0..EXTRA_V6).map(|index| extra_v6(index).parse::<IpAddr>().unwrap()));
    vips
}

fn extra_v6(index: u32) -> String {
    format!("2001:db8:0:1::{:x}", 0x1000 + index)
}

/// The lab's cluster file with the extra VIPs, and `vipgate node` on every node.
fn start_cluster(lab: &Lab) {
    let name = lab.name();
    for dir in [cluster::volume_source(name), cluster::volume_mount(name)] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let export = cluster::volume_source(name).join(cluster::DEMO_EXPORT);
    std::fs::create_dir_all(&export).unwrap();
    let owner = Some(cluster::DEMO_EXPORT_OWNER);
    std::os::unix::fs::chown(&export, owner, owner).unwrap();
    let extra: String = (0..EXTRA_V6)
        .map(|index| format!("  - address: \"{}/64\"\n", extra_v6(index)))
        .collect();
    let text = cluster::cluster_file(
        lab.plan(),
        "a dns lab secret that is long enough",
        &cluster::volume_mount(name),
    )
    .replacen(
        "public_addresses:\n",
        &format!("public_addresses:\n{extra}"),
        1,
    );
    std::fs::write(cluster::config_path(name), text).unwrap();
    for node in NODES {
        lab.start_node(node, std::path::Path::new(VIPGATE)).unwrap();
    }
}

fn node_address(lab: &Lab, node: &str) -> IpAddr {
    lab.host(node).unwrap().public_v4()
}

/// Which nodes have each VIP configured now.
fn holders(lab: &Lab) -> BTreeMap<IpAddr, Vec<&'static str>> {
    let mut holders: BTreeMap<IpAddr, Vec<&'static str>> = all_vips()
        .into_iter()
        .map(|vip| (vip, Vec::new()))
        .collect();
    for node in NODES {
        for address in lab.addresses(node).unwrap_or_default() {
            if let Some(list) = holders.get_mut(&address.address.addr()) {
                list.push(node);
            }
        }
    }
    holders
}

/// Every VIP on exactly one node, and every node holding as many as the others, give or take one.
fn balanced(holders: &BTreeMap<IpAddr, Vec<&'static str>>) -> bool {
    let counts: Vec<usize> = NODES
        .iter()
        .map(|node| {
            holders
                .values()
                .filter(|nodes| nodes.contains(node))
                .count()
        })
        .collect();
    holders.values().all(|nodes| nodes.len() == 1)
        && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
}

/// One `dig` answer, parsed from its default output.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// (name, ttl, type, data) per record.
    answer: Vec<(String, u32, String, String)>,
    authority: Vec<(String, u32, String, String)>,
    edns: bool,
    tcp: bool,
    text: String,
}

impl Dig {
    fn addresses(&self) -> BTreeSet<IpAddr> {
        self.answer
            .iter()
            .filter(|record| record.2 == "A" || record.2 == "AAAA")
            .map(|record| record.3.parse().unwrap())
            .collect()
    }

    fn ordered(&self) -> Vec<String> {
        self.answer.iter().map(|record| record.3.clone()).collect()
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|have| have == flag)
    }
}

fn parse_dig(text: &str) -> Dig {
    let mut dig = Dig {
        text: text.to_owned(),
        ..Dig::default()
    };
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            dig.status = rest
                .split("status: ")
                .nth(1)
                .and_then(|status| status.split(',').next())
                .unwrap_or_default()
                .to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or_default();
            dig.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if line.starts_with(";; OPT PSEUDOSECTION") {
            dig.edns = true;
        } else if line.starts_with(";; SERVER:") {
            dig.tcp = line.contains("(TCP)");
        } else if let Some(rest) = line.strip_prefix(";; ") {
            if let Some(name) = rest.strip_suffix(" SECTION:") {
                section = if name == "ANSWER" {
                    "answer"
                } else if name == "AUTHORITY" {
                    "authority"
                } else {
                    ""
                };
            }
        } else if !line.is_empty() && !line.starts_with(';') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 5 {
                let record = (
                    fields[0].to_owned(),
                    fields[1].parse().unwrap_or(u32::MAX),
                    fields[3].to_owned(),
                    fields[4..].join(" "),
                );
                match section {
                    "answer" => dig.answer.push(record),
                    "authority" => dig.authority.push(record),
                    _ => {}
                }
            }
        }
    }
    dig
}

/// `dig @server ARGS` from client1.
fn dig(lab: &Lab, server: IpAddr, args: &[&str]) -> Dig {
    let output = lab
        .command("client1", "dig")
        .unwrap()
        .arg(format!("@{server}"))
        .args(["+time=1", "+tries=2"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    parse_dig(&text)
}

/// What `nfs.vipgate.test` lists on `server` (A and AAAA in one ANY query); `None` when the
/// server did not answer.
fn nfs_answer(lab: &Lab, server: IpAddr) -> Option<BTreeSet<IpAddr>> {
    let output = lab
        .command("client1", "dig")
        .unwrap()
        .arg(format!("@{server}"))
        .args(["+time=1", "+tries=1", NFS, "ANY"])
        .output()
        .unwrap();
    let dig = parse_dig(&String::from_utf8_lossy(&output.stdout));
    (dig.status == "NOERROR").then(|| dig.addresses())
}

#[test]
fn dig_sees_live_vips_on_every_node_through_a_failover() {
    if !common::root_or_skip("dig_sees_live_vips_on_every_node_through_a_failover") {
        return;
    }
    let lab = common::lab("d", 3, 1);
    start_cluster(&lab);
    let servers: Vec<IpAddr> = NODES.iter().map(|node| node_address(&lab, node)).collect();
    let vips = all_vips();

    // Every VIP hosted once, and every node answering all of them.
    // Balanced first: VIPs taken by the first node up move when the others join.
    let settled = common::wait_until(Duration::from_secs(40), || {
        balanced(&holders(&lab))
            && servers
                .iter()
                .all(|server| nfs_answer(&lab, *server).as_ref() == Some(&vips))
    });
    assert!(
        settled,
        "the cluster never answered every VIP: {:?}\n{:?}\n{}",
        holders(&lab),
        nfs_answer(&lab, servers[0]),
        logs(&lab)
    );
    check_answers(&lab, &servers, &vips);
    check_errors_and_sizes(&lab, servers[0]);
    check_vipgate_dns(&lab, &vips);
    check_failover(&lab, &servers);
}

/// Same answers everywhere, authoritative, TTL 5, the same SOA serial; rotation; asking a VIP.
fn check_answers(lab: &Lab, servers: &[IpAddr], vips: &BTreeSet<IpAddr>) {
    let v4: BTreeSet<IpAddr> = vips.iter().filter(|vip| vip.is_ipv4()).copied().collect();
    let v6: BTreeSet<IpAddr> = vips.iter().filter(|vip| vip.is_ipv6()).copied().collect();
    for server in servers {
        let a = dig(lab, *server, &[NFS, "A"]);
        assert_eq!(a.status, "NOERROR", "{}", a.text);
        assert!(a.has_flag("aa") && !a.has_flag("ra"), "{}", a.text);
        assert_eq!(a.addresses(), v4, "{}", a.text);
        assert!(a.answer.iter().all(|record| record.1 == 5), "{}", a.text);
        let aaaa = dig(lab, *server, &[NFS, "AAAA"]);
        assert_eq!(aaaa.addresses(), v6, "{}", aaaa.text);
    }
    // The SOA serial is the same on every node once they applied the same log.
    let serials = || -> BTreeSet<String> {
        servers
            .iter()
            .map(|server| {
                let soa = dig(lab, *server, &["vipgate.test", "SOA"]);
                soa.answer
                    .first()
                    .map(|record| record.3.clone())
                    .unwrap_or_default()
            })
            .collect()
    };
    let mut seen = BTreeSet::new();
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            seen = serials();
            seen.len() == 1
        }),
        "the nodes answer different SOA records: {seen:?}"
    );
    let soa = seen.first().unwrap();
    assert!(
        soa.starts_with("node1.vipgate.test. hostmaster.vipgate.test. "),
        "{soa}"
    );
    let ns = dig(lab, servers[0], &["vipgate.test", "NS"]);
    let hosts: Vec<String> = ns.answer.iter().map(|record| record.3.clone()).collect();
    assert_eq!(
        hosts,
        [
            "node1.vipgate.test.",
            "node2.vipgate.test.",
            "node3.vipgate.test."
        ]
    );

    // The order rotates from query to query.
    let orders: BTreeSet<Vec<String>> = (0..6)
        .map(|_| dig(lab, servers[0], &[NFS, "A"]).ordered())
        .collect();
    assert!(orders.len() >= 2, "always the same order: {orders:?}");

    // Asked at a VIP (IPv4 and IPv6), the reply comes from that VIP, which dig insists on.
    for vip in [cluster::vip_addresses()[0], cluster::vip_addresses()[3]] {
        let answer = dig(lab, vip, &[NFS, "A"]);
        assert_eq!(answer.addresses(), v4, "asked at {vip}: {}", answer.text);
    }
}

/// REFUSED, NXDOMAIN, NODATA, EDNS, truncation and TCP, garbage.
fn check_errors_and_sizes(lab: &Lab, server: IpAddr) {
    for (name, qtype) in [("example.com", "A"), (".", "NS"), ("test", "SOA")] {
        let refused = dig(lab, server, &["+recurse", name, qtype]);
        assert_eq!(refused.status, "REFUSED", "{}", refused.text);
        assert!(
            !refused.has_flag("aa") && !refused.has_flag("ra"),
            "{}",
            refused.text
        );
        assert!(refused.answer.is_empty(), "{}", refused.text);
    }
    let nxdomain = dig(lab, server, &["nope.vipgate.test", "A"]);
    assert_eq!(nxdomain.status, "NXDOMAIN", "{}", nxdomain.text);
    assert!(nxdomain.has_flag("aa"), "{}", nxdomain.text);
    assert_eq!(nxdomain.authority.len(), 1, "{}", nxdomain.text);
    assert_eq!(nxdomain.authority[0].2, "SOA", "{}", nxdomain.text);
    for (name, qtype) in [(NFS, "MX"), ("node1.vipgate.test", "AAAA")] {
        let nodata = dig(lab, server, &[name, qtype]);
        assert_eq!(nodata.status, "NOERROR", "{}", nodata.text);
        assert!(
            nodata.has_flag("aa") && nodata.answer.is_empty(),
            "{}",
            nodata.text
        );
        assert_eq!(nodata.authority.len(), 1, "{}", nodata.text);
        assert_eq!(nodata.authority[0].2, "SOA", "{}", nodata.text);
    }
    let node = dig(lab, server, &["node2.vipgate.test", "A"]);
    assert_eq!(node.ordered(), ["192.0.2.12"], "{}", node.text);

    // EDNS is echoed; without it there is no OPT record.
    assert!(dig(lab, server, &[NFS, "A"]).edns);
    assert!(!dig(lab, server, &["+noedns", NFS, "A"]).edns);

    // 21 AAAA records do not fit 512 bytes: TC over UDP, then dig asks again over TCP.
    let truncated = dig(lab, server, &["+bufsize=512", "+ignore", NFS, "AAAA"]);
    assert!(truncated.has_flag("tc"), "{}", truncated.text);
    assert!(truncated.answer.is_empty(), "{}", truncated.text);
    let retried = dig(lab, server, &["+bufsize=512", NFS, "AAAA"]);
    assert!(retried.tcp && !retried.has_flag("tc"), "{}", retried.text);
    assert_eq!(
        retried.answer.len(),
        1 + EXTRA_V6 as usize,
        "{}",
        retried.text
    );
    let tcp = dig(lab, server, &["+tcp", NFS, "A"]);
    assert!(tcp.tcp && tcp.answer.len() == 3, "{}", tcp.text);

    // Garbage over UDP and TCP leaves the server answering.
    let client = lab.host("client1").unwrap().netns.clone();
    netns::run_in(&client, || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        let target = SocketAddr::new(server, 53);
        let mut query = dig_query_bytes();
        for garbage in [&[][..], &[0u8; 5], &[0xff; 12], &[0x41; 1400], &query[..20]] {
            socket.send_to(garbage, target).unwrap();
        }
        query[2] |= 0x80;
        socket.send_to(&query, target).unwrap();
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        stream.write_all(&[0xff, 0xff, 0, 0, 0]).unwrap();
    })
    .unwrap();
    let after = dig(lab, server, &[NFS, "A"]);
    assert_eq!(after.status, "NOERROR", "{}", after.text);
}

/// A standard query for `nfs.vipgate.test` A, as bytes.
fn dig_query_bytes() -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in NFS.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// `vipgate dns` on a node lists the same addresses as the servers answer.
fn check_vipgate_dns(lab: &Lab, vips: &BTreeSet<IpAddr>) {
    let output = lab
        .command("node1", VIPGATE)
        .unwrap()
        .args(["dns", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["zone"], "vipgate.test");
    let nfs = report["names"]
        .as_array()
        .unwrap()
        .iter()
        .find(|name| name["name"] == NFS)
        .unwrap();
    let listed: BTreeSet<IpAddr> = nfs["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|address| address.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(&listed, vips);
    // Its serial is the one the servers give out (nothing moved since the answers settled).
    let soa = dig(lab, node_address(lab, "node1"), &["vipgate.test", "SOA"]);
    let serial = soa
        .answer
        .first()
        .and_then(|record| record.3.split_whitespace().nth(2).map(str::to_owned))
        .unwrap();
    assert_eq!(report["serial"].to_string(), serial, "{}", soa.text);
    let text = lab
        .command("node1", VIPGATE)
        .unwrap()
        .arg("dns")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("node3.vipgate.test  node     192.0.2.13"),
        "{text}"
    );
}

/// One sample of the failover: who holds each VIP, what the survivors answer, and who holds
/// each VIP again (a VIP being added or removed meanwhile shows in one of the two reads).
struct Sample {
    at: Duration,
    holders: BTreeMap<IpAddr, Vec<&'static str>>,
    /// Per surviving server, what it listed (`None`: no answer).
    answers: Vec<Option<BTreeSet<IpAddr>>>,
    after: Duration,
    holders_after: BTreeMap<IpAddr, Vec<&'static str>>,
}

impl Sample {
    /// Configured on no node in both reads.
    fn unhosted(&self, vip: &IpAddr) -> bool {
        self.holders[vip].is_empty() && self.holders_after[vip].is_empty()
    }

    /// On a single node other than `victim` by the second read.
    fn moved(&self, vip: &IpAddr, victim: &str) -> bool {
        matches!(self.holders_after[vip].as_slice(), [node] if *node != victim)
    }
}

/// Kills the daemon of the node holding the first VIP; samples holders and answers until the
/// VIPs moved and every survivor lists them again.
fn check_failover(lab: &Lab, servers: &[IpAddr]) {
    let first = cluster::vip_addresses()[0];
    let victim = holders(lab)[&first][0];
    let victim_vips: Vec<IpAddr> = holders(lab)
        .into_iter()
        .filter(|(_, nodes)| nodes.as_slice() == [victim])
        .map(|(vip, _)| vip)
        .collect();
    let survivors: Vec<IpAddr> = NODES
        .iter()
        .zip(servers)
        .filter(|(node, _)| **node != victim)
        .map(|(_, server)| *server)
        .collect();

    lab.node_daemon(victim)
        .unwrap()
        .unwrap()
        .signal(Signal::SIGKILL);
    let killed = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    loop {
        let at = killed.elapsed();
        let holders = holders(lab);
        let answers: Vec<Option<BTreeSet<IpAddr>>> = std::thread::scope(|scope| {
            let asks: Vec<_> = survivors
                .iter()
                .map(|server| scope.spawn(move || nfs_answer(lab, *server)))
                .collect();
            asks.into_iter().map(|ask| ask.join().unwrap()).collect()
        });
        let after = killed.elapsed();
        let holders_after = self::holders(lab);
        let sample = Sample {
            at,
            holders,
            answers,
            after,
            holders_after,
        };
        let done = victim_vips.iter().all(|vip| {
            sample.moved(vip, victim)
                && sample
                    .answers
                    .iter()
                    .all(|answer| answer.as_ref().is_some_and(|set| set.contains(vip)))
        });
        samples.push(sample);
        if done || at > Duration::from_secs(20) {
            break;
        }
    }
    let lists = |sample: &Sample, vip: &IpAddr| {
        sample
            .answers
            .iter()
            .any(|answer| answer.as_ref().is_some_and(|set| set.contains(vip)))
    };
    let all_list = |sample: &Sample, vip: &IpAddr| {
        sample
            .answers
            .iter()
            .all(|answer| answer.as_ref().is_some_and(|set| set.contains(vip)))
    };
    let timeline = || {
        samples
            .iter()
            .map(|sample| {
                format!(
                    "{:>5}ms held {:?} listed {:?}",
                    sample.at.as_millis(),
                    victim_vips
                        .iter()
                        .map(|vip| (
                            sample.holders[vip].clone(),
                            sample.holders_after[vip].clone()
                        ))
                        .collect::<Vec<_>>(),
                    victim_vips
                        .iter()
                        .map(|vip| sample
                            .answers
                            .iter()
                            .filter(|a| a.as_ref().is_some_and(|s| s.contains(vip)))
                            .count())
                        .collect::<Vec<_>>()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut worst_back = Duration::ZERO;
    for vip in &victim_vips {
        let moved = samples
            .iter()
            .position(|sample| sample.moved(vip, victim))
            .unwrap_or_else(|| {
                panic!(
                    "{vip} never moved off {victim}\n{}\n{}",
                    timeline(),
                    logs(lab)
                )
            });
        let dropped = samples
            .iter()
            .position(|sample| !lists(sample, vip))
            .unwrap_or_else(|| panic!("the answers always listed {vip}\n{}", timeline()));
        // Dropped before it moved.
        assert!(
            dropped <= moved,
            "{vip} moved before it was dropped\n{}",
            timeline()
        );
        // Listed only once its new owner has confirmed the address in its kernel (`Applied`),
        // so never while it is on no node.
        for sample in &samples[dropped..] {
            assert!(
                !(sample.unhosted(vip) && lists(sample, vip)),
                "{vip} listed at {:?} while on no node\n{}",
                sample.at,
                timeline()
            );
        }
        // Unhosted, it leaves the answers within a second.
        if let Some(gone) = samples.iter().find(|sample| sample.unhosted(vip)) {
            assert!(
                samples[dropped].at <= gone.after + DNS_DEADLINE,
                "{vip} unhosted at {:?} but listed until {:?}\n{}",
                gone.after,
                samples[dropped].at,
                timeline()
            );
        }
        // Moved, it is listed by every survivor within a second.
        let back = samples[moved..]
            .iter()
            .find(|sample| all_list(sample, vip))
            .unwrap_or_else(|| panic!("{vip} was not listed again after its move\n{}", timeline()));
        let delay = back.after.saturating_sub(samples[moved].after);
        assert!(
            delay <= DNS_DEADLINE,
            "{vip} moved by {:?} but was listed again only at {:?}\n{}",
            samples[moved].after,
            back.after,
            timeline()
        );
        worst_back = worst_back.max(delay);
    }
    eprintln!(
        "DNS after SIGKILL of {victim}: {} VIPs moved; listed again at most {worst_back:?} after \
         the move ({} samples)",
        victim_vips.len(),
        samples.len()
    );
}
