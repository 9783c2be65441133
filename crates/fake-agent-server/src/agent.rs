//! The scripted agent that stands in for the LLM-driven one.
//!
//! Task language: every line of a user message that starts with `"$ "` is a terminal command, run
//! in order; the last other non-blank line is the final answer given to the `finish` tool. Each
//! command is one iteration, so `max_iterations` bounds the number of commands per run.
//!
//! The run lifecycle mirrors `LocalConversation.run` in the SDK: the status goes to `running`, each
//! step emits an `ActionEvent` and its `ObservationEvent`, `finish` sets `finished`, `/pause` stops
//! after the step in flight, `/interrupt` stops at once, and when the run task exits it publishes a
//! `full_state` update that comes after every event of the run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::events::{self, TerminalResult, ToolCall};
use super::shell::{self, ShellCommand, ShellOutcome};
use super::state::{ActiveRun, Conversation, ExecutionStatus, FakeServer, PlannedStep};

/// Per-command limit, the same as the real terminal tool's default.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// How long `/interrupt` waits for the run task to kill its command and publish its final state.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// Reads a task into the plan the scripted agent follows.
pub(crate) fn plan_task(text: &str) -> Vec<PlannedStep> {
    let mut steps = Vec::new();
    let mut final_answer = "";
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(PlannedStep::Command(command.to_owned()));
        } else if !line.trim().is_empty() {
            final_answer = line.trim();
        }
    }
    steps.push(PlannedStep::Finish(final_answer.to_owned()));
    steps
}

