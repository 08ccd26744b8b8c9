use super::*;
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    pod_ttl: Duration::from_secs(300),
    pending_timeout: Duration::from_secs(600),
    max_build_timeout: Duration::from_secs(3600),
    busy_for: Duration::from_secs(40),
};
const CREATED: i64 = 1_800_000_000;

fn clock(start: Instant, secs: u64) -> Clock {
    Clock {
        now: start + Duration::from_secs(secs),
        wall: jiff::Timestamp::from_second(CREATED + secs as i64).unwrap(),
    }
}

fn observed(verdict: Verdict) -> Observed {
    Observed {
        verdict,
        known: true,
        deleting: false,
        created_at: Some(CREATED),
        finished_at: None,
        node: Some("node-1".into()),
        ran: false,
    }
}

fn failed(reason: &str) -> Verdict {
    Verdict::Failed {
        exit_code: 137,
        reason: reason.into(),
        message: format!("died: {reason}"),
    }
}

fn cannot_start() -> Verdict {
    Verdict::LaunchFailed {
        reason: "ImagePullBackOff".into(),
        message: "the image could not be pulled".into(),
    }
}

/// One look at the pod, every step carried out by `run_step`; gives the steps taken.
fn look(
    o: &Observed,
    r: &mut Record,
    c: &Clock,
    mut run_step: impl FnMut(&Step, &Record) -> Went,
) -> Vec<(Step, Went)> {
    r.look(std::iter::empty(), c.now);
    r.saw(&o.verdict, c);
    let mut steps = Vec::new();
    for _ in 0..MAX_STEPS {
        let step = plan(o, r, &LIMITS, c);
        let went = match step {
            Step::Wait(_) => Went::Done,
            _ => run_step(&step, r),
        };
        let go_on = r.apply(&step, went, c.now);
        steps.push((step, went));
        if !go_on {
            return steps;
        }
    }
    panic!("a look did not end within {MAX_STEPS} steps: {steps:?}");
}

fn answering(state: LaunchState) -> impl FnMut(&Step, &Record) -> Went {
    move |step, _| match step {
        Step::AskLaunch => Went::Answer(Asked::State(state)),
        _ => Went::Done,
    }
}

fn just_steps(steps: Vec<(Step, Went)>) -> Vec<Step> {
    steps.into_iter().map(|(s, _)| s).collect()
}

#[test]
fn a_young_pod_whose_launch_is_pending_gets_no_event_yet() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let steps = look(
        &observed(Verdict::Running),
        &mut r,
        &clock(start, 3),
        answering(LaunchState::Pending),
    );
    assert_eq!(
        just_steps(steps),
        vec![Step::AskLaunch, Step::Wait(None)],
        "asked, then waits for the launcher"
    );
}

#[test]
fn a_recorded_launch_lets_the_running_event_and_the_scheduled_update_out() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let pending = observed(Verdict::Pending { scheduled: true });
    let steps = look(
        &pending,
        &mut r,
        &clock(start, 1),
        answering(LaunchState::Launched),
    );
    assert!(
        matches!(&steps[0].0, Step::Tell(Update::Scheduled { hostname, .. }) if hostname == "node-1"),
        "{steps:?}"
    );
    let steps = look(
        &observed(Verdict::Running),
        &mut r,
        &clock(start, 2),
        answering(LaunchState::Launched),
    );
    assert_eq!(
        just_steps(steps),
        vec![
            Step::AskLaunch,
            Step::Publish(Event::Running),
            Step::Wait(None)
        ]
    );
    // Nothing is asked or sent again.
    let again = look(
        &observed(Verdict::Running),
        &mut r,
        &clock(start, 3),
        |s, _| panic!("nothing to do, yet {s:?}"),
    );
    assert_eq!(just_steps(again), vec![Step::Wait(None)]);
}

#[test]
fn a_launch_pending_past_the_announce_time_is_announced_and_recorded_here() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let steps = look(
        &observed(Verdict::Running),
        &mut r,
        &clock(start, 31),
        answering(LaunchState::Pending),
    );
    assert_eq!(
        just_steps(steps),
        vec![
            Step::AskLaunch,
            Step::Publish(Event::Launched),
            Step::RecordLaunch,
            Step::Publish(Event::Running),
            Step::Wait(None)
        ]
    );
}

#[test]
fn a_launch_the_sequencer_does_not_know_is_recorded_not_announced() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let steps = look(
        &observed(Verdict::Succeeded),
        &mut r,
        &clock(start, 60),
        answering(LaunchState::Unknown),
    );
    assert_eq!(
        just_steps(steps)[..3],
        [
            Step::AskLaunch,
            Step::RecordLaunch,
            Step::Publish(Event::Finished { tell: false })
        ]
    );
}

