//! The `spire` module against a real SPIRE v1.13.3 server and agent (testbed's fixture):
//! the registrar reconciles entries on the server, and the certificate source gets SVIDs
//! by selectors and by PID, follows a short-TTL rotation, hands an SVID the agent pushes to
//! the manager at once, survives an agent restart (and
//! serves the valid SVID while the agent is down), reports a clear error for an identity
//! that has no entry or whose entry was deleted, and carries a CA rotation (`localauthority
//! x509 prepare`, `activate`) into verifiers that are already running.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshwire_svid::SpiffeId;
use meshwire_svid::manager::{
    CertificateManager, CertificateSource, CertificateState, ManagerConfig, Priority,
};
use meshwire_svid::spire::registrar::{EntrySpec, Registrar, RegistrarConfig};
use meshwire_svid::spire::source::{SourceConfig, SpireSource, Subject};
use meshwire_svid::spire::{Selector, SpireError};
use meshwire_svid::x509::FetchedSvid;
use testbed::{Spire, SpireConfig};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start_spire() -> Spire {
    let spire = Spire::start(SpireConfig::default()).unwrap();
    eprintln!("SPIRE fixture started in {:?}", spire.startup_time());
    spire
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

/// The proxies' ID, as the fixture's agent authorizes it (the default trust domain).
fn delegate() -> SpiffeId {
    id(&format!(
        "spiffe://{}{}",
        testbed::spire::DEFAULT_TRUST_DOMAIN,
        testbed::spire::DELEGATE_PATH
    ))
}

fn td() -> meshwire_svid::TrustDomain {
    "example.org".parse().unwrap()
}

fn registrar(spire: &Spire) -> Registrar {
    Registrar::connect_unix(
        &spire.server_socket().display().to_string(),
        RegistrarConfig::default(),
    )
    .unwrap()
}

fn source(spire: &Spire, timeout: Duration) -> SpireSource {
    let mut config = SourceConfig::default();
    config.timeout = timeout;
    config.max_backoff = Duration::from_secs(1);
    SpireSource::connect_unix(&spire.admin_endpoint(), config).unwrap()
}

fn sa_entry(ns: &str, sa: &str) -> EntrySpec {
    EntrySpec::for_service_account(&td(), &delegate(), ns, sa).unwrap()
}

/// The SPIFFE IDs of the server's entries parented to the delegate, with their TTLs, read
/// with the SPIRE CLI (not through the code under test).
fn server_entries(spire: &Spire) -> BTreeSet<(String, i64)> {
    spire
        .entries_under(testbed::spire::DELEGATE_PATH)
        .unwrap()
        .into_iter()
        .collect()
}

fn ids(list: &[(&str, i64)]) -> BTreeSet<(String, i64)> {
    list.iter().map(|(i, t)| ((*i).to_owned(), *t)).collect()
}

fn serial_and_key(svid: &meshwire_svid::X509Svid) -> (Vec<u8>, Vec<u8>) {
    let (_, cert) = X509Certificate::from_der(svid.leaf().as_ref()).unwrap();
    (cert.raw_serial().to_vec(), cert.public_key().raw.to_vec())
}

/// The first SVID of `id`, registered a moment ago: the entry reaches the agent within its
/// sync interval, or a few of them on a loaded machine, so fetches are retried.
async fn first_fetch(source: &SpireSource, id: &SpiffeId) -> FetchedSvid {
    let start = Instant::now();
    loop {
        match source.fetch(id).await {
            Ok(f) => return f,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(60),
                "no SVID for {id} after 60 s: {e}"
            ),
        }
    }
}

/// Waits (on the SPIRE side, with a generous bound) until `f` holds.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The manager's next certificate other than `old`, waited for up to 60 s.
async fn next_certificate(
    rx: &mut watch::Receiver<CertificateState>,
    old: &FetchedSvid,
    what: &str,
) -> Arc<FetchedSvid> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            rx.changed().await.unwrap();
            let cert = rx.borrow_and_update().certificate.clone();
            if let Some(c) = cert
                && c.svid.leaf() != old.svid.leaf()
            {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 60 s"))
}

