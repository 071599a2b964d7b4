//! Privileged tests of the redirection rules in real pod namespaces: where traffic
//! lands, and the apply / verify / repair / remove life cycle.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshwire_netns::NetNs;
use meshwire_netns::rules::{Difference, Family, RuleSet, SaveDump, Table};
use meshwire_netns::socket::{ListenerOptions, SocketOptions, original_dst};
use testbed::{Pod, Testbed, TestbedOptions, require_privileged};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const MARK: u32 = 0x539;
const WAIT: Duration = Duration::from_secs(5);

fn proxy_listener_opts() -> ListenerOptions {
    let mut o = ListenerOptions::default();
    o.mark = Some(MARK);
    o.reuse_port = true;
    o.transparent = true;
    o
}

async fn accept(l: &TcpListener) -> (TcpStream, SocketAddr) {
    timeout(WAIT, l.accept())
        .await
        .expect("no connection arrived")
        .unwrap()
}

/// Asserts that nothing is waiting on `l` right now.
async fn assert_idle(l: &TcpListener, what: &str) {
    if let Ok(Ok((_, peer))) = timeout(Duration::ZERO, l.accept()).await {
        panic!("{what} unexpectedly accepted a connection from {peer}");
    }
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => (v4, v6.port()).into(),
            None => a,
        },
        v4 => v4,
    }
}

async fn connect(ns: &NetNs, dst: SocketAddr, opts: SocketOptions) -> TcpStream {
    timeout(WAIT, meshwire_netns::socket::connect_in(ns, dst, opts))
        .await
        .expect("connect timed out")
        .unwrap()
}

