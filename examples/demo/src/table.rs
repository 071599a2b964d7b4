//! The demo's closing table: one row per path, read from the proxies' counters.

use std::fmt::Write as _;

use crate::Flow;

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// What a flow's `result` column says.
fn result(f: &Flow) -> String {
    if f.echoed {
        "ok".to_owned()
    } else if f.denied > 0.0 {
        "denied".to_owned()
    } else {
        f.error.clone().unwrap_or_else(|| "failed".into())
    }
}

/// The table of `rows` (a description of the path, and what happened on it), with a blank
/// line before it and a legend after it.
pub fn table(rows: &[(String, Flow)]) -> String {
    let mut out = String::from("\n");
    let _ = writeln!(
        out,
        "{:<34} {:<19} {:<19} {:<9} {:<9} {:<38} {:>7}  result",
        "path",
        "source",
        "destination",
        "enrolled",
        "mTLS",
        "peer identity (seen by destination)",
        "bytes"
    );
    for (what, f) in rows {
        let enrolled = format!(
            "{}/{}",
            yes(f.source_proxied()),
            yes(f.destination_proxied())
        );
        let _ = writeln!(
            out,
            "{:<34} {:<19} {:<19} {:<9} {:<9} {:<38} {:>7}  {}",
            what,
            f.from.label(),
            f.to.label(),
            enrolled,
            yes(f.encrypted()),
            f.peer_identity.as_deref().unwrap_or("-"),
            if f.echoed { f.sent } else { 0 },
            result(f)
        );
    }
    out.push('\n');
    out.push_str("enrolled = the source / destination proxy handled the connection (src/dst);\n");
    out.push_str("mTLS = carried in HBONE (mutual TLS 1.3) between the two proxies.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn flow(from: Role, to: Role) -> Flow {
        Flow {
            from,
            to,
            sent: 65536,
            echoed: false,
            error: None,
            outbound_mtls: 0.0,
            outbound_plain: 0.0,
            inbound_mtls: 0.0,
            inbound_plain: 0.0,
            denied: 0.0,
            outbound_failed: 0.0,
            peer_identity: None,
            server_identity: None,
        }
    }

    #[test]
    fn rows_say_what_the_proxies_counted() {
        let mut mtls = flow(Role::Client, Role::ServerFar);
        mtls.echoed = true;
        mtls.outbound_mtls = 1.0;
        mtls.inbound_mtls = 1.0;
        mtls.peer_identity = Some(Role::Client.spiffe_id());
        let mut denied = flow(Role::Intruder, Role::ServerFar);
        denied.outbound_mtls = 1.0;
        denied.denied = 1.0;
        let mut direct = flow(Role::Client, Role::ServerFar);
        direct.echoed = true;
        let mut broken = flow(Role::Legacy, Role::ServerNear);
        broken.error = Some("connection refused".into());

        let text = table(&[
            ("mtls".into(), mtls),
            ("denied".into(), denied),
            ("direct".into(), direct),
            ("broken".into(), broken),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "");
        assert!(lines[1].starts_with("path "), "{text}");
        let cols = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            cols(lines[2]),
            [
                "mtls",
                "shop/client",
                "shop/server-far",
                "yes/yes",
                "yes",
                "spiffe://cluster.local/ns/shop/sa/client",
                "65536",
                "ok"
            ]
        );
        assert_eq!(
            cols(lines[3]),
            [
                "denied",
                "shop/intruder",
                "shop/server-far",
                "yes/yes",
                "no",
                "-",
                "0",
                "denied"
            ]
        );
        assert_eq!(cols(lines[4])[3..], ["no/no", "no", "-", "65536", "ok"]);
        assert!(lines[5].ends_with("connection refused"), "{text}");
        assert!(text.ends_with("between the two proxies.\n"));
    }
}