#[test]
fn a_build_that_ran_and_finished_between_two_looks_reports_running_first() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let o = Observed {
        ran: true,
        ..observed(failed("OOMKilled"))
    };
    let steps = look(
        &o,
        &mut r,
        &clock(start, 10),
        answering(LaunchState::Launched),
    );
    assert_eq!(
        just_steps(steps)[..4],
        [
            Step::AskLaunch,
            Step::Publish(Event::Running),
            Step::Publish(Event::Finished { tell: true }),
            Step::Tell(Update::Failure("died: OOMKilled".into())),
        ]
    );
}

#[test]
fn a_pod_that_cannot_start_is_deleted_only_after_the_user_is_told_and_the_record_is_old() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let o = observed(cannot_start());
    let mut token = Went::NotYet;
    let steps = look(&o, &mut r, &clock(start, 1), |step, _| match step {
        Step::AskLaunch => Went::Answer(Asked::State(LaunchState::Launched)),
        Step::Tell(_) => token,
        _ => Went::Done,
    });
    assert_eq!(
        just_steps(steps),
        vec![
            Step::AskLaunch,
            Step::Publish(Event::LaunchFailed),
            Step::Tell(Update::Failure("the image could not be pulled".into())),
        ],
        "the token is not readable yet: the look ends"
    );
    token = Went::Done;
    let steps = look(&o, &mut r, &clock(start, 2), |step, _| match step {
        Step::Tell(_) => token,
        other => panic!("{other:?}"),
    });
    assert_eq!(steps.last().unwrap().0, Step::Wait(None), "S + H not over");
    let steps = look(&o, &mut r, &clock(start, 1 + 40), |_, _| Went::Done);
    assert_eq!(just_steps(steps), vec![Step::Delete(Deletion::CannotStart)]);
    assert!(r.deleted());
}

#[test]
fn a_finished_pod_is_collected_after_its_ttl_and_waits_until_then() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let o = Observed {
        finished_at: Some(CREATED + 100),
        ..observed(Verdict::Succeeded)
    };
    let steps = look(
        &o,
        &mut r,
        &clock(start, 120),
        answering(LaunchState::Launched),
    );
    let c = clock(start, 120);
    assert_eq!(
        steps.last().unwrap().0,
        Step::Wait(Some(c.now + Duration::from_secs(280))),
        "finished 20 s ago: 280 s of podTTL left"
    );
    assert!(r.only_collection_left().is_some());
    let steps = look(&o, &mut r, &clock(start, 400), |_, _| Went::Done);
    assert_eq!(just_steps(steps), vec![Step::Delete(Deletion::Collect)]);
}

#[test]
fn an_outcome_reported_while_the_sequencer_was_unreachable_is_still_collected() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let o = observed(Verdict::Succeeded);
    let steps = look(&o, &mut r, &clock(start, 60), |step, _| match step {
        Step::AskLaunch => Went::Answer(Asked::Unreachable),
        _ => Went::Done,
    });
    assert_eq!(
        just_steps(steps),
        vec![
            Step::AskLaunch,
            Step::Publish(Event::Finished { tell: false }),
            Step::Wait(None)
        ],
        "an old pod's outcome is not held back by an unreachable sequencer"
    );
    assert!(r.only_collection_left().is_none(), "not recorded yet");
    let steps = look(
        &o,
        &mut r,
        &clock(start, 1000),
        answering(LaunchState::Launched),
    );
    assert_eq!(just_steps(steps)[0], Step::AskLaunch);
    let steps = look(&o, &mut r, &clock(start, 1041), |_, _| Went::Done);
    assert_eq!(just_steps(steps), vec![Step::Delete(Deletion::Collect)]);
}

#[test]
fn orphans_are_deleted_by_age() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let unknown = Observed {
        known: false,
        ..observed(Verdict::Pending { scheduled: false })
    };
    assert_eq!(
        plan(&unknown, &r, &LIMITS, &clock(start, 599)),
        Step::Wait(None)
    );
    assert_eq!(
        plan(&unknown, &r, &LIMITS, &clock(start, 600)),
        Step::Delete(Deletion::Orphan)
    );
    let running = observed(Verdict::Running);
    r.apply(&Step::Publish(Event::Running), Went::Done, start);
    let old = lifetime(&LIMITS).as_secs();
    assert_eq!(
        plan(&running, &r, &LIMITS, &clock(start, old - 1)),
        Step::Wait(None)
    );
    assert_eq!(
        plan(&running, &r, &LIMITS, &clock(start, old)),
        Step::Delete(Deletion::Orphan)
    );
}

