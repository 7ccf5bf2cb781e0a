//! The overload experiment of issue 15: a simulated service of fixed
//! capacity, driven open-loop at 0.5x, 1x, 2x and 4x that capacity, behind
//! each concurrency strategy. Reports goodput (successful responses per
//! second that met the client's deadline) and the p50 / p99 latency of the
//! admitted requests, prints a table, writes
//! `target/overload/overload.{csv,json}` and draws `docs/overload.png`.
//!
//! Run: `cargo bench -p tower-rampart-benches --features paused-clock --bench overload`
//! (about 15 s after the build; `OVERLOAD_SECONDS` shortens or lengthens
//! each run, `OVERLOAD_FONT` names the TTF for the plot's text, default
//! DejaVu Sans). `OVERLOAD_WORKERS=8 OVERLOAD_SERVICE_MS=40-60` simulates
//! another service (the plot then goes to `target/overload/overload.png`,
//! leaving `docs/` alone).
//!
//! # The model
//!
//! - The service has 50 workers; a request takes a service time drawn
//!   uniformly from 15..=25 ms (mean 20 ms), so its capacity is 2500
//!   requests/s. Beyond 50 in flight, requests wait for a worker in a FIFO
//!   queue (a tokio semaphore), so latency grows with the queue, as in a
//!   thread pool or a database connection pool.
//! - The server has a timeout of 95 ms inside the concurrency strategy (the
//!   crate's stack order: concurrency limit outside the timeout), so an
//!   admitted request that waits too long is answered 504 and the limit
//!   sees a drop.
//! - Clients send open-loop: Poisson arrivals at the offered rate whatever
//!   the responses, each with a deadline of 100 ms (5x the mean
//!   uncongested latency), after which they give up (cancel).
//! - Each run lasts `SECONDS` (default 12) of simulated time; the first 2 s
//!   are warm-up (the adaptive limits start from their defaults) and are
//!   not counted.
//!
//! # Simulated time
//!
//! The whole experiment runs on tokio's paused clock (a current-thread
//! runtime with `start_paused`): time jumps to the next timer whenever
//! every task waits, so 12 s of traffic take well under a second, the
//! result does not depend on how busy the 2 shared cores are, and a run is
//! reproducible (a fixed seed for arrivals and service times). This is
//! sound because latency in the model is *simulated* (timers), not CPU
//! work: the strategies' own CPU cost is measured per call by the criterion
//! bench `concurrency.rs`, not here. The clock has millisecond resolution,
//! so latencies are whole milliseconds.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_rampart::concurrency::ConcurrencyLimitLayer;
use tower_rampart::concurrency::limit::{Aimd, Fixed, Gradient2, LimitAlgorithm, Vegas};
use tower_rampart::rejection::ResponseBody;
use tower_rampart::timeout::TimeoutLayer;

/// The simulated service and its clients.
struct Model {
    /// Workers of the simulated service.
    workers: usize,
    /// Service time range, in ms.
    service_ms: (u64, u64),
    /// Requests per second the service can complete.
    capacity: f64,
    /// The client's deadline: 5x the mean service time.
    deadline: Duration,
    /// The server's timeout, inside the concurrency strategy: 95 % of the
    /// deadline.
    server_timeout: Duration,
    /// The fixed limits (tower's and ours): an operator's guess at twice
    /// the real concurrency, as one configures without measuring.
    fixed_limit: usize,
    /// Whether this is the documented model (its plot goes to `docs/`).
    documented: bool,
}

