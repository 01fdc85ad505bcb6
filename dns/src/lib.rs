//! The embedded authoritative DNS server of a vipgate node: round-robin, low-TTL A/AAAA answers
//! listing only the public addresses that are live now (DESIGN.md invariant 6).
//!
//! Three layers, driven in this order:
//!
//! 1. [`Zone::new`] once, from the cluster file's `dns` section and node list;
//! 2. [`View::new`] at every change of the replicated live set (the node's glue maps the VIP
//!    daemon's state to `(live VIPs, live serial)`), published on a `watch` channel;
//! 3. [`DnsServer::bind`] then [`DnsServer::serve`], which answers every query from the latest
//!    view with [`wire::respond`].
//!
//! `zone` and `wire` are pure; only `server` and its UDP threads (`udp`) touch sockets.

pub mod server;
mod udp;
pub mod wire;
pub mod zone;

pub use server::{DnsError, DnsServer};
pub use zone::{Addresses, Answer, NameAnswer, View, Zone};
