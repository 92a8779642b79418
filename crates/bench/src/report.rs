//! The summary table, the targets (PASS/FAIL) and the raw figures as JSON.

use serde_json::{json, Value};

use crate::appliances::AppliancesFig;
use crate::catchup::CatchUpFig;
use crate::consume::ConsumeFig;
use crate::footprint::FootprintFig;
use crate::latency::LatencyFig;
use crate::saas::{SaasFig, Sink};
use crate::sinks::{Kind, SinkFig};
use crate::storm::StormFig;
use crate::util::{fixed, spread, thousands, triple};
use crate::Settings;

/// Targets.
const CONSUME_RATIO_MIN: f64 = 0.95;
const CPU_RATIO_MAX: f64 = 0.25;
const STORM_SECS_AT_64: f64 = 3.0;
const STORM_FLOOR_RATIO_MAX: f64 = 1.25;
const P99_MS_MAX: f64 = 5.0;
const IDLE_RSS_MB_MAX: f64 = 15.0;
/// The service path (`scmb run`, one appliance, JSON-lines sink) against the no-op limit.
const SERVICE_RATIO_MIN: f64 = 0.95;
const SERVICE_CPU_MAX: f64 = 1.3;
const SERVICE_RSS_MAX_KB: f64 = 15.0 * 1024.0;
/// A first start's catch-up streams: its peak RSS, whatever the appliance holds.
const CATCHUP_RSS_MAX_KB: f64 = 30.0 * 1024.0;
/// Peak RSS of one `scmb run` with many appliances, each receiving a storm.
const FLEET_RSS_MAX_KB: [(usize, f64); 2] = [(20, 60.0 * 1024.0), (100, 150.0 * 1024.0)];

pub struct Target {
    pub area: &'static str,
    pub pass: bool,
    pub text: String,
}

pub struct Report {
    settings: Settings,
    pub consume: Vec<ConsumeFig>,
    pub catchup: Vec<CatchUpFig>,
    pub appliances: Vec<AppliancesFig>,
    pub storm: Vec<StormFig>,
    pub saas: Vec<SaasFig>,
    pub sinks: Vec<SinkFig>,
    pub latency: Vec<LatencyFig>,
    pub footprint: Vec<FootprintFig>,
    pub targets: Vec<Target>,
    pub skipped: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    spread(v).map_or(f64::NAN, |s| s.median)
}

