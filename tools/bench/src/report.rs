//! A run's report: its file name, the latency histogram (SVG), the markdown table, and the
//! results section regenerated from a directory of runs.

use std::path::Path;

use crate::model::*;

/// The file name of a run: workload, concurrency, count, shards, think time.
pub fn name(r: &BenchResult) -> String {
    let workload = match r.workload {
        Some(Workload::Hot) => "hot",
        Some(Workload::Failures) => "failures",
        _ => "spread",
    };
    let shards = if r.shards > 1 {
        format!("-s{}", r.shards)
    } else {
        String::new()
    };
    let think = if r.think_ms > 0 {
        format!("-t{}", r.think_ms)
    } else {
        String::new()
    };
    format!("{workload}-c{}-n{}{shards}{think}", r.concurrency, r.count)
}

pub(crate) fn write(args: &BenchArgs, result: &BenchResult) -> Result<(), BenchError> {
    let io = |e: std::io::Error| BenchError::Other(format!("writing results: {e}"));
    std::fs::create_dir_all(&args.out).map_err(io)?;
    let base = args.out.join(name(result));
    let json =
        serde_json::to_string_pretty(result).map_err(|e| BenchError::Other(e.to_string()))?;
    std::fs::write(base.with_extension("json"), json).map_err(io)?;
    std::fs::write(base.with_extension("svg"), histogram(result)).map_err(io)?;
    Ok(())
}

/// An SVG histogram of the end-to-end latencies.
pub fn histogram(r: &BenchResult) -> String {
    let (w, h, left, bottom, top) = (640.0, 300.0, 50.0, 40.0, 30.0);
    let max = r
        .samples_ms
        .iter()
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let bins = 40usize;
    let width = max / bins as f64;
    let mut counts = vec![0usize; bins];
    for s in &r.samples_ms {
        counts[((s / width) as usize).min(bins - 1)] += 1;
    }
    let tallest = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let plot_w = w - left - 10.0;
    let plot_h = h - top - bottom;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="18" font-size="13">{} - end-to-end latency, {} orders at concurrency {} (p50 {} ms, p99 {} ms)</text>
"##,
        name(r),
        r.count,
        r.concurrency,
        r.end_to_end.p50,
        r.end_to_end.p99
    );
    for (i, c) in counts.iter().enumerate() {
        let bh = *c as f64 / tallest * plot_h;
        let x = left + i as f64 * plot_w / bins as f64;
        svg.push_str(&format!(
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#4a78b5"/>
"##,
            top + plot_h - bh,
            plot_w / bins as f64 - 1.0
        ));
    }
    let axis_y = top + plot_h;
    svg.push_str(&format!(
        r##"<line x1="{left}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="black"/>
<text x="{left}" y="{}">0 ms</text><text x="{}" y="{}" text-anchor="end">{max:.0} ms</text>
<text x="{}" y="{}" text-anchor="middle">latency (ms)</text><text x="12" y="{}" transform="rotate(-90 12 {})">orders</text>
</svg>
"##,
        left + plot_w,
        axis_y + 15.0,
        left + plot_w,
        axis_y + 15.0,
        left + plot_w / 2.0,
        axis_y + 30.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    ));
    svg
}

/// The passes' orders a second as the report says them ("passes 63.2 and 60.8", "passes
/// 63.2, 60.8 and 71.2"); nothing for a run measured in one pass.
fn passes(passes: &[f64]) -> Option<String> {
    match passes {
        [] | [_] => None,
        [rest @ .., last] => Some(format!("passes {} and {last}", listed(rest))),
    }
}