#[test]
fn an_unscheduled_pod_is_told_to_wait_once_after_a_while() {
    let start = Instant::now();
    let mut r = Record::new(start);
    let o = observed(Verdict::Pending { scheduled: false });
    assert_eq!(
        just_steps(look(&o, &mut r, &clock(start, 4), |_, _| Went::Done)),
        vec![Step::Wait(None)]
    );
    assert_eq!(
        just_steps(look(&o, &mut r, &clock(start, 5), |_, _| Went::Done)),
        vec![Step::Tell(Update::Waiting), Step::Wait(None)]
    );
    assert_eq!(
        just_steps(look(&o, &mut r, &clock(start, 6), |_, _| Went::Done)),
        vec![Step::Wait(None)]
    );
}

#[test]
fn a_pod_being_deleted_needs_nothing() {
    let start = Instant::now();
    let r = Record::new(start);
    let o = Observed {
        deleting: true,
        ..observed(failed("Error"))
    };
    assert_eq!(plan(&o, &r, &LIMITS, &clock(start, 999)), Step::Wait(None));
}

#[test]
fn trouble_ages_start_when_first_seen_and_reset_when_cleared() {
    let start = Instant::now();
    let mut r = Record::new(start);
    r.look(["ErrImagePull"].into_iter(), start);
    r.look(
        ["ImagePullBackOff"].into_iter(),
        start + Duration::from_secs(20),
    );
    assert_eq!(
        r.trouble_age("ImagePull", start + Duration::from_secs(25)),
        Duration::from_secs(25),
        "ErrImagePull and ImagePullBackOff are one trouble"
    );
    r.look(std::iter::empty(), start + Duration::from_secs(26));
    r.look(
        ["ErrImagePull"].into_iter(),
        start + Duration::from_secs(30),
    );
    assert_eq!(
        r.trouble_age("ImagePull", start + Duration::from_secs(31)),
        Duration::from_secs(1)
    );
}

/// The sequencer of the property tests: it learns the launch from its launcher (maybe never),
/// from the reporter's record, and is sometimes unreachable.
#[derive(Debug, Default)]
struct Sequencer {
    recorded: bool,
}

/// What happened in a simulated life, for the invariants.
#[derive(Debug, Default)]
struct Life {
    /// (seconds, event) of every confirmed publish.
    published: Vec<(u64, Event)>,
    /// When the reporter learnt the record (first Launched answer or own record).
    recorded_at: Option<u64>,
    told_failure: bool,
    deleted: Option<(u64, Deletion)>,
    announce_ok: bool,
}

#[derive(Debug, Clone)]
struct Look {
    phase: usize,
    after: u64,
    launcher_records: bool,
    unreachable: bool,
    fails: bool,
}

fn phases(terminal: u8) -> Vec<Verdict> {
    let last = match terminal {
        0 => Verdict::Succeeded,
        1 => failed("Error"),
        2 => failed("OOMKilled"),
        3 => Verdict::TimedOut {
            message: "too long".into(),
        },
        _ => cannot_start(),
    };
    vec![
        Verdict::Pending { scheduled: false },
        Verdict::Pending { scheduled: true },
        Verdict::Running,
        last,
    ]
}

fn looks() -> impl Strategy<Value = Vec<Look>> {
    prop::collection::vec(
        (
            0usize..4,
            0u64..90,
            any::<bool>(),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.25),
        ),
        1..24,
    )
    .prop_map(|v| {
        let mut phase = 0;
        v.into_iter()
            .map(|(p, after, launcher_records, unreachable, fails)| {
                phase = phase.max(p);
                Look {
                    phase,
                    after,
                    launcher_records,
                    unreachable,
                    fails,
                }
            })
            .collect()
    })
}

/// Carries out one step against the simulated world and checks the rules that hold at the
/// moment of the step.
fn simulate_step(
    step: &Step,
    r: &Record,
    o: &Observed,
    at: u64,
    world: &mut (Sequencer, Life),
    look: &Look,
) -> Went {
    let (seq, life) = world;
    if look.fails && !matches!(step, Step::AskLaunch) {
        return if matches!(step, Step::Tell(_)) {
            Went::NotYet
        } else {
            Went::Failed
        };
    }
    match step {
        Step::AskLaunch if look.unreachable => Went::Answer(Asked::Unreachable),
        Step::AskLaunch => {
            seq.recorded |= look.launcher_records;
            let state = if seq.recorded {
                life.recorded_at.get_or_insert(at);
                life.announce_ok = true;
                LaunchState::Launched
            } else {
                LaunchState::Pending
            };
            Went::Answer(Asked::State(state))
        }
        Step::RecordLaunch => {
            seq.recorded = true;
            life.recorded_at.get_or_insert(at);
            Went::Done
        }
        Step::Publish(event) => {
            check_publish(*event, r, at, seq, life);
            life.published.push((at, *event));
            Went::Done
        }
        Step::Tell(Update::Failure(_)) => {
            life.told_failure = true;
            Went::Done
        }
        Step::Tell(_) => Went::Done,
        Step::Delete(why) => {
            check_delete(*why, o, at, life);
            life.deleted = Some((at, *why));
            Went::Done
        }
        Step::Wait(_) => Went::Done,
    }
}

