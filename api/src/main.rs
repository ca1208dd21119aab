//! `tessera`: the Tessera VMM command line (see `api::cli`).

fn main() -> std::process::ExitCode {
    api::cli::main()
}