/// Appends a user message as `POST /events` does; whether it also starts a run is the caller's
/// choice.
pub(crate) fn send_user_message(conversation: &Conversation, content: &[Value]) {
    let text = content
        .iter()
        .filter_map(|item| item.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n");

    let mut state = conversation.lock();
    if !state.system_prompt_sent {
        state.system_prompt_sent = true;
        state.append(events::system_prompt_event());
        // A test knob: newer agent-servers emit kinds older clients do not know, and clients
        // must keep them and carry on.
        if let Ok(kind) = std::env::var(events::EXTRA_EVENT_KIND_VARIABLE)
            && !kind.trim().is_empty()
        {
            state.append(events::unknown_kind_event(kind.trim()));
        }
    }
    if matches!(state.execution_status, ExecutionStatus::Finished) {
        state.set_status(ExecutionStatus::Idle);
    }
    let message = events::user_message_event(content);
    let message_id = events::id(&message).to_owned();
    state.append(message);
    state.last_user_message_id = Some(message_id.clone());
    state.append(events::state_update_event(
        "last_user_message_id",
        json!(message_id),
    ));
    // A newer message supersedes the final answer still pending from an older one: the agent
    // finishes once, after doing what every message asked.
    if matches!(state.plan.back(), Some(PlannedStep::Finish(_))) {
        state.plan.pop_back();
    }
    state.plan.extend(plan_task(&text));
}

#[derive(Debug, thiserror::Error)]
#[error("Conversation already running. Wait for completion or pause first.")]
pub(crate) struct AlreadyRunning;

/// Starts a run unless one is alive (`/run` answers 409 then).
pub(crate) fn start_run(
    server: &Arc<FakeServer>,
    conversation: &Arc<Conversation>,
) -> Result<(), AlreadyRunning> {
    let mut state = conversation.lock();
    if let Some(run) = state.run.as_mut() {
        run.rerun_requested = true;
        return Err(AlreadyRunning);
    }
    if conversation.closed.is_cancelled() {
        return Ok(());
    }
    if state.plan.is_empty() && state.execution_status == ExecutionStatus::Finished {
        // The SDK's run loop exits at once on a finished conversation; only the closing
        // snapshot is published.
        let snapshot = conversation.full_state_event(&state);
        state.append(snapshot);
        return Ok(());
    }
    let cancel = conversation.closed.child_token();
    let done = CancellationToken::new();
    state.run = Some(ActiveRun {
        cancel: cancel.clone(),
        pause_requested: false,
        rerun_requested: false,
        done,
    });
    state.set_status(ExecutionStatus::Running);
    drop(state);

    tokio::spawn(run_loop(
        Arc::clone(server),
        Arc::clone(conversation),
        cancel,
    ));
    Ok(())
}

/// `/pause`: the run stops after its current step; the call returns once it has.
pub(crate) async fn pause(conversation: &Conversation) {
    let done = {
        let mut state = conversation.lock();
        match state.run.as_mut() {
            Some(run) => {
                run.pause_requested = true;
                Some(run.done.clone())
            }
            None => {
                if state.execution_status != ExecutionStatus::Paused {
                    state.append(events::pause_event());
                    state.set_status(ExecutionStatus::Paused);
                }
                None
            }
        }
    };
    if let Some(done) = done {
        done.cancelled().await;
    }
}

/// `/interrupt`: the run stops at once, killing the command in flight.
pub(crate) async fn interrupt(conversation: &Conversation) {
    let done = {
        let mut state = conversation.lock();
        let done = state.run.as_ref().map(|run| {
            run.cancel.cancel();
            run.done.clone()
        });
        if done.is_some() || state.execution_status != ExecutionStatus::Paused {
            state.append(events::interrupt_event());
            state.set_status(ExecutionStatus::Paused);
        }
        done
    };
    if let Some(done) = done {
        // Killing a process group is quick; the bound only guards against a wedged task.
        let _ = tokio::time::timeout(INTERRUPT_GRACE, done.cancelled()).await;
    }
}

/// A terminal command the run task is to execute outside the lock.
struct NextCommand {
    command: String,
    call: ToolCall,
    action_id: String,
    working_dir: PathBuf,
    env: BTreeMap<String, String>,
}

async fn run_loop(
    server: Arc<FakeServer>,
    conversation: Arc<Conversation>,
    mut cancel: CancellationToken,
) {
    loop {
        run_steps(&server, &conversation, &cancel).await;

        let mut state = conversation.lock();
        let snapshot = conversation.full_state_event(&state);
        state.append(snapshot);
        let Some(finished_run) = state.run.take() else {
            return;
        };
        finished_run.done.cancel();
        // A start asked for while this run was ending (a message sent after the finish step)
        // would otherwise be stranded: the caller saw a live run and did not start another.
        let restart = finished_run.rerun_requested
            && !finished_run.pause_requested
            && !finished_run.cancel.is_cancelled()
            && !state.plan.is_empty()
            && matches!(
                state.execution_status,
                ExecutionStatus::Idle | ExecutionStatus::Finished
            );
        if !restart {
            return;
        }
        cancel = conversation.closed.child_token();
        state.run = Some(ActiveRun {
            cancel: cancel.clone(),
            pause_requested: false,
            rerun_requested: false,
            done: CancellationToken::new(),
        });
        state.set_status(ExecutionStatus::Running);
    }
}

/// One run: steps until the plan finishes, fails, pauses or is cancelled.
async fn run_steps(server: &FakeServer, conversation: &Conversation, cancel: &CancellationToken) {
    let mut iterations: u32 = 0;
    loop {
        server.touch();
        let Some(NextCommand {
            command,
            call,
            action_id,
            working_dir,
            env,
        }) = plan_next_step(conversation, cancel, &mut iterations)
        else {
            return;
        };

        let outcome = shell::run_shell(
            ShellCommand {
                command: &command,
                cwd: &working_dir,
                env: &env,
                timeout: COMMAND_TIMEOUT,
                merge_stderr: true,
            },
            cancel,
        )
        .await;
        server.touch();

        let working_dir = working_dir.to_string_lossy();
        let observation = match outcome {
            Ok(ShellOutcome::Cancelled) => return,
            Ok(ShellOutcome::Exited {
                exit_code,
                stdout,
                pid,
                ..
            }) => events::terminal_observation(&TerminalResult {
                command: &command,
                output: &maybe_truncate(&stdout, MAX_CMD_OUTPUT_SIZE),
                exit_code,
                timed_out: false,
                pid,
                working_dir: &working_dir,
            }),
            Ok(ShellOutcome::TimedOut { stdout, pid, .. }) => {
                events::terminal_observation(&TerminalResult {
                    command: &command,
                    output: &maybe_truncate(&stdout, MAX_CMD_OUTPUT_SIZE),
                    exit_code: -1,
                    timed_out: true,
                    pid,
                    working_dir: &working_dir,
                })
            }
            Err(error) => {
                let mut observation = events::terminal_observation(&TerminalResult {
                    command: &command,
                    output: &format!("failed to start the command: {error}"),
                    exit_code: -1,
                    timed_out: false,
                    pid: None,
                    working_dir: &working_dir,
                });
                observation["is_error"] = json!(true);
                observation
            }
        };

        let mut state = conversation.lock();
        // Checked under the lock that `/interrupt` cancels under: nothing from this run lands
        // after the interrupt's own events.
        if cancel.is_cancelled() {
            return;
        }
        state.append(events::observation_event(&call, &action_id, observation));
    }
}

/// Takes the next planned step. A finish (or a failure) is handled entirely here; a command is
/// announced with its `ActionEvent` and handed back to be run without holding the lock.
fn plan_next_step(
    conversation: &Conversation,
    cancel: &CancellationToken,
    iterations: &mut u32,
) -> Option<NextCommand> {
    let mut state = conversation.lock();
    if cancel.is_cancelled() {
        return None;
    }
    if state.run.as_ref().is_some_and(|run| run.pause_requested) {
        state.append(events::pause_event());
        state.set_status(ExecutionStatus::Paused);
        return None;
    }
    let step = state
        .plan
        .pop_front()
        .unwrap_or_else(|| PlannedStep::Finish(String::new()));

    match step {
        PlannedStep::Command(command) => {
            if *iterations >= state.max_iterations {
                let detail = format!(
                    "Agent reached maximum iterations limit ({}).",
                    state.max_iterations
                );
                state.plan.push_front(PlannedStep::Command(command));
                state.set_status(ExecutionStatus::Error);
                state.append(events::conversation_error_event(
                    "MaxIterationsReached",
                    &detail,
                ));
                return None;
            }
            *iterations += 1;
            state.set_status(ExecutionStatus::Running);
            let call = ToolCall::new("terminal", json!({ "command": command }));
            let action = events::action_event(
                &call,
                events::terminal_action(&command),
                &format!("Run `{command}`"),
            );
            let action_id = events::id(&action).to_owned();
            state.append(action);
            Some(NextCommand {
                command,
                call,
                action_id,
                working_dir: state.working_dir.clone(),
                env: state.secrets.clone(),
            })
        }
        PlannedStep::Finish(message) => {
            state.set_status(ExecutionStatus::Running);
            let call = ToolCall::new("finish", json!({ "message": message }));
            let action =
                events::action_event(&call, events::finish_action(&message), "Report the result");
            let action_id = events::id(&action).to_owned();
            state.append(action);
            state.append(events::observation_event(
                &call,
                &action_id,
                events::finish_observation(&message),
            ));
            state.set_status(ExecutionStatus::Finished);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_lines_become_commands_and_the_last_other_line_the_answer() {
        let plan = plan_task("Please:\n$ echo hello > hello.txt\n$ cat hello.txt\ndone\n\n");
        assert_eq!(
            plan,
            vec![
                PlannedStep::Command("echo hello > hello.txt".into()),
                PlannedStep::Command("cat hello.txt".into()),
                PlannedStep::Finish("done".into()),
            ]
        );
    }

    #[test]
    fn a_task_without_prose_finishes_with_an_empty_answer() {
        assert_eq!(
            plan_task("$ true"),
            vec![
                PlannedStep::Command("true".into()),
                PlannedStep::Finish(String::new()),
            ]
        );
    }

    #[test]
    fn a_dollar_without_a_space_is_prose() {
        assert_eq!(
            plan_task("$HOME"),
            vec![PlannedStep::Finish("$HOME".into())]
        );
    }
}

/// The real terminal tool's output limit (`MAX_CMD_OUTPUT_SIZE`, in characters).
const MAX_CMD_OUTPUT_SIZE: usize = 30_000;
const TRUNCATE_NOTICE: &str = "<response clipped><NOTE>Due to the max output limit, only part of the full response has been shown to you.</NOTE>";

/// The real server's `maybe_truncate`: over `limit` characters, the middle gives way to a notice
/// (the head gets the odd character), so an observation is never larger than the limit.
fn maybe_truncate(content: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    let chars = content.chars().count();
    if chars <= limit {
        return content.into();
    }
    let notice_chars = TRUNCATE_NOTICE.chars().count();
    let available = limit - notice_chars;
    let head = available / 2 + available % 2;
    let tail = available - head;
    let head_text: String = content.chars().take(head).collect();
    let tail_text: String = content.chars().skip(chars - tail).collect();
    format!("{head_text}{TRUNCATE_NOTICE}{tail_text}").into()
}

#[cfg(test)]
mod truncate_tests {
    use super::*;

    #[test]
    fn long_output_keeps_its_head_and_tail_like_the_real_terminal() {
        let output = format!("HEAD{}TAIL", "x".repeat(100_000));
        let cut = maybe_truncate(&output, MAX_CMD_OUTPUT_SIZE);
        assert_eq!(cut.chars().count(), MAX_CMD_OUTPUT_SIZE);
        assert!(cut.starts_with("HEAD") && cut.ends_with("TAIL") && cut.contains(TRUNCATE_NOTICE));
        assert_eq!(maybe_truncate("short", MAX_CMD_OUTPUT_SIZE), "short");
    }
}