/// The rules of a publish: `build.launched` only for an old launch nobody recorded; any other
/// event only once the launch is known; each once; nothing after the outcome.
fn check_publish(event: Event, r: &Record, at: u64, seq: &Sequencer, life: &mut Life) {
    let old = at >= LAUNCH_ANNOUNCE_WITHIN.as_secs();
    match event {
        Event::Launched => {
            assert!(
                old && !seq.recorded,
                "announced for a young or recorded launch"
            );
            life.announce_ok = true;
        }
        _ => assert!(
            life.announce_ok || (old && r.asked == Some(Asked::Unreachable)),
            "{event:?} before the launch was known: {life:?}"
        ),
    }
    assert!(
        life.published.iter().all(|(_, e)| *e != event),
        "{event:?} published twice"
    );
    assert!(
        life.published
            .iter()
            .all(|(_, e)| !matches!(e, Event::LaunchFailed | Event::Finished { .. })),
        "{event:?} after the outcome"
    );
}

/// The rules of a deletion: S + H after the record, a pod that cannot start only after its
/// user was told, a finished one only after its podTTL.
fn check_delete(why: Deletion, o: &Observed, at: u64, life: &Life) {
    let recorded = life.recorded_at.expect("deleted before the record");
    if why != Deletion::Orphan {
        assert!(
            at - recorded >= LIMITS.busy_for.as_secs(),
            "deleted within S + H"
        );
    }
    if why == Deletion::CannotStart {
        assert!(life.told_failure, "deleted before the user was told");
    }
    if why == Deletion::Collect {
        let outcome = life
            .published
            .iter()
            .find(|(_, e)| matches!(e, Event::Finished { .. }));
        let (published, _) = outcome.expect("collected before its outcome");
        let finished = o.finished_at.map_or(*published, |t| (t - CREATED) as u64);
        assert!(
            at - finished >= LIMITS.pod_ttl.as_secs(),
            "collected within podTTL"
        );
    }
}

fn run_life(verdicts: &[Verdict], plan_looks: &[Look]) -> Life {
    let start = Instant::now();
    let mut r = Record::new(start);
    let mut world = (Sequencer::default(), Life::default());
    let mut at = 0;
    let calm = Look {
        phase: 3,
        after: 60,
        launcher_records: false,
        unreachable: false,
        fails: false,
    };
    let calm_looks = std::iter::repeat_n(&calm, 30);
    for look_ in plan_looks.iter().chain(calm_looks) {
        at += look_.after;
        let c = clock(start, at);
        let verdict = verdicts[look_.phase].clone();
        let o = Observed {
            ran: look_.phase >= 2,
            ..observed(verdict)
        };
        look(&o, &mut r, &c, |step, rec| {
            simulate_step(step, rec, &o, at, &mut world, look_)
        });
        if world.1.deleted.is_some() {
            break;
        }
    }
    world.1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_life_keeps_the_rules_and_ends_reported_and_collected(
        terminal in 0u8..5,
        plan_looks in looks(),
    ) {
        let verdicts = phases(terminal);
        let life = run_life(&verdicts, &plan_looks);
        let kinds: Vec<Event> = life.published.iter().map(|(_, e)| *e).filter(|e| *e != Event::Launched).collect();
        let (deleted_at, why) = life.deleted.expect("the pod is removed in the end");
        let _ = deleted_at;
        if terminal == 4 {
            prop_assert_eq!(why, Deletion::CannotStart);
            prop_assert_eq!(kinds.last(), Some(&Event::LaunchFailed));
        } else {
            prop_assert_eq!(why, Deletion::Collect);
            prop_assert!(matches!(kinds.last(), Some(Event::Finished { .. })), "{:?}", kinds);
            prop_assert!(kinds.contains(&Event::Running), "the build ran: {:?}", kinds);
            let tells = matches!(terminal, 2 | 3);
            prop_assert_eq!(life.told_failure, tells);
        }
    }
}
