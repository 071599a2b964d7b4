//! Several rounds as medians: a table for people and JSON for tools, every figure also as
//! a ratio to the direct path of the same round.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::{Path, PathFigures, Round};

/// One row of the report: a figure of every path.
struct Figure {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    /// The figure, `None` where a path does not have it.
    get: fn(&PathFigures) -> Option<f64>,
    /// Whether the ratio to direct means anything (the proxies' CPU is zero on the direct
    /// path, so it has none).
    ratio: bool,
}

const FIGURES: [Figure; 10] = [
    Figure {
        key: "gbps_1",
        label: "throughput, 1 stream",
        unit: "Gbit/s",
        get: |f| Some(f.gbps_1),
        ratio: true,
    },
    Figure {
        key: "gbps_8",
        label: "throughput, 8 streams",
        unit: "Gbit/s",
        get: |f| Some(f.gbps_8),
        ratio: true,
    },
    Figure {
        key: "cpu_s_per_gb_1",
        label: "proxy CPU per GB, 1 stream",
        unit: "CPU-s/GB",
        get: |f| Some(f.cpu_s_per_gb_1),
        ratio: false,
    },
    Figure {
        key: "cpu_s_per_gb_8",
        label: "proxy CPU per GB, 8 streams",
        unit: "CPU-s/GB",
        get: |f| Some(f.cpu_s_per_gb_8),
        ratio: false,
    },
    Figure {
        key: "rr_p50_us",
        label: "1-byte request/response p50",
        unit: "us",
        get: |f| Some(f.rr_p50_us),
        ratio: true,
    },
    Figure {
        key: "rr_p99_us",
        label: "1-byte request/response p99",
        unit: "us",
        get: |f| Some(f.rr_p99_us),
        ratio: true,
    },
    Figure {
        key: "conns_per_s",
        label: "new connections (HBONE: warm pool)",
        unit: "/s",
        get: |f| Some(f.conns_per_s),
        ratio: true,
    },
    Figure {
        key: "handshakes_per_conn",
        label: "  TLS handshakes per connection",
        unit: "/conn",
        get: |f| f.handshakes_per_conn,
        ratio: false,
    },
    Figure {
        key: "cold_conns_per_s",
        label: "new connections (HBONE: cold TLS)",
        unit: "/s",
        get: |f| f.cold_conns_per_s,
        ratio: true,
    },
    Figure {
        key: "cold_handshakes_per_conn",
        label: "  TLS handshakes per connection",
        unit: "/conn",
        get: |f| f.cold_handshakes_per_conn,
        ratio: false,
    },
];

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// A figure of one path in every round that has it, and its ratio to direct in the same
/// round.
fn samples(
    rounds: &[Round],
    path: Path,
    get: fn(&PathFigures) -> Option<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let mut values = Vec::new();
    let mut ratios = Vec::new();
    for r in rounds {
        let (Some(f), Some(d)) = (r.path(path), r.path(Path::Direct)) else {
            continue;
        };
        let Some(v) = get(f) else { continue };
        values.push(v);
        if let Some(base) = get(d).filter(|b| *b > 0.0) {
            ratios.push(v / base);
        }
    }
    (values, ratios)
}

/// The table: medians over the rounds, ratio to direct in parentheses, `-` where a path
/// does not have the figure.
pub fn table(rounds: &[Round]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "medians of {} round(s); (x) = ratio to direct in the same round",
        rounds.len()
    );
    let _ = write!(out, "{:<38} {:>9}", "figure", "unit");
    for p in Path::ALL {
        let _ = write!(out, " {:>22}", p.name());
    }
    out.push('\n');
    for fig in &FIGURES {
        let _ = write!(out, "{:<38} {:>9}", fig.label, fig.unit);
        for p in Path::ALL {
            let (values, ratios) = samples(rounds, p, fig.get);
            let cell = if values.is_empty() {
                "-".to_owned()
            } else if fig.ratio && p != Path::Direct {
                format!("{} ({:.2}x)", num(median(&values)), median(&ratios))
            } else {
                num(median(&values))
            };
            let _ = write!(out, " {cell:>22}");
        }
        out.push('\n');
    }
    let direct = median(&samples(rounds, Path::Direct, |f| Some(f.rr_p50_us)).0);
    for p in [Path::Passthrough, Path::Hbone] {
        let added = median(&added_latency(rounds, p));
        let _ = writeln!(
            out,
            "latency added by {:<12} (p50): {} us (direct p50 {} us)",
            p.name(),
            num(added),
            num(direct)
        );
    }
    if let Some(first) = rounds.first() {
        let m = &first.memory;
        let _ = writeln!(
            out,
            "proxy memory (both, RSS, first round): idle {} KiB, with {} idle HBONE tunnels {} KiB: {} bytes per tunnel",
            m.idle_kib.iter().sum::<u64>(),
            m.tunnels,
            m.loaded_kib.iter().sum::<u64>(),
            num(m.bytes_per_tunnel())
        );
    }
    out
}

