//! Reports of a run: the paper's tables (per generator × dataset × cycle), their JSON and CSV, SVG and PNG plots, and rank correlations for `reeval`.
//! It only reads the run store (reeval also records its retraining there); numbers are computed from stored candidates, never kept elsewhere.

use super::store::{Candidate, Role, Status};
use nasc_delta::Verdict;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
    /// Every final verdict (front half, or training for the valid ones) and its count, by
    /// name (so in alphabetical order); candidates still claimed count as `unfinished`.
    pub verdicts: BTreeMap<String, usize>,
    /// Candidates that trained to the end (training verdict `ok`).
    pub trained: usize,
    pub mean_accuracy: Option<f64>,
    pub best_accuracy: Option<f64>,
    pub mean_reply_lines: Option<f64>,
    pub mean_reply_tokens: Option<f64>,
    /// 1 − similarity to the nearest archived network, over the candidates that checked.
    pub mean_novelty: Option<f64>,
    /// Each tolerance the applier used and on how many candidates (a reply that applied
    /// strictly counts under none).
    pub tolerances: BTreeMap<String, usize>,
    /// Candidates finished per hour of the span from the previous cycle's last finish (the
    /// baselines' for cycle 1 and for all cycles together) to this one's; fine-tuning between
    /// cycles counts in it.
    pub candidates_per_hour: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BaselineRow {
    pub dataset: String,
    pub baseline: String,
    pub verdict: Verdict,
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

/// The key of the verdict counts of candidates judged `ok` and not yet trained.
const UNFINISHED: &str = "unfinished";

fn row(generator: &str, dataset: &str, cycle: i64, cs: &[&Candidate], since: Option<f64>) -> Row {
    let valid = cs.iter().filter(|c| c.front_verdict == Verdict::Ok).count();
    let mut verdicts = BTreeMap::new();
    for c in cs {
        let key = if c.status == Status::Claimed { UNFINISHED } else { c.verdict.as_str() };
        *verdicts.entry(key.to_string()).or_insert(0) += 1;
    }
    let accs: Vec<f64> = cs.iter().filter_map(|c| c.accuracy).collect();
    let mut tolerances = BTreeMap::new();
    for c in cs {
        let mut kinds = c.tolerances.clone();
        kinds.sort();
        kinds.dedup();
        for k in kinds {
            *tolerances.entry(k).or_insert(0) += 1;
        }
    }
    let last = cs.iter().filter_map(|c| c.finished_at).reduce(f64::max);
    let candidates_per_hour = match (since, last) {
        (Some(a), Some(b)) if b > a => Some(cs.len() as f64 * 3600.0 / (b - a)),
        _ => None,
    };
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
            cs.iter().filter(|c| c.attempt_verdicts.first() == Some(&Verdict::Ok)).count() as f64 / cs.len() as f64
        },
        verdicts,
        trained: accs.len(),
        mean_accuracy: mean(accs.iter().copied()),
        best_accuracy: accs.iter().copied().reduce(f64::max),
        mean_reply_lines: mean(cs.iter().filter_map(|c| c.reply_lines).map(|x| x as f64)),
        mean_reply_tokens: mean(cs.iter().filter_map(|c| c.reply_tokens).map(|x| x as f64)),
        mean_novelty: mean(cs.iter().filter(|c| c.hash.is_some()).map(|c| 1.0 - c.similarity.unwrap_or(0.0))),
        tolerances,
        candidates_per_hour,
    }
}

