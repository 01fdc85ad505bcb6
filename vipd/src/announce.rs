//! Telling the network that a VIP has moved: gratuitous ARP for IPv4, unsolicited neighbour
//! advertisements for IPv6.
//!
//! After a node takes a VIP, hosts on the link still map the address to the old owner's MAC
//! until their entry goes stale. An announcement from the new owner rewrites those entries at
//! once. For IPv4 both a gratuitous request and a gratuitous reply are sent, because
//! implementations differ in which they honour; for IPv6 an unsolicited advertisement with the
//! override flag, sent to all-nodes. The caller repeats announcements a few rounds (DESIGN.md:
//! 3 rounds, the first at once), since a single frame can be lost.
//!
//! Frames are built by pure functions ([`arp_frames`], [`neighbour_advertisement`]) and tested
//! byte for byte; [`RawAnnouncer`] sends them through raw sockets in the caller's network
//! namespace.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A MAC address.
pub type Mac = [u8; 6];

const BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// The two gratuitous ARP frames (request, then reply) announcing that `vip` is at `mac`, as
/// complete Ethernet frames.
pub fn arp_frames(vip: Ipv4Addr, mac: Mac) -> [Vec<u8>; 2] {
    let frame = |operation: u16, target_mac: Mac| {
        let mut frame = Vec::with_capacity(42);
        frame.extend_from_slice(&BROADCAST);
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        frame.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
        frame.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
        frame.extend_from_slice(&[6, 4]); // address lengths
        frame.extend_from_slice(&operation.to_be_bytes());
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&vip.octets());
        frame.extend_from_slice(&target_mac);
        frame.extend_from_slice(&vip.octets());
        frame
    };
    // A gratuitous request has an unknown (zero) target MAC; the reply names the sender, as
    // Linux's own `arping -A` does.
    [frame(ARP_REQUEST, [0; 6]), frame(ARP_REPLY, mac)]
}

/// The ICMPv6 body of an unsolicited neighbour advertisement (RFC 4861 §4.4, §7.2.6) for `vip`
/// at `mac`, with the override flag set and the target link-layer address option. The checksum
/// is left zero: the kernel fills it in for raw ICMPv6 sockets.
pub fn neighbour_advertisement(vip: Ipv6Addr, mac: Mac) -> Vec<u8> {
    const TYPE_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
    const FLAG_OVERRIDE: u32 = 0x2000_0000;
    const OPTION_TARGET_LINK_LAYER: u8 = 2;
    let mut body = Vec::with_capacity(32);
    body.extend_from_slice(&[TYPE_NEIGHBOUR_ADVERTISEMENT, 0, 0, 0]);
    body.extend_from_slice(&FLAG_OVERRIDE.to_be_bytes());
    body.extend_from_slice(&vip.octets());
    body.extend_from_slice(&[OPTION_TARGET_LINK_LAYER, 1]);
    body.extend_from_slice(&mac);
    body
}

/// Sends announcements for VIPs. [`RawAnnouncer`] is the real one; tests of the daemon's logic
/// can record calls instead.
pub trait Announcer {
    /// Announces that `vip` now lives on `interface` of this node.
    fn announce(&self, vip: std::net::IpAddr, interface: &str) -> io::Result<()>;
}

/// Sends announcements through raw sockets in the network namespace of the calling thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawAnnouncer;

impl Announcer for RawAnnouncer {
    fn announce(&self, vip: std::net::IpAddr, interface: &str) -> io::Result<()> {
        Prepared::new(vip, interface)?.send()
    }
}

impl RawAnnouncer {
    /// Announces `vip` only if it is configured on `interface` when the frames leave: the
    /// sockets and frames are prepared first, then the kernel is asked, and the frames are sent
    /// right after, so the gap a frozen daemon could fall into is a few system calls wide.
    /// Returns whether it announced.
    pub fn announce_configured(&self, vip: std::net::IpAddr, interface: &str) -> io::Result<bool> {
        // Preparing fails by itself for an IPv6 address that is gone (the socket binds to it);
        // that is the same "no" as the check's.
        let prepared = Prepared::new(vip, interface);
        if !is_configured(vip, interface)? {
            return Ok(false);
        }
        prepared?.send()?;
        Ok(true)
    }
}

