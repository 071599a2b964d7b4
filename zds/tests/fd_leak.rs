//! No descriptor is leaked over many add/delete cycles, failed adds, or rejected
//! datagrams. Alone in its own test binary so that no other test opens descriptors
//! while it counts.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwire_zds::client::{Client, ClientConfig};
use meshwire_zds::server::{Server, ServerConfig, ServerEvent, ZdsError};
use meshwire_zds::{Update, Workload};
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::AncillaryMessageWriter;

const CYCLES: usize = 1000;
const ROGUES: usize = 100;

async fn settle_to(expected: usize) -> usize {
    // Closing happens in other tasks; give them a moment.
    let mut now = common::open_fds();
    for _ in 0..100 {
        if now == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = common::open_fds();
    }
    now
}

#[tokio::test]
async fn no_fd_leak_over_a_thousand_cycles() {
    let (_dir, path) = common::socket_dir();
    let mut config = ServerConfig::default();
    config.path = path.clone();
    let server = Server::bind(config).await.unwrap();
    let mut events = server.subscribe();

    // The proxy holds each namespace until it is deleted, and fails every tenth add (which
    // leaves a duplicate kept for retries until the delete).
    let held: Arc<Mutex<HashMap<String, OwnedFd>>> = Arc::default();
    let proxy_held = held.clone();
    let mut config = ClientConfig::default();
    config.path = path.clone();
    let client = Client::new(config, move |update| {
        let outcome = match update {
            Update::Add { workload, netns } => {
                let n: usize = workload.uid.trim_start_matches("pod-").parse().unwrap_or(0);
                proxy_held.lock().unwrap().insert(workload.uid, netns);
                if n % 10 == 9 {
                    Err("listener busy")
                } else {
                    Ok(())
                }
            }
            Update::Del { uid } => {
                proxy_held.lock().unwrap().remove(&uid);
                Ok(())
            }
            _ => Ok(()),
        };
        async move { outcome }
    });
    let mut ready = client.readiness();
    let proxy = tokio::spawn(client.run());
    ready.wait_for(|r| *r).await.unwrap();

    // Warm up every code path once before counting.
    server
        .add(Workload::new("warm", "w", "ns", "sa"), common::own_netns())
        .await
        .unwrap();
    server.del("warm").await.unwrap();
    let before = common::open_fds();

    let mut nacks = 0;
    for i in 0..CYCLES {
        let uid = format!("pod-{i}");
        let netns = common::own_netns();
        match server
            .add(Workload::new(&uid, "p", "ns", "sa"), netns)
            .await
        {
            Ok(()) => {}
            Err(ZdsError::Nack(_)) => nacks += 1,
            Err(e) => panic!("add {uid}: {e}"),
        }
        server.del(&uid).await.unwrap();
    }
    assert_eq!(nacks, CYCLES / 10);
    assert!(held.lock().unwrap().is_empty());
    let after = settle_to(before).await;
    assert_eq!(
        after, before,
        "descriptors leaked over {CYCLES} add/del cycles"
    );

    // Proxies that attach descriptors where none belong are dropped, and their
    // descriptors closed.
    for _ in 0..ROGUES {
        let rogue = UnixSeqpacket::connect(&path).await.unwrap();
        let netns = common::own_netns();
        let mut control = [0u8; 64];
        let mut writer = AncillaryMessageWriter::new(&mut control);
        writer
            .add_fds([netns.as_fd(), netns.as_fd()])
            .map_err(|_| "control")
            .unwrap();
        rogue
            .send_vectored_with_ancillary(&[IoSlice::new(&[0x08, 0x01])], &mut writer)
            .await
            .unwrap();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .unwrap()
                .unwrap();
            if let ServerEvent::Disconnected { error, .. } = event {
                assert!(matches!(error, Some(ZdsError::Read(_))), "{error:?}");
                break;
            }
        }
    }
    let after = settle_to(before).await;
    assert_eq!(after, before, "descriptors leaked by rejected datagrams");

    assert_eq!(
        server.connections().await,
        1,
        "the real proxy stayed connected"
    );
    proxy.abort();
}
