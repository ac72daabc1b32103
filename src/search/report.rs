// Reports of a run: the paper's tables (per generator × dataset × cycle), their JSON and CSV, SVG plots, and rank correlations for `reeval`.
// It only reads the run store (reeval also records its retraining there); numbers are computed from stored candidates, never kept elsewhere.

use super::store::Candidate;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One row of the main table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub generator: String,
    pub dataset: String,
    pub cycle: i64,
    pub candidates: usize,
    /// Judged `ok` by the front half (so trained).
    pub valid: usize,
    pub valid_rate: f64,
    /// Candidates whose first attempt was already `ok` (before any retry), over all candidates.
    pub first_try_valid_rate: f64,
    /// Every final verdict (front half, or training for the valid ones) and its count.
    pub verdicts: BTreeMap<String, usize>,
    /// Candidates that trained to the end (training verdict `ok`).
    pub trained: usize,
    pub mean_accuracy: Option<f64>,
    pub best_accuracy: Option<f64>,
    pub mean_reply_lines: Option<f64>,
    pub mean_reply_tokens: Option<f64>,
    /// 1 − similarity to the nearest archived network, over the candidates that checked.
    pub mean_novelty: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BaselineRow {
    pub dataset: String,
    pub baseline: String,
    pub verdict: String,
    pub accuracy: Option<f64>,
    pub params: Option<i64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub baselines: Vec<BaselineRow>,
    pub rows: Vec<Row>,
    /// The same measures over all cycles, per generator × dataset (cycle 0 in these rows).
    pub totals: Vec<Row>,
    pub best: Option<Best>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Best {
    pub id: i64,
    pub dataset: String,
    pub cycle: i64,
    pub accuracy: f64,
    pub params: Option<i64>,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

fn row(generator: &str, dataset: &str, cycle: i64, cs: &[&Candidate]) -> Row {
    let valid = cs.iter().filter(|c| c.front_verdict == "ok").count();
    let mut verdicts = BTreeMap::new();
    for c in cs {
        *verdicts
            .entry(if c.status == "claimed" { "unfinished".to_string() } else { c.verdict.clone() })
            .or_insert(0) += 1;
    }
    let accs: Vec<f64> = cs.iter().filter_map(|c| c.accuracy).collect();
    Row {
        generator: generator.to_string(),
        dataset: dataset.to_string(),
        cycle,
        candidates: cs.len(),
        valid,
        valid_rate: if cs.is_empty() { 0.0 } else { valid as f64 / cs.len() as f64 },
        first_try_valid_rate: if cs.is_empty() {
            0.0
        } else {
            cs.iter().filter(|c| c.attempt_verdicts.first().is_some_and(|v| v == "ok")).count() as f64 / cs.len() as f64
        },
        verdicts,
        trained: accs.len(),
        mean_accuracy: mean(accs.iter().copied()),
        best_accuracy: accs.iter().copied().reduce(f64::max),
        mean_reply_lines: mean(cs.iter().filter_map(|c| c.reply_lines).map(|x| x as f64)),
        mean_reply_tokens: mean(cs.iter().filter_map(|c| c.reply_tokens).map(|x| x as f64)),
        mean_novelty: mean(cs.iter().filter(|c| c.hash.is_some()).map(|c| 1.0 - c.similarity.unwrap_or(0.0))),
    }
}

/// The report of a run's stored candidates.
pub fn build(all: &[Candidate]) -> Report {
    let baselines = all
        .iter()
        .filter(|c| c.role == "baseline")
        .map(|c| BaselineRow {
            dataset: c.dataset.clone(),
            baseline: c.baseline.clone(),
            verdict: c.verdict.clone(),
            accuracy: c.accuracy,
            params: c.params,
        })
        .collect();
    let mut groups: BTreeMap<(String, String, i64), Vec<&Candidate>> = BTreeMap::new();
    let mut totals: BTreeMap<(String, String), Vec<&Candidate>> = BTreeMap::new();
    for c in all.iter().filter(|c| c.role == "candidate") {
        groups.entry((c.generator.clone(), c.dataset.clone(), c.cycle)).or_default().push(c);
        totals.entry((c.generator.clone(), c.dataset.clone())).or_default().push(c);
    }
    let best = all
        .iter()
        .filter(|c| c.role == "candidate")
        .filter_map(|c| c.accuracy.map(|a| (a, c)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.id.cmp(&a.1.id)))
        .map(|(a, c)| Best { id: c.id, dataset: c.dataset.clone(), cycle: c.cycle, accuracy: a, params: c.params });
    Report {
        baselines,
        rows: groups.iter().map(|((g, d, cy), cs)| row(g, d, *cy, cs)).collect(),
        totals: totals.iter().map(|((g, d), cs)| row(g, d, 0, cs)).collect(),
        best,
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn breakdown(v: &BTreeMap<String, usize>) -> String {
    v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// The report as text tables.
pub fn text(r: &Report) -> String {
    let mut o = String::from("Baselines\n");
    o += &format!("{:<14} {:<18} {:<10} {:>8} {:>10}\n", "dataset", "baseline", "verdict", "accuracy", "params");
    for b in &r.baselines {
        o += &format!(
            "{:<14} {:<18} {:<10} {:>8} {:>10}\n",
            b.dataset,
            b.baseline,
            b.verdict,
            opt(b.accuracy, 4),
            b.params.map_or("-".to_string(), |p| p.to_string())
        );
    }
    let table = |o: &mut String, rows: &[Row], cycles: bool| {
        *o += &format!(
            "{:<9} {:<14} {:>5} {:>5} {:>7} {:>7} {:>8} {:>8} {:>7} {:>7}  {}\n",
            "generator",
            "dataset",
            if cycles { "cycle" } else { "" },
            "n",
            "valid",
            "1st try",
            "mean acc",
            "best acc",
            "lines",
            "novelty",
            "verdicts"
        );
        for x in rows {
            *o += &format!(
                "{:<9} {:<14} {:>5} {:>5} {:>6.1}% {:>6.1}% {:>8} {:>8} {:>7} {:>7}  {}\n",
                x.generator,
                x.dataset,
                if cycles { x.cycle.to_string() } else { "all".into() },
                x.candidates,
                100.0 * x.valid_rate,
                100.0 * x.first_try_valid_rate,
                opt(x.mean_accuracy, 4),
                opt(x.best_accuracy, 4),
                opt(x.mean_reply_lines, 1),
                opt(x.mean_novelty, 3),
                breakdown(&x.verdicts)
            );
        }
    };
    o += "\nPer cycle\n";
    table(&mut o, &r.rows, true);
    o += "\nAll cycles\n";
    table(&mut o, &r.totals, false);
    if let Some(b) = &r.best {
        o += &format!(
            "\nBest: candidate {} on {} (cycle {}), accuracy {:.4}, {} parameters\n",
            b.id,
            b.dataset,
            b.cycle,
            b.accuracy,
            b.params.map_or("-".to_string(), |p| p.to_string())
        );
    }
    o
}

/// The per-cycle rows as CSV (one column per verdict seen).
pub fn csv(r: &Report) -> String {
    let mut names: Vec<&String> = r.rows.iter().flat_map(|x| x.verdicts.keys()).collect();
    names.sort();
    names.dedup();
    let mut o = String::from(
        "generator,dataset,cycle,candidates,valid,valid_rate,first_try_valid_rate,trained,mean_accuracy,best_accuracy,mean_reply_lines,mean_reply_tokens,mean_novelty",
    );
    for n in &names {
        o += &format!(",verdict_{n}");
    }
    o.push('\n');
    let f = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.6}"));
    for x in &r.rows {
        o += &format!(
            "{},{},{},{},{},{:.6},{:.6},{},{},{},{},{},{}",
            x.generator,
            x.dataset,
            x.cycle,
            x.candidates,
            x.valid,
            x.valid_rate,
            x.first_try_valid_rate,
            x.trained,
            f(x.mean_accuracy),
            f(x.best_accuracy),
            f(x.mean_reply_lines),
            f(x.mean_reply_tokens),
            f(x.mean_novelty)
        );
        for n in &names {
            o += &format!(",{}", x.verdicts.get(*n).copied().unwrap_or(0));
        }
        o.push('\n');
    }
    o
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn line_plot(path: &Path, title: &str, x_label: &str, y_label: &str, series: &Series) -> Result<(), String> {
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0 > x1 {
        (0.0, 1.0)
    } else if x0 == x1 {
        (x0 - 1.0, x1 + 1.0)
    } else {
        (x0, x1)
    };
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, 0.0..1.0)
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|x| e(&x))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(|x| e(&x))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

/// Writes the run's plots into `dir` as SVG; returns their paths.
pub fn plots(r: &Report, all: &[Candidate], dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let key = |x: &Row| format!("{} {}", x.generator, x.dataset);
    let mut valid: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut acc: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for x in &r.rows {
        valid.entry(key(x)).or_default().push((x.cycle as f64, x.valid_rate));
        if let Some(m) = x.mean_accuracy {
            acc.entry(format!("{} mean", key(x))).or_default().push((x.cycle as f64, m));
        }
        if let Some(b) = x.best_accuracy {
            acc.entry(format!("{} best", key(x))).or_default().push((x.cycle as f64, b));
        }
    }
    let p = dir.join("valid_rate.svg");
    line_plot(&p, "Valid rate per cycle", "cycle", "valid rate", &valid.into_iter().collect())?;
    written.push(p);
    let p = dir.join("accuracy.svg");
    line_plot(&p, "First-epoch accuracy per cycle", "cycle", "test accuracy", &acc.into_iter().collect())?;
    written.push(p);
    // Best so far, over candidates in the order they were made.
    let mut best: BTreeMap<String, (f64, Vec<(f64, f64)>)> = BTreeMap::new();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for c in all.iter().filter(|c| c.role == "candidate") {
        let k = format!("{} {}", c.generator, c.dataset);
        let n = count.entry(k.clone()).or_default();
        *n += 1;
        let e = best.entry(k).or_insert((0.0, Vec::new()));
        if let Some(a) = c.accuracy {
            e.0 = e.0.max(a);
        }
        let v = e.0;
        e.1.push((*n as f64, v));
    }
    let p = dir.join("best_so_far.svg");
    line_plot(
        &p,
        "Best accuracy so far",
        "candidate",
        "test accuracy",
        &best.into_iter().map(|(k, v)| (k, v.1)).collect(),
    )?;
    written.push(p);
    // Distribution: a histogram of first-epoch accuracies per dataset (20 bins over [0, 1]).
    let mut hist: BTreeMap<String, [usize; 20]> = BTreeMap::new();
    for c in all.iter().filter(|c| c.role == "candidate") {
        if let Some(a) = c.accuracy {
            hist.entry(c.dataset.clone()).or_insert([0; 20])[((a * 20.0) as usize).min(19)] += 1;
        }
    }
    let series: Series = hist
        .into_iter()
        .map(|(d, h)| {
            let total = h.iter().sum::<usize>().max(1) as f64;
            (d, h.iter().enumerate().map(|(i, n)| ((i as f64 + 0.5) / 20.0, *n as f64 / total)).collect())
        })
        .collect();
    let p = dir.join("accuracy_distribution.svg");
    line_plot(
        &p,
        "Accuracy distribution per dataset (share of trained candidates per 0.05 bin)",
        "test accuracy",
        "share",
        &series,
    )?;
    written.push(p);
    Ok(written)
}

/// Ranks with ties averaged (1-based).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|a, b| xs[*a].total_cmp(&xs[*b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        for k in i..=j {
            r[idx[k]] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: Pearson's correlation of the ranks (ties averaged). `None` under 2 points or
/// when a side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Kendall's τ-b (ties on either side accounted for).
pub fn kendall(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let (da, db) = (a[i] - a[j], b[i] - b[j]);
            if da == 0.0 && db == 0.0 {
                continue;
            } else if da == 0.0 {
                ties_a += 1;
            } else if db == 0.0 {
                ties_b += 1;
            } else if (da > 0.0) == (db > 0.0) {
                concordant += 1;
            } else {
                discordant += 1;
            }
        }
    }
    let n0 = (concordant + discordant + ties_a) as f64;
    let n1 = (concordant + discordant + ties_b) as f64;
    (n0 > 0.0 && n1 > 0.0).then(|| (concordant - discordant) as f64 / (n0 * n1).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_correlations_match_hand_computed_values() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(spearman(&a, &a), Some(1.0));
        assert_eq!(kendall(&a, &[5.0, 4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        // One swapped pair of five: ρ = 1 − 6·2/(5·24) = 0.9, τ = (9 − 1)/10 = 0.8.
        let b = [1.0, 2.0, 3.0, 5.0, 4.0];
        assert!((spearman(&a, &b).unwrap() - 0.9).abs() < 1e-12);
        assert!((kendall(&a, &b).unwrap() - 0.8).abs() < 1e-12);
        // Ties: scipy.stats.kendalltau([1,2,2,3],[1,3,2,4]) = 0.9128709291752769.
        assert!(
            (kendall(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap() - 0.912_870_929_175_276_9).abs() < 1e-12
        );
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
    }
}
