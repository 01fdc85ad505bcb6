//! Serves the `dns` section of a cluster file with every public address live, on one address,
//! until SIGINT or SIGTERM: the DNS server of `vipgate node` without the cluster around it, for
//! the benchmark in `tests/bench/dns` and for experiments.
//!
//! ```text
//! cargo run --release -p dns --example serve -- CLUSTER.yaml 127.0.0.1:5300
//! ```

use std::collections::BTreeSet;
use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(listen)) = (args.next(), args.next()) else {
        return Err("usage: serve CLUSTER.yaml ADDRESS:PORT".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let config = cluster_config::load(std::path::Path::new(&path))?;
    let section = config
        .dns
        .as_ref()
        .ok_or("the cluster file has no dns section")?;
    let zone = Arc::new(dns::Zone::new(section, &config.nodes));
    let live: BTreeSet<IpAddr> = config
        .public_addresses
        .iter()
        .map(|vip| vip.address.addr())
        .collect();
    let (_views, view) = watch::channel(Arc::new(dns::View::new(zone, &live, 1)));
    // The runtime `vipgate node` uses.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = dns::DnsServer::bind(&[listen], dns::server::Limits::default())?;
        let stop = CancellationToken::new();
        let serving = tokio::spawn(server.serve(view, stop.clone()));
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        stop.cancel();
        serving.await?;
        Ok(())
    })
}