/// The model: 50 workers x 15..=25 ms unless `OVERLOAD_WORKERS` and
/// `OVERLOAD_SERVICE_MS` (`"lo-hi"`) say otherwise.
fn model() -> &'static Model {
    static MODEL: std::sync::OnceLock<Model> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let workers: usize = std::env::var("OVERLOAD_WORKERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(50)
            .max(1);
        let service_ms = std::env::var("OVERLOAD_SERVICE_MS")
            .ok()
            .and_then(|s| {
                let (lo, hi) = s.split_once('-')?;
                Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
            })
            .filter(|&(lo, hi): &(u64, u64)| lo >= 1 && hi >= lo)
            .unwrap_or((15, 25));
        let mean_ms = (service_ms.0 + service_ms.1) as f64 / 2.0;
        let deadline = Duration::from_secs_f64(5.0 * mean_ms / 1000.0);
        Model {
            workers,
            service_ms,
            capacity: workers as f64 * 1000.0 / mean_ms,
            deadline,
            server_timeout: deadline.mul_f64(0.95),
            fixed_limit: 2 * workers,
            documented: workers == 50 && service_ms == (15, 25),
        }
    })
}

/// Not counted: the start, while adaptive limits learn.
const WARMUP_MS: u64 = 2000;
/// Offered load as multiples of `model().capacity`.
const LOADS: [f64; 4] = [0.5, 1.0, 2.0, 4.0];

type Req = Request<Duration>;
type Svc = BoxCloneService<Req, StatusCode, BoxError>;

// ---------------------------------------------------------------------------
// The simulated service

/// `model().workers` workers behind a FIFO queue; the request carries its service
/// time (drawn by the driver, so runs are reproducible).
#[derive(Clone)]
struct Sim {
    workers: Arc<Semaphore>,
}

impl Service<Req> for Sim {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let workers = self.workers.clone();
        let service_time = *req.body();
        Box::pin(async move {
            let _worker = workers.acquire_owned().await?;
            tokio::time::sleep(service_time).await;
            Ok(Response::new(()))
        })
    }
}

/// What the server's stack answers: the simulated service behind the
/// crate's own timeout layer (504 with its refusal marker, which the
/// concurrency layer reads as a drop).
type Inner = Response<ResponseBody<()>>;

/// The service with the server's timeout.
fn inner() -> impl Service<Req, Response = Inner, Error = BoxError, Future: Send> + Clone + Send {
    TimeoutLayer::new(model().server_timeout)
        .expect("timeout")
        .layer(Sim {
            workers: Arc::new(Semaphore::new(model().workers)),
        })
}

// ---------------------------------------------------------------------------
// The strategies

#[derive(Clone, Copy, Debug)]
enum Strategy {
    NoLimit,
    TowerLimit,
    TowerLimitShed,
    Fixed,
    Aimd,
    Vegas,
    Gradient2,
}

const STRATEGIES: [Strategy; 7] = [
    Strategy::NoLimit,
    Strategy::TowerLimit,
    Strategy::TowerLimitShed,
    Strategy::Fixed,
    Strategy::Aimd,
    Strategy::Vegas,
    Strategy::Gradient2,
];

impl Strategy {
    fn name(self) -> &'static str {
        static FIXED: std::sync::OnceLock<[&'static str; 3]> = std::sync::OnceLock::new();
        let [tower, shed, fixed] = *FIXED.get_or_init(|| {
            let n = model().fixed_limit;
            [
                format!("tower ConcurrencyLimit({n})"),
                format!("tower ConcurrencyLimit({n})+LoadShed"),
                format!("rampart Fixed({n})"),
            ]
            .map(|s| &*Box::leak(s.into_boxed_str()))
        });
        match self {
            Strategy::NoLimit => "no limit",
            Strategy::TowerLimit => tower,
            Strategy::TowerLimitShed => shed,
            Strategy::Fixed => fixed,
            Strategy::Aimd => "rampart Aimd",
            Strategy::Vegas => "rampart Vegas",
            Strategy::Gradient2 => "rampart Gradient2",
        }
    }

