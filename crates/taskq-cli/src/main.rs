//! `taskq`: parses the command line, runs the command, prints the report. Usage errors
//! exit 2 (clap), every other failure prints one `error: …` line on stderr and exits 1.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use taskq_cli::{Cli, Error, TOKEN_ENV};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let token = match std::env::var(TOKEN_ENV) {
        Ok(t) => Some(t),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return fail(&Error::input(format!("{TOKEN_ENV} is not valid UTF-8")));
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&Error::input(format!("cannot start the runtime: {e}"))),
    };
    match runtime.block_on(taskq_cli::run(cli, token.as_deref())) {
        Ok(report) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`taskq list | head`) is not worth a second error.
            let _ = stdout.write_all(report.stdout.as_bytes());
            let _ = stdout.flush();
            match report.failure {
                Some(e) => fail(&e),
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