/// An announcement ready to leave: its socket, destination and frames.
enum Prepared {
    Arp {
        socket: Socket,
        destination: libc::sockaddr_ll,
        frames: [Vec<u8>; 2],
    },
    Advertisement {
        socket: Socket,
        destination: libc::sockaddr_in6,
        body: Vec<u8>,
    },
}

impl Prepared {
    fn new(vip: std::net::IpAddr, interface: &str) -> io::Result<Prepared> {
        let index = interface_index(interface)?;
        let mac = interface_mac(interface)?;
        Ok(match vip {
            std::net::IpAddr::V4(vip) => {
                let (socket, destination) = ethernet_socket(index, ETHERTYPE_ARP)?;
                Prepared::Arp {
                    socket,
                    destination,
                    frames: arp_frames(vip, mac),
                }
            }
            std::net::IpAddr::V6(vip) => {
                let (socket, destination) = advertisement_socket(index, vip)?;
                Prepared::Advertisement {
                    socket,
                    destination,
                    body: neighbour_advertisement(vip, mac),
                }
            }
        })
    }

    fn send(&self) -> io::Result<()> {
        match self {
            Prepared::Arp {
                socket,
                destination,
                frames,
            } => frames
                .iter()
                .try_for_each(|frame| socket.send_to(frame, destination)),
            Prepared::Advertisement {
                socket,
                destination,
                body,
            } => socket.send_to(body, destination),
        }
    }
}

/// Whether `vip` is configured on `interface` right now, as the kernel sees it. The announcer
/// asks before each round: a daemon that was frozen between two rounds wakes after the kernel
/// has deleted the address with its lease, and must not announce an address it no longer has.
pub fn is_configured(vip: std::net::IpAddr, interface: &str) -> io::Result<bool> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer; on success it owns a list freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = false;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list `getifaddrs` returned, which is still alive.
        let current = unsafe { &*entry };
        entry = current.ifa_next;
        if current.ifa_addr.is_null() || current.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(current.ifa_name) };
        if name.to_bytes() != interface.as_bytes() {
            continue;
        }
        // SAFETY: `ifa_addr` is non-null and its family says which sockaddr it points to.
        let address = unsafe {
            match i32::from((*current.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let v4 = &*current.ifa_addr.cast::<libc::sockaddr_in>();
                    Some(std::net::IpAddr::from(
                        u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                    ))
                }
                libc::AF_INET6 => {
                    let v6 = &*current.ifa_addr.cast::<libc::sockaddr_in6>();
                    Some(std::net::IpAddr::from(v6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if address == Some(vip) {
            found = true;
            break;
        }
    }
    // SAFETY: `list` came from a successful `getifaddrs` and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

fn interface_index(interface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(interface).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL byte")
    })?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("interface {interface} does not exist"),
        ));
    }
    Ok(index)
}

