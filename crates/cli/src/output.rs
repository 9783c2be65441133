//! What the CLI prints: aligned tables and readable timeline lines for people, the API's JSON
//! for machines (`--output json`), and errors for both.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::error::CliError;
use crate::follow::Timeline;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputMode {
    /// Tables and readable lines.
    #[default]
    Human,
    /// The API's JSON documents; a followed journal as one entry per line (JSON Lines).
    Json,
}

/// Cuts `text` to its first line and at most `max` characters, saying what was left out.
pub fn shorten(text: &str, max: usize) -> String {
    let text = text.trim();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default().trim_end();
    let more_lines = lines.count();
    let mut short: String = first.chars().take(max).collect();
    if first.chars().count() > max {
        short.push('…');
    }
    if more_lines > 0 {
        short.push_str(&format!(
            " (+{more_lines} line{})",
            if more_lines == 1 { "" } else { "s" }
        ));
    }
    short
}

/// A table with a header row; columns are padded to their widest cell, the last one is not.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate().take(columns) {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(self.rows.iter()) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate().take(columns) {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    let pad = widths[index] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A JSON value as a table cell: strings bare, `null` as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC as the server sent it).
pub fn time_cell(value: &Value) -> String {
    match value.as_str() {
        Some(text) if text.len() >= 19 => text[..19].replace('T', " "),
        _ => cell(value),
    }
}

/// `key: value` lines with the keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(key, _)| key.len() + 1)
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| format!("{key:width$}  {value}\n", key = format!("{key}:")))
        .collect()
}

/// One journal entry as a readable line: seq, time, kind, what happened.
pub fn event_line(entry: &Value) -> String {
    let seq = entry["seq"].as_i64().unwrap_or(0);
    let time = entry["occurred_at"]
        .as_str()
        .filter(|text| text.len() >= 19)
        .map(|text| &text[11..19])
        .unwrap_or("--:--:--");
    let kind = entry["kind"].as_str().unwrap_or("?");
    let text = event_text(kind, &entry["payload"]);
    format!("{seq:>4}  {time}  {kind:<12} {text}")
        .trim_end()
        .to_owned()
}

fn event_text(kind: &str, payload: &Value) -> String {
    let text = |field: &str| payload[field].as_str().unwrap_or_default();
    match kind {
        "run_state" => {
            let mut line = match payload["from"].as_str() {
                Some(from) => format!("{from} → {}", text("to")),
                None => text("to").to_owned(),
            };
            if let Some(attempt) = payload["attempt"].as_i64().filter(|attempt| *attempt > 1) {
                line.push_str(&format!(" (attempt {attempt})"));
            }
            let reason = &payload["reason"];
            if let Some(code) = reason["code"].as_str() {
                line.push_str(&format!(
                    ": {code}: {}",
                    shorten(reason["message"].as_str().unwrap_or_default(), 160)
                ));
            }
            line
        }
        "message" => format!("{}: {}", text("role"), shorten(text("text"), 160)),
        "action" => {
            if let Some(command) = payload["command"].as_str() {
                format!("$ {}", shorten(command, 160))
            } else if text("tool_name") == "finish" {
                format!("finish: {}", shorten(text("message"), 160))
            } else {
                let detail = [text("summary"), text("thought")]
                    .into_iter()
                    .find(|detail| !detail.is_empty())
                    .map(|detail| format!(": {}", shorten(detail, 140)))
                    .unwrap_or_default();
                format!("{}{detail}", text("tool_name"))
            }
        }
        "observation" => {
            let status = match payload["exit_code"].as_i64() {
                Some(code) => format!("[exit {code}] "),
                None if payload["is_error"] == Value::Bool(true) => "[error] ".to_owned(),
                None => String::new(),
            };
            format!("{status}{}", shorten(text("output"), 120))
        }
        "agent_error" => format!("{}: {}", text("tool_name"), shorten(text("error"), 160)),
        "conversation_error" => format!("{}: {}", text("code"), shorten(text("detail"), 160)),
        "state_update" => format!(
            "{} = {}",
            text("key"),
            shorten(&cell(&payload["value"]), 80)
        ),
        "workspace" => {
            let base: String = text("base_commit").chars().take(12).collect();
            format!(
                "cloned {} ({}) at {base}",
                text("repository"),
                payload["branch"].as_str().unwrap_or("default branch")
            )
        }
        "unknown" => format!("agent event {}", text("agent_kind")),
        _ => String::new(),
    }
}

pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Prints an error on stderr: `error: …`, or `{"error": …}` with `--output json`.
pub fn print_error(mode: OutputMode, err: &CliError) {
    let mut stderr = std::io::stderr().lock();
    let _ = match mode {
        OutputMode::Human => writeln!(stderr, "error: {err}"),
        OutputMode::Json => writeln!(stderr, "{}", err.to_json()),
    };
}