/// The report of a run's stored candidates.
pub fn build(all: &[Candidate]) -> Report {
    let baselines = all
        .iter()
        .filter(|c| c.role == Role::Baseline)
        .map(|c| BaselineRow {
            dataset: c.dataset.clone(),
            baseline: c.baseline.clone(),
            verdict: c.verdict,
            accuracy: c.accuracy,
            params: c.params,
        })
        .collect();
    let mut groups: BTreeMap<(String, String, i64), Vec<&Candidate>> = BTreeMap::new();
    let mut totals: BTreeMap<(String, String), Vec<&Candidate>> = BTreeMap::new();
    for c in all.iter().filter(|c| c.role == Role::Candidate) {
        groups.entry((c.generator.clone(), c.dataset.clone(), c.cycle)).or_default().push(c);
        totals.entry((c.generator.clone(), c.dataset.clone())).or_default().push(c);
    }
    let best = all
        .iter()
        .filter(|c| c.role == Role::Candidate)
        .filter_map(|c| c.accuracy.map(|a| (a, c)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.id.cmp(&a.1.id)))
        .map(|(a, c)| Best { id: c.id, dataset: c.dataset.clone(), cycle: c.cycle, accuracy: a, params: c.params });
    // When each cycle ended (its last finish), the baselines' being cycle 0's.
    let mut ends: BTreeMap<i64, f64> = BTreeMap::new();
    for c in all {
        if let Some(t) = c.finished_at {
            let e = ends.entry(c.cycle).or_insert(t);
            *e = e.max(t);
        }
    }
    let before = |cycle: i64| ends.range(..cycle).next_back().map(|(_, t)| *t);
    Report {
        baselines,
        rows: groups.iter().map(|((g, d, cy), cs)| row(g, d, *cy, cs, before(*cy))).collect(),
        totals: totals.iter().map(|((g, d), cs)| row(g, d, 0, cs, before(1))).collect(),
        best,
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn breakdown(v: &BTreeMap<String, usize>) -> String {
    v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// The tolerances column: empty when none was used.
fn tolerated(t: &BTreeMap<String, usize>) -> String {
    if t.is_empty() {
        String::new()
    } else {
        format!("; tolerances: {}", breakdown(t))
    }
}

/// What a table's size column shows: reply lines, or reply tokens.
#[derive(Clone, Copy)]
enum Size {
    Lines,
    Tokens,
}

/// The header of a table of rows, with `cycle` over the cycle column.
fn header(cycle: &str, size: Size) -> String {
    let size = match size {
        Size::Lines => "lines",
        Size::Tokens => "tokens",
    };
    format!(
        "{:<9} {:<14} {:>5} {:>5} {:>7} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7}  {}\n",
        "generator",
        "dataset",
        cycle,
        "n",
        "valid",
        "1st try",
        "mean acc",
        "best acc",
        size,
        "novelty",
        "cand/h",
        "verdicts"
    )
}

/// One row of a table, `cycle` in the cycle column.
fn line(x: &Row, cycle: &str, size: Size) -> String {
    format!(
        "{:<9} {:<14} {:>5} {:>5} {:>6.1}% {:>6.1}% {:>8} {:>8} {:>7} {:>7} {:>7}  {}{}\n",
        x.generator,
        x.dataset,
        cycle,
        x.candidates,
        100.0 * x.valid_rate,
        100.0 * x.first_try_valid_rate,
        opt(x.mean_accuracy, 4),
        opt(x.best_accuracy, 4),
        match size {
            Size::Lines => opt(x.mean_reply_lines, 1),
            Size::Tokens => opt(x.mean_reply_tokens, 0),
        },
        opt(x.mean_novelty, 3),
        opt(x.candidates_per_hour, 0),
        breakdown(&x.verdicts),
        tolerated(&x.tolerances)
    )
}

/// Several runs' reports side by side (the arms of an experiment, one run each): per run, its
/// rows per cycle and over all cycles, under the run's name.
pub fn compare(runs: &[(String, Report)]) -> String {
    let width = runs.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(3).max(3);
    let mut o = format!("{:<width$} {}", "run", header("cycle", Size::Tokens));
    for (name, r) in runs {
        let rows = r.rows.iter().map(|x| (x, x.cycle.to_string())).chain(r.totals.iter().map(|x| (x, "all".into())));
        for (x, cycle) in rows {
            o += &format!("{name:<width$} {}", line(x, &cycle, Size::Tokens));
        }
    }
    o
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
        *o += &header(if cycles { "cycle" } else { "" }, Size::Lines);
        for x in rows {
            *o += &line(x, &if cycles { x.cycle.to_string() } else { "all".into() }, Size::Lines);
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

/// The per-cycle rows as CSV (one column per verdict and per tolerance seen).
pub fn csv(r: &Report) -> String {
    csv_of(&[(None, r)])
}

/// Several runs' per-cycle rows as one CSV, each row led by its run's name.
pub fn csv_runs(runs: &[(String, Report)]) -> String {
    csv_of(&runs.iter().map(|(name, r)| (Some(name.as_str()), r)).collect::<Vec<_>>())
}

fn csv_of(runs: &[(Option<&str>, &Report)]) -> String {
    let rows = || runs.iter().flat_map(|(name, r)| r.rows.iter().map(move |x| (*name, x)));
    let names = |key: fn(&Row) -> Vec<&String>| {
        let mut v: Vec<String> = rows().flat_map(|(_, x)| key(x)).cloned().collect();
        v.sort();
        v.dedup();
        v
    };
    let verdicts = names(|x| x.verdicts.keys().collect());
    let tolerances = names(|x| x.tolerances.keys().collect());
    let named = runs.iter().any(|(name, _)| name.is_some());
    let mut o = String::from(if named { "run," } else { "" });
    o +=
        "generator,dataset,cycle,candidates,valid,valid_rate,first_try_valid_rate,trained,mean_accuracy,best_accuracy,\
          mean_reply_lines,mean_reply_tokens,mean_novelty,candidates_per_hour";
    for n in &verdicts {
        o += &format!(",verdict_{n}");
    }
    for n in &tolerances {
        o += &format!(",tolerance_{n}");
    }
    o.push('\n');
    let f = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.6}"));
    for (name, x) in rows() {
        if named {
            o += &format!("{},", name.unwrap_or_default());
        }
        o += &format!(
            "{},{},{},{},{},{:.6},{:.6},{},{},{},{},{},{},{}",
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
            f(x.mean_novelty),
            f(x.candidates_per_hour)
        );
        for n in &verdicts {
            o += &format!(",{}", x.verdicts.get(n).copied().unwrap_or(0));
        }
        for n in &tolerances {
            o += &format!(",{}", x.tolerances.get(n).copied().unwrap_or(0));
        }
        o.push('\n');
    }
    o
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

/// The size of every plot, in SVG user units and in PNG pixels alike.
pub const PLOT_SIZE: (u32, u32) = (800, 500);

/// One plot: its file name without extension, its labels, and its lines.
struct LinePlot {
    name: &'static str,
    title: &'static str,
    x_label: &'static str,
    y_label: &'static str,
    series: Series,
}

/// Draws `plot` on `root`, whatever the backend: the SVG and the PNG of a plot come from this one function.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    plot: &LinePlot,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let xs = plot.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0 > x1 {
        (0.0, 1.0)
    } else if x0 == x1 {
        (x0 - 1.0, x1 + 1.0)
    } else {
        (x0, x1)
    };
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(plot.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, 0.0..1.0)?;
    chart.configure_mesh().x_desc(plot.x_label).y_desc(plot.y_label).draw()?;
    for (i, (_, points)) in plot.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?;
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    // The legend, drawn here rather than by plotters' series labels, which measure text with the
    // registered font and so would fail for the SVGs on a machine without one.
    let (left, top) = chart.plotting_area().get_base_pixel();
    let (width, _) = chart.plotting_area().dim_in_pixel();
    let chars = plot.series.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0) as i32;
    let (w, line) = (34 + 8 * chars, 18);
    let (x, y) = (left + width as i32 - w - 8, top + 8);
    let n = plot.series.len() as i32;
    if n > 0 {
        root.draw(&Rectangle::new([(x, y), (x + w, y + 6 + line * n)], WHITE.mix(0.8).filled()))?;
        root.draw(&Rectangle::new([(x, y), (x + w, y + 6 + line * n)], BLACK.stroke_width(1)))?;
    }
    for (i, (name, _)) in plot.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let row = y + 3 + line * i as i32 + line / 2;
        root.draw(&PathElement::new(vec![(x + 6, row), (x + 24, row)], color.stroke_width(2)))?;
        let style = TextStyle::from(("sans-serif", 14)).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(name.clone(), (x + 30, row), style))?;
    }
    root.present()
}