/// Checks data flows both ways between two ends of one connection.
async fn exchange(a: &mut TcpStream, b: &mut TcpStream) {
    a.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    timeout(WAIT, b.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    b.write_all(b"pong").await.unwrap();
    timeout(WAIT, a.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong");
}

fn ips(pod: &Pod) -> Vec<IpAddr> {
    pod.ips()
}

/// Pod A has the rules and the proxy's three listeners; pod B, on another node, has
/// no rules and runs a server on 8080.
async fn traffic_lands_where_the_rules_say(rules: RuleSet) {
    let tb = Testbed::build(TestbedOptions::default(), &[1, 1]).unwrap();
    let (a, b) = (&tb.pods()[0], &tb.pods()[1]);
    let pod_a = a.ns().open().unwrap();
    let pod_b = b.ns().open().unwrap();
    rules.apply(&pod_a).unwrap();

    let any: SocketAddr = "[::]:0".parse().unwrap();
    let at = |port| SocketAddr::new(any.ip(), port);
    let l15001 = meshwire_netns::socket::bind_listener_in(&pod_a, at(15001), proxy_listener_opts())
        .await
        .unwrap();
    let l15006 = meshwire_netns::socket::bind_listener_in(&pod_a, at(15006), proxy_listener_opts())
        .await
        .unwrap();
    let l15008 = meshwire_netns::socket::bind_listener_in(&pod_a, at(15008), proxy_listener_opts())
        .await
        .unwrap();
    let server_b =
        meshwire_netns::socket::bind_listener_in(&pod_b, at(8080), ListenerOptions::default())
            .await
            .unwrap();
    let app_a =
        meshwire_netns::socket::bind_listener_in(&pod_a, at(9090), ListenerOptions::default())
            .await
            .unwrap();

    for (ip_a, ip_b) in ips(a).into_iter().zip(ips(b)) {
        let target = SocketAddr::new(ip_b, 8080);

        // Outbound: the app's connect to a remote address lands on 15001, which
        // reports the real target.
        let mut app = connect(&pod_a, target, SocketOptions::default()).await;
        let (mut captured, peer) = accept(&l15001).await;
        assert_eq!(unmap(peer), app.local_addr().unwrap(), "{target}");
        assert_eq!(original_dst(&captured).unwrap(), target);
        exchange(&mut app, &mut captured).await;
        assert_idle(&server_b, "the remote server (outbound was not captured)").await;

        // A socket with the proxy mark bypasses redirection and reaches the server.
        let mut opts = SocketOptions::default();
        opts.mark = Some(MARK);
        let mut direct = connect(&pod_a, target, opts).await;
        let (mut at_server, peer) = accept(&server_b).await;
        assert_eq!(unmap(peer), direct.local_addr().unwrap());
        assert_eq!(peer.ip().to_canonical(), ip_a);
        exchange(&mut direct, &mut at_server).await;
        assert_idle(&l15001, "15001 (marked traffic was captured)").await;

        // Inbound plaintext to any port of the pod lands on 15006.
        let dst = SocketAddr::new(ip_a, 8080);
        let mut client = connect(&pod_b, dst, SocketOptions::default()).await;
        let (mut inbound, peer) = accept(&l15006).await;
        assert_eq!(unmap(peer), client.local_addr().unwrap());
        assert_eq!(original_dst(&inbound).unwrap(), dst);
        exchange(&mut client, &mut inbound).await;

        // Inbound to 15008 is not redirected: it reaches the HBONE listener itself,
        // and the original destination falls back to the local address.
        let hbone = SocketAddr::new(ip_a, 15008);
        let mut client = connect(&pod_b, hbone, SocketOptions::default()).await;
        let (mut at_hbone, _) = accept(&l15008).await;
        assert_eq!(original_dst(&at_hbone).unwrap(), hbone);
        exchange(&mut client, &mut at_hbone).await;
        assert_idle(&l15006, "15006 (HBONE traffic was redirected)").await;

        // Spoofed delivery: the proxy connects to the app from B's address (mark +
        // transparent); the app's replies, addressed to B, come back to the proxy
        // through the connection mark and the table-100 local route.
        let mut spoof = SocketOptions::default();
        spoof.mark = Some(MARK);
        spoof.transparent = true;
        spoof.source = Some(SocketAddr::new(ip_b, 0));
        let mut proxy_side = connect(&pod_a, SocketAddr::new(ip_a, 9090), spoof).await;
        let (mut app_side, peer) = accept(&app_a).await;
        assert_eq!(
            peer.ip().to_canonical(),
            ip_b,
            "the app should see the original source"
        );
        exchange(&mut proxy_side, &mut app_side).await;
        assert_idle(&l15001, "15001 (the app's replies were captured)").await;
    }
    assert_idle(&server_b, "the remote server").await;
}

#[tokio::test]
async fn istio_rules_redirect_outbound_and_inbound() {
    let Some(_p) = require_privileged("istio_rules_redirect_outbound_and_inbound") else {
        return;
    };
    traffic_lands_where_the_rules_say(RuleSet::istio()).await;
}

#[tokio::test]
async fn cilium_rules_redirect_outbound_and_inbound() {
    let Some(_p) = require_privileged("cilium_rules_redirect_outbound_and_inbound") else {
        return;
    };
    traffic_lands_where_the_rules_say(RuleSet::cilium()).await;
}

/// What the rules and routing of a namespace look like, counters left out.
#[derive(Debug, PartialEq)]
struct Snapshot {
    v4: SaveDump,
    v6: SaveDump,
    rules4: String,
    rules6: String,
    table100_v4: String,
    table100_v6: String,
}

fn snapshot(pod: &Pod) -> Snapshot {
    let ns = pod.ns();
    let save = |prog: &str| SaveDump::parse(&ns.exec(prog, &[] as &[&str]).unwrap()).unwrap();
    let show = |args: &[&str]| ns.exec("ip", args).unwrap_or_default();
    Snapshot {
        v4: save("iptables-save").normalized(),
        v6: save("ip6tables-save").normalized(),
        rules4: show(&["-4", "rule", "show"]),
        rules6: show(&["-6", "rule", "show"]),
        table100_v4: show(&["-4", "route", "show", "table", "100"]),
        table100_v6: show(&["-6", "route", "show", "table", "100"]),
    }
}

fn life_cycle(rules: &RuleSet, foreign: &[&[&str]]) {
    let tb = Testbed::build(TestbedOptions::default(), &[1]).unwrap();
    let pod = &tb.pods()[0];
    let ns = pod.ns().open().unwrap();
    for cmd in foreign {
        pod.ns().exec(cmd[0], &cmd[1..]).unwrap();
    }
    let before = snapshot(pod);

    // Apply twice: the same rule set, once.
    rules.apply(&ns).unwrap();
    let first = snapshot(pod);
    rules.apply(&ns).unwrap();
    let second = snapshot(pod);
    assert_eq!(first, second, "applying twice changed the rules");
    assert!(rules.verify(&ns).unwrap().is_clean());
    assert!(
        first.rules4.contains("fwmark 0x111/0xfff lookup 100"),
        "{}",
        first.rules4
    );
    assert!(
        first.table100_v6.contains("local default dev lo"),
        "{}",
        first.table100_v6
    );

    // What iptables-save shows is exactly the rendered text, rule for rule.
    for (family, live) in [(Family::V4, &first.v4), (Family::V6, &first.v6)] {
        let rendered = SaveDump::parse(&rules.render(family).unwrap()).unwrap();
        for table in &rendered.tables {
            let live_table = live.table(&table.name).unwrap();
            for chain in [&rules.prerouting_chain, &rules.output_chain] {
                let want: Vec<_> = table.rules_of(chain).map(|r| &r.args).collect();
                let have: Vec<_> = live_table.rules_of(chain).map(|r| &r.args).collect();
                assert_eq!(want, have, "{family} {} {chain}", table.name);
            }
        }
    }

    // Hand-made damage is reported as typed differences.
    let out = &rules.output_chain;
    pod.ns()
        .exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-D",
                out,
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                "0x111/0xfff",
                "-j",
                "ACCEPT",
            ],
        )
        .unwrap();
    pod.ns()
        .exec("ip6tables", &["-t", "mangle", "-A", "OUTPUT", "-j", out])
        .unwrap();
    pod.ns()
        .exec(
            "ip",
            &[
                "-4",
                "rule",
                "del",
                "fwmark",
                "0x111/0xfff",
                "pref",
                "32764",
                "lookup",
                "100",
            ],
        )
        .unwrap();
    let drift = rules.verify(&ns).unwrap();
    assert_eq!(
        drift.differences(),
        [
            Difference::MissingRule {
                family: Family::V4,
                table: Table::Nat,
                chain: out.clone(),
                rule: "-p tcp -m mark --mark 0x111/0xfff -j ACCEPT".to_owned(),
            },
            Difference::MissingRoutingRule { family: Family::V4 },
            Difference::DuplicateJump {
                family: Family::V6,
                table: Table::Mangle,
                from: "OUTPUT".to_owned(),
                to: out.clone(),
                count: 2,
            },
        ],
        "{drift}"
    );

    // Repair reports what it fixed and restores the applied state exactly.
    let repaired = rules.repair(&ns).unwrap();
    assert_eq!(repaired, drift);
    assert!(rules.verify(&ns).unwrap().is_clean());
    assert_eq!(snapshot(pod), first);
    assert!(rules.repair(&ns).unwrap().is_clean());

    // Removal leaves the namespace as it was; removing again is fine.
    rules.remove(&ns).unwrap();
    assert_eq!(snapshot(pod), before);
    rules.remove(&ns).unwrap();
    assert_eq!(snapshot(pod), before);
}

