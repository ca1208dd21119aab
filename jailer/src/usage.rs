//! Usage errors as Tessera's command lines print them: clap's message on one line. Shared by
//! `tessera-jailer`, `tessera` and `tessera-image` (the lowest crate they all use).

/// Exit code for a command-line usage error.
pub const EXIT_USAGE: u8 = 2;

/// Parses the command line into `T`; `--help` and `--version` print and give `Err(0)`, a usage
/// error prints one line after `program: ` and gives `Err(EXIT_USAGE)`.
pub fn parse<T: clap::Parser>(program: &str) -> Result<T, u8> {
    match T::try_parse() {
        Ok(parsed) => Ok(parsed),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(0)
        }
        Err(e) => {
            eprintln!("{program}: {}", one_line_clap_error(&e));
            Err(EXIT_USAGE)
        }
    }
}

/// clap's error as one line: its message runs to the first blank line (a missing argument's
/// name is on the line after "not provided:"); usage and tips follow and are left out.
pub fn one_line_clap_error(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    message.join(" ")
}
