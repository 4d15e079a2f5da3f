//! `saga bench` and `saga bench-report`: the bench lives in `tools/bench` (`saga-bench`).

use std::path::PathBuf;
use std::process::ExitCode;

pub use saga_bench::BenchArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Where the bench wrote its JSON results and histograms.
    #[arg(long, default_value = "docs/benchmarks")]
    pub dir: PathBuf,
    /// The markdown file whose `<!-- bench:begin -->` ... `<!-- bench:end -->` section is
    /// rewritten.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub markdown: PathBuf,
}

/// `saga bench`: exit 1 if the run broke an invariant.
pub async fn run(args: BenchArgs) -> ExitCode {
    match saga_bench::bench(&args).await {
        Ok(result) => {
            print!("{}", saga_bench::report::table(&result));
            println!("results in {}", args.out.display());
            if result.invariants_held {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => super::fail("bench", e),
    }
}

/// `saga bench-report`: regenerates the results section of the markdown file.
pub fn report(args: ReportArgs) -> ExitCode {
    let ReportArgs { dir, markdown } = args;
    let run = || -> Result<(), String> {
        let section = saga_bench::report::report(&dir).map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(&markdown).map_err(|e| e.to_string())?;
        let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
        let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
            return Err(format!(
                "{} has no {begin} ... {end} section",
                markdown.display()
            ));
        };
        let text = format!("{}{begin}\n{section}\n{}", &text[..a], &text[b..]);
        std::fs::write(&markdown, text).map_err(|e| e.to_string())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail("bench-report", e),
    }
}