fn interface_mac(interface: &str) -> io::Result<Mac> {
    // sysfs shows the MAC of an interface of the *mount* namespace's view; read it through the
    // network namespace instead with SIOCGIFHWADDR on a socket of the caller's namespace.
    let socket = Socket::new(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {interface} is too long"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: the socket is open and `request` is a valid ifreq the kernel fills in.
    if unsafe { libc::ioctl(socket.0, libc::SIOCGIFHWADDR, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (slot, byte) in mac.iter_mut().zip(data.iter()) {
        *slot = *byte as u8;
    }
    Ok(mac)
}

/// A socket closed on drop.
struct Socket(libc::c_int);

impl Socket {
    fn new(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    fn set_int_option(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: the option value is a live c_int and its size is passed.
        let result = unsafe {
            libc::setsockopt(
                self.0,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Socket {
    /// Sends `payload` to `address`, a socket address structure of the socket's family.
    fn send_to<A>(&self, payload: &[u8], address: &A) -> io::Result<()> {
        // SAFETY: `payload` and `address` are valid for the given lengths during the call, and
        // `A` is a plain socket address structure (the callers pass sockaddr_ll/sockaddr_in6).
        let sent = unsafe {
            libc::sendto(
                self.0,
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (address as *const A).cast(),
                std::mem::size_of::<A>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// A raw packet socket and the broadcast destination on interface `index` for `ethertype`.
fn ethernet_socket(index: u32, ethertype: u16) -> io::Result<(Socket, libc::sockaddr_ll)> {
    let protocol = libc::c_int::from(ethertype.to_be());
    let socket = Socket::new(libc::AF_PACKET, libc::SOCK_RAW, protocol)?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = ethertype.to_be();
    address.sll_ifindex = i32::try_from(index).map_err(io::Error::other)?;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&BROADCAST);
    Ok((socket, address))
}

/// An ICMPv6 socket bound to `vip` for neighbour advertisements out of interface `index`, and
/// the all-nodes destination.
fn advertisement_socket(index: u32, vip: Ipv6Addr) -> io::Result<(Socket, libc::sockaddr_in6)> {
    let socket = Socket::new(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    // Receivers drop neighbour discovery messages whose hop limit is not 255 (RFC 4861 §7.1.2).
    socket.set_int_option(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 255)?;
    socket.set_int_option(
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_IF,
        i32::try_from(index).map_err(io::Error::other)?,
    )?;
    // Send from the VIP itself, so that receivers see the advertisement come from the address
    // it is about.
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut source: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    source.sin6_family = libc::AF_INET6 as u16;
    source.sin6_addr.s6_addr = vip.octets();
    // SAFETY: `source` is a valid sockaddr_in6 for the call.
    let bound = unsafe {
        libc::bind(
            socket.0,
            (&source as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut all_nodes: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    all_nodes.sin6_family = libc::AF_INET6 as u16;
    all_nodes.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    all_nodes.sin6_scope_id = index;
    Ok((socket, all_nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn configured_addresses_are_found_on_their_interface_only() {
        // Every network namespace has 127.0.0.1 on `lo`, and nothing has it elsewhere.
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        assert!(is_configured(loopback, "lo").unwrap());
        assert!(!is_configured(std::net::IpAddr::from([127, 0, 0, 2]), "lo").unwrap());
        assert!(!is_configured(loopback, "no-such-interface").unwrap());
    }

    #[test]
    fn gratuitous_arp_frames_byte_for_byte() {
        let [request, reply] = arp_frames(Ipv4Addr::new(192, 0, 2, 201), MAC);
        let expected_request: Vec<u8> = [
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], // to everyone
            &MAC,                                      // from the new owner
            &[0x08, 0x06],                             // ARP
            &[0x00, 0x01, 0x08, 0x00, 6, 4],           // Ethernet, IPv4
            &[0x00, 0x01],                             // request
            &MAC,
            &[192, 0, 2, 201], // sender: the VIP at our MAC
            &[0, 0, 0, 0, 0, 0],
            &[192, 0, 2, 201], // target: the VIP itself (gratuitous)
        ]
        .concat();
        assert_eq!(request, expected_request);
        assert_eq!(request.len(), 42);
        assert_eq!(&reply[20..22], &[0x00, 0x02], "second frame is a reply");
        assert_eq!(&reply[32..38], &MAC, "the reply names the sender as target");
        assert_eq!(&reply[..20], &request[..20]);
    }

    #[test]
    fn unsolicited_neighbour_advertisement_byte_for_byte() {
        let vip: Ipv6Addr = "2001:db8:0:1::201".parse().unwrap();
        let body = neighbour_advertisement(vip, MAC);
        let expected: Vec<u8> = [
            &[136, 0, 0, 0][..], // type NA, code 0, checksum by the kernel
            &[0x20, 0, 0, 0],    // override, not solicited, not router
            &vip.octets(),       // target
            &[2, 1],             // target link-layer address option, 8 bytes
            &MAC,
        ]
        .concat();
        assert_eq!(body, expected);
    }
}
