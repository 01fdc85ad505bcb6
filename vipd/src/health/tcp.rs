//! A probe that a local server accepts TCP connections: the NFS gateway on 2049, smbd on 445.
//! It proves the server's process is alive and its listener is not wedged by a full accept
//! queue; protocol-level probes (an RPC NULL) can replace it per service.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::Probe;

/// Connects to `address` within `connect_timeout`; refused or silent means failed.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    name: String,
    address: SocketAddr,
    connect_timeout: Duration,
}

impl TcpProbe {
    /// A probe called `name` (for example `nfs`) of the server at `address`, usually loopback.
    /// A zero `connect_timeout` counts as one millisecond.
    pub fn new(name: &str, address: SocketAddr, connect_timeout: Duration) -> TcpProbe {
        TcpProbe {
            name: format!("{name} {address}"),
            address,
            connect_timeout: connect_timeout.max(Duration::from_millis(1)),
        }
    }
}

impl Probe for TcpProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Result<(), String> {
        TcpStream::connect_timeout(&self.address, self.connect_timeout)
            .map(drop)
            .map_err(|error| format!("cannot connect to {}: {error}", self.address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_listening_server_passes_and_a_closed_port_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let probe = TcpProbe::new("nfs", address, Duration::from_secs(2));
        assert_eq!(probe.name(), format!("nfs {address}"));
        assert_eq!(probe.check(), Ok(()));
        drop(listener);
        let reason = probe.check().unwrap_err();
        assert!(
            reason.starts_with(&format!("cannot connect to {address}: "))
                && reason.contains("refused"),
            "{reason}"
        );
    }
}
