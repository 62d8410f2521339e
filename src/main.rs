//! The `verity` command line: parses arguments, wires them to the engine, and
//! reports. No engine logic lives here.

mod audit;
mod bench;
mod bench_html;
mod cli;
mod cluster;
mod connectors;
mod logger;
mod metrics_server;
mod nexmark;
mod panics;
mod restart;
mod sim;

use clap::Parser;

fn main() {
    logger::install();
    panics::install_hook();
    let args = cli::Cli::parse();
    match cli::execute(args) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            logger::write_line(&format!("verity: error: {}", one_line(&error)));
            let code = error.downcast_ref::<cluster::ExitWith>().map_or(1, |e| e.code);
            std::process::exit(code);
        }
    }
}

/// The error and its causes on one line, so the reason is never hidden.
fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
