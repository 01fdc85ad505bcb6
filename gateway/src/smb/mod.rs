//! Samba beside the NFS gateway: every node runs its own smbd on its own mount of the volume,
//! with a configuration rendered from the cluster file. In the order a node uses them:
//!
//! 1. [`render::render`] turns the cluster file into a complete `smb.conf` (pure) from the
//!    bundled template `deploy/samba/smb.conf.in`, with every database under the node's local
//!    [`render::SambaPaths`];
//! 2. [`supervise::Smbd::prepare`] creates those directories and writes the file;
//!    [`supervise::Smbd::run`] starts smbd, restarts it with backoff, reloads it through its
//!    [`supervise::SmbdHandle`], and stops it when cancelled;
//! 3. [`probe::NegotiateProbe`] checks that port 445 answers an SMB2 NEGOTIATE; with the
//!    supervisor's state it makes the node's smbd health probe.
//!
//! [`users`] holds the pure parts of adding SMB users to a node.

pub mod probe;
pub mod render;
pub mod supervise;
pub mod users;

pub use probe::NegotiateProbe;
pub use render::{RenderError, SambaPaths, render};
pub use supervise::{Backoff, Smbd, SmbdHandle, SmbdOptions, SmbdState, SuperviseError};
