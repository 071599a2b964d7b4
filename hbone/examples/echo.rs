//! An HBONE echo server and client on loopback.
//!
//! A test CA issues two SPIFFE identities. The server presents one, requires the client
//! to present a certificate of the same trust domain, admits each CONNECT with the
//! standard destination rules, and echoes what the tunnel carries. The client opens
//! tunnels through a connection pool that checks the server's identity, sends a line
//! through one, and shows how refusals arrive.
//!
//! Run with `cargo run -p meshwire-hbone --example echo`.

use std::sync::Arc;
use std::time::Duration;

use meshwire_hbone::client::{Pool, PoolConfig, PoolKey, SvidClientTls, TcpConnector};
use meshwire_hbone::headers::WorkloadBaggage;
use meshwire_hbone::server::{Admission, IncomingTunnel, ServeConfig, Server, Target};
use meshwire_hbone::svid::{IdentityPolicy, SpiffeId, TrustBundleSet};
use meshwire_hbone::{Authority, ConnectRequest, Rejection};
use meshwire_svid::ca::CertificateAuthority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The port of the echo "application" behind the server.
const ECHO_PORT: u16 = 7;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Identities from a throw-away CA (a real deployment gets them from its
    //    certificate service or SPIRE).
    let trust_domain = "cluster.local".parse()?;
    let ca = CertificateAuthority::generate_root(&trust_domain, Default::default())?;
    let mut roots = TrustBundleSet::new();
    roots.insert(ca.bundle());
    let server_id = SpiffeId::new("spiffe://cluster.local/ns/demo/sa/echo-server")?;
    let client_id = SpiffeId::new("spiffe://cluster.local/ns/demo/sa/echo-client")?;
    let provider = meshwire_hbone::svid::provider::default();
    let lifetime = Duration::from_secs(3600);

    // 2. The server: mutual TLS that accepts clients of the same trust domain.
    let server_tls = meshwire_hbone::svid::tls::server_config(
        provider.clone(),
        &ca.issue(&server_id, lifetime)?,
        &roots,
        IdentityPolicy::SameTrustDomain(trust_domain),
    )?;
    let admission = Arc::new(Admission::default());
    let handler = move |incoming: IncomingTunnel| {
        let admission = admission.clone();
        async move {
            println!(
                "server: {} asks for {}",
                incoming.peer_identity(),
                incoming.request().authority
            );
            // The target must be this server's own address, and not a proxy port.
            let port = match admission.check(incoming.request(), incoming.connection()) {
                Ok(Target::Addr(addr)) => addr.port(),
                Ok(_) => return incoming.reject(Rejection::ServiceUnavailable),
                Err(refused) => {
                    println!("server: refused: {refused}");
                    return incoming.reject(refused.rejection());
                }
            };
            if port != ECHO_PORT {
                return incoming.reject(Rejection::ServiceUnavailable);
            }
            let mut about_us = WorkloadBaggage::default();
            about_us.namespace = Some("demo".into());
            let Ok(mut tunnel) = incoming.accept_with_baggage(about_us.to_baggage()) else {
                return;
            };
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = tunnel.read(&mut buf).await {
                if tunnel.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = tunnel.shutdown().await;
        }
    };
    let server = Server::new(Arc::new(server_tls), handler, ServeConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener).await }
    });
    println!("server: HBONE on {server_addr} as {server_id}");

    // 3. The client: a pool whose connections present the client's SVID and accept
    //    only the server's identity.
    let client_tls = SvidClientTls::new(provider, ca.issue(&client_id, lifetime)?, roots);
    let pool = Pool::new(TcpConnector::new(), client_tls, PoolConfig::default());
    let key = PoolKey::new(client_id, [server_id], server_addr, None);

    // A tunnel to the echo port on the server's own address.
    let echo = Authority::from_socket_addr((server_addr.ip(), ECHO_PORT).into())?;
    let mut tunnel = pool.connect(&key, &ConnectRequest::new(echo)).await?;
    if let Some(baggage) = tunnel.response().and_then(|r| r.baggage.as_ref()) {
        println!("client: tunnel open, the server describes itself as \"{baggage}\"");
    }
    tunnel.write_all(b"hello through HBONE\n").await?;
    tunnel.shutdown().await?;
    let mut echoed = String::new();
    tunnel.read_to_string(&mut echoed).await?;
    print!("client: echoed {echoed}");
    assert_eq!(echoed, "hello through HBONE\n");
    drop(tunnel);

    // Refusals arrive as typed errors with the HTTP status.
    for authority in [
        format!("{}:15006", server_addr.ip()), // a proxy port: 503
        format!("192.0.2.1:{ECHO_PORT}"),      // not the server's address: 400
        format!("{}:9", server_addr.ip()),     // no such application: 503
    ] {
        let request = ConnectRequest::new(authority.parse()?);
        match pool.connect(&key, &request).await {
            Err(e) => println!("client: {authority} refused: {e}"),
            Ok(_) => return Err(format!("{authority} was not refused").into()),
        }
    }
    println!("client: pool {:?}", pool.stats());

    // 4. Shut down: the pool closes its (now idle) connection, the server drains.
    pool.close();
    pool.closed().await;
    server.shutdown().await;
    serving.await??;
    println!("done");
    Ok(())
}
