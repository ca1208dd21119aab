//! The progress bar of an import (layers applied, then the root filesystem built), for
//! `tessera image import` and the import that ends a pull. indicatif draws nothing when stderr
//! is not a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::import::{xattrs_left_out_warning, Step};

pub struct ImportBar(ProgressBar);

impl ImportBar {
    /// A bar on stderr.
    pub fn on_stderr() -> ImportBar {
        ImportBar::new(ProgressBar::with_draw_target(
            Some(0),
            ProgressDrawTarget::stderr(),
        ))
    }

    /// `bar` (say, one of a `MultiProgress`) styled as an import's.
    pub fn new(bar: ProgressBar) -> ImportBar {
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        ImportBar(bar)
    }

    /// Shows `step`; a warning is printed above the bar.
    pub fn step(&self, step: Step) {
        let bar = &self.0;
        match step {
            Step::Layer { index, count } => {
                bar.set_length(count as u64);
                bar.set_position(index as u64);
                bar.set_message("applying layers");
            }
            Step::Filesystem => {
                bar.set_position(bar.length().unwrap_or(0));
                bar.set_message("building the root filesystem");
                bar.enable_steady_tick(Duration::from_millis(100));
            }
            Step::XattrsLeftOut { count } => {
                bar.suspend(|| eprintln!("{}", xattrs_left_out_warning(count)))
            }
        }
    }
}

impl Drop for ImportBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