#[test]
fn registrar_reconciles_entries_of_enrolled_namespaces() {
    let spire = start_spire();
    runtime().block_on(async {
        let reg = registrar(&spire);
        let parent = delegate();

        // Enroll "shop" (two service accounts) and "bank" (one).
        let desired = vec![
            sa_entry("shop", "web"),
            sa_entry("shop", "db"),
            sa_entry("bank", "teller"),
        ];
        let report = reg.reconcile(&parent, &desired).await.unwrap();
        assert_eq!((report.created, report.failed.len()), (3, 0), "{report:?}");
        assert_eq!(
            server_entries(&spire),
            ids(&[
                ("spiffe://example.org/ns/shop/sa/web", 0),
                ("spiffe://example.org/ns/shop/sa/db", 0),
                ("spiffe://example.org/ns/bank/sa/teller", 0),
            ])
        );
        assert_eq!(reg.list(&parent).await.unwrap().len(), 3);

        // Nothing to do the second time.
        let report = reg.reconcile(&parent, &desired).await.unwrap();
        assert_eq!(
            (
                report.unchanged,
                report.created,
                report.updated,
                report.deleted
            ),
            (3, 0, 0, 0)
        );

        // Unenroll "bank"; give shop/web a short lifetime.
        let mut web = sa_entry("shop", "web");
        web.x509_svid_ttl = Some(Duration::from_secs(120));
        let desired = vec![web.clone(), sa_entry("shop", "db")];
        let report = reg.reconcile(&parent, &desired).await.unwrap();
        assert_eq!(
            (
                report.unchanged,
                report.updated,
                report.deleted,
                report.created
            ),
            (1, 1, 1, 0),
            "{report:?}"
        );
        assert_eq!(
            server_entries(&spire),
            ids(&[
                ("spiffe://example.org/ns/shop/sa/web", 120),
                ("spiffe://example.org/ns/shop/sa/db", 0),
            ])
        );

        // Creating an entry that exists updates it through the id the server names.
        web.x509_svid_ttl = Some(Duration::from_secs(300));
        let report = reg.create_or_update(&[web]).await.unwrap();
        assert_eq!((report.created, report.updated), (0, 1), "{report:?}");
        assert!(
            server_entries(&spire)
                .contains(&("spiffe://example.org/ns/shop/sa/web".to_owned(), 300))
        );

        // One bad entry is reported once; the others in its batch are written.
        let mut bad = sa_entry("shop", "bad");
        bad.selectors = vec![Selector::new("k8s:ns", "shop")];
        let report = reg
            .create_or_update(&[bad, sa_entry("shop", "cart")])
            .await
            .unwrap();
        assert_eq!(report.created, 1, "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert_eq!(
            report.failed[0].code,
            tonic::Code::InvalidArgument,
            "{report:?}"
        );
        assert_eq!(
            report.failed[0].entry,
            "spiffe://example.org/ns/shop/sa/bad"
        );

        // Deleting an id the server does not know is not an error.
        let report = reg.delete(&["no-such-entry".to_owned()]).await.unwrap();
        assert_eq!((report.deleted, report.failed.len()), (1, 0), "{report:?}");

        // Unenroll everything.
        let report = reg.reconcile(&parent, &[]).await.unwrap();
        assert_eq!(report.deleted, 3, "{report:?}");
        assert!(server_entries(&spire).is_empty());
    });
}

