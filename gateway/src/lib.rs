//! The NFS side of a vipgate node: an ONC-RPC core, portmap, MOUNT, NFSv3 and NFSv4 serving the
//! node's local mount of the replicated volume (see `ARCHITECTURE.md`).
//!
//! Nothing is served from here yet; the NFSv3 gateway is issue #4. The crate exists so that the
//! workspace layout matches the design from the first commit and later work has its home.
