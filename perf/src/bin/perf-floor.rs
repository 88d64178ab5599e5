//! The floor: a bare Pingora pass-through proxy to one upstream, with no filters.
//!
//! It is built from the same `pingora` crate, version and features as Sluice and runs with the
//! same thread count, so "Sluice − floor" is what Sluice's own work costs and "floor − direct" is
//! what any Pingora hop costs on this machine. Upstream connections are pooled (Pingora's default
//! keep-alive pool), like Sluice's. Every path is forwarded, `/mcp` and the fake provider's
//! `/v1/messages` alike, and a streamed answer is passed on piece by piece as it arrives.

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[derive(Parser)]
#[command(about = "Bare Pingora pass-through proxy: the floor Sluice is measured against")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9200")]
    listen: SocketAddr,
    /// The one upstream every request goes to (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:9100")]
    upstream: SocketAddr,
    /// Worker threads; Sluice's default is 2.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Sends every request, unchanged, to one peer.
struct Floor {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads.max(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let floor = Floor {
        peer: HttpPeer::new(args.upstream, false, String::new()),
    };
    let mut service = http_proxy_service(&server.configuration, floor);
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    eprintln!(
        "perf-floor listening on {} -> {} ({} threads)",
        args.listen, args.upstream, args.threads
    );
    server.run_forever();
}