#[test]
fn svids_by_selectors_and_by_pid_and_short_ttl_rotation() {
    let spire = start_spire();
    // A process of the "pid" workload, under a uid of its own (the test runs as the
    // delegate's uid, whose entry would match too).
    let mut workload = std::process::Command::new("setpriv")
        .args([
            "--reuid=1001",
            "--regid=1001",
            "--clear-groups",
            "sleep",
            "600",
        ])
        .spawn()
        .unwrap();
    runtime().block_on(async {
        let reg = registrar(&spire);
        let mut web = sa_entry("shop", "web");
        web.x509_svid_ttl = Some(Duration::from_secs(30));
        let pid_id = id("spiffe://example.org/ns/shop/sa/pid");
        let mut by_uid = EntrySpec::for_service_account(&td(), &delegate(), "shop", "pid").unwrap();
        by_uid.selectors = vec![Selector::unix_uid(1001)];
        let report = reg.reconcile(&delegate(), &[web, by_uid]).await.unwrap();
        assert_eq!(report.created, 2, "{report:?}");

        let source = source(&spire, Duration::from_secs(10));

        // By selectors (derived from the Istio-shaped ID).
        let web_id = id("spiffe://example.org/ns/shop/sa/web");
        let started = Instant::now();
        let fetched = first_fetch(&source, &web_id).await;
        eprintln!("first SVID by selectors after {:?}", started.elapsed());
        assert_eq!(fetched.svid.spiffe_id(), &web_id);
        assert!(!fetched.roots.is_empty());
        let bundles = source.bundles().borrow().clone().unwrap();
        assert_eq!(
            bundles.get(&td()).unwrap().roots(),
            fetched.roots.as_slice()
        );

        // By PID.
        source.set_subject(&pid_id, Subject::Pid(workload.id()));
        let fetched = first_fetch(&source, &pid_id).await;
        assert_eq!(fetched.svid.spiffe_id(), &pid_id);

        // The manager follows SPIRE's rotation of the 30 s SVID: new serial, new key.
        let mut config = ManagerConfig::default();
        config.min_refresh_delay = Duration::from_millis(100);
        let manager = CertificateManager::new(source.clone(), config);
        let handle = manager.hold(&web_id, Priority::OnDemand);
        let first = handle.get().await.unwrap();
        let (serial, key) = serial_and_key(&first.svid);
        let mut rx = handle.subscribe();
        let rotated_at = Instant::now();
        let second = next_certificate(&mut rx, &first, "SPIRE rotated the 30 s SVID").await;
        eprintln!(
            "rotation seen by the manager {:?} after its first SVID",
            rotated_at.elapsed()
        );
        let (serial2, key2) = serial_and_key(&second.svid);
        assert_ne!(serial, serial2);
        assert_ne!(key, key2);
        assert_eq!(second.svid.spiffe_id(), &web_id);

        // When the manager forgets the identity, its subscription ends.
        assert!(source.subscribed().contains(&web_id));
        drop(handle);
        assert!(!source.subscribed().contains(&web_id));
        assert!(source.subscribed().contains(&pid_id));
    });
    let _ = workload.kill();
    let _ = workload.wait();
}

#[test]
fn an_svid_the_agent_pushes_reaches_the_manager_before_its_refresh_time() {
    let spire = start_spire();
    runtime().block_on(async {
        let reg = registrar(&spire);
        let mut entry = sa_entry("shop", "pushed");
        entry.x509_svid_ttl = Some(Duration::from_secs(600));
        reg.reconcile(&delegate(), std::slice::from_ref(&entry))
            .await
            .unwrap();
        let source = source(&spire, Duration::from_secs(10));
        let pushed_id = id("spiffe://example.org/ns/shop/sa/pushed");
        first_fetch(&source, &pushed_id).await;

        let manager = CertificateManager::new(source.clone(), ManagerConfig::default());
        let handle = manager.hold(&pushed_id, Priority::OnDemand);
        let first = handle.get().await.unwrap();
        let refresh_at = first.svid.refresh_at();
        let mut rx = handle.subscribe();
        rx.borrow_and_update();

        // A changed entry (a shorter TTL) makes the agent mint and push a new SVID at its
        // next sync, long before the first one's half-life (5 minutes on), when the manager
        // would otherwise fetch again.
        entry.x509_svid_ttl = Some(Duration::from_secs(300));
        let report = reg
            .reconcile(&delegate(), std::slice::from_ref(&entry))
            .await
            .unwrap();
        assert_eq!(report.updated, 1, "{report:?}");
        let changed_at = Instant::now();
        let second = next_certificate(
            &mut rx,
            &first,
            "the pushed SVID reached the manager after the entry change",
        )
        .await;
        eprintln!(
            "pushed SVID installed by the manager {:?} after the entry change",
            changed_at.elapsed()
        );
        assert!(std::time::SystemTime::now() < refresh_at);
        assert_eq!(second.svid.spiffe_id(), &pushed_id);
        assert!(second.svid.not_after() < first.svid.not_after());
    });
}

