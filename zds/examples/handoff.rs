//! A ZDS agent hands a network namespace to a proxy, both in this process.
//!
//! The agent side (`server::Server`) listens on a socket in a temporary directory; the
//! proxy side (`client::Client`) connects, gets the snapshot, and from then on every add
//! and delete. The namespace handed over is this process's own (`/proc/self/ns/net`), so
//! no privileges are needed. The proxy refuses one pod on purpose to show a NACK.
//!
//! Run with `cargo run -p meshwire-zds --example handoff`.

use std::os::fd::OwnedFd;

use meshwire_zds::client::{Client, ClientConfig};
use meshwire_zds::netns::NetnsId;
use meshwire_zds::server::{Server, ServerConfig, ServerEvent, ZdsError};
use meshwire_zds::{Update, Workload};

fn own_netns() -> std::io::Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/self/ns/net")?.into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ztunnel.sock");

    // The agent: one pod is known before any proxy connects, so it goes out in the
    // snapshot of the first connection.
    let mut config = ServerConfig::default();
    config.path = path.clone();
    let server = Server::bind(config).await?;
    let mut events = server.subscribe();
    let early = server
        .add(
            Workload::new("uid-early", "early-0", "shop", "early"),
            own_netns()?,
        )
        .await;
    println!("agent: add before any proxy connected: {early:?} (kept for the snapshot)");

    // The proxy: a handler that would open listeners inside each namespace; here it
    // prints what it got, and refuses the pod named "broken-0".
    let mut config = ClientConfig::default();
    config.path = path;
    let client = Client::new(config, |update: Update| async move {
        match update {
            Update::Add { workload, netns } if workload.name == "broken-0" => {
                drop(netns);
                Err(format!("cannot start {workload}"))
            }
            Update::Add { workload, netns } => {
                let id = NetnsId::of(&netns).map_err(|e| e.to_string())?;
                println!("proxy: serve {workload} in namespace {id}");
                Ok(())
            }
            Update::Del { uid } => {
                println!("proxy: stop serving {uid}");
                Ok(())
            }
            Update::SnapshotSent => {
                println!("proxy: snapshot complete");
                Ok(())
            }
            other => {
                println!("proxy: {other:?}");
                Ok(())
            }
        }
    });
    let mut ready = client.readiness();
    let proxy = tokio::spawn(client.run());

    // Wait until the proxy processed its snapshot.
    loop {
        if let ServerEvent::SnapshotDone { workloads, .. } = events.recv().await? {
            println!("agent: snapshot of {workloads} workload(s) acknowledged");
            break;
        }
    }
    ready.wait_for(|ready| *ready).await?;
    println!("proxy: ready");

    // Steady state: every add and delete returns once the proxy answered.
    let netns = own_netns()?;
    println!("agent: handing over namespace {}", NetnsId::of(&netns)?);
    server
        .add(Workload::new("uid-web", "web-0", "shop", "web"), netns)
        .await?;
    println!("agent: web-0 acknowledged");

    match server
        .add(
            Workload::new("uid-broken", "broken-0", "shop", "web"),
            own_netns()?,
        )
        .await
    {
        Err(ZdsError::Nack(text)) => println!("agent: broken-0 refused: {text}"),
        other => return Err(format!("expected a NACK, got {other:?}").into()),
    }

    server.del("uid-web").await?;
    server.del("uid-broken").await?;
    server.del("uid-early").await?;
    println!("agent: still recorded: {:?}", server.workloads().await);

    proxy.abort();
    server.shutdown().await;
    println!("done");
    Ok(())
}
