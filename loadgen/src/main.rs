//! ringmx-loadgen: drives scripted SMTP sessions at a server and reports checked results and latency.
//!
//! Modules, in dependency order: each uses only the library and modules listed before it,
//! so there is no module circle.
//! - `ringmx_loadgen` (the library, `lib.rs`): reply parser, dot-stuffer;
//! - [`vocab`]: classes, steps, phases, pipelining mode;
//! - [`proxy`]: PROXY protocol headers and the source addresses they name;
//! - [`cli`] (proxy, vocab): flags into a checked [`cli::Config`];
//! - [`stats`] (vocab): histograms, counters, a run's [`stats::Collected`];
//! - [`script`] (cli, vocab): what each session sends and must get back;
//! - [`engine`] (cli, proxy, script, stats, tls, vocab): the worker threads;
//! - [`collect`] (cli, engine, script, stats, vocab): one run, its reports merged;
//! - [`chart`] (stats, vocab): SVG charts;
//! - [`report`] (cli, stats, vocab): summary.json, the table, .hgrm;
//! - [`sweep`] (chart, cli, stats, vocab): the capacity search, given a way to run one step;
//! - [`merge`] (chart, report, stats, vocab): the `merge` subcommand, runs of several machines as one;
//! - [`plot`] (chart, cli): the `plot` subcommand, several sweeps in one chart;
//! - `main`: picks a subcommand, a single run or a sweep and writes the outputs.

mod chart;
mod cli;
mod collect;
mod engine;
mod merge;
mod plot;
mod proxy;
mod report;
mod script;
mod stats;
mod sweep;
mod tls;
mod vocab;

use std::path::Path;
use std::sync::Arc;

use clap::Parser;

use cli::{Args, Config};
use report::Summary;
use script::Corpus;
use vocab::{Phase, PHASES};

fn main() {
    // Subcommands come first; anything else is a run with the flat flags.
    let argv: Vec<String> = std::env::args().collect();
    let sub = match argv.get(1).map(String::as_str) {
        Some("merge") => Some(merge::main(&argv[2..])),
        Some("plot") => Some(plot::main(&argv[2..])),
        _ => None,
    };
    if let Some(r) = sub {
        if let Err(e) = r {
            eprintln!("ringmx-loadgen: {e}");
            std::process::exit(if e.starts_with("usage:") { 2 } else { 1 });
        }
        return;
    }
    let args = Args::parse();
    let sweep = args
        .sweep
        .zip(args.slo)
        .map(|((from, to, step), slo)| sweep::Plan {
            from,
            to,
            step,
            slo,
            step_duration: args.step_duration,
            warmup: args.sweep_warmup,
            budget_pct: args.error_budget,
        });
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringmx-loadgen: {e}");
            std::process::exit(2);
        }
    };
    // A bad --tls-ca or server name is the user's mistake: say so before any session runs.
    if let Some(e) = cfg.tls.as_ref().and_then(|t| tls::Client::new(t).err()) {
        eprintln!("ringmx-loadgen: {e}");
        std::process::exit(2);
    }
    let result = prepare_out(&cfg).and_then(|()| {
        let corpus = Arc::new(Corpus::new(&cfg));
        match sweep {
            Some(plan) => sweep::run(&cfg, plan, |step| collect::run(step, &corpus)),
            None => single(&cfg, &corpus),
        }
    });
    if let Err(e) = result {
        eprintln!("ringmx-loadgen: {e}");
        std::process::exit(1);
    }
}

/// `--out DIR` and its `mismatches/`, made before any session runs.
fn prepare_out(cfg: &Config) -> Result<(), String> {
    if let Some(dir) = &cfg.out {
        std::fs::create_dir_all(dir.join("mismatches"))
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn single(cfg: &Config, corpus: &Arc<Corpus>) -> Result<(), String> {
    let collected = collect::run(cfg, corpus)?;
    let summary = Summary::build(cfg, &collected);
    let json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    if cfg.json {
        println!("{json}");
    } else {
        print!("{}", summary.table());
    }
    if let Some(dir) = &cfg.out {
        write_file(&dir.join("summary.json"), json.as_bytes())?;
        for p in PHASES {
            write_file(
                &dir.join(format!("{}.hgrm", p.name())),
                report::hgrm(&collected.corrected.0[p as usize]).as_bytes(),
            )?;
        }
        if cfg.rate.is_some() {
            write_file(
                &dir.join("session.uncorrected.hgrm"),
                report::hgrm(&collected.uncorrected.0[Phase::Session as usize]).as_bytes(),
            )?;
        }
        write_file(
            &dir.join("report.svg"),
            chart::report_svg(
                &summary.target,
                summary.mode,
                &PHASES.map(|p| (p.name(), &collected.corrected.0[p as usize])),
                &collected
                    .intervals
                    .iter()
                    .map(|r| chart::Second {
                        t: r.t,
                        sessions: r.sessions,
                        messages: r.messages,
                        errors: r.errors,
                    })
                    .collect::<Vec<_>>(),
            )
            .as_bytes(),
        )?;
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("writing {}: {e}", path.display()))
}
