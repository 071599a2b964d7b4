//! [`PodNetwork`] for a real pod: sockets made inside the pod's network namespace (received
//! over ZDS) with the packet mark, so the in-pod redirection rules let them through.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use futures_util::future::BoxFuture;
use meshwire_netns::NetNs;
use meshwire_netns::ns::NsThread;
use meshwire_netns::socket::{ListenerOptions, SocketOptions};
use tokio::net::{TcpListener, TcpStream};

use crate::pods::PodNetwork;

/// A pod's network namespace, the one thread that makes its sockets, and the mark they
/// carry. The thread ends when the pod (and its last connection) is gone.
#[derive(Debug)]
pub(crate) struct PodNamespace {
    ns: NetNs,
    thread: NsThread,
    mark: u32,
}

impl PodNamespace {
    pub(crate) fn new(ns: NetNs, mark: u32) -> io::Result<Self> {
        let thread = NsThread::spawn(&ns).map_err(to_io)?;
        Ok(Self { ns, thread, mark })
    }
}

fn to_io(e: meshwire_netns::Error) -> io::Error {
    io::Error::other(e)
}

impl PodNetwork for PodNamespace {
    fn id(&self) -> String {
        let id = self.ns.id();
        format!("net:[{}]@{}", id.ino(), id.dev())
    }

    fn listen(&self, port: u16) -> BoxFuture<'_, io::Result<TcpListener>> {
        Box::pin(async move {
            let mut opts = ListenerOptions::default();
            opts.mark = Some(self.mark);
            opts.reuse_port = true;
            opts.backlog = 128;
            opts.only_v6 = false;
            let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
            match meshwire_netns::socket::bind_listener_in(&self.thread, v6, opts.clone()).await {
                Ok(l) => Ok(l),
                Err(meshwire_netns::Error::Socket { source, .. })
                    if matches!(
                        source.raw_os_error(),
                        Some(97 /* EAFNOSUPPORT */ | 99 /* EADDRNOTAVAIL */)
                    ) =>
                {
                    // IPv6 disabled in this pod: IPv4 only.
                    let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
                    meshwire_netns::socket::bind_listener_in(&self.thread, v4, opts)
                        .await
                        .map_err(to_io)
                }
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn connect(&self, dst: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            let mut opts = SocketOptions::default();
            opts.mark = Some(self.mark);
            let stream = meshwire_netns::socket::connect_in(&self.thread, dst, opts)
                .await
                .map_err(to_io)?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    }

    fn connect_as(&self, source: IpAddr, dst: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            let mut opts = SocketOptions::default();
            opts.mark = Some(self.mark);
            opts.source = Some(SocketAddr::new(source, 0));
            opts.transparent = true;
            let stream = meshwire_netns::socket::connect_in(&self.thread, dst, opts)
                .await
                .map_err(to_io)?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    }

    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        meshwire_netns::socket::original_dst(stream)
    }

    fn netns(&self) -> Option<meshwire_netns::ns::NsId> {
        Some(self.ns.id())
    }
}

/// Fails early, with a clear message, when the proxy cannot mark sockets (it would otherwise
/// accept pods and then fail every connection).
pub(crate) fn check_privileges(mark: u32) -> anyhow::Result<()> {
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    probe.set_mark(mark).map_err(|e| {
        anyhow::anyhow!(
            "cannot set SO_MARK on sockets ({e}); the proxy needs CAP_NET_ADMIN and \
             CAP_SYS_ADMIN (run it as root)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn sockets_live_in_the_pod_namespace_and_carry_the_mark() {
        let Some(_privileged) =
            testbed::require_privileged("podnet::sockets_live_in_the_pod_namespace")
        else {
            return;
        };
        let netns = testbed::Namespace::new().unwrap();
        // As the agent sends it: a descriptor of the bind-mounted namespace file.
        let open = || {
            let fd = OwnedFd::from(std::fs::File::open(netns.path()).unwrap());
            NetNs::from_fd(fd).unwrap()
        };
        let pod = PodNamespace::new(open(), 0x539).unwrap();
        let other = PodNamespace::new(open(), 0x539).unwrap();
        assert_eq!(pod.id(), other.id(), "same namespace, same id");
        assert_ne!(
            pod.id(),
            PodNamespace::new(NetNs::current().unwrap(), 1)
                .unwrap()
                .id()
        );

        let listener = pod.listen(0).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(
            listener.local_addr().unwrap().is_ipv6(),
            "dual-stack wildcard"
        );
        assert_eq!(
            socket2::SockRef::from(&listener).mark().unwrap(),
            0x539,
            "listener is marked"
        );
        // Not reachable from the test's own namespace …
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
        // … but from inside the pod, over IPv4 and IPv6.
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            }
        });
        for dst in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ] {
            let mut s = pod.connect(dst).await.unwrap();
            assert_eq!(socket2::SockRef::from(&s).mark().unwrap(), 0x539);
            // Not redirected: the original destination is the address connected to.
            let orig = pod.original_dst(&s).unwrap();
            assert_eq!(orig.ip(), s.local_addr().unwrap().ip().to_canonical());
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        }
        server.await.unwrap();
    }
}
