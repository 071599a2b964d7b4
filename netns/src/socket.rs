//! Sockets with proxy options, made inside a network namespace: listeners
//! ([`bind_listener_in`]), outbound connections ([`connect_in`], [`socket_in`]), and the
//! original destination of a redirected connection ([`original_dst`]).

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::error::{Error, SocketOp};
use crate::ns::RunIn;

/// Options for a listening TCP socket.
///
/// Defaults: no mark, no `SO_REUSEPORT`, no `IP_TRANSPARENT`, backlog 128, and an
/// IPv6 wildcard listener also accepts IPv4 (dual stack). Start from the default and set
/// the fields that differ:
///
/// ```
/// let mut opts = meshwire_netns::socket::ListenerOptions::default();
/// opts.mark = Some(0x539);
/// opts.reuse_port = true;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerOptions {
    /// `SO_MARK` for the listener and the sockets it accepts (needs `CAP_NET_ADMIN`).
    /// Default none.
    pub mark: Option<u32>,
    /// `SO_REUSEPORT`, so a second process can hold the same port (for upgrades).
    /// Default off.
    pub reuse_port: bool,
    /// `IP_TRANSPARENT` / `IPV6_TRANSPARENT` (needs `CAP_NET_ADMIN`); required to
    /// accept connections delivered by `TPROXY`. Default off.
    pub transparent: bool,
    /// The `listen(2)` backlog. Default 128.
    pub backlog: u32,
    /// `IPV6_V6ONLY` for IPv6 addresses; `false` (the default) makes a dual-stack
    /// listener.
    pub only_v6: bool,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            mark: None,
            reuse_port: false,
            transparent: false,
            backlog: 128,
            only_v6: false,
        }
    }
}

/// Options for an outbound TCP socket.
///
/// Defaults: no mark, no source binding (the kernel picks address and port), no
/// `IP_TRANSPARENT`. Start from the default and set the fields that differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `SO_MARK` (needs `CAP_NET_ADMIN`). Default none.
    pub mark: Option<u32>,
    /// Local address to bind before connecting; port 0 lets the kernel choose. Default
    /// none.
    pub source: Option<SocketAddr>,
    /// `IP_TRANSPARENT` / `IPV6_TRANSPARENT`, so `source` may be an address that is
    /// not local (original-source spoofing; needs `CAP_NET_ADMIN`). Default off.
    pub transparent: bool,
}

fn op(op: SocketOp) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Socket { op, source }
}

fn set_transparent(sock: &Socket, v6: bool) -> Result<(), Error> {
    if v6 {
        sock.set_ip_transparent_v6(true)
            .map_err(op(SocketOp::SetOption("IPV6_TRANSPARENT")))
    } else {
        sock.set_ip_transparent_v4(true)
            .map_err(op(SocketOp::SetOption("IP_TRANSPARENT")))
    }
}

/// A new non-blocking, close-on-exec TCP socket of `addr`'s family, with `SO_MARK` set
/// when a mark is given.
fn tcp_socket(addr: SocketAddr, mark: Option<u32>) -> Result<Socket, Error> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(op(SocketOp::Create))?;
    if let Some(mark) = mark {
        sock.set_mark(mark)
            .map_err(op(SocketOp::SetOption("SO_MARK")))?;
    }
    Ok(sock)
}

/// Creates a listening, non-blocking TCP socket in the **calling thread's** network
/// namespace.
///
/// Use [`bind_listener_in`] to make one inside another namespace.
pub fn bind_listener(
    addr: SocketAddr,
    opts: &ListenerOptions,
) -> Result<std::net::TcpListener, Error> {
    let sock = tcp_socket(addr, opts.mark)?;
    sock.set_reuse_address(true)
        .map_err(op(SocketOp::SetOption("SO_REUSEADDR")))?;
    if opts.reuse_port {
        sock.set_reuse_port(true)
            .map_err(op(SocketOp::SetOption("SO_REUSEPORT")))?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(opts.only_v6)
            .map_err(op(SocketOp::SetOption("IPV6_V6ONLY")))?;
    }
    if opts.transparent {
        set_transparent(&sock, addr.is_ipv6())?;
    }
    sock.bind(&addr.into()).map_err(op(SocketOp::Bind))?;
    let backlog = i32::try_from(opts.backlog).unwrap_or(i32::MAX);
    sock.listen(backlog).map_err(op(SocketOp::Listen))?;
    Ok(sock.into())
}

/// Creates an unconnected, non-blocking TCP socket for a connection to `dst` in the
/// **calling thread's** network namespace, with the options applied and the source
/// bound.
///
/// The socket is returned as an unconnected [`std::net::TcpStream`], ready for
/// [`tokio::net::TcpSocket::from_std_stream`]. Use [`socket_in`] for another
/// namespace.
pub fn outbound_socket(
    dst: SocketAddr,
    opts: &SocketOptions,
) -> Result<std::net::TcpStream, Error> {
    let v6 = dst.is_ipv6();
    if let Some(src) = opts.source
        && src.is_ipv6() != v6
    {
        return Err(Error::Socket {
            op: SocketOp::Bind,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("source {src} and destination {dst} are of different address families"),
            ),
        });
    }
    let sock = tcp_socket(dst, opts.mark)?;
    if opts.transparent {
        set_transparent(&sock, v6)?;
    }
    if let Some(src) = opts.source {
        sock.bind(&src.into()).map_err(op(SocketOp::Bind))?;
    }
    Ok(sock.into())
}

