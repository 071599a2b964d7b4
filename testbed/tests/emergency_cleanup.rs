//! `delete_own_namespaces` removes every namespace of this process. It has a test binary
//! of its own: in a shared one it would delete the namespaces of tests running beside it.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use testbed::{Testbed, TestbedOptions, require_privileged};

#[test]
fn deletes_every_namespace_of_this_process_and_nothing_else() {
    let Some(_p) = require_privileged("deletes_every_namespace_of_this_process_and_nothing_else")
    else {
        return;
    };
    // A namespace of someone else, named outside the test bed's scheme.
    let foreign = format!("mwforeign{}", std::process::id());
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &foreign])
            .status()
            .unwrap()
            .success()
    );

    let tb = Testbed::build(TestbedOptions::default(), &[1, 1]).unwrap();
    let mut ours: Vec<PathBuf> = tb.pods().iter().map(|p| p.ns().path().to_owned()).collect();
    ours.extend(tb.nodes().iter().map(|n| n.ns().path().to_owned()));
    ours.push(tb.fabric().path().to_owned());
    assert!(ours.iter().all(|p| p.exists()));

    testbed::delete_own_namespaces();
    let left: Vec<_> = ours.iter().filter(|p| p.exists()).collect();
    let foreign_path = PathBuf::from(testbed::NETNS_DIR).join(&foreign);
    let foreign_kept = foreign_path.exists();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &foreign])
        .status();
    assert!(left.is_empty(), "still there: {left:?}");
    assert!(foreign_kept, "a namespace of someone else was deleted");
    // Dropping the test bed afterwards must not fail on the missing namespaces.
    drop(tb);
}