/// An SVG backend that measures text without a font. Viewers draw SVG text with their own fonts, so the
/// layout must not depend on the font file this machine has, or on there being one at all: with the
/// `ab_glyph` feature plotters would measure with the font registered for the PNGs and fail without one.
struct FontFreeSvg<'a>(SVGBackend<'a>);

impl DrawingBackend for FontFreeSvg<'_> {
    type ErrorType = <SVGBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }
    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(point, color)
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(from, to, style)
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_path(path, style)
    }
    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.fill_polygon(vert, style)
    }
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_text(text, style, pos)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }
    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        // The SVG's font-size is plotters' size / 1.24; a sans-serif glyph advances about 0.55 em.
        let em = style.size() / 1.24;
        let (w, h) = ((0.55 * em * text.chars().count() as f64).round(), em.round());
        let (w, h) = style.transform().transform(w as i32, h as i32);
        Ok((w.unsigned_abs(), h.unsigned_abs()))
    }
}

/// Where a TrueType font for the PNGs' text is looked for when `NASC_FONT` is not set: DejaVu Sans where
/// distributions put it (Debian and Ubuntu, Fedora, Arch, FreeBSD), then common sans-serif fonts of macOS
/// and Windows.
const FONT_PLACES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/local/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

const FONT_FIX: &str =
    "install a TrueType font (Debian and Ubuntu: apt-get install fonts-dejavu-core) or set NASC_FONT=/path/to/font.ttf";

