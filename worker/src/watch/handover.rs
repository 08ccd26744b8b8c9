//! What a reporter leaves for the next one when it gives its Lease up: the pods whose events it
//! has published, written into the Lease as it is released and read by the replica that takes
//! it over, so that a rolling update does not publish every running and finished build's events
//! again. Only facts that stay true are written (an event once published stays published), so
//! a note read late, or one of an older holder, can never hide an event that was not sent. A
//! reporter that dies leaves no note: its successor repeats events, with the same ids.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The Lease annotation that carries the note.
pub const ANNOTATION: &str = "buildcluster-worker/reported";
/// Annotations of one object may hold 256 KiB in all: the note stays well below, dropping the
/// running pods first (a repeated `build.running` costs least), then finished ones.
const MAX_BYTES: usize = 200 * 1024;
/// How long a Lease release waits for its reporter's note.
pub const NOTE_WAIT: Duration = Duration::from_secs(2);

/// How far a pod's events were published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reported {
    /// `build.running` (not its outcome yet).
    Running,
    /// `build.launch_failed`, and the user told.
    CannotStart,
    /// The outcome, and Screwdriver told what it had to be.
    Finished,
}

impl Reported {
    fn key(self) -> &'static str {
        match self {
            Reported::Running => "running",
            Reported::CannotStart => "cannotStart",
            Reported::Finished => "finished",
        }
    }
}

/// Pods by name, with how far their events were published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note {
    pods: BTreeMap<String, Reported>,
}

impl Note {
    /// Notes that `pod`'s events were published up to `reported`.
    pub fn insert(&mut self, pod: String, reported: Reported) {
        self.pods.insert(pod, reported);
    }

    /// How far `pod`'s events were published, if noted.
    pub fn of(&self, pod: &str) -> Option<Reported> {
        self.pods.get(pod).copied()
    }

    /// The annotation value: `{"finished": [..], "cannotStart": [..], "running": [..]}`, cut to
    /// [`MAX_BYTES`].
    pub fn encode(&self) -> String {
        let mut out = serde_json::Map::new();
        let mut size = 0;
        for stage in [Reported::Finished, Reported::CannotStart, Reported::Running] {
            let mut names = Vec::new();
            for (pod, _) in self.pods.iter().filter(|(_, r)| **r == stage) {
                size += pod.len() + 3;
                if size > MAX_BYTES {
                    break;
                }
                names.push(serde_json::Value::from(pod.as_str()));
            }
            out.insert(stage.key().into(), names.into());
        }
        serde_json::Value::Object(out).to_string()
    }

    /// Reads an annotation value back; `None` for anything else.
    pub fn decode(value: &str) -> Option<Note> {
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        let mut note = Note::default();
        for stage in [Reported::Running, Reported::CannotStart, Reported::Finished] {
            for name in v.get(stage.key())?.as_array()? {
                note.insert(name.as_str()?.to_owned(), stage);
            }
        }
        Some(note)
    }
}

/// Shared by an executor's Lease election and its reporter.
#[derive(Debug, Default)]
pub struct Handover {
    /// Left by this replica's reporter when it stopped.
    outgoing: Mutex<Option<Note>>,
    /// Found in the Lease when this replica took it over.
    incoming: Mutex<Option<Note>>,
    /// Fired when this replica's reporter has stopped (its note is final).
    reporter_stopped: CancellationToken,
}

impl Handover {
    /// The reporter leaves its note (when it stops leading).
    pub fn leave(&self, note: Note) {
        *self.outgoing.lock().unwrap_or_else(PoisonError::into_inner) = Some(note);
    }

    /// The reporter has stopped: a release need not wait any longer.
    pub fn reporter_stopped(&self) {
        self.reporter_stopped.cancel();
    }

    /// The note to write into the Lease being released, once the reporter has stopped (or
    /// after [`NOTE_WAIT`]).
    pub async fn note_to_leave(&self) -> Option<Note> {
        let _ = tokio::time::timeout(NOTE_WAIT, self.reporter_stopped.cancelled()).await;
        self.outgoing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The election found this note in the Lease it took over.
    pub fn found(&self, note: Note) {
        *self.incoming.lock().unwrap_or_else(PoisonError::into_inner) = Some(note);
    }

    /// The reporter takes what the previous holder left, once.
    pub fn take_found(&self) -> Option<Note> {
        self.incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_reads_back_as_written() {
        let mut note = Note::default();
        note.insert("7-abcde".into(), Reported::Running);
        note.insert("8-fghij".into(), Reported::Finished);
        note.insert("9-klmno".into(), Reported::CannotStart);
        assert_eq!(Note::decode(&note.encode()), Some(note.clone()));
        assert_eq!(note.of("8-fghij"), Some(Reported::Finished));
        assert_eq!(note.of("10-pqrst"), None);
        assert_eq!(Note::decode("not json"), None);
        assert_eq!(Note::decode(r#"{"running": [1]}"#), None);
    }

    #[test]
    fn a_note_too_large_for_an_annotation_keeps_the_finished_pods_first() {
        let mut note = Note::default();
        for i in 0..6_000 {
            note.insert(format!("{i:08}-finished-pod-name"), Reported::Finished);
            note.insert(format!("{i:08}-running-pod-name"), Reported::Running);
        }
        let value = note.encode();
        assert!(value.len() <= MAX_BYTES + 64, "{}", value.len());
        let back = Note::decode(&value).unwrap();
        assert_eq!(
            back.of("00005999-finished-pod-name"),
            Some(Reported::Finished)
        );
        assert_eq!(
            back.of("00005999-running-pod-name"),
            None,
            "running pods go first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_waits_for_the_reporters_note_only_so_long() {
        let h = Handover::default();
        assert_eq!(
            h.note_to_leave().await,
            None,
            "no reporter: nothing after the wait"
        );
        let mut note = Note::default();
        note.insert("p".into(), Reported::Running);
        h.leave(note.clone());
        h.reporter_stopped();
        assert_eq!(h.note_to_leave().await, Some(note));
    }
}
