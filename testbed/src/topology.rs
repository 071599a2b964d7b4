//! Nodes and pods joined by veth pairs and bridges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;
use crate::namespace::{Namespace, reap_stale};
use crate::privileged::check_privileges;

/// Options of a [`Testbed`].
///
/// Defaults: IPv6 on (dual stack).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestbedOptions {
    /// Whether nodes and pods also get IPv6 addresses and routes.
    pub ipv6: bool,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        Self { ipv6: true }
    }
}

impl TestbedOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns IPv6 on or off.
    pub fn ipv6(&mut self, on: bool) -> &mut Self {
        self.ipv6 = on;
        self
    }
}

/// A node: a namespace with a bridge `br0` for its pods (gateway `10.10.<n>.1/24`,
/// `fd00:10:<n>::1/64`) and an uplink `up0` into the fabric (`10.0.0.<n>/24`,
/// `fd00::<n>/64`), forwarding on, with routes to every other node's pods.
#[derive(Debug, Clone)]
pub struct Node {
    ns: Namespace,
    index: u8,
    ipv6: bool,
}

impl Node {
    /// The node's namespace (its "host network").
    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    /// The node number, from 1.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The node's address on the fabric.
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, self.index)
    }

    /// The node's IPv6 address on the fabric, if IPv6 is on.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
            .then(|| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(self.index)))
    }

    /// The pods' IPv4 gateway (on `br0`).
    pub fn gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 10, self.index, 1)
    }

    /// The pods' IPv6 gateway (on `br0`), if IPv6 is on.
    pub fn gateway_v6(&self) -> Option<Ipv6Addr> {
        self.ipv6
            .then(|| Ipv6Addr::new(0xfd00, 0x10, u16::from(self.index), 0, 0, 0, 0, 1))
    }

    /// The pod subnet, `10.10.<n>.0/24`.
    pub fn pod_cidr_v4(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, 10, self.index, 0), 24)
    }

    /// The IPv6 pod subnet, `fd00:10:<n>::/64`, if IPv6 is on.
    pub fn pod_cidr_v6(&self) -> Option<(Ipv6Addr, u8)> {
        self.ipv6.then(|| {
            (
                Ipv6Addr::new(0xfd00, 0x10, u16::from(self.index), 0, 0, 0, 0, 0),
                64,
            )
        })
    }
}

/// A pod: a namespace with `eth0` (the pod end of a veth pair whose other end is on
/// its node's bridge), addresses `10.10.<node>.<k+1>` / `fd00:10:<node>::<k+1>` for
/// the k-th pod of the node, and default routes via the node.
#[derive(Debug, Clone)]
pub struct Pod {
    ns: Namespace,
    node: u8,
    index: u8,
    ipv6: bool,
}

impl Pod {
    /// The pod's namespace.
    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    /// The number of the node the pod runs on.
    pub fn node_index(&self) -> u8 {
        self.node
    }

    /// The pod's number on its node, from 1.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The pod's interface name.
    pub fn interface(&self) -> &'static str {
        "eth0"
    }

    /// The pod's IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 10, self.node, self.index + 1)
    }

    /// The pod's IPv6 address, if IPv6 is on.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6.then(|| {
            Ipv6Addr::new(
                0xfd00,
                0x10,
                u16::from(self.node),
                0,
                0,
                0,
                0,
                u16::from(self.index) + 1,
            )
        })
    }

    /// The pod's addresses, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips = vec![IpAddr::V4(self.ipv4())];
        ips.extend(self.ipv6().map(IpAddr::V6));
        ips
    }
}

/// A topology of real network namespaces for tests and demos.
///
/// Nodes hang off a shared fabric namespace (bridge `fab0`); each node has a bridge
/// for its pods and routes to the other nodes' pod subnets, so pods reach each
/// other across nodes. Addresses are from `10.0.0.0/8` and `fd00::/8` and exist
/// only inside the namespaces the test bed created: the host's own namespace gets
/// no interface, address or route, and nothing can leave the machine.
///
/// Everything is deleted when the test bed (and every [`Namespace`] clone handed
/// out) is dropped, including when a test panics. Namespaces left behind by test
/// processes that were killed are deleted by the next [`Testbed::new`].
#[derive(Debug)]
pub struct Testbed {
    options: TestbedOptions,
    // Dropped in this order: pods, nodes, extras, fabric.
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    extras: Vec<Namespace>,
    fabric: Namespace,
}