const NASC_FONT_FIX: &str =
    "point it to a TrueType font file (.ttf), or unset it to use a system font such as DejaVu Sans \
     (Debian and Ubuntu: apt-get install fonts-dejavu-core)";

/// Reads the font for the PNGs' text: the file `nasc_font` names when given (no fallback: a font asked for
/// by name that cannot be used is reported), else the first of `places` that reads and parses. The error
/// says why none can be used and what to do.
fn find_font(nasc_font: Option<&Path>, places: &[&Path]) -> Result<(PathBuf, Vec<u8>), String> {
    let parses = |bytes: &[u8]| ab_glyph::FontRef::try_from_slice(bytes).is_ok();
    if let Some(path) = nasc_font {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("NASC_FONT={} cannot be read ({e}); {NASC_FONT_FIX}", path.display()))?;
        if !parses(&bytes) {
            return Err(format!("NASC_FONT={} is not a TrueType or OpenType font; {NASC_FONT_FIX}", path.display()));
        }
        return Ok((path.to_path_buf(), bytes));
    }
    places.iter().find_map(|p| std::fs::read(p).ok().filter(|b| parses(b)).map(|b| (p.to_path_buf(), b))).ok_or_else(
        || {
            let looked = places.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            format!("no TrueType font found for the plots' text (looked for {looked}); {FONT_FIX}")
        },
    )
}

/// Registers the PNGs' font with plotters, once per process (plotters keeps fonts in a global table and
/// needs the bytes for the life of the process, hence the leak of one file). The error is `find_font`'s.
fn bitmap_font() -> Result<&'static Path, String> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let nasc_font = std::env::var_os("NASC_FONT").filter(|v| !v.is_empty()).map(PathBuf::from);
        let places: Vec<&Path> = FONT_PLACES.iter().map(Path::new).collect();
        let (path, bytes) = find_font(nasc_font.as_deref(), &places)?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{} parsed but plotters refused it as a font; {FONT_FIX}", path.display()))?;
        Ok(path)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// Writes an 8-bit RGB bitmap of `PLOT_SIZE` as a PNG file.
fn write_png(path: &Path, rgb: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, PLOT_SIZE.0, PLOT_SIZE.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    Ok(writer.finish()?)
}

/// What `plots` wrote.
#[derive(Debug)]
pub struct Plots {
    /// Every file written: each plot's SVG, then its PNG when there is a font for it.
    pub written: Vec<PathBuf>,
    /// Why no PNG was written (no usable font for bitmap text) and how to fix it; the SVGs are written anyway.
    pub png_skipped: Option<String>,
}

