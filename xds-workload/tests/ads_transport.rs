//! Delta ADS client and server over other transports (a unix socket, TLS, the caller's own
//! tonic server), with headers and tokens, and the client's back-off while the server is
//! unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ads_support;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Endpoint;

use meshwire_xds_workload::ads::client::{ClientConfig, ClientEvent, NodeInfo, TokenSource};
use meshwire_xds_workload::ads::server::{AdsServer, ServeError, ServerEvent};

use ads_support::{RunningClient, channel, publish_workloads, settle, wait_event};

/// Runs `serve` (handed a clone of `server` and the shutdown signal) on a task; sending on
/// the returned sender (or dropping it) shuts the server down.
fn serve_until_stopped<F, Fut>(
    server: &AdsServer,
    serve: F,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), ServeError>>,
)
where
    F: FnOnce(AdsServer, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), ServeError>> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let signal = Box::pin(async move {
        let _ = stopped.await;
    });
    (stop, tokio::spawn(serve(server.clone(), signal)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_identity_and_headers_reach_the_server() {
    let server = AdsServer::default();
    /// (authorization, clusterid, x-extra) per call.
    type Seen = Vec<(Option<String>, Option<String>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The caller's own router: our service behind the caller's interceptor.
    let svc = server.service();
    let serving = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(
                move |req: tonic::Request<()>| {
                    let get = |k: &str| {
                        req.metadata()
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    record.lock().unwrap().push((
                        get("authorization"),
                        get("clusterid"),
                        get("x-extra"),
                    ));
                    Ok(req)
                },
            ))
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });
    let mut events = server.events();

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let node = NodeInfo::proxy(
        "10.1.2.3".parse().unwrap(),
        "proxy-abc",
        "mesh-system",
        "worker-1",
    );
    let mut config = ClientConfig::default();
    config.node = node;
    config.token = Some(TokenSource::File(token.clone()));
    config.cluster_id = Some("cluster1".into());
    config.headers.push(("x-extra".into(), "yes".into()));
    let mut client = RunningClient::start_with(channel(addr), config);
    client.wait_synced().await;
    let node_id = wait_event(&mut events, |e| match e {
        ServerEvent::Connected { node_id, .. } => Some(node_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        node_id,
        "ztunnel~10.1.2.3~proxy-abc.mesh-system~mesh-system.svc.cluster.local"
    );
    assert_eq!(
        seen.lock().unwrap()[0],
        (
            Some("Bearer first-token".into()),
            Some("cluster1".into()),
            Some("yes".into())
        )
    );

    // The token file is read again for the next stream.
    std::fs::write(&token, "second-token").unwrap();
    server.disconnect_all();
    settle(async {
        loop {
            if seen.lock().unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        seen.lock().unwrap()[1].0.as_deref(),
        Some("Bearer second-token")
    );

    client.stop().await;
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xds.sock");
    let server = AdsServer::default();
    publish_workloads(&server, 0..10);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (stop, serving) = serve_until_stopped(&server, |server, stopped| async move {
        server.serve_unix(listener, stopped).await
    });
    let connect_path = path.clone();
    let channel = Endpoint::from_static("http://localhost").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = connect_path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }),
    );
    let mut config = ClientConfig::default();
    config.node = NodeInfo::new("node-unix");
    let mut client = RunningClient::start_with(channel, config);
    client.wait_synced().await;
    assert_eq!(client.store.workload_count(), 10);
    client.stop().await;
    let _ = stop.send(());
    settle(serving).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_doubles_with_jitter_while_the_server_is_unreachable() {
    // A port with nothing listening.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = ClientConfig::default();
    config.node = NodeInfo::new("node-down");
    config.initial_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(40);
    let mut client = RunningClient::start_with(channel(addr), config);
    let mut delays = Vec::new();
    while delays.len() < 7 {
        let delay = wait_event(&mut client.events, |e| match e {
            ClientEvent::Disconnected { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .await;
        delays.push(delay);
    }
    // Each delay is its step plus jitter of up to the step: in [step, 2 * step], with a
    // little room for the floating-point arithmetic of the steps.
    let steps_ms = [5.0, 10.0, 20.0, 40.0, 40.0, 40.0, 40.0];
    for (delay, step) in delays.iter().zip(steps_ms) {
        let ms = delay.as_secs_f64() * 1e3;
        assert!(
            ms >= step * 0.999 && ms <= 2.0 * step * 1.001,
            "{delays:?}: {ms} ms for a step of {step} ms"
        );
    }
    // The jitter is random: the four delays at the cap are not all equal.
    assert!(delays[3..].windows(2).any(|w| w[0] != w[1]), "{delays:?}");
    assert!(!client.synced.is_synced());
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_backoff_does_not_overflow() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = ClientConfig::default();
    config.node = NodeInfo::new("node-patient");
    config.initial_backoff = Duration::MAX;
    config.max_backoff = Duration::MAX;
    let mut client = RunningClient::start_with(channel(addr), config);
    let delay = wait_event(&mut client.events, |e| match e {
        ClientEvent::Disconnected { retry_in, .. } => Some(*retry_in),
        _ => None,
    })
    .await;
    // Longer than any real wait (the back-off cuts steps to about 146 billion years).
    assert!(delay >= Duration::from_secs(1 << 62), "{delay:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !client.task.is_finished(),
        "the client must still be waiting"
    );
    // Stopping still works while it waits.
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tls() {
    use rustls::pki_types::ServerName;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // A server certificate for "xds.test" from a test CA, and a client that trusts only it.
    let pki = meshwire_svid::test_util::TestPki::new("cluster.local");
    let (chain, key) = pki
        .ca()
        .issue_server_cert(&["xds.test"], &[], Duration::from_secs(3600))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server_tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca().root().clone()).unwrap();
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls));

    // The server is handed TLS streams the caller accepted.
    let server = AdsServer::default();
    publish_workloads(&server, 0..10);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    let incoming = futures_util::stream::unfold(
        (listener, acceptor, counted),
        |(listener, acceptor, counted)| async move {
            let accepted = match listener.accept().await {
                Ok((tcp, _)) => acceptor.accept(tcp).await,
                Err(e) => Err(e),
            };
            if accepted.is_ok() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            Some((accepted, (listener, acceptor, counted)))
        },
    );
    let (stop, serving) = serve_until_stopped(&server, |server, stopped| async move {
        server.serve_with_incoming(incoming, stopped).await
    });

    let channel = Endpoint::from_static("http://xds.test").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("xds.test").expect("a valid name");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }),
    );
    let mut config = ClientConfig::default();
    config.node = NodeInfo::new("node-tls");
    let mut client = RunningClient::start_with(channel, config);
    client.wait_synced().await;
    assert_eq!(client.store.workload_count(), 10);
    assert!(handshakes.load(Ordering::Relaxed) >= 1);
    client.stop().await;
    let _ = stop.send(());
    settle(serving).await.unwrap().unwrap();
}