fn added_latency(rounds: &[Round], path: Path) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|r| Some(r.path(path)?.rr_p50_us - r.path(Path::Direct)?.rr_p50_us))
        .collect()
}

/// Three significant digits, or whole numbers for large values.
fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The same figures as JSON: per path the median and every round's value and ratio (a
/// figure a path does not have is left out).
pub fn json(rounds: &[Round]) -> Value {
    let mut paths = Map::new();
    for p in Path::ALL {
        let mut figures = Map::new();
        for fig in &FIGURES {
            let (values, ratios) = samples(rounds, p, fig.get);
            if values.is_empty() {
                continue;
            }
            let mut v = json!({
                "unit": fig.unit,
                "median": median(&values),
                "rounds": values,
            });
            if fig.ratio && p != Path::Direct {
                v["ratio_to_direct"] = json!({ "median": median(&ratios), "rounds": ratios });
            }
            figures.insert(fig.key.to_owned(), v);
        }
        if p != Path::Direct {
            let added = added_latency(rounds, p);
            figures.insert(
                "added_rr_p50_us".to_owned(),
                json!({ "unit": "us", "median": median(&added), "rounds": added }),
            );
        }
        paths.insert(p.name().to_owned(), Value::Object(figures));
    }
    let memory = rounds.first().map(|r| &r.memory);
    json!({
        "rounds": rounds.len(),
        "paths": paths,
        "memory": memory.map(|m| json!({
            "tunnels": m.tunnels,
            "idle_kib": m.idle_kib,
            "loaded_kib": m.loaded_kib,
            "bytes_per_tunnel": m.bytes_per_tunnel(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn ratios_are_per_round() {
        let round = |direct: f64, hbone: f64| Round {
            paths: vec![
                (
                    Path::Direct,
                    PathFigures {
                        gbps_1: direct,
                        ..PathFigures::default()
                    },
                ),
                (
                    Path::Hbone,
                    PathFigures {
                        gbps_1: hbone,
                        ..PathFigures::default()
                    },
                ),
            ],
            ..Round::default()
        };
        // Round ratios 0.5 and 0.25: the median ratio is 0.375, not median(hbone) /
        // median(direct) = 3 / 8.
        let rounds = [round(4.0, 2.0), round(12.0, 3.0)];
        let (values, ratios) = samples(&rounds, Path::Hbone, |f| Some(f.gbps_1));
        assert_eq!(values, [2.0, 3.0]);
        assert_eq!(median(&ratios), 0.375);
        let j = json(&rounds);
        assert_eq!(
            j["paths"]["hbone"]["gbps_1"]["ratio_to_direct"]["median"],
            0.375
        );
    }

    #[test]
    fn cold_connections_are_an_hbone_row_with_its_handshakes() {
        let round = Round {
            paths: vec![
                (
                    Path::Direct,
                    PathFigures {
                        conns_per_s: 4000.0,
                        cold_conns_per_s: Some(4000.0),
                        ..PathFigures::default()
                    },
                ),
                (
                    Path::Passthrough,
                    PathFigures {
                        conns_per_s: 3000.0,
                        ..PathFigures::default()
                    },
                ),
                (
                    Path::Hbone,
                    PathFigures {
                        conns_per_s: 2000.0,
                        handshakes_per_conn: Some(0.0),
                        cold_conns_per_s: Some(1000.0),
                        cold_handshakes_per_conn: Some(1.0),
                        ..PathFigures::default()
                    },
                ),
            ],
            ..Round::default()
        };
        let rounds = [round];
        let t = table(&rounds);
        let row = |label: &str| {
            t.lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no row {label} in\n{t}"))
                .split_whitespace()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
        };
        // Columns from the right: hbone (value, ratio), passthrough, direct.
        assert_eq!(
            row("new connections (HBONE: cold TLS)"),
            ["(0.25x)", "1000", "-", "4000"]
        );
        let handshakes: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("  TLS handshakes per connection"))
            .map(|l| l.split_whitespace().last().unwrap_or_default())
            .collect();
        assert_eq!(handshakes, ["0.00", "1.00"], "{t}");
        let j = json(&rounds);
        let hbone = &j["paths"]["hbone"];
        assert_eq!(hbone["cold_conns_per_s"]["ratio_to_direct"]["median"], 0.25);
        assert_eq!(hbone["cold_handshakes_per_conn"]["median"], 1.0);
        assert_eq!(hbone["handshakes_per_conn"]["median"], 0.0);
        assert!(
            hbone["cold_handshakes_per_conn"]
                .get("ratio_to_direct")
                .is_none()
        );
        assert!(j["paths"]["passthrough"].get("cold_conns_per_s").is_none());
        assert!(j["paths"]["direct"].get("handshakes_per_conn").is_none());
    }
}
