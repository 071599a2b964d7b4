//! `PoolConfig::response_timeout`: a server that never answers a CONNECT request does not
//! hold the client forever.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use meshwire_hbone::client::{ClientError, PoolConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_connect_fails_after_the_response_timeout() {
    let f = Fixture::start().await;
    let mut config = PoolConfig::default();
    config.response_timeout = Duration::from_millis(300);
    let pool = f.pool(config);
    let key = f.key();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        pool.connect(&key, &Fixture::request(PORT_SILENT)),
    )
    .await
    .expect("no deadline on the CONNECT response");
    assert!(
        matches!(outcome, Err(ClientError::ResponseTimeout)),
        "{outcome:?}"
    );
    // The server saw the request and never answered it.
    assert_eq!(f.state.silent.lock().unwrap().len(), 1);
    // The connection stays usable for other tunnels.
    let mut t = open(&pool, &key, PORT_ECHO).await;
    echo_once(&mut t).await;
    assert_eq!(pool.stats().opened, 1);
}
