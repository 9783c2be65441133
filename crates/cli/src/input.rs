//! Reads tokens and secret values from standard input, or from the terminal without echo:
//! never from the command line, where other users' `ps` and shell history would see them.

use std::io::{BufRead, IsTerminal, Read, Write};

use zeroize::Zeroizing;

use crate::error::CliError;

/// Largest value read from standard input (the API takes secrets up to 64 KiB).
const MAX_INPUT_BYTES: u64 = 1024 * 1024;

/// The value for `what`: prompted for without echo when standard input is a terminal (and
/// `force_stdin` is off), else all of standard input without its final line break.
pub fn secret_value(what: &str, force_stdin: bool) -> Result<Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    let value = if stdin.is_terminal() && !force_stdin {
        prompt_without_echo(&format!("{what}: "))?
    } else {
        let mut text = Zeroizing::new(String::new());
        stdin
            .lock()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|err| CliError::io(format!("reading the {what} from standard input"), err))?;
        if text.len() as u64 > MAX_INPUT_BYTES {
            return Err(CliError::Usage(format!(
                "the {what} on standard input is longer than {MAX_INPUT_BYTES} bytes"
            )));
        }
        Zeroizing::new(strip_final_newline(&text).to_owned())
    };
    if value.trim().is_empty() {
        return Err(CliError::Usage(format!(
            "no {what} was given on standard input"
        )));
    }
    Ok(value)
}

/// `echo value |` and a file saved by an editor end with a line break that is not part of the
/// value; only that one is removed.
pub fn strip_final_newline(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

fn prompt_without_echo(prompt: &str) -> Result<Zeroizing<String>, CliError> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{prompt}");
    let _ = stderr.flush();
    let terminal_error =
        |err: rustix::io::Errno| CliError::io("turning off the terminal's echo", err.into());
    let original = tcgetattr(&stdin).map_err(terminal_error)?;
    let mut silent = original.clone();
    silent.local_modes.remove(LocalModes::ECHO);
    silent.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Flush, &silent).map_err(terminal_error)?;
    let mut line = Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut line);
    // Echo comes back whatever the read did.
    let restored = tcsetattr(&stdin, OptionalActions::Now, &original);
    read.map_err(|err| CliError::io("reading from the terminal", err))?;
    restored.map_err(terminal_error)?;
    Ok(Zeroizing::new(strip_final_newline(&line).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_final_line_break_is_removed() {
        assert_eq!(strip_final_newline("value\n"), "value");
        assert_eq!(strip_final_newline("value\r\n"), "value");
        assert_eq!(strip_final_newline("value\n\n"), "value\n");
        assert_eq!(strip_final_newline(" value "), " value ");
    }
}
