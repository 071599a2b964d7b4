//! `meshwire_agent_certificate_requests_total{outcome}`: the certificate service's own
//! counters, read at every scrape.

use std::sync::{Arc, OnceLock};

use meshwire_svid::service::server::StatsHandle;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// Reads the certificate service's counters once it exists (nothing before).
#[derive(Debug, Clone, Default)]
pub(crate) struct CaRequests(Arc<OnceLock<StatsHandle>>);

impl CaRequests {
    /// Starts reporting `stats` (the first call wins).
    pub(crate) fn watch(&self, stats: StatsHandle) {
        let _ = self.0.set(stats);
    }
}

impl Collector for CaRequests {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(stats) = self.0.get() else {
            return Ok(());
        };
        let s = stats.get();
        let mut family = encoder.encode_descriptor(
            "meshwire_agent_certificate_requests",
            "Certificate requests answered, by outcome (issued, unauthenticated, malformed, denied, unavailable, failed)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, value) in [
            ("issued", s.issued),
            ("unauthenticated", s.unauthenticated),
            ("malformed", s.malformed),
            ("denied", s.denied),
            ("unavailable", s.unavailable),
            ("failed", s.failed),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        Ok(())
    }
}