    /// Builds the stack. Every stack answers a status: 200, 503 (refused
    /// by the strategy) or 504 (the server's timeout).
    fn build(self) -> Svc {
        let inner = inner();
        match self {
            Strategy::NoLimit => boxed(inner),
            Strategy::TowerLimit => boxed(tower::limit::ConcurrencyLimit::new(
                inner,
                model().fixed_limit,
            )),
            Strategy::TowerLimitShed => boxed(tower::load_shed::LoadShed::new(
                tower::limit::ConcurrencyLimit::new(inner, model().fixed_limit),
            )),
            Strategy::Fixed => ours(Fixed::new(model().fixed_limit), inner),
            Strategy::Aimd => ours(Aimd::default(), inner),
            Strategy::Vegas => ours(Vegas::default(), inner),
            Strategy::Gradient2 => ours(Gradient2::default(), inner),
        }
    }
}

/// Maps a tower stack's answers to statuses.
fn boxed<S, B>(svc: S) -> Svc
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    BoxCloneService::new(svc.map_result(|r| match r {
        Ok(res) => Ok(res.status()),
        Err(e) if e.is::<tower::load_shed::error::Overloaded>() => {
            Ok(StatusCode::SERVICE_UNAVAILABLE)
        }
        Err(e) => Err(e),
    }))
}

/// The crate's `ConcurrencyLimitLayer` with `limit` (its defaults otherwise)
/// around `inner`.
fn ours<S>(limit: impl LimitAlgorithm, inner: S) -> Svc
where
    S: Service<Req, Response = Inner, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let layer = ConcurrencyLimitLayer::builder()
        .name("overload")
        .limit(limit)
        .build()
        .expect("layer");
    boxed(layer.layer(inner))
}

// ---------------------------------------------------------------------------
// The driver

/// splitmix64: reproducible arrivals and service times.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Poisson-distributed count with mean `lambda` (Knuth; lambda is small).
    fn poisson(&mut self, lambda: f64) -> usize {
        let l = (-lambda).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.unit();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }

    fn service_time(&mut self) -> Duration {
        let (lo, hi) = model().service_ms;
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// What a client saw.
#[derive(Clone, Copy)]
enum Seen {
    /// 200 within the deadline, after this many ms.
    Ok(u64),
    /// Refused by the strategy at once.
    Shed,
    /// Admitted but answered 504, or no answer by the deadline: the time
    /// the client waited.
    Late(u64),
}

#[derive(Clone, Debug)]
struct Row {
    strategy: &'static str,
    load: f64,
    offered_rps: f64,
    goodput_rps: f64,
    goodput_pct_capacity: f64,
    shed_pct: f64,
    late_pct: f64,
    p50_ms: u64,
    p99_ms: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn run(strategy: Strategy, load: f64, seconds: u64) -> Row {
    let svc = strategy.build();
    let mut rng = Rng(0x0ddba11 ^ (load * 1000.0) as u64);
    let per_ms = model().capacity * load / 1000.0;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity((model().capacity * load * seconds as f64 * 1.1) as usize);
    for ms in 0..seconds * 1000 {
        for _ in 0..rng.poisson(per_ms) {
            let svc = svc.clone();
            let req = Request::new(rng.service_time());
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let answer = tokio::time::timeout(model().deadline, svc.oneshot(req)).await;
                let waited = sent.elapsed().as_millis() as u64;
                let seen = match answer {
                    Ok(Ok(StatusCode::OK)) => Seen::Ok(waited),
                    Ok(Ok(StatusCode::SERVICE_UNAVAILABLE)) => Seen::Shed,
                    Ok(Ok(_)) | Err(_) => Seen::Late(waited),
                    Ok(Err(e)) => panic!("unexpected error: {e}"),
                };
                (ms, seen)
            }));
        }
        tokio::time::sleep_until(start + Duration::from_millis(ms + 1)).await;
    }
    let (mut ok, mut shed, mut late, mut admitted) = (0u64, 0u64, 0u64, Vec::new());
    for task in tasks {
        let (ms, seen) = task.await.expect("request task");
        if ms < WARMUP_MS {
            continue;
        }
        match seen {
            Seen::Ok(t) => {
                ok += 1;
                admitted.push(t);
            }
            Seen::Shed => shed += 1,
            Seen::Late(t) => {
                late += 1;
                admitted.push(t);
            }
        }
    }
    admitted.sort_unstable();
    let measured_s = (seconds * 1000 - WARMUP_MS) as f64 / 1000.0;
    let total = (ok + shed + late).max(1) as f64;
    let goodput = ok as f64 / measured_s;
    Row {
        strategy: strategy.name(),
        load,
        offered_rps: model().capacity * load,
        goodput_rps: goodput,
        goodput_pct_capacity: 100.0 * goodput / model().capacity,
        shed_pct: 100.0 * shed as f64 / total,
        late_pct: 100.0 * late as f64 / total,
        p50_ms: percentile(&admitted, 0.50),
        p99_ms: percentile(&admitted, 0.99),
    }
}

