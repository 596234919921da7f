//! Every byte meshctl prints on stdout goes through here (`out!`, `outln!`,
//! [`flush`]), so that one place decides what happens when stdout cannot be
//! written.
//!
//! When the reader of stdout goes away (`meshctl devices | head -1`), a write
//! fails with `EPIPE`: Rust ignores SIGPIPE, and the workspace forbids the
//! unsafe code that would restore it, so `println!` would panic. Here meshctl
//! instead ends at once and quietly, as cat or grep do, with status 0: the
//! reader has what it wanted. The exception is a command whose failure was
//! already known before it printed (`send --all` with a device that did not
//! acknowledge, a `netcheck` that got no answer, a `ping` with none
//! answered): it registers that failure with [`fail_if_closed`], and a closed
//! stdout then ends meshctl as the failure would have, with its line on
//! stderr and status 1, so the exit status still tells the truth. Any other
//! write error (a full disk, say) is one line on stderr and status 1.

use std::fmt;
use std::io::{self, Write};
use std::sync::OnceLock;

use crate::error::CtlError;

/// Prints on stdout, as `print!` does; see the module documentation for
/// what happens when stdout cannot be written.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(::std::format_args!($($arg)*))
    };
}

/// Prints a line on stdout, as `println!` does; see the module
/// documentation for what happens when stdout cannot be written.
macro_rules! outln {
    () => {
        $crate::stdout::write_line(::std::format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write_line(::std::format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

/// The failure a closed stdout ends meshctl with, when one is known.
static FAILURE: OnceLock<String> = OnceLock::new();

/// Writes `args` on stdout; what `out!` expands to.
pub fn write(args: fmt::Arguments<'_>) {
    if let Err(error) = io::stdout().lock().write_fmt(args) {
        give_up(&error);
    }
}

/// Writes `args` and a line end on stdout under one lock, so the line is not
/// split by another thread's output; what `outln!` expands to.
pub fn write_line(args: fmt::Arguments<'_>) {
    if let Err(error) = writeln!(io::stdout().lock(), "{args}") {
        give_up(&error);
    }
}

/// Flushes stdout, for output that does not end with a line end.
pub fn flush() {
    if let Err(error) = io::stdout().lock().flush() {
        give_up(&error);
    }
}

/// Remembers that the command has failed with `error`, which it returns
/// once its output is printed: if stdout closes meanwhile, meshctl ends with
/// this failure rather than with status 0. The first failure registered
/// counts.
pub fn fail_if_closed(error: &CtlError) {
    let _ = FAILURE.set(error.to_string());
}

/// Ends meshctl after a failed write to stdout; never returns.
fn give_up(error: &io::Error) -> ! {
    if error.kind() == io::ErrorKind::BrokenPipe {
        match FAILURE.get() {
            Some(failure) => {
                eprintln!("meshctl: {failure}");
                std::process::exit(1)
            }
            None => std::process::exit(0),
        }
    }
    eprintln!("meshctl: cannot write to stdout: {error}");
    std::process::exit(1)
}