/// Creates a listener inside `ns` (on a helper thread, so no runtime thread changes
/// namespace: a new one per call for a [`NetNs`](crate::NetNs), the namespace's own for an
/// [`NsThread`](crate::ns::NsThread)) and registers it with the current tokio runtime.
///
/// The socket stays in `ns` for its whole life: everything it accepts arrives in
/// that namespace. Must be called from within a tokio runtime.
pub async fn bind_listener_in(
    ns: &impl RunIn,
    addr: SocketAddr,
    opts: ListenerOptions,
) -> Result<tokio::net::TcpListener, Error> {
    let std_listener = ns.run_in(move || bind_listener(addr, &opts)).await??;
    tokio::net::TcpListener::from_std(std_listener).map_err(op(SocketOp::Register))
}

/// Creates an unconnected outbound socket inside `ns` (see [`outbound_socket`]).
pub async fn socket_in(
    ns: &impl RunIn,
    dst: SocketAddr,
    opts: SocketOptions,
) -> Result<tokio::net::TcpSocket, Error> {
    let stream = ns.run_in(move || outbound_socket(dst, &opts)).await??;
    Ok(tokio::net::TcpSocket::from_std_stream(stream))
}

/// Connects to `dst` from inside `ns` with the given options.
///
/// The socket is made in `ns` on a helper thread; the connect itself runs on the
/// caller's task (a socket keeps the namespace it was made in).
pub async fn connect_in(
    ns: &impl RunIn,
    dst: SocketAddr,
    opts: SocketOptions,
) -> Result<tokio::net::TcpStream, Error> {
    let socket = socket_in(ns, dst, opts).await?;
    socket.connect(dst).await.map_err(op(SocketOp::Connect))
}

/// The original destination of an accepted (redirected) TCP connection.
///
/// Reads `SO_ORIGINAL_DST` (IPv4, also for IPv4 connections on a dual-stack IPv6
/// listener) or `IP6T_SO_ORIGINAL_DST` (IPv6). When the connection was not
/// redirected by NAT (no conntrack entry, for example because it arrived by
/// `TPROXY` or directly), the local address of the socket is returned instead, which
/// then is the destination the client used.
///
/// IPv4-mapped IPv6 addresses are returned as IPv4.
pub fn original_dst<S: AsFd>(stream: &S) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = sock
        .local_addr()?
        .as_socket()
        .map(canonical)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    let orig = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    match orig {
        Ok(addr) => addr.as_socket().map(canonical).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "original destination is not an IP address",
            )
        }),
        Err(e) if is_not_redirected(&e) => Ok(local),
        Err(e) => Err(e),
    }
}

fn is_not_redirected(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
    )
}

/// Turns an IPv4-mapped IPv6 socket address into the IPv4 one.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, v6.scope_id())),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};

    #[test]
    fn canonical_unmaps_v4_mapped() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "10.1.2.3:80".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn original_dst_falls_back_to_local_address_without_nat() {
        let l =
            bind_listener((Ipv4Addr::LOCALHOST, 0).into(), &ListenerOptions::default()).unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        l.set_nonblocking(false).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(original_dst(&s).unwrap(), addr);
        drop(c);
    }

    #[test]
    fn dual_stack_listener_reports_v4_destination_as_v4() {
        let l = bind_listener(
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            &ListenerOptions::default(),
        )
        .unwrap();
        let port = l.local_addr().unwrap().port();
        let c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        l.set_nonblocking(false).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(canonical(peer), c.local_addr().unwrap());
        assert_eq!(
            original_dst(&s).unwrap(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        );
    }

    #[test]
    fn mismatched_source_family_is_rejected() {
        let opts = SocketOptions {
            source: Some("[::1]:0".parse().unwrap()),
            ..SocketOptions::default()
        };
        let err = outbound_socket("127.0.0.1:80".parse().unwrap(), &opts).unwrap_err();
        assert!(matches!(
            err,
            Error::Socket {
                op: SocketOp::Bind,
                ..
            }
        ));
    }

    #[test]
    fn listener_options_are_applied() {
        // SO_MARK and IP_TRANSPARENT need CAP_NET_ADMIN.
        let Some(_p) = testbed::require_privileged("listener_options_are_applied") else {
            return;
        };
        let opts = ListenerOptions {
            mark: Some(0x539),
            reuse_port: true,
            transparent: true,
            ..ListenerOptions::default()
        };
        let l = bind_listener((Ipv4Addr::LOCALHOST, 0).into(), &opts).unwrap();
        let s = SockRef::from(&l);
        assert_eq!(s.mark().unwrap(), 0x539);
        assert!(s.reuse_port().unwrap());
        assert!(s.ip_transparent_v4().unwrap());
        // A second listener with SO_REUSEPORT can share the port.
        let l2 = bind_listener(l.local_addr().unwrap(), &opts).unwrap();
        assert_eq!(l2.local_addr().unwrap(), l.local_addr().unwrap());
    }

    #[test]
    fn outbound_socket_binds_source_and_marks() {
        // SO_MARK needs CAP_NET_ADMIN.
        let Some(_p) = testbed::require_privileged("outbound_socket_binds_source_and_marks") else {
            return;
        };
        let opts = SocketOptions {
            mark: Some(0x539),
            source: Some("127.0.0.1:0".parse().unwrap()),
            ..SocketOptions::default()
        };
        let s = outbound_socket("127.0.0.1:9".parse().unwrap(), &opts).unwrap();
        let r = SockRef::from(&s);
        assert_eq!(r.mark().unwrap(), 0x539);
        let local = r.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(local.ip(), Ipv4Addr::LOCALHOST);
        assert_ne!(local.port(), 0);
    }
}
