//! Usage errors as Tessera's command lines print them: clap's message on one line. Shared by
//! `tessera-jailer` and `tessera` (the lowest crate both binaries use).

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