fn main() {
    let seconds: u64 = std::env::var("OVERLOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
        .max(3);
    let mut rows = Vec::new();
    for strategy in STRATEGIES {
        for load in LOADS {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            rows.push(rt.block_on(run(strategy, load, seconds)));
        }
    }
    println!(
        "{} workers x {}..={} ms: capacity {:.0} req/s; deadline {} ms; \
         {} s per run, the first {} s not counted\n",
        model().workers,
        model().service_ms.0,
        model().service_ms.1,
        model().capacity,
        model().deadline.as_millis(),
        seconds,
        WARMUP_MS / 1000
    );
    print!("{}", markdown(&rows));
    println!();
    verdicts(&rows);

    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("overload");
    std::fs::create_dir_all(&out).expect("output dir");
    std::fs::write(out.join("overload.csv"), csv(&rows)).expect("csv");
    std::fs::write(out.join("overload.json"), json(&rows)).expect("json");
    println!("\nwrote {}/overload.{{csv,json}}", out.display());
    let png = if model().documented {
        workspace.join("docs/overload.png")
    } else {
        out.join("overload.png")
    };
    match plot(&rows, &png) {
        Ok(()) => println!("drew {}", png.display()),
        Err(e) => println!("no plot: {e}"),
    }
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| strategy | offered load | goodput (req/s) | goodput / capacity | shed | late | p50 admitted | p99 admitted |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {}x ({:.0}/s) | {:.0} | {:.1} % | {:.1} % | {:.1} % | {} ms | {} ms |",
            r.strategy,
            r.load,
            r.offered_rps,
            r.goodput_rps,
            r.goodput_pct_capacity,
            r.shed_pct,
            r.late_pct,
            r.p50_ms,
            r.p99_ms
        );
    }
    s
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "strategy,load,offered_rps,goodput_rps,goodput_pct_capacity,shed_pct,late_pct,p50_ms,p99_ms\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{:.1},{:.1},{:.2},{:.2},{:.2},{},{}",
            r.strategy,
            r.load,
            r.offered_rps,
            r.goodput_rps,
            r.goodput_pct_capacity,
            r.shed_pct,
            r.late_pct,
            r.p50_ms,
            r.p99_ms
        );
    }
    s
}

fn json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {{\"strategy\": \"{}\", \"load\": {}, \"offered_rps\": {:.1}, \"goodput_rps\": {:.1}, \
                 \"goodput_pct_capacity\": {:.2}, \"shed_pct\": {:.2}, \"late_pct\": {:.2}, \
                 \"p50_ms\": {}, \"p99_ms\": {}}}",
                r.strategy,
                r.load,
                r.offered_rps,
                r.goodput_rps,
                r.goodput_pct_capacity,
                r.shed_pct,
                r.late_pct,
                r.p50_ms,
                r.p99_ms
            )
        })
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}

