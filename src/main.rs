//! The `hsmca` binary: parses arguments and hands over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = hsmca::cli::Cli::parse();
    match hsmca::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmca: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
