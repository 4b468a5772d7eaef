//! Reading the text exposition back: the samples of a scrape, sums over
//! label sets, and quantiles estimated from histogram buckets (linear
//! interpolation inside the bucket, as Prometheus' `histogram_quantile`
//! does). Used by `hsmca status` and the tests.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format; comment lines and lines that do not parse
    /// are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// Every sample of `name` whose labels include all of `want`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The sum of `name` over all its label sets (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.select(name, &[]).map(|s| s.value).sum()
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.select(name, &[]).next().map(|s| s.value)
    }

    /// `name` summed by the value of label `by`.
    pub fn by_label(&self, name: &str, by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.select(name, &[]) {
            let k = s.labels.get(by).cloned().unwrap_or_default();
            *out.entry(k).or_insert(0.0) += s.value;
        }
        out
    }

    /// The cumulative buckets of histogram `name` (without `_bucket`),
    /// ordered by upper bound.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut b: Vec<(f64, f64)> = self
            .select(&bucket, &[])
            .filter_map(|s| Some((parse_value(s.labels.get("le")?)?, s.value)))
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        b
    }

    /// The `q` quantile of histogram `name`, or `None` without
    /// observations.
    pub fn quantile(&self, name: &str, q: f64) -> Option<f64> {
        quantile(&self.buckets(name), q)
    }
}

/// `histogram_quantile` over cumulative `(upper bound, count)` buckets.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                // Beyond the last finite bound: report that bound.
                return Some(lower);
            }
            let inside = count - below;
            if inside <= 0.0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below) / inside);
        }
        lower = upper;
        below = count;
    }
    Some(lower)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let sp = line.find(' ')?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        }
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.insert(key, value);
        rest = after[end + 1..].trim_start_matches(',').trim_start();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP hsmca_certificates_issued Certificates issued.
# TYPE hsmca_certificates_issued counter
hsmca_certificates_issued_total{profile="client"} 7
hsmca_certificates_issued_total{profile="server"} 3
hsmca_certificates_refused_total{code="INVALID_ARGUMENT",profile="client"} 2
hsmca_token_ready 1
hsmca_sign_duration_seconds_sum 0.05
hsmca_sign_duration_seconds_count 10
hsmca_sign_duration_seconds_bucket{le="0.001"} 0
hsmca_sign_duration_seconds_bucket{le="0.002"} 5
hsmca_sign_duration_seconds_bucket{le="0.004"} 9
hsmca_sign_duration_seconds_bucket{le="+Inf"} 10
weird{a="x\"y,z",b="2"} 4
# EOF
"#;

    #[test]
    fn parses_samples_and_labels() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("hsmca_certificates_issued_total"), 10.0);
        assert_eq!(s.get("hsmca_token_ready"), Some(1.0));
        let by = s.by_label("hsmca_certificates_refused_total", "code");
        assert_eq!(by.get("INVALID_ARGUMENT"), Some(&2.0));
        let w = s.select("weird", &[("b", "2")]).next().unwrap();
        assert_eq!(w.labels["a"], "x\"y,z");
        assert_eq!(w.value, 4.0);
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let s = Scrape::parse(TEXT);
        let p50 = s.quantile("hsmca_sign_duration_seconds", 0.5).unwrap();
        assert!((p50 - 0.002).abs() < 1e-9, "{p50}");
        let p90 = s.quantile("hsmca_sign_duration_seconds", 0.9).unwrap();
        assert!((p90 - 0.004).abs() < 1e-9, "{p90}");
        // In the +Inf bucket: the last finite bound.
        let p99 = s.quantile("hsmca_sign_duration_seconds", 0.99).unwrap();
        assert!((p99 - 0.004).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }
}