impl Testbed {
    /// An empty test bed (just the fabric) with default options.
    pub fn new() -> Result<Self, Error> {
        Self::with_options(TestbedOptions::default())
    }

    /// An empty test bed (just the fabric).
    ///
    /// Fails with [`Error::NotRoot`] or [`Error::ToolMissing`] when it cannot work.
    pub fn with_options(options: TestbedOptions) -> Result<Self, Error> {
        check_privileges()?;
        reap_stale();
        let fabric = Namespace::create('f')?;
        fabric.ip(&[
            "link",
            "add",
            "fab0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        fabric.ip(&["link", "set", "fab0", "up"])?;
        Ok(Self {
            options,
            pods: Vec::new(),
            nodes: Vec::new(),
            extras: Vec::new(),
            fabric,
        })
    }

    /// A test bed with `pods_per_node.len()` nodes and the given number of pods on
    /// each.
    pub fn build(options: TestbedOptions, pods_per_node: &[usize]) -> Result<Self, Error> {
        let mut tb = Self::with_options(options)?;
        for &count in pods_per_node {
            let node = tb.add_node()?;
            for _ in 0..count {
                tb.add_pod(&node)?;
            }
        }
        Ok(tb)
    }

    /// The options.
    pub fn options(&self) -> &TestbedOptions {
        &self.options
    }

    /// The fabric namespace that joins the nodes (bridge `fab0`); a good place to
    /// capture traffic between nodes.
    pub fn fabric(&self) -> &Namespace {
        &self.fabric
    }

    /// The nodes, in creation order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pods of `node`.
    pub fn pods_of<'a>(&'a self, node: &'a Node) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node.index)
    }

    /// Adds a node, connected to the fabric and routed to and from every other node.
    pub fn add_node(&mut self) -> Result<Node, Error> {
        let index = u8::try_from(self.nodes.len() + 1)
            .ok()
            .filter(|i| *i <= 250)
            .ok_or(Error::Limit("nodes"))?;
        let ns = Namespace::create('n')?;
        let node = Node {
            ns,
            index,
            ipv6: self.options.ipv6,
        };
        let n = node.ns();
        n.sysctl("net/ipv4/ip_forward", "1")?;
        n.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        n.ip(&["link", "set", "br0", "up"])?;
        n.ip(&[
            "addr",
            "add",
            &format!("{}/24", node.gateway_v4()),
            "dev",
            "br0",
        ])?;
        let uplink_peer = format!("n{index}");
        crate::namespace::ip(&[
            "link",
            "add",
            "up0",
            "netns",
            n.name(),
            "type",
            "veth",
            "peer",
            "name",
            &uplink_peer,
            "netns",
            self.fabric.name(),
        ])?;
        self.fabric
            .ip(&["link", "set", &uplink_peer, "master", "fab0", "up"])?;
        n.ip(&["link", "set", "up0", "up"])?;
        n.ip(&["addr", "add", &format!("{}/24", node.ipv4()), "dev", "up0"])?;
        if let (Some(gw6), Some(up6)) = (node.gateway_v6(), node.ipv6()) {
            n.sysctl("net/ipv6/conf/all/forwarding", "1")?;
            n.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{gw6}/64"),
                "dev",
                "br0",
                "nodad",
            ])?;
            n.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{up6}/64"),
                "dev",
                "up0",
                "nodad",
            ])?;
        }
        for other in &self.nodes {
            route_between(other, &node)?;
            route_between(&node, other)?;
        }
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Adds a pod to `node`.
    pub fn add_pod(&mut self, node: &Node) -> Result<Pod, Error> {
        let index = u8::try_from(self.pods_of(node).count() + 1)
            .ok()
            .filter(|i| *i <= 250)
            .ok_or(Error::Limit("pods on a node"))?;
        let ns = Namespace::create('p')?;
        let pod = Pod {
            ns,
            node: node.index,
            index,
            ipv6: self.options.ipv6,
        };
        plumb(node, &pod)?;
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Deletes `pod`'s namespace and creates a new one under the same name and path, with
    /// the same interface and addresses, the way a container runtime recreates a pod
    /// sandbox. Sockets opened in the old namespace stay there; the path, and
    /// [`Pod::ns`] of the returned pod, name the new one.
    ///
    /// Every other clone of `pod` must be dropped first (the test bed's own is taken care
    /// of); otherwise this fails with [`Error::Shared`] and the pod is gone from the test
    /// bed.
    pub fn recreate_pod(&mut self, pod: Pod) -> Result<Pod, Error> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.index == pod.node)
            .cloned()
            .ok_or_else(|| Error::ForeignPod(pod.ns().name().to_owned()))?;
        self.pods
            .retain(|p| !(p.node == pod.node && p.index == pod.index));
        // The old namespace may outlive its path (sockets hold it): take its link out of
        // the bridge now, so the new pod's link can have the name.
        let _ = node.ns().ip(&["link", "del", &format!("vp{}", pod.index)]);
        let Pod {
            ns,
            node: node_index,
            index,
            ipv6,
        } = pod;
        let pod = Pod {
            ns: ns.recreate()?,
            node: node_index,
            index,
            ipv6,
        };
        plumb(&node, &pod)?;
        // The node still has the old interface's MAC for the pod's addresses; forget it
        // so the next packet asks again instead of going nowhere until the entry expires.
        let _ = node
            .ns()
            .ip(&["neigh", "flush", "to", &pod.ipv4().to_string()]);
        if let Some(ip6) = pod.ipv6() {
            let _ = node
                .ns()
                .ip(&["-6", "neigh", "flush", "to", &ip6.to_string()]);
        }
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Adds a bare namespace (only `lo`, up) that lives as long as the test bed, for
    /// whatever a test needs beyond nodes and pods.
    pub fn add_namespace(&mut self) -> Result<Namespace, Error> {
        let ns = Namespace::create('x')?;
        self.extras.push(ns.clone());
        Ok(ns)
    }
}

