//! The test SPIRE deployment: a real spire-server and spire-agent start, the delegate's
//! entry is in the server, the agent serves its admin socket, and both stop cleanly
//! (also across an agent restart).

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use testbed::{Spire, SpireConfig};

#[test]
fn spire_server_and_agent_start_restart_and_stop() {
    let mut spire = Spire::start(SpireConfig::default()).unwrap();
    eprintln!("SPIRE fixture started in {:?}", spire.startup_time());
    assert!(spire.admin_socket().exists());

    let ids: Vec<String> = spire
        .entries_under(testbed::spire::NODE_PATH)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, [spire.delegate_id()]);

    spire.stop_agent();
    assert!(
        !spire.log_tail("agent", 200).is_empty(),
        "the agent wrote no log"
    );
    spire.restart_agent().unwrap();
    assert!(spire.admin_socket().exists());

    let dir = spire.dir().to_owned();
    drop(spire);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