#[test]
fn identity_without_entry_gets_no_svid_and_unenrolling_stops_svids() {
    let spire = start_spire();
    runtime().block_on(async {
        let source = source(&spire, Duration::from_secs(3));
        let ghost = id("spiffe://example.org/ns/shop/sa/ghost");
        let err = source.fetch(&ghost).await.unwrap_err();
        assert!(matches!(err.root(), SpireError::NoEntry { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("no SPIRE registration entry matches"),
            "{err}"
        );

        // Enrolled: an SVID comes.
        let reg = registrar(&spire);
        reg.reconcile(&delegate(), &[sa_entry("shop", "ghost")])
            .await
            .unwrap();
        eventually(
            "SVID after enrolling",
            Duration::from_secs(30),
            async || source.fetch(&ghost).await.is_ok(),
        )
        .await;

        // Unenrolled: the agent withdraws it.
        reg.reconcile(&delegate(), &[]).await.unwrap();
        eventually(
            "no SVID after unenrolling",
            Duration::from_secs(30),
            async || {
                matches!(
                    source.fetch(&ghost).await.map_err(|e| e.root().to_string()),
                    Err(e) if e.contains("no SPIRE registration entry")
                )
            },
        )
        .await;
    });
}

#[test]
fn agent_restart_resubscribes_and_the_valid_svid_is_served_meanwhile() {
    let mut spire = start_spire();
    let rt = runtime();
    let web_id = id("spiffe://example.org/ns/shop/sa/web");
    let source = rt.block_on(async {
        let reg = registrar(&spire);
        reg.reconcile(&delegate(), &[sa_entry("shop", "web")])
            .await
            .unwrap();
        source(&spire, Duration::from_secs(2))
    });
    let first = rt.block_on(first_fetch(&source, &web_id));

    spire.stop_agent();
    // The agent is gone: the still-valid SVID keeps being served.
    let during = rt.block_on(source.fetch(&web_id)).unwrap();
    assert_eq!(during.svid.leaf(), first.svid.leaf());

    spire.restart_agent().unwrap();
    let restarted = Instant::now();
    // The agent's SVID cache is in memory: after the restart it issues a new SVID, which
    // reaches the source through a new subscription.
    rt.block_on(eventually(
        "new SVID after the agent restart",
        Duration::from_secs(60),
        async || {
            source
                .fetch(&web_id)
                .await
                .is_ok_and(|f| f.svid.leaf() != first.svid.leaf())
        },
    ));
    eprintln!(
        "new SVID {:?} after the agent was ready again",
        restarted.elapsed()
    );
}

#[test]
fn server_outage_shorter_than_the_svid_lifetime_keeps_serving_and_rotation_resumes() {
    let mut spire = start_spire();
    let rt = runtime();
    let web_id = id("spiffe://example.org/ns/shop/sa/web");
    let source = rt.block_on(async {
        let mut web = sa_entry("shop", "web");
        web.x509_svid_ttl = Some(Duration::from_secs(30));
        registrar(&spire)
            .reconcile(&delegate(), &[web])
            .await
            .unwrap();
        source(&spire, Duration::from_secs(2))
    });
    let first = rt.block_on(first_fetch(&source, &web_id));

    // The server is down for a few seconds: the agent keeps the SVID, the source serves it.
    spire.stop_server();
    let during = rt.block_on(source.fetch(&web_id)).unwrap();
    assert!(during.svid.not_after() > std::time::SystemTime::now());
    std::thread::sleep(Duration::from_secs(3));
    spire.start_server().unwrap();

    // Back up: the agent rotates again (the 30 s SVID is replaced within a minute).
    rt.block_on(eventually(
        "a rotated SVID after the server outage",
        Duration::from_secs(60),
        async || {
            source.fetch(&web_id).await.is_ok_and(|f| {
                f.svid.leaf() != first.svid.leaf() && f.svid.leaf() != during.svid.leaf()
            })
        },
    ));
}

/// The authority ID in the output of `spire-server localauthority x509 prepare`.
fn authority_id(cli_output: &str) -> String {
    cli_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Authority ID:"))
        .unwrap_or_else(|| panic!("no authority ID in {cli_output:?}"))
        .trim()
        .to_owned()
}

#[test]
fn a_ca_rotation_reaches_running_verifiers_through_the_shared_bundles() {
    use meshwire_svid::verify::SpiffeServerVerifier;
    let spire = start_spire();
    runtime().block_on(async {
        let mut web = sa_entry("shop", "web");
        // Re-signed on every agent sync: an SVID of the next CA comes soon after it is active.
        web.x509_svid_ttl = Some(Duration::from_secs(10));
        registrar(&spire)
            .reconcile(&delegate(), &[web])
            .await
            .unwrap();
        let source = source(&spire, Duration::from_secs(10));
        let web_id = id("spiffe://example.org/ns/shop/sa/web");
        let first = first_fetch(&source, &web_id).await;
        let roots = |s: &SpireSource| {
            s.shared_bundles()
                .current()
                .get(&td())
                .unwrap()
                .roots()
                .len()
        };
        assert_eq!(roots(&source), 1);
        let verifier = |roots: meshwire_svid::SharedTrustBundles| {
            SpiffeServerVerifier::builder(meshwire_svid::provider::default())
                .roots(roots)
                .policy(meshwire_svid::IdentityPolicy::exact([web_id.clone()]))
                .build_server_verifier()
                .unwrap()
        };
        // Built before the rotation: one follows the bundles, one keeps the first root.
        let live = verifier(source.shared_bundles());
        let frozen = verifier((*source.shared_bundles().current()).clone().into());

        // The next CA is prepared: the agent pushes a bundle with both roots.
        let prepared = spire
            .server_cli(&["localauthority", "x509", "prepare"])
            .unwrap();
        let next = authority_id(&prepared);
        eventually(
            "a bundle with two roots",
            Duration::from_secs(30),
            async || roots(&source) == 2,
        )
        .await;
        // Activated: SVIDs are signed by it from now on.
        spire
            .server_cli(&["localauthority", "x509", "activate", "-authorityID", &next])
            .unwrap();
        let verify = |v: &SpiffeServerVerifier, svid: &meshwire_svid::X509Svid| {
            v.verify_peer(
                svid.leaf(),
                &svid.cert_chain()[1..],
                meshwire_svid::pki_types::UnixTime::now(),
            )
        };
        let start = Instant::now();
        let rotated = loop {
            let fetched = source.fetch(&web_id).await.unwrap();
            if verify(&frozen, &fetched.svid).is_err() {
                break fetched.svid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no SVID of the next CA within 60 s"
            );
        };
        assert_eq!(verify(&live, &rotated), Ok(web_id.clone()));
        assert_eq!(verify(&live, &first.svid), Ok(web_id.clone()), "both roots");
        eprintln!(
            "SVID of the activated CA {:?} after activation",
            start.elapsed()
        );
    });
}
