use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = xdp_lb::cli::Cli::parse();
    xdp_lb::cli::init_logging(cli.verbose);
    match xdp_lb::cli::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
