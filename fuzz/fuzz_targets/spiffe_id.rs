//! SPIFFE ID and trust domain parsing: never panics, and whatever parses displays back to the
//! same text, re-parses to the same value, and agrees with the Istio view.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwire_svid::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::new(s) {
        let shown = id.to_string();
        assert_eq!(shown, s, "display must round-trip");
        assert_eq!(SpiffeId::new(&shown).as_ref(), Ok(&id));
        assert_eq!(
            TrustDomain::new(id.trust_domain().as_str()).as_ref(),
            Ok(id.trust_domain())
        );
        assert_eq!(
            SpiffeId::from_path(id.trust_domain(), id.path()).as_ref(),
            Ok(&id)
        );
        if let Some(istio) = id.istio() {
            let rebuilt = SpiffeId::from_istio(
                istio.trust_domain(),
                istio.namespace(),
                istio.service_account(),
            );
            assert_eq!(rebuilt.as_ref(), Ok(&id));
        }
    }
    if let Ok(td) = TrustDomain::new(s) {
        assert_eq!(td.to_string(), s);
        assert_eq!(td.id().trust_domain(), &td);
    }
});