/// The targets, checked on this run.
fn verdicts(rows: &[Row]) {
    let at = |strategy: Strategy, load: f64| {
        rows.iter()
            .find(|r| r.strategy == strategy.name() && r.load == load)
            .expect("row")
    };
    let uncongested_p99 = at(Strategy::NoLimit, 0.5).p99_ms;
    let adaptive = [Strategy::Aimd, Strategy::Vegas, Strategy::Gradient2];
    let best = adaptive
        .iter()
        .map(|&s| at(s, 4.0))
        .max_by(|a, b| a.goodput_rps.total_cmp(&b.goodput_rps))
        .expect("rows");
    let meets = |r: &Row| r.goodput_pct_capacity >= 90.0 && r.p99_ms <= 2 * uncongested_p99;
    println!(
        "uncongested p99 (no limit, 0.5x): {uncongested_p99} ms; target at 4x: goodput >= 90 % of capacity, p99 <= {} ms",
        2 * uncongested_p99
    );
    for &s in &adaptive {
        let r = at(s, 4.0);
        println!(
            "  {:<20} at 4x: {:5.1} % of capacity, p99 {:3} ms: {}",
            r.strategy,
            r.goodput_pct_capacity,
            r.p99_ms,
            if meets(r) {
                "meets the target"
            } else {
                "misses the target"
            }
        );
    }
    println!(
        "best adaptive at 4x: {} ({})",
        best.strategy,
        if meets(best) {
            "target met"
        } else {
            "target NOT met"
        }
    );
    let none = at(Strategy::NoLimit, 4.0);
    println!(
        "no limit at 4x: {:.1} % of capacity ({})",
        none.goodput_pct_capacity,
        if none.goodput_pct_capacity < 10.0 {
            "collapsed"
        } else {
            "did not collapse"
        }
    );
}

/// Goodput and p99 against offered load, one line per strategy, two panels.
fn plot(rows: &[Row], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    use plotters::style::FontStyle;

    let font = std::env::var_os("OVERLOAD_FONT")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let bytes = std::fs::read(&font)
        .map_err(|e| format!("{}: {e} (set OVERLOAD_FONT to a .ttf file)", font.display()))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| format!("{}: not a TrueType font", font.display()))?;

    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(230, 159, 0),
        RGBColor(86, 180, 233),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(213, 94, 0),
        RGBColor(0, 114, 178),
    ];
    let uncongested_p99 = rows
        .iter()
        .find(|r| r.strategy == Strategy::NoLimit.name() && r.load == 0.5)
        .map_or(0, |r| r.p99_ms) as f64;
    type Pick = fn(&Row) -> f64;
    type Panel<'a, 'b> = (
        &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
        &'static str,
        &'static str,
        f64,
        Pick,
        (f64, String),
        bool,
    );
    let panels: [Panel<'_, '_>; 2] = [
        (
            &left,
            "Goodput (200 within the client's deadline)",
            "requests/s",
            model().capacity * 1.6,
            |r: &Row| r.goodput_rps,
            (model().capacity, "capacity".to_owned()),
            true,
        ),
        (
            &right,
            "p99 latency of admitted requests",
            "ms",
            model().deadline.as_secs_f64() * 1000.0 * 1.1,
            |r: &Row| r.p99_ms as f64,
            (
                2.0 * uncongested_p99,
                "target: 2x the uncongested p99".to_owned(),
            ),
            false,
        ),
    ];
    for (area, title, y_desc, y_max, pick, (reference, ref_label), legend) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..4.3f64, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("offered load (x capacity, open loop)")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x}x"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        chart.draw_series(LineSeries::new(
            [(0.0, reference), (4.3, reference)],
            BLACK.mix(0.35).stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            ref_label,
            (2.6, reference + y_max * 0.015),
            ("sans-serif", 13).into_font().color(&BLACK.mix(0.6)),
        )))?;
        for (i, strategy) in STRATEGIES.iter().enumerate() {
            let color = colors[i % colors.len()];
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.strategy == strategy.name())
                .map(|r| (r.load, pick(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(strategy.name())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        if legend {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