/// Connects `pod` to `node`'s bridge: a veth pair (`eth0` in the pod, `vp<index>` on the
/// bridge), the pod's addresses and its default routes.
fn plumb(node: &Node, pod: &Pod) -> Result<(), Error> {
    let index = pod.index;
    let p = pod.ns();
    let n = node.ns();
    let peer = format!("vp{index}");
    crate::namespace::ip(&[
        "link",
        "add",
        "eth0",
        "netns",
        p.name(),
        "type",
        "veth",
        "peer",
        "name",
        &peer,
        "netns",
        n.name(),
    ])?;
    n.ip(&["link", "set", &peer, "master", "br0", "up"])?;
    p.ip(&["link", "set", "eth0", "up"])?;
    p.ip(&["addr", "add", &format!("{}/24", pod.ipv4()), "dev", "eth0"])?;
    p.ip(&[
        "route",
        "add",
        "default",
        "via",
        &node.gateway_v4().to_string(),
    ])?;
    if let (Some(ip6), Some(gw6)) = (pod.ipv6(), node.gateway_v6()) {
        p.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        p.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
    }
    Ok(())
}

/// Adds to `from` the routes to `to`'s pod subnets via `to`'s fabric address.
fn route_between(from: &Node, to: &Node) -> Result<(), Error> {
    let (net4, len4) = to.pod_cidr_v4();
    from.ns().ip(&[
        "route",
        "add",
        &format!("{net4}/{len4}"),
        "via",
        &to.ipv4().to_string(),
    ])?;
    if let (Some((net6, len6)), Some(via6)) = (to.pod_cidr_v6(), to.ipv6()) {
        from.ns().ip(&[
            "-6",
            "route",
            "add",
            &format!("{net6}/{len6}"),
            "via",
            &via6.to_string(),
        ])?;
    }
    Ok(())
}
