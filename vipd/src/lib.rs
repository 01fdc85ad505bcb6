//! The virtual-IP daemon of a vipgate node: Raft peer, replicated cluster state, VIP placement,
//! netlink applier and control socket (see `ARCHITECTURE.md`).

pub mod announce;
pub mod apply;
pub mod placement;
pub mod transport;