/// Writes the run's plots into `dir`, each as SVG and, when a font for the text is found, as PNG.
pub fn plots(r: &Report, all: &[Candidate], dir: &Path) -> Result<Plots, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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
    // Best so far, over candidates in the order they were made.
    let mut best: BTreeMap<String, (f64, Vec<(f64, f64)>)> = BTreeMap::new();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for c in all.iter().filter(|c| c.role == Role::Candidate) {
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
    // Distribution: a histogram of first-epoch accuracies per dataset (20 bins over [0, 1]).
    let mut hist: BTreeMap<String, [usize; 20]> = BTreeMap::new();
    for c in all.iter().filter(|c| c.role == Role::Candidate) {
        if let Some(a) = c.accuracy {
            hist.entry(c.dataset.clone()).or_insert([0; 20])[((a * 20.0) as usize).min(19)] += 1;
        }
    }
    let distribution: Series = hist
        .into_iter()
        .map(|(d, h)| {
            let total = h.iter().sum::<usize>().max(1) as f64;
            (d, h.iter().enumerate().map(|(i, n)| ((i as f64 + 0.5) / 20.0, *n as f64 / total)).collect())
        })
        .collect();
    let all_plots = [
        LinePlot {
            name: "valid_rate",
            title: "Valid rate per cycle",
            x_label: "cycle",
            y_label: "valid rate",
            series: valid.into_iter().collect(),
        },
        LinePlot {
            name: "accuracy",
            title: "First-epoch accuracy per cycle",
            x_label: "cycle",
            y_label: "test accuracy",
            series: acc.into_iter().collect(),
        },
        LinePlot {
            name: "best_so_far",
            title: "Best accuracy so far",
            x_label: "candidate",
            y_label: "test accuracy",
            series: best.into_iter().map(|(k, v)| (k, v.1)).collect(),
        },
        LinePlot {
            name: "accuracy_distribution",
            title: "Accuracy distribution per dataset (share of trained candidates per 0.05 bin)",
            x_label: "test accuracy",
            y_label: "share",
            series: distribution,
        },
    ];
    let font = bitmap_font();
    let mut written = Vec::new();
    for plot in &all_plots {
        let svg = dir.join(format!("{}.svg", plot.name));
        draw(FontFreeSvg(SVGBackend::new(&svg, PLOT_SIZE)).into_drawing_area(), plot)
            .map_err(|e| format!("cannot draw {}: {e}", svg.display()))?;
        written.push(svg);
        if font.is_ok() {
            let png = dir.join(format!("{}.png", plot.name));
            let mut rgb = vec![0u8; 3 * PLOT_SIZE.0 as usize * PLOT_SIZE.1 as usize];
            draw(BitMapBackend::with_buffer(&mut rgb, PLOT_SIZE).into_drawing_area(), plot)
                .map_err(|e| format!("cannot draw {}: {e}", png.display()))?;
            write_png(&png, &rgb).map_err(|e| format!("cannot write {}: {e}", png.display()))?;
            written.push(png);
        }
    }
    Ok(Plots {
        written,
        png_skipped: font.err().map(|why| format!("PNG plots skipped: {why}. The SVG plots were written.")),
    })
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

    #[test]
    fn a_nasc_font_that_cannot_be_used_is_reported_with_the_fix_and_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.ttf");
        let not_a_font = dir.path().join("notes.ttf");
        std::fs::write(&not_a_font, "plain text").unwrap();
        let system: Vec<&Path> = FONT_PLACES.iter().map(Path::new).collect();
        // A font named by NASC_FONT is the only one tried, even when a system font would do.
        let e = find_font(Some(&missing), &system).unwrap_err();
        assert!(e.starts_with(&format!("NASC_FONT={} cannot be read (", missing.display())), "{e}");
        assert!(e.contains("fonts-dejavu-core"), "{e}");
        let e = find_font(Some(&not_a_font), &system).unwrap_err();
        assert_eq!(
            e,
            format!("NASC_FONT={} is not a TrueType or OpenType font; {NASC_FONT_FIX}", not_a_font.display())
        );
    }

    #[test]
    fn the_font_search_skips_missing_and_invalid_files_and_names_them_when_none_works() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.ttf");
        let not_a_font = dir.path().join("notes.ttf");
        std::fs::write(&not_a_font, "plain text").unwrap();
        let e = find_font(None, &[&missing, &not_a_font]).unwrap_err();
        assert_eq!(
            e,
            format!(
                "no TrueType font found for the plots' text (looked for {}, {}); {FONT_FIX}",
                missing.display(),
                not_a_font.display()
            )
        );
        // With the system's places after them, the first system font is taken (CI installs DejaVu Sans).
        let mut places: Vec<&Path> = vec![&missing, &not_a_font];
        places.extend(FONT_PLACES.iter().map(Path::new));
        let (path, bytes) = find_font(None, &places).expect("a system font: apt-get install fonts-dejavu-core");
        assert!(FONT_PLACES.iter().any(|p| Path::new(p) == path) && !bytes.is_empty(), "{}", path.display());
    }
}
