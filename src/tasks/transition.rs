//! The lifecycle table: the one function that decides every status change. Nothing else in
//! the crate computes a new status; `registry` applies what this returns.
//!
//! ```text
//! created → sent → in_progress → completed / failed
//! timeout and cancelled are reachable from every non-final state;
//! completed, failed, timeout and cancelled never change again.
//! ```

use super::model::{ReportStatus, TaskStatus};

/// Something that may move a task to another status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The request went down the agent's stream.
    Sent,
    /// The agent reported on the task.
    Report {
        /// The response's status.
        status: ReportStatus,
        /// Whether it is the task's last response.
        is_final: bool,
        /// Whether the agent says it was cancelled.
        cancelled: bool,
    },
    /// The deadline passed.
    Timeout,
    /// A user cancelled the task.
    Cancel,
    /// The agent could not be reached when sending.
    SendFailed,
    /// The agent's stream ended and it did not come back within the grace period.
    AgentLost,
}

/// The result of applying a trigger to a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The status becomes this one.
    To(TaskStatus),
    /// Valid, but the status stays (e.g. more output while in progress).
    Stay,
}

/// Why a trigger was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The task is already final: a late or duplicated event, counted and ignored.
    AlreadyFinal(TaskStatus),
    /// A response with status UNKNOWN: an agent bug, logged and ignored.
    Malformed,
}

/// Decides what `trigger` does to a task in status `current`.
pub fn next(current: TaskStatus, trigger: Trigger) -> Result<Transition, Refusal> {
    if current.is_final() {
        return Err(Refusal::AlreadyFinal(current));
    }
    let target = match trigger {
        // A response can overtake the send acknowledgement; `sent` never moves a task back.
        Trigger::Sent if current == TaskStatus::Created => TaskStatus::Sent,
        Trigger::Sent => return Ok(Transition::Stay),
        Trigger::Report {
            status,
            is_final,
            cancelled,
        } => match status {
            ReportStatus::Unknown => return Err(Refusal::Malformed),
            ReportStatus::InProgress => TaskStatus::InProgress,
            ReportStatus::Completed if !is_final => TaskStatus::InProgress,
            ReportStatus::Completed if cancelled => TaskStatus::Cancelled,
            ReportStatus::Completed => TaskStatus::Completed,
            ReportStatus::Failure if cancelled && is_final => TaskStatus::Cancelled,
            ReportStatus::Failure => TaskStatus::Failed,
        },
        Trigger::Timeout => TaskStatus::Timeout,
        Trigger::Cancel => TaskStatus::Cancelled,
        Trigger::SendFailed | Trigger::AgentLost => TaskStatus::Failed,
    };
    if target == current {
        Ok(Transition::Stay)
    } else {
        Ok(Transition::To(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReportStatus as R;
    use TaskStatus as S;

    fn report(status: ReportStatus, is_final: bool, cancelled: bool) -> Trigger {
        Trigger::Report {
            status,
            is_final,
            cancelled,
        }
    }

    /// Every (non-final status, response) pair, as the spec's mapping says.
    #[test]
    fn every_status_and_response_pair_follows_the_table() {
        let ok = |s| Ok(Transition::To(s));
        let non_final = [S::Created, S::Sent, S::InProgress];
        // (response, is_final, cancelled, expected target)
        let table: &[(ReportStatus, bool, bool, Result<TaskStatus, Refusal>)] = &[
            (R::InProgress, false, false, Ok(S::InProgress)),
            (R::InProgress, false, true, Ok(S::InProgress)),
            (R::InProgress, true, false, Ok(S::InProgress)),
            (R::InProgress, true, true, Ok(S::InProgress)),
            (R::Completed, false, false, Ok(S::InProgress)),
            (R::Completed, false, true, Ok(S::InProgress)),
            (R::Completed, true, false, Ok(S::Completed)),
            (R::Completed, true, true, Ok(S::Cancelled)),
            (R::Failure, false, false, Ok(S::Failed)),
            (R::Failure, false, true, Ok(S::Failed)),
            (R::Failure, true, false, Ok(S::Failed)),
            (R::Failure, true, true, Ok(S::Cancelled)),
            (R::Unknown, false, false, Err(Refusal::Malformed)),
            (R::Unknown, false, true, Err(Refusal::Malformed)),
            (R::Unknown, true, false, Err(Refusal::Malformed)),
            (R::Unknown, true, true, Err(Refusal::Malformed)),
        ];
        for &current in &non_final {
            for &(status, is_final, cancelled, expected) in table {
                let got = next(current, report(status, is_final, cancelled));
                let want = match expected {
                    Ok(t) if t == current => Ok(Transition::Stay),
                    Ok(t) => ok(t),
                    Err(e) => Err(e),
                };
                assert_eq!(
                    got, want,
                    "{current} + {status:?} final={is_final} cancelled={cancelled}"
                );
            }
        }
        // The combinations above cover all four response statuses and both flags.
        assert_eq!(table.len(), R::ALL.len() * 4);
    }

    #[test]
    fn final_states_never_change() {
        let triggers = [
            Trigger::Sent,
            report(R::InProgress, false, false),
            report(R::Completed, true, false),
            report(R::Completed, true, true),
            report(R::Failure, true, false),
            report(R::Unknown, false, false),
            Trigger::Timeout,
            Trigger::Cancel,
            Trigger::SendFailed,
            Trigger::AgentLost,
        ];
        for current in S::ALL.into_iter().filter(|s| s.is_final()) {
            for trigger in triggers {
                assert_eq!(next(current, trigger), Err(Refusal::AlreadyFinal(current)));
            }
        }
    }

    #[test]
    fn non_response_triggers_follow_the_table() {
        let table: &[(TaskStatus, Trigger, Transition)] = &[
            (S::Created, Trigger::Sent, Transition::To(S::Sent)),
            (S::Sent, Trigger::Sent, Transition::Stay),
            (S::InProgress, Trigger::Sent, Transition::Stay),
            (S::Created, Trigger::Timeout, Transition::To(S::Timeout)),
            (S::Sent, Trigger::Timeout, Transition::To(S::Timeout)),
            (S::InProgress, Trigger::Timeout, Transition::To(S::Timeout)),
            (S::Created, Trigger::Cancel, Transition::To(S::Cancelled)),
            (S::Sent, Trigger::Cancel, Transition::To(S::Cancelled)),
            (S::InProgress, Trigger::Cancel, Transition::To(S::Cancelled)),
            (S::Created, Trigger::SendFailed, Transition::To(S::Failed)),
            (S::Sent, Trigger::AgentLost, Transition::To(S::Failed)),
            (S::InProgress, Trigger::AgentLost, Transition::To(S::Failed)),
        ];
        for &(current, trigger, want) in table {
            assert_eq!(next(current, trigger), Ok(want), "{current} + {trigger:?}");
        }
    }
}