impl Report {
    pub fn new(settings: &Settings) -> Report {
        Report {
            settings: settings.clone(),
            consume: Vec::new(),
            catchup: Vec::new(),
            appliances: Vec::new(),
            storm: Vec::new(),
            saas: Vec::new(),
            sinks: Vec::new(),
            latency: Vec::new(),
            footprint: Vec::new(),
            targets: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn target(&mut self, area: &'static str, pass: bool, text: String) {
        self.targets.push(Target { area, pass, text });
    }

    fn consume_of(&self, client: &str, f: impl Fn(&ConsumeFig) -> f64) -> Vec<f64> {
        self.consume
            .iter()
            .filter(|c| c.client == client)
            .map(f)
            .collect()
    }

    /// Per-run ratio of two consumers' figures.
    fn consume_ratio(&self, a: &str, b: &str, f: impl Fn(&ConsumeFig) -> f64) -> Vec<f64> {
        let runs: Vec<usize> = self.consume.iter().map(|c| c.run).collect();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for run in runs {
            if seen.contains(&run) {
                continue;
            }
            seen.push(run);
            let get = |c: &str| self.consume.iter().find(|x| x.run == run && x.client == c);
            if let (Some(x), Some(y)) = (get(a), get(b)) {
                out.push(f(x) / f(y));
            }
        }
        out
    }

    /// Prints the summary table and the PASS/FAIL lines; true when a target failed.
    pub fn finish(&mut self) -> bool {
        let runs = self.settings.runs;
        println!(
            "\n== summary ({runs} run{}{}) ==",
            if runs == 1 { "" } else { "s" },
            if runs > 1 { "; min / median / max" } else { "" }
        );
        self.summary_consume();
        self.summary_catchup();
        self.summary_appliances();
        self.summary_storm();
        self.summary_saas();
        self.summary_sinks();
        self.summary_latency();
        self.summary_footprint();

        println!();
        for t in &self.targets {
            println!(
                "{} {:<9} {}",
                if t.pass { "PASS" } else { "FAIL" },
                t.area,
                t.text
            );
        }
        for s in &self.skipped {
            println!("SKIP {s}");
        }
        let failed = self.targets.iter().filter(|t| !t.pass).count();
        println!(
            "{} target(s) passed, {failed} failed",
            self.targets.len() - failed
        );
        failed > 0
    }

    fn summary_consume(&mut self) {
        if self.consume.is_empty() {
            return;
        }
        println!(
            "consume ({} messages)     {:>28} {:>24} {:>26}",
            thousands(self.settings.messages as f64),
            "msg/s",
            "CPU µs/msg",
            "peak RSS KB (VmHWM)"
        );
        for client in ["no-op", "scmb", "scmb-run", "py-amqp"] {
            let rate = self.consume_of(client, ConsumeFig::rate);
            if rate.is_empty() {
                continue;
            }
            let cpu = self.consume_of(client, ConsumeFig::cpu_us_per_msg);
            let rss = self.consume_of(client, ConsumeFig::peak_rss_kb);
            println!(
                "  {client:<24} {:>28} {:>24} {:>26}",
                triple(&rate, thousands),
                triple(&cpu, |v| fixed(v, 2)),
                triple(&rss, thousands)
            );
        }
        let thr = self.consume_ratio("scmb", "no-op", ConsumeFig::rate);
        if !thr.is_empty() {
            println!(
                "  scmb / no-op throughput  {} %",
                triple(&thr, |v| fixed(v * 100.0, 1))
            );
            let m = median(&thr);
            let s = median(&self.consume_of("scmb", ConsumeFig::rate));
            self.target(
                "consume",
                m >= CONSUME_RATIO_MIN,
                format!(
                    "scmb {} msg/s = {} % of the no-op limit (target ≥ {} %)",
                    thousands(s),
                    fixed(m * 100.0, 1),
                    CONSUME_RATIO_MIN * 100.0
                ),
            );
        }
        let run = self.consume_ratio("scmb-run", "no-op", ConsumeFig::rate);
        if !run.is_empty() {
            let cpu = self.consume_ratio("scmb-run", "no-op", ConsumeFig::cpu_us_per_msg);
            println!(
                "  scmb run / no-op         {} % throughput, {}× CPU/msg",
                triple(&run, |v| fixed(v * 100.0, 1)),
                triple(&cpu, |v| fixed(v, 2))
            );
            let (m, c) = (median(&run), median(&cpu));
            self.target(
                "consume",
                m >= SERVICE_RATIO_MIN,
                format!(
                    "scmb run (one appliance, JSON-lines sink) {} % of the no-op limit (target ≥ {} %)",
                    fixed(m * 100.0, 1),
                    SERVICE_RATIO_MIN * 100.0
                ),
            );
            self.target(
                "consume",
                c <= SERVICE_CPU_MAX,
                format!(
                    "scmb run CPU per message {}× the no-op's (target ≤ {SERVICE_CPU_MAX}×)",
                    fixed(c, 2)
                ),
            );
            // The target is the drain's; the stop's own peak (closing the store) is shown
            // beside it, not hidden.
            let rss = median(&self.consume_of("scmb-run", ConsumeFig::drained_peak_rss_kb));
            let with_stop = median(&self.consume_of("scmb-run", ConsumeFig::peak_rss_kb));
            self.target(
                "footprint",
                rss <= SERVICE_RSS_MAX_KB,
                format!(
                    "scmb run peak RSS {} KB draining {} messages (target ≤ {} KB); {} KB including its stop",
                    thousands(rss),
                    thousands(self.settings.messages as f64),
                    thousands(SERVICE_RSS_MAX_KB),
                    thousands(with_stop)
                ),
            );
        }
        let cpu = self.consume_ratio("scmb", "py-amqp", ConsumeFig::cpu_us_per_msg);
        if cpu.is_empty() {
            self.skipped
                .push("consume   scmb CPU per message vs py-amqp: py-amqp not available".into());
        } else {
            println!(
                "  scmb / py-amqp CPU/msg   {}",
                triple(&cpu, |v| fixed(v, 3))
            );
            let m = median(&cpu);
            let s = median(&self.consume_of("scmb", ConsumeFig::cpu_us_per_msg));
            let p = median(&self.consume_of("py-amqp", ConsumeFig::cpu_us_per_msg));
            self.target(
                "consume",
                m <= CPU_RATIO_MAX,
                format!(
                    "scmb {} µs CPU/msg = 1/{} of py-amqp's {} µs (target ≤ 1/4)",
                    fixed(s, 2),
                    fixed(1.0 / m, 1),
                    fixed(p, 2)
                ),
            );
        }
    }

    fn summary_catchup(&mut self) {
        let Some(first) = self.catchup.first().cloned() else {
            return;
        };
        let secs: Vec<f64> = self.catchup.iter().map(|f| f.wall_s).collect();
        let rss: Vec<f64> = self.catchup.iter().map(CatchUpFig::peak_rss_kb).collect();
        let during: Vec<f64> = self.catchup.iter().map(|f| f.bus_during as f64).collect();
        println!(
            "catch-up ({} alerts, {} critical listed, {} over the bus)   {} s   peak RSS {} KB   bus alerts written while paging {}",
            thousands(first.alerts as f64),
            thousands(first.listed as f64),
            thousands(first.bus as f64),
            triple(&secs, |v| fixed(v, 2)),
            triple(&rss, thousands),
            triple(&during, |v| fixed(v, 0))
        );
        let m = median(&rss);
        self.target(
            "catch-up",
            m <= CATCHUP_RSS_MAX_KB,
            format!(
                "scmb run first start over {} alerts: peak RSS {} KB (target ≤ {} KB)",
                thousands(first.alerts as f64),
                thousands(m),
                thousands(CATCHUP_RSS_MAX_KB)
            ),
        );
        let d = median(&during);
        self.target(
            "catch-up",
            d > 0.0,
            format!(
                "the bus flows while the catch-up pages: {} of {} bus alerts written before the last listed one (target > 0)",
                fixed(d, 0),
                first.bus
            ),
        );
    }

    fn summary_appliances(&mut self) {
        let mut counts: Vec<usize> = self.appliances.iter().map(|f| f.appliances).collect();
        counts.sort_unstable();
        counts.dedup();
        for n in counts {
            let figs: Vec<&AppliancesFig> = self
                .appliances
                .iter()
                .filter(|f| f.appliances == n)
                .collect();
            let secs: Vec<f64> = figs.iter().map(|f| f.wall_s).collect();
            let rss: Vec<f64> = figs.iter().map(|f| f.peak_rss_kb()).collect();
            let idle: Vec<f64> = figs.iter().map(|f| f.connected_rss_kb as f64).collect();
            let each = figs.first().map_or(0, |f| f.messages);
            println!(
                "appliances: {n} × {} messages   {} s   RSS connected {} KB, peak {} KB",
                thousands(each as f64),
                triple(&secs, |v| fixed(v, 2)),
                triple(&idle, thousands),
                triple(&rss, thousands)
            );
            let m = median(&rss);
            match FLEET_RSS_MAX_KB.iter().find(|(k, _)| *k == n) {
                Some((_, max)) => self.target(
                    "footprint",
                    m <= *max,
                    format!(
                        "scmb run with {n} appliances, a {}-message storm each: peak RSS {} KB (target ≤ {} KB)",
                        thousands(each as f64),
                        thousands(m),
                        thousands(*max)
                    ),
                ),
                None => self.skipped.push(format!(
                    "footprint scmb run with {n} appliances: peak RSS {} KB (no target for {n})",
                    thousands(m)
                )),
            }
        }
    }

    fn summary_storm(&mut self) {
        if self.storm.is_empty() {
            return;
        }
        println!(
            "storm ({} alerts; baseline {})   {:>22} {:>22} {:>10} {:>18}",
            thousands(self.settings.storm_count as f64),
            thousands(self.settings.baseline_count as f64),
            "seconds",
            "alerts/s",
            "floor s",
            "× floor"
        );
        let mut rows: Vec<(&'static str, usize)> = Vec::new();
        for f in &self.storm {
            if !rows.contains(&(f.mode, f.concurrency)) {
                rows.push((f.mode, f.concurrency));
            }
        }
        rows.sort_by_key(|(m, c)| (*m == "baseline", *c));
        for (mode, c) in rows {
            let figs: Vec<&StormFig> = self
                .storm
                .iter()
                .filter(|f| f.mode == mode && f.concurrency == c)
                .collect();
            let secs: Vec<f64> = figs.iter().map(|f| f.secs).collect();
            let rates: Vec<f64> = figs.iter().map(|f| f.rate()).collect();
            let ratio: Vec<f64> = figs.iter().map(|f| f.secs / f.floor_s).collect();
            let floor = figs.first().map_or(f64::NAN, |f| f.floor_s);
            let incomplete = figs.iter().filter(|f| !f.complete()).count();
            let label = if mode == "baseline" {
                "baseline (sequential)".to_string()
            } else {
                format!("ov_to_sm c={c}")
            };
            println!(
                "  {label:<32} {:>22} {:>22} {:>10} {:>18}{}",
                triple(&secs, |v| fixed(v, 2)),
                triple(&rates, |v| fixed(v, 1)),
                fixed(floor, 2),
                triple(&ratio, |v| fixed(v, 2)),
                if incomplete > 0 {
                    format!("  ({incomplete} run(s) incomplete)")
                } else {
                    String::new()
                }
            );
            if mode != "ov_to_sm" {
                continue;
            }
            let n = figs.first().map_or(0, |f| f.alerts);
            // An incomplete run counts as a failure: its time is unknown.
            let secs_m = if incomplete > 0 {
                f64::INFINITY
            } else {
                median(&secs)
            };
            let dups: u64 = figs
                .iter()
                .map(|f| f.incidents.saturating_sub(f.alerts))
                .sum();
            let note = match (incomplete, dups) {
                (0, 0) => String::new(),
                (i, 0) => format!("; {i} run(s) did not ticket every alert"),
                (0, d) => format!("; {d} duplicate incident(s)"),
                (i, d) => {
                    format!("; {i} run(s) did not ticket every alert, {d} duplicate incident(s)")
                }
            };
            if c == 64 {
                self.target(
                    "storm",
                    secs_m <= STORM_SECS_AT_64,
                    format!(
                        "ov_to_sm c=64: {} alerts in {} s (target ≤ {STORM_SECS_AT_64} s){note}",
                        thousands(n as f64),
                        fixed(secs_m, 2)
                    ),
                );
            }
            let r = secs_m / floor;
            self.target(
                "storm",
                r <= STORM_FLOOR_RATIO_MAX,
                format!(
                    "ov_to_sm c={c}: {} s = {}× the floor of {} s (target ≤ {STORM_FLOOR_RATIO_MAX}×){note}",
                    fixed(secs_m, 2),
                    fixed(r, 2),
                    fixed(floor, 2)
                ),
            );
        }
    }

    /// Figures only: the issue asks for each sink's throughput and CPU per event next to the
    /// JSON-lines sink's, not for a target.
    fn summary_sinks(&mut self) {
        if self.sinks.is_empty() {
            return;
        }
        let title = format!(
            "sinks ({} events each)",
            thousands(self.settings.sink_events as f64)
        );
        println!(
            "{title:<34} {:>22} {:>22} {:>16} {:>14}",
            "events/s", "CPU µs/event", "× JSON-lines CPU", "peak RSS MB"
        );
        let jsonl: Vec<f64> = self
            .sinks
            .iter()
            .filter(|f| f.sink == Kind::Jsonl)
            .map(SinkFig::cpu_us_per_event)
            .collect();
        let base = median(&jsonl);
        for kind in Kind::ALL {
            let figs: Vec<&SinkFig> = self.sinks.iter().filter(|f| f.sink == kind).collect();
            if figs.is_empty() {
                continue;
            }
            let rate: Vec<f64> = figs.iter().map(|f| f.rate()).collect();
            let cpu: Vec<f64> = figs.iter().map(|f| f.cpu_us_per_event()).collect();
            let ratio: Vec<f64> = cpu.iter().map(|c| c / base).collect();
            let rss: Vec<f64> = figs
                .iter()
                .map(|f| f.peak_rss_kb.map_or(f64::NAN, |k| k as f64 / 1024.0))
                .collect();
            let incomplete = figs.iter().filter(|f| !f.complete()).count();
            println!(
                "  {:<32} {:>22} {:>22} {:>16} {:>14}{}",
                kind.name(),
                triple(&rate, thousands),
                triple(&cpu, |v| fixed(v, 1)),
                triple(&ratio, |v| fixed(v, 2)),
                triple(&rss, |v| fixed(v, 1)),
                if incomplete > 0 {
                    format!("  ({incomplete} run(s): the receiver holds fewer events)")
                } else {
                    String::new()
                }
            );
        }
    }

    fn summary_saas(&mut self) {
        if self.saas.is_empty() {
            return;
        }
        let title = format!(
            "scmb run storm ({} alerts; sink {} ms, PUT {} ms)",
            thousands(self.settings.storm_count as f64),
            crate::saas::SINK_LATENCY_MS,
            crate::storm::PUT_LATENCY_MS
        );
        println!(
            "{title:<34} {:>22} {:>22} {:>10} {:>18} {:>16}",
            "seconds", "alerts/s", "floor s", "× floor", "CPU s (storm)"
        );
        for sink in [Sink::ServiceNow, Sink::PagerDuty] {
            let figs: Vec<&SaasFig> = self.saas.iter().filter(|f| f.sink == sink).collect();
            let Some(first) = figs.first() else { continue };
            let (n, lanes, floor) = (first.alerts, first.lanes, first.floor_s);
            let secs: Vec<f64> = figs.iter().map(|f| f.secs).collect();
            let rates: Vec<f64> = figs.iter().map(|f| f.rate()).collect();
            let ratio: Vec<f64> = figs.iter().map(|f| f.secs / f.floor_s).collect();
            let cpu: Vec<f64> = figs.iter().map(|f| f.cpu_s).collect();
            let incomplete = figs.iter().filter(|f| !f.complete()).count();
            let label = format!("{} {lanes} lanes", sink.title());
            println!(
                "  {label:<32} {:>22} {:>22} {:>10} {:>18} {:>16}{}",
                triple(&secs, |v| fixed(v, 2)),
                triple(&rates, |v| fixed(v, 1)),
                fixed(floor, 2),
                triple(&ratio, |v| fixed(v, 2)),
                triple(&cpu, |v| fixed(v, 2)),
                if incomplete > 0 {
                    format!("  ({incomplete} run(s) incomplete)")
                } else {
                    String::new()
                }
            );
            // An incomplete run counts as a failure: its time is unknown.
            let secs_m = if incomplete > 0 {
                f64::INFINITY
            } else {
                median(&secs)
            };
            let dups: u64 = figs
                .iter()
                .map(|f| f.incidents.saturating_sub(f.alerts))
                .sum();
            let note = match (incomplete, dups) {
                (0, 0) => String::new(),
                (i, 0) => format!("; {i} run(s) did not note every alert"),
                (0, d) => format!("; {d} duplicate incident(s)"),
                (i, d) => {
                    format!("; {i} run(s) did not note every alert, {d} duplicate incident(s)")
                }
            };
            let r = secs_m / floor;
            self.target(
                "storm",
                r <= STORM_FLOOR_RATIO_MAX && dups == 0,
                format!(
                    "scmb run → {} ({lanes} lanes): {} alerts in {} s = {}× the floor of {} s ({} per alert; target ≤ {STORM_FLOOR_RATIO_MAX}×){note}",
                    sink.title(),
                    thousands(n as f64),
                    fixed(secs_m, 2),
                    fixed(r, 2),
                    fixed(floor, 2),
                    sink.floor_text()
                ),
            );
        }
    }

    fn summary_latency(&mut self) {
        if self.latency.is_empty() {
            return;
        }
        let col = |f: fn(&LatencyFig) -> f64| -> Vec<f64> { self.latency.iter().map(f).collect() };
        let p50 = col(|f| f.p50_ms);
        let p99 = col(|f| f.p99_ms);
        let max = col(|f| f.max_ms);
        let lost: u64 = self.latency.iter().map(|f| f.sent - f.received).sum();
        println!(
            "latency ({} msg/s × {} s)   p50 {} ms   p99 {} ms   max {} ms{}",
            thousands(self.settings.latency_rate as f64),
            self.settings.latency_secs,
            triple(&p50, |v| fixed(v, 2)),
            triple(&p99, |v| fixed(v, 2)),
            triple(&max, |v| fixed(v, 2)),
            if lost > 0 {
                format!("   ({lost} message(s) never printed)")
            } else {
                String::new()
            }
        );
        let m = median(&p99);
        self.target(
            "latency",
            m <= P99_MS_MAX && lost == 0,
            format!(
                "p99 {} ms (target ≤ {P99_MS_MAX} ms){}",
                fixed(m, 2),
                if lost > 0 {
                    format!("; {lost} message(s) never printed")
                } else {
                    String::new()
                }
            ),
        );
    }

    fn summary_footprint(&mut self) {
        if self.footprint.is_empty() {
            return;
        }
        let col =
            |f: fn(&FootprintFig) -> f64| -> Vec<f64> { self.footprint.iter().map(f).collect() };
        let connect = col(|f| f.connect_ms);
        let cpu = col(|f| f.sched_cpu_at_subscribed_ms);
        let rss = col(|f| f.idle_rss_kb as f64 / 1024.0);
        let size = self.footprint.first().map_or(0, |f| f.binary_bytes);
        println!(
            "footprint   spawn → subscribed {} ms   CPU then {} ms   idle RSS {} MB   binary {} MB",
            triple(&connect, |v| fixed(v, 1)),
            triple(&cpu, |v| fixed(v, 1)),
            triple(&rss, |v| fixed(v, 1)),
            fixed(size as f64 / 1_048_576.0, 1)
        );
        let m = median(&rss);
        self.target(
            "footprint",
            m <= IDLE_RSS_MB_MAX,
            format!(
                "scmb watch idle RSS {} MB (target ≤ {IDLE_RSS_MB_MAX} MB)",
                fixed(m, 1)
            ),
        );
    }

    pub fn json(&self) -> Value {
        let s = &self.settings;
        json!({
            "settings": {
                "runs": s.runs, "quick": s.quick, "messages": s.messages,
                "stormCount": s.storm_count, "baselineCount": s.baseline_count,
                "concurrency": s.concurrency, "latencySecs": s.latency_secs,
                "latencyRate": s.latency_rate,
                "smLatencyMs": crate::storm::SM_LATENCY_MS,
                "putLatencyMs": crate::storm::PUT_LATENCY_MS,
                "saasSinkLatencyMs": crate::saas::SINK_LATENCY_MS,
                "servicenowConcurrency": crate::saas::SERVICENOW_CONCURRENCY,
                "pagerdutyLanes": crate::saas::PAGERDUTY_CONCURRENCY,
                "sinkEvents": s.sink_events,
            },
            "machine": {
                "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            },
            "consume": self.consume.iter().map(ConsumeFig::json).collect::<Vec<_>>(),
            "catchUp": self.catchup.iter().map(CatchUpFig::json).collect::<Vec<_>>(),
            "appliances": self.appliances.iter().map(AppliancesFig::json).collect::<Vec<_>>(),
            "storm": self.storm.iter().map(StormFig::json).collect::<Vec<_>>(),
            "saasStorm": self.saas.iter().map(SaasFig::json).collect::<Vec<_>>(),
            "sinks": self.sinks.iter().map(SinkFig::json).collect::<Vec<_>>(),
            "latency": self.latency.iter().map(LatencyFig::json).collect::<Vec<_>>(),
            "footprint": self.footprint.iter().map(FootprintFig::json).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(|t| json!({
                "area": t.area, "pass": t.pass, "text": t.text,
            })).collect::<Vec<_>>(),
            "skipped": self.skipped,
        })
    }
}
