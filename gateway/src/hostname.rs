//! Client host names for export client lists that name hosts: a reverse lookup of the client's
//! address, kept only if a forward lookup of that name leads back to the same address (as
//! `mountd` does), so a client cannot claim a name just by controlling its reverse zone.
//!
//! Behind the [`HostNames`] trait so that tests and other resolvers can stand in. Lookups block;
//! the gateway calls them on its blocking pool, once per connection and only when an export's
//! list has host entries that no address entry already decided.

use std::ffi::{CStr, CString};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Resolves a client's verified host names (lower case, without a trailing dot).
pub trait HostNames: Send + Sync + fmt::Debug {
    fn names(&self, address: IpAddr) -> Vec<String>;
}

/// The system resolver (`getnameinfo` then `getaddrinfo`, so `/etc/hosts` and DNS as
/// `nsswitch.conf` says).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHostNames;

impl HostNames for SystemHostNames {
    fn names(&self, address: IpAddr) -> Vec<String> {
        let address = address.to_canonical();
        let Some(name) = reverse(address) else {
            return Vec::new();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if forward_contains(&name, address) {
            vec![name]
        } else {
            Vec::new()
        }
    }
}

fn reverse(address: IpAddr) -> Option<String> {
    let socket = socket2::SockAddr::from(SocketAddr::new(address, 0));
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: `socket` is a valid sockaddr of the length given; `host` is a writable buffer of
    // the length given; the service buffer is absent (null, length 0).
    let result = unsafe {
        libc::getnameinfo(
            socket.as_ptr().cast(),
            socket.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if result != 0 {
        return None;
    }
    // SAFETY: on success getnameinfo wrote a NUL-terminated string into `host`.
    let name = unsafe { CStr::from_ptr(host.as_ptr()) };
    name.to_str().ok().map(str::to_owned)
}

fn forward_contains(name: &str, address: IpAddr) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    let mut results: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `name` is NUL-terminated; no hints; `results` receives a list we free below.
    if unsafe {
        libc::getaddrinfo(
            name.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            &mut results,
        )
    } != 0
    {
        return false;
    }
    let mut found = false;
    let mut entry = results;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getaddrinfo returned and has not been freed.
        let info = unsafe { &*entry };
        if !info.ai_addr.is_null() {
            // SAFETY: `ai_addr` points at `ai_addrlen` bytes of a socket address of family
            // `ai_family`, as getaddrinfo guarantees; it is copied into storage of ample size.
            let socket = unsafe {
                socket2::SockAddr::try_init(|storage, length| {
                    let size = (info.ai_addrlen as usize)
                        .min(std::mem::size_of::<libc::sockaddr_storage>());
                    std::ptr::copy_nonoverlapping(
                        info.ai_addr.cast::<u8>(),
                        storage.cast::<u8>(),
                        size,
                    );
                    *length = size as libc::socklen_t;
                    Ok(())
                })
            };
            if let Ok(((), socket)) = socket
                && socket
                    .as_socket()
                    .is_some_and(|socket| socket.ip().to_canonical() == address)
            {
                found = true;
            }
        }
        entry = info.ai_next;
    }
    // SAFETY: `results` came from a successful getaddrinfo and is freed exactly once.
    unsafe { libc::freeaddrinfo(results) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_localhost_both_ways() {
        // /etc/hosts names 127.0.0.1 localhost on every Linux system we run on; no DNS server
        // is asked, since `files` comes first in nsswitch.conf and answers.
        let names = SystemHostNames.names("127.0.0.1".parse().unwrap());
        assert_eq!(names, vec!["localhost".to_owned()]);
        assert!(forward_contains("localhost", "127.0.0.1".parse().unwrap()));
        assert!(!forward_contains("localhost", "127.0.0.2".parse().unwrap()));
        assert!(!forward_contains("bad\0name", "127.0.0.1".parse().unwrap()));
    }
}
