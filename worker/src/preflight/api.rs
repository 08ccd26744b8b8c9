//! The Screwdriver API, when status updates are on: reached with the client and CA bundle the
//! status updates use.
//!
//! Updates go to each message's `apiUri`; in a Screwdriver deployment that is the API of
//! `ecosystem.api` (`ECOSYSTEM_API`), which is what is checked, with `GET /v4/status` (the
//! API's unauthenticated health route: no build token is needed or sent).

use std::time::Duration;

use super::{Cause, Line, Status};
use crate::config::Settings;
use crate::status::StatusUpdater;

/// Longest the check waits for the API.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The API check: no line when status updates are off.
pub async fn check(settings: &Settings) -> Vec<Line> {
    if !settings.status_updates.enabled {
        return Vec::new();
    }
    let api = settings.ecosystem.api.trim_end_matches('/');
    let what = format!("Screwdriver API ({api})");
    let updater = match StatusUpdater::new(&settings.status_updates) {
        Ok(u) => u,
        Err(e) => {
            return vec![
                Line::new(Status::Fail, what, e)
                    .with_fix("set statusUpdates.caFile to a readable PEM bundle"),
            ];
        }
    };
    let line = match tokio::time::timeout(TIMEOUT, updater.reach(api)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => Line::new(
            Status::Pass,
            what,
            format!("GET /v4/status answered {status}"),
        ),
        Ok(Ok(status)) => Line::new(
            Status::Fail,
            what,
            format!("GET /v4/status answered {status}"),
        )
        .with_fix(
            "check ecosystem.api (ECOSYSTEM_API): it should be the Screwdriver API's base URL",
        ),
        Ok(Err(e)) => {
            let (cause, text) = super::classify(e.as_ref());
            Line::new(Status::Fail, what, format!("{} ({text})", cause.summary()))
                .with_fix(fix(cause))
        }
        Err(_) => Line::new(
            Status::Fail,
            what,
            format!("no answer within {}s", TIMEOUT.as_secs()),
        )
        .with_fix(fix(Cause::Timeout)),
    };
    vec![line]
}

fn fix(cause: Cause) -> &'static str {
    match cause {
        Cause::TlsUnknownIssuer => {
            "set statusUpdates.caFile to a PEM bundle with the CA that signed the API's certificate"
        }
        Cause::TlsBadCertificate => {
            "use the host name the API's certificate was issued for in ecosystem.api, or renew the certificate"
        }
        Cause::UnknownHost => {
            "the host name does not resolve: correct ecosystem.api (ECOSYSTEM_API)"
        }
        Cause::ConnectionRefused => "nothing listens there: correct ecosystem.api (ECOSYSTEM_API)",
        _ => {
            "check that the worker can reach ecosystem.api (ECOSYSTEM_API), or turn statusUpdates.enabled off"
        }
    }
}
