//! Just enough of the Prometheus text format to read the proxies' and agents' counters.

use std::collections::BTreeMap;

/// One scrape: samples by metric name, each with its labels.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Metrics {
    /// Parses the text exposition format; lines it does not understand are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// The sum of every sample named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The value of `label` on the sample of `name` (filtered by `labels`) that grew
    /// most since `before`, if any grew.
    pub fn increased_label(
        &self,
        before: &Self,
        name: &str,
        labels: &[(&str, &str)],
        label: &str,
    ) -> Option<String> {
        let mut best: Option<(f64, String)> = None;
        for s in self.matching(name, labels) {
            let old: f64 = before
                .samples
                .iter()
                .filter(|b| b.name == s.name && b.labels == s.labels)
                .map(|b| b.value)
                .sum();
            let grew = s.value - old;
            if grew > 0.0 && best.as_ref().is_none_or(|(g, _)| grew > *g) {
                let value = s.labels.get(label).cloned().unwrap_or_default();
                best = Some((grew, value));
            }
        }
        best.map(|(_, v)| v).filter(|v| !v.is_empty())
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..close + 1], line[close + 1..].trim())
        }
        None => line.split_once(' ')?,
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match head.find('{') {
        Some(open) => (
            &head[..open],
            parse_labels(&head[open + 1..head.len() - 1])?,
        ),
        None => (head, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.insert(key.trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP meshwire_connections Connections.
# TYPE meshwire_connections counter
meshwire_connections_total{direction="outbound",security="mtls",source_identity="spiffe://cluster.local/ns/shop/sa/client",destination_identity="spiffe://cluster.local/ns/shop/sa/server"} 3
meshwire_connections_total{direction="inbound",security="plaintext",source_identity="",destination_identity=""} 1
meshwire_policy_denials_total 2
# EOF
"#;

    #[test]
    fn sums_by_labels() {
        let m = Metrics::parse(TEXT);
        assert_eq!(m.sum("meshwire_connections_total", &[]), 4.0);
        assert_eq!(
            m.sum("meshwire_connections_total", &[("security", "mtls")]),
            3.0
        );
        assert_eq!(m.sum("meshwire_policy_denials_total", &[]), 2.0);
        assert_eq!(m.sum("missing", &[]), 0.0);
    }

    #[test]
    fn finds_the_label_that_grew() {
        let before = Metrics::parse(&TEXT.replace("} 3", "} 2"));
        let after = Metrics::parse(TEXT);
        assert_eq!(
            after
                .increased_label(
                    &before,
                    "meshwire_connections_total",
                    &[("direction", "outbound")],
                    "destination_identity"
                )
                .as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/server")
        );
        assert_eq!(
            after.increased_label(&after, "meshwire_connections_total", &[], "source_identity"),
            None
        );
    }

    #[test]
    fn escaped_values() {
        let m = Metrics::parse("x{a=\"q\\\"b\",c=\"d\"} 1.5\n");
        assert_eq!(m.sum("x", &[("a", "q\"b"), ("c", "d")]), 1.5);
    }
}