/// Figures as a list: "63.2, 60.8".
fn listed(figures: &[f64]) -> String {
    figures
        .iter()
        .map(f64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The result as a table.
pub fn table(r: &BenchResult) -> String {
    let mut t = String::new();
    let l = |x: &Latency| {
        format!(
            "p50 {} / p90 {} / p99 {} / max {} ms",
            x.p50, x.p90, x.p99, x.max
        )
    };
    t.push_str(&format!("{}  ({})\n", name(r), r.machine));
    t.push_str(&format!(
        "  orders/s           {} ({} orders in {:.1} s{})\n",
        r.orders_per_s,
        r.count,
        r.seconds,
        passes(&r.passes).map_or(String::new(), |p| format!("; {p}"))
    ));
    if r.warmup > 0 {
        let floor = match &r.floor {
            Some(f) if f.warmup > 0 => {
                format!("; the floor's {} trivial ones before its own", f.warmup)
            }
            _ => String::new(),
        };
        t.push_str(&format!(
            "  warm-up            {} spread orders before, not measured{floor}\n",
            r.warmup
        ));
    }
    if r.think_ms > 0 {
        t.push_str(&format!(
            "  think time         0-{} ms before each order, spread evenly (the floor's too)\n",
            r.think_ms
        ));
    }
    t.push_str(&format!("  end to end         {}\n", l(&r.end_to_end)));
    t.push_str(&format!("  POST               {}\n", l(&r.post)));
    for (hop, lat) in &r.hops {
        t.push_str(&format!("  hop {hop:<26} {}\n", l(lat)));
    }
    t.push_str(&format!(
        "  outcome            {} completed, {} compensated, {} unfinished; invariants {}{}\n",
        r.completed,
        r.compensated,
        r.unfinished,
        if r.invariants_held { "held" } else { "BROKEN" },
        if r.checked_orders > r.count {
            format!(" (checked over all {} orders)", r.checked_orders)
        } else {
            String::new()
        }
    ));
    for v in &r.violations {
        t.push_str(&format!("    VIOLATION {v}\n"));
    }
    if !r.binaries.is_empty() {
        t.push_str(&format!("  functions run as   {}\n", r.binaries));
    }
    match r.emulator_heap.as_str() {
        "" => {}
        "auto" => t.push_str("  emulators' heap    the JVM's own sizing\n"),
        size => t.push_str(&format!(
            "  emulators' heap    fixed at {size} each (-Xms{size} -Xmx{size})\n"
        )),
    }
    for (name, p) in &r.functions {
        t.push_str(&format!(
            "  {name:<10} ready {:>5} ms   RSS idle {:>5} / peak {:>5} MiB   PSS {:>5} MiB   private {:>4} MiB   {:>5} CPU s/1000 orders\n",
            p.ready_ms.unwrap_or(0.0),
            p.idle_rss_mib,
            p.peak_rss_mib,
            p.pss_mib,
            p.private_mib,
            p.cpu_s_per_1000_orders
        ));
    }
    let sum = |f: fn(&ProcessUse) -> f64| round(r.functions.values().map(f).sum::<f64>());
    t.push_str(&format!(
        "  five functions      RSS at once peak {} MiB; sum of the peaks {} MiB (code pages counted five times), PSS {} MiB, private {} MiB\n",
        r.five_rss_at_once_peak_mib,
        sum(|p| p.peak_rss_mib),
        sum(|p| p.pss_mib),
        sum(|p| p.private_mib)
    ));
    for (name, p) in &r.emulators {
        t.push_str(&format!(
            "  {name:<18}  peak {:>6} MiB   {:>5} CPU s/1000 orders\n",
            p.peak_rss_mib, p.cpu_s_per_1000_orders
        ));
    }
    if r.driver_cpu_s_per_1000_orders > 0.0 {
        t.push_str(&format!(
            "  bench driver                      {:>5} CPU s/1000 orders\n",
            r.driver_cpu_s_per_1000_orders
        ));
    }
    if let Some(cost) = &r.cost {
        t.push_str(&crate::cost::lines("operations", cost));
    }
    if let Some(sweeps) = &r.sweeps_per_minute {
        t.push_str(&format!(
            "  sweeps             per minute (one round of every function's, nothing in flight): {} reads ({} queries), {} writes, {} publishes\n",
            sweeps.billed_reads, sweeps.queries, sweeps.writes, sweeps.publishes
        ));
    }
    if let Some(bounds) = crate::bounds::Bounds::of(r) {
        t.push_str(&bounds.lines(r));
    }
    if let Some(f) = &r.floor {
        t.push_str(&format!(
            "  floor              {} trivial orders/s{} => this run at {:.0}% of the floor\n                     trivial order {}\n                     push hop {}\n                     bare txn {}\n",
            f.orders_per_s,
            passes(&f.passes).map_or(String::new(), |p| format!(" ({p})")),
            if f.orders_per_s > 0.0 { r.orders_per_s / f.orders_per_s * 100.0 } else { 0.0 },
            l(&f.end_to_end),
            l(&f.pubsub_hop),
            l(&f.firestore_txn),
        ));
        for (name, ms) in &f.emulator_cpu_ms {
            t.push_str(&format!(
                "                     {name} {ms} CPU ms a trivial order\n"
            ));
        }
        if let Some(cost) = &f.cost {
            t.push_str(&crate::cost::lines("floor operations", cost));
        }
    }
    t.push_str(&crate::bounds::time_lines(r));
    t
}

/// Rewrites the results section of `markdown` from every result in `dir`.
pub fn report(dir: &Path) -> Result<String, BenchError> {
    let mut results: Vec<BenchResult> = std::fs::read_dir(dir)
        .map_err(|e| BenchError::Other(format!("reading {}: {e}", dir.display())))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    results.sort_by_key(|r| (name(r).starts_with("spread"), r.concurrency, r.shards));
    let mut md = String::new();
    md.push_str("| run | orders/s | e2e p50 | e2e p99 | POST p50 | completed / compensated | invariants | floor orders/s | writes / reads an order | $ a million orders |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &results {
        let (ops, usd) = r.cost.as_ref().map_or(("-".into(), "-".into()), |c| {
            (
                format!("{} / {}", c.per_order.writes, c.per_order.billed_reads),
                c.per_million_usd.total.to_string(),
            )
        });
        let with_passes = |rate: f64, passes: &[f64]| match passes {
            [] | [_] => rate.to_string(),
            all => format!("{rate} ({})", listed(all)),
        };
        md.push_str(&format!(
            "| `{}` | {} | {} ms | {} ms | {} ms | {} / {} | {} | {} | {ops} | {usd} |\n",
            name(r),
            with_passes(r.orders_per_s, &r.passes),
            r.end_to_end.p50,
            r.end_to_end.p99,
            r.post.p50,
            r.completed,
            r.compensated,
            if r.invariants_held { "held" } else { "BROKEN" },
            r.floor
                .as_ref()
                .map_or("-".into(), |f| with_passes(f.orders_per_s, &f.passes))
        ));
    }
    for r in &results {
        md.push_str(&format!(
            "\n### `{}`\n\n`{}`\n\n```\n{}```\n\n![{}]({}.svg)\n",
            name(r),
            r.command,
            table(r),
            name(r),
            name(r)
        ));
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::{BenchResult, Workload, name, passes};

    #[test]
    fn a_run_with_a_think_time_is_named_apart_from_one_without() {
        let back_to_back = BenchResult {
            workload: Some(Workload::Spread),
            count: 100,
            concurrency: 1,
            ..BenchResult::default()
        };
        assert_eq!(name(&back_to_back), "spread-c1-n100");
        let thinking = BenchResult {
            think_ms: 100,
            ..back_to_back
        };
        assert_eq!(name(&thinking), "spread-c1-n100-t100");
    }

    #[test]
    fn a_run_measured_in_passes_gives_each_and_one_in_one_pass_none() {
        assert_eq!(
            passes(&[63.2, 60.8]).as_deref(),
            Some("passes 63.2 and 60.8")
        );
        assert_eq!(
            passes(&[63.2, 60.8, 71.2, 64.7]).as_deref(),
            Some("passes 63.2, 60.8, 71.2 and 64.7")
        );
        assert_eq!(passes(&[]), None);
        assert_eq!(passes(&[63.2]), None);
    }
}