#[test]
fn istio_rules_apply_verify_repair_remove() {
    let Some(_p) = require_privileged("istio_rules_apply_verify_repair_remove") else {
        return;
    };
    let mut rules = RuleSet::istio();
    rules.dns_capture = true;
    life_cycle(&rules, &[]);
}

#[test]
fn cilium_rules_removal_keeps_foreign_rules() {
    let Some(_p) = require_privileged("cilium_rules_removal_keeps_foreign_rules") else {
        return;
    };
    life_cycle(
        &RuleSet::cilium(),
        &[
            &[
                "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "5353", "-j",
                "ACCEPT",
            ],
            &[
                "iptables",
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-p",
                "icmp",
                "-j",
                "ACCEPT",
            ],
            &[
                "ip6tables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "eth0",
                "-j",
                "ACCEPT",
            ],
            &[
                "iptables",
                "-t",
                "filter",
                "-A",
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "keep me",
                "-j",
                "ACCEPT",
            ],
            &[
                "ip", "-4", "rule", "add", "fwmark", "0x7", "lookup", "7", "pref", "100",
            ],
        ],
    );
}

#[test]
fn ipv4_only_rules_leave_ipv6_alone() {
    let Some(_p) = require_privileged("ipv4_only_rules_leave_ipv6_alone") else {
        return;
    };
    let tb = Testbed::build(TestbedOptions::default(), &[1]).unwrap();
    let pod = &tb.pods()[0];
    let ns = pod.ns().open().unwrap();
    let mut rules = RuleSet::cilium();
    rules.ipv6 = false;
    rules.apply(&ns).unwrap();
    assert!(rules.verify(&ns).unwrap().is_clean());
    let v6 = SaveDump::parse(&pod.ns().exec("ip6tables-save", &[] as &[&str]).unwrap()).unwrap();
    assert!(v6.normalized().tables.is_empty(), "{v6}");
    assert!(
        !pod.ns()
            .exec("ip", &["-6", "rule", "show"])
            .unwrap()
            .contains("fwmark")
    );
    rules.remove(&ns).unwrap();
    let v4 = SaveDump::parse(&pod.ns().exec("iptables-save", &[] as &[&str]).unwrap()).unwrap();
    assert!(v4.normalized().tables.is_empty(), "{v4}");
}

#[test]
fn backend_is_detected() {
    let Some(_p) = require_privileged("backend_is_detected") else {
        return;
    };
    let nf = meshwire_netns::rules::Netfilter::system();
    let backend = nf.detect_backend().unwrap();
    // The explicitly versioned tools of that backend exist and agree.
    let versioned = meshwire_netns::rules::Netfilter::new(
        meshwire_netns::rules::SystemExecutor,
        meshwire_netns::rules::Tools::for_backend(backend),
    );
    assert_eq!(versioned.detect_backend().unwrap(), backend);
}
