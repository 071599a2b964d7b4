//! Inbound plaintext (15006): connections to the pod from peers outside the mesh.

use std::net::SocketAddr;
use std::sync::Arc;

use meshwire_xds_workload::authorization::{ConnectionInfo, Decision};
use tokio::net::TcpStream;

use super::DataPlane;
use super::connection::{ConnRecord, DENIED_BY_POLICY, Failure};
use super::labels::{self, InboundClient};
use super::workload::canonical;
use crate::copy::Ends;
use crate::metrics::istio::SecurityPolicy;
use crate::metrics::{Direction, Security};
use crate::pods::Pod;
use crate::routing;

impl DataPlane {
    pub(super) async fn inbound_plaintext(
        self: Arc<Self>,
        pod: Arc<Pod>,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let src = canonical(peer);
        let orig = match pod.net.original_dst(&stream) {
            Ok(d) => canonical(d),
            Err(e) => {
                self.metrics
                    .connection_failed(Direction::Inbound, "no original destination");
                tracing::info!(uid = %pod.info.uid, src = %src, error = %e, "inbound: no original destination");
                return;
            }
        };
        let mut rec = ConnRecord::new(Direction::Inbound, Security::Plaintext, src, orig);
        let target = match routing::inbound_plaintext_target(orig) {
            Ok(t) => t,
            Err(reason) => return self.connection_failed(rec, &Failure::new("refused", reason)),
        };
        let Some(local) = self.local_workload(&pod).await else {
            return self.connection_failed(
                rec,
                &Failure::new("unknown workload", "the pod's xDS workload is unknown"),
            );
        };
        rec.destination_identity = local.identity().to_string();
        let client = InboundClient {
            ip: Some(src.ip()),
            ..InboundClient::default()
        };
        let labels = labels::inbound(
            &self.store,
            &local,
            target.port(),
            &client,
            SecurityPolicy::Unknown,
        );
        self.open_tcp(&mut rec, labels);
        let conn = ConnectionInfo::new(src.ip(), target, None);
        if let Decision::Deny(reason) = self.store.authorize(&conn, &local).decision {
            // Refused with a reset (a strict pod's policy denies every plaintext arrival).
            let _ = stream.set_zero_linger();
            self.metrics.policy_denials.inc();
            return self.connection_failed(rec, &Failure::new(DENIED_BY_POLICY, reason));
        }
        let upstream = match self.connect_app(&pod, src, target).await {
            Ok(s) => s,
            Err(failure) => return self.connection_failed(rec, &failure),
        };
        self.splice_authorized(rec, Ends::Tcp(stream, upstream), conn, local.uid.clone())
            .await;
    }
}
