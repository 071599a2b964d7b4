//! The in-pod redirection rules: render them, check a dump against them, find drift.
//!
//! Without privileges this only renders and compares text, and says what it would do
//! with them. Run as root, it also creates a fresh network namespace (never the host's),
//! applies the rules there, verifies them, damages them, repairs them and removes them.
//!
//! Run with `cargo run -p meshwire-netns --example rules`.

use meshwire_netns::NetNs;
use meshwire_netns::rules::{Family, RuleSet, SaveDump};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The rule set Istio's node agent installs in each enrolled pod, as data. Presets
    // are a starting point: every field is public.
    let mut rules = RuleSet::istio();
    rules.virtual_interfaces.push("vm0".to_owned());
    rules.validate()?;

    // 1. Render: what `iptables-restore --noflush` would be given for IPv4.
    let restore_input = rules.render(Family::V4)?;
    println!("== iptables-restore input (IPv4) ==\n{restore_input}");

    // 2. Check: a dump that holds exactly these rules shows no drift.
    let dump = SaveDump::parse(&restore_input)?;
    let differences = rules.drift(Family::V4, &dump);
    println!(
        "== drift of a matching dump: {} difference(s)",
        differences.len()
    );
    assert!(differences.is_empty());

    // 3. Drift: the same dump with the outbound redirect deleted by someone else.
    let damaged: String = restore_input
        .lines()
        .filter(|line| !(line.starts_with("-A ISTIO_OUTPUT") && line.contains("15001")))
        .map(|line| format!("{line}\n"))
        .collect();
    let differences = rules.drift(Family::V4, &SaveDump::parse(&damaged)?);
    println!("== drift after deleting the outbound redirect:");
    for difference in &differences {
        println!("  {difference}");
    }
    assert!(!differences.is_empty());

    if !nix::unistd::geteuid().is_root() {
        println!(
            "\nNot root: nothing applied. As root this would create a fresh network \
             namespace, apply the rules above for IPv4 and IPv6 with iptables-restore, add \
             `ip rule fwmark 0x111/0xfff lookup 100` and a local default route in table 100, \
             verify them against iptables-save, repair a deleted rule, and remove them all."
        );
        return Ok(());
    }
    in_fresh_namespace(&rules)
}

/// Applies, verifies, repairs and removes the rules in a namespace made for this run.
fn in_fresh_namespace(rules: &RuleSet) -> Result<(), Box<dyn std::error::Error>> {
    // A thread moves itself into a new namespace; the handle keeps the namespace alive
    // after the thread ends.
    let ns = std::thread::spawn(|| -> Result<NetNs, String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        NetNs::current().map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "namespace thread panicked")??;
    println!("\n== root: fresh namespace {}", ns.id());
    // A new namespace starts with `lo` down; the local route of table 100 needs it up
    // (in a pod it always is).
    ns.run_on_thread(|| {
        std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
    })??;

    if let Err(e) = rules.apply(&ns) {
        // For example the iptables or iproute2 programs are not installed.
        println!("cannot apply the rules here: {e}");
        return Ok(());
    }
    println!("applied; verify: {}", rules.verify(&ns)?);

    // Someone flushes our output chain; repair puts it back.
    ns.run_on_thread(|| {
        std::process::Command::new("iptables")
            .args(["-t", "nat", "-F", "ISTIO_OUTPUT"])
            .status()
    })??;
    let drift = rules.verify(&ns)?;
    println!("after flushing ISTIO_OUTPUT: {drift}");
    let repaired = rules.repair(&ns)?;
    println!("repaired: {repaired}");
    assert!(rules.verify(&ns)?.is_clean());

    rules.remove(&ns)?;
    let after = ns.run_on_thread(|| std::process::Command::new("iptables-save").output())??;
    let left = String::from_utf8_lossy(&after.stdout);
    println!(
        "removed; ISTIO chains left: {}",
        left.lines().filter(|l| l.contains("ISTIO")).count()
    );
    Ok(())
}