/// Prints a followed timeline: lines on stdout (JSON Lines with `--output json`), and on a
/// terminal a spinner on stderr with the run's state and the time since following began.
pub struct TimelinePrinter {
    mode: OutputMode,
    spinner: Option<ProgressBar>,
}

impl TimelinePrinter {
    pub fn new(mode: OutputMode, run_id: &str) -> Self {
        let interactive = mode == OutputMode::Human && std::io::stderr().is_terminal();
        let spinner = interactive.then(|| {
            let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            spinner.set_message(format!("run {run_id}: waiting"));
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        TimelinePrinter { mode, spinner }
    }

    fn line(&self, text: &str) {
        let print = || {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{text}");
            let _ = stdout.flush();
        };
        match &self.spinner {
            Some(spinner) => spinner.suspend(print),
            None => print(),
        }
    }

    fn notice(&self, text: &str) {
        let print = || {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        };
        match &self.spinner {
            Some(spinner) => spinner.suspend(print),
            None => print(),
        }
    }

    pub fn finish(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

impl Drop for TimelinePrinter {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Timeline for TimelinePrinter {
    fn entry(&mut self, entry: &Value) {
        match self.mode {
            OutputMode::Json => self.line(&entry.to_string()),
            OutputMode::Human => {
                self.line(&event_line(entry));
                if let (Some(spinner), "run_state") =
                    (&self.spinner, entry["kind"].as_str().unwrap_or_default())
                {
                    spinner.set_message(format!(
                        "run {}: {}",
                        entry["run_id"].as_str().unwrap_or_default(),
                        entry["payload"]["to"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }

    fn reconnecting(&mut self, attempt: u32, max_attempts: u32, delay: Duration, why: &str) {
        match self.mode {
            OutputMode::Json => self.notice(
                &json!({
                    "notice": "reconnecting",
                    "attempt": attempt,
                    "max_attempts": max_attempts,
                    "delay_ms": delay.as_millis() as u64,
                    "reason": why,
                })
                .to_string(),
            ),
            OutputMode::Human => self.notice(&format!(
                "reconnecting to the event stream in {:.1} s (attempt {attempt} of \
                 {max_attempts}): {why}",
                delay.as_secs_f64()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_every_column_but_the_last() {
        let mut table = Table::new(&["ID", "STATE", "PROMPT"]);
        table.row(vec!["1".into(), "succeeded".into(), "echo hi".into()]);
        table.row(vec!["22".into(), "failed".into(), "-".into()]);
        assert_eq!(
            table.render(),
            "ID  STATE      PROMPT\n\
             1   succeeded  echo hi\n\
             22  failed     -\n"
        );
    }

    #[test]
    fn shortened_text_keeps_its_first_line_and_says_what_is_left_out() {
        assert_eq!(shorten("  hello\n", 10), "hello");
        assert_eq!(shorten("abcdefghijkl", 5), "abcde…");
        assert_eq!(shorten("one\ntwo\nthree", 10), "one (+2 lines)");
        assert_eq!(shorten("é".repeat(4).as_str(), 2), "éé…");
    }

    #[test]
    fn timeline_lines_say_what_happened() {
        let entry = |seq: i64, kind: &str, payload: Value| {
            json!({"seq": seq, "kind": kind, "occurred_at": "2026-01-02T03:04:05.678Z",
                   "payload": payload})
        };
        assert_eq!(
            event_line(&entry(
                1,
                "run_state",
                json!({"from": null, "to": "queued", "attempt": 1})
            )),
            "   1  03:04:05  run_state    queued"
        );
        assert_eq!(
            event_line(&entry(
                9,
                "run_state",
                json!({"from": "running", "to": "failed", "attempt": 2, "terminal": true,
                       "reason": {"code": "agent_error", "message": "max iterations"}})
            )),
            "   9  03:04:05  run_state    running → failed (attempt 2): agent_error: max iterations"
        );
        assert_eq!(
            event_line(&entry(
                5,
                "action",
                json!({"tool_name": "terminal", "command": "ls -l"})
            )),
            "   5  03:04:05  action       $ ls -l"
        );
        assert_eq!(
            event_line(&entry(
                6,
                "observation",
                json!({"output": "a\nb\nc\n", "exit_code": 0})
            )),
            "   6  03:04:05  observation  [exit 0] a (+2 lines)"
        );
        assert_eq!(
            event_line(&entry(
                7,
                "action",
                json!({"tool_name": "finish", "command": null, "message": "done"})
            )),
            "   7  03:04:05  action       finish: done"
        );
        assert_eq!(
            event_line(&entry(
                3,
                "message",
                json!({"role": "user", "text": "hi\nthere"})
            )),
            "   3  03:04:05  message      user: hi (+1 line)"
        );
        assert_eq!(
            event_line(&entry(4, "system_prompt", json!({}))),
            "   4  03:04:05  system_prompt"
        );
    }

    #[test]
    fn fields_align_their_keys() {
        assert_eq!(
            fields(&[("id", "r1".into()), ("state", "queued".into())]),
            "id:     r1\nstate:  queued\n"
        );
    }
}
