//! The virtual-IP daemon of a vipgate node: Raft peer, replicated cluster state, VIP placement,
//! netlink applier and control socket (see `ARCHITECTURE.md`).

pub mod announce;
pub mod apply;
pub mod control;
pub mod daemon;
pub mod health;
pub mod leader;
pub mod lease;
pub mod node;
pub mod placement;
pub mod state;
pub mod storage;
pub mod tickle;
pub mod transport;
